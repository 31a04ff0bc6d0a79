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


def register_method(name: str, *, description: str, config: type, lr: float, warmup_ratio: float = 0.0):
    """Decorator registering ``apply(model, cfg) -> model`` as a fine-tuning method."""

    def deco(apply: Callable[[nn.Module, Any], nn.Module]):
        METHODS.register(name)(Method(name, description, config, apply, lr, warmup_ratio))
        return apply

    return deco


def apply_method(model: nn.Module, spec: dict[str, Any]) -> tuple[nn.Module, Method, Any]:
    """Apply ``{"name": ..., **options}`` to a model; the head always trains."""
    options = dict(spec)
    name = options.pop("name", None)
    if not name:
        raise ConfigError("the method needs a name, e.g. {name: lora}")
    method = METHODS.get(name)
    cfg = method.make_config(options)
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
