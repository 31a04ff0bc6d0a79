"""Which words drove a prediction: token attributions from Captum (the maintained attribution library for
PyTorch), merged into words.

- ``ig`` (default): Integrated Gradients (Sundararajan et al. 2017) on the word-embedding layer's output, from
  a baseline where every text token is [PAD] (special tokens kept), ``steps`` points on the path;
- ``gxi``: gradient x (input - baseline) on the same layer: the gradient at the text only, one forward and
  backward pass, faster and rougher.

The attributed output: with ``ig``, the log of the target class's (calibrated) probability or of a multi-label
label's probability (a probability near 1 has vanishing gradients; its log does not); with ``gxi``, a local
gradient, the target's calibrated logit; for a regression target, its value. Multi-task runs name targets
``task:label``. A word's
score is the sum of its sub-word pieces' scores (each piece's attribution summed over the embedding);
positive scores pushed towards the target, negative ones away from it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from ..errors import ConfigError, DataError
from ..methods import merge_adapter
from ..runs import Run
from .format import check_texts

METHODS = ("ig", "gxi")


@dataclass
class Explanation:
    text: str
    target: str
    """The label (``task:label`` in multi-task runs) or regression target explained."""
    predicted: str
    """The run's answer: the most probable label (of the target's task), or the target for regression."""
    value: float
    """The explained output for this text: the target's probability, or its predicted value."""
    method: str
    words: list[dict] = field(default_factory=list)
    """Per word, in text order: ``word``, ``start``/``end`` (character offsets), ``score``."""
    convergence_delta: float | None = None
    """Integrated Gradients: sum of attributions minus (output - baseline output); near 0 when steps suffice."""
    ms: float = 0.0

    def as_dict(self) -> dict:
        return {"text": self.text, "target": self.target, "predicted": self.predicted, "value": self.value,
                "method": self.method, "words": self.words, "convergence_delta": self.convergence_delta,
                "ms": round(self.ms, 1)}


