"""Experiment grids: a YAML file -> cells (one run config each) -> run folders named from the axis values.

    name: my-study                     # optional; defaults to the file name
    base: {data: {name: emotion}, train: {batch_size: 16}}
    axes: {train.seed: [1, 2]}         # optional: crossed with every group below
    grids:                             # or a single top-level `axes:` without groups
      - name: full
        set: {method: full}            # fixed settings of this group
        axes: {train.lr: [2.0e-5, 5.0e-5], train.weight_decay: [0.01, 0.001]}
      - name: lora
        set: {method: {name: lora, alpha: 16}}
        axes: {method.r: [2, 8, 32], method.target: [attention, all-linear]}

A key is a config field (``section.field``) or a whole section (``method: {name: lora, r: 8}``). Each
cell trains into ``<out>/<group>/<key=value_...>``; `run_grid` skips finished cells, resumes interrupted
ones and runs cells one after another or in N worker processes.
"""

from __future__ import annotations

import fnmatch
import itertools
import multiprocessing
import os
import re
import signal
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from ..config import RunConfig
from ..errors import ConfigError, EmotuneError, RunError
from ..io import read_json, write_json, write_text
from ..runs import METRICS
from ..train.distributed import processes
from ..train.stopping import signal_handlers
from .settings import apply_settings, coerce, config_from, labels, load_spec

FILE_KEYS = {"name", "description", "base", "set", "axes", "grids"}
GROUP_KEYS = {"name", "set", "axes"}
_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]+")


@dataclass
class Cell:
    """One point of the grid: a run config and the folder (relative to the grid's output) it trains into."""

    name: str
    group: str
    values: dict[str, Any]
    config: RunConfig


@dataclass
class Grid:
    name: str
    cells: list[Cell]
    description: str = ""
    source: str = ""
    """The YAML text the grid came from (copied into the output folder)."""

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: Iterable[tuple[str, Any]] = ()) -> "Grid":
        return load_spec(path, "experiment file", lambda spec, stem: cls.from_dict(spec, overrides, default_name=stem))

    @classmethod
    def from_dict(cls, spec: Any, overrides: Iterable[tuple[str, Any]] = (), *,
                  default_name: str = "grid") -> "Grid":
        """Expand a grid spec; ``overrides`` (e.g. ``--set``) apply to every cell, after the axes."""
        if not isinstance(spec, dict):
            raise ConfigError("an experiment file is a mapping with base, axes and/or grids")
        _check_keys(spec, FILE_KEYS, "the experiment file")
        base = config_from(spec.get("base"), where="base")
        base = apply_settings(base, _mapping(spec.get("set"), "set"))
        shared = _axes(spec.get("axes"), "axes")
        groups = spec.get("grids") or [{}]
        if not isinstance(groups, list):
            raise ConfigError("grids: expected a list of groups")
        overrides = list(overrides)
        cells: list[Cell] = []
        for i, group in enumerate(groups):
            where = f"grids[{i}]"
            if not isinstance(group, dict):
                raise ConfigError(f"{where}: expected a mapping with name, set and axes")
            _check_keys(group, GROUP_KEYS, where)
            gname = str(group.get("name", "" if len(groups) == 1 else f"group{i}"))
            gbase = apply_settings(base, _mapping(group.get("set"), f"{where}.set"))
            axes = {**shared, **_axes(group.get("axes"), f"{where}.axes")}
            for combo in itertools.product(*axes.values()):
                values = dict(zip(axes, combo))
                try:
                    cfg = apply_settings(apply_settings(gbase, values), overrides)
                except ConfigError as e:
                    raise ConfigError(f"{where} cell {values}: {e}") from None
                cells.append(Cell(cell_name(gname, values), gname, values, cfg))
        names = [c.name for c in cells]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"several cells would share a run folder: {', '.join(dupes)} "
                              "(give the groups distinct names)")
        _validate(cells)
        return cls(str(spec.get("name") or default_name), cells, str(spec.get("description") or ""))

    def select(self, patterns: Iterable[str]) -> "Grid":
        """The cells whose name matches any of the glob patterns (all of them with no pattern)."""
        patterns = list(patterns)
        if not patterns:
            return self
        cells = [c for c in self.cells if any(fnmatch.fnmatch(c.name, p) for p in patterns)]
        if not cells:
            raise ConfigError(f"no cell matches {', '.join(patterns)}")
        return Grid(self.name, cells, self.description, self.source)


