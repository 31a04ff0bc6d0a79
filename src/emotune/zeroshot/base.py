"""The registry of zero-shot kinds and the one option dataclass the ``zero-shot`` method validates.

A kind is an option dataclass plus ``build(cfg, options, labels, fit) -> (model, tokenizer)``. Its model maps
``input_ids, attention_mask`` to logits like any emotune model and has a ``head`` (``nn.Linear``) holding
everything that is not a pretrained network (label embeddings, calibration offsets, a label map): that
head is computed when the run is created (``fit``) and kept in model.safetensors; loading the run builds
the model with ``fit=False`` (no description embeddings, no calibration passes) and copies the head in.

The method's option dataclass is the union of the kinds' options plus ``how``; options of a kind other
than ``how`` are refused.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from ..errors import ConfigError
from ..registry import Registry


@dataclass(frozen=True)
class Kind:
    name: str
    description: str
    options: type
    build: Callable[[Any, Any, list[str], bool], tuple[nn.Module, Any]]


KINDS: Registry[Kind] = Registry("zero-shot kind")


def register_kind(name: str, *, description: str, options: type):
    """Decorator registering ``build(run_config, options, labels, fit) -> (model, tokenizer)`` as a zero-shot
    kind; with ``fit`` False the head may stay a placeholder (its weights are loaded next)."""

    def deco(build: Callable[[Any, Any, list[str], bool], tuple[nn.Module, Any]]):
        KINDS.register(name)(Kind(name, description, options, build))
        return build

    return deco


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default  # type: ignore[misc]


def kinds_of_option() -> dict[str, list[str]]:
    """Option name -> the kinds that read it."""
    out: dict[str, list[str]] = {}
    for name, kind in KINDS.items():
        for f in dataclasses.fields(kind.options):
            out.setdefault(f.name, []).append(name)
    return out


def merged_options() -> type:
    """One dataclass: ``how`` + every kind's options (help prefixed with the kinds that read it)."""
    owners = kinds_of_option()
    fields: list[tuple[str, Any, dataclasses.Field]] = [
        ("how", str, dataclasses.field(default="embed", metadata={
            "help": "Which zero-shot classifier: " + "; ".join(f"`{n}` {k.description}" for n, k in KINDS.items())}))]
    seen: dict[str, Any] = {}
    for _, kind in KINDS.items():
        for f in dataclasses.fields(kind.options):
            if f.name in seen:
                if _default(f) != seen[f.name]:
                    raise ValueError(f"zero-shot option {f.name!r} has different defaults in different kinds")
                continue
            seen[f.name] = _default(f)
            help_ = f"({', '.join(owners[f.name])}) {f.metadata.get('help', '')}"
            kw: dict[str, Any] = {"metadata": {"help": help_}}
            if f.default_factory is not dataclasses.MISSING:
                kw["default_factory"] = f.default_factory
            else:
                kw["default"] = f.default
            fields.append((f.name, f.type, dataclasses.field(**kw)))

    def __post_init__(self) -> None:
        if self.how not in KINDS:
            raise ValueError(f"unknown kind how={self.how!r}; choose {', '.join(KINDS)}")
        foreign = [n for n, ks in owners.items() if self.how not in ks and getattr(self, n) != seen[n]]
        if foreign:
            raise ValueError(f"option(s) {', '.join(sorted(foreign))} do not apply to how={self.how}")
        kind_options(self)  # the kind's own checks

    return dataclasses.make_dataclass("ZeroShotConfig", fields, namespace={
        "__post_init__": __post_init__,
        "__doc__": "Options of the zero-shot method: `how` picks the kind; the rest belong to one kind each."})


def kind_options(cfg: Any) -> Any:
    """The options dataclass of ``cfg.how`` built from the merged config."""
    kind = KINDS.get(cfg.how)
    return kind.options(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(kind.options)})


def build_zero_shot(cfg: Any, labels: list[str], *, fit: bool = True) -> tuple[nn.Module, Any]:
    """(model, tokenizer) of a zero-shot run config for these label names; nothing in it trains. ``fit``
    computes the head (label embeddings, calibration); without it the head is left for a run's weights."""
    from ..methods import METHODS

    if not labels:
        raise ConfigError("a zero-shot model needs the label names")
    options = METHODS.get("zero-shot").make_config({k: v for k, v in cfg.method.items() if k != "name"})
    kind = KINDS.get(options.how)
    model, tokenizer = kind.build(cfg, kind_options(options), list(labels), fit)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, tokenizer


def label_words(labels: list[str], words: dict[str, str]) -> list[str]:
    """The word(s) standing for each label: ``words`` overrides, else the label with _ and - as spaces."""
    unknown = set(words) - set(labels)
    if unknown:
        raise ConfigError(f"words for unknown label(s) {', '.join(sorted(unknown))} (labels: {', '.join(labels)})")
    return [str(words.get(lab, lab.replace("_", " ").replace("-", " "))) for lab in labels]
