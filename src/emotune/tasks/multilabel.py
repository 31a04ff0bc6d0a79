"""Multi-label classification: any number of labels per text (GoEmotions), one sigmoid output per label.

The loss is binary cross-entropy on the logits (``train.class_weights=balanced``: each label's positive term
weighted n_neg / n_pos of the training split, torch's ``pos_weight``); the head's biases start at the labels'
training log-odds. A label is predicted when its
probability is at or above its threshold. During training every threshold is 0.5 (the validation figures in
history.jsonl, and the ones checkpoints are chosen on, use 0.5); once training ends, ``fit_state`` picks each
label's threshold on the validation split (the one maximising that label's F1 over 0.05, 0.10 ... 0.95) and
the run keeps them in ``task_state.json``. The run's final validation metrics use those thresholds: they were
chosen on that same split, so those figures are optimistic; test figures (``emotune evaluate``) use the saved
thresholds unchanged. Metrics: micro and macro F1 (scikit-learn), Jaccard averaged over samples (a text with
no gold and no predicted label counts 1), exact match, and precision/recall/F1 per label (``per_class``)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from sklearn.metrics import jaccard_score, precision_recall_fscore_support
from torch import nn

from ..errors import ConfigError, RunError
from ..io import write_text
from .base import Task, register_task

DEFAULT_THRESHOLD = 0.5
THRESHOLD_GRID = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 0.05 .. 0.95
SEP = ";"  # joins label names in prediction files


def multi_hot(targets: Sequence[Sequence[float]], n_labels: int) -> np.ndarray:
    """Gold targets (multi-hot float lists) as an (n, labels) 0/1 integer array."""
    y = np.asarray(targets, dtype=np.float64).reshape(-1, n_labels)
    return (y > 0.5).astype(np.int64)


def thresholds(state: dict | None, label_names: list[str]) -> np.ndarray:
    """Each label's threshold: the run's (``state["thresholds"]``, by name) when given, else 0.5."""
    if state is None:
        return np.full(len(label_names), DEFAULT_THRESHOLD)
    saved = state.get("thresholds") or {}
    missing = [name for name in label_names if name not in saved]
    if missing:
        raise RunError(f"the run's task_state.json has no threshold for label(s) {', '.join(missing)}")
    return np.asarray([float(saved[name]) for name in label_names])


def multilabel_metrics(y_true: np.ndarray, y_pred: np.ndarray, label_names: list[str],
                       loss: float | None = None, cut: np.ndarray | None = None) -> dict:
    """Micro/macro P/R/F1, Jaccard (samples), exact match and per-label P/R/F1 of 0/1 arrays (n, labels);
    ``cut``: the thresholds that made ``y_pred``, recorded per label."""
    labels = list(range(len(label_names)))
    out: dict = {} if loss is None else {"loss": float(loss)}
    for avg in ("micro", "macro"):
        p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=avg, zero_division=0)
        out.update({f"precision_{avg}": float(p), f"recall_{avg}": float(r), f"f1_{avg}": float(f)})
    out["jaccard"] = float(jaccard_score(y_true, y_pred, average="samples", zero_division=1))
    out["exact_match"] = float(np.mean(np.all(y_true == y_pred, axis=1))) if len(y_true) else 0.0
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=None, zero_division=0)
    out["per_class"] = {name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                               "support": int(s[i]),
                               **({} if cut is None else {"threshold": float(cut[i])})}
                        for i, name in enumerate(label_names)}
    return out


def best_thresholds(probs: np.ndarray, y_true: np.ndarray, grid: Sequence[float] = THRESHOLD_GRID) -> np.ndarray:
    """Per label, the grid threshold maximising that label's F1 (predicted: probability >= threshold). Ties go
    to the threshold nearest 0.5, so a label without positives in the data keeps 0.5."""
    grid_arr = np.asarray(grid, dtype=np.float64)
    pred = probs[None, :, :] >= grid_arr[:, None, None]  # (grid, n, labels)
    gold = y_true.astype(bool)[None]
    tp = (pred & gold).sum(1)
    fp = (pred & ~gold).sum(1)
    fn = (~pred & gold).sum(1)
    denom = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros(tp.shape, dtype=np.float64), where=denom > 0)  # (grid, labels)
    order = np.argsort(np.abs(grid_arr - DEFAULT_THRESHOLD), kind="stable")  # nearest 0.5 first
    best = order[np.argmax(f1[order] >= f1.max(0, keepdims=True) - 1e-12, axis=0)]
    return grid_arr[best]


class MultiLabel(Task):
    name = "multilabel"
    default_metric = "f1_micro"
    metrics_higher_is_better = {"f1_micro": True, "f1_macro": True, "jaccard": True}

    def init_head(self, head: nn.Module, targets: Sequence) -> None:
        """Each label's bias starts at its training log-odds (Laplace-smoothed), so an untrained head predicts
        the label frequencies and training goes into telling labels apart. From a bias of 0 (every probability
        0.5) a short MiniLM run on GoEmotions never got past predicting the priors (micro F1 0 at 0.5)."""
        bias = getattr(head, "bias", None)
        if not isinstance(bias, torch.Tensor) or not len(targets):
            return
        y = multi_hot(targets, bias.numel())
        prior = (y.sum(0) + 1.0) / (len(y) + 2.0)
        with torch.no_grad():
            bias.copy_(torch.as_tensor(np.log(prior / (1 - prior)), dtype=bias.dtype))

    def loss_weights(self, how: str | None, targets: Sequence, num_outputs: int,
                     device: torch.device) -> torch.Tensor | None:
        """``balanced``: pos_weight = n_neg / n_pos per label (1 for a label never positive in training)."""
        if how is None:
            return None
        if how != "balanced":
            raise ConfigError(f"train.class_weights must be `balanced` or null, got {how!r}")
        y = multi_hot(targets, num_outputs)
        pos = y.sum(0).astype(np.float64)
        weights = np.divide(len(y) - pos, pos, out=np.ones(num_outputs), where=pos > 0)
        return torch.tensor(weights, dtype=torch.float32, device=device)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None = None,
             kind: str | None = None) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(logits.float(), targets.float(), pos_weight=weight)

    def consistency(self, a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Symmetric KL between the two passes' per-label Bernoulli distributions, summed over labels (the
        positive weights play no part)."""
        pa, pb = torch.sigmoid(a.float()), torch.sigmoid(b.float())
        la, lb = nn.functional.logsigmoid(a.float()), nn.functional.logsigmoid(b.float())
        na, nb = nn.functional.logsigmoid(-a.float()), nn.functional.logsigmoid(-b.float())
        sym = (pa - pb) * (la - lb) + ((1 - pa) - (1 - pb)) * (na - nb)  # KL(a||b) + KL(b||a)
        return 0.5 * sym.sum(-1).mean()

    def soften(self, teacher_logits: list[torch.Tensor], temperature: float) -> torch.Tensor:
        """Each label's teacher probability at temperature T, averaged over teachers."""
        return torch.stack([torch.sigmoid(t.float() / temperature) for t in teacher_logits]).mean(0)

    def distill(self, logits: torch.Tensor, soft: torch.Tensor, temperature: float,
                weight: torch.Tensor | None = None) -> torch.Tensor:
        """T² x binary cross-entropy of the student's label probabilities at T against the teachers'."""
        return temperature**2 * nn.functional.binary_cross_entropy_with_logits(logits.float() / temperature,
                                                                               soft.float())

    def outputs(self, logits: torch.Tensor, state: dict | None = None) -> torch.Tensor:
        return torch.sigmoid(logits.float())

    def metrics(self, logits: torch.Tensor, targets: Sequence, label_names: list[str], *,
                state: dict | None = None) -> dict:
        """At the run's thresholds (``state``), else at 0.5 (as during training)."""
        y = multi_hot(targets, len(label_names))
        loss = self.loss(logits, torch.as_tensor(y, dtype=torch.float32)).item() if len(y) else 0.0
        cut = thresholds(state, label_names)
        pred = (self.outputs(logits).numpy() >= cut).astype(np.int64)
        return multilabel_metrics(y, pred, label_names, loss, cut)

    def fit_state(self, logits: torch.Tensor, targets: Sequence, label_names: list[str], *,
                  calibration: str | None = None) -> dict | None:
        """Per-label thresholds maximising each label's F1 on these (validation) logits."""
        cut = best_thresholds(self.outputs(logits).numpy(), multi_hot(targets, len(label_names)))
        return {"thresholds": {name: float(t) for name, t in zip(label_names, cut)}}

    def format(self, outputs: torch.Tensor, label_names: list[str], *, state: dict | None = None) -> list[dict]:
        """The labels at or above their thresholds (in label order) and every label's probability."""
        cut = thresholds(state, label_names)
        rows = []
        for p in outputs.tolist():
            rows.append({"labels": [name for name, v, t in zip(label_names, p, cut) if v >= t],
                         "scores": {name: float(v) for name, v in zip(label_names, p)}})
        return rows

    def write_predictions(self, path: Path, texts: Sequence[str], gold: Sequence | None, logits: torch.Tensor,
                          label_names: list[str], *, state: dict | None = None) -> None:
        """text, gold labels and predicted labels (each joined with ``;``), then every label's probability."""
        probs = self.outputs(logits)
        rows = self.format(probs, label_names, state=state)
        y = multi_hot(gold, len(label_names)) if gold is not None else None
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["text", "labels", "predicted", *[f"p_{name}" for name in label_names]])
        for i, text in enumerate(texts):
            gold_names = "" if y is None else SEP.join(n for n, v in zip(label_names, y[i]) if v)
            w.writerow([text, gold_names, SEP.join(rows[i]["labels"]), *[f"{p:.6f}" for p in probs[i].tolist()]])
        write_text(path, buf.getvalue())


MULTILABEL = register_task(MultiLabel())
