"""The method registry: a fine-tuning method is a config dataclass plus ``apply(model, cfg)``
that decides what trains (and may wrap the encoder, e.g. with PEFT adapters)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from ..errors import ConfigError
from ..registry import Registry


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    config_cls: type
    apply: Callable[[nn.Module, Any], nn.Module]
    lr: float
    """Default peak learning rate, found on validation data for the default encoder."""
    warmup_ratio: float = 0.0
    """Default share of steps spent warming up."""
    trains: bool = True
    """False for a method that learns nothing by gradient (zero-shot): the per-method training tests skip it."""
    lr_scales: Callable[[Any, list[str]], dict[str, float]] | None = None
    """``(cfg, trainable parameter names) -> {name: multiplier}``: parameters whose learning rate is the
    schedule's times a factor (LoRA+: the B matrices); the rest use the schedule's rate."""
    shared_adapter: Callable[[nn.Module, Any], Any] | None = None
    """``(encoder, cfg) -> PEFT config`` for adapters that leave the base weights untouched: runs of such
    methods on one base can share a single copy of it (serving adds one PEFT adapter per run). None for
    methods that change or quantize the base (PiSSA, QLoRA...) or are not a PEFT LoRA-type adapter."""
    mergeable: bool = True
    """Whether the trained update folds into the base weights (prefix/prompt tuning: no)."""
    unavailable: Callable[[], str | None] | None = None
    """Why the method cannot run on this machine (e.g. it needs CUDA), or None when it can."""
    build: Callable[..., tuple[nn.Module, Any]] | None = None
    """For a method whose model is built from the config rather than trained (zero-shot, ensemble):
    ``build(run_config, label_names, fit=True) -> (model, tokenizer)``. Such a run is evaluated on
    validation and written without a training loop (``emotune.workflows.built``); loading it calls ``build`` with
    ``fit=False`` and copies in the tensors kept in model.safetensors."""
    family: Callable[[dict[str, Any]], str] | str | None = None
    """The name reports group runs of this method under: a text, or ``(method options) -> text``
    (e.g. `LoRA attention`); None: the method's name."""
    resolve: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    """``(method options) -> options`` with what the run derives from its inputs filled in when it is made
    (an ensemble's member weight hashes), so that the saved config records it."""

    def family_name(self, options: dict[str, Any]) -> str:
        if self.family is None:
            return self.name
        return self.family if isinstance(self.family, str) else self.family(options)

    def make_config(self, options: dict[str, Any]) -> Any:
        names = {f.name for f in dataclasses.fields(self.config_cls)}
        unknown = set(options) - names
        if unknown:
            raise ConfigError(f"unknown option(s) for method {self.name!r}: {', '.join(sorted(unknown))} "
                              f"(known: {', '.join(sorted(names)) or 'none'})")
        try:
            return self.config_cls(**options)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"method {self.name!r}: {e}") from None


METHODS: Registry[Method] = Registry("method")


def register_method(name: str, *, description: str, config: type, lr: float, warmup_ratio: float = 0.0,
                    **hooks: Any):
    """Decorator registering ``apply(model, cfg) -> model`` as a fine-tuning method; ``hooks`` are the
    optional Method fields (family, trains, lr_scales, shared_adapter, mergeable, unavailable, build, resolve)."""

    def deco(apply: Callable[[nn.Module, Any], nn.Module]):
        METHODS.register(name)(Method(name, description, config, apply, lr, warmup_ratio, **hooks))
        return apply

    return deco


def targeted_family(label: str, default_target: str = "attention") -> Callable[[dict[str, Any]], str]:
    """A family named by the method and the modules it adapts: `LoRA attention`, `DoRA all-linear`..."""

    def family(options: dict[str, Any]) -> str:
        target = options.get("target", default_target)
        return f"{label} {'+'.join(map(str, target)) if isinstance(target, list) else target}"

    return family


def method_options(spec: dict[str, Any]) -> tuple[Method, Any]:
    """``{"name": ..., **options}`` -> (method, its validated config)."""
    options = dict(spec)
    name = options.pop("name", None)
    if not name:
        raise ConfigError("the method needs a name, e.g. {name: lora}")
    method = METHODS.get(name)
    return method, method.make_config(options)


def lr_scales(spec: dict[str, Any], model: nn.Module) -> dict[str, float]:
    """Learning-rate multipliers by trainable parameter name for the configured method ({} when uniform)."""
    method, cfg = method_options(spec)
    if method.lr_scales is None:
        return {}
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    return {n: s for n, s in method.lr_scales(cfg, names).items() if s != 1.0}


def apply_method(model: nn.Module, spec: dict[str, Any]) -> tuple[nn.Module, Method, Any]:
    """Apply ``{"name": ..., **options}`` to a model; the head always trains."""
    method, cfg = method_options(spec)
    model = method.apply(model, cfg)
    for p in model.head.parameters():
        p.requires_grad_(True)
    return model, method, cfg


def option_help(method: Method) -> dict[str, tuple[Any, str]]:
    """Option name -> (default, help) for `emotune methods`."""
    out = {}
    for f in dataclasses.fields(method.config_cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        out[f.name] = (default, f.metadata.get("help", ""))
    return out
