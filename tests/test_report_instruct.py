"""Reports over instruction-tuned decoder runs beside encoder runs: each instruction task's figures in the tables,
its tasks on the rows of a multi-task encoder run's tasks (vad_V under vad, target V), training cost and answer
speed, and the error analysis (confused pairs, largest regression errors, seeded examples) read from the runs'
prediction files. Tiny random models, a few steps each."""

from __future__ import annotations

import csv
import json
import random
import re
from collections import Counter

import pytest

from emotune import api
from emotune.data.instruct import instruction_rows, write_instructions
from emotune.report import build_report
from emotune.report.render import Table, md_escape, to_html, to_markdown

from .conftest import tiny_config
from .test_instruct import sources
from .test_report import md_tables

STEPS = {"train.max_steps": 6, "train.eval_every": 3, "train.lr": 1e-2, "train.threads": 1}


@pytest.fixture(scope="module")
def runs(tiny_model, tiny_llama, tmp_path_factory):
    """An instruction-tuned tiny Llama (tested), a multi-task tiny BERT on the data its instructions came from, and
    single-task classification and regression runs."""
    root = tmp_path_factory.mktemp("instruct-report")
    multitask = sources(root, tiny_model).with_values(STEPS)
    rows, tasks = instruction_rows(multitask, per_task=24, per_task_eval=8)
    folder = write_instructions(rows, tasks, root / "inst")
    out = root / "runs"
    llm = tiny_config(tiny_llama, root).with_values({**STEPS, "data.name": str(folder)})
    api.train(llm, out / "llama", progress=False)
    api.evaluate(out / "llama", "test")
    api.train(multitask, out / "bert-multitask", progress=False)
    api.train(tiny_config(tiny_model, root / "data").with_values(STEPS), out / "bert-emotion", progress=False)
    reg = tiny_config(tiny_model, root).with_values({**STEPS, "data.name": str(root / "reg"),
                                                     "data.target_columns": ["V", "A"]})
    api.train(reg, out / "bert-vad", progress=False)
    return out


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("rep") / "report"
    result = build_report([runs], out, examples=2, seed=0)
    return result, result.markdown.read_text()


