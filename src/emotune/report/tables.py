"""The report's tables, laid out like the study's: one column per run (headed by its hyper-parameters),
one row per figure; plus the chosen runs on test and example predictions."""

from __future__ import annotations

import csv
import random
from pathlib import Path
from typing import Any, Callable

from ..runs import BEST
from ..tasks import TASKS
from ..tasks.multilabel import SEP
from .collect import PER_TASK, Entry, hyper_label, is_percent, parts, task_figures, task_kind, task_rows_of
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


def fmt(metric: str, v: Any) -> str:
    """A metric's value as the report shows it: percent for classification scores, 4 decimals otherwise."""
    return pct(v) if is_percent(metric) else num(v)


def metric_name(metric: str) -> str:
    return metric + (" (%)" if is_percent(metric) else "")


def regression_rows(split: str, prefix: str = "") -> list[Row]:
    return [(f"{prefix}loss (standardised MSE)", lambda e: num(e.value(split, "loss"))),
            *[(f"{prefix}{name} (mean of targets)", lambda e, k=key: num(e.value(split, k)))
              for key, name in (("pearson", "Pearson r"), ("spearman", "Spearman ρ"), ("mse", "MSE"), ("mae", "MAE"))]]


def multilabel_rows(split: str, prefix: str = "") -> list[Row]:
    return [(f"{prefix}loss", lambda e: num(e.value(split, "loss"))),
            *[(f"{prefix}{name} (%)", lambda e, k=key: pct(e.value(split, k)))
              for key, name in (("f1_micro", "F1 (micro)"), ("f1_macro", "F1 (macro)"),
                                ("jaccard", "Jaccard (samples)"), ("exact_match", "exact match"))]]


def multitask_rows(split: str, entries: list[Entry], prefix: str = "") -> list[Row]:
    """The overall score (and the answers' loss of instruction-tuned runs), then every task's selection metric,
    a regression task's targets one by one too; instruction tasks sit on the rows of the tasks they were built
    from (``task_figures``), so multi-task and instruction-tuned runs compare row by row."""
    tasks: dict[tuple[str, str | None], str] = {}
    for e in entries:
        for key, metric in task_rows_of(e).items():
            tasks.setdefault(key, metric)
    rows: list[Row] = [(f"{prefix}score (mean of the tasks' metrics)", lambda e: num(e.value(split, "score")))]
    if any(e.value(split, "loss") is not None for e in entries):
        rows.append((f"{prefix}loss (answer tokens)", lambda e: num(e.value(split, "loss"))))
    figures = {id(e): task_figures(e, split) for e in entries}  # once per run, not once per row
    return rows + [(f"{prefix}{task_label(key, m)}",
                    lambda e, k=key, m=m: fmt(m, figures[id(e)].get(k, {}).get(m))) for key, m in tasks.items()]


def task_label(key: tuple[str, str | None], metric: str) -> str:
    """``emotion: accuracy (%)``, ``vad: pearson (mean of targets)``, ``vad V: pearson``."""
    task, target = key
    mean = target is None and metric in TASKS.get("regression").metrics_higher_is_better
    return f"{task}{'' if target is None else ' ' + target}: {metric_name(metric)}" + (
        " (mean of targets)" if mean else "")


def speed_rows(entries: list[Entry], split: str = "test") -> list[Row]:
    """Inference speed where a run measured it (instruction-tuned runs: scored answers per second)."""
    if not any(e.value(split, "answers_per_s") is not None for e in entries):
        return []
    return [(f"{split} answers/s (instruction tasks)", lambda e: num(e.value(split, "answers_per_s"), 1))]


def task_value(e: Entry, split: str, task: str, key: str) -> Any:
    """One task's figure of a per-task run (metrics[split][task][key])."""
    return (e.value(split, task) or {}).get(key)


