"""Any CSV, TSV or JSONL file, or a folder of split files (train/validation|val|dev/test).

The text and label columns are named by ``--text-column`` and ``--label-column``. A single
file is the training split; a validation split is then carved from it (see base.load_data).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from ..config import DataConfig
from ..errors import DataError
from .base import Split, Splits, check_text, label_id, read_text

SUFFIXES = (".csv", ".tsv", ".jsonl", ".json")
SPLIT_STEMS = {"train": ("train",), "validation": ("validation", "val", "valid", "dev"), "test": ("test",)}


def read_rows(path: Path, cfg: DataConfig) -> list[tuple[int, str, str]]:
    """(line number, text, raw label) for every record of a CSV/TSV/JSONL file."""
    lines = read_text(path)
    rows: list[tuple[int, str, str]] = []
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
    if path.suffix not in (".csv", ".tsv"):
        raise DataError(f"unsupported file type {path.suffix!r} (use one of {', '.join(SUFFIXES)})", path)
    reader = csv.DictReader(lines, delimiter="\t" if path.suffix == ".tsv" else ",")
    if reader.fieldnames is None:
        raise DataError("empty file", path)
    for rec in reader:
        n = reader.line_num
        if None in rec:  # more fields than the header names
            raise DataError("more fields than the header has", path, n)
        rows.append((n, *_columns(rec, cfg, path, n)))
    return rows


def _columns(rec: dict, cfg: DataConfig, path: Path, n: int) -> tuple[str, str]:
    for col in (cfg.text_column, cfg.label_column):
        if col not in rec or rec[col] is None:
            raise DataError(f"no {col!r} column (columns: {', '.join(map(str, rec))}; "
                            "choose with --text-column/--label-column)", path, n)
    text = rec[cfg.text_column]
    if not isinstance(text, str):
        raise DataError(f"text is not a string: {text!r}", path, n)
    return check_text(text, path, n), str(rec[cfg.label_column]).strip()


def _find_split(folder: Path, split: str) -> Path | None:
    for stem in SPLIT_STEMS[split]:
        for suffix in SUFFIXES:
            if (folder / f"{stem}{suffix}").is_file():
                return folder / f"{stem}{suffix}"
    return None


def _label_names(raw: list[str]) -> list[str]:
    names = sorted(set(raw))
    if all(n.lstrip("-").isdigit() for n in names):
        names.sort(key=int)  # numeric labels keep their numeric order
    return names


def load_files(path: Path, cfg: DataConfig) -> Splits:
    if path.is_dir():
        files = {s: _find_split(path, s) for s in SPLIT_STEMS}
        if files["train"] is None:
            raise DataError(f"no train file (train{{{','.join(SUFFIXES)}}}) in the folder", path)
    else:
        files = {"train": path, "validation": None, "test": None}
    rows = {s: read_rows(p, cfg) for s, p in files.items() if p is not None}
    if not rows["train"]:
        raise DataError("no examples", files["train"])
    names = _label_names([label for _, _, label in rows["train"]])
    splits: dict[str, Split] = {}
    for s, recs in rows.items():
        p = files[s]
        assert p is not None
        splits[s] = Split([t for _, t, _ in recs], [label_id(lab, names, p, n) for n, _, lab in recs])
    return Splits(path.stem, names, splits)
