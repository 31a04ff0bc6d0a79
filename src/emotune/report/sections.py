"""The report's sections for task types other than single-label classification: per-target tables and plots of
regression runs, per-label F1 of multi-label runs, per-task tables of multi-task and instruction-tuned runs (their
regression and multi-label tasks get the same detail) and multi-task against single-task runs on the same data.

Only chosen runs are shown, on validation and on test (they were chosen on validation; nothing here chooses)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..runs import predictions_file
from . import plots, tables
from .collect import PER_TASK, Entry, parts, slug, task_kind
from .render import Block, Figure, Heading, Table, Text

DETAILED = ("regression", "multilabel")  # the task types with a section of their own


def task_sections(chosen: dict[str, Entry], out: Path) -> tuple[list[Block], list[Path]]:
    """A section per chosen run that is not single-label classification (classification reports: nothing)."""
    blocks: list[Block] = []
    figures: list[Path] = []
    for fam, e in chosen.items():
        kind = task_kind(e)
        if kind not in (*DETAILED, *PER_TASK):
            continue
        blocks.append(Heading(f"Chosen run in detail: {fam}", 2))
        if kind in PER_TASK:
            more, figs = _multitask(fam, e, out)
        else:
            more, figs = _detail(kind, e.metrics, e.run.labels, e.path, None, f"{fam}", slug(fam), out)
        blocks += more
        figures += figs
    return blocks, figures


def _multitask(fam: str, e: Entry, out: Path) -> tuple[list[Block], list[Path]]:
    """The per-task tables, then the detail of each regression or multi-label task (of a multi-task run, or of an
    instruction-tuned run: its instruction tasks, each regression target one)."""
    what = ("each instruction task's selection metric; score is their mean (errors counted negated)" if
            task_kind(e) == "instruct" else
            "each task's selection metric; the run was chosen on the mean of them (score, errors counted negated)")
    blocks: list[Block] = [Text(f"`{e.name}`: {what}."), tables.per_task_table(e), tables.task_figures_table(e)]
    figures: list[Path] = []
    split = "test" if "test" in e.metrics else "validation"
    matrices = [(f"task {p.name}\n{split} accuracy {100 * e.metrics[split][p.name]['accuracy']:.2f}%",
                 e.metrics[split][p.name]["confusion_matrix"], p.labels)
                for p in parts(e) if (e.metrics.get(split, {}).get(p.name) or {}).get("confusion_matrix")]
    if matrices:
        path = plots.confusion_matrices(matrices, out / f"confusion-{slug(fam)}.png")
        blocks.append(Figure(path, f"{fam}: {split} confusion matrices of the classification tasks (rows: true "
                                   "label)."))
        figures.append(path)
    for p in parts(e):
        if p.task.name not in DETAILED:
            continue
        metrics = {s: e.metrics[s][p.name] for s in ("validation", "test")
                   if isinstance((e.metrics.get(s) or {}).get(p.name), dict)}
        blocks.append(Heading(f"Task {p.name} ({p.task.name})", 3))
        more, figs = _detail(p.task.name, metrics, p.labels, e.path, p.name, f"{fam}, task {p.name}",
                             f"{slug(fam)}-{slug(p.name)}", out)
        blocks += more
        figures += figs
    return blocks, figures


def _detail(kind: str, metrics: dict, labels: list[str], folder: Path, task: str | None, title: str, name: str,
            out: Path) -> tuple[list[Block], list[Path]]:
    if kind == "regression":
        return _regression(metrics, labels, folder, task, title, name, out)
    return _multilabel(metrics, labels, title, name, out)


def _split_shown(metrics: dict, folder: Path, task: str | None) -> str | None:
    """The split whose predictions the plots show: test once the chosen run was tested, else validation."""
    for split in ("test", "validation"):
        if split in metrics and (folder / predictions_file(split, task)).is_file():
            return split
    return None


def _regression(metrics: dict, targets: list[str], folder: Path, task: str | None, title: str, name: str,
                out: Path) -> tuple[list[Block], list[Path]]:
    blocks: list[Block] = [tables.per_target_table(metrics, targets, f"Per target, {title}: Pearson r, Spearman ρ "
                                                                     "and mean absolute error")]
    split = _split_shown(metrics, folder, task)
    if split is None:
        return blocks + [Text("No per-text predictions in the run folder: no plots.")], []
    values = {t: v for t, v in read_regression(folder / predictions_file(split, task), targets).items() if len(v[0])}
    if not values:  # predictions without gold values (unlabelled texts): nothing to plot against
        return blocks + [Text(f"No gold values in the {split} predictions: no plots.")], []
    scatter = plots.scatter_plot(values, out / f"scatter-{name}.png", f"{title}: {split}")
    errors = plots.error_plot(values, out / f"errors-{name}.png", f"{title}: {split}")
    blocks += [Figure(scatter, f"Predicted against gold value per target, {title}, {split} split (dashed: "
                               "a perfect prediction)."),
               Figure(errors, f"Errors (predicted − gold) per target, {title}, {split} split.")]
    return blocks, [scatter, errors]


def read_regression(path: Path, targets: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{target: (gold, predicted)} from a regression prediction file (``gold_<t>``/``predicted_<t>`` columns);
    texts without a gold value are left out."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    out = {}
    for t in targets:
        pairs = [(float(r[f"gold_{t}"]), float(r[f"predicted_{t}"])) for r in rows if r.get(f"gold_{t}")]
        gold, pred = (np.array(v, dtype=float) for v in zip(*pairs)) if pairs else (np.zeros(0), np.zeros(0))
        out[t] = (gold, pred)
    return out


def _multilabel(metrics: dict, labels: list[str], title: str, name: str,
                out: Path) -> tuple[list[Block], list[Path]]:
    f1 = {s: {n: v["f1"] for n, v in metrics[s]["per_class"].items()} for s in ("validation", "test")
          if (metrics.get(s) or {}).get("per_class")}
    blocks: list[Block] = [tables.per_label_table(metrics, labels, f"Per label, {title} (thresholds fitted on "
                                                                    "validation, so its F1 is optimistic)")]
    if not f1:
        return blocks, []
    path = plots.label_f1_plot(f1, out / f"label-f1-{name}.png", f"{title}: F1 per label")
    return blocks + [Figure(path, f"F1 per label, {title}: " + " and ".join(f1) + " (each label at its own "
                                  "threshold).")], [path]


# ---- multi-task against single-task -------------------------------------------------------------------------

def data_key(d) -> tuple:
    """What makes two runs' data the same data set: a file or folder by its resolved path, a named data set by
    name and data root; the columns read and the task type too."""
    path = Path(d.name).expanduser()
    where = (str(path.resolve()), None) if path.exists() else (
        d.name, str(Path(d.data_dir).expanduser().resolve()) if d.data_dir else None)
    return (*where, d.text_column, d.label_column, tuple(d.target_columns), tuple(d.label_columns), d.task)


def versus_rows(chosen: dict[str, Entry]) -> list[dict]:
    """Per task of each chosen multi-task run, each chosen single-task run on the same data: both on the task's
    selection metric, validation and test."""
    singles = {fam: data_key(e.run.config.data) for fam, e in chosen.items()
               if e.run is not None and task_kind(e) not in PER_TASK}
    rows = []
    for mfam, m in chosen.items():
        if task_kind(m) != "multitask":
            continue
        specs = {t.name: t.data for t in m.run.config.multitask.tasks}
        for p in parts(m):
            for sfam, key in singles.items():
                if key != data_key(specs[p.name]):
                    continue
                s = chosen[sfam]
                rows.append({"task": p.name, "metric": p.metric, "single_family": sfam, "multi_family": mfam,
                             **{f"single_{split}": s.value(split, p.metric) for split in ("validation", "test")},
                             **{f"multi_{split}": tables.task_value(m, split, p.name, p.metric)
                                for split in ("validation", "test")}})
    return rows


def versus_section(chosen: dict[str, Entry]) -> list[Block]:
    """The comparison, when the report holds single-task runs on a multi-task run's data (else nothing)."""
    rows = versus_rows(chosen)
    if not rows:
        return []
    table: Table = tables.versus_table(rows)
    return [Heading("Multi-task vs single-task", 2),
            Text("Each task of a chosen multi-task run against the chosen single-task run of every family trained "
                 "on the same data, on the task's selection metric; Δ = multi-task − single-task (percentage "
                 "points for percentages; for an error such as MSE, lower is better)."), table]
