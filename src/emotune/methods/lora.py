"""LoRA (Hu et al. 2021) through PEFT: low-rank updates on chosen linear layers of a frozen encoder."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from .base import register_method, targeted_family
from .peft_common import target_modules, unfreeze_norms, wrap_encoder


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


def lora_peft_config(encoder: nn.Module, cfg: LoraConfig, **extra):
    import peft

    return peft.LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, bias=cfg.bias,
                           target_modules=target_modules(encoder, cfg.target), **extra)


def apply_lora_variant(model: nn.Module, cfg: LoraConfig, **extra) -> nn.Module:
    """LoRA with extra fields of PEFT's LoraConfig (use_dora, init_lora_weights...): what the variants share."""
    model = wrap_encoder(model, lora_peft_config(model.encoder, cfg, **extra))
    if cfg.train_norm:
        unfreeze_norms(model)
    return model


@register_method("lora", description="Low-rank adapters on a frozen encoder (LoRA, via PEFT).",
                 config=LoraConfig, lr=2e-3, warmup_ratio=0.06, shared_adapter=lora_peft_config,
                 family=targeted_family("LoRA"))
def apply_lora(model: nn.Module, cfg: LoraConfig) -> nn.Module:
    return apply_lora_variant(model, cfg)
