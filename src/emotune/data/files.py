"""Any CSV, TSV or JSONL file, or a folder of split files (train/validation|val|dev/test).

The text and label columns are named by ``--text-column`` and ``--label-column``. A single
file is the training split; a validation split is then carved from it (see base.load_data).

Multi-label data comes in two shapes: a label column holding several labels separated by
``data.label_delimiter`` (``joy,love``; in JSONL also a list of labels), the labels being those seen in the
training split; or one 0/1 column per label (``data.label_columns``). Either way a text may have no label
(an empty cell, a JSON null or [], or all columns 0): a valid row. Labels become multi-hot float lists.
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path
from typing import Any

from ..config import DataConfig
from ..errors import DataError
from .base import Split, Splits, check_text, label_id, read_text, target_value

SUFFIXES = (".csv", ".tsv", ".jsonl", ".json")
SPLIT_STEMS = {"train": ("train",), "validation": ("validation", "val", "valid", "dev"), "test": ("test",)}


def read_rows(path: Path, cfg: DataConfig) -> list[tuple[int, str, Any]]:
    """(line number, text, label) for every record of a CSV/TSV/JSONL file; the label is checked
    (see ``label_text``)."""
    if path.suffix not in SUFFIXES:
        raise DataError(f"unsupported file type {path.suffix!r} (use one of {', '.join(SUFFIXES)})", path)
    lines = read_text(path)
    rows: list[tuple[int, str, Any]] = []
    if path.suffix in (".jsonl", ".json"):
        for n, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"not a JSON object: {e.msg}", path, n) from None
            if not isinstance(rec, dict):
                raise DataError("not a JSON object", path, n)
            rows.append((n, *_columns(rec, cfg, path, n)))
        return rows
    # TSV has no quoting: a text may start with a quote. CSV quotes (RFC 4180); a quoted field may span lines.
    tsv = path.suffix == ".tsv"
    reader = csv.DictReader([line + "\n" for line in lines], delimiter="\t" if tsv else ",",
                            quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL, strict=not tsv)
    try:
        if reader.fieldnames is None:
            raise DataError("empty file", path)
        for rec in reader:
            n = reader.line_num
            if None in rec:  # more fields than the header names
                raise DataError("more fields than the header has", path, n)
            if any(v is None for v in rec.values()):
                raise DataError(f"fewer fields than the header has ({len(reader.fieldnames)})", path, n)
            rows.append((n, *_columns(rec, cfg, path, n)))
    except csv.Error as e:
        hint = " (a quote that is never closed?)" if "end of data" in str(e) or "quotechar" in str(e) else ""
        raise DataError(f"not valid {'TSV' if tsv else 'CSV'}: {e}{hint}", path, reader.line_num or 1) from None
    return rows


MISSING_LABELS = {"", "nan", "null"}


def label_text(value: object, path: Path, n: int) -> str:
    """A label as text: strings (stripped), integers, finite numbers and booleans; a missing label (empty,
    null, NaN) or a list/mapping is an error naming the file and line."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise DataError(f"label {value!r} is not a class (a missing label?)", path, n)
        return str(value)
    if value is None:
        raise DataError("empty label (null)", path, n)
    if not isinstance(value, str):
        raise DataError(f"label {value!r} is not a single value (a {type(value).__name__})", path, n)
    label = value.strip()
    if label.lower() in MISSING_LABELS:
        raise DataError(f"empty label ({label!r})" if label else "empty label", path, n)
    return label


def check_label_spellings(rows: dict[str, list[tuple[int, str, str]]], files: dict[str, Path | None]) -> None:
    """Refuse two spellings of one number as labels (`1` and `1.0`): they would become two classes."""
    seen: dict[float, tuple[str, Path, int]] = {}
    for split, recs in rows.items():
        for n, _, label in recs:
            try:
                number = float(label)
            except ValueError:
                continue
            first = seen.setdefault(number, (label, files[split], n))  # type: ignore[arg-type]
            if first[0] != label:
                raise DataError(f"label {label!r} is the number of label {first[0]!r} ({first[1]}:{first[2]}) "
                                "spelt differently: they would be two classes; use one spelling", files[split], n)


