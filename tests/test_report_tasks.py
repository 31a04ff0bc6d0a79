"""Reports of every task type from tiny random runs: regression (per-target table equal to metrics.json, scatter
and error plots), multi-label (per-label table and F1 bars), multi-task (per-task table, its tasks' plots) and
multi-task against single-task runs on the same data; each family chosen on validation, only chosen runs tested."""

from __future__ import annotations

import json

import numpy as np
import pytest

from emotune import api
from emotune.config import RunConfig
from emotune.report import build_report
from emotune.report.collect import slug, task_kind
from emotune.report.sections import read_regression

from .conftest import tiny_config, write_emotion_folder
from .test_multilabel import write_multilabel_folder
from .test_multitask import multitask_config
from .test_report import md_tables

PNG = b"\x89PNG\r\n\x1a\n"
SHORT = {"train.max_steps": 20, "train.eval_every": 10, "train.threads": 1}


def _short(cfg: RunConfig, **values) -> RunConfig:
    return cfg.with_values({**SHORT, **values})


def _file_config(model: str, data, **data_options) -> RunConfig:
    cfg = RunConfig()
    cfg.data.name = str(data)
    for k, v in data_options.items():
        setattr(cfg.data, k, v)
    cfg.model.name, cfg.method = model, {"name": "full"}
    cfg.train.batch_size, cfg.train.precision, cfg.train.lr, cfg.train.patience = 16, "fp32", 1e-3, None
    return cfg


@pytest.fixture(scope="module")
def runs(tiny_model, tmp_path_factory):
    """Two regression runs (one family), a multi-label run, a classification run on emotion and a multi-task run
    on emotion + the regression data (written by multitask_config into root/reg)."""
    root = tmp_path_factory.mktemp("tasks")
    emotion = write_emotion_folder(root / "data")
    multitask = _short(multitask_config(tiny_model, emotion, root))
    reg = root / "reg"
    out = root / "runs"
    for lr in (1e-3, 3e-3):
        api.train(_short(_file_config(tiny_model, reg, target_columns=["V", "A"]), **{"train.lr": lr}),
                  out / f"reg-{lr}", progress=False)
    ml = write_multilabel_folder(root / "ml")
    api.train(_short(_file_config(tiny_model, ml, label_column="labels", label_delimiter=",")), out / "ml",
              progress=False)
    api.train(_short(tiny_config(tiny_model, emotion)), out / "emotion", progress=False)
    api.train(multitask, out / "multitask", progress=False)
    return out


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("rep") / "report"
    result = build_report([runs], out, examples=2, seed=0)
    return out, result, (out / "report.md").read_text()


def _family(result, kind: str) -> str:
    return next(f for f, e in result.chosen.items() if task_kind(e) == kind)


def _metrics(entry) -> dict:
    return json.loads((entry.path / "metrics.json").read_text())


def _table(text: str, first_column: str) -> tuple[list[str], list[list[str]]]:
    return next(t for t in md_tables(text) if t[0][0] == first_column)


def test_each_family_is_chosen_on_its_own_task_metric_and_only_chosen_runs_are_tested(report, runs):
    _, result, _ = report
    assert {task_kind(e) for e in result.chosen.values()} == {"classification", "regression", "multilabel",
                                                              "multitask"}
    assert result.metrics[_family(result, "regression")] == "pearson"
    assert result.metrics[_family(result, "multilabel")] == "f1_micro"
    assert result.metrics[_family(result, "multitask")] == "score"
    assert result.metrics[_family(result, "classification")] == "accuracy"
    regs = [json.loads(p.read_text()) for p in runs.glob("reg-*/metrics.json")]
    chosen = _metrics(result.chosen[_family(result, "regression")])
    assert chosen["validation"]["pearson"] == max(m["validation"]["pearson"] for m in regs)
    assert sum("test" in m for m in regs) == 1 and "test" in chosen  # the other regression run never saw test
    assert all("test" in _metrics(e) for e in result.chosen.values())


def test_regression_per_target_table_equals_metrics_json_and_plots_exist(report):
    out, result, text = report
    fam = _family(result, "regression")
    m = _metrics(result.chosen[fam])
    header, rows = _table(text, "target")
    assert header == ["target", "val r", "val Spearman", "val MAE", "test r", "test Spearman", "test MAE"]
    assert [r[0] for r in rows] == ["V", "A"]
    for row in rows:
        expected = [f"{m[s]['per_target'][row[0]][k]:.4f}" for s in ("validation", "test")
                    for k in ("pearson", "spearman", "mae")]
        assert row[1:] == expected
    validation = next(t for t in md_tables(text) if any(r[0] == "Pearson r (mean of targets)" for r in t[1]))
    pearson = next(r for r in validation[1] if r[0] == "Pearson r (mean of targets)")
    assert f"{m['validation']['pearson']:.4f}" in pearson[1:]
    for name in (f"scatter-{slug(fam)}.png", f"errors-{slug(fam)}.png"):
        assert (out / name).read_bytes()[:8] == PNG and f"]({name})" in text
    # The plots read the right columns: the test predictions' MAE per target is the one in metrics.json.
    values = read_regression(result.chosen[fam].path / "predictions_test.csv", ["V", "A"])
    for target, (gold, pred) in values.items():
        assert len(gold) == 40
        assert np.mean(np.abs(gold - pred)) == pytest.approx(m["test"]["per_target"][target]["mae"], abs=1e-3)


