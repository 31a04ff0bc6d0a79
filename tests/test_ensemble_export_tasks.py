"""Ensembles and merged exports of every task type: regression and multi-task ensembles average their members'
outputs (per task, each by its type's rule; multi-label thresholds the members' mean), mismatched members are
one-line errors, and exported regression and multi-task runs reload with the run's outputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from emotune import api
from emotune.cli import app
from emotune.config import RunConfig
from emotune.data import load_data
from emotune.errors import ConfigError
from emotune.runs import Run
from emotune.tasks import REGRESSION

from .conftest import tiny_config, write_emotion_folder
from .test_multilabel import write_multilabel_folder
from .test_regression import write_regression_folder

REG_TEXTS = ["the film was great overall", "the film was awful overall", "ok", "the film was fine but poor too"]
MT_TEXTS = ["i feel happy today", "today i am furious and happy now", "the film was great overall", "quiet"]


def regression_run(model: str, data: Path, out: Path, seed: int, pooling: str = "mean",
                   targets: tuple[str, ...] = ("V", "A")) -> Path:
    cfg = RunConfig()
    cfg.data.name, cfg.data.target_columns = str(data), list(targets)
    cfg.model.name, cfg.model.pooling, cfg.method = model, pooling, {"name": "full"}
    cfg.train.max_steps, cfg.train.eval_every, cfg.train.batch_size, cfg.train.precision = 6, 6, 16, "fp32"
    cfg.train.lr, cfg.train.patience, cfg.train.seed = 2e-3, None, seed
    api.train(cfg, out, progress=False)
    return out


def multitask_run(model: str, root: Path, out: Path, seed: int) -> Path:
    """emotion (classification), vad (regression) and feel (multi-label) on one encoder; every task's data has
    its own validation file, so runs of any seed validate on the same examples."""
    cfg = tiny_config(model, root / "emo", method="full", max_steps=6, seed=seed, eval_every=6)
    cfg = cfg.with_values({"multitask.tasks": [
        {"name": "emotion", "data": {"name": "emotion"}},
        {"name": "vad", "data": {"name": str(root / "reg"), "target_columns": ["V", "A"]}},
        {"name": "feel", "data": {"name": str(root / "ml"), "task": "multilabel", "label_column": "labels",
                                  "label_delimiter": ","}}]})
    api.train(cfg, out, progress=False)
    return out


@pytest.fixture(scope="module")
def runs(tiny_model, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ens-tasks")
    reg = write_regression_folder(root / "reg")
    write_emotion_folder(root / "emo")
    write_multilabel_folder(root / "ml")
    out = {"reg-1": regression_run(tiny_model, reg, root / "reg-1", 1),
           "reg-2": regression_run(tiny_model, reg, root / "reg-2", 2, pooling="pooler"),
           "mt-1": multitask_run(tiny_model, root, root / "mt-1", 1),
           "mt-2": multitask_run(tiny_model, root, root / "mt-2", 2)}
    cls = tiny_config(tiny_model, root / "emo", method="full", max_steps=2, eval_every=2)
    api.train(cls, root / "cls", progress=False)
    out["cls"], out["root"] = root / "cls", root
    return out


def ensemble(members: list[Path], out: Path) -> dict:
    cfg = Run.open(members[0]).config
    cfg.method = {"name": "ensemble", "members": [str(m) for m in members]}
    return api.train(cfg, out, progress=False)


def values(rows: list[dict], names=("V", "A")) -> torch.Tensor:
    return torch.tensor([[r["values"][n] for n in names] for r in rows])


# ---- ensembles ---------------------------------------------------------------------------------------------

def test_a_regression_ensemble_predicts_the_mean_of_its_members(runs, tmp_path):
    members = [runs["reg-1"], runs["reg-2"]]
    metrics = ensemble(members, tmp_path / "ens")
    per_member = [values(api.predict(m, REG_TEXTS, precision="fp32")) for m in members]
    assert (per_member[0] - per_member[1]).abs().max() > 1e-3  # else a mean could not be told from a member
    got = values(api.predict(tmp_path / "ens", REG_TEXTS, precision="fp32"))
    assert torch.allclose(got, (per_member[0] + per_member[1]) / 2, atol=1e-5)
    run = Run.open(tmp_path / "ens")
    assert run.task is REGRESSION and run.labels == ["V", "A"]
    assert run.target_statistics == Run.open(members[0]).target_statistics
    # Its validation figures are the regression task's own metrics of the mean of the members' predictions.
    val = load_data(run.config.data, run.config.train.seed)["validation"]
    mean = sum(values(api.predict(m, val.texts, precision="fp32")) for m in members) / 2
    want = REGRESSION.metrics(mean, val.labels, run.labels)
    for key in ("pearson", "spearman", "mse", "mae"):
        assert metrics["validation"][key] == pytest.approx(want[key], abs=1e-4)
    assert set(metrics["validation"]["per_target"]) == {"V", "A"}


def test_a_multitask_ensemble_averages_every_task_by_its_rule(runs, tmp_path):
    members = [runs["mt-1"], runs["mt-2"]]
    r = CliRunner().invoke(app, ["ensemble", *map(str, members), "--out", str(tmp_path / "ens"), "--no-progress",
                                 "--test"])
    assert r.exit_code == 0, r.output
    run = Run.open(tmp_path / "ens")
    assert run.task.name == "multitask" and run.labels == Run.open(members[0]).labels
    val = run.metrics["validation"]
    assert {"score", "emotion", "vad", "feel"} <= set(val) and "score" in run.metrics["test"]
    rows = [api.predict(m, MT_TEXTS, precision="fp32") for m in [*members, tmp_path / "ens"]]

    def table(rs, task, key):
        return torch.tensor([list(r["tasks"][task][key].values()) for r in rs])

    for task, key in (("emotion", "probabilities"), ("vad", "values"), ("feel", "scores")):
        a, b, got = (table(rs, task, key) for rs in rows)
        assert (a - b).abs().max() > 1e-4, task  # the members differ on every task
        assert torch.allclose(got, (a + b) / 2, atol=1e-5), task
    # Multi-label: the members' mean thresholds, kept per task and used by predict.
    states = [Run.open(m).task_state["feel"]["thresholds"] for m in members]
    mine = run.task_state["feel"]["thresholds"]
    assert set(run.task_state) == {"feel"}
    assert mine == pytest.approx({k: (states[0][k] + states[1][k]) / 2 for k in mine})
    for row in rows[2]:
        feel = row["tasks"]["feel"]
        assert feel["labels"] == [k for k, v in feel["scores"].items() if v >= mine[k]]
    # Re-evaluated from the folder: the figures it was made with.
    again = api.evaluate(tmp_path / "ens", "validation")
    assert again["score"] == pytest.approx(val["score"], abs=1e-6)
    assert again["feel"]["f1_micro"] == pytest.approx(val["feel"]["f1_micro"])


def test_mismatched_members_are_one_line_errors(runs, tmp_path):
    reg = runs["reg-1"]
    other_targets = tmp_path / "reg-other"
    shutil.copytree(reg, other_targets)
    (other_targets / "labels.json").write_text(json.dumps(["V", "D"]))
    reordered = tmp_path / "mt-reordered"
    shutil.copytree(runs["mt-1"], reordered)
    cfg = yaml.safe_load((reordered / "config.yaml").read_text())
    cfg["multitask"]["tasks"] = cfg["multitask"]["tasks"][::-1]
    (reordered / "config.yaml").write_text(yaml.safe_dump(cfg))
    labels = json.loads((reordered / "labels.json").read_text())
    (reordered / "labels.json").write_text(json.dumps(dict(reversed(list(labels.items())))))
    cases = [([reg, runs["cls"]], "must predict the same task type"),
             ([runs["mt-1"], reg], "is a regression run but"),
             ([reg, other_targets], r"targets \['V', 'D'\] differ"),
             ([runs["mt-1"], reordered], "must have the same tasks, in order")]
    for members, message in cases:
        with pytest.raises(ConfigError, match=message) as e:
            ensemble(members, tmp_path / "bad")
        assert "\n" not in str(e.value)
        assert not (tmp_path / "bad" / "metrics.json").exists()
    r = CliRunner().invoke(app, ["ensemble", str(reg), str(runs["cls"]), "--out", str(tmp_path / "x"),
                                 "--no-progress"])
    assert r.exit_code == 2 and "same task type" in r.output and "Traceback" not in r.output


# ---- export ------------------------------------------------------------------------------------------------

def hf_logits(folder: Path, texts: list[str], **kw) -> torch.Tensor:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(folder, use_safetensors=True, **kw).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        return model(**tok(texts, padding=True, truncation=True, return_tensors="pt")).logits


@pytest.mark.parametrize("name, stock", [("reg-1", False), ("reg-2", True)])
def test_an_exported_regression_run_reloads_with_its_values(runs, name, stock, tmp_path):
    from emotune.workflows.export import export_merged

    r = export_merged(runs[name], tmp_path / "export", stock_only=stock)
    assert r.trust_remote_code is not stock
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    run = Run.open(runs[name])
    assert config["problem_type"] == "regression" and config["id2label"] == {"0": "V", "1": "A"}
    assert config["emotune"]["task"] == "regression" and config["emotune"]["targets"] == run.target_statistics
    info = json.loads((tmp_path / "export" / "emotune_export.json").read_text())
    assert info["targets"] == run.target_statistics and info["labels"] == ["V", "A"]
    want = values(api.predict(runs[name], REG_TEXTS, precision="fp32"))
    got = hf_logits(tmp_path / "export", REG_TEXTS, trust_remote_code=not stock)
    assert want.abs().max() > 1.0  # on the targets' scale: a standardised output would be near 0
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)


def test_an_exported_multitask_run_reloads_with_every_heads_outputs(runs, tmp_path):
    from emotune.workflows.export import export_merged

    run = Run.open(runs["mt-1"])
    with pytest.raises(ConfigError, match="no stock Transformers class carries several heads") as e:
        export_merged(run.path, tmp_path / "stock", stock_only=True)
    assert "\n" not in str(e.value) and not (tmp_path / "stock").exists()
    r = CliRunner().invoke(app, ["export", str(run.path), "--merged", "--out", str(tmp_path / "export")])
    assert r.exit_code == 0, r.output
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert [h["name"] for h in config["heads"]] == ["emotion", "vad", "feel"]
    tasks = {t["name"]: t for t in config["emotune"]["tasks"]}
    assert {n: t["task"] for n, t in tasks.items()} == {"emotion": "classification", "vad": "regression",
                                                        "feel": "multilabel"}
    assert config["emotune"]["task_state"] == run.task_state and config["emotune"]["targets"] == run.target_statistics
    logits = hf_logits(tmp_path / "export", MT_TEXTS, trust_remote_code=True)
    want = api.predict(run.path, MT_TEXTS, precision="fp32")

    def cols(task):
        start, stop = tasks[task]["columns"]
        return logits[:, start:stop]

    # The exported logits are raw; the calibration fitted on validation travels in its config, as emotune applies it.
    temperature = config["emotune"]["task_state"]["emotion"]["calibration"]["temperature"]
    probs = torch.softmax(cols("emotion") / temperature, -1)
    assert torch.allclose(probs, torch.tensor([list(w["tasks"]["emotion"]["probabilities"].values()) for w in want]),
                          atol=1e-5)
    assert torch.allclose(cols("vad"), values([w["tasks"]["vad"] for w in want]), rtol=1e-5, atol=1e-5)
    scores = torch.sigmoid(cols("feel"))
    assert torch.allclose(scores, torch.tensor([list(w["tasks"]["feel"]["scores"].values()) for w in want]),
                          atol=1e-5)
    cut = config["emotune"]["task_state"]["feel"]["thresholds"]
    names = tasks["feel"]["labels"]
    predicted = [[n for n, p in zip(names, row) if p >= cut[n]] for row in scores.tolist()]
    assert predicted == [w["tasks"]["feel"]["labels"] for w in want]
    assert np.isfinite(logits.numpy()).all()


def multilabel_run(model: str, data: Path, out: Path, seed: int) -> Path:
    cfg = RunConfig()
    cfg.data.name, cfg.data.label_column, cfg.data.label_delimiter = str(data), "labels", ","
    cfg.model.name, cfg.method = model, {"name": "full"}
    cfg.train.max_steps, cfg.train.eval_every, cfg.train.batch_size, cfg.train.precision = 6, 6, 16, "fp32"
    cfg.train.lr, cfg.train.patience, cfg.train.seed = 2e-3, None, seed
    api.train(cfg, out, progress=False)
    return out


def test_multilabel_ensemble_and_export(runs, tiny_model, tmp_path):
    """Mean probabilities at the members' mean thresholds, scored by the task's own metrics; the export's sigmoid
    outputs are the run's scores and its config carries the thresholds."""
    from emotune.tasks import MULTILABEL
    from emotune.workflows.export import export_merged

    members = [multilabel_run(tiny_model, runs["root"] / "ml", tmp_path / f"ml-{s}", s) for s in (1, 2)]
    metrics = ensemble(members, tmp_path / "ens")
    run = Run.open(tmp_path / "ens")
    states = [Run.open(m).task_state["thresholds"] for m in members]
    cut = run.task_state["thresholds"]
    assert cut == pytest.approx({k: (states[0][k] + states[1][k]) / 2 for k in cut})

    def scores(folder, texts):
        return torch.tensor([list(r["scores"].values()) for r in api.predict(folder, texts, precision="fp32")])

    a, b = (scores(m, MT_TEXTS) for m in members)
    assert (a - b).abs().max() > 1e-4 and torch.allclose(scores(run.path, MT_TEXTS), (a + b) / 2, atol=1e-5)
    val = load_data(run.config.data, run.config.train.seed)["validation"]
    mean = sum(scores(m, val.texts) for m in members) / 2
    want = MULTILABEL.metrics(torch.logit(mean.double()).float(), val.labels, run.labels, state=run.task_state)
    for key in ("f1_micro", "f1_macro", "jaccard", "exact_match"):
        assert metrics["validation"][key] == pytest.approx(want[key]), key

    export_merged(members[0], tmp_path / "export")
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification"
    assert config["emotune"]["task_state"] == Run.open(members[0]).task_state
    got = torch.sigmoid(hf_logits(tmp_path / "export", MT_TEXTS, trust_remote_code=True))
    assert torch.allclose(got, a, atol=1e-5)
