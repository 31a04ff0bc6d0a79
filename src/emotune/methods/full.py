"""Full fine-tuning: every weight of the encoder and the head trains."""

from dataclasses import dataclass

from torch import nn

from .base import register_method


@dataclass
class FullConfig:
    """Full fine-tuning has no options."""


@register_method("full", description="Train every weight of the encoder and the head.", config=FullConfig,
                 lr=5e-5,
                 family="full fine-tuning")
def apply_full(model: nn.Module, cfg: FullConfig) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(True)
    return model
