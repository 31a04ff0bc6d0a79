"""MR (Movie Review sentence polarity v1.0, Pang & Lee 2005): positive/negative, lab split 10,000/662.

Local layout: ``<data_dir>/mr/rt-polarity.pos`` and ``rt-polarity.neg``, one sentence per line (UTF-8).
MR has no official split; this is the one of a well-known NLP course lab: the first 5,000 sentences of
each class train (10,000), the remaining 331 + 331 test (662). It has no validation split, so one is
carved from train (``data.validation_fraction``); ``data.cv_folds``/``data.cv_fold`` give the papers'
10-fold cross-validation instead. Without a data directory it stops with an error rather than load the
hub copy (``cornell-movie-review-data/rotten_tomatoes``), whose split differs; train on that id if wanted.
"""

from __future__ import annotations

from pathlib import Path

from ..config import DataConfig
from ..errors import DataError
from .base import DATASETS, Split, Splits, check_text, read_text

LABELS = ["negative", "positive"]
FILES = {"positive": "rt-polarity.pos", "negative": "rt-polarity.neg"}  # the lab's order: positive first
TRAIN_PER_CLASS = 5000
HUB_ID = "cornell-movie-review-data/rotten_tomatoes"


def read_sentences(path: Path) -> list[str]:
    """Every non-blank line, stripped (blank lines would otherwise shift the positional split)."""
    return [check_text(line, path, n) for n, line in enumerate(read_text(path), start=1) if line.strip()]


@DATASETS.register("mr")
def load_mr(cfg: DataConfig, root: Path | None) -> Splits:
    if root is None:
        raise DataError("the mr data set is read from local files: pass --data-dir (or set EMOTUNE_DATA_DIR) "
                        f"to a folder holding mr/rt-polarity.pos and .neg; the hub copy {HUB_ID!r} has a "
                        "different split (train on it by that id if you want it)")
    folder = root / "mr"
    if not folder.is_dir():
        raise DataError("no mr/ folder in the data directory", folder)
    train, test = Split([], []), Split([], [])
    for label, name in FILES.items():
        sentences = read_sentences(folder / name)
        if len(sentences) <= TRAIN_PER_CLASS:
            raise DataError(f"{len(sentences)} sentences; the lab split needs more than {TRAIN_PER_CLASS} "
                            "(the first ones train, the rest test)", folder / name)
        y = LABELS.index(label)
        train += Split(sentences[:TRAIN_PER_CLASS], [y] * TRAIN_PER_CLASS)
        test += Split(sentences[TRAIN_PER_CLASS:], [y] * (len(sentences) - TRAIN_PER_CLASS))
    return Splits("mr", list(LABELS), {"train": train, "test": test})