def cell_name(group: str, values: dict[str, Any]) -> str:
    """``<group>/<key=value>_<key=value>``: the group alone when it has no axes, ``run`` when nothing at all.
    Leading/trailing dots go too: a name of ``.`` or ``..`` must never write outside the grid's folder."""
    parts = [p for p in (group, "_".join(labels(values))) if p] or ["run"]
    return "/".join(_UNSAFE.sub("-", p).strip("-.") or "run" for p in parts)


def _check_keys(d: dict, known: set[str], where: str) -> None:
    unknown = set(d) - known
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))} "
                          f"(known: {', '.join(sorted(known))})")


def _mapping(value: Any, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping of settings, e.g. {{train.lr: 1.0e-3}}")
    return value


def _axes(value: Any, where: str) -> dict[str, list]:
    axes = _mapping(value, where)
    for key, values in axes.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}.{key}: expected a non-empty list of values")
    return {k: coerce(v) for k, v in axes.items()}


def _validate(cells: list[Cell]) -> None:
    """Fail before anything trains: every cell's method and options must exist."""
    from ..runs import resolve_config

    for c in cells:
        try:
            resolve_config(c.config)
        except ConfigError as e:
            raise ConfigError(f"cell {c.name}: {e}") from None


# ---- running ----------------------------------------------------------------------------------

@dataclass
class CellResult:
    cell: Cell
    status: str
    """done (trained now), skipped (already finished), interrupted or failed."""
    error: str = ""
    seconds: float = 0.0
    metrics: dict = field(default_factory=dict)


class GridInterrupted(Exception):
    """Ctrl-C/SIGTERM stopped the grid; running cells saved checkpoints. Run the same command to resume."""

    def __init__(self, results: list[CellResult]):
        super().__init__("grid interrupted; running cells saved a checkpoint: run the same command again to resume")
        self.results = results


def cell_status(cell: Cell, folder: Path) -> str:
    """new, done, interrupted, incomplete (started, no checkpoint yet) or conflict (another config there)."""
    from ..runs import CHECKPOINT, CONFIG, Run, resolve_config

    if not (folder / CONFIG).is_file():
        return "new"
    try:
        saved = RunConfig.from_yaml(folder / CONFIG)
    except ConfigError:
        return "conflict"
    if saved.to_dict() != resolve_config(cell.config).to_dict():
        return "conflict"
    try:
        if Run.open(folder).complete:
            return "done"
    except RunError:
        pass
    return "interrupted" if (folder / CHECKPOINT).exists() else "incomplete"


def plan(grid: Grid, out: str | Path) -> list[tuple[Cell, str]]:
    """(cell, status) for every cell: what `run_grid` would do."""
    return [(c, cell_status(c, Path(out) / c.name)) for c in grid.cells]


def run_grid(grid: Grid, out: str | Path, *, workers: int = 1, progress: bool = True,
             on_result: Callable[[CellResult], None] | None = None) -> list[CellResult]:
    """Train every cell of ``grid`` under ``out``: finished cells are skipped, interrupted ones resume.

    ``workers`` > 1 trains that many cells at once in separate processes, each with an equal share
    of the CPU threads (unless the config sets ``train.threads``). A failing cell is recorded and the
    others go on. Ctrl-C saves a checkpoint in every running cell and raises GridInterrupted."""
    out = Path(out)
    main = processes().main  # under torchrun each cell trains data-parallel; the main process writes the grid's files
    if processes().world > 1 and workers > 1:
        raise ConfigError("--workers trains cells side by side in one launch; under several data-parallel "
                          "processes each cell already uses them all: leave --workers out")
    out.mkdir(parents=True, exist_ok=True)
    if grid.source and main:
        write_text(out / "experiment.yaml", grid.source)
    results: list[CellResult] = []
    todo: list[Cell] = []
    for cell, status in plan(grid, out):
        if status == "done":
            results.append(CellResult(cell, "skipped", metrics=_summary(out / cell.name)))
        elif status == "conflict":
            results.append(CellResult(cell, "failed", f"{out / cell.name} holds a run with a different "
                                                      "configuration; move it away to train this cell"))
        else:
            todo.append(cell)
    for r in results:
        if on_result:
            on_result(r)
    from .progress import GridProgress

    t0 = time.perf_counter()
    with GridProgress(len(grid.cells), len(grid.cells) - len(todo), enabled=progress and main) as bar:
        try:
            if workers <= 1:
                _run_sequential(todo, out, bar, results, on_result)
            else:
                _run_parallel(todo, out, workers, bar, results, on_result)
        finally:
            if main:
                _write_summary(out, grid, results, time.perf_counter() - t0)
    return results


