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


def format_predictions(texts: Sequence[str], outputs: torch.Tensor, labels: list[str], task: Task,
                       state: dict | None = None) -> list[dict]:
    """The task's row format (label and probabilities for classification), each row's text first; ``state``:
    the run's task state (multilabel thresholds, ``Run.task_state``)."""
    return [{"text": t, **row} for t, row in zip(texts, task.format(outputs, labels, state=state))]