def _columns(rec: dict, cfg: DataConfig, path: Path, n: int) -> tuple[str, str | list[float] | list[str]]:
    """(text, label) or, with data.target_columns (regression), (text, the targets' values); multi-label:
    (text, its 0/1 per label column) with data.label_columns, (text, its label names) with a delimiter."""
    for col in (cfg.text_column, *(cfg.target_columns or cfg.label_columns or [cfg.label_column])):
        if col not in rec:
            raise DataError(f"no {col!r} column (columns: {', '.join(map(str, rec))}; choose with "
                            "--text-column/--label-column/--label-columns/--target-columns)", path, n)
    text = rec[cfg.text_column]
    if not isinstance(text, str):
        raise DataError(f"text is not a string: {text!r}", path, n)
    if cfg.target_columns:
        return check_text(text, path, n), [target_value(rec[c], c, path, n) for c in cfg.target_columns]
    if cfg.label_columns:
        return check_text(text, path, n), [binary_value(rec[c], c, path, n) for c in cfg.label_columns]
    if cfg.label_delimiter:
        return check_text(text, path, n), label_set(rec[cfg.label_column], cfg.label_delimiter, path, n)
    return check_text(text, path, n), label_text(rec[cfg.label_column], path, n)


def label_set(value: object, delimiter: str, path: Path, n: int) -> list[str]:
    """A multi-label cell as label names: ``joy,love`` split on the delimiter (empty parts skipped, repeats
    dropped), a JSON list of labels, or nothing (an empty cell, null, []): a text with no label."""
    if value is None:
        return []
    if isinstance(value, list):
        parts = [label_text(v, path, n) for v in value]
    elif isinstance(value, str):
        parts = [label_text(v, path, n) for v in value.split(delimiter) if v.strip()]
    else:
        parts = [label_text(value, path, n)]
    return list(dict.fromkeys(parts))


def binary_value(value: object, column: str, path: Path, n: int) -> float:
    """A 0/1 label column's value as 0.0 or 1.0 (JSON booleans too); anything else names the file and line."""
    if isinstance(value, bool):
        return float(value)
    try:
        number = float(value.strip() if isinstance(value, str) else value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = math.nan
    if number not in (0.0, 1.0):
        raise DataError(f"label column {column!r} must hold 0 or 1, got {value!r}", path, n)
    return number


def _find_split(folder: Path, split: str) -> Path | None:
    for stem in SPLIT_STEMS[split]:
        for suffix in SUFFIXES:
            if (folder / f"{stem}{suffix}").is_file():
                return folder / f"{stem}{suffix}"
    return None


INTEGER = re.compile(r"[+-]?[0-9]+")


def _label_names(raw: list[str]) -> list[str]:
    names = sorted(set(raw))
    if all(INTEGER.fullmatch(n) for n in names):
        names.sort(key=int)  # numeric labels keep their numeric order (ASCII digits only: not `²`, `--1`)
    return names


def load_files(path: Path, cfg: DataConfig) -> Splits:
    if path.is_dir():
        files = {s: _find_split(path, s) for s in SPLIT_STEMS}
        if files["train"] is None:
            raise DataError(f"no train file (train{{{','.join(SUFFIXES)}}}) in the folder", path)
    else:
        files = {"train": path, "validation": None, "test": None}
    rows = {s: read_rows(p, cfg) for s, p in files.items() if p is not None}
    for s, recs in rows.items():
        if not recs:
            raise DataError("no examples", files[s])
    if cfg.target_columns or cfg.label_columns:  # regression targets, or one 0/1 column per label: the outputs
        return Splits(path.stem, list(cfg.target_columns or cfg.label_columns),
                      {s: Split([t for _, t, _ in recs], [v for _, _, v in recs]) for s, recs in rows.items()})
    if cfg.label_delimiter:
        return _label_sets(path, rows, files)
    check_label_spellings(rows, files)
    names = _label_names([label for _, _, label in rows["train"]])
    splits: dict[str, Split] = {}
    for s, recs in rows.items():
        p = files[s]
        assert p is not None
        splits[s] = Split([t for _, t, _ in recs], [label_id(lab, names, p, n, split=s) for n, _, lab in recs])
    return Splits(path.stem, names, splits)


def _label_sets(path: Path, rows: dict[str, list[tuple[int, str, Any]]], files: dict[str, Path | None]) -> Splits:
    """Multi-label rows (label name lists) as multi-hot targets over the training split's labels."""
    single = {s: [(n, t, label) for n, t, labels in recs for label in labels] for s, recs in rows.items()}
    check_label_spellings(single, files)
    names = _label_names([label for _, _, label in single["train"]])
    if not names:
        raise DataError("no labels in the training split (every label cell is empty)", files["train"])
    splits: dict[str, Split] = {}
    for s, recs in rows.items():
        p = files[s]
        assert p is not None
        targets = []
        for n, _, labels in recs:
            row = [0.0] * len(names)
            for label in labels:
                row[label_id(label, names, p, n, split=s)] = 1.0
            targets.append(row)
        splits[s] = Split([t for _, t, _ in recs], targets)
    return Splits(path.stem, names, splits)
