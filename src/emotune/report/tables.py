"""The report's tables, laid out like the study's: one column per run (headed by its hyper-parameters),
one row per figure; plus the chosen runs on test and example predictions."""

from __future__ import annotations

import csv
import random
from pathlib import Path
from typing import Any, Callable

from ..runs import BEST
from .collect import Entry, hyper_label
from .render import Table

Row = tuple[str, Callable[[Entry], Any]]


def pct(v: Any) -> str:
    return "" if v is None else f"{100 * v:.2f}"


def num(v: Any, digits: int = 4) -> str:
    return "" if v is None else f"{v:.{digits}f}"


def count(v: Any) -> str:
    return "" if v is None else f"{int(v):,}"


def runtime_unit(entries: list[Entry]) -> tuple[str, float]:
    """Seconds for short runs, minutes otherwise: one unit per table so columns compare at a glance."""
    longest = max((e.value("train", "runtime_s") or 0 for e in entries), default=0)
    return ("s", 1.0) if longest < 300 else ("min", 60.0)


def weights_mb(entry: Entry) -> float | None:
    """Size on disk of the run's saved weights (the adapter + head for PEFT methods)."""
    if entry.run is None:  # metrics alone (no run folder): nothing on disk to measure
        return None
    path = entry.path / BEST
    return path.stat().st_size / 2**20 if path.is_file() else None


def train_rows(entries: list[Entry]) -> list[Row]:
    unit, div = runtime_unit(entries)
    return [
        (f"runtime ({unit})", lambda e: num((e.value("train", "runtime_s") or 0) / div, 1)),
        ("steps", lambda e: count(e.value("train", "steps"))),
        ("steps to best", lambda e: count(e.value("train", "best_step"))),
        ("steps/s", lambda e: num(e.value("train", "steps_per_s"), 2)),
        ("samples/s", lambda e: num(e.value("train", "samples_per_s"), 1)),
        ("peak memory (MB)", lambda e: count(e.value("train", "peak_memory_mb"))),
        ("weights file (MB)", lambda e: num(weights_mb(e), 2)),
        ("trainable parameters", lambda e: count(e.value("train", "trainable_params"))),
        ("trainable %", lambda e: num(e.value("train", "trainable_pct"), 2)),
    ]


def quality_rows(split: str, prefix: str = "") -> list[Row]:
    return [
        (f"{prefix}loss", lambda e: num(e.value(split, "loss"))),
        (f"{prefix}accuracy (%)", lambda e: pct(e.value(split, "accuracy"))),
        (f"{prefix}precision (weighted, %)", lambda e: pct(e.value(split, "precision_weighted"))),
        (f"{prefix}recall (weighted, %)", lambda e: pct(e.value(split, "recall_weighted"))),
        (f"{prefix}F1 (weighted, %)", lambda e: pct(e.value(split, "f1_weighted"))),
    ]


def sentiment_rows(split: str, entries: list[Entry], prefix: str = "") -> list[Row]:
    """SemEval-2017 4A's measures (AvgRec = macro recall, F1-PN), only where some run has positive/negative
    classes (its metrics then hold f1_pn)."""
    if not any(e.value(split, "f1_pn") is not None for e in entries):
        return []
    return [(f"{prefix}recall (macro) = AvgRec (%)", lambda e: pct(e.value(split, "recall_macro"))),
            (f"{prefix}F1-PN (%)", lambda e: pct(e.value(split, "f1_pn")))]


def columns_table(entries: list[Entry], headers: list[str], rows: list[Row], caption: str = "") -> Table:
    return Table([""] + headers, [[name] + [fn(e) for e in entries] for name, fn in rows], caption)


def validation_table(entries: list[Entry], keys: list[str], chosen: Entry, caption: str = "") -> Table:
    """One column per run (hyper-parameters in the header, ★ on the chosen one), study rows below."""
    headers = [hyper_label(e, keys) + (" ★" if e is chosen else "") for e in entries]
    rows = (quality_rows("validation") + sentiment_rows("validation", entries) + train_rows(entries)
            + [("run folder", lambda e: f"`{e.name}`")])
    return columns_table(entries, headers, rows, caption)


def test_table(chosen: dict[str, Entry], keys: dict[str, list[str]], metric: str) -> Table:
    """The chosen run of every family on the test split, families as columns."""
    entries = list(chosen.values())
    rows: list[Row] = [("chosen run", lambda e: hyper_label(e, keys[e.family])),
                       (f"validation {metric}" + (" (%)" if metric != "loss" else ""),
                        lambda e: num(e.value("validation", metric)) if metric == "loss"
                        else pct(e.value("validation", metric)))]
    rows += quality_rows("test", "test ") + [("test F1 (macro, %)", lambda e: pct(e.value("test", "f1_macro")))]
    rows += sentiment_rows("test", entries, "test ")
    rows += [r for r in train_rows(entries) if r[0] != "steps"] + [("run folder", lambda e: f"`{e.name}`")]
    return columns_table(entries, list(chosen), rows)


def retrained_table(entries: list[Entry]) -> Table:
    rows: list[Row] = [("retrained from", lambda e: f"trial {e.metrics['retrained'].get('from_trial')} of "
                                                     f"{e.metrics['retrained'].get('study', '?')}"),
                       ("steps (train+validation)", lambda e: count(e.value("train", "steps")))]
    rows += quality_rows("test", "test ") + sentiment_rows("test", entries, "test ")
    rows += [r for r in train_rows(entries) if r[0].startswith(("runtime", "train"))]
    return columns_table(entries, [f"{e.family}: `{e.name}`" for e in entries], rows)


def unfinished_table(entries: list[Entry]) -> Table:
    def status(e: Entry) -> str:
        if e.metrics.get("pruned"):
            return f"pruned at step {e.metrics.get('pruned_at_step')}"
        return e.run.status()

    return Table(["run", "family", "status", "evaluations"],
                 [[f"`{e.name}`", e.family, status(e), str(len(e.history))] for e in entries], align=["l"] * 4)


# ---- example predictions -------------------------------------------------------------------------------

def read_predictions(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def examples_table(predictions: list[dict], k: int, seed: int, width: int = 110) -> Table:
    """``k`` random right and ``k`` random wrong predictions (seeded), side by side."""
    rng = random.Random(seed)
    right = [p for p in predictions if p["label"] == p["predicted"]]
    wrong = [p for p in predictions if p["label"] != p["predicted"]]
    right, wrong = rng.sample(right, min(k, len(right))), rng.sample(wrong, min(k, len(wrong)))

    def short(text: str) -> str:
        return text if len(text) <= width else text[: width - 1] + "…"

    def side(p: dict | None, wrong_side: bool) -> list[str]:
        if p is None:
            return ["", "", ""]
        label = f"{p['label']} → {p['predicted']}" if wrong_side else p["label"]
        return [short(p["text"]), label, f"{float(p['confidence']):.2f}"]

    rows = [side(right[i] if i < len(right) else None, False) + side(wrong[i] if i < len(wrong) else None, True)
            for i in range(max(len(right), len(wrong)))]
    return Table(["right: text", "label", "conf.", "wrong: text", "true → predicted", "conf."], rows,
                 align=["l", "l", "r", "l", "l", "r"])
