"""DoRA (Liu et al. 2024) through PEFT: each targeted weight is split into a magnitude vector and a
direction that LoRA updates; the magnitudes train too."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .base import register_method, targeted_family
from .lora import LoraConfig, apply_lora_variant


@dataclass
class DoraConfig(LoraConfig):
    """LoRA's options; the magnitude vectors (one per output of each targeted layer) are added."""


# Not a shared-base adapter for serving: DoRA re-normalises the base weight itself at every forward,
# which an int8-quantized shared base cannot provide.
@register_method("dora", description="Weight-decomposed LoRA (DoRA, via PEFT): LoRA direction + trained magnitudes.",
                 config=DoraConfig, lr=2e-3, warmup_ratio=0.06,
                 family=targeted_family("DoRA"))
def apply_dora(model: nn.Module, cfg: DoraConfig) -> nn.Module:
    return apply_lora_variant(model, cfg, use_dora=True)
