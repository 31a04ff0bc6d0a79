"""LoRA+ (Hayou et al. 2024): LoRA whose B matrices learn ``lr_ratio`` times faster than the A matrices.

The trainer reads the per-parameter multipliers from the method's ``lr_scales`` hook and keeps them
through the schedule (every optimizer group follows the same warm-up and decay, scaled)."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from .base import register_method, targeted_family
from .lora import LoraConfig, apply_lora_variant, lora_peft_config


@dataclass
class LoraPlusConfig(LoraConfig):
    lr_ratio: float = field(default=16.0, metadata={
        "help": "Learning rate of the B matrices divided by that of everything else (A matrices, head, norms); "
                "16 (2^4) is LoRA+'s recommended default. Literature default, not yet tuned here."})

    def __post_init__(self):
        super().__post_init__()
        if self.lr_ratio <= 0:
            raise ValueError("lr_ratio must be positive")


def b_matrix_scales(cfg: LoraPlusConfig, names: list[str]) -> dict[str, float]:
    return {n: cfg.lr_ratio for n in names if ".lora_B." in n or ".lora_embedding_B." in n}


# LoRA+'s rule of thumb: the A matrices' rate a little below plain LoRA's (here half of lora's 2e-3).
@register_method("loraplus", description="LoRA+: LoRA with a larger learning rate (lr_ratio x) for the B matrices.",
                 config=LoraPlusConfig, lr=1e-3, warmup_ratio=0.06, lr_scales=b_matrix_scales,
                 shared_adapter=lora_peft_config,
                 family=targeted_family("LoRA+"))
def apply_loraplus(model: nn.Module, cfg: LoraPlusConfig) -> nn.Module:
    return apply_lora_variant(model, cfg)
