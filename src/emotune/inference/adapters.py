"""Many task adapters on one base model, in one process (the library side of ``emotune serve``'s sharing).

    adapters = AdapterSet.load({"emotion": "runs/emotion-lora", "sentiment": "runs/sentiment-lora"})
    adapters.predict(["i feel wonderful today"], adapter="emotion")
    adapters.predict_mixed([("emotion", "i feel wonderful today"), ("sentiment", "a dull film")])

The base encoder is in memory once; each LoRA run adds its adapter, its own head and label set (and the
few base tensors it trained itself, such as LayerNorms with ``train_norm``). Adapters are switched per
batch by ``engines.SharedLoraEngine``, the one implementation ``emotune serve`` uses too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import torch

from ..errors import ConfigError
from ..runs import Run
from ..train.precision import resolve_device
from .format import check_texts, format_predictions
from .predictor import resolve_mode


def base_key(run: Run) -> tuple[str, bool]:
    """What must be equal for runs to share one base: the encoder (resolved to its folder where it is local)
    and whether it keeps its pooler layer (``pooling=pooler``; other poolings drop it)."""
    from ..models import resolve_model_path

    name = resolve_model_path(run.config.model.name)
    path = Path(name)
    return (str(path.resolve()) if path.exists() else name, run.config.model.pooling == "pooler")


def check_same_base(runs: Mapping[str, Run]) -> None:
    """A ConfigError naming the odd run out unless every run has the same base encoder (and pooler use)."""
    first_name, first = next(iter(runs.items()))
    want = base_key(first)
    for name, run in runs.items():
        got = base_key(run)
        if got[0] != want[0]:
            raise ConfigError(f"runs with different base models cannot share one base: {first_name!r} uses "
                              f"{first.config.model.name!r}, {name!r} uses {run.config.model.name!r}")
        if got[1] != want[1]:
            raise ConfigError(f"{first_name!r} (pooling {first.config.model.pooling}) and {name!r} (pooling "
                              f"{run.config.model.pooling}) differ in the base's pooler layer (kept only with "
                              "pooling=pooler), so they cannot share one base")


def open_runs(runs: Mapping[str, str | Path | Run] | Sequence[str | Path | Run]) -> dict[str, Run]:
    """``{name: run folder}``, or a list of ``PATH`` / ``NAME=PATH`` (named after the folder) -> finished Runs."""
    from .engines import parse_specs

    def where(p: str | Path | Run) -> str | Path:
        return p.path if isinstance(p, Run) else p

    specs = ([(str(k), where(v)) for k, v in runs.items()] if isinstance(runs, Mapping)
             else [str(where(r)) for r in runs])
    opened: dict[str, Run] = {}
    for name, path in parse_specs(specs):
        run = Run.open_finished(path)
        opened[name] = run
    return opened


class AdapterSet:
    """LoRA runs sharing one base encoder: ``predict(texts, adapter=name)`` and ``predict_mixed(pairs)``.

    ``precision``: ``fp32`` (default), ``bf16``, ``bf16-autocast``, ``int8`` or ``auto``, as for
    ``Predictor``. Every adapter keeps its own labels (``labels(name)``)."""

    def __init__(self, runs: dict[str, Run], engine, keys: dict[str, str]):
        self.runs, self.engine, self._keys = runs, engine, keys

    @classmethod
    def load(cls, runs: Mapping[str, str | Path | Run] | Sequence[str | Path], *, precision: str = "fp32",
             device: str = "cpu", batch_size: int = 64, threads: int | None = None) -> "AdapterSet":
        from .engines import SharedLoraEngine, shares_base

        if threads:
            torch.set_num_threads(threads)
        if batch_size < 1:
            raise ConfigError("batch_size must be at least 1")
        opened = open_runs(runs)
        for name, run in opened.items():
            if not shares_base(run.config.method):
                raise ConfigError(f"{name!r} ({run.path}) was trained with method {run.config.method.get('name')!r}, "
                                  "whose adapter cannot share a base (an adapter set holds LoRA-type runs that leave "
                                  "the base as pretrained: lora, loraplus); use Predictor for it")
        check_same_base(opened)
        dev = resolve_device(device)
        first = next(iter(opened.values()))
        engine = SharedLoraEngine(list(opened.values()), resolve_mode(precision, first, dev), dev, batch_size)
        return cls(opened, engine, {name: f"a{i}" for i, name in enumerate(opened)})

    @property
    def names(self) -> list[str]:
        return list(self.runs)

    def labels(self, adapter: str) -> list[str]:
        return self._run(adapter).labels

    def _run(self, adapter: str) -> Run:
        if adapter not in self.runs:
            raise ConfigError(f"unknown adapter {adapter!r}; loaded: {', '.join(self.runs)}")
        return self.runs[adapter]

    def probabilities(self, texts: Sequence[str], adapter: str) -> torch.Tensor:
        """Class probabilities, one row per text, columns in ``labels(adapter)`` order."""
        from ..data.encode import encode

        run = self._run(adapter)
        if not texts:
            return torch.empty(0, len(run.labels))
        with self.engine.tokenizer_lock:
            ids = encode(self.engine.tokenizer, list(texts), run.config.data.max_length)
        return self.engine.probabilities(self._keys[adapter], ids)

    def predict(self, texts: Sequence[str], adapter: str) -> list[dict]:
        """Per text: the adapter's predicted label and every class's probability."""
        texts = list(texts)
        check_texts(texts)
        return format_predictions(texts, self.probabilities(texts, adapter), self.labels(adapter),
                                  self._run(adapter).task, self._run(adapter).task_state)

    def predict_mixed(self, items: Sequence[tuple[str, str]]) -> list[dict]:
        """``[(adapter, text), ...]`` -> one prediction per item, in input order, each naming its adapter.
        Items are grouped by adapter so each adapter runs once over its texts."""
        items = list(items)
        check_texts([text for _, text in items])
        groups: dict[str, list[int]] = {}
        for i, (adapter, _) in enumerate(items):
            self._run(adapter)
            groups.setdefault(adapter, []).append(i)
        out: list[dict] = [{} for _ in items]
        for adapter, idx in groups.items():
            for i, p in zip(idx, self.predict([items[i][1] for i in idx], adapter)):
                out[i] = {"adapter": adapter, **p}
        return out

    def nbytes(self) -> int:
        """Bytes of weights held (the base once, every adapter, head and per-run base override)."""
        return self.engine.nbytes()


__all__ = ["AdapterSet", "base_key", "check_same_base", "open_runs"]
