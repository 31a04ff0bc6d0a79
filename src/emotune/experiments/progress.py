"""The grid's progress display: one overall bar (cells) and a line per running cell (step, best metric)."""

from __future__ import annotations

from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from ..progress import console
from ..runs import read_history
from ..tasks import is_better

STATUS_STYLE = {"done": "green", "skipped": "dim", "failed": "red", "interrupted": "yellow", "pruned": "yellow"}
COUNTED = ("done", "skipped", "failed", "pruned")


class GridProgress:
    """Also used for search trials (``description="trials"``)."""

    def __init__(self, total: int, completed: int = 0, enabled: bool = True, description: str = "grid",
                 unit: str = "cells"):
        self.enabled, self.description, self.unit = enabled, description, unit
        self.total, self.completed = total, completed
        self.progress: Progress | None = None
        self.tasks: dict[str, TaskID] = {}
        self.best: dict[str, float] = {}

    def __enter__(self) -> "GridProgress":
        if self.enabled:
            self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[unit]}"), TimeElapsedColumn(),
                                     TextColumn("{task.fields[info]}"), console=console)
            self.progress.__enter__()
            self.overall = self.progress.add_task(self.description, total=self.total, completed=self.completed,
                                                  unit=self.unit, info="")
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def start(self, name: str) -> None:
        if self.progress is not None:
            self.tasks[name] = self.progress.add_task(f"  {name}", total=None, unit="steps", info="")

    def step(self, name: str, step: int) -> None:
        if self.progress is not None and name in self.tasks:
            self.progress.update(self.tasks[name], completed=step)

    def evaluated(self, name: str, step: int, metric: str, value: float) -> None:
        if self.progress is None or name not in self.tasks:
            return
        if is_better(metric, value, self.best.get(name)):
            self.best[name] = value
        self.progress.update(self.tasks[name], completed=step,
                             info=f"[green]best val {metric} {self.best[name]:.4f}")

    def poll(self, name: str, folder: Path, metric: str) -> None:
        """For cells training in other processes: read their progress from their history."""
        if self.progress is None:
            return
        for h in read_history(folder):
            self.evaluated(name, h["step"], metric, h["validation"][metric])

    def finish(self, name: str, status: str, completed: int | None = None, note: str = "") -> None:
        """Close a cell's line; ``completed`` sets the overall count (e.g. trials finished by all workers)."""
        if self.progress is None:
            return
        task = self.tasks.pop(name, None)
        if task is not None:
            self.progress.remove_task(task)
        style = STATUS_STYLE.get(status, "")
        if status != "skipped":
            self.progress.console.print(f"[{style}]{status}[/{style}] {name}{note}", highlight=False)
        self.completed = completed if completed is not None else self.completed + (status in COUNTED)
        self.progress.update(self.overall, completed=self.completed)
