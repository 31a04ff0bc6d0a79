"""(IA)^3 (Liu et al. 2022) through PEFT: learned vectors that rescale the keys, the values and the
feed-forward activations of a frozen encoder (a few thousand parameters)."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from ..errors import ConfigError
from .base import register_method, targeted_family
from .peft_common import unfreeze_norms, wrap_encoder

KEY_VALUE_NAMES = {"key", "value", "k_lin", "v_lin", "k_proj", "v_proj", "key_proj", "value_proj"}
# Feed-forward down projections (their input is the intermediate activation (IA)^3 rescales).
FF_DOWN_NAMES = {"lin2", "fc2", "down_proj", "dense_4h_to_h"}


@dataclass
class Ia3Config:
    target: str | list[str] = field(default="default", metadata={
        "help": "`default` (keys, values and feed-forward activations, as in the paper), `attention` (keys and "
                "values only) or an explicit list of module names."})
    feedforward: list[str] | None = field(default=None, metadata={
        "help": "Targets whose input (rather than output) is rescaled; default: the feed-forward down "
                "projections among the targets."})
    train_norm: bool = field(default=False, metadata={
        "help": "Also train the encoder's LayerNorms (the paper trains the vectors only)."})


def is_ff_down(name: str) -> bool:
    """BERT/RoBERTa/DeBERTa name the down projection `layer.N.output.dense` (the attention's is
    `attention.output.dense`); other families use one of FF_DOWN_NAMES."""
    leaf = name.rsplit(".", 1)[-1]
    return leaf in FF_DOWN_NAMES or (name.endswith("output.dense") and ".attention." not in f".{name}")


def ia3_targets(encoder: nn.Module, cfg: Ia3Config) -> tuple[list[str], list[str]]:
    """(target module names, feed-forward module names) for this encoder."""
    linears = [n for n, m in encoder.named_modules() if isinstance(m, nn.Linear)]
    if isinstance(cfg.target, list):
        targets = cfg.target
    elif cfg.target in ("default", "attention"):
        targets = [n for n in linears if n.rsplit(".", 1)[-1] in KEY_VALUE_NAMES]
        if cfg.target == "default":
            targets += [n for n in linears if is_ff_down(n)]
        if not targets:
            raise ConfigError("no key/value projections found in this encoder; name the modules with "
                              "method.target=[name1,name2]")
    else:
        raise ConfigError(f"unknown IA3 target {cfg.target!r}: use default, attention or a list of module names")
    if cfg.feedforward is not None:
        feedforward = cfg.feedforward
    else:
        feedforward = [t for t in targets if is_ff_down(t)]
    return targets, feedforward


@register_method("ia3", description="(IA)^3: learned rescaling of keys, values and feed-forward activations (PEFT).",
                 config=Ia3Config, lr=3e-3, warmup_ratio=0.06,
                 family=targeted_family("(IA)3", "default"))  # lr: T-Few's 3e-3 (literature default)
def apply_ia3(model: nn.Module, cfg: Ia3Config) -> nn.Module:
    import peft

    targets, feedforward = ia3_targets(model.encoder, cfg)
    model = wrap_encoder(model, peft.IA3Config(target_modules=targets, feedforward_modules=feedforward))
    if cfg.train_norm:
        unfreeze_norms(model)
    return model
