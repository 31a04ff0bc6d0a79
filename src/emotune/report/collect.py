"""Gather run folders for a report: method families, the hyper-parameters that vary, the chosen run per family.

A family is what the study compares: a method as configured (full fine-tuning, LoRA on attention, LoRA
on every linear layer, ...), prefixed by the model and the data set when a report holds several of
them, so classic models and transformers share one set of tables. Family names come from a registry
keyed by method name; a method without an entry is its own family.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import RunError
from ..experiments.settings import flatten, labels
from ..models import is_classic
from ..runs import METRICS, READ_ERRORS, Run, find_runs, read_history, unreadable
from ..tasks import HIGHER_IS_BETTER, SCORE, TASKS

# Config keys that never distinguish runs in a table (where the data lives, how many threads ran).
IGNORED_KEYS = {"data.data_dir", "train.threads", "train.device", "train.checkpoint"}


@dataclass
class Entry:
    """One run as a report sees it."""

    run: Run | None  # None: metrics alone (tests, ad-hoc tables)
    name: str
    family: str = ""
    metrics: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    flat: dict = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return self.run.path

    @property
    def retrained(self) -> bool:
        return "retrained" in self.metrics

    def value(self, split: str, key: str) -> Any:
        return self.metrics.get(split, {}).get(key)


@dataclass
class Collection:
    entries: list[Entry]
    """Finished runs with held-out validation figures: the ones tables compare and choose from."""
    retrained: list[Entry]
    """Runs retrained on train+validation (validation figures are not held out): test only."""
    unfinished: list[Entry]
    """Interrupted, pruned or still running."""

    def families(self) -> dict[str, list[Entry]]:
        out: dict[str, list[Entry]] = {}
        for e in self.entries:
            out.setdefault(e.family, []).append(e)
        return out


def method_family(method: dict) -> str:
    name = method.get("name", "?")
    options = {k: v for k, v in method.items() if k != "name"}
    from ..methods import METHODS

    return METHODS.get(name).family_name(options) if name in METHODS else str(name)


# What reading one run folder can raise: a config with an unknown field, corrupt JSON, an unreadable file.
def warn_stderr(message: str) -> None:
    """One plain line on stderr."""
    from rich.markup import escape

    from ..progress import console

    console.print(f"[yellow]warning:[/yellow] {escape(message)}", highlight=False, soft_wrap=True)


def find_readable_runs(root: str | Path, warn: Callable[[str], None] = warn_stderr) -> list[Run]:
    """find_runs, except that a run folder that cannot be opened (an unknown config field...) is skipped
    with a warning instead of stopping the search."""
    return find_runs(root, on_error=lambda folder, why: warn(f"skipped {folder}: {why}"))


def collect(dirs: list[str | Path], warn: Callable[[str], None] = warn_stderr) -> Collection:
    """Every run folder under ``dirs``; one that cannot be read (corrupt metrics.json or history, an
    unknown config field) is skipped with a one-line ``warn``ing."""
    runs: dict[Path, Run] = {}
    for d in dirs:
        for run in find_readable_runs(d, warn):
            runs.setdefault(run.path.resolve(), run)
    if not runs:
        raise RunError(f"no run folders under {', '.join(map(str, dirs))}")
    root = _common_root([Path(d).resolve() for d in dirs])
    entries = []
    for path, run in sorted(runs.items()):
        try:
            metrics = run.metrics
            history = read_history(path)  # history.jsonl, or an older run's history.json
            if not isinstance(metrics, dict) or not isinstance(history, list):
                raise ValueError(f"{METRICS if not isinstance(metrics, dict) else 'its history'} "
                                 "does not hold what a run writes")
            flat = {k: v for k, v in flatten(run.config.to_dict()).items() if k not in IGNORED_KEYS}
        except READ_ERRORS as e:
            warn(f"skipped {path}: {unreadable(e)}")
            continue
        entries.append(Entry(run, _relative(path, root), metrics=metrics, history=history, flat=flat))
    if not entries:
        raise RunError(f"no readable run folders under {', '.join(map(str, dirs))}")
    datasets = {data_name(e) for e in entries}
    models = {e.run.config.model.name for e in entries}
    for e in entries:
        # A multi-task run always names its tasks: it must never share a family with single-task runs.
        prefix = [Path(data_name(e)).name] if len(datasets) > 1 or is_multitask(e) else []
        model = e.run.config.model.name
        if is_classic(model):  # a classic model is its own family (its method is always `full`)
            e.family = " · ".join(prefix + [f"{model} (classic)"])
            continue
        prefix += [Path(model).name] if len(models) > 1 else []
        e.family = " · ".join(prefix + [method_family(e.run.config.method)])
    _split_kinds(entries)
    finished = [e for e in entries if e.metrics.get("completed")]
    return Collection([e for e in finished if not e.retrained], [e for e in finished if e.retrained],
                      [e for e in entries if not e.metrics.get("completed")])


def _split_kinds(entries: list[Entry]) -> None:
    """One task type per family: the same data trained as another task (emotion as multilabel) is named so."""
    kinds: dict[str, set[str]] = {}
    for e in entries:
        kinds.setdefault(e.family, set()).add(task_kind(e))
    for e in entries:
        if len(kinds[e.family]) > 1 and task_kind(e) != "classification":
            e.family += f" ({task_kind(e)})"


def data_name(e: Entry) -> str:
    """The data set's name; a run retrained on merged train+validation files names the data it came from; a
    multi-task run: its task names (its own data.name is not what it trains on)."""
    if is_multitask(e):
        return "multi-task: " + " + ".join(t.name for t in e.run.config.multitask.tasks)
    return e.metrics.get("retrained", {}).get("source_data") or e.run.config.data.name


def is_multitask(e: Entry) -> bool:
    return e.run is not None and e.run.config.is_multitask


def task_kind(e: Entry) -> str:
    """classification, regression, multilabel or multitask: which rows, sections and metrics suit the run."""
    if e.run is None:  # metrics alone: the report's original, classification
        return "classification"
    return "multitask" if e.run.config.is_multitask else (e.run.config.data.task or "classification")


def metrics_of(kind: str) -> set[str]:
    """The validation metrics a run of this kind can be chosen on (a multi-task run has no overall loss)."""
    if kind == "multitask":
        return {SCORE}
    return {*TASKS.get(kind).metrics_higher_is_better, "loss"}


def is_percent(metric: str) -> bool:
    """Shown as a percentage: the classification and multi-label scores (not loss, r, errors or score)."""
    return any(metric in TASKS.get(k).metrics_higher_is_better for k in ("classification", "multilabel"))


def parts(e: Entry) -> list:
    """A multi-task run's tasks (``emotune.tasks.multitask.Part``: name, task, labels, metric); [] otherwise."""
    return e.run.task.parts if is_multitask(e) else []


