"""Quality metrics (scikit-learn) and resource figures."""

from __future__ import annotations

import resource
import sys
from typing import Sequence

import numpy as np
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

from ..errors import ConfigError

# recall_macro is SemEval-2017 4A's AvgRec; f1_pn (its F1^PN) exists only for positive/negative data.
HIGHER_IS_BETTER = {"accuracy": True, "f1_weighted": True, "f1_macro": True, "recall_macro": True,
                    "precision_weighted": True, "f1_pn": True, "loss": False}
POLARITY = ("positive", "negative")


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


def has_polarity(label_names: list[str]) -> bool:
    return all(name in label_names for name in POLARITY)


def check_metric(metric: str, label_names: list[str]) -> None:
    """A clear ConfigError when ``metric`` cannot select checkpoints on data with these labels."""
    if metric not in HIGHER_IS_BETTER:
        raise ConfigError(f"unknown validation metric {metric!r}; choose one of {', '.join(HIGHER_IS_BETTER)}")
    if metric == "f1_pn" and not has_polarity(label_names):
        raise ConfigError(f"train.metric=f1_pn needs classes named positive and negative; this data's labels "
                          f"are {', '.join(label_names)}")


def is_better(metric: str, value: float, best: float | None) -> bool:
    if best is None:
        return True
    return value > best if HIGHER_IS_BETTER.get(metric, True) else value < best


def reset_peak_memory(device: torch.device) -> None:
    """Start a fresh peak-memory measurement, so runs one after another in one process (grid cells, search
    trials) each report their own peak rather than the process's peak so far."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # Linux: "5" resets the process's peak resident set size (VmHWM)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_memory_mb(device: torch.device) -> float:
    """Peak resident memory since the last ``reset_peak_memory`` (CPU; the process's peak where it cannot be
    reset) or peak allocated memory (CUDA), in MB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # KiB
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux


def _numel(p: torch.Tensor) -> int:
    """A 4-bit bitsandbytes weight (QLoRA) counts the weights it stands for, not its packed bytes."""
    state = getattr(p, "quant_state", None)
    return torch.Size(state.shape).numel() if state is not None else p.numel()


def parameter_counts(model: torch.nn.Module) -> dict:
    total = sum(_numel(p) for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable_params": trainable, "total_params": total,
            "trainable_pct": 100.0 * trainable / max(total, 1)}


def softmax_np(logits: torch.Tensor) -> np.ndarray:
    return torch.softmax(logits.float(), dim=-1).numpy()
