"""Runs loaded for serving, by name.

A fully fine-tuned run (or a LoRA run alone on its base, or a run of any method whose adapter cannot
share a base: see ``shares_base``) is a ``Predictor`` of its own, its adapter merged into the weights
where it can be. LoRA runs (lora, loraplus) on the same base encoder share it: one copy of the base in memory,
one PEFT adapter per run (switched per batch) and each run's own head, labels and pooling. What a
LoRA run trained in the base itself (LayerNorm scales and shifts with ``train_norm``, biases with
``bias=all``) is a small per-run override copied in when its adapter becomes active.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path, PureWindowsPath
from typing import Sequence

import torch
from torch import nn

from ..data.encode import batches, collate, encode
from ..errors import ConfigError, RunError
from ..io import load_tensors
from ..runs import BEST, Run, set_target_statistics
from ..tasks import Task, label_sets
from ..train.precision import autocast, resolve_device
from .predictor import Mode, Predictor, pad_batch, quantize_int8, resolve_mode

# A model name is a short plain word: never a path, never anything a request could use to reach a file.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SUMMARY_METRICS = ("accuracy", "f1_weighted", "f1_macro", "loss")
# Batches are padded to these multiples (tokens, rows): a long-running server then sees few distinct
# shapes, and its memory stays flat (see predictor.pad_batch); measured at no cost in throughput.
PAD_TOKENS, PAD_ROWS = 8, 4


def shares_base(method: dict) -> bool:
    """Whether a run of this method can share its base encoder with others: a PEFT LoRA-type adapter that
    leaves the base weights as pretrained (lora, loraplus); not PiSSA/LoftQ/QLoRA (changed or quantized
    base), DoRA, VeRA, (IA)^3, prefix or prompt tuning, nor full fine-tuning."""
    from ..methods import METHODS

    name = method.get("name")
    return name in METHODS and METHODS.get(name).shared_adapter is not None


def valid_name(name: object) -> bool:
    return isinstance(name, str) and bool(NAME_RE.match(name)) and ".." not in name


def parse_specs(specs: Sequence[str | tuple[str, str | Path]]) -> list[tuple[str, Path]]:
    """``PATH`` (named after its folder) or ``NAME=PATH`` -> [(name, path)], names checked and unique."""
    out: list[tuple[str, Path]] = []
    for spec in specs:
        if isinstance(spec, tuple):
            name, path = spec[0], Path(spec[1])
        else:
            name, sep, rest = str(spec).partition("=")
            if sep:  # NAME=PATH (a path holding '=' is given this way too)
                path = Path(rest)
            else:
                path = Path(str(spec))
                name = path.resolve().name
        if not valid_name(name):
            raise ConfigError(f"model name {name!r} is not allowed: use letters, digits, '.', '_', '-' "
                              "(name it with NAME=PATH)")
        if any(name == n for n, _ in out):
            raise ConfigError(f"two models are named {name!r}: name them with NAME=PATH")
        out.append((name, path))
    if not out:
        raise ConfigError("no runs to serve")
    return out


def summary_metrics(run: Run) -> dict:
    m = run.metrics
    return {split: {k: m[split][k] for k in SUMMARY_METRICS if k in m[split]}
            for split in ("validation", "test") if isinstance(m.get(split), dict)}


def tensor_bytes(modules: Sequence[nn.Module]) -> int:
    """Bytes of distinct tensor storage held by the modules' parameters and buffers (shared counted once);
    packed int8 weights count by their packed size."""
    seen: set[int] = set()
    total = 0
    for module in modules:
        tensors = list(module.parameters()) + list(module.buffers())
        for m in module.modules():  # dynamically quantized linear layers keep packed weights
            packed = getattr(m, "_packed_params", None)
            if packed is not None and hasattr(packed, "_weight_bias"):
                w, b = packed._weight_bias()
                tensors += [w] + ([b] if b is not None else [])
        for t in tensors:
            try:
                key = t.untyped_storage().data_ptr()
                size = t.untyped_storage().nbytes()
            except (RuntimeError, NotImplementedError):  # quantized tensors
                key, size = id(t), t.numel() * t.element_size()
            if key not in seen:
                seen.add(key)
                total += size
    return total


class Engine:
    """Computes class probabilities for tokenized texts of one of its models."""

    tokenizer: object
    # A fast tokenizer may reconfigure itself (truncation) inside a call: one call at a time.
    tokenizer_lock: threading.Lock

    def probabilities(self, key: str, ids: Sequence[Sequence[int]]) -> torch.Tensor:
        raise NotImplementedError

    def modules(self) -> list[nn.Module]:
        raise NotImplementedError

    def nbytes(self) -> int:
        """Bytes of the weights this engine holds (shared tensors counted once)."""
        return tensor_bytes(self.modules())


class PredictorEngine(Engine):
    """One run, one model (LoRA merged)."""

    def __init__(self, predictor: Predictor):
        self.predictor = predictor
        self.tokenizer = predictor.tokenizer
        self.tokenizer_lock = threading.Lock()

    def probabilities(self, key: str, ids: Sequence[Sequence[int]]) -> torch.Tensor:
        return self.predictor.run.task.outputs(self.predictor.logits_from_ids(ids), self.predictor.task_state)

    def modules(self) -> list[nn.Module]:
        return [self.predictor.model]


@dataclass
class _Adapter:
    name: str
    model: nn.Module  # TransformerClassifier sharing the engine's encoder, with its own head
    overrides: dict[str, torch.Tensor]
    n_labels: int
    task: Task
    state: dict | None = None  # the run's task state (calibration, thresholds)


class SharedLoraEngine(Engine):
    """One base encoder, one PEFT adapter + head per LoRA run."""

    def __init__(self, runs: Sequence[Run], mode: Mode, device: torch.device, batch_size: int):
        import peft

        from ..methods import method_options
        from ..models import TransformerClassifier, build_transformer
        from ..models.lexicon import LexiconFeatures

        first = runs[0]
        base, self.tokenizer = build_transformer(first.config.model, len(first.labels))
        encoder = base.encoder
        hidden = encoder.config.hidden_size
        configs = []
        for r in runs:  # each run's own method says which PEFT adapter it adds (lora, loraplus...)
            method, options = method_options(r.config.method)
            if method.shared_adapter is None:
                raise RunError(f"{r.path}: method {method.name!r} cannot share a base with other runs")
            peft_config = method.shared_adapter(encoder, options)
            # PEFT holds at most one adapter with trained biases; here those biases are per-run overrides.
            peft_config.bias = "none"
            configs.append(peft_config)
        keys = [f"a{i}" for i in range(len(runs))]
        encoder = peft.get_peft_model(encoder, configs[0], adapter_name=keys[0])
        for key, cfg in zip(keys[1:], configs[1:]):
            encoder.add_adapter(key, cfg)
        self.encoder = encoder
        params = {f"encoder.{n}": p for n, p in encoder.named_parameters()}
        self.adapters: dict[str, _Adapter] = {}
        override_names: set[str] = set()
        for key, run in zip(keys, runs):
            weights, _ = load_tensors(run.path / BEST)
            lexicon = LexiconFeatures(self.tokenizer) if run.config.model.lexicon else None
            model = TransformerClassifier(encoder, hidden, len(run.labels), run.config.model.pooling,
                                          run.config.model.dropout, run.task, lexicon)
            set_target_statistics(model, run.target_statistics)
            head = {k[5:]: v for k, v in weights.items() if k.startswith("head.")}
            try:
                model.head.load_state_dict(head)
            except RuntimeError as e:
                raise RunError(f"{run.path / BEST}: the head does not fit: {e}") from None
            overrides, loaded = {}, set()
            for k, v in weights.items():
                if k.startswith("head."):
                    continue
                name = _adapter_key(k, key)
                if name not in params or params[name].shape != v.shape:
                    raise RunError(f"{run.path / BEST}: weight {k} does not fit the shared base "
                                   f"{first.config.model.name!r}")
                if name != k:  # an adapter tensor
                    with torch.no_grad():
                        params[name].copy_(v)
                    loaded.add(name)
                else:
                    overrides[name] = v.float().clone()
            expected = {n for n in params if f".{key}." in n and ".lora_" in n}
            if expected - loaded:
                raise RunError(f"{run.path / BEST}: adapter weights missing ({sorted(expected - loaded)[:2]})")
            override_names |= set(overrides)
            self.adapters[key] = _Adapter(key, model, overrides, len(run.labels), run.task, run.task_state)
        # Every adapter restores every overridden tensor: what it did not train comes from the base.
        pristine = {n: params[n].detach().float().clone() for n in override_names}
        for a in self.adapters.values():
            a.overrides = {**pristine, **a.overrides}
        self.params = params
        for m in [encoder] + [a.model for a in self.adapters.values()]:
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)
        if mode.int8:
            skip = {n.rsplit(".", 1)[0] for n in override_names}
            names = {n for n, m in encoder.named_modules()
                     if isinstance(m, nn.Linear) and ".lora_" not in n and n not in skip}
            quantize_int8(encoder, names)
            self.params = {f"encoder.{n}": p for n, p in encoder.named_parameters()}
        elif mode.weights != torch.float32:
            encoder.to(mode.weights)
            for a in self.adapters.values():
                a.model.head.to(mode.weights)
        for a in self.adapters.values():
            a.model.to(device)
        self.mode, self.device, self.batch_size = mode, device, batch_size
        self.keys = dict(zip([r.path for r in runs], keys))
        self.active: str | None = None
        self.lock = threading.Lock()
        self.tokenizer_lock = threading.Lock()

    def activate(self, key: str) -> None:
        if self.active == key:
            return
        self.encoder.set_adapter(key, inference_mode=True)
        with torch.no_grad():
            for name, value in self.adapters[key].overrides.items():
                self.params[name].copy_(value)
        self.active = key

    @torch.inference_mode()
    def probabilities(self, key: str, ids: Sequence[Sequence[int]]) -> torch.Tensor:
        adapter = self.adapters[key]
        pad = self.tokenizer.pad_token_id or 0  # type: ignore[attr-defined]
        out = torch.empty(len(ids), adapter.n_labels)
        with self.lock:
            self.activate(key)
            for idx in batches([len(x) for x in ids], self.batch_size, shuffle=False):
                b = pad_batch(collate([ids[i] for i in idx], pad), PAD_TOKENS, PAD_ROWS, pad)
                with autocast(self.device, self.mode.compute):
                    logits = adapter.model(**{k: v.to(self.device) for k, v in b.items()})
                out[idx] = logits[: len(idx)].float().cpu()
        return adapter.task.outputs(out, adapter.state)

    def modules(self) -> list[nn.Module]:
        return [a.model for a in self.adapters.values()]

    def nbytes(self) -> int:
        overrides = sum(t.numel() * t.element_size() for a in self.adapters.values() for t in a.overrides.values())
        return super().nbytes() + overrides


def _adapter_key(name: str, adapter: str) -> str:
    """``...query.lora_A.default.weight`` -> ``...query.lora_A.<adapter>.weight`` (other names unchanged)."""
    parts = name.split(".")
    for i in range(1, len(parts)):
        if parts[i] == "default" and parts[i - 1].startswith("lora_"):
            parts[i] = adapter
    return ".".join(parts)


@dataclass
class ServedModel:
    name: str
    run: Run
    engine: Engine
    key: str
    precision: str
    shared_with: list[str] = field(default_factory=list)

    @property
    def labels(self) -> list[str]:
        return self.run.labels

    @cached_property
    def task_state(self) -> dict | None:
        """The run's task state (multilabel thresholds), read once, not per request."""
        return self.run.task_state

    @property
    def max_length(self) -> int:
        return self.run.config.data.max_length

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        with self.engine.tokenizer_lock:
            return encode(self.engine.tokenizer, texts, self.max_length)

    def probabilities(self, texts: Sequence[str]) -> torch.Tensor:
        if not texts:
            return torch.empty(0, len(self.labels))
        if self.run.config.data.task == "instruct":  # a decoder's answers are scored from texts, not token ids
            predictor = self.engine.predictor  # type: ignore[attr-defined]
            return self.run.task.outputs(predictor.logits(texts), self.task_state)
        return self.engine.probabilities(self.key, self.encode(texts))

    def describe(self) -> dict:
        cfg = self.run.config
        # Only these fields, each a name or a number: never the run's folder, data_dir or any other path.
        return {"name": self.name, "labels": [str(x) for x in self.labels], "method": _public(cfg.method.get("name")),
                "base_model": _public(cfg.model.name), "pooling": cfg.model.pooling, "precision": self.precision,
                "shares_base_with": self.shared_with, "data": _public(cfg.data.name),
                "metrics": summary_metrics(self.run), "ranges": value_ranges(self.run)}


