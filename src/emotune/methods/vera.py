"""VeRA (Kopiczko et al. 2024) through PEFT: one pair of frozen random low-rank matrices shared by every
targeted layer, and per layer two trained scaling vectors (far fewer parameters than LoRA).

The random matrices are buffers regenerated from ``projection_key`` whenever the model is built, so the
run saves only the vectors. Constraints (PEFT): targets must be linear layers; the shared matrices take
the largest input and output sizes among them (smaller layers use a slice); a high rank is the norm
(the paper uses 256-1024) since the rank costs no trained parameters beyond one vector entry."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from torch import nn

from .base import register_method, targeted_family
from .peft_common import target_modules, unfreeze_norms, wrap_encoder


@dataclass
class VeraConfig:
    r: int = field(default=256, metadata={"help": "Rank of the shared random matrices (costs one vector entry each)."})
    target: str | list[str] = field(default="attention", metadata={
        "help": "`attention` (query/key/value), `all-linear` or an explicit list of module names."})
    d_initial: float = field(default=0.1, metadata={"help": "Initial value of the rank-sized scaling vector d."})
    dropout: float = field(default=0.0, metadata={"help": "Dropout on the VeRA branch's input."})
    projection_key: int = field(default=0, metadata={"help": "Seed of the shared random matrices."})
    train_norm: bool = field(default=False, metadata={
        "help": "Also train the encoder's LayerNorms (the paper trains the vectors and the head only)."})

    def __post_init__(self):
        if self.r < 1:
            raise ValueError("r must be at least 1")


# lr: VeRA's RoBERTa-base GLUE runs used 4e-3 to 1e-2 for the vectors (literature default, not yet tuned here).
@register_method("vera", description="VeRA: shared frozen random low-rank matrices, trained scaling vectors (PEFT).",
                 config=VeraConfig, lr=4e-3, warmup_ratio=0.06,
                 family=targeted_family("VeRA"))
def apply_vera(model: nn.Module, cfg: VeraConfig) -> nn.Module:
    import peft

    with warnings.catch_warnings():  # PEFT's advice to save the projections: they are rebuilt from the key
        warnings.filterwarnings("ignore", message="Specified to not save vera_A")
        config = peft.VeraConfig(r=cfg.r, target_modules=target_modules(model.encoder, cfg.target),
                                 d_initial=cfg.d_initial, vera_dropout=cfg.dropout,
                                 projection_prng_key=cfg.projection_key, save_projection=False)
        model = wrap_encoder(model, config)
    if cfg.train_norm:
        unfreeze_norms(model)
    return model
