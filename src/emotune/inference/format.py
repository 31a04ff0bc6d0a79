"""The one place texts are checked before inference and predictions are shaped for users (library, CLI,
server, adapter sets): the run's task formats each row."""

from __future__ import annotations

from typing import Sequence

import torch

from ..errors import DataError
from ..tasks import Task


def check_texts(texts: Sequence[str]) -> None:
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise DataError(f"text {i + 1} is empty")


UNCERTAIN = "uncertain"


def check_min_confidence(value: float | None) -> None:
    if value is not None and not 0.0 <= value <= 1.0:
        raise DataError(f"min_confidence must be between 0 and 1, got {value}")


def abstain(row: dict, min_confidence: float) -> dict:
    """A classification answer (``label`` + ``probabilities``) below ``min_confidence`` becomes ``uncertain``,
    keeping its probabilities and its best guess (``best_guess``); multi-task rows are abstained per task."""
    if "tasks" in row:
        return {**row, "tasks": {name: abstain(sub, min_confidence) for name, sub in row["tasks"].items()}}
    if isinstance(row.get("label"), str) and "probabilities" in row:
        if max(row["probabilities"].values()) < min_confidence:
            return {**row, "label": UNCERTAIN, "best_guess": row["label"]}
    return row


def format_predictions(texts: Sequence[str], outputs: torch.Tensor, labels: list[str], task: Task,
                       state: dict | None = None, min_confidence: float | None = None) -> list[dict]:
    """The task's row format (label and probabilities for classification), each row's text first; ``state``:
    the run's task state (multilabel thresholds, calibration: ``Run.task_state``); ``min_confidence``: a
    classification answer whose top probability is below it is ``uncertain`` (see ``abstain``)."""
    check_min_confidence(min_confidence)
    rows = [{"text": t, **row} for t, row in zip(texts, task.format(outputs, labels, state=state))]
    return rows if not min_confidence else [abstain(row, min_confidence) for row in rows]