def test_multilabel_per_label_table_and_f1_bars(report):
    out, result, text = report
    fam = _family(result, "multilabel")
    m = _metrics(result.chosen[fam])
    header, rows = _table(text, "label")
    assert header[:3] == ["label", "threshold", "val F1 (%)"] and [r[0] for r in rows] == ["anger", "joy", "love"]
    for row in rows:
        assert row[2] == f"{100 * m['validation']['per_class'][row[0]]['f1']:.2f}"
        assert row[5] == f"{100 * m['test']['per_class'][row[0]]['f1']:.2f}"
        assert row[1] == f"{m['validation']['per_class'][row[0]]['threshold']:.2f}"
    name = f"label-f1-{slug(fam)}.png"
    assert (out / name).read_bytes()[:8] == PNG and f"]({name})" in text
    examples = _table(text, "exact: text")
    assert examples[0] == ["exact: text", "labels", "not exact: text", "gold → predicted"] and examples[1]


def test_multitask_per_task_table_and_its_regression_task_plots(report):
    out, result, text = report
    fam = _family(result, "multitask")
    m = _metrics(result.chosen[fam])
    header, rows = _table(text, "task")
    assert header == ["task", "type", "metric", "validation", "test"]
    by_task = {r[0]: r for r in rows}
    assert by_task["emotion"][1:] == ["classification", "accuracy",
                                      f"{100 * m['validation']['emotion']['accuracy']:.2f}",
                                      f"{100 * m['test']['emotion']['accuracy']:.2f}"]
    assert by_task["vad"][1:] == ["regression", "pearson", f"{m['validation']['vad']['pearson']:.4f}",
                                  f"{m['test']['vad']['pearson']:.4f}"]
    assert by_task["score (mean)"][3:] == [f"{m['validation']['score']:.4f}", f"{m['test']['score']:.4f}"]
    targets = [t for t in md_tables(text) if t[0][0] == "target"]
    assert len(targets) == 2  # the regression run's table and the multi-task run's vad task
    assert [r[1] for r in targets[1][1]] == [f"{m['validation']['vad']['per_target'][t]['pearson']:.4f}"
                                             for t in ("V", "A")]
    for kind in ("scatter", "errors"):
        name = f"{kind}-{slug(fam)}-vad.png"
        assert (out / name).read_bytes()[:8] == PNG and f"]({name})" in text
    # The classification task gets its confusion matrix (it is chosen on validation, then tested).
    name = f"confusion-{slug(fam)}.png"
    assert (out / name).read_bytes()[:8] == PNG and f"]({name})" in text
    cm = np.array(m["test"]["emotion"]["confusion_matrix"])
    assert np.trace(cm) / cm.sum() == pytest.approx(m["test"]["emotion"]["accuracy"])


def test_multitask_vs_single_task_table(report):
    _, result, text = report
    assert "## Multi-task vs single-task" in text
    header, rows = [t for t in md_tables(text) if t[0][:2] == ["task", "metric"]][0]
    assert header[-2:] == ["Δ val", "Δ test"]
    multi = _metrics(result.chosen[_family(result, "multitask")])
    by_task = {r[0]: dict(zip(header, r)) for r in rows}
    assert set(by_task) == {"emotion", "vad"}
    for task, kind, metric, scale, digits in (("emotion", "classification", "accuracy", 100, 2),
                                              ("vad", "regression", "pearson", 1, 4)):
        single = _metrics(result.chosen[_family(result, kind)])
        row = by_task[task]
        assert row["single-task family"] == _family(result, kind)
        for split, short in (("validation", "val"), ("test", "test")):
            a, b = multi[split][task][metric], single[split][metric]
            assert row[f"multi {short}"] == f"{scale * a:.{digits}f}"
            assert row[f"single {short}"] == f"{scale * b:.{digits}f}"
            assert row[f"Δ {short}"] == f"{scale * (a - b):+.{digits}f}"


def test_html_embeds_every_plot_and_runs_csv_has_the_other_tasks_figures(report):
    out, result, text = report
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(result.figures) == text.count("![")
    header = (out / "runs.csv").read_text().splitlines()[0].split(",")
    assert {"val_pearson", "test_pearson", "val_f1_micro", "val_score"} <= set(header)
    summary = json.loads((out / "summary.json").read_text())
    fam = _family(result, "regression")
    pearson = _metrics(result.chosen[fam])["validation"]["pearson"]
    assert summary["families"][fam]["chosen"]["validation"]["pearson"] == pearson


def test_without_single_task_runs_on_its_data_there_is_no_comparison(runs, tmp_path):
    result = build_report([runs / "multitask", runs / "ml"], tmp_path / "r", examples=0)
    text = result.markdown.read_text()
    assert "## Chosen run in detail: " in text and "Multi-task vs single-task" not in text
    assert sorted(p.name for p in (tmp_path / "r").glob("tradeoff*.png")) == ["tradeoff-f1-micro.png",
                                                                            "tradeoff-score.png"]


def test_cli_summary_shows_each_task_of_a_multitask_run_on_its_metric(runs, tmp_path):
    from typer.testing import CliRunner

    from emotune.cli import app

    res = CliRunner().invoke(app, ["report", str(runs / "multitask"), str(runs / "reg-0.001"), "--out",
                                   str(tmp_path / "r"), "--examples", "0"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    m = json.loads((runs / "multitask" / "metrics.json").read_text())
    lines = res.output.splitlines()
    emotion = next(line for line in lines if "task emotion" in line)
    assert "accuracy" in emotion and f"{m['validation']['emotion']['accuracy']:.4f}" in emotion
    vad = next(line for line in lines if "task vad" in line)
    assert "pearson" in vad and f"{m['test']['vad']['pearson']:.4f}" in vad
    reg = next(line for line in lines if "reg-0.001" in line)
    assert "pearson" in reg
