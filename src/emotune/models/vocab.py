"""A word-level tokenizer and vocabulary for the classic models (GloVe-style tokens).

Texts are lowercased and split into words and punctuation the way GloVe 6B's corpus was tokenized
(Stanford/PTB style): clitics come off their word (``don't`` -> ``do n't``, ``he's`` -> ``he 's``,
``can't`` -> ``ca n't``), every other non-space, non-word character is a token of its own. On MR this
finds a GloVe vector for 99.7% of the tokens (98% when clitics stay attached).

The vocabulary holds the words of the TRAINING texts only (``min_freq``, ``max_size``); index 0 is
``<pad>``, 1 is ``<unk>``. The tokenizer answers the part of the Hugging Face tokenizer interface that
emotune uses (``tok(texts, truncation=True, max_length=n)["input_ids"]``, ``pad_token_id``) and is
saved as ``vocab.json`` in the run folder.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

from ..errors import RunError
from ..io import write_json

PAD, UNK = "<pad>", "<unk>"
# A word before "n't" | "n't" | an English clitic | a word (letters/digits of any script) | one symbol.
PATTERN = r"[^\W_]+(?=n't\b)|n't\b|'(?:s|re|ve|ll|d|m)\b|[^\W_]+|[^\w\s]|_"
APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'"})


class WordTokenizer:
    """Word -> id with ``<pad>`` = 0 and ``<unk>`` = 1; callable like a Hugging Face tokenizer."""

    pad_token, unk_token = PAD, UNK
    pad_token_id, unk_token_id = 0, 1

    def __init__(self, words: Sequence[str], pattern: str = PATTERN):
        if list(words[:2]) != [PAD, UNK]:
            raise ValueError(f"a vocabulary starts with {PAD} and {UNK}")
        self.words = list(words)
        self.index = {w: i for i, w in enumerate(self.words)}
        self.pattern = pattern
        self._regex = re.compile(pattern)

    # ---- building ----------------------------------------------------------------------------
    @classmethod
    def build(cls, texts: Iterable[str], min_freq: int = 1, max_size: int | None = None) -> "WordTokenizer":
        """Vocabulary of ``texts``: words seen at least ``min_freq`` times, the ``max_size`` most frequent
        (ties broken alphabetically, so the same texts always give the same ids)."""
        counts = Counter(tok for text in texts for tok in cls.split(text))
        words = sorted((w for w, c in counts.items() if c >= min_freq), key=lambda w: (-counts[w], w))
        if max_size is not None:
            words = words[:max_size]
        return cls([PAD, UNK, *words])

    @staticmethod
    def split(text: str, pattern: str = PATTERN) -> list[str]:
        return re.findall(pattern, text.lower().translate(APOSTROPHES))

    def tokenize(self, text: str) -> list[str]:
        return self._regex.findall(text.lower().translate(APOSTROPHES))

    # ---- encoding (the Hugging Face tokenizer interface emotune uses) -------------------------
    def encode(self, text: str, max_length: int | None = None) -> list[int]:
        ids = [self.index.get(tok, 1) for tok in self.tokenize(text)] or [self.unk_token_id]  # never empty
        return ids[:max_length] if max_length else ids

    def __call__(self, texts: str | Sequence[str], truncation: bool = False, max_length: int | None = None,
                 **_: object) -> dict[str, list]:
        single = isinstance(texts, str)
        ids = [self.encode(t, max_length if truncation else None) for t in ([texts] if single else texts)]
        mask = [[1] * len(x) for x in ids]
        return {"input_ids": ids[0], "attention_mask": mask[0]} if single else \
            {"input_ids": ids, "attention_mask": mask}

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        return [self.words[i] for i in ids]

    def __len__(self) -> int:
        return len(self.words)

    @property
    def vocab_size(self) -> int:
        return len(self.words)

    # ---- persistence -----------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        write_json(Path(path), {"kind": "word", "pattern": self.pattern, "words": self.words})

    @classmethod
    def load(cls, path: str | Path) -> "WordTokenizer":
        path = Path(path)
        try:
            spec = json.loads(path.read_text(encoding="utf-8"))
            return cls(spec["words"], spec.get("pattern", PATTERN))
        except FileNotFoundError:
            raise RunError(f"{path}: the run's vocabulary is missing") from None
        except (ValueError, KeyError, TypeError) as e:
            raise RunError(f"{path}: not a vocabulary file ({e})") from None
