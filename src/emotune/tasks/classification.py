"""Single-label classification: softmax over classes, cross-entropy, accuracy and P/R/F1 (scikit-learn)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support
from torch import nn

from ..errors import ConfigError
from ..io import write_text
from .base import Task, register_task
from .calibration import apply_calibration, calibration_metrics, fit_calibration

POLARITY = ("positive", "negative")


def has_polarity(label_names: list[str]) -> bool:
    return all(name in label_names for name in POLARITY)


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], label_names: list[str],
                           loss: float | None = None) -> dict:
    """Accuracy, weighted and macro P/R/F1, per-class report and confusion matrix; with classes named
    positive and negative also ``f1_pn``, the mean of their F1 (SemEval-2017 4A's F1^PN)."""
    labels = list(range(len(label_names)))
    out: dict = {} if loss is None else {"loss": float(loss)}
    out["accuracy"] = float(accuracy_score(y_true, y_pred))
    for avg in ("weighted", "macro"):
        p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=avg, zero_division=0)
        out.update({f"precision_{avg}": float(p), f"recall_{avg}": float(r), f"f1_{avg}": float(f)})
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    if has_polarity(label_names):
        out["f1_pn"] = float(np.mean([f[label_names.index(name)] for name in POLARITY]))
    out["per_class"] = {name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                               "support": int(s[i])} for i, name in enumerate(label_names)}
    out["confusion_matrix"] = confusion_matrix(y_true, y_pred, labels=labels).tolist()
    return out


def class_weights(how: str | None, labels: list[int], n_classes: int, device: torch.device) -> torch.Tensor | None:
    """Loss weights per class: None, or `balanced` = n / (classes x count), a class absent from training
    getting weight 0 (it has no loss term anyway)."""
    if how is None:
        return None
    if how != "balanced":
        raise ConfigError(f"train.class_weights must be `balanced` or null, got {how!r}")
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes).astype(np.float64)
    weights = np.divide(len(labels), n_classes * counts, out=np.zeros(n_classes), where=counts > 0)
    return torch.tensor(weights, dtype=torch.float32, device=device)


class Classification(Task):
    name = "classification"
    default_metric = "accuracy"
    # recall_macro is SemEval-2017 4A's AvgRec; f1_pn (its F1^PN) exists only for positive/negative data.
    metrics_higher_is_better = {"accuracy": True, "f1_weighted": True, "f1_macro": True, "recall_macro": True,
                                "precision_weighted": True, "f1_pn": True}

    def loss_weights(self, how: str | None, targets: Sequence[int], num_outputs: int,
                     device: torch.device) -> torch.Tensor | None:
        return class_weights(how, list(targets), num_outputs, device)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None = None,
             kind: str | None = None) -> torch.Tensor:
        return nn.functional.cross_entropy(logits.float(), targets, weight=weight)

    def consistency(self, a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Symmetric KL between the two passes' class distributions, as in R-Drop (Liang et al. 2021); class
        weights play no part."""
        la, lb = torch.log_softmax(a.float(), -1), torch.log_softmax(b.float(), -1)
        kl = nn.functional.kl_div
        return 0.5 * (kl(la, lb, log_target=True, reduction="batchmean") + kl(lb, la, log_target=True,
                                                                               reduction="batchmean"))

    def soften(self, teacher_logits: list[torch.Tensor], temperature: float) -> torch.Tensor:
        """The teachers' class probabilities at temperature T, averaged (Hinton et al. 2015)."""
        return torch.stack([torch.softmax(t.float() / temperature, -1) for t in teacher_logits]).mean(0)

    def distill(self, logits: torch.Tensor, soft: torch.Tensor, temperature: float,
                weight: torch.Tensor | None = None) -> torch.Tensor:
        """T² x KL(teachers' softened probabilities || the student's at T): T² keeps the soft term's gradients
        on the scale of the hard one's whatever T (Hinton et al. 2015)."""
        log_student = torch.log_softmax(logits.float() / temperature, -1)
        return temperature**2 * nn.functional.kl_div(log_student, soft.float(), reduction="batchmean")

    def calibrate(self, logits: torch.Tensor, state: dict | None) -> torch.Tensor:
        return apply_calibration(logits.float(), (state or {}).get("calibration"))

    def outputs(self, logits: torch.Tensor, state: dict | None = None) -> torch.Tensor:
        """Class probabilities, with the run's calibration (``state["calibration"]``) applied."""
        return torch.softmax(self.calibrate(logits, state), -1)

    def metrics(self, logits: torch.Tensor, targets: Sequence[int], label_names: list[str], *,
                state: dict | None = None) -> dict:
        """Accuracy and P/R/F1 of the (calibrated) predictions; ECE, Brier and NLL of their probabilities, and
        with a calibration the same three before it (``*_uncalibrated``). ``loss``: the training loss, on the
        raw logits."""
        loss = self.loss(logits, torch.as_tensor(list(targets))).item()
        probs = self.outputs(logits, state)
        out = classification_metrics(np.asarray(targets), probs.argmax(-1).numpy(), label_names, loss)
        out.update(calibration_metrics(probs, targets))
        if (state or {}).get("calibration"):
            out.update(calibration_metrics(self.outputs(logits), targets, "_uncalibrated"))
        return out

    def fit_state(self, logits: torch.Tensor, targets: Sequence[int], label_names: list[str], *,
                  calibration: str | None = None) -> dict | None:
        """The calibration fitted on these (validation) logits; None without one."""
        if calibration is None or not len(targets):
            return None
        return {"calibration": fit_calibration(logits.float(), targets, calibration)}

    def check_metric(self, metric: str, label_names: list[str]) -> None:
        super().check_metric(metric, label_names)
        if metric == "f1_pn" and not has_polarity(label_names):
            raise ConfigError(f"train.metric=f1_pn needs classes named positive and negative; this data's labels "
                              f"are {', '.join(label_names)}")

    def format(self, outputs: torch.Tensor, label_names: list[str], *, state: dict | None = None) -> list[dict]:
        """The most probable label and every label's probability."""
        return [{"label": label_names[int(p.argmax())],
                 "probabilities": {name: float(v) for name, v in zip(label_names, p.tolist())}} for p in outputs]

    def write_predictions(self, path: Path, texts: Sequence[str], gold: Sequence[int] | None, logits: torch.Tensor,
                          label_names: list[str], *, state: dict | None = None) -> None:
        """text, gold label, prediction, its confidence and every class's probability (calibrated: the run's
        calibration, with the confidence before it in ``confidence_uncalibrated``)."""
        probs = self.outputs(logits, state)
        raw = self.outputs(logits).max(-1).values.tolist() if (state or {}).get("calibration") else None
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["text", "label", "predicted", "confidence", *[f"p_{name}" for name in label_names],
                    *(["confidence_uncalibrated"] if raw is not None else [])])
        pred = probs.argmax(-1).tolist()
        for i, text in enumerate(texts):
            row = probs[i].tolist()
            w.writerow([text, label_names[gold[i]] if gold is not None else "", label_names[pred[i]],
                        f"{max(row):.6f}", *[f"{p:.6f}" for p in row],
                        *([f"{raw[i]:.6f}"] if raw is not None else [])])
        write_text(path, buf.getvalue())


CLASSIFICATION = register_task(Classification())
