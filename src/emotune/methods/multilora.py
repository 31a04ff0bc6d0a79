"""MultiLoRA (Wang et al. 2023, "MultiLoRA: Democratizing LoRA for Better Multi-Task Learning", arXiv 2311.11501;
no official code, not in PEFT): several parallel LoRA modules per adapted linear layer, each with a learned scale,

    h = W0 x + (alpha / r) * sum_i s_i * B_i A_i x        (i = 1..modules, each B_i A_i of rank r)

The paper's point: one LoRA's update is dominated by a few top singular vectors; parallel modules started in
different subspaces spread the update over more directions (a flatter spectrum of dW, see `emotune analyze`).

Initialisation: A_i and B_i both Kaiming-uniform (as nn.Linear's weights, a = sqrt(5)) and every s_i = 0, so the
modules start in different random subspaces while dW = 0 and the model starts as the pretrained one. What we could
confirm: summaries of the paper name horizontal scaling, a learned scale per module and Kaiming-uniform
initialisation in place of LoRA's zero B; the zero scales are what a public re-implementation does (whose scale is
a vector per output feature; here it is one scalar per module, as the issue asks). At s = 0 only the scales get a
gradient at the first step; A and B follow once the scales move.

Not PEFT: a small wrapper replaces each targeted nn.Linear (the frozen base layer kept as ``base``); the run saves
``lora_A`` (modules x r x in), ``lora_B`` (modules x out x r) and ``lora_scale`` (modules) per layer, and reloading
re-applies the method and copies them in. ``fold_multilora`` folds dW into the base weights (merged inference,
export, `emotune analyze`). A multi-task run takes it like any method (`method: {name: multilora}`: one adapter
shared by every task's head). It has no ``shared_adapter`` hook: that hook hands the server a PEFT config to load
several runs' adapters onto one base, which this wrapper is not; each multilora run is served by its own predictor
(merged at an explicit precision), as DoRA or VeRA runs are."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .base import register_method, targeted_family
from .peft_common import target_modules, unfreeze_norms


@dataclass
class MultiLoraConfig:
    modules: int = field(default=3, metadata={"help": "Parallel LoRA modules per adapted layer, each with its "
                                                      "own learned scale (3 of rank r cost as much as one LoRA "
                                                      "of rank 3r)."})
    r: int = field(default=8, metadata={"help": "Rank of each module."})
    alpha: float = field(default=16, metadata={"help": "Scaling numerator: each module's update is scaled by "
                                                       "alpha/r times its learned scale."})
    dropout: float = field(default=0.1, metadata={"help": "Dropout on the adapter branch's input."})
    target: str | list[str] = field(default="attention", metadata={
        "help": "`attention` (query/key/value projections), `all-linear` (every linear layer of the "
                "encoder) or an explicit list of module names (as lora's)."})
    train_norm: bool = field(default=True, metadata={
        "help": "Also train the encoder's LayerNorm scales and shifts (as lora's)."})

    def __post_init__(self):
        if isinstance(self.modules, bool) or not isinstance(self.modules, int) or self.modules < 1:
            raise ValueError("modules must be a whole number of at least 1")
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ValueError("r must be at least 1")
        if not 0 <= self.dropout < 1:
            raise ValueError("dropout must be in [0, 1)")


class MultiLoraLinear(nn.Module):
    """A frozen linear layer plus ``modules`` parallel low-rank updates, each scaled by its own learned scalar."""

    def __init__(self, base: nn.Linear, modules: int, r: int, alpha: float, dropout: float):
        super().__init__()
        self.base = base
        self.scaling = alpha / r
        dev = base.weight.device
        # float32 whatever the base's storage; a bf16 run casts the whole model (fp32 master copies train)
        self.lora_A = nn.Parameter(torch.empty(modules, r, base.in_features, device=dev))
        self.lora_B = nn.Parameter(torch.empty(modules, base.out_features, r, device=dev))
        self.lora_scale = nn.Parameter(torch.zeros(modules, device=dev))
        for i in range(modules):  # each module its own random subspace (nn.Linear's init); s = 0 keeps dW = 0
            nn.init.kaiming_uniform_(self.lora_A.data[i], a=math.sqrt(5))
            nn.init.kaiming_uniform_(self.lora_B.data[i], a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def delta_weight(self) -> torch.Tensor:
        """dW = (alpha / r) * sum_i s_i B_i A_i, shaped as the base weight (out x in)."""
        return torch.einsum("m,mor,mri->oi", self.lora_scale, self.lora_B, self.lora_A) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        h = self.dropout(x.to(self.lora_A.dtype))
        # The modules side by side: one rank modules*r product, each B_i column block scaled by its s_i.
        a = self.lora_A.flatten(0, 1)                                                   # (m*r, in)
        b = (self.lora_B * self.lora_scale[:, None, None]).transpose(0, 1).flatten(1)   # (out, m*r)
        return out + (F.linear(F.linear(h, a), b) * self.scaling).to(out.dtype)


def linear_targets(encoder: nn.Module, target: str | list[str]) -> list[str]:
    """Names of the linear layers to wrap, chosen as PEFT's LoRA chooses them for the same ``target``: a module
    whose name is, or ends in ``.``, one of the names; all-linear: every linear layer but an output embedding."""
    targets = target_modules(encoder, target)  # also refuses unknown targets, as lora does
    linears = [n for n, m in encoder.named_modules() if isinstance(m, nn.Linear)]
    if targets == "all-linear":
        out_layer = encoder.get_output_embeddings() if hasattr(encoder, "get_output_embeddings") else None
        names = [n for n in linears if encoder.get_submodule(n) is not out_layer]
    else:
        names = [n for n in linears if any(n == t or n.endswith("." + t) for t in targets)]
    if not names:
        raise ConfigError(f"method.target={target!r} matches no linear layer of this encoder")
    return names


def _replace(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def fold_multilora(encoder: nn.Module) -> nn.Module:
    """Fold every MultiLoRA layer of ``encoder`` into its base weight (W0 + dW, in the base's dtype) and put the
    plain linear layer back in its place; an encoder without them is returned unchanged."""
    wrapped = [(n, m) for n, m in encoder.named_modules() if isinstance(m, MultiLoraLinear)]
    with torch.no_grad():
        for name, m in wrapped:
            m.base.weight.add_(m.delta_weight().to(m.base.weight.dtype))
            _replace(encoder, name, m.base)
    return encoder


# lr: LoRA's validated 2e-3 and 6% warm-up (the paper trains LLaMA; not yet tuned here).
@register_method("multilora", description="MultiLoRA: parallel LoRA modules per layer, each with a learned scale.",
                 config=MultiLoraConfig, lr=2e-3, warmup_ratio=0.06, family=targeted_family("MultiLoRA"))
def apply_multilora(model: nn.Module, cfg: MultiLoraConfig) -> nn.Module:
    encoder = model.encoder
    names = linear_targets(encoder, cfg.target)
    for p in encoder.parameters():
        p.requires_grad_(False)
    for name in names:
        _replace(encoder, name, MultiLoraLinear(encoder.get_submodule(name), cfg.modules, cfg.r, cfg.alpha,
                                                cfg.dropout))
    if cfg.train_norm:
        unfreeze_norms(model)
    return model