class Explainer:
    """Attributions for one finished run (a pretrained-encoder run; its adapter folded in, float32)."""

    def __init__(self, run: Run | str | Path, threads: int | None = None):
        self.run = run if isinstance(run, Run) else Run.open_finished(Path(run))
        if threads:
            torch.set_num_threads(threads)
        if self.run.config.method.get("name") == "ensemble":
            raise ConfigError("explain works on one run, not an ensemble: explain each member")
        if self.run.config.data.task == "instruct":
            raise ConfigError(f"{self.run.path}: explain works on pretrained-encoder runs, not on an instruction-tuned "
                              "decoder's answers")
        model, self.tokenizer = self.run.load_model()
        encoder = getattr(model, "encoder", None)
        if encoder is None or not hasattr(encoder, "get_input_embeddings") or not getattr(self.tokenizer, "is_fast",
                                                                                         False):
            raise ConfigError(f"{self.run.path}: explain works on pretrained-encoder runs (this run's model "
                              f"{self.run.config.model.name!r} has no word-embedding layer with a fast tokenizer)")
        self.model = merge_adapter(model).float().eval()
        self.model.requires_grad_(False)
        self.embeddings = self.model.encoder.get_input_embeddings()
        self.labels = self.run.labels
        self.state = self.run.task_state
        self.max_length = self.run.config.data.max_length
        self.pad_id = self.tokenizer.pad_token_id or 0
        self.special = set(self.tokenizer.all_special_ids)

    # ---- what is attributed ---------------------------------------------------------------------
    def outputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """What users get for every target (calibrated probabilities, values), one row per input."""
        return self.run.task.outputs(self.model(input_ids=input_ids, attention_mask=attention_mask).float(),
                                     self.state)

    def _part(self, column: int) -> tuple[list[int], str]:
        """The columns and task type of the task a column belongs to (a class competes with its own task's
        classes only)."""
        every = list(range(len(self.labels)))
        for p in getattr(self.run.task, "parts", []):
            if column in every[p.columns]:
                return every[p.columns], p.task.name
        return every, self.run.task.name

    def target_column(self, target: str | None, outputs: torch.Tensor) -> int:
        """The column of a named target, else the predicted class (of the first task: multi-task runs; a
        regression task's first target)."""
        if target is not None:
            if target not in self.labels:
                raise DataError(f"unknown target {target!r}; this run's are: {', '.join(self.labels)}")
            return self.labels.index(target)
        columns, kind = self._part(0)
        return columns[0] if kind == "regression" else columns[int(outputs[columns].argmax())]

    # ---- attributions ---------------------------------------------------------------------------
    def encode(self, text: str) -> dict:
        return self.tokenizer(text, truncation=True, max_length=self.max_length, return_offsets_mapping=True,
                              return_tensors="pt")

    def explain(self, text: str, target: str | None = None, method: str = "ig", steps: int = 20) -> Explanation:
        if method not in METHODS:
            raise ConfigError(f"unknown attribution method {method!r}; choose {' or '.join(METHODS)}")
        if steps < 1:
            raise ConfigError("steps must be at least 1")
        check_texts([text])
        start = time.perf_counter()
        enc = self.encode(text)
        ids, mask = enc["input_ids"], enc["attention_mask"]
        with torch.no_grad():
            out = self.outputs(ids, mask)[0]
        column = self.target_column(target, out)
        group, kind = self._part(column)
        predicted = self.labels[group[int(out[group].argmax())]] if kind == "classification" else self.labels[column]
        scores, delta = self._attribute(ids, mask, column, method, steps)
        words = self._words(text, enc, scores)
        return Explanation(text, self.labels[column], predicted, float(out[column]), method, words, delta,
                           1000 * (time.perf_counter() - start))

    def _attribute(self, ids: torch.Tensor, mask: torch.Tensor, column: int, method: str,
                   steps: int) -> tuple[torch.Tensor, float | None]:
        from captum.attr import LayerIntegratedGradients

        regression = self._part(column)[1] == "regression"

        def forward(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask).float()
            if regression:
                return self.run.task.calibrate(logits, self.state)[:, column]
            p = self.run.task.outputs(logits, self.state)[:, column].clamp(1e-12, 1 - 1e-7)
            # Probabilities near 1 have vanishing gradients: ig attributes log p, gxi (a gradient at the text
            # alone, where log p saturates too) the log-odds log p / (1 - p).
            return p.log() - (-p).log1p() if method == "gxi" else p.log()

        baseline = torch.where(torch.tensor([[t in self.special for t in ids[0].tolist()]]), ids,
                               torch.full_like(ids, self.pad_id))
        if method == "gxi":  # the gradient at the text times (embedding - baseline embedding): one backward pass
            with torch.no_grad():
                reference = self.embeddings(baseline)
            captured: dict = {}

            def keep(module, args, output):
                captured["x"] = output.detach().requires_grad_(True)
                return captured["x"]

            handle = self.embeddings.register_forward_hook(keep)
            try:
                with torch.enable_grad():
                    forward(ids, mask).sum().backward()
            finally:
                handle.remove()
            x = captured["x"]
            return (x.grad * (x.detach() - reference)).sum(-1)[0], None
        with torch.enable_grad():
            attr, delta = LayerIntegratedGradients(forward, self.embeddings).attribute(
                ids, baselines=baseline, additional_forward_args=(mask,), n_steps=steps,
                internal_batch_size=steps, return_convergence_delta=True)
        return attr.sum(-1)[0].detach(), float(delta.abs().sum())

    def _words(self, text: str, enc, scores: torch.Tensor) -> list[dict]:
        """Sub-word pieces merged into the words they belong to (special tokens left out)."""
        words: dict[int, dict] = {}
        offsets = enc["offset_mapping"][0].tolist()
        for i, word in enumerate(enc.word_ids(0)):
            if word is None:
                continue
            begin, end = offsets[i]
            entry = words.setdefault(word, {"start": begin, "end": end, "score": 0.0})
            entry["start"], entry["end"] = min(entry["start"], begin), max(entry["end"], end)
            entry["score"] += float(scores[i])
        return [{"word": text[w["start"]:w["end"]], "start": w["start"], "end": w["end"], "score": w["score"]}
                for _, w in sorted(words.items())]

    # ---- faithfulness ---------------------------------------------------------------------------
    def deletion_drop(self, e: Explanation, remove: Sequence[int]) -> float:
        """How much the explained output (``e.value``, on the whole text) falls when the words at ``remove``
        (indices into ``e.words``) are deleted."""
        keep, last = [], 0
        for i in sorted(remove):
            keep.append(e.text[last:e.words[i]["start"]])
            last = e.words[i]["end"]
        keep.append(e.text[last:])
        shorter = " ".join("".join(keep).split()) or self.tokenizer.pad_token or ""
        enc = self.encode(shorter)
        with torch.no_grad():
            after = self.outputs(enc["input_ids"], enc["attention_mask"])[0, self.labels.index(e.target)]
        return e.value - float(after)


def faithfulness(explainer: Explainer, texts: Sequence[str], k: int = 3, method: str = "ig", steps: int = 20,
                 seed: int = 0) -> dict:
    """Deleting the ``k`` highest-attributed words against deleting ``k`` random words (seeded), per text: the
    share of texts whose predicted class's probability falls more for the attributed words (texts with at most
    ``k`` words are skipped), the mean falls, and the milliseconds per explanation."""
    import random

    rng = random.Random(seed)
    wins, top_drops, random_drops, times = 0, [], [], []
    for text in texts:
        e = explainer.explain(text, method=method, steps=steps)
        if len(e.words) <= k:
            continue
        times.append(e.ms)
        top = sorted(range(len(e.words)), key=lambda i: -e.words[i]["score"])[:k]
        other = rng.sample(range(len(e.words)), k)
        a = explainer.deletion_drop(e, top)
        b = explainer.deletion_drop(e, other)
        wins += a > b
        top_drops.append(a)
        random_drops.append(b)
    n = len(top_drops)
    return {"texts": n, "share": wins / n if n else 0.0, "mean_drop_top": sum(top_drops) / max(n, 1),
            "mean_drop_random": sum(random_drops) / max(n, 1), "ms_per_explanation": sorted(times)[n // 2] if n else 0.0,
            "k": k, "method": method, "steps": steps}
