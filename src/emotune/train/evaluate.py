"""Forward passes over encoded data for evaluation: logits in the original order, and metrics against the
labels. Used by training (validation), evaluation of finished runs, zero-shot building and composition."""

from __future__ import annotations

import torch
from torch import nn

from ..data.encode import Encoded, batches, collate
from ..tasks import CLASSIFICATION, Task
from .precision import autocast


def predict_logits(model: nn.Module, data: Encoded, batch_size: int, device: torch.device,
                   pad_id: int = 0, dtype: torch.dtype = torch.float32, *, no_grad: bool = False) -> torch.Tensor:
    """Logits in the original order; batches sorted by length so little padding is computed. Under inference mode,
    or with ``no_grad`` under ``torch.no_grad``: for a model whose forward writes tensors into its parameters that
    a later backward uses (DeepSpeed ZeRO-3 gathers its partitions), which inference mode would make unusable."""
    with torch.no_grad() if no_grad else torch.inference_mode():
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


def evaluate_model(model: nn.Module, data: Encoded, label_names: list[str], batch_size: int, device: torch.device,
                   pad_id: int = 0, dtype: torch.dtype = torch.float32,
                   task: Task = CLASSIFICATION) -> tuple[dict, torch.Tensor]:
    """(the task's metrics, the logits) of ``model`` on ``data``."""
    logits = predict_logits(model, data, batch_size, device, pad_id, dtype)
    return task.metrics(logits, data.labels, label_names), logits