def _record(r: CellResult, results: list[CellResult], bar, on_result) -> None:
    results.append(r)
    bar.finish(r.cell.name, r.status)
    if on_result:
        on_result(r)


def _run_sequential(todo: list[Cell], out: Path, bar, results: list[CellResult], on_result) -> None:
    from .. import api
    from ..errors import Interrupted

    for cell in todo:
        bar.start(cell.name)
        t0 = time.perf_counter()
        metric = cell.config.train.metric

        def on_step(step: int, name: str = cell.name) -> bool:
            bar.step(name, step)
            return False

        def on_evaluate(step: int, m: dict, name: str = cell.name, metric: str = metric) -> None:
            bar.evaluated(name, step, metric, m[metric])

        try:
            metrics = api.train(cell.config, out / cell.name, progress=False, on_step=on_step,
                                on_evaluate=on_evaluate)
        except (Interrupted, KeyboardInterrupt):
            _record(CellResult(cell, "interrupted", seconds=time.perf_counter() - t0), results, bar, on_result)
            raise GridInterrupted(results) from None
        except Exception as e:  # noqa: BLE001 - one failing cell must not stop the grid
            _log_error(out, cell, e)
            _record(CellResult(cell, "failed", _one_line(e), time.perf_counter() - t0), results, bar, on_result)
            continue
        _record(CellResult(cell, "done", seconds=time.perf_counter() - t0, metrics=_brief(metrics)),
                results, bar, on_result)


def _run_parallel(todo: list[Cell], out: Path, workers: int, bar, results: list[CellResult], on_result) -> None:
    threads = max(1, (os.cpu_count() or 1) // workers)
    ctx = multiprocessing.get_context("spawn")  # a clean interpreter per worker: no forked torch state
    stop = ctx.Event()  # set on Ctrl-C/SIGTERM: every training worker checkpoints at its next step
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                               initargs=(threads, stop))
    running: dict[Future, tuple[Cell, float]] = {}
    queue = list(todo)
    with ExitStack() as cleanup:  # unwound last-in first-out: the handlers restored, then the pool shut down
        cleanup.callback(pool.shutdown, wait=True, cancel_futures=True)
        cleanup.enter_context(signal_handlers(_raise_interrupt))  # Ctrl-C / SIGTERM: KeyboardInterrupt, below
        try:
            while queue or running:
                while queue and len(running) < workers:
                    cell = queue.pop(0)
                    bar.start(cell.name)
                    running[pool.submit(_train_cell, cell.config.to_dict(), str(out / cell.name))] = (
                        cell, time.perf_counter())
                done, _ = wait(running, timeout=2.0, return_when=FIRST_COMPLETED)
                for fut in done:
                    cell, t0 = running.pop(fut)
                    _record(_collect(fut, cell, t0, out), results, bar, on_result)
                for cell, _ in running.values():  # show each running cell's progress from its history
                    bar.poll(cell.name, out / cell.name, cell.config.train.metric)
        except KeyboardInterrupt:
            stop.set()
            pool.shutdown(wait=True, cancel_futures=True)  # running cells save a checkpoint and return
            for fut, (cell, t0) in running.items():
                _record(_collect(fut, cell, t0, out), results, bar, on_result)
            raise GridInterrupted(results) from None
    if any(r.status == "interrupted" for r in results):  # a worker was stopped (e.g. SIGTERM) on its own
        raise GridInterrupted(results)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _collect(fut: Future, cell: Cell, t0: float, out: Path) -> CellResult:
    seconds = time.perf_counter() - t0
    try:
        r = fut.result()
    except BaseException as e:  # noqa: BLE001 - a worker process died (killed, out of memory)
        return CellResult(cell, "interrupted" if isinstance(e, KeyboardInterrupt) else "failed",
                          _one_line(e), seconds)
    if r.get("traceback"):
        _log_error(out, cell, None, r["traceback"])
    return CellResult(cell, r["status"], r.get("error", ""), seconds, r.get("metrics", {}))


