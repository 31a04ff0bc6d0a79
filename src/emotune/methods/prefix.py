"""Prefix tuning (Li & Liang 2021; P-Tuning v2 for encoders) through PEFT: trained key/value vectors
prepended to every attention layer of a frozen encoder.

The encoder is wrapped as PEFT's feature-extraction model, which extends the attention mask over the
prefix, so padding stays ignored; the encoder's output keeps the text's length. Not mergeable: the
prefix is extra attention context, not a weight update."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from .base import register_method
from .peft_common import unfreeze_norms, wrap_encoder


@dataclass
class PrefixConfig:
    num_virtual_tokens: int = field(default=20, metadata={"help": "Prefix length: key/value pairs per layer."})
    projection: bool = field(default=False, metadata={
        "help": "Re-parametrise the prefix through a two-layer MLP (Li & Liang); off: direct vectors (P-Tuning v2)."})
    projection_hidden: int | None = field(default=None, metadata={
        "help": "Hidden size of that MLP (default: the encoder's hidden size)."})
    train_norm: bool = field(default=False, metadata={"help": "Also train the encoder's LayerNorms."})

    def __post_init__(self):
        if self.num_virtual_tokens < 1:
            raise ValueError("num_virtual_tokens must be at least 1")


# lr: P-Tuning v2's encoder classification runs used 5e-3 to 1e-2 (literature default, not yet tuned here).
@register_method("prefix", description="Prefix tuning: trained key/value prefixes in every attention layer (PEFT).",
                 config=PrefixConfig, lr=5e-3, warmup_ratio=0.06, mergeable=False,
                 family="prefix tuning")
def apply_prefix(model: nn.Module, cfg: PrefixConfig) -> nn.Module:
    import peft

    hidden = cfg.projection_hidden or model.encoder.config.hidden_size
    config = peft.PrefixTuningConfig(task_type="FEATURE_EXTRACTION", num_virtual_tokens=cfg.num_virtual_tokens,
                                     prefix_projection=cfg.projection, encoder_hidden_size=hidden)
    model = wrap_encoder(model, config)
    if cfg.train_norm:
        unfreeze_norms(model)
    return model
