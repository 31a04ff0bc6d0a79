"""EmoBank (Buechel & Hahn 2017): regression of valence, arousal and dominance (1-5), 8,062/1,000/1,000.

10,062 English sentences, each dimension the reader/writer average; CC-BY-SA 4.0. One output per dimension.

Local layout: ``<data_dir>/emobank/emobank.csv`` with columns ``id,split,V,A,D,text`` (texts may hold quotes,
commas and line breaks: read as real CSV); the ``split`` column gives train 8,062 / dev 1,000 / test 1,000.
"""

from __future__ import annotations

import csv
from pathlib import Path

from ..config import DataConfig
from ..errors import DataError
from .base import DATASET_TASKS, DATASETS, Split, Splits, check_text, read_text, target_value

TARGETS = ["V", "A", "D"]
SPLITS = {"train": "train", "dev": "validation", "test": "test"}


@DATASETS.register("emobank")
def load_emobank(cfg: DataConfig, root: Path | None) -> Splits:
    if root is None:
        raise DataError("emobank reads emobank/emobank.csv under --data-dir (or $EMOTUNE_DATA_DIR)")
    path = root / "emobank" / "emobank.csv"
    if not path.is_file():
        raise DataError("no emobank/emobank.csv in the data directory", path)
    reader = csv.DictReader([line + "\n" for line in read_text(path)], strict=True)
    missing = set(["split", "text", *TARGETS]) - set(reader.fieldnames or [])
    if missing:
        raise DataError(f"missing column(s) {', '.join(sorted(missing))}", path)
    parts: dict[str, Split] = {s: Split([], []) for s in SPLITS.values()}
    try:
        for rec in reader:
            n = reader.line_num
            split = SPLITS.get(rec["split"])
            if split is None:
                raise DataError(f"unknown split {rec['split']!r} (expected {', '.join(SPLITS)})", path, n)
            parts[split].texts.append(check_text(rec["text"] or "", path, n))
            parts[split].labels.append([target_value(rec[t], t, path, n) for t in TARGETS])
    except csv.Error as e:
        raise DataError(f"not valid CSV: {e}", path, reader.line_num) from None
    return Splits("emobank", list(TARGETS), parts)


DATASET_TASKS["emobank"] = "regression"
