"""Knowledge distillation in the training loop (``train.teacher``): each training row's teacher targets
(computed once, before training, by ``workflows/teacher.py``) and the mixed loss

    alpha x (the task's loss with the gold labels) + (1 - alpha) x (the task's distillation term)

where the term is T² x KL to the teachers' softened class probabilities for classification (Hinton et al.
2015), the standardised squared error to their values for regression. Rows without a gold label (texts added
from ``train.distill_unlabeled``) count in the soft term only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..tasks import Task


@dataclass
class Distillation:
    soft: torch.Tensor
    """Per training row (in the training data's order): the teachers' targets (softened probabilities, values)."""
    gold: torch.Tensor
    """Per training row: True where it has a gold label."""
    alpha: float
    temperature: float

    def loss(self, task: Task, logits: torch.Tensor, targets: torch.Tensor, idx: list[int],
             weight: torch.Tensor | None, kind: str | None) -> torch.Tensor:
        rows = torch.as_tensor(idx)
        soft = self.soft[rows].to(logits.device)
        term = task.distill(logits, soft, self.temperature, weight)
        gold = self.gold[rows].to(logits.device)
        if self.alpha == 0 or not bool(gold.any()):
            return (1 - self.alpha) * term
        hard = task.loss(logits[gold], targets[gold], weight, kind)
        return self.alpha * hard + (1 - self.alpha) * term
