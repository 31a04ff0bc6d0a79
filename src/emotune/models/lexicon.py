"""Lexicon features (``model.lexicon=nrc``): per text, the share of its words in each NRC EmoLex category
(8 emotions, 2 polarities), appended to the pooled sentence vector before the head.

The features are computed from the token ids the model receives (decoded back to words), so training,
evaluation, reloads, ensembles and the server compute them the same way without carrying text beside the ids.
Negation is handled simply: a polarity word within three words after a negator (not, never, no, n't...) counts
for the opposite polarity; its emotions count as they are. NRC EmoLex (Mohammad & Turney 2013) is for research
use only (its terms; it ships with the ``nrclex`` package, see ``models/nrc.py``).
"""

from __future__ import annotations

import re
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .nrc import EMOTIONS, POLARITIES, categories, nrc_sha256

FEATURES = EMOTIONS + POLARITIES
NEGATORS = frozenset({"not", "no", "never", "nothing", "nobody", "none", "neither", "nor", "without", "cannot",
                      "nowhere", "hardly"})
NEGATION_SCOPE = 3
_WORDS = re.compile(r"[a-z]+(?:'[a-z]+)?")
# Clitics rejoin their word, so a text counts the same words however it was tokenized: "don ' t" (word
# pieces), "do n't" (a classic model's GloVe-style tokens) -> "don't"; "he ' s", "he 's" -> "he's".
_NT = re.compile(r"(?:\s+n't|n\s*'\s*t)\b")
_CLITIC = re.compile(r"\s*'\s*(s|re|ve|ll|d|m)\b")
_FLIP = {"negative": "positive", "positive": "negative"}
_INDEX = {name: i for i, name in enumerate(FEATURES)}


def lexicon_features(text: str) -> list[float]:
    """The share of the text's words in each of FEATURES (counts over the number of words)."""
    words = _WORDS.findall(_CLITIC.sub(r"'\1", _NT.sub("n't", text.lower())))
    counts = [0.0] * len(FEATURES)
    negated_until = -1
    for i, word in enumerate(words):
        if word in NEGATORS or word.endswith("n't"):
            negated_until = i + NEGATION_SCOPE
            continue
        for category in categories(word):
            if i <= negated_until:
                category = _FLIP.get(category, category)
            counts[_INDEX[category]] += 1
    return [c / max(1, len(words)) for c in counts]


def text_decoder(tokenizer: Any) -> Callable[[torch.Tensor, torch.Tensor], list[str]]:
    """``(input_ids, attention_mask) -> texts`` for a Transformers tokenizer or a classic model's vocabulary."""
    def rows(ids: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
        return [r[m.bool()].tolist() for r, m in zip(ids.cpu(), mask.cpu())]

    if hasattr(tokenizer, "batch_decode"):
        return lambda ids, mask: tokenizer.batch_decode(rows(ids, mask), skip_special_tokens=True)
    return lambda ids, mask: [" ".join(tokenizer.convert_ids_to_tokens(r)) for r in rows(ids, mask)]


class LexiconFeatures(nn.Module):
    """``(input_ids, attention_mask) -> (texts x 10)`` NRC EmoLex features; no weights (nothing to save)."""

    size = len(FEATURES)

    def __init__(self, tokenizer: Any) -> None:
        super().__init__()
        self.decode = text_decoder(tokenizer)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        texts = self.decode(input_ids, attention_mask)
        return torch.tensor([lexicon_features(t) for t in texts], dtype=torch.float32, device=input_ids.device)


def lexicon_record(name: str | None) -> dict:
    """What a run records of its lexicon (metrics.json's train section): the file's sha256; {} without one."""
    return {"lexicon_sha256": nrc_sha256()} if name else {}


def with_features(pooled: torch.Tensor, lexicon: LexiconFeatures | None, input_ids: torch.Tensor,
                  attention_mask: torch.Tensor) -> torch.Tensor:
    """The head's input: the pooled vector, followed by the lexicon features when the model has them."""
    if lexicon is None:
        return pooled
    return torch.cat([pooled, lexicon(input_ids, attention_mask).to(pooled.dtype)], -1)


__all__: Sequence[str] = ("FEATURES", "LexiconFeatures", "lexicon_features", "lexicon_record", "with_features")
