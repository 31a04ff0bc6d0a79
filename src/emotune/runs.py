"""Run folders: one folder per run holding everything a report or a server needs.

    config.yaml               the resolved configuration (method defaults filled in)
    labels.json               label names, in the order of the model's outputs
    model.safetensors         best weights: the trainable ones only (adapter + head for PEFT methods)
    vocab.json                classic models: the training words (frozen word vectors are rebuilt from it)
    history.json              every validation evaluation
    metrics.json              best validation metrics, training figures, test metrics once evaluated
    predictions_<split>.csv   per-text predictions and class probabilities
    checkpoint.safetensors    while training: what a resumed run starts from (removed when done)
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import RunConfig
from .errors import RunError
from .io import load_tensors, read_json, write_json, write_text
from .train.loop import BEST, CHECKPOINT, HISTORY

CONFIG, LABELS, METRICS = "config.yaml", "labels.json", "metrics.json"
VOCAB = "vocab.json"  # classic models' word vocabulary
RUN_FILES = (CONFIG, LABELS, METRICS, BEST, HISTORY, CHECKPOINT, VOCAB)


def build_model(cfg: RunConfig, num_labels: int, *, texts: list[str] | None = None,
                run_dir: Path | None = None):
    """(model, tokenizer, method) as configured, before any training. A classic model (``model.name`` in
    ``models.MODELS``) builds its vocabulary from ``texts`` (the training split) or reads ``run_dir``'s."""
    from .methods import METHODS, apply_method
    from .models import build_classic, build_transformer, is_classic

    torch.manual_seed(cfg.train.seed)
    method = METHODS.get(cfg.method.get("name", ""))
    if method.build is not None:  # nothing trains: built from the config and the run's label names
        labels = read_json(run_dir / LABELS) if run_dir else []  # without them: a clear error
        return (*method.build(cfg, labels, fit=False), method)  # its kept tensors: model.safetensors
    if is_classic(cfg.model.name):
        return build_classic(cfg, num_labels, texts=texts, vocab_file=run_dir / VOCAB if run_dir else None)
    model, tokenizer = build_transformer(cfg.model, num_labels)
    model, method, _ = apply_method(model, cfg.method)
    return model, tokenizer, method


@dataclass
class Run:
    path: Path
    config: RunConfig
    labels: list[str]

    @classmethod
    def open(cls, path: str | Path) -> "Run":
        path = Path(path)
        if not (path / CONFIG).is_file():
            raise RunError(f"{path}: not a run folder (no {CONFIG})")
        labels = read_json(path / LABELS) if (path / LABELS).is_file() else None
        if labels is None:
            raise RunError(f"{path}: incomplete run folder (no {LABELS})")
        return cls(path, RunConfig.from_yaml(path / CONFIG), labels)

    @property
    def metrics(self) -> dict:
        return read_json(self.path / METRICS) if (self.path / METRICS).is_file() else {}

    @property
    def complete(self) -> bool:
        return bool(self.metrics.get("completed"))

    def status(self) -> str:
        if self.complete:
            return "complete"
        return "interrupted" if (self.path / CHECKPOINT).exists() else "incomplete"

    def load_model(self):
        """(model, tokenizer) with the best weights, in float32 on the CPU."""
        if not (self.path / BEST).is_file():
            raise RunError(f"{self.path}: no trained weights ({BEST}); the run has not finished an evaluation")
        model, tokenizer, _ = build_model(self.config, len(self.labels), run_dir=self.path)
        weights, _ = load_tensors(self.path / BEST)
        params = dict(model.named_parameters())
        missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
        unknown = [n for n in weights if n not in params]
        if missing or unknown:
            raise RunError(f"{self.path / BEST}: weights do not fit the configured model "
                           f"(missing {missing[:3]}, unexpected {unknown[:3]})")
        with torch.no_grad():
            for n, w in weights.items():
                params[n].copy_(w)
        return model, tokenizer

    def update_metrics(self, **sections) -> dict:
        metrics = {**self.metrics, **sections}
        write_json(self.path / METRICS, metrics)
        return metrics


def write_predictions(path: Path, texts: list[str], gold: list[int] | None, probs: torch.Tensor,
                      labels: list[str]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["text", "label", "predicted", "confidence", *[f"p_{name}" for name in labels]])
    pred = probs.argmax(-1).tolist()
    for i, text in enumerate(texts):
        row = probs[i].tolist()
        w.writerow([text, labels[gold[i]] if gold is not None else "", labels[pred[i]], f"{max(row):.6f}",
                    *[f"{p:.6f}" for p in row]])
    write_text(path, buf.getvalue())


def find_runs(root: str | Path) -> list[Run]:
    """Every run folder at or below ``root``, sorted by path."""
    root = Path(root)
    if not root.exists():
        raise RunError(f"{root}: no such folder")
    found = []
    for cfg in sorted(root.rglob(CONFIG)):
        try:
            found.append(Run.open(cfg.parent))
        except RunError:
            continue
    return found