_STOP = None  # in a worker process: the grid's stop event


def _init_worker(threads: int, stop) -> None:
    # Workers leave Ctrl-C to the grid process, which sets ``stop``; a training cell then saves a
    # checkpoint at its next step and returns "interrupted".
    global _STOP
    _STOP = stop
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    import torch

    torch.set_num_threads(threads)


def _train_cell(config: dict, run_dir: str) -> dict:
    """Worker entry point: train one cell; never raises (exceptions do not all survive pickling)."""
    from .. import api
    from ..errors import Interrupted

    try:
        metrics = api.train(RunConfig.from_dict(config), run_dir, progress=False,
                            on_step=lambda step: _STOP is not None and _STOP.is_set())
        return {"status": "done", "metrics": _brief(metrics)}
    except (Interrupted, KeyboardInterrupt):
        return {"status": "interrupted"}
    except EmotuneError as e:
        return {"status": "failed", "error": _one_line(e)}
    except Exception as e:  # noqa: BLE001
        return {"status": "failed", "error": _one_line(e), "traceback": traceback.format_exc()}


def _brief(metrics: dict) -> dict:
    v, t = metrics.get("validation", {}), metrics.get("train", {})
    return {"val_accuracy": v.get("accuracy"), "val_f1_weighted": v.get("f1_weighted"), "val_loss": v.get("loss"),
            "runtime_s": t.get("runtime_s"), "steps": t.get("steps"), "best_step": t.get("best_step")}


def _summary(folder: Path) -> dict:
    path = folder / METRICS
    return _brief(read_json(path)) if path.is_file() else {}


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


def _log_error(out: Path, cell: Cell, e: BaseException | None, tb: str | None = None) -> None:
    if isinstance(e, EmotuneError) or not processes().main:
        return  # a user error: its one-line message says it all (or another data-parallel process's copy)
    with open(out / "grid-errors.log", "a", encoding="utf-8") as f:
        f.write(f"--- {cell.name} ({time.strftime('%Y-%m-%d %H:%M:%S')})\n")
        f.write(tb or "".join(traceback.format_exception(e)))


def _write_summary(out: Path, grid: Grid, results: list[CellResult], wall_s: float) -> None:
    """grid.json: every cell's folder, settings, last status and key figures, and each session's wall time
    (their sum is the grid's total wall time across resumptions)."""
    path = out / "grid.json"
    old = read_json(path) if path.is_file() else {}
    rows = {row["cell"]: row for row in old.get("cells", [])}
    for r in results:
        rows[r.cell.name] = {"cell": r.cell.name, "group": r.cell.group, "values": r.cell.values,
                             "status": r.status, "error": r.error, "seconds": round(r.seconds, 1), **r.metrics}
    sessions = old.get("sessions", []) + [{
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "wall_s": round(wall_s, 1),
        "trained": sum(r.status == "done" for r in results), "skipped": sum(r.status == "skipped" for r in results),
        "failed": sum(r.status == "failed" for r in results),
        "interrupted": sum(r.status == "interrupted" for r in results)}]
    write_json(path, {"name": grid.name, "wall_s": round(sum(s["wall_s"] for s in sessions), 1),
                      "sessions": sessions, "cells": list(rows.values())})
