"""`build_report`: run folders in, a Markdown report + PNG plots + one self-contained HTML page out.

Test figures: the chosen run of each family (best on validation) is evaluated on the test split only
if its metrics.json has no test figures yet; no other run ever sees the test split.
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from ..io import write_json, write_text
from ..runs import predictions_file
from ..tasks import HIGHER_IS_BETTER
from . import plots, sections, seeds, tables
from .analysis import report_section
from .calibration import calibration_section
from .collect import (PER_TASK, Collection, Entry, choose, collect, family_metric, hyper_label, is_multitask, parts,
                      slug, sort_key, task_kind, varying)
from .mistakes import error_section
from .render import Block, Figure, Heading, Table, Text, to_html, to_markdown


@dataclass
class ReportResult:
    markdown: Path
    html: Path
    chosen: dict[str, Entry]
    evaluated: list[str] = field(default_factory=list)
    """Runs evaluated on test by this call (the others already had test figures)."""
    figures: list[Path] = field(default_factory=list)
    metric: str = "accuracy"
    """The report's validation metric: the one that chose each family's run where the family's task has it."""
    metrics: dict[str, str] = field(default_factory=dict)
    """Family -> the validation metric that chose its run."""


def build_report(dirs: list[str | Path], out: str | Path, *, metric: str | None = None, examples: int = 5,
                 seed: int = 0, evaluate_test: bool = True, data_dir: str | None = None, title: str | None = None,
                 max_columns: int = 12, note: str = "") -> ReportResult:
    """Compare every finished run under ``dirs`` and write ``report.md``, ``report.html``, the plots,
    ``runs.csv`` (one row per run) and ``summary.json`` (the chosen run per family) into ``out``. Multi-task and
    instruction-tuned runs share their tasks' rows; every chosen run gets an error analysis (report/mistakes.py). An
    ``analysis.json`` of `emotune analyze` found in ``dirs`` adds its section (see report/analysis.py).
    ``metric`` chooses each family's run; None: the runs' own selection metric (``train.metric``) when they
    share one, else accuracy."""
    if metric is not None and metric not in HIGHER_IS_BETTER:
        raise ConfigError(f"unknown metric {metric!r}; choose one of {', '.join(HIGHER_IS_BETTER)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    col = collect(dirs)
    if metric is None:
        own = {e.run.config.train.metric for e in col.entries if e.run is not None}
        metric = own.pop() if len(own) == 1 else "accuracy"
    families = dict(sorted(col.families().items(), key=_family_order))
    # Each family is chosen on a metric its task has: the report's where it applies (classification reports:
    # always), else the family's own (a regression family among classification ones: pearson).
    metrics = {fam: family_metric(es, metric) for fam, es in families.items()}
    chosen = {fam: choose(es, metrics[fam]) for fam, es in families.items()}
    evaluated = _test_chosen(list(chosen.values()) + col.retrained, evaluate_test, data_dir)
    title = title or f"emotune report: {', '.join(sorted(families)) or 'runs'}"

    blocks: list[Block] = [Heading(title, 1), Text(_intro(col, metric, metrics, note))]
    figures: list[Path] = []
    keys: dict[str, list[str]] = {}
    for fam, es in families.items():
        keys[fam] = varying(es)
        more, figs = _validation(fam, sorted(es, key=lambda e: sort_key(e, keys[fam])), keys[fam], chosen[fam],
                                 metrics[fam], max_columns, out)
        blocks += more
        figures += figs

    blocks += seeds.seeds_section(families, metrics)  # settings run with several seeds: mean ± sd
    if chosen:
        more, figs = _test(col, chosen, keys, metrics, out)
        blocks += more
        figures += figs
        more, figs = sections.task_sections(chosen, out)  # regression, multi-label and multi-task detail
        blocks += more + sections.versus_section(chosen)
        figures += figs
        if examples > 0:
            blocks.append(Heading("Example test predictions", 2))
            blocks.append(Text(f"{examples} random right and {examples} random wrong predictions per chosen run "
                               f"(seed {seed}); conf. is the predicted class's probability."))
            for fam, e in chosen.items():
                blocks += _examples(fam, e, keys[fam], examples, seed)
        blocks += error_section(chosen, keys, seed)  # confused pairs, largest errors, seeded examples per task
    if col.retrained:
        blocks += [Heading("Retrained on train + validation", 2),
                   Text("Best search trials retrained on train+validation for their best step count and tested "
                        "once. Their validation figures come from seen data, so they take no part in the "
                        "choices above."), tables.retrained_table(col.retrained)]
    more, figs = report_section(dirs, out)  # `emotune analyze` results found in the folders, if any
    blocks += more
    figures += figs
    if col.unfinished:
        blocks += [Heading("Unfinished runs (left out)", 2), tables.unfinished_table(col.unfinished)]

    md, page = out / "report.md", out / "report.html"
    write_text(md, to_markdown(blocks))
    write_text(page, to_html(blocks, title))
    write_text(out / "runs.csv", _runs_csv(col))
    write_json(out / "summary.json", _summary(col, chosen, keys, metric, metrics))
    return ReportResult(md, page, chosen, evaluated, figures, metric, metrics)


LOSSES = {"classification": "cross-entropy loss", "multilabel": "binary cross-entropy loss",
          "regression": "standardised squared error", "multitask": "training loss (tasks weighted)",
          "instruct": "answer tokens' negative log-likelihood"}


def _validation(fam: str, es: list[Entry], keys: list[str], chosen: Entry, metric: str, max_columns: int,
                out: Path) -> tuple[list[Block], list[Path]]:
    """A family's validation table and learning curves."""
    shown = _limit(es, chosen, metric, max_columns)
    more = (f" Shown: the best {len(shown)} on validation; all {len(es)} are in `runs.csv`."
            if len(shown) < len(es) else "")
    path = plots.curves_plot(shown, keys, chosen, out / f"curves-{slug(fam)}.png", fam, metric,
                             LOSSES.get(task_kind(chosen), LOSSES["classification"]))
    return [Heading(f"Validation: {fam}", 2),
            Text(f"{len(es)} run(s); columns are the hyper-parameters that differ; ★ marks the run "
                 f"chosen on validation {metric}.{more}"),
            tables.validation_table(shown, keys, chosen),
            Figure(path, f"Learning curves, {fam}: validation {metric} and losses against the step.")], [path]


def _test(col: Collection, chosen: dict[str, Entry], keys: dict[str, list[str]], metrics: dict[str, str],
          out: Path) -> tuple[list[Block], list[Path]]:
    """The chosen runs on test (a table per task type), the trade-off plot(s) and the confusion matrices."""
    shared = set(metrics.values())
    metric = f"validation {shared.pop()}" if len(shared) == 1 else "its validation selection metric"
    blocks: list[Block] = [Heading("Test: the chosen run of each family", 2),
                           Text(f"Each family's best run on {metric}, evaluated once on the test split.")]
    # Multi-task and instruction-tuned runs share one table: their tasks' rows compare (tables.multitask_rows).
    kinds = {fam: "multitask" if task_kind(e) in PER_TASK else task_kind(e) for fam, e in chosen.items()}
    for kind in dict.fromkeys(kinds.values()):
        group = {fam: e for fam, e in chosen.items() if kinds[fam] == kind}
        names = "/".join(dict.fromkeys(task_kind(e) for e in group.values()))  # multitask/instruct: one table
        caption = "" if len(set(kinds.values())) == 1 else f"{names} families"
        if kind == "classification":
            table = tables.test_table(group, keys, metrics[next(iter(group))])
            table.caption = caption
        else:
            table = tables.kind_test_table(group, keys, metrics, kind, caption)
        blocks.append(table)
    figures = []
    for m in dict.fromkeys(metrics.values()):  # one trade-off plot per selection metric: values compare
        fams = {f for f in chosen if metrics[f] == m}
        name = "tradeoff.png" if len(set(metrics.values())) == 1 else f"tradeoff-{slug(m)}.png"
        path = plots.tradeoff_plot([e for e in col.entries if e.family in fams],
                                   {f: e for f, e in chosen.items() if f in fams}, out / name, m)
        figures.append(path)
        blocks.append(Figure(path, f"Validation {m} of every run against its trainable parameters: colour = "
                                   "training runtime, area = peak memory; the chosen runs are ringed (their test "
                                   "figures in the legend)."))
    tested = {f: e for f, e in chosen.items() if e.value("test", "confusion_matrix")}
    if tested:
        path = plots.confusion_plot(tested, out / "confusion.png")
        figures.append(path)
        blocks.append(Figure(path, "Test confusion matrices of the chosen runs (rows: true label)."))
    more, figs = calibration_section(chosen, out)
    return blocks + more, figures + figs


def _family_order(item: tuple[str, list[Entry]]) -> tuple:
    """Families with the most trainable parameters first (full fine-tuning before adapters), then by name."""
    fam, entries = item
    return (-max(e.value("train", "trainable_params") or 0 for e in entries), fam)


def _test_chosen(entries: list[Entry], evaluate: bool, data_dir: str | None) -> list[str]:
    """Evaluate on test the runs that lack test figures (only chosen ones are passed here)."""
    from .. import api

    done = []
    for e in entries:
        if "test" in e.metrics or not evaluate:
            continue
        api.evaluate(e.path, "test", data_dir=data_dir)
        e.metrics = e.run.metrics
        done.append(e.name)
    return done


def _limit(entries: list[Entry], chosen: Entry, metric: str, n: int) -> list[Entry]:
    """At most n columns: the best n on validation (the chosen one always), kept in table order."""
    if len(entries) <= n:
        return entries
    from .collect import score

    best = set(map(id, sorted(entries, key=lambda e: score(e, metric))[:n])) | {id(chosen)}
    return [e for e in entries if id(e) in best]


def _intro(col: Collection, metric: str, metrics: dict[str, str], note: str) -> str:
    data = sorted({f"`{name}`" for e in col.entries + col.retrained for name in _data_names(e)})
    models = sorted({f"`{e.run.config.model.name}`" for e in col.entries + col.retrained})
    sizes = sorted({" / ".join(f"{e.metrics['data'].get(s, '?')}" for s in ("train", "validation", "test"))
                    for e in col.entries if "data" in e.metrics and not is_multitask(e)})  # multi-task: per task
    chosen_on = (f"validation {metric}" if set(metrics.values()) <= {metric} else
                 "each family's validation metric (" + ", ".join(f"{f}: {m}" for f, m in metrics.items()) + ")")
    text = (f"{len(col.entries)} finished run(s) in {len(col.families())} famil"
            f"{'y' if len(col.families()) == 1 else 'ies'}; data {', '.join(data)} "
            f"(train / validation / test examples: {'; '.join(sizes) or '?'}); model {', '.join(models)}. "
            f"Runs are chosen on {chosen_on}; only chosen runs are evaluated on test. "
            f"Generated {time.strftime('%Y-%m-%d %H:%M')}.")
    return f"{note}\n\n{text}" if note else text


def _data_names(e: Entry) -> list[str]:
    """The data a run trains on: a multi-task run's tasks' data sets (its own data.name is unused)."""
    if is_multitask(e):
        return [t.data.name for t in e.run.config.multitask.tasks]
    return [e.run.config.data.name]


def _examples(fam: str, e: Entry, keys: list[str], k: int, seed: int) -> list[Block]:
    head = Heading(f"{fam} ({hyper_label(e, keys)})", 3)
    if not parts(e):
        return [head, *_prediction_examples(e, predictions_file("test"), k, seed)]
    blocks: list[Block] = [head]
    for p in parts(e):  # a per-task run: each task's own prediction file
        blocks += [Text(f"Task **{p.name}**:"), *_prediction_examples(e, predictions_file("test", p.name), k, seed)]
    return blocks


def _prediction_examples(e: Entry, name: str, k: int, seed: int) -> list[Block]:
    path = e.path / name
    if not path.is_file():
        return [Text(f"No test predictions in `{e.name}`.")]
    preds = tables.read_predictions(path)
    if preds and "predicted" not in preds[0]:  # regression: gold and predicted value per target
        return [Text(f"Per-text values of every target: `{e.name}/{path.name}`.")]
    if preds and "label" not in preds[0]:  # multi-label: gold and predicted label sets
        exact = sum(tables.multilabel_exact(p) for p in preds)
        return [Text(f"{exact} exactly right, {len(preds) - exact} not of {len(preds)} test examples (label "
                     "sets)."), tables.multilabel_examples_table(preds, k, seed)]
    wrong = sum(p["label"] != p["predicted"] for p in preds)
    return [Text(f"{len(preds) - wrong} right, {wrong} wrong of {len(preds)} test examples."),
            tables.examples_table(preds, k, seed)]


QUALITY = ["loss", "accuracy", "precision_weighted", "recall_weighted", "f1_weighted", "f1_macro"]
# Other task types' figures: a runs.csv column each only when some run has them (classification: none).
EXTRA = ["f1_micro", "jaccard", "exact_match", "pearson", "spearman", "mse", "mae", "score"]


def _runs_csv(col: Collection) -> str:
    entries = col.entries + col.retrained + col.unfinished
    keys = varying(entries)
    buf = io.StringIO()
    w = csv.writer(buf)
    quality = QUALITY + [q for q in EXTRA if any(e.value(s, q) is not None for e in entries
                                                  for s in ("validation", "test"))]
    train = ["runtime_s", "steps", "best_step", "steps_per_s", "samples_per_s", "peak_memory_mb", "trainable_params",
             "trainable_pct"]
    w.writerow(["run", "family", "status", *keys, *[f"val_{q}" for q in quality], *[f"test_{q}" for q in quality],
                *train])
    for e in entries:
        status = ("retrained" if e.retrained else "complete") if e.metrics.get("completed") else (
            "pruned" if e.metrics.get("pruned") else e.run.status())
        w.writerow([e.name, e.family, status, *[_cell(e.flat.get(k)) for k in keys],
                    *[_cell(e.value("validation", q)) for q in quality], *[_cell(e.value("test", q)) for q in quality],
                    *[_cell(e.value("train", t)) for t in train]])
    return buf.getvalue()


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, list):
        return "+".join(map(str, v))
    return str(v)


def _summary(col: Collection, chosen: dict[str, Entry], keys: dict[str, list[str]], metric: str,
             metrics: dict[str, str]) -> dict:
    def brief(e: Entry) -> dict:
        # Plus the family's own metric where it is none of these (pearson, f1_micro, score).
        shown = list(dict.fromkeys(("accuracy", "f1_weighted", "loss", metrics.get(e.family, "accuracy"))))
        return {"run": e.name, "hyper_parameters": hyper_label(e, keys.get(e.family, [])),
                "validation": {k: e.value("validation", k) for k in shown},
                "test": {k: e.value("test", k) for k in shown} if "test" in e.metrics else None,
                "train": {k: e.value("train", k) for k in ("runtime_s", "steps", "best_step", "peak_memory_mb",
                                                           "trainable_params", "trainable_pct")}}

    return {"metric": metric, "runs": len(col.entries), "unfinished": len(col.unfinished),
            "total_runtime_s": sum(e.value("train", "runtime_s") or 0 for e in col.entries),
            "families": {fam: {"runs": sum(e.family == fam for e in col.entries), "chosen": brief(e)}
                         for fam, e in chosen.items()},
            "retrained": [brief(e) for e in col.retrained]}


__all__ = ["ReportResult", "Table", "build_report"]
