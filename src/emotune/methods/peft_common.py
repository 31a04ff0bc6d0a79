"""What the PEFT-based methods share: which modules to adapt, wrapping the encoder, training the norms."""

from __future__ import annotations

import warnings

from torch import nn

from ..errors import ConfigError

# Attention projections under the names common encoders give them (BERT/RoBERTa, DistilBERT, DeBERTa, ...).
ATTENTION_NAMES = {"query", "key", "value", "q_lin", "k_lin", "v_lin", "q_proj", "k_proj", "v_proj",
                   "query_proj", "key_proj", "value_proj", "qkv", "Wqkv"}
SHORT_ATTENTION_NAMES = {"q", "k", "v"}  # MPNet's ``attn.q``/``attn.k``/``attn.v``: only under an ``attn`` module
NORM_TYPES = (nn.LayerNorm,)


def _is_attention_projection(name: str) -> bool:
    parent, _, last = name.rpartition(".")
    return last in ATTENTION_NAMES or (last in SHORT_ATTENTION_NAMES and parent.endswith("attn"))


def target_modules(encoder: nn.Module, target: str | list[str]) -> str | list[str]:
    if isinstance(target, list):
        return target
    if target == "all-linear":
        return "all-linear"
    if target == "attention":
        found = sorted({n.rsplit(".", 1)[-1] for n, m in encoder.named_modules()
                        if isinstance(m, nn.Linear) and _is_attention_projection(n)})
        if not found:
            raise ConfigError("no attention projections found in this encoder; name them with "
                              "method.target=[name1,name2]")
        return found
    raise ConfigError(f"unknown LoRA target {target!r}: use attention, all-linear or a list of module names")


def wrap_encoder(model: nn.Module, peft_config) -> nn.Module:
    """Freeze the encoder and wrap it with a PEFT adapter (the head stays outside, always trained)."""
    import peft

    try:
        with warnings.catch_warnings():  # transformers' deprecation notices, raised inside PEFT: not the user's
            warnings.simplefilter("ignore", FutureWarning)
            model.encoder = peft.get_peft_model(model.encoder, peft_config)
    except (ValueError, TypeError) as e:  # PEFT's way of saying the options do not fit this encoder
        raise ConfigError(f"cannot apply the adapter: {e}") from None
    return model


def unfreeze_norms(model: nn.Module) -> None:
    for m in model.encoder.modules():
        if isinstance(m, NORM_TYPES):
            for p in m.parameters():
                p.requires_grad_(True)
