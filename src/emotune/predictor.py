"""Prediction with a trained run: load once, classify many texts."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from .data.encode import Encoded, encode
from .errors import DataError
from .runs import Run
from .train.loop import predict_logits, resolve_device
from .train.precision import resolve_precision


class Predictor:
    """A trained run loaded for prediction: ``Predictor(run_dir).predict(["text", ...])``."""

    def __init__(self, run: str | Path | Run, *, precision: str | None = None, device: str = "cpu",
                 batch_size: int = 64, threads: int | None = None):
        self.run = run if isinstance(run, Run) else Run.open(run)
        if threads:
            torch.set_num_threads(threads)
        self.device = resolve_device(device)
        self.dtype = resolve_precision(precision or self.run.config.train.precision, self.device)
        model, self.tokenizer = self.run.load_model()
        # bf16 runs keep bf16 weights (as in training), so predictions match the trained model's.
        self.model = model.to(self.device, self.dtype if self.dtype == torch.bfloat16 else None).eval()
        self.labels = self.run.labels
        self.batch_size = batch_size
        self.max_length = self.run.config.data.max_length
        self.pad_id = self.tokenizer.pad_token_id or 0

    def logits(self, texts: Sequence[str]) -> torch.Tensor:
        enc = Encoded(encode(self.tokenizer, texts, self.max_length), [0] * len(texts))
        return predict_logits(self.model, enc, self.batch_size, self.device, self.pad_id, self.dtype)

    def probabilities(self, texts: Sequence[str]) -> torch.Tensor:
        if not texts:
            return torch.empty(0, len(self.labels))
        return torch.softmax(self.logits(texts), -1)

    def predict(self, texts: Sequence[str]) -> list[dict]:
        """Per text: the predicted label and every class's probability."""
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                raise DataError(f"text {i + 1} is empty")
        probs = self.probabilities(texts)
        return [{"text": t, "label": self.labels[int(p.argmax())],
                 "probabilities": {name: float(v) for name, v in zip(self.labels, p.tolist())}}
                for t, p in zip(texts, probs)]
