"""Folding a trained adapter into the base weights for inference (a plain encoder, no adapter branch)."""

from __future__ import annotations

from torch import nn


def merge_adapter(model: nn.Module) -> nn.Module:
    """Fold a PEFT adapter into the encoder's weights (one plain encoder, no adapter branch) where PEFT can:
    the LoRA family, (IA)^3, VeRA; MultiLoRA folds its own layers. A 4-bit (QLoRA) encoder becomes a float one,
    its weights dequantized and the adapter added. Prefix and prompt tuning stay as they are (their virtual tokens
    are no weight update)."""
    from .multilora import fold_multilora
    from .qlora import dequantize_merge, is_quantized

    encoder = getattr(model, "encoder", None)
    if encoder is None:
        return model
    if is_quantized(encoder):
        model.encoder = dequantize_merge(encoder)
    elif hasattr(encoder, "merge_and_unload"):  # prompt-learning PeftModels have none
        model.encoder = encoder.merge_and_unload()
    else:  # not PEFT: MultiLoRA's wrapped layers (if any) become plain ones
        model.encoder = fold_multilora(encoder)
    return model
