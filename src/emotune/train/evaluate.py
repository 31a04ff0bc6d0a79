"""Forward passes over encoded data for evaluation: logits in the original order, and metrics against the
labels. Used by training (validation), evaluation of finished runs, zero-shot building and composition."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..data.encode import Encoded, batches, collate
from .metrics import classification_metrics
from .precision import autocast


@torch.inference_mode()
def predict_logits(model: nn.Module, data: Encoded, batch_size: int, device: torch.device,
                   pad_id: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Logits in the original order; batches sorted by length so little padding is computed."""
    was_training = model.training
    model.eval()
    order = batches([len(x) for x in data.ids], batch_size, shuffle=False)
    out = torch.empty(0)
    chunks: list[tuple[list[int], torch.Tensor]] = []
    for idx in order:
        b = collate([data.ids[i] for i in idx], pad_id)
        with autocast(device, dtype):
            logits = model(**{k: v.to(device) for k, v in b.items()})
        chunks.append((idx, logits.float().cpu()))
    if chunks:
        out = torch.empty(len(data), chunks[0][1].shape[-1])
        for idx, logits in chunks:
            out[idx] = logits
    model.train(was_training)
    return out


def evaluate_classifier(model: nn.Module, data: Encoded, label_names: list[str], batch_size: int,
                        device: torch.device, pad_id: int = 0,
                        dtype: torch.dtype = torch.float32) -> tuple[dict, torch.Tensor]:
    logits = predict_logits(model, data, batch_size, device, pad_id, dtype)
    labels = torch.tensor(data.labels)
    loss = nn.functional.cross_entropy(logits, labels).item()
    preds = logits.argmax(-1).numpy()
    return classification_metrics(np.asarray(data.labels), preds, label_names, loss), logits
