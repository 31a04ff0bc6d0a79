"""What a model predicts: a Task owns its head, its loss, its metrics (and which of them are better higher), how
outputs look to users and how per-text predictions are written. The training loop, evaluation, inference, the
server and reports ask the run's task instead of assuming one softmax over classes."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ..errors import ConfigError
from ..registry import Registry

HIGHER_IS_BETTER: dict[str, bool] = {}
"""Every selection metric a registered task offers -> whether higher is better (tasks add theirs)."""


def is_better(metric: str, value: float, best: float | None) -> bool:
    if best is None:
        return True
    return value > best if HIGHER_IS_BETTER.get(metric, True) else value < best


class Task:
    """The single-label, multi-label or regression side of a model (see ``classification.py``)."""

    name = ""
    default_metric = "loss"
    """What ``train.metric`` selects checkpoints on unless a run says otherwise."""
    metrics_higher_is_better: dict[str, bool] = {}
    """The metrics ``train.metric`` may select checkpoints on (loss is always there)."""

    def head(self, in_features: int, num_outputs: int) -> nn.Module:
        """The layer from pooled features to this task's outputs."""
        return nn.Linear(in_features, num_outputs)

    def init_head(self, head: nn.Module, targets: Sequence[Any]) -> None:
        """Start a freshly built head from the training targets (multilabel: each label's prior); default: as
        built. Called once before training; a resumed run's checkpoint overwrites it."""

    def loss_weights(self, how: str | None, targets: Sequence[Any], num_outputs: int,
                     device: torch.device) -> torch.Tensor | None:
        """Per-output loss weights from the training targets (``train.class_weights``); None: unweighted."""
        return None

    losses: tuple[str, ...] = ()
    """The ``train.loss`` choices this task offers (the first is its default); empty: it has one loss."""

    def check_loss(self, kind: str | None) -> None:
        if kind is not None and kind not in self.losses:
            raise ConfigError(f"train.loss={kind} does not apply to {self.name or 'this'} runs "
                              f"({'choose ' + ' or '.join(self.losses) if self.losses else 'they have one loss'})")

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None = None,
             kind: str | None = None) -> torch.Tensor:
        """The training loss (``kind``: ``train.loss``, one of ``losses``; None: the default)."""
        raise NotImplementedError

    def consistency(self, a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """How far two forward passes of the same batch disagree (R-Drop's regulariser, ``train.rdrop``);
        ``weight``: the task's loss weights (``loss_weights``), for a task whose disagreement is scaled like its
        loss."""
        raise NotImplementedError

    def soften(self, teacher_logits: list[torch.Tensor], temperature: float) -> torch.Tensor:
        """Knowledge distillation's targets from one or more teachers' logits on the same texts (averaged)."""
        raise ConfigError(f"knowledge distillation (train.teacher) does not apply to {self.name or 'these'} runs")

    def distill(self, logits: torch.Tensor, soft: torch.Tensor, temperature: float,
                weight: torch.Tensor | None = None) -> torch.Tensor:
        """The distillation term of a batch: how far the student's logits are from the teachers' ``soft``."""
        raise ConfigError(f"knowledge distillation (train.teacher) does not apply to {self.name or 'these'} runs")

    def calibrate(self, logits: torch.Tensor, state: dict | None) -> torch.Tensor:
        """The logits with the run's fitted calibration applied (classification); default: unchanged."""
        return logits

    def outputs(self, logits: torch.Tensor, state: dict | None = None) -> torch.Tensor:
        """What users get from the logits (class probabilities for classification, calibrated by ``state``)."""
        raise NotImplementedError

    def metrics(self, logits: torch.Tensor, targets: Sequence[Any], label_names: list[str], *,
                state: dict | None = None) -> dict:
        """Every metric of these logits against the gold targets, the loss included (``state``: what
        ``fit_state`` chose for the run, e.g. multi-label thresholds; None during training)."""
        raise NotImplementedError

    def fit_state(self, logits: torch.Tensor, targets: Sequence[Any], label_names: list[str], *,
                  calibration: str | None = None) -> dict | None:
        """What the task fits once after training on the best model's validation logits (multi-label: per-label
        thresholds; classification: ``calibration``, temperature or vector scaling); saved as the run's
        task_state.json and passed back as ``state``. None: nothing to fit."""
        return None

    def check_metric(self, metric: str, label_names: list[str]) -> None:
        if metric not in self.metrics_higher_is_better and metric != "loss":
            raise ConfigError(f"unknown validation metric {metric!r}; choose one of "
                              f"{', '.join([*self.metrics_higher_is_better, 'loss'])}")

    def format(self, outputs: torch.Tensor, label_names: list[str], *, state: dict | None = None) -> list[dict]:
        """One dict per row of ``outputs``, as the library, the CLI and the server return predictions."""
        raise NotImplementedError

    def write_predictions(self, path: Path, texts: Sequence[str], gold: Sequence[Any] | None, logits: torch.Tensor,
                          label_names: list[str], *, state: dict | None = None) -> None:
        """Per-text predictions of a split (``predictions_<split>.csv``)."""
        raise NotImplementedError


TASKS: Registry[Task] = Registry("task")


def register_task(task: Task) -> Task:
    TASKS.register(task.name)(task)
    HIGHER_IS_BETTER.pop("loss", None)
    HIGHER_IS_BETTER.update({**task.metrics_higher_is_better, "loss": False})  # loss: always there, listed last
    return task


def task_for(cfg: Any = None) -> Task:
    """The task a run config predicts (``data.task``; classification when unset)."""
    return TASKS.get(getattr(getattr(cfg, "data", None), "task", None) or "classification")
