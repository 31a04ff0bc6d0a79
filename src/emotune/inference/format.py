"""The one place texts are checked before inference and predictions are shaped for users (library, CLI,
server, adapter sets)."""

from __future__ import annotations

from typing import Sequence

import torch

from ..errors import DataError


def check_texts(texts: Sequence[str]) -> None:
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise DataError(f"text {i + 1} is empty")


def format_outputs(probs: torch.Tensor, labels: list[str]) -> list[dict]:
    """Per row: the most probable label and every label's probability."""
    return [{"label": labels[int(p.argmax())], "probabilities": {name: float(v) for name, v in zip(labels, p.tolist())}}
            for p in probs]


def format_predictions(texts: Sequence[str], probs: torch.Tensor, labels: list[str]) -> list[dict]:
    """``format_outputs`` with each row's text first."""
    return [{"text": t, **row} for t, row in zip(texts, format_outputs(probs, labels))]
