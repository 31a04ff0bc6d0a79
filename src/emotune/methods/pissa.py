"""PiSSA (Meng et al. 2024) through PEFT: LoRA initialised from the principal singular vectors of each
targeted weight, the base keeping the residual (W - the principal part).

The base weights therefore differ from the pretrained ones; they are not saved: building the model
recomputes them from the pretrained weights, deterministically (full SVD, or a randomized SVD run
under a fixed seed), so a reloaded run predicts exactly as the trained one."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .base import register_method, targeted_family
from .lora import LoraConfig, apply_lora_variant


@dataclass
class PissaConfig(LoraConfig):
    dropout: float = field(default=0.0, metadata={
        "help": "Dropout on the adapter's input; 0 keeps the initial model exactly the pretrained function "
                "while training (the adapter holds the principal part of the weight)."})
    niter: int = field(default=0, metadata={
        "help": "0: exact SVD of each weight; N > 0: fast randomized SVD with N subspace iterations "
                "(PEFT's pissa_niter_N, seeded so a reload rebuilds the same base)."})

    def __post_init__(self):
        super().__post_init__()
        if self.niter < 0:
            raise ValueError("niter must be 0 (exact SVD) or positive")


@register_method("pissa", description="LoRA initialised from the principal singular vectors (PiSSA, via PEFT).",
                 config=PissaConfig, lr=2e-3, warmup_ratio=0.06,
                 family=targeted_family("PiSSA"))
def apply_pissa(model: nn.Module, cfg: PissaConfig) -> nn.Module:
    init = "pissa" if cfg.niter == 0 else f"pissa_niter_{cfg.niter}"
    with torch.random.fork_rng(devices=[]):  # the randomized SVD draws from the global generator
        torch.manual_seed(0)
        return apply_lora_variant(model, cfg, init_lora_weights=init)
