"""Text -> token ids once, up front; batches grouped by length; dynamic padding."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass
class Encoded:
    """Token id lists (unpadded) and labels of one split."""

    ids: list[list[int]]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.ids)


def data_fingerprint(data: Encoded, label_names: list[str]) -> str:
    """A short hash of encoded examples and label names: a resumed run or stream must see the same data."""
    h = hashlib.sha256(json.dumps(label_names).encode())
    for ids, label in zip(data.ids, data.labels):
        h.update(json.dumps([list(map(int, ids)), label]).encode())
    return h.hexdigest()[:16]


def encode(tokenizer, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Tokenize every text once (fast tokenizers do this in a batch)."""
    return tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]


def batches(lengths: Sequence[int], batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None,
            group_by_length: bool = True, chunk: int = 50) -> list[list[int]]:
    """Index batches. With group_by_length, indices are shuffled, cut into chunks of
    ``chunk * batch_size``, sorted by length inside each chunk and the batches shuffled
    again: little padding, yet every epoch sees a fresh order."""
    n = len(lengths)
    order = torch.randperm(n, generator=generator).tolist() if shuffle else list(range(n))
    if group_by_length:
        size = chunk * batch_size if shuffle else n
        order = [i for s in range(0, n, size)
                 for i in sorted(order[s:s + size], key=lambda i: lengths[i], reverse=True)]
    out = [order[s:s + batch_size] for s in range(0, n, batch_size)]
    if shuffle and group_by_length:
        out = [out[i] for i in torch.randperm(len(out), generator=generator).tolist()]
    return out


def collate(ids: Sequence[Sequence[int]], pad_id: int = 0, multiple: int = 1) -> dict[str, torch.Tensor]:
    """Pad to the longest sequence of the batch (rounded up to a multiple of ``multiple``)."""
    longest = -(-max(len(x) for x in ids) // multiple) * multiple
    input_ids = torch.full((len(ids), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), longest), dtype=torch.long)
    for row, x in enumerate(ids):
        input_ids[row, : len(x)] = torch.tensor(x, dtype=torch.long)
        mask[row, : len(x)] = 1
    return {"input_ids": input_ids, "attention_mask": mask}
