"""Data set containers, the data-set registry and the loader that resolves a DataConfig."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable

from ..config import DataConfig
from ..errors import ConfigError, DataError
from ..registry import Registry

SPLITS = ("train", "validation", "test")


@dataclass
class Split:
    """One split: texts and integer label ids (indices into Splits.label_names); regression: each text's
    target values; multi-label: each text's multi-hot float list over Splits.label_names."""

    texts: list[str]
    labels: list

    def __len__(self) -> int:
        return len(self.texts)

    def head(self, n: int | None, seed: int) -> "Split":
        """The first n examples after a seeded shuffle (all of them when n is None)."""
        if n is None or n >= len(self):
            return self
        idx = list(range(len(self)))
        random.Random(seed).shuffle(idx)
        return self._pick(sorted(idx[:n]))

    def carve(self, fraction: float, seed: int) -> tuple["Split", "Split"]:
        """(rest, held-out): a seeded random fraction split off, e.g. as validation data."""
        idx = list(range(len(self)))
        random.Random(seed).shuffle(idx)
        k = max(1, int(round(len(idx) * fraction)))
        return self._pick(sorted(idx[k:])), self._pick(sorted(idx[:k]))

    def _pick(self, idx: list[int]) -> "Split":
        return Split([self.texts[i] for i in idx], [self.labels[i] for i in idx])

    def __add__(self, other: "Split") -> "Split":
        return Split(self.texts + other.texts, self.labels + other.labels)


@dataclass
class Splits:
    """A data set: its label names and whichever of train/validation/test it has."""

    name: str
    label_names: list[str]
    splits: dict[str, Split] = field(default_factory=dict)
    left_out: dict[str, str] = field(default_factory=dict)
    """Splits the source has but that were left out, with the reason (hub test splits without labels)."""

    def __getitem__(self, split: str) -> Split:
        if split not in self.splits:
            why = f"; its {split} split was left out: {self.left_out[split]}" if split in self.left_out else ""
            raise DataError(f"data set {self.name!r} has no {split!r} split "
                            f"(it has: {', '.join(self.splits) or 'none'}){why}")
        return self.splits[split]


Loader = Callable[[DataConfig, "Path | None"], Splits]
DATASETS: Registry[Loader] = Registry("data set")
DATASET_TASKS: dict[str, str] = {}
"""Named data sets whose labels are not single classes -> their task (emobank: regression, goemotions:
multilabel)."""


def data_root(cfg: DataConfig) -> Path | None:
    """The local data root: the config's data_dir, else $EMOTUNE_DATA_DIR, else None (use the hub)."""
    root = cfg.data_dir or os.environ.get("EMOTUNE_DATA_DIR")
    if not root:
        return None
    root_path = Path(root).expanduser()
    if not root_path.is_dir():
        raise DataError("data directory not found", root_path)
    return root_path


def load_data(cfg: DataConfig, seed: int = 42) -> Splits:
    """Resolve ``cfg.name`` (registered name, local file/folder, or hub id); then pick the cross-validation
    fold, carve a validation split where the data set has none, and apply the sample caps (all seeded by
    ``cfg.seed``, else by ``seed``, the run's training seed)."""
    cfg.validate()
    seed = seed if cfg.seed is None else cfg.seed
    if cfg.name in DATASETS:
        data = DATASETS.get(cfg.name)(cfg, data_root(cfg))
    elif Path(cfg.name).expanduser().exists():
        from .files import load_files

        data = load_files(Path(cfg.name).expanduser(), cfg)
    elif "/" in cfg.name and not cfg.name.startswith((".", "/", "~")):
        from .hub import load_hub

        data = load_hub(cfg.name, cfg)
    else:
        raise DataError(f"unknown data set {cfg.name!r}: not a registered name ({', '.join(DATASETS)}), "
                        "an existing file or folder, or a hub id (owner/name)")
    if cfg.task == "multilabel":
        to_multi_hot(data)
    if cfg.cv_folds is not None:
        cross_validation_fold(data, cfg.cv_folds, cfg.cv_fold or 0, seed)
    if "validation" not in data.splits and "train" in data.splits:
        if len(data.splits["train"]) < 2:
            raise DataError(f"data set {data.name!r} has {len(data.splits['train'])} training example(s) and no "
                            "validation split: a validation split is carved from the training data, which needs "
                            "at least 2 examples (more to learn anything)")
        data.splits["train"], data.splits["validation"] = data.splits["train"].carve(cfg.validation_fraction, seed)
    for split, n in (("train", cfg.max_train_samples), ("validation", cfg.max_eval_samples),
                     ("test", cfg.max_eval_samples)):
        if split in data.splits:
            data.splits[split] = data.splits[split].head(n, seed)
    for split in ("train", "validation"):
        if split in data.splits and not len(data.splits[split]):
            raise DataError(f"data set {data.name!r}: the {split} split is empty")
    return data