def kind_rows(kind: str, split: str, entries: list[Entry], prefix: str = "") -> list[Row]:
    """The quality rows that suit the task type of a family's runs."""
    if kind == "regression":
        return regression_rows(split, prefix)
    if kind == "multilabel":
        return multilabel_rows(split, prefix)
    if kind in PER_TASK:
        return multitask_rows(split, entries, prefix)
    return quality_rows(split, prefix) + sentiment_rows(split, entries, prefix)


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
    rows = (kind_rows(task_kind(entries[0]), "validation", entries) + train_rows(entries)
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
    rows += sentiment_rows("test", entries, "test ") + speed_rows(entries)
    rows += [r for r in train_rows(entries) if r[0] != "steps"] + [("run folder", lambda e: f"`{e.name}`")]
    return columns_table(entries, list(chosen), rows)


def kind_test_table(chosen: dict[str, Entry], keys: dict[str, list[str]], metrics: dict[str, str], kind: str,
                    caption: str = "") -> Table:
    """The chosen runs of families of another task type than classification on test, families as columns."""
    entries = list(chosen.values())

    def chosen_on(e: Entry) -> str:
        m = metrics[e.family]
        return f"{metric_name(m)} {fmt(m, e.value('validation', m))}"

    rows: list[Row] = [("chosen run", lambda e: hyper_label(e, keys[e.family])),
                       ("validation selection metric", chosen_on)]
    rows += kind_rows(kind, "test", entries, "test ") + speed_rows(entries)
    rows += [r for r in train_rows(entries) if r[0] != "steps"] + [("run folder", lambda e: f"`{e.name}`")]
    return columns_table(entries, list(chosen), rows, caption)


def per_target_table(metrics: dict, targets: list[str], caption: str) -> Table:
    """Regression: Pearson r, Spearman rho and MAE of every target on validation and (once tested) test."""
    cols = [("pearson", "r"), ("spearman", "Spearman"), ("mae", "MAE")]
    splits = [s for s in ("validation", "test") if (metrics.get(s) or {}).get("per_target")]

    def cell(split: str, target: str, key: str) -> str:
        return num(metrics[split]["per_target"].get(target, {}).get(key))

    short = {"validation": "val", "test": "test"}
    return Table(["target", *[f"{short[s]} {name}" for s in splits for _, name in cols]],
                 [[t, *[cell(s, t, k) for s in splits for k, _ in cols]] for t in targets], caption)


def per_label_table(metrics: dict, labels: list[str], caption: str) -> Table:
    """Multi-label: every label's threshold (fitted on validation), validation F1 and test P/R/F1/support."""
    val = (metrics.get("validation") or {}).get("per_class", {})
    test = (metrics.get("test") or {}).get("per_class", {})

    def row(name: str) -> list[str]:
        v, t = val.get(name, {}), test.get(name, {})
        return [name, num(v.get("threshold"), 2), pct(v.get("f1")), pct(t.get("precision")), pct(t.get("recall")),
                pct(t.get("f1")), count(t.get("support"))]

    return Table(["label", "threshold", "val F1 (%)", "test precision (%)", "test recall (%)", "test F1 (%)",
                  "test support"], [row(n) for n in labels], caption)


def per_task_table(e: Entry) -> Table:
    """A multi-task run: each task's type and selection metric on validation and test, then the overall score."""
    rows = [[p.name, p.task.name, p.metric, fmt(p.metric, task_value(e, "validation", p.name, p.metric)),
             fmt(p.metric, task_value(e, "test", p.name, p.metric))] for p in parts(e)]
    rows.append(["score (mean)", "", "score", num(e.value("validation", "score")), num(e.value("test", "score"))])
    return Table(["task", "type", "metric", "validation", "test"], rows, align=["l", "l", "l", "r", "r"])


def task_figures_table(e: Entry) -> Table:
    """A per-task run: every figure its tasks' type offers, on validation and test (one row per task and figure)."""
    def row(name: str, m: str) -> list[str]:
        return [name, metric_name(m), *[fmt(m, task_value(e, s, name, m)) for s in ("validation", "test")]]

    rows = [row(p.name, m) for p in parts(e) for m in p.task.metrics_higher_is_better
            if any(task_value(e, s, p.name, m) is not None for s in ("validation", "test"))]
    return Table(["task", "figure", "validation", "test"], rows, f"`{e.name}`: every task's figures",
                 align=["l", "l", "r", "r"])


def versus_table(rows: list[dict]) -> Table:
    """Multi-task against single-task runs on the same data: each task's metric and the difference (multi −
    single; percentage points for percentages)."""
    def diff(r: dict, split: str) -> str:
        a, b = r[f"multi_{split}"], r[f"single_{split}"]
        if a is None or b is None:
            return ""
        return f"{100 * (a - b):+.2f}" if is_percent(r["metric"]) else f"{a - b:+.4f}"

    return Table(["task", "metric", "single-task family", "single val", "single test", "multi-task family",
                  "multi val", "multi test", "Δ val", "Δ test"],
                 [[r["task"], metric_name(r["metric"]), r["single_family"], fmt(r["metric"], r["single_validation"]),
                   fmt(r["metric"], r["single_test"]), r["multi_family"], fmt(r["metric"], r["multi_validation"]),
                   fmt(r["metric"], r["multi_test"]), diff(r, "validation"), diff(r, "test")] for r in rows],
                 align=["l", "l", "l", "r", "r", "l", "r", "r", "r", "r"])


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


def multilabel_examples_table(predictions: list[dict], k: int, seed: int, width: int = 110) -> Table:
    """Multi-label: ``k`` random texts whose predicted label set is exactly the gold one and ``k`` whose is not."""
    rng = random.Random(seed)
    right = [p for p in predictions if multilabel_exact(p)]
    wrong = [p for p in predictions if not multilabel_exact(p)]
    right, wrong = rng.sample(right, min(k, len(right))), rng.sample(wrong, min(k, len(wrong)))

    def side(p: dict | None, wrong_side: bool) -> list[str]:
        if p is None:
            return ["", ""]
        text = p["text"] if len(p["text"]) <= width else p["text"][: width - 1] + "…"
        gold = ", ".join(_label_set(p["labels"])) or "–"
        return [text, f"{gold} → {', '.join(_label_set(p['predicted'])) or '–'}" if wrong_side else gold]

    rows = [side(right[i] if i < len(right) else None, False) + side(wrong[i] if i < len(wrong) else None, True)
            for i in range(max(len(right), len(wrong)))]
    return Table(["exact: text", "labels", "not exact: text", "gold → predicted"], rows, align=["l"] * 4)


def multilabel_exact(p: dict) -> bool:
    """A multi-label prediction whose label set is exactly the gold one."""
    return _label_set(p["labels"]) == _label_set(p["predicted"])


def _label_set(cell: str) -> list[str]:
    return sorted(x for x in (cell or "").split(SEP) if x)