def family_metric(entries: list[Entry], metric: str) -> str:
    """The metric that chooses a family's run: the report's ``metric`` where the family's task has it (every
    classification family of a classification report), else the runs' shared ``train.metric``, else the task's
    default."""
    kind = task_kind(entries[0])
    if metric in metrics_of(kind):
        return metric
    own = {e.run.config.train.metric for e in entries if e.run is not None}
    if len(own) == 1 and (m := own.pop()) in metrics_of(kind):
        return m
    return SCORE if kind == "multitask" else TASKS.get(kind).default_metric


def slug(text: str) -> str:
    """A file-name-safe form of a family or task name."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "family"


def _common_root(paths: list[Path]) -> Path:
    import os

    return Path(os.path.commonpath(paths)) if len(paths) > 1 else paths[0]


def _relative(path: Path, root: Path) -> str:
    try:
        rel = path.relative_to(root)
        return str(rel) if str(rel) != "." else path.name
    except ValueError:
        return str(path)


def varying(entries: list[Entry]) -> list[str]:
    """Config keys whose values differ between the entries, in config order."""
    keys: list[str] = []
    for e in entries:
        keys += [k for k in e.flat if k not in keys]
    return [k for k in keys if len({repr(e.flat.get(k)) for e in entries}) > 1]


def hyper_label(entry: Entry, keys: list[str]) -> str:
    """``lr=2e-05, wd=0.01``: the entry's values of the keys that vary in its table."""
    if not keys:
        keys = ["train.lr"]
    return ", ".join(labels({k: entry.flat.get(k) for k in keys}))


def sort_key(entry: Entry, keys: list[str]) -> tuple:
    def one(v: Any) -> tuple:
        return (0, v, "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0, repr(v))

    return tuple(one(entry.flat.get(k)) for k in keys) + ((1, 0, entry.name),)


def score(entry: Entry, metric: str) -> tuple:
    """Sort key: best validation ``metric`` first, then lower validation loss."""
    value = entry.value("validation", metric)
    loss = entry.value("validation", "loss")
    sign = -1 if HIGHER_IS_BETTER.get(metric, True) else 1
    return (value is None, sign * (value or 0.0), loss if loss is not None else float("inf"))


def choose(entries: list[Entry], metric: str) -> Entry:
    """The family's run with the best validation metric (ties: lower validation loss)."""
    return min(entries, key=lambda e: score(e, metric))
