"""QLoRA (Dettmers et al. 2023): the encoder's linear layers stored in 4-bit NF4 through bitsandbytes,
LoRA (via PEFT) on top; embeddings, LayerNorms and the classification head stay unquantized.

The quantization happens when the model is built, from the pretrained weights, so a reloaded run
rebuilds the same 4-bit base (NF4 quantization is deterministic) and the run saves only adapter, norms
and head. Compute dtype: each 4-bit layer dequantizes to the dtype of its first input, i.e. the run's
training precision (bfloat16 under `train.precision=bf16`, float32 under fp32). bitsandbytes 0.50
runs its 4-bit kernels on the CPU too.

For inference with an explicit precision (predictor/serving), ``dequantize_merge`` turns the model into
a plain float encoder: dequantized base weights with the adapter folded in (the same function)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import ConfigError
from .base import register_method, targeted_family
from .lora import LoraConfig, apply_lora_variant


@dataclass
class QloraConfig(LoraConfig):
    quant_type: str = field(default="nf4", metadata={
        "help": "4-bit data type of the base weights: nf4 (QLoRA's NormalFloat) or fp4."})
    double_quant: bool = field(default=True, metadata={
        "help": "Also quantize the per-block scales (QLoRA's double quantization: ~0.4 bit/weight less)."})
    block_size: int = field(default=64, metadata={"help": "Weights per quantization block (one scale each)."})

    def __post_init__(self):
        super().__post_init__()
        if self.quant_type not in ("nf4", "fp4"):
            raise ValueError("quant_type must be nf4 or fp4")
        if self.block_size not in (32, 64, 128, 256, 512, 1024, 2048, 4096):
            raise ValueError("block_size must be a power of two from 32 to 4096")


def _bnb():
    try:
        import bitsandbytes as bnb
    except Exception as e:  # ImportError, or a broken native library
        raise ConfigError(f"method 'qlora' needs bitsandbytes (pip install bitsandbytes): {e}") from None
    return bnb


def quantize_linears(encoder: nn.Module, cfg: QloraConfig) -> int:
    """Replace every nn.Linear of the encoder by a frozen 4-bit bitsandbytes layer; returns how many."""
    bnb = _bnb()
    swaps = [(parent, name, child) for parent in encoder.modules() for name, child in parent.named_children()
             if type(child) is nn.Linear]
    try:
        for parent, name, lin in swaps:
            q = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=lin.bias is not None, compute_dtype=None,
                                  compress_statistics=cfg.double_quant, quant_type=cfg.quant_type,
                                  device="meta")
            q.weight = bnb.nn.Params4bit(lin.weight.data, requires_grad=False, blocksize=cfg.block_size,
                                         compress_statistics=cfg.double_quant, quant_type=cfg.quant_type)
            if lin.bias is not None:
                q.bias = nn.Parameter(lin.bias.data, requires_grad=False)
            # On AVX512-BF16 CPUs bitsandbytes repacks the weights in place at the first evaluation forward into
            # an inference-only layout; a training forward after that (the loop validates, then trains on)
            # fails. The standard dequantize-and-multiply path serves training and evaluation alike.
            q.support_avx512bf16_for_cpu = False
            setattr(parent, name, q.to(lin.weight.device))  # moving to a real device quantizes
    except (RuntimeError, NotImplementedError, ValueError) as e:
        raise ConfigError(f"method 'qlora': bitsandbytes cannot quantize on this machine: {e}") from None
    encoder.is_loaded_in_4bit = True  # PEFT then wraps the 4-bit layers with its bitsandbytes LoRA layers
    return len(swaps)


@register_method("qlora", description="QLoRA: LoRA on an encoder whose linear weights are 4-bit NF4 (bitsandbytes).",
                 config=QloraConfig, lr=2e-3, warmup_ratio=0.06,
                 family=targeted_family("QLoRA"))  # lr: lora's (QLoRA keeps LoRA's recipe)
def apply_qlora(model: nn.Module, cfg: QloraConfig) -> nn.Module:
    if not quantize_linears(model.encoder, cfg):
        raise ConfigError("method 'qlora': the encoder has no linear layers to quantize")
    return apply_lora_variant(model, cfg)


def is_quantized(module: nn.Module) -> bool:
    if "bitsandbytes" not in sys.modules:
        return False
    import bitsandbytes as bnb

    return any(isinstance(m, bnb.nn.Linear4bit) for m in module.modules())


def _float_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device)
    with torch.no_grad():
        lin.weight.copy_(weight)
        if bias is not None:
            lin.bias.copy_(bias)
    return lin


@torch.no_grad()
def dequantize_merge(encoder: nn.Module) -> nn.Module:
    """A float encoder computing what the 4-bit one does: each 4-bit weight dequantized, plus the LoRA update
    of its layer when it has one (PEFT's own merge would re-quantize the sum, a lossy round trip)."""
    import bitsandbytes as bnb
    from peft.tuners.lora import LoraLayer

    def dequantized(layer) -> torch.Tensor:
        return bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()

    for parent in list(encoder.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LoraLayer) and isinstance(child.get_base_layer(), bnb.nn.Linear4bit):
                base = child.get_base_layer()
                weight = dequantized(base)
                for adapter in child.active_adapters:
                    weight += child.get_delta_weight(adapter).float()
                setattr(parent, name, _float_linear(weight, base.bias))
    for parent in list(encoder.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, bnb.nn.Linear4bit):
                setattr(parent, name, _float_linear(dequantized(child), child.bias))
    inner = encoder.get_base_model() if hasattr(encoder, "get_base_model") else encoder
    if hasattr(inner, "is_loaded_in_4bit"):
        del inner.is_loaded_in_4bit
    return inner
