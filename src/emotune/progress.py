"""Progress for long work (training, prediction): a Rich bar on a terminal; elsewhere (CI, nohup, a log
file) one plain line per validation, since a bar would show nothing until the end."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)


class _Bar:
    def __init__(self, progress: Progress | None, task: int | None):
        self.progress, self.task = progress, task
        self.fields = {"loss": "", "best": ""}

    def update(self, completed: int, loss: float | None = None, best: float | None = None,
               metric: str = "", value: float | None = None, epoch: float | None = None) -> None:
        if self.progress is None:
            return
        if loss is not None:
            self.fields["loss"] = f"loss {loss:.3f}"
        if best is not None:
            self.fields["best"] = f"best val {escape(metric)} {best:.4f}"
        self.progress.update(self.task, completed=completed, **self.fields)


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class _Lines:
    """Plain progress: one line per validation (an update carrying ``best``, after the first update, which
    states where training starts): step/total, epoch (when given), mean training loss since the last line,
    the validation metric, the best so far, elapsed time and the time left at this session's pace."""

    def __init__(self, total: int, description: str, out: Console):
        self.total, self.description, self.out = total, description, out
        self.start_time = time.perf_counter()
        self.start_step: int | None = None
        self.completed = 0
        self.best: float | None = None
        self.losses: list[float] = []
        self.lines = 0

    def update(self, completed: int, loss: float | None = None, best: float | None = None,
               metric: str = "", value: float | None = None, epoch: float | None = None) -> None:
        self.completed = completed
        if self.start_step is None:  # where training starts (a resumed run: its checkpoint's step and best)
            self.start_step, self.best = completed, best
            return
        if loss is not None:
            self.losses.append(loss)
        if best is None and value is None:
            return
        parts = [f"step {completed}/{self.total}"]
        if epoch is not None:
            parts.append(f"epoch {epoch:.2f}")
        if self.losses:
            parts.append(f"train loss {sum(self.losses) / len(self.losses):.4f}")
        if value is not None:
            parts.append(f"val {metric} {value:.4f}")
        elif best is not None and best != self.best:
            parts.append(f"val {metric} {best:.4f} (new best)")
        else:
            parts.append(f"val {metric} not better")
        if best is not None:
            parts.append(f"best {best:.4f}")
        elapsed = time.perf_counter() - self.start_time
        done = completed - self.start_step
        eta = elapsed / done * (self.total - completed) if done > 0 else None
        parts += [f"elapsed {_clock(elapsed)}", f"ETA {_clock(eta) if eta is not None else '?'}"]
        self.out.print(f"{self.description}: " + " · ".join(parts), markup=False, highlight=False, soft_wrap=True)
        self.best, self.losses = best if best is not None else self.best, []
        self.lines += 1

    def close(self) -> None:
        """Work without validations (prediction, a zero-shot run's evaluation) still says when it is done."""
        if not self.lines and self.completed:
            self.out.print(f"{self.description}: {self.completed}/{self.total} done in "
                           f"{_clock(time.perf_counter() - self.start_time)}",
                           markup=False, highlight=False, soft_wrap=True)


def live_console(out: Console = console) -> bool:
    """Whether a live bar can be drawn: a terminal (or a notebook), not a pipe or a file."""
    return bool(getattr(out, "is_interactive", out.is_terminal) or out.is_jupyter)


@contextmanager
def training_progress(total: int, enabled: bool = True, description: str = "training") -> Iterator[_Bar]:
    if not enabled:
        yield _Bar(None, None)
        return
    if not live_console(console):
        lines = _Lines(total, description, console)
        yield lines  # type: ignore[misc]
        lines.close()
        return
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
               TimeElapsedColumn(), TextColumn("<"), TimeRemainingColumn(), TextColumn("{task.fields[loss]}"),
               TextColumn("[green]{task.fields[best]}")]
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(escape(description), total=total, loss="", best="")
        yield _Bar(progress, task)