def cross_validation_fold(data: Splits, folds: int, fold: int, seed: int) -> None:
    """Pool train and test, split them into ``folds`` stratified folds (seeded): fold ``fold`` becomes the
    test split and the others the training split. A validation split of the data set's own is kept."""
    from sklearn.model_selection import StratifiedKFold

    pooled = data["train"] + data.splits["test"] if "test" in data.splits else data["train"]
    if pooled.labels and isinstance(pooled.labels[0], list):
        raise DataError(f"cross-validation (data.cv_folds) stratifies by single labels; data set {data.name!r} "
                        "has several labels or targets per text")
    counts = [pooled.labels.count(i) for i in sorted(set(pooled.labels))]
    if min(counts) < folds:
        raise DataError(f"{folds}-fold cross-validation needs at least {folds} examples of every label; "
                        f"data set {data.name!r} has {min(counts)} of its rarest")
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    train_idx, test_idx = list(splitter.split(pooled.texts, pooled.labels))[fold]
    data.splits["train"] = pooled._pick(sorted(int(i) for i in train_idx))
    data.splits["test"] = pooled._pick(sorted(int(i) for i in test_idx))


def to_multi_hot(data: Splits) -> None:
    """Single-label splits (label ids) as multi-hot float lists, for a multi-label run on single-label data;
    splits that are multi-hot already stay as they are."""
    n = len(data.label_names)
    for name, split in data.splits.items():
        if split.labels and not isinstance(split.labels[0], list):
            data.splits[name] = Split(split.texts, [[float(i == label) for i in range(n)] for label in split.labels])


def split_lines(text: str) -> list[str]:
    """Lines split on \\n only (a trailing \\r dropped), unlike str.splitlines, which also splits on
    U+2028, U+0085 and \\x1c-\\x1e, characters that occur inside texts; no empty last line for a final
    newline."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def open_bytes(path: str | Path) -> IO[bytes]:
    """``path`` opened for reading bytes; a missing file, a folder or an unreadable file is a one-line DataError."""
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise DataError("file not found", path) from None
    except IsADirectoryError:
        raise DataError("expected a file, found a folder", path) from None
    except OSError as e:
        raise DataError(f"cannot read the file ({e.strerror or e})", path) from None


def read_text(path: Path) -> list[str]:
    """A file's lines (split_lines); a clear error for a missing file or bytes that are not UTF-8."""
    with open_bytes(path) as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"bytes that are not UTF-8 at byte {e.start}", path, line) from None
    return split_lines(text)


def check_text(text: str, path: Path, line: int) -> str:
    text = text.strip()
    if not text:
        raise DataError("empty text", path, line)
    return text


def target_value(value: object, column: str, path: Path, line: int) -> float:
    """A regression target as a float; missing, non-numeric or non-finite values are errors naming the place."""
    import math

    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        raise DataError(f"target {column!r} is not a number: {value!r}", path, line) from None
    if not math.isfinite(number):
        raise DataError(f"target {column!r} is missing or not finite: {value!r}", path, line)
    return number


def label_id(label: str, names: list[str], path: Path, line: int, split: str | None = None) -> int:
    """The label's id; an unknown label is an error naming the file and line (``split``: the split being
    read when the names come from the training split, for a clearer message)."""
    try:
        return names.index(label)
    except ValueError:
        if split is not None and split != "train":
            raise DataError(f"unknown label {label!r}: it occurs in the {split} split but never in the training "
                            f"split (training labels: {', '.join(names)}), so no model can learn it; remove those "
                            "examples or add training examples", path, line) from None
        raise DataError(f"unknown label {label!r} (known: {', '.join(names)})", path, line) from None


def resolve_task(data) -> None:
    """Fill ``data.task`` when unset: what the named data set declares, multilabel with label columns or a label
    delimiter, regression with target columns, else classification. A named data set whose labels are not
    single classes trains only as what it declares (goemotions: multilabel). An instruction folder (``emotune
    instruct-data``) is instruction tuning, ``instruct``, and nothing else is."""
    from .instruct import is_instruction_folder

    declared = DATASET_TASKS.get(data.name) or ("instruct" if is_instruction_folder(data.name) else None)
    if data.task == "instruct" and declared != "instruct":
        raise ConfigError(f"data.task=instruct trains on an instruction folder (`emotune instruct-data`); "
                          f"{data.name!r} is not one")
    if data.task is None:
        data.task = declared or ("multilabel" if data.label_columns or data.label_delimiter else
                                 "regression" if data.target_columns else "classification")
    elif declared and data.task != declared:
        raise ConfigError(f"data set {data.name!r} is a {declared} data set; data.task={data.task} cannot train "
                          "on it")
