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
from ..tasks.instruct import labels_of
from ..tasks.instruct import parts as instruct_parts
from ..tasks.multitask import Part

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
        # A per-task run always names its data: it must never share a family with single-task runs.
        prefix = [Path(data_name(e)).name] if len(datasets) > 1 or task_kind(e) in PER_TASK else []
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
    name = e.metrics.get("retrained", {}).get("source_data") or e.run.config.data.name
    return f"instructions: {Path(name).name}" if is_instruct(e) else name


def is_multitask(e: Entry) -> bool:
    return e.run is not None and e.run.config.is_multitask


def is_instruct(e: Entry) -> bool:
    """An instruction-tuned decoder run: one model answering several instruction tasks (data.task: instruct)."""
    return e.run is not None and not e.run.config.is_multitask and e.run.config.data.task == "instruct"


PER_TASK = ("multitask", "instruct")
"""Kinds whose metrics are per task (metrics[split][task]), with an overall ``score``: their tables compare."""


def task_kind(e: Entry) -> str:
    """classification, regression, multilabel, multitask or instruct: which rows, sections and metrics suit the
    run."""
    if e.run is None:  # metrics alone: the report's original, classification
        return "classification"
    return "multitask" if e.run.config.is_multitask else (e.run.config.data.task or "classification")


def metrics_of(kind: str) -> set[str]:
    """The validation metrics a run of this kind can be chosen on (a multi-task run has no overall loss)."""
    if kind == "multitask":
        return {SCORE}
    if kind == "instruct":  # the answers' loss (its checkpoints' default), or the mean of the tasks' metrics
        return {SCORE, "loss"}
    return {*TASKS.get(kind).metrics_higher_is_better, "loss"}


def is_percent(metric: str) -> bool:
    """Shown as a percentage: the classification and multi-label scores (not loss, r, errors or score)."""
    return any(metric in TASKS.get(k).metrics_higher_is_better for k in ("classification", "multilabel"))


def parts(e: Entry) -> list[Part]:
    """A per-task run's tasks (``emotune.tasks.multitask.Part``: name, task, labels, metric): a multi-task run's,
    or an instruction-tuned run's instruction tasks (``vad_V``...) as the same Parts; [] otherwise."""
    if is_multitask(e):
        return e.run.task.parts
    if not is_instruct(e):
        return []
    state = e.run.task_state or {}
    return [Part(name, TASKS.get(desc["type"]), labels_of(name, desc), cols,
                 desc.get("metric") or TASKS.get(desc["type"]).default_metric)
            for name, desc, cols in instruct_parts(state)]


def instruct_tasks(e: Entry) -> dict[str, dict]:
    """An instruction-tuned run's tasks as task_state.json describes them (type, source, target...); {} else."""
    return ((e.run.task_state or {}).get("tasks") or {}) if is_instruct(e) else {}


def row_key(p: Part, described: dict[str, dict]) -> tuple[str, str | None]:
    """The (task, target) row a task fills: a multi-task run's task by its name; an instruction task under the task
    it was built from (``vad_V`` -> ("vad", "V")), so that both kinds of run share rows."""
    desc = described.get(p.name)
    return (p.name, None) if desc is None else (desc.get("source") or p.name, desc.get("target"))


def task_figures(e: Entry, split: str) -> dict[tuple[str, str | None], dict]:
    """A per-task run's figures on a split by row (``row_key``); a regression task fills its targets' rows too, and
    a source's targets answered one by one (instructions) fill the source's row with their mean, as a multi-task
    run reports a regression task."""
    out: dict[tuple[str, str | None], dict] = {}
    described = instruct_tasks(e)
    for p in parts(e):
        got = e.value(split, p.name)
        if not isinstance(got, dict):
            continue
        task, target = row_key(p, described)
        out[(task, target)] = got
        if target is None:
            out.update({(task, t): v for t, v in (got.get("per_target") or {}).items()})
    for source in {s for s, t in out if t is not None and (s, None) not in out}:
        targets = [v for (s, t), v in out.items() if s == source and t is not None]
        keys = set.intersection(*[{k for k, x in v.items() if isinstance(x, (int, float))} for v in targets])
        out[(source, None)] = {k: sum(v[k] for v in targets) / len(targets) for k in keys}
    return out


def task_rows_of(e: Entry) -> dict[tuple[str, str | None], str]:
    """(task, target) -> the task's selection metric: the rows a per-task run fills, in its tasks' order."""
    out: dict[tuple[str, str | None], str] = {}
    described = instruct_tasks(e)
    for p in parts(e):
        task, target = row_key(p, described)
        out.setdefault((task, None), p.metric)
        targets = [target] if target else (p.labels if p.task.name == "regression" else [])
        out.update({(task, t): p.metric for t in targets})
    return out


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
    return SCORE if kind == "multitask" else TASKS.get(kind).default_metric  # instruct: its answers' loss


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
