"""Several tasks on one shared encoder: a head per task, the model's outputs the heads' outputs side by side.

A multi-task run's label names are flat, ``<task>:<label>`` (``emotion:joy``, ``vad:V``), so everything that
sizes a model by its label count (loading, the predictor, the server) works unchanged; the composite task
below slices the outputs back into tasks. Each task is validated on its own data; the run's selection metric
``score`` is the mean of the tasks' selection metrics, each signed so that higher is better (accuracy, F1 and
Pearson r are already on a 0-1 scale; an error such as MSE counts negated)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from ..errors import ConfigError
from .base import HIGHER_IS_BETTER, TASKS, Task, task_for as single_task_for

SEP = ":"
SCORE = "score"
HIGHER_IS_BETTER[SCORE] = True


@dataclass
class Part:
    """One task of a multi-task model: its name, type, label names and columns of the model's outputs."""

    name: str
    task: Task
    labels: list[str]
    columns: slice
    metric: str
    weight: float = 1.0


def flat_labels(label_sets: dict[str, list[str]]) -> list[str]:
    return [f"{task}{SEP}{label}" for task, labels in label_sets.items() for label in labels]


def label_sets(flat: Sequence[str]) -> dict[str, list[str]]:
    """``<task>:<label>`` names back to {task: labels}, in order."""
    sets: dict[str, list[str]] = {}
    for name in flat:
        task, sep, label = name.partition(SEP)
        if not sep:
            raise ConfigError(f"multi-task label {name!r} names no task (expected task{SEP}label)")
        sets.setdefault(task, []).append(label)
    return sets


class MultiHead(nn.Module):
    """One head per task (``heads[name]``) over the same pooled vector; outputs concatenated in task order.
    With uncertainty weighting it also holds each task's learned log-variance ``log_vars`` (Kendall et al.
    2018): they train with the heads and are saved with the weights."""

    def __init__(self, in_features: int, parts: list[Part], uncertainty: bool = False):
        super().__init__()
        self.heads = nn.ModuleDict({p.name: p.task.head(in_features, len(p.labels)) for p in parts})
        self.log_vars = nn.Parameter(torch.zeros(len(parts))) if uncertainty else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([head(x).float() for head in self.heads.values()], -1)

    def set_statistics(self, targets: dict[str, dict]) -> None:
        """Regression heads' training mean and spread, keyed by task (targets.json of a multi-task run)."""
        for name, stats in targets.items():
            self.heads[name].set_statistics(stats["mean"], stats["std"])


class MultiTask(Task):
    """The tasks of a multi-task config, sized by the run's flat label names once they are known."""

    name = "multitask"
    default_metric = SCORE
    metrics_higher_is_better = {SCORE: True}

    def __init__(self, cfg: Any, labels: Sequence[str] | None = None):
        self.cfg = cfg
        self.specs = {spec.name: spec for spec in cfg.multitask.tasks}
        self.uncertainty = cfg.multitask.weighting == "uncertainty"
        self.parts: list[Part] = []
        if labels is not None:
            sets = label_sets(labels)
            if list(sets) != list(self.specs):
                raise ConfigError(f"the run's tasks {list(sets)} differ from its config's {list(self.specs)}")
            start = 0
            for name, names in sets.items():
                spec = self.specs[name]
                task = TASKS.get(spec.data.task or "classification")
                metric = spec.metric or task.default_metric
                task.check_metric(metric, names)
                self.parts.append(Part(name, task, names, slice(start, start + len(names)), metric, spec.weight))
                start += len(names)

    def check_loss(self, kind: str | None) -> None:
        """``train.loss`` applies to the tasks that offer it (huber: the regression tasks)."""
        if kind is not None and not any(kind in p.task.losses for p in self.parts):
            raise ConfigError(f"train.loss={kind} applies to none of the tasks "
                              f"({', '.join(f'{p.name}: {p.task.name}' for p in self.parts)})")

    def part(self, name: str) -> Part:
        return next(p for p in self.parts if p.name == name)

    def head(self, in_features: int, num_outputs: int) -> nn.Module:
        if not self.parts or sum(len(p.labels) for p in self.parts) != num_outputs:
            raise ConfigError("a multi-task head needs the run's labels (task:label names) to size its heads")
        return MultiHead(in_features, self.parts, self.uncertainty)

    def calibrate(self, logits: torch.Tensor, state: dict | None) -> torch.Tensor:
        state = state or {}
        return torch.cat([p.task.calibrate(logits[:, p.columns], state.get(p.name)) for p in self.parts], -1)

    def outputs(self, logits: torch.Tensor, state: dict | None = None) -> torch.Tensor:
        state = state or {}
        return torch.cat([p.task.outputs(logits[:, p.columns], state.get(p.name)) for p in self.parts], -1)

    def init_head(self, head: nn.Module, targets: dict[str, Sequence[Any]]) -> None:
        """Each task's head from its own training targets (``targets``: task name -> targets)."""
        for p in self.parts:
            if p.name in targets:
                p.task.init_head(head.heads[p.name], targets[p.name])

    def fit_state(self, logits: Any, targets: Any, label_names: list[str], *,
                  calibration: str | None = None) -> dict | None:
        """Each task's fitted state (multilabel thresholds, classification calibration), keyed by task; None when
        no task fits any."""
        state = {p.name: p.task.fit_state(logits[p.name][:, p.columns], targets[p.name], p.labels,
                                          calibration=calibration)
                 for p in self.parts if p.name in logits}
        state = {name: s for name, s in state.items() if s is not None}
        return state or None

    def format(self, outputs: torch.Tensor, label_names: list[str], *, state: dict | None = None) -> list[dict]:
        """One entry per task, each in its task type's format: {"tasks": {name: {...}}}."""
        state = state or {}
        per = {p.name: p.task.format(outputs[:, p.columns], p.labels, state=state.get(p.name)) for p in self.parts}
        return [{"tasks": {name: rows[i] for name, rows in per.items()}} for i in range(len(outputs))]

    def score(self, per_task: dict[str, dict]) -> float:
        """Mean of the tasks' selection metrics, each signed so that higher is better."""
        values = [per_task[p.name][p.metric] * (1 if HIGHER_IS_BETTER.get(p.metric, True) else -1)
                  for p in self.parts if p.name in per_task]
        return float(sum(values) / len(values))

    def metrics(self, logits: Any, targets: Any, label_names: list[str], *, state: dict | None = None) -> dict:
        """``logits`` and ``targets``: {task: the full model logits on that task's texts, its gold targets};
        ``state``: the run's fitted state keyed by task (multilabel thresholds)."""
        state = state or {}
        per = {p.name: p.task.metrics(logits[p.name][:, p.columns], targets[p.name], p.labels,
                                      state=state.get(p.name))
               for p in self.parts if p.name in logits}
        return {SCORE: self.score(per), **per}


def task_for(cfg: Any = None, labels: Sequence[str] | None = None) -> Task:
    """The task a run config predicts: its multi-task composite (sized by ``labels``, the run's flat label
    names) when it lists tasks, else ``data.task`` (classification when unset)."""
    multitask = getattr(cfg, "multitask", None)
    if multitask is not None and multitask.tasks:
        return MultiTask(cfg, labels)
    return single_task_for(cfg)
