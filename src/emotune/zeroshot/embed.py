"""Zero-shot by sentence embeddings: a text gets the label whose description it is closest to.

The run's encoder (``model.name``, default MiniLM) with its pooling (``mean``: what MiniLM was trained
with) embeds every text and every label description; both are L2-normalized and the logits are the
cosine similarities divided by ``temperature``. That is a linear head on normalized sentence vectors,
so the model is an ordinary ``TransformerClassifier`` whose head normalizes its input first (the lean
serving forward keeps it: it calls the head as it is).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ConfigError
from .base import label_words, register_kind

DEFAULT_TEMPLATE = "This text expresses {label}."
# A text type per named data set, for the default template (any other data set says "text").
TEXT_TYPES = {"mr": "movie review", "semeval2017a": "tweet"}


@dataclass
class EmbedOptions:
    template: str = field(default="", metadata={
        "help": "Label description with `{label}` for the label's word, e.g. 'This movie review is {label}.'; "
                "empty: 'This {text type} is {label}.' on mr (movie review) and semeval2017a (tweet), "
                f"'{DEFAULT_TEMPLATE}' elsewhere."})
    descriptions: dict[str, str | list[str]] = field(default_factory=dict, metadata={
        "help": "Label -> description (or a list of them, their normalized embeddings averaged), overriding "
                "the template for that label."})
    words: dict[str, str] = field(default_factory=dict, metadata={
        "help": "Label -> the word(s) that stand for it in the template or prompt (default: the label name)."})
    temperature: float = field(default=0.05, metadata={
        "help": "Logits are cosine similarities divided by this (0.05: the scale MiniLM was trained with); "
                "it changes probabilities and loss, never the predicted label."})

    def __post_init__(self):
        self.temperature = float(self.temperature)
        if self.temperature <= 0:
            raise ValueError("temperature must be positive")
        if not isinstance(self.template, str):  # YAML reads an unquoted {label} as a mapping
            raise ValueError("template must be a text; quote it, e.g. method.template='{label}'")
        if self.template and "{label}" not in self.template:
            raise ValueError("template needs a {label} placeholder")


class CosineHead(nn.Linear):
    """``normalize(x) @ W.T + b`` in float32: W holds the normalized label embeddings over the temperature."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            bias = None if self.bias is None else self.bias.float()
            return F.linear(F.normalize(x.float(), dim=-1), self.weight.float(), bias)


def descriptions(labels: list[str], opts: EmbedOptions, data_name: str) -> list[list[str]]:
    unknown = set(opts.descriptions) - set(labels)
    if unknown:
        raise ConfigError(f"descriptions for unknown label(s) {', '.join(sorted(unknown))} "
                          f"(labels: {', '.join(labels)})")
    template = opts.template or (f"This {TEXT_TYPES[data_name]} is {{label}}." if data_name in TEXT_TYPES
                                 else DEFAULT_TEMPLATE)
    out = []
    for label, word in zip(labels, label_words(labels, opts.words)):
        given = opts.descriptions.get(label)
        texts = [given] if isinstance(given, str) else list(given or [])
        if given is not None and (not texts or not all(isinstance(t, str) and t.strip() for t in texts)):
            raise ConfigError(f"the description of {label!r} must be a text or a list of texts")
        out.append(texts or [template.format(label=word)])
    return out


@torch.no_grad()
def sentence_vectors(model: nn.Module, tokenizer, texts: list[str], max_length: int) -> torch.Tensor:
    """Normalized sentence vectors with the model's own encoder and pooling (its head bypassed)."""
    from ..data.encode import collate, encode

    head, model.head = model.head, nn.Identity()
    try:
        batch = collate(encode(tokenizer, texts, max_length), tokenizer.pad_token_id or 0)
        return F.normalize(model(**batch).float(), dim=-1)
    finally:
        model.head = head


@register_kind("embed", description="cosine similarity of sentence embeddings (the run's encoder) to label "
                                    "descriptions", options=EmbedOptions)
def build_embed(cfg, opts: EmbedOptions, labels: list[str], fit: bool = True):
    from ..models import build_transformer, is_classic

    if is_classic(cfg.model.name):
        raise ConfigError(f"zero-shot embed needs a pretrained encoder, not the classic model {cfg.model.name!r}")
    model, tokenizer = build_transformer(cfg.model, len(labels))
    model.eval()
    head = CosineHead(model.head.in_features, len(labels))
    with torch.no_grad():
        head.bias.zero_()
        if fit:
            vectors = [F.normalize(sentence_vectors(model, tokenizer, texts, cfg.data.max_length).mean(0), dim=0)
                       for texts in descriptions(labels, opts, cfg.data.name)]
            head.weight.copy_(torch.stack(vectors) / opts.temperature)
    model.head = head
    model.dropout = nn.Identity()
    return model, tokenizer
