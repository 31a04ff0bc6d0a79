"""Regression: one or more continuous targets (e.g. EmoBank's valence, arousal and dominance).

The head predicts on the targets' own scale around their training mean; the loss is the mean squared error (or,
with ``train.loss=huber``, the Huber loss) of targets standardised by their training spread (each target weighs
the same whatever its scale), or with ``train.loss=ccc`` one minus the batch's concordance correlation (Lin 1989),
which rewards correlation and agreement of mean and spread together; Pearson r selects checkpoints."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr
from torch import nn

from ..errors import ConfigError
from ..io import write_text
from .base import Task, register_task


class RegressionHead(nn.Module):
    """A linear layer whose outputs are scaled and shifted by the training targets' spread and mean (set when
    the model is built for a run, from its targets.json: an untrained head predicts the training mean). They
    are plain floats, not buffers: a bfloat16 model would round a mean of 2.98 to the nearest 1/64."""

    def __init__(self, in_features: int, num_outputs: int):
        super().__init__()
        self.linear = nn.Linear(in_features, num_outputs)
        self.mean, self.std = [0.0] * num_outputs, [1.0] * num_outputs

    def set_statistics(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean, self.std = [float(v) for v in mean], [float(v) for v in std]

    @property
    def out_features(self) -> int:
        return self.linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.linear(x).float()
        return z * z.new_tensor(self.std) + z.new_tensor(self.mean)


def target_statistics(targets: Sequence[Sequence[float]]) -> dict:
    """Mean and standard deviation of each target over the training split (std never below 1e-6)."""
    y = np.asarray(targets, dtype=np.float64)
    return {"mean": y.mean(0).tolist(), "std": np.maximum(y.std(0), 1e-6).tolist()}


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray, names: list[str], loss: float | None = None) -> dict:
    """Pearson r, Spearman rho, MSE and MAE per target (``per_target``) and averaged over targets."""
    per = {}
    for i, name in enumerate(names):
        t, p = y_true[:, i], y_pred[:, i]
        constant = np.ptp(t) == 0 or np.ptp(p) == 0  # r is undefined: count it as no correlation
        per[name] = {"pearson": 0.0 if constant else float(pearsonr(t, p)[0]),
                     "spearman": 0.0 if constant else float(spearmanr(t, p)[0]),
                     "mse": float(np.mean((t - p) ** 2)), "mae": float(np.mean(np.abs(t - p)))}
    out: dict = {} if loss is None else {"loss": float(loss)}
    for key in ("pearson", "spearman", "mse", "mae"):
        out[key] = float(np.mean([per[n][key] for n in names]))
    out["per_target"] = per
    return out


class Regression(Task):
    name = "regression"
    default_metric = "pearson"
    metrics_higher_is_better = {"pearson": True, "spearman": True, "mse": False, "mae": False}
    losses = ("mse", "huber", "ccc")

    def head(self, in_features: int, num_outputs: int) -> nn.Module:
        return RegressionHead(in_features, num_outputs)

    def loss_weights(self, how: str | None, targets: Sequence, num_outputs: int, device: torch.device):
        """1 / variance per target: the squared error of standardised targets."""
        if how is not None:
            raise ConfigError("train.class_weights applies to classification, not regression")
        std = torch.tensor(target_statistics(targets)["std"], dtype=torch.float32, device=device)
        return 1.0 / std**2

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None = None,
             kind: str | None = None) -> torch.Tensor:
        """Squared (or Huber, delta 1) error of the targets standardised by their training spread (``weight``
        = 1 / variance per target, from ``loss_weights``), or 1 - CCC per target over the batch, averaged."""
        if kind == "ccc":  # scale-free: the standardisation would cancel out
            x, y = logits.float(), targets.float()
            mx, my = x.mean(0), y.mean(0)
            cov = ((x - mx) * (y - my)).mean(0)
            ccc = 2 * cov / (x.var(0, unbiased=False) + y.var(0, unbiased=False) + (mx - my) ** 2 + 1e-8)
            return (1 - ccc).mean()
        err = logits.float() - targets.float()
        if weight is not None:
            err = err * weight.sqrt()
        if kind == "huber":
            return nn.functional.huber_loss(err, torch.zeros_like(err), delta=1.0)
        return (err**2).mean()

    def consistency(self, a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Squared difference of the two passes' values, standardised like the loss (``weight`` = 1 / variance)."""
        diff = (a.float() - b.float()) ** 2
        return (diff * weight if weight is not None else diff).mean()

    def soften(self, teacher_logits: list[torch.Tensor], temperature: float) -> torch.Tensor:
        """The teachers' predicted values, averaged (no temperature: values are not probabilities)."""
        return torch.stack([t.float() for t in teacher_logits]).mean(0)

    def distill(self, logits: torch.Tensor, soft: torch.Tensor, temperature: float,
                weight: torch.Tensor | None = None) -> torch.Tensor:
        """Squared error to the teachers' values, standardised like the loss (``weight`` = 1 / variance)."""
        return self.consistency(logits, soft, weight)

    def outputs(self, logits: torch.Tensor, state: dict | None = None) -> torch.Tensor:
        return logits.float()

    def metrics(self, logits: torch.Tensor, targets: Sequence, label_names: list[str], *,
                state: dict | None = None) -> dict:
        y = np.asarray(targets, dtype=np.float64)
        pred = logits.float().numpy().astype(np.float64)
        std = np.maximum(y.std(0), 1e-6)  # the loss on this split's scale: standardised squared error
        loss = float(np.mean(((pred - y) / std) ** 2))
        return regression_metrics(y, pred, label_names, loss)

    def format(self, outputs: torch.Tensor, label_names: list[str], *, state: dict | None = None) -> list[dict]:
        """Every target's predicted value."""
        return [{"values": {name: float(v) for name, v in zip(label_names, row.tolist())}} for row in outputs]

    def write_predictions(self, path: Path, texts: Sequence[str], gold: Sequence | None, logits: torch.Tensor,
                          label_names: list[str], *, state: dict | None = None) -> None:
        """text, then gold and predicted value of every target."""
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["text", *[f"{k}_{n}" for n in label_names for k in ("gold", "predicted")]])
        for i, text in enumerate(texts):
            row = logits[i].tolist()
            w.writerow([text, *[v for j in range(len(label_names)) for v in (
                "" if gold is None else f"{gold[i][j]:.4f}", f"{row[j]:.4f}")]])
        write_text(path, buf.getvalue())


REGRESSION = register_task(Regression())
