"""The report's error analysis: per task of each chosen run, read from its test predictions (validation ones when
it has no test file): the class pairs confused most, the largest regression errors with their texts, the labels a
multi-label task misses or adds most, and a few predictions drawn with a fixed seed. Only chosen runs are read
(nothing here chooses), and only the prediction files the runs wrote."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

from ..runs import predictions_file
from ..tasks.multilabel import SEP
from .collect import Entry, hyper_label, parts, task_kind
from .render import Block, Heading, Table, Text
from .tables import num, read_predictions

TOP = 5  # rows of each ranking
SHOWN = 3  # seeded example predictions per task
WIDTH = 110  # characters of a text shown


def error_section(chosen: dict[str, Entry], keys: dict[str, list[str]], seed: int) -> list[Block]:
    """The section, one sub-section per chosen run with prediction files (nothing when none has them)."""
    blocks: list[Block] = []
    for fam, e in chosen.items():
        more = [b for name, kind, labels in run_tasks(e) for b in task_errors(e, name, kind, labels, seed)]
        if more:
            blocks += [Heading(f"{fam} ({hyper_label(e, keys.get(fam, []))})", 3), *more]
    if not blocks:
        return []
    return [Heading("Error analysis", 2),
            Text(f"Per task of each chosen run, from its test predictions (validation where it has none): the "
                 f"{TOP} class pairs confused most (share: of the gold class's texts), the {TOP} largest absolute "
                 f"errors of regression targets, the {TOP} labels a multi-label task misses or adds most, and "
                 f"{SHOWN} predictions drawn with seed {seed}."), *blocks]


def run_tasks(e: Entry) -> list[tuple[str | None, str, list[str]]]:
    """(task name, task type, labels or targets) of a run: each task of a per-task run, else the run itself
    (name None)."""
    if e.run is None:
        return []
    if parts(e):
        return [(p.name, p.task.name, p.labels) for p in parts(e)]
    return [(None, task_kind(e), e.run.labels)]


def prediction_file(folder: Path, task: str | None) -> tuple[str, Path] | None:
    """(split, file): the test predictions, else the validation ones; None when neither was written."""
    for split in ("test", "validation"):
        path = folder / predictions_file(split, task)
        if path.is_file():
            return split, path
    return None


def task_errors(e: Entry, task: str | None, kind: str, labels: list[str], seed: int) -> list[Block]:
    """One task's ranking of errors and its seeded examples ([] without a prediction file)."""
    ranking = {"classification": confused_table, "multilabel": label_errors_table,
               "regression": lambda r: largest_errors_table(r, labels)}.get(kind)
    found = prediction_file(e.path, task)
    if ranking is None or found is None:
        return []
    split, path = found
    rows = read_predictions(path)
    if not rows:
        return []
    head = Text(f"{'Task **' + task + '**' if task else 'The run'} ({kind}): {len(rows)} {split} texts, "
                f"`{e.name}/{path.name}`.")
    try:
        return [head, ranking(rows), sample_table(rows, kind, labels, seed)]
    except (KeyError, ValueError) as err:  # a file of another layout (an older run): the report goes on
        return [head, Text(f"Its columns are not the ones {kind} runs write now ({err!r}): no analysis.")]


def confused_pairs(rows: list[dict]) -> list[tuple[str, str, int, float]]:
    """(gold, predicted, count, share of the gold class's texts) of the wrong predictions, most frequent first."""
    gold = Counter(r["label"] for r in rows if r["label"])
    pairs = Counter((r["label"], r["predicted"]) for r in rows if r["label"] and r["label"] != r["predicted"])
    ranked = sorted(pairs.items(), key=lambda kv: (-kv[1], -kv[1] / gold[kv[0][0]], kv[0]))
    return [(g, p, n, n / gold[g]) for (g, p), n in ranked]


def confused_table(rows: list[dict]) -> Table:
    top = confused_pairs(rows)[:TOP]
    return Table(["gold → predicted", "count", "share of gold (%)"],
                 [[f"{g} → {p}", str(n), f"{100 * share:.1f}"] for g, p, n, share in top],
                 "Most confused pairs" + ("" if top else ": none (every prediction right)"))


def largest_errors(rows: list[dict], targets: list[str]) -> list[tuple[str, str, float, float]]:
    """(text, target, gold, predicted) of every gold value, largest absolute error first."""
    found = [(r["text"], t, float(r[f"gold_{t}"]), float(r[f"predicted_{t}"]))
             for r in rows for t in targets if r.get(f"gold_{t}")]
    return sorted(found, key=lambda x: -abs(x[3] - x[2]))


def largest_errors_table(rows: list[dict], targets: list[str]) -> Table:
    top = largest_errors(rows, targets)[:TOP]
    return Table(["text", "target", "gold", "predicted", "error"],
                 [[short(text), t, num(g, 2), num(p, 2), f"{p - g:+.2f}"] for text, t, g, p in top],
                 "Largest absolute errors (error = predicted − gold)", ["l", "l", "r", "r", "r"], plain=[0])


def label_errors_table(rows: list[dict]) -> Table:
    """Multi-label: per label, the texts where it was missed (gold, not predicted) and added (predicted, not gold)."""
    missed, added = Counter(), Counter()
    for r in rows:
        gold, pred = _labels(r["labels"]), _labels(r["predicted"])
        missed.update(gold - pred)
        added.update(pred - gold)
    top = sorted(set(missed) | set(added), key=lambda n: (-(missed[n] + added[n]), n))[:TOP]
    return Table(["label missed or added", "missed", "added"], [[n, str(missed[n]), str(added[n])] for n in top],
                 "Labels wrong most often" + ("" if top else ": none (every label set right)"))


def sample_table(rows: list[dict], kind: str, labels: list[str], seed: int) -> Table:
    """``SHOWN`` predictions drawn with ``seed``, right or wrong, in the task type's columns."""
    picked = random.Random(seed).sample(rows, min(SHOWN, len(rows)))
    if kind == "classification":
        return Table(["text", "gold", "predicted", "conf."],
                     [[short(r["text"]), r["label"], r["predicted"], num(float(r["confidence"]), 2)] for r in picked],
                     f"{len(picked)} predictions (seed {seed})", ["l", "l", "l", "r"], plain=[0])
    if kind == "regression":
        return Table(["text", *[f"{w} {t}" for t in labels for w in ("gold", "predicted")]],
                     [[short(r["text"]), *[_value(r[f"{w}_{t}"]) for t in labels for w in ("gold", "predicted")]]
                      for r in picked], f"{len(picked)} predictions (seed {seed})", plain=[0])
    return Table(["text", "gold labels", "predicted labels"],
                 [[short(r["text"]), ", ".join(sorted(_labels(r["labels"]))) or "–",
                   ", ".join(sorted(_labels(r["predicted"]))) or "–"] for r in picked],
                 f"{len(picked)} predictions (seed {seed})", ["l", "l", "l"], plain=[0])


def short(text: str) -> str:
    """One line of at most ``WIDTH`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= WIDTH else text[: WIDTH - 1] + "…"


def _value(cell: str) -> str:
    return num(float(cell), 2) if cell else ""


def _labels(cell: str) -> set[str]:
    return {x for x in (cell or "").split(SEP) if x}
