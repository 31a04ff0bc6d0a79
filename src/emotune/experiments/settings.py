"""Dotted settings (``train.lr``, ``method.r``, ``method``) applied to run configurations: what grid
axes, search spaces and ``--set`` overrides share, plus short labels for run names and table headers."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

import yaml

from ..config import RunConfig, is_text_field, read_yaml, yaml_error_line
from ..errors import ConfigError

SECTIONS = tuple(f.name for f in dataclasses.fields(RunConfig))  # data, model, method, train, multitask
# YAML 1.1 (PyYAML) reads 2e-5 and 1e-3 as strings: exponent numbers without a dot.
_EXPONENT = re.compile(r"^[-+]?\d+(\.\d*)?[eE][-+]?\d+$")
# Short names for run folders and column headers; anything else uses the field's own name.
SHORT = {"train.lr": "lr", "train.weight_decay": "wd", "train.max_epochs": "epochs", "train.max_steps": "steps",
         "train.warmup_ratio": "warmup", "train.batch_size": "batch", "train.seed": "seed", "model.name": "model",
         "model.dropout": "head-dropout", "data.name": "data", "method.name": "method"}


def coerce(value: Any) -> Any:
    """Turn exponent-notation strings (YAML 1.1 leaves ``2e-5`` a string) into floats, recursively."""
    if isinstance(value, str) and _EXPONENT.match(value.strip()):
        return float(value)
    if isinstance(value, list):
        return [coerce(v) for v in value]
    if isinstance(value, dict):
        return {k: coerce(v) for k, v in value.items()}
    return value


def parse_assignment(text: str) -> tuple[str, Any]:
    """``"train.lr=2e-5"`` -> ``("train.lr", 2e-05)`` (the value is read as YAML)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"bad setting {text!r}: expected section.field=value, e.g. train.lr=1e-3")
    key = key.strip()
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        if not is_text_field(key):
            raise ConfigError(f"bad setting {text!r}: not a YAML value ({yaml_error_line(e)}); quote it") from None
        value = raw.strip()  # a text field takes the text as typed: data.name=[x].csv
    if is_text_field(key) and value is not None and not isinstance(value, str):
        return key, raw.strip()  # `on`, `2024-01-01`: the user meant the text
    return key, coerce(value)


def apply_setting(d: dict, key: str, value: Any) -> None:
    """Set one dotted key in a config dictionary, in place.

    A whole section given as a mapping merges into it; ``method`` (or ``method.name``) naming another
    method starts that method afresh, so one method's options never leak into another's."""
    if not (isinstance(value, str) and is_text_field(key)):  # a folder named 1e5 stays a name
        value = coerce(value)
    section, _, name = key.partition(".")
    if section not in SECTIONS:
        raise ConfigError(f"bad setting {key!r}: unknown section {section!r} (sections: {', '.join(SECTIONS)})")
    if section == "method":
        if not name:
            spec = {"name": value} if isinstance(value, str) else value
            if not isinstance(spec, dict):
                raise ConfigError(f"bad setting {key!r}: a method is a name or a mapping, got {value!r}")
            if spec.get("name", d["method"].get("name")) != d["method"].get("name"):
                d["method"] = {}
            d["method"].update(spec)
        elif name == "name" and value != d["method"].get("name"):
            d["method"] = {"name": value}
        else:
            d["method"][name] = value
        return
    if not name:
        if not isinstance(value, dict):
            raise ConfigError(f"bad setting {key!r}: give a field ({section}.field) or a mapping")
        d[section].update(value)
    else:  # deeper keys (model.options.hidden) set entries of nested mappings
        *path, last = name.split(".")
        target = d[section]
        for part in path:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ConfigError(f"bad setting {key!r}: {section}.{part} is not a mapping")
        target[last] = value


def apply_settings(cfg: RunConfig, settings: dict[str, Any] | Iterable[tuple[str, Any]]) -> RunConfig:
    """A copy of ``cfg`` with the settings applied (validated: unknown fields raise ConfigError)."""
    d = cfg.to_dict()
    for key, value in (settings.items() if isinstance(settings, dict) else settings):
        apply_setting(d, key, value)
    return RunConfig.from_dict(d)


def config_from(spec: dict | None, *, where: str) -> RunConfig:
    """A RunConfig from a ``base:`` mapping whose keys are sections or dotted fields."""
    if spec is not None and not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a mapping of config sections")
    try:
        return apply_settings(RunConfig(), dict(spec or {}))
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1e-3}}`` -> ``{"train.lr": 1e-3}`` (lists stay values)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def short_name(key: str) -> str:
    return SHORT.get(key, key.rsplit(".", 1)[-1])


def format_value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "+".join(format_value(v) for v in value)
    if isinstance(value, dict):
        return "-".join(format_value(v) if k == "name" else f"{k}{format_value(v)}" for k, v in value.items())
    return str(value)


def labels(values: dict[str, Any]) -> list[str]:
    """``key=value`` labels with short keys (the full key where two short keys would clash)."""
    shorts = [short_name(k) for k in values]
    return [f"{s if shorts.count(s) == 1 else k}={format_value(v)}" for s, (k, v) in zip(shorts, values.items())]


T = TypeVar("T")


def load_spec(path: str | Path, what: str, build: Callable[[Any, str], T]) -> T:
    """Read a YAML file, build an object from it with ``build(spec, file_stem)`` and keep the text as its
    ``source``; every error names the file."""
    path = Path(path)
    text, spec = read_yaml(path, what)
    try:
        obj = build(spec, path.stem)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    obj.source = text  # type: ignore[attr-defined]
    return obj
