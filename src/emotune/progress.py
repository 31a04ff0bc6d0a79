"""Rich progress bars for long work (training, prediction)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)


class _Bar:
    def __init__(self, progress: Progress | None, task: int | None):
        self.progress, self.task = progress, task
        self.fields = {"loss": "", "best": ""}

    def update(self, completed: int, loss: float | None = None, best: float | None = None,
               metric: str = "") -> None:
        if self.progress is None:
            return
        if loss is not None:
            self.fields["loss"] = f"loss {loss:.3f}"
        if best is not None:
            self.fields["best"] = f"best val {metric} {best:.4f}"
        self.progress.update(self.task, completed=completed, **self.fields)


@contextmanager
def training_progress(total: int, enabled: bool = True, description: str = "training") -> Iterator[_Bar]:
    if not enabled:
        yield _Bar(None, None)
        return
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
               TimeElapsedColumn(), TextColumn("<"), TimeRemainingColumn(), TextColumn("{task.fields[loss]}"),
               TextColumn("[green]{task.fields[best]}")]
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=total, loss="", best="")
        yield _Bar(progress, task)
