"""LoftQ (Li et al. 2023) through PEFT: LoRA initialised so that quantized base + adapter approximates the
pretrained weights; the base then holds the dequantized NF4 (or int8) weights.

PEFT 0.21 computes the LoftQ initialisation on a CUDA or XPU device only (peft.utils.loftq_utils picks
one of them unconditionally), so without one this method stops with a ConfigError. Like PiSSA the base
is rebuilt from the pretrained weights whenever the model is built (on the same kind of device)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import ConfigError
from .base import register_method, targeted_family
from .lora import LoraConfig, apply_lora_variant


@dataclass
class LoftqConfig(LoraConfig):
    dropout: float = field(default=0.0, metadata={"help": "Dropout on the adapter's input."})
    bits: int = field(default=4, metadata={"help": "Quantization of the base: 4 (NF4) or 8 (int8)."})
    iters: int = field(default=1, metadata={"help": "Alternating quantize/SVD steps of the initialisation."})

    def __post_init__(self):
        super().__post_init__()
        if self.bits not in (4, 8):
            raise ValueError("bits must be 4 or 8")
        if self.iters < 1:
            raise ValueError("iters must be at least 1")


def why_unavailable() -> str | None:
    """None where PEFT can compute the LoftQ initialisation, else why not."""
    xpu = getattr(torch, "xpu", None)
    if torch.cuda.is_available() or (xpu is not None and xpu.is_available()):
        return None
    import peft

    return (f"PEFT {peft.__version__} computes the LoftQ initialisation on a CUDA or XPU device only, and this "
            "machine has neither; use qlora (4-bit base + LoRA) or pissa")


@register_method("loftq", description="LoRA initialised for a quantized base (LoftQ, via PEFT; needs CUDA/XPU).",
                 config=LoftqConfig, lr=2e-3, warmup_ratio=0.06, unavailable=why_unavailable,
                 family=targeted_family("LoftQ"))
def apply_loftq(model: nn.Module, cfg: LoftqConfig) -> nn.Module:
    import peft

    reason = why_unavailable()
    if reason:
        raise ConfigError(f"method 'loftq': {reason}")
    loftq = peft.LoftQConfig(loftq_bits=cfg.bits, loftq_iter=cfg.iters)
    return apply_lora_variant(model, cfg, init_lora_weights="loftq", loftq_config=loftq)
