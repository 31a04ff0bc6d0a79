"""LoRA (Hu et al. 2021) through PEFT: low-rank updates on chosen linear layers of a frozen encoder."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from torch import nn

from ..errors import ConfigError
from .base import register_method

# Attention projections under the names common encoders give them (BERT/RoBERTa, DistilBERT, DeBERTa, ...).
ATTENTION_NAMES = {"query", "key", "value", "q_lin", "k_lin", "v_lin", "q_proj", "k_proj", "v_proj",
                   "query_proj", "key_proj", "value_proj", "qkv", "Wqkv"}
NORM_TYPES = (nn.LayerNorm,)


@dataclass
class LoraConfig:
    r: int = field(default=8, metadata={"help": "Rank of the update matrices."})
    alpha: float = field(default=16, metadata={"help": "Scaling numerator: the update is scaled by alpha/r."})
    dropout: float = field(default=0.1, metadata={"help": "Dropout on the LoRA branch's input."})
    target: str | list[str] = field(default="attention", metadata={
        "help": "`attention` (query/key/value projections), `all-linear` (every linear layer of the "
                "encoder) or an explicit list of module names."})
    bias: str = field(default="none", metadata={"help": "Which biases train: none, lora_only or all."})
    train_norm: bool = field(default=True, metadata={
        "help": "Also train the encoder's LayerNorm scales and shifts (a few thousand parameters that let "
                "the frozen encoder re-centre its features for the new task)."})

    def __post_init__(self):
        if self.r < 1:
            raise ValueError("r must be at least 1")
        if self.bias not in ("none", "lora_only", "all"):
            raise ValueError("bias must be none, lora_only or all")


def target_modules(encoder: nn.Module, target: str | list[str]) -> str | list[str]:
    if isinstance(target, list):
        return target
    if target == "all-linear":
        return "all-linear"
    if target == "attention":
        found = sorted({n.rsplit(".", 1)[-1] for n, m in encoder.named_modules()
                        if isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] in ATTENTION_NAMES})
        if not found:
            raise ConfigError("no attention projections found in this encoder; name them with "
                              "method.target=[name1,name2]")
        return found
    raise ConfigError(f"unknown LoRA target {target!r}: use attention, all-linear or a list of module names")


def lora_peft_config(encoder: nn.Module, cfg: LoraConfig, **extra):
    import peft

    return peft.LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, bias=cfg.bias,
                           target_modules=target_modules(encoder, cfg.target), **extra)


def wrap_encoder(model: nn.Module, peft_config) -> nn.Module:
    """Freeze the encoder and wrap it with a PEFT adapter (the head stays outside, always trained)."""
    import peft

    try:
        with warnings.catch_warnings():  # transformers' deprecation notices, raised inside PEFT: not the user's
            warnings.simplefilter("ignore", FutureWarning)
            model.encoder = peft.get_peft_model(model.encoder, peft_config)
    except (ValueError, TypeError) as e:  # PEFT's way of saying the options do not fit this encoder
        raise ConfigError(f"cannot apply the adapter: {e}") from None
    return model


def unfreeze_norms(model: nn.Module) -> None:
    for m in model.encoder.modules():
        if isinstance(m, NORM_TYPES):
            for p in m.parameters():
                p.requires_grad_(True)


def apply_lora_variant(model: nn.Module, cfg: LoraConfig, **extra) -> nn.Module:
    """LoRA with extra fields of PEFT's LoraConfig (use_dora, init_lora_weights...): what the variants share."""
    model = wrap_encoder(model, lora_peft_config(model.encoder, cfg, **extra))
    if cfg.train_norm:
        unfreeze_norms(model)
    return model


@register_method("lora", description="Low-rank adapters on a frozen encoder (LoRA, via PEFT).",
                 config=LoraConfig, lr=2e-3, warmup_ratio=0.06, shared_adapter=lora_peft_config)
def apply_lora(model: nn.Module, cfg: LoraConfig) -> nn.Module:
    return apply_lora_variant(model, cfg)
