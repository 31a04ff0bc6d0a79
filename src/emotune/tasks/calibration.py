"""Calibrated confidence for classification: temperature scaling, or vector scaling, fitted on validation
logits (Guo et al. 2017, "On Calibration of Modern Neural Networks"), and the figures that say how well
probabilities match frequencies: expected calibration error (15 equal-width confidence bins), Brier score
and negative log-likelihood.

Temperature scaling divides the logits by one T > 0: predictions never change, only their confidence.
Vector scaling multiplies each class's logit by its own weight and adds a bias (2 x classes parameters),
which may change predictions. Both minimise the validation NLL with L-BFGS (a convex problem for T in log
space; a few dozen iterations).

The fitted parameters are saved in the run's task_state.json under ``calibration`` and applied wherever
probabilities are made (predict, serve, evaluate, ensembles). scikit-learn's CalibratedClassifierCV fits
sigmoid/isotonic maps per class for its own estimators; neither is temperature scaling, hence this module.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..errors import ConfigError

HOWS = ("temperature", "vector")
BINS = 15


def fit_calibration(logits: torch.Tensor, targets: Sequence[int], how: str) -> dict:
    """The calibration parameters minimising the NLL of ``logits`` against ``targets``."""
    if how not in HOWS:
        raise ConfigError(f"train.calibration must be one of {', '.join(HOWS)} or none, got {how!r}")
    x = logits.detach().double()
    y = torch.as_tensor(list(targets), dtype=torch.long)
    k = x.shape[1]
    log_t = torch.zeros(1, dtype=torch.double, requires_grad=True)
    w = torch.ones(k, dtype=torch.double, requires_grad=True)
    b = torch.zeros(k, dtype=torch.double, requires_grad=True)
    params = [log_t] if how == "temperature" else [w, b]
    opt = torch.optim.LBFGS(params, lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def scaled() -> torch.Tensor:
        return x / log_t.exp() if how == "temperature" else x * w + b

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(scaled(), y)
        loss.backward()
        return loss

    if len(y):
        opt.step(closure)
    if how == "temperature":
        return {"how": how, "temperature": float(log_t.detach().exp())}
    return {"how": how, "weights": w.detach().tolist(), "biases": b.detach().tolist()}


def apply_calibration(logits: torch.Tensor, calibration: dict | None) -> torch.Tensor:
    """``logits`` with the fitted calibration applied (unchanged when there is none)."""
    if not calibration:
        return logits
    if calibration["how"] == "temperature":
        return logits / calibration["temperature"]
    w = torch.tensor(calibration["weights"], dtype=logits.dtype)
    b = torch.tensor(calibration["biases"], dtype=logits.dtype)
    if w.shape[0] != logits.shape[-1]:
        raise ConfigError(f"the run's vector calibration has {w.shape[0]} classes, its logits {logits.shape[-1]}")
    return logits * w + b


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = BINS) -> float:
    """Sum over equal-width confidence bins of (share of texts in the bin) x |accuracy - mean confidence|."""
    if len(confidence) == 0:
        return 0.0
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for i in range(bins):
        in_bin = which == i
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def reliability(confidence: np.ndarray, correct: np.ndarray, bins: int = BINS) -> list[tuple[float, float, int]]:
    """(mean confidence, accuracy, count) per non-empty bin: the points of a reliability diagram."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    return [(float(confidence[which == i].mean()), float(correct[which == i].mean()), int((which == i).sum()))
            for i in range(bins) if (which == i).any()]


def coverage_curve(confidence: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Answering only the most confident texts: (coverage, accuracy on the answered, threshold) per cut."""
    order = np.argsort(-confidence, kind="stable")
    hits = np.cumsum(correct[order])
    n = np.arange(1, len(order) + 1)
    return n / max(len(order), 1), hits / n, confidence[order]


def calibration_metrics(probs: torch.Tensor, targets: Sequence[int], suffix: str = "") -> dict:
    """ECE (15 bins), Brier score (mean over texts of the squared distance to the one-hot gold, summed over
    classes) and NLL of class probabilities."""
    p = probs.double().numpy()
    y = np.asarray(list(targets), dtype=np.int64)
    if len(y) == 0:
        return {}
    confidence, pred = p.max(1), p.argmax(1)
    one_hot = np.eye(p.shape[1])[y]
    nll = float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None)).mean())
    return {f"ece{suffix}": expected_calibration_error(confidence, (pred == y).astype(np.float64)),
            f"brier{suffix}": float(((p - one_hot) ** 2).sum(1).mean()), f"nll{suffix}": nll}