def value_ranges(run) -> dict[str, list[float]]:
    """Regression targets (by label name, ``task:target`` in multi-task runs) -> the span a gauge shows: the
    training mean +- 3 standard deviations (targets.json)."""
    stats = run.target_statistics
    if not stats:
        return {}
    # a single-task run's targets.json is {mean, std}; a multi-task run's holds one of those per task
    per_task = {None: stats} if "mean" in stats else stats
    names = {None: list(run.labels)} if "mean" in stats else label_sets(run.labels)
    return {(name if task is None else f"{task}:{name}"): [m - 3 * sd, m + 3 * sd]
            for task, s in per_task.items() for name, m, sd in zip(names[task], s["mean"], s["std"])}


HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _public(name: object) -> object:
    """A local file or folder by its own name only: clients never see the server's paths. A hub id
    (``owner/name``) that is not a local path stays as it is; anything else with a path separator (absolute,
    relative, ``~``, Windows) is cut to its last part, whether or not it exists on this machine."""
    if not isinstance(name, str) or ("/" not in name and "\\" not in name):
        return name
    if HUB_ID_RE.match(name) and not Path(name).exists():
        return name
    return PureWindowsPath(name).name or name.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]


class ModelRegistry:
    """The loaded models by name; a request can only ever name one of these."""

    def __init__(self, models: dict[str, ServedModel], engines: list[Engine]):
        self.models, self.engines = models, engines

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.models

    def __getitem__(self, name: str) -> ServedModel:
        return self.models[name]

    @property
    def names(self) -> list[str]:
        return list(self.models)

    @property
    def default(self) -> str:
        return next(iter(self.models))

    def nbytes(self) -> int:
        return sum(e.nbytes() for e in self.engines)

    @classmethod
    def load(cls, specs: Sequence[str | tuple[str, str | Path]], *, precision: str | None = "auto",
             device: str = "cpu", batch_size: int = 32, threads: int | None = None,
             share: bool = True) -> "ModelRegistry":
        """Load runs (``PATH`` or ``NAME=PATH``); LoRA runs on the same base share it when ``share``."""
        if threads:
            torch.set_num_threads(threads)
        named = parse_specs(specs)
        runs = []
        for name, path in named:
            run = Run.open_finished(path)
            runs.append((name, run))
        dev = resolve_device(device)
        groups: dict[tuple, list[tuple[str, Run]]] = {}
        for name, run in runs:
            cfg = run.config
            if share and shares_base(cfg.method) and cfg.data.task != "instruct":
                key: tuple = ("shared", cfg.model.name, cfg.model.pooling == "pooler")
            else:
                key = ("own", name)
            groups.setdefault(key, []).append((name, run))
        models: dict[str, ServedModel] = {}
        engines: list[Engine] = []
        for members in groups.values():
            if len(members) == 1:
                name, run = members[0]
                # one stream: the server's inference workers run batches side by side instead
                predictor = Predictor(run, precision=precision, device=device, batch_size=batch_size, streams=1)
                predictor.pad_multiple, predictor.batch_multiple = PAD_TOKENS, PAD_ROWS
                engine: Engine = PredictorEngine(predictor)
                models[name] = ServedModel(name, run, engine, "", predictor.precision)
            else:
                mode = resolve_mode(precision, members[0][1], dev)
                shared = SharedLoraEngine([r for _, r in members], mode, dev, batch_size)
                engine = shared
                for i, (name, run) in enumerate(members):
                    others = [n for n, _ in members if n != name]
                    models[name] = ServedModel(name, run, engine, f"a{i}", mode.name, others)
            engines.append(engine)
        ordered = {name: models[name] for name, _ in runs}
        return cls(ordered, engines)
