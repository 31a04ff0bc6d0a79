"""GoEmotions (Demszky et al. 2020): multi-label, 27 emotions + neutral, 58k Reddit comments; Apache-2.0.

Local layout: ``<data_dir>/goemotions/{train.tsv, dev.tsv, labels.txt}``: TSV lines
``text<TAB>comma-separated label ids<TAB>comment id`` without a header; line i of labels.txt names label id i.
train.tsv (43,410) trains, dev.tsv (5,426) validates; the official test split is not among these files, so
there is no test split unless a ``test.tsv`` of the same format is put beside them. Every text has at least
one label (neutral included): an empty label list or an id outside labels.txt is an error naming the line.
"""

from __future__ import annotations

from pathlib import Path

from ..config import DataConfig
from ..errors import DataError
from .base import DATASET_TASKS, DATASETS, Split, Splits, check_text, read_text

FILES = {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"}


def read_label_names(path: Path) -> list[str]:
    names = [line.strip() for line in read_text(path)]
    for n, name in enumerate(names, start=1):
        if not name:
            raise DataError("empty label name", path, n)
        if names.index(name) != n - 1:
            raise DataError(f"label name {name!r} repeats line {names.index(name) + 1}", path, n)
    if not names:
        raise DataError("no label names", path)
    return names


def read_split(path: Path, n_labels: int) -> Split:
    """One TSV file as texts and multi-hot targets."""
    split = Split([], [])
    for n, line in enumerate(read_text(path), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 3:
            raise DataError("expected text<TAB>label ids<TAB>comment id", path, n)
        text = check_text(" ".join(fields[:-2]), path, n)  # a tab inside the text: keep the words
        row = [0.0] * n_labels
        ids = [part.strip() for part in fields[-2].split(",") if part.strip()]
        if not ids:
            raise DataError("no label ids (every GoEmotions text has at least one label)", path, n)
        for part in ids:
            if not (part.isascii() and part.isdigit()) or int(part) >= n_labels:
                raise DataError(f"label id {part!r} is not one of the {n_labels} labels of labels.txt "
                                f"(0-{n_labels - 1})", path, n)
            row[int(part)] = 1.0
        split.texts.append(text)
        split.labels.append(row)
    if not split.texts:
        raise DataError("no examples", path)
    return split


@DATASETS.register("goemotions")
def load_goemotions(cfg: DataConfig, root: Path | None) -> Splits:
    if root is None:
        raise DataError("goemotions reads goemotions/{train,dev}.tsv and labels.txt under --data-dir "
                        "(or $EMOTUNE_DATA_DIR)")
    folder = root / "goemotions"
    for name in ("labels.txt", FILES["train"], FILES["validation"]):
        if not (folder / name).is_file():
            raise DataError(f"no goemotions/{name} in the data directory", folder / name)
    names = read_label_names(folder / "labels.txt")
    splits = {split: read_split(folder / file, len(names)) for split, file in FILES.items()
              if (folder / file).is_file()}
    left_out = {} if "test" in splits else {
        "test": f"GoEmotions' official test split is not in {folder} (only train.tsv and dev.tsv); evaluate on "
                "--split validation, or put its test.tsv there"}
    return Splits("goemotions", names, splits, left_out)


DATASET_TASKS["goemotions"] = "multilabel"