def _metrics(folder) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def _csv(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _section(text: str, heading: str) -> str:
    """From ``heading`` to the next heading of its level or above."""
    level = heading.split(" ")[0]
    start = text.index(heading + "\n")
    rest = text[start + len(heading):]
    ends = [m.start() for m in re.finditer(rf"^#{{1,{len(level)}}} ", rest, re.M)]
    return rest[: ends[0]] if ends else rest


def _family(result, folder: str) -> str:
    return next(f for f, e in result.chosen.items() if e.path.name == folder)


def test_every_instruction_task_has_its_validation_and_test_figures(report, runs):
    result, text = report
    m = _metrics(runs / "llama")
    state = json.loads((runs / "llama" / "task_state.json").read_text())
    table = next(t for t in md_tables(text) if t[0] == ["task", "type", "metric", "validation", "test"]
                 and any(r[0] == "vad_V" for r in t[1]))
    by_task = {r[0]: r for r in table[1]}
    assert set(state["tasks"]) <= set(by_task)
    for name, desc in state["tasks"].items():
        metric = {"classification": "accuracy", "regression": "pearson", "multilabel": "f1_micro"}[desc["type"]]
        scale, digits = (1, 4) if metric == "pearson" else (100, 2)
        assert by_task[name][2] == metric
        assert by_task[name][3] == f"{scale * m['validation'][name][metric]:.{digits}f}"
        assert by_task[name][4] == f"{scale * m['test'][name][metric]:.{digits}f}"
    figures = next(t for t in md_tables(text) if t[0] == ["task", "figure", "validation", "test"]
                   and any(r[0] == "vad_V" for r in t[1]))
    mae = next(r for r in figures[1] if r[:2] == ["vad_A", "mae"])
    assert mae[3] == f"{m['test']['vad_A']['mae']:.4f}"


def test_instruction_tasks_share_the_rows_of_the_multitask_runs_tasks(report, runs):
    result, text = report
    llm, mt = _metrics(runs / "llama"), _metrics(runs / "bert-multitask")
    fams = [_family(result, "bert-multitask"), _family(result, "llama")]
    header, rows = next(t for t in md_tables(text) if set(fams) <= set(t[0]) and t[1][0][0] == "chosen run")
    cols = [header.index(f) for f in fams]
    by_row = {r[0]: [r[c] for c in cols] for r in rows}
    assert by_row["test emotion: accuracy (%)"] == [f"{100 * mt['test']['emotion']['accuracy']:.2f}",
                                                    f"{100 * llm['test']['emotion']['accuracy']:.2f}"]
    for target in ("V", "A"):
        assert by_row[f"test vad {target}: pearson"] == [f"{mt['test']['vad']['per_target'][target]['pearson']:.4f}",
                                                         f"{llm['test'][f'vad_{target}']['pearson']:.4f}"]
    mean = (llm["test"]["vad_V"]["pearson"] + llm["test"]["vad_A"]["pearson"]) / 2
    assert by_row["test vad: pearson (mean of targets)"] == [f"{mt['test']['vad']['pearson']:.4f}", f"{mean:.4f}"]
    assert by_row["test score (mean of the tasks' metrics)"] == [f"{mt['test']['score']:.4f}",
                                                                 f"{llm['test']['score']:.4f}"]
    # what each run cost: trainable parameters, training time, and the decoder's answers per second on test
    assert by_row["trainable parameters"] == [f"{mt['train']['trainable_params']:,}",
                                              f"{llm['train']['trainable_params']:,}"]
    assert by_row["runtime (s)"][1] == f"{llm['train']['runtime_s']:.1f}"
    assert by_row["test answers/s (instruction tasks)"] == ["", f"{llm['test']['answers_per_s']:.1f}"]


def test_single_task_runs_keep_their_own_tables(report):
    result, text = report
    assert {e.path.name for e in result.chosen.values()} == {"llama", "bert-multitask", "bert-emotion", "bert-vad"}
    tests = [t for t in md_tables(text) if t[1] and t[1][0][0] == "chosen run"]
    assert len(tests) == 3  # classification, regression, and multi-task with instruction-tuned together
    assert all("test answers/s (instruction tasks)" not in [r[0] for r in rows] for header, rows in tests
               if _family(result, "llama") not in header)


def _error_tables(text: str, family: str) -> str:
    return _section(_section(text, "## Error analysis"), f"### {family} (lr=0.01)")


def test_error_analysis_lists_the_pairs_the_decoder_really_confused(report, runs):
    result, text = report
    rows = _csv(runs / "llama" / "predictions_test_emotion.csv")
    gold = Counter(r["label"] for r in rows)
    pairs = Counter((r["label"], r["predicted"]) for r in rows if r["label"] != r["predicted"])
    assert pairs  # a tiny random model gets some wrong
    part = _error_tables(text, _family(result, "llama"))
    header, shown = next(t for t in md_tables(part) if t[0][0] == "gold → predicted")
    assert header == ["gold → predicted", "count", "share of gold (%)"]
    assert 0 < len(shown) <= 5 and int(shown[0][1]) == max(pairs.values())
    for cell, n, share in shown:
        g, p = cell.split(" → ")
        assert pairs[(g, p)] == int(n) and share == f"{100 * int(n) / gold[g]:.1f}"


def test_error_analysis_shows_the_largest_regression_error_with_its_text(report, runs):
    result, text = report
    part = _error_tables(text, _family(result, "llama"))
    for task, target in (("vad_V", "V"), ("vad_A", "A")):
        rows = _csv(runs / "llama" / f"predictions_test_{task}.csv")
        worst = max(rows, key=lambda r: abs(float(r[f"predicted_{target}"]) - float(r[f"gold_{target}"])))
        first = next(t for t in md_tables(part)
                     if t[0] == ["text", "target", "gold", "predicted", "error"] and t[1][0][1] == target)[1][0]
        error = float(worst[f"predicted_{target}"]) - float(worst[f"gold_{target}"])
        assert first[0] == md_escape(worst["text"]) and first[4] == f"{error:+.2f}"
    # the multi-task encoder's vad task: both targets in one ranking
    part = _error_tables(text, _family(result, "bert-multitask"))
    rows = _csv(runs / "bert-multitask" / "predictions_test_vad.csv")
    errors = [(abs(float(r[f"predicted_{t}"]) - float(r[f"gold_{t}"])), r["text"]) for r in rows for t in "VA"]
    first = next(t for t in md_tables(part) if t[0][0] == "text" and t[0][1] == "target")[1][0]
    assert first[0] == md_escape(max(errors)[1])


def test_error_analysis_examples_are_seeded_and_cover_single_task_runs(report, runs):
    result, text = report
    part = _error_tables(text, _family(result, "llama"))
    rows = _csv(runs / "llama" / "predictions_test_emotion.csv")
    picked = random.Random(0).sample(rows, 3)
    examples = next(t for t in md_tables(part) if t[0] == ["text", "gold", "predicted", "conf."])
    assert [r[0] for r in examples[1]] == [md_escape(p["text"]) for p in picked]
    assert [r[2] for r in examples[1]] == [p["predicted"] for p in picked]
    single = _error_tables(text, _family(result, "bert-emotion"))
    assert "The run (classification)" in single and "Most confused pairs" in single
    vad = _error_tables(text, _family(result, "bert-vad"))
    assert "The run (regression)" in vad and "Largest absolute errors" in vad


def test_free_text_cells_are_escaped_in_markdown_and_plain_in_html():
    text = "so *very* happy_today | `really` <b>x</b> & [link](y)"
    table = Table(["text", "label"], [[text, "**joy**"]], plain=[0])
    md = to_markdown([table])
    [(_, [row])] = md_tables(md)
    assert row[0] == r"so \*very\* happy\_today \| \`really\` \<b\>x\</b\> \& \[link\](y)"
    assert row[1] == "**joy**"  # not a data text: formatted as before
    page = to_html([table], "t")
    assert "so *very* happy_today | `really` &lt;b&gt;x&lt;/b&gt; &amp; [link](y)" in page
    assert "<strong>joy</strong>" in page and "<code>really</code>" not in page
