"""Multi-label classification: head and BCE loss against torch, thresholds chosen on validation, metrics against
scikit-learn, delimiter and 0/1-column files, GoEmotions, bad input, a tiny run that saves its thresholds and
reloads exactly, and a short real GoEmotions run."""

from __future__ import annotations

import csv
import json
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, jaccard_score

from emotune import api
from emotune.config import DataConfig, RunConfig
from emotune.data import load_data
from emotune.errors import ConfigError, DataError
from emotune.runs import TASK_STATE, Run, resolve_config
from emotune.tasks import MULTILABEL, TASKS, task_for
from emotune.tasks.multilabel import THRESHOLD_GRID

LABELS = ["anger", "joy", "love"]
WORDS = {"anger": "furious", "joy": "happy", "love": "adore"}


def logit(p) -> torch.Tensor:
    p = torch.as_tensor(p, dtype=torch.float64)
    return torch.log(p / (1 - p)).float()


def write_multilabel_folder(root, n_train=160, n_eval=48, seed=0):
    """train/val/test CSVs with a `labels` column (`joy,love`); each label's word gives it away, a text without
    any of the words has no label."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("val", n_eval), ("test", n_eval)):
        with (root / f"{split}.csv").open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["text", "labels"])
            for i in range(n):
                labels = [name for name in LABELS if rng.random() < 0.4] if i % 8 else []
                words = " and ".join(WORDS[name] for name in labels) or "quiet"
                w.writerow([f"today i am {words} {rng.choice(['now', 'again', 'still'])}", ",".join(labels)])
    return root


# ---- the task -----------------------------------------------------------------------------------------------

def test_multilabel_is_registered_with_its_metrics():
    assert TASKS.get("multilabel") is MULTILABEL and MULTILABEL.default_metric == "f1_micro"
    assert set(MULTILABEL.metrics_higher_is_better) == {"f1_micro", "f1_macro", "jaccard"}
    MULTILABEL.check_metric("jaccard", LABELS)
    with pytest.raises(ConfigError, match="unknown validation metric"):
        MULTILABEL.check_metric("accuracy", LABELS)


def test_head_shape_and_loss_equal_torch_bce():
    head = MULTILABEL.head(16, 3)
    assert isinstance(head, torch.nn.Linear) and head(torch.randn(5, 16)).shape == (5, 3)
    logits = torch.randn(6, 3)
    targets = [[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]
    y = torch.tensor(targets)
    assert MULTILABEL.loss(logits, y).item() == pytest.approx(
        torch.nn.functional.binary_cross_entropy_with_logits(logits, y).item())
    weight = MULTILABEL.loss_weights("balanced", targets, 3, torch.device("cpu"))
    assert weight.tolist() == pytest.approx([1.0, 2.0, 2.0])  # n_neg / n_pos: 3/3, 4/2, 4/2
    assert MULTILABEL.loss(logits, y, weight).item() == pytest.approx(
        torch.nn.functional.binary_cross_entropy_with_logits(logits, y, pos_weight=weight).item())
    assert MULTILABEL.loss_weights(None, targets, 3, torch.device("cpu")) is None
    with pytest.raises(ConfigError, match="balanced"):
        MULTILABEL.loss_weights("inverse", targets, 3, torch.device("cpu"))
    assert torch.allclose(MULTILABEL.outputs(logits), torch.sigmoid(logits))
    MULTILABEL.init_head(head, targets)  # biases at the labels' (Laplace-smoothed) training log-odds
    prior = (torch.tensor(targets).sum(0) + 1) / (len(targets) + 2)
    assert torch.allclose(head.bias, torch.log(prior / (1 - prior)))


def test_thresholds_are_picked_per_label_on_a_constructed_example():
    # anger: positives at .32/.37, negatives at .12/.22: F1 = 1 for 0.25 and 0.30; the tie goes to 0.30 (nearer .5)
    # joy: positive at .92, negatives at .63/.71: F1 = 1 for 0.75 .. 0.90 -> 0.75
    # love: never positive: every threshold scores 0 -> 0.5
    probs = [[0.32, 0.63, 0.1], [0.37, 0.71, 0.2], [0.12, 0.92, 0.6], [0.22, 0.3, 0.9]]
    gold = [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]
    logits = logit(probs)
    state = MULTILABEL.fit_state(logits, gold, LABELS)
    assert state == {"thresholds": {"anger": pytest.approx(0.3), "joy": pytest.approx(0.75),
                                    "love": pytest.approx(0.5)}}
    p, y = np.asarray(probs), np.asarray(gold, dtype=int)
    for i, name in enumerate(LABELS):  # no grid threshold does better on that label
        best = max(f1_score(y[:, i], p[:, i] >= t, zero_division=0) for t in THRESHOLD_GRID)
        assert f1_score(y[:, i], p[:, i] >= state["thresholds"][name], zero_division=0) == pytest.approx(best)
    at_half = MULTILABEL.metrics(logits, gold, LABELS)
    fitted = MULTILABEL.metrics(logits, gold, LABELS, state=state)
    assert at_half["per_class"]["anger"]["f1"] == 0.0 and fitted["per_class"]["anger"]["f1"] == 1.0
    assert fitted["per_class"]["joy"]["threshold"] == pytest.approx(0.75)


def test_metrics_equal_scikit_learn():
    rng = np.random.default_rng(0)
    gold = (rng.random((60, 4)) < 0.3).astype(float)
    gold[:5] = 0  # texts without any label
    logits = torch.randn(60, 4) + torch.tensor(gold, dtype=torch.float32)
    names = ["a", "b", "c", "d"]
    state = {"thresholds": {"a": 0.3, "b": 0.5, "c": 0.65, "d": 0.45}}
    for st, cut in ((None, np.full(4, 0.5)), (state, np.array([0.3, 0.5, 0.65, 0.45]))):
        m = MULTILABEL.metrics(logits, gold.tolist(), names, state=st)
        pred = (torch.sigmoid(logits).numpy() >= cut).astype(int)
        y = gold.astype(int)
        assert m["f1_micro"] == pytest.approx(f1_score(y, pred, average="micro", zero_division=0))
        assert m["f1_macro"] == pytest.approx(f1_score(y, pred, average="macro", zero_division=0))
        assert m["jaccard"] == pytest.approx(jaccard_score(y, pred, average="samples", zero_division=1))
        per = f1_score(y, pred, average=None, zero_division=0)
        assert [m["per_class"][n]["f1"] for n in names] == pytest.approx(per.tolist())
        assert m["loss"] == pytest.approx(torch.nn.functional.binary_cross_entropy_with_logits(
            logits, torch.tensor(gold, dtype=torch.float32)).item())


def test_format_and_prediction_file(tmp_path):
    logits = logit([[0.9, 0.4, 0.6], [0.1, 0.2, 0.3]])
    rows = MULTILABEL.format(MULTILABEL.outputs(logits), LABELS)
    assert rows[0]["labels"] == ["anger", "love"] and rows[1]["labels"] == []
    assert rows[0]["scores"]["joy"] == pytest.approx(0.4)
    state = {"thresholds": {"anger": 0.95, "joy": 0.35, "love": 0.5}}
    assert MULTILABEL.format(MULTILABEL.outputs(logits), LABELS, state=state)[0]["labels"] == ["joy", "love"]
    MULTILABEL.write_predictions(tmp_path / "p.csv", ["a", "b"], [[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]], logits,
                                 LABELS, state=state)
    rows = list(csv.DictReader((tmp_path / "p.csv").open(encoding="utf-8")))
    assert list(rows[0]) == ["text", "labels", "predicted", "p_anger", "p_joy", "p_love"]
    assert (rows[0]["labels"], rows[0]["predicted"], rows[1]["labels"], rows[1]["predicted"]) == \
        ("anger;love", "joy;love", "", "")
    assert float(rows[0]["p_anger"]) == pytest.approx(0.9)


# ---- data ---------------------------------------------------------------------------------------------------

def test_reading_a_delimiter_file_and_a_jsonl_list(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('text,label\nso happy,joy\nhappy and loving,"love, joy"\nnothing,\nadore,"love,"\n',
                    encoding="utf-8")
    cfg = DataConfig(name=str(path), label_delimiter=",", validation_fraction=0.25)
    data = load_data(cfg)
    assert data.label_names == ["joy", "love"]
    pool = data["train"] + data["validation"]
    got = dict(zip(pool.texts, pool.labels))
    assert got == {"so happy": [1.0, 0.0], "happy and loving": [1.0, 1.0], "nothing": [0.0, 0.0],
                   "adore": [0.0, 1.0]}
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text('{"text": "so happy", "labels": ["joy"]}\n{"text": "both", "labels": ["joy", "love"]}\n'
                     '{"text": "none", "labels": []}\n{"text": "null", "labels": null}\n', encoding="utf-8")
    data = load_data(DataConfig(name=str(jsonl), label_column="labels", label_delimiter=",",
                                validation_fraction=0.25))
    pool = data["train"] + data["validation"]
    assert dict(zip(pool.texts, pool.labels)) == {"so happy": [1.0, 0.0], "both": [1.0, 1.0], "none": [0.0, 0.0],
                                                  "null": [0.0, 0.0]}
    resolved = resolve_config(RunConfig.from_dict({"data": {"name": str(path), "label_delimiter": ","}}))
    assert resolved.data.task == "multilabel" and resolved.train.metric == "f1_micro"
    assert task_for(resolved) is MULTILABEL


def test_reading_zero_one_columns(tmp_path):
    path = tmp_path / "d.tsv"
    path.write_text("text\tjoy\tanger\nso happy\t1\t0\nfurious\t0\t1.0\nboth\t1\t1\nnone\t0\t0\n", encoding="utf-8")
    data = load_data(DataConfig(name=str(path), label_columns=["joy", "anger"], validation_fraction=0.25))
    assert data.label_names == ["joy", "anger"]
    pool = data["train"] + data["validation"]
    assert dict(zip(pool.texts, pool.labels)) == {"so happy": [1.0, 0.0], "furious": [0.0, 1.0],
                                                  "both": [1.0, 1.0], "none": [0.0, 0.0]}
    assert DataConfig(label_columns="joy, anger").label_columns == ["joy", "anger"]  # --label-columns joy,anger
    resolved = resolve_config(RunConfig.from_dict({"data": {"name": str(path), "label_columns": ["joy", "anger"]}}))
    assert resolved.data.task == "multilabel"


def test_single_label_data_trains_as_multilabel_when_asked(toy_data):
    data = load_data(DataConfig(name="emotion", data_dir=str(toy_data), task="multilabel"))
    assert all(sum(row) == 1.0 and len(row) == 6 for row in data["train"].labels)


def write_goemotions(root, train: list[str], dev: list[str], names=("joy", "anger", "neutral")):
    folder = root / "goemotions"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "labels.txt").write_text("\n".join(names), encoding="utf-8")
    (folder / "train.tsv").write_text("".join(line + "\n" for line in train), encoding="utf-8")
    (folder / "dev.tsv").write_text("".join(line + "\n" for line in dev), encoding="utf-8")
    return root


def test_goemotions_layout_and_its_missing_test_split(tmp_path):
    root = write_goemotions(tmp_path, ["so glad\t0\tid1", "glad yet mad\t0,1\tid2", "ok then\t2\tid3"],
                            ["fine\t2\tid4", "grr\t1\tid5"])
    data = load_data(DataConfig(name="goemotions", data_dir=str(root)))
    assert data.label_names == ["joy", "anger", "neutral"]
    assert data["train"].labels == [[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    assert data["validation"].texts == ["fine", "grr"]
    with pytest.raises(DataError, match="no 'test' split.*official test split is not in"):
        data["test"]
    assert resolve_config(RunConfig.from_dict({"data": {"name": "goemotions"}})).data.task == "multilabel"
    with pytest.raises(ConfigError, match="goemotions.*multilabel data set"):
        resolve_config(RunConfig.from_dict({"data": {"name": "goemotions", "task": "classification"}}))


def test_real_goemotions_splits_and_labels(real_data):
    data = load_data(DataConfig(name="goemotions", data_dir=str(real_data)))
    assert {s: len(v) for s, v in data.splits.items()} == {"train": 43410, "validation": 5426}
    assert len(data.label_names) == 28 and data.label_names[0] == "admiration" and data.label_names[-1] == "neutral"
    assert sum(sum(row) > 1 for row in data["train"].labels) == 7102  # the data README's count
    assert sum(row[-1] for row in data["train"].labels) == 14219  # neutral


# ---- bad input ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("files, options, message, where", [
    ({"train.csv": "text,label\na,joy\nb,love\n", "val.csv": "text,label\nc,joy\nd,\"joy,hate\"\n"},
     {"label_delimiter": ","}, "unknown label 'hate'", "val.csv:3"),
    ({"train.csv": "text,joy,love\na,1,0\nb,yes,1\n"}, {"label_columns": ["joy", "love"]},
     "label column 'joy' must hold 0 or 1, got 'yes'", "train.csv:3"),
    ({"train.csv": "text,joy,love\na,1,0\nb,0,2\n"}, {"label_columns": ["joy", "love"]},
     "must hold 0 or 1, got '2'", "train.csv:3"),
    ({"train.csv": "text,joy,love\na,1,0\nb,0,\n"}, {"label_columns": ["joy", "love"]},
     "must hold 0 or 1, got ''", "train.csv:3"),
    ({"train.csv": "text,joy\na,1\n"}, {"label_columns": ["joy", "love"]}, "no 'love' column", "train.csv:2"),
])
def test_bad_multilabel_files_are_one_line_errors(tmp_path, files, options, message, where):
    for name, content in files.items():
        (tmp_path / name).write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message) as e:
        load_data(DataConfig(name=str(tmp_path), **options))
    assert where in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("train, message, line", [
    (["ok\t0\tid1", "odd\t0,3\tid2"], "label id '3' is not one of the 3 labels", 2),
    (["ok\t0\tid1", "odd\t-1\tid2"], "label id '-1' is not one of the 3 labels", 2),
    (["ok\t0\tid1", "none\t\tid2"], "no label ids", 2),
    (["ok\t0\tid1", "only two fields\t0"], "expected text<TAB>label ids<TAB>comment id", 2),
])
def test_bad_goemotions_lines_are_one_line_errors(tmp_path, train, message, line):
    root = write_goemotions(tmp_path, train, ["fine\t2\tid4"])
    with pytest.raises(DataError, match=message) as e:
        load_data(DataConfig(name="goemotions", data_dir=str(root)))
    assert f"train.tsv:{line}" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("options, message", [
    ({"label_delimiter": ",", "label_columns": ["a"]}, "not both"),
    ({"label_columns": ["a"], "target_columns": ["V"]}, "not both"),
    ({"label_delimiter": ",", "task": "regression"}, "for data.task=multilabel"),
    ({"label_columns": ["a", "a"]}, "twice"),
])
def test_conflicting_multilabel_options(options, message):
    with pytest.raises(ConfigError, match=message):
        DataConfig(name="x.csv", **options)


def test_bad_label_column_is_a_one_line_cli_error(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,joy\nglad,1\nsad,maybe\n", encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "emotune.cli", "train", str(path), "--label-columns", "joy",
                           "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "d.csv:3" in proc.stderr and "Traceback" not in proc.stderr


# ---- a tiny run, end to end ---------------------------------------------------------------------------------

def test_a_tiny_multilabel_run_saves_thresholds_and_reloads_exactly(tiny_model, tmp_path):
    from typer.testing import CliRunner

    from emotune.cli import app

    data = write_multilabel_folder(tmp_path / "data")
    cfg = RunConfig()
    cfg.data.name, cfg.data.label_column, cfg.data.label_delimiter = str(data), "labels", ","
    cfg.model.name, cfg.method = tiny_model, {"name": "full"}
    cfg.train.max_steps, cfg.train.eval_every, cfg.train.batch_size, cfg.train.precision = 40, 20, 16, "fp32"
    cfg.train.lr, cfg.train.patience, cfg.train.class_weights = 2e-3, None, "balanced"
    metrics = api.train(cfg, tmp_path / "run", progress=False)
    run = Run.open(tmp_path / "run")
    assert run.config.data.task == "multilabel" and run.config.train.metric == "f1_micro"
    assert run.labels == LABELS and (tmp_path / "run" / TASK_STATE).is_file()
    state = run.task_state
    assert set(state["thresholds"]) == set(LABELS)
    assert all(min(abs(t - g) for g in THRESHOLD_GRID) < 1e-9 for t in state["thresholds"].values())
    val = metrics["validation"]
    assert {"f1_micro", "f1_macro", "jaccard", "per_class", "loss"} <= set(val)
    assert [val["per_class"][n]["threshold"] for n in LABELS] == [state["thresholds"][n] for n in LABELS]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["validation"] == val

    with open(tmp_path / "run" / "predictions_validation.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    texts = [r["text"] for r in rows]
    saved = torch.tensor([[float(r[f"p_{n}"]) for n in LABELS] for r in rows])
    again = api.predict(tmp_path / "run", texts)  # as trained: the training's own evaluation, bit for bit
    scores = torch.tensor([[p["scores"][n] for n in LABELS] for p in again])
    assert torch.allclose(scores, saved, atol=1e-6)  # reloaded, the run predicts what it saved
    assert [";".join(p["labels"]) for p in again] == [r["predicted"] for r in rows]  # at the saved thresholds
    pred = np.array([[n in r["predicted"].split(";") for n in LABELS] for r in rows], dtype=int)
    y = np.array([[n in r["labels"].split(";") for n in LABELS] for r in rows], dtype=int)
    assert val["f1_micro"] == pytest.approx(f1_score(y, pred, average="micro", zero_division=0))

    test = api.evaluate(tmp_path / "run", "test")
    with open(tmp_path / "run" / "predictions_test.csv", newline="", encoding="utf-8") as f:
        test_rows = list(csv.DictReader(f))
    pred = np.array([[n in r["predicted"].split(";") for n in LABELS] for r in test_rows], dtype=int)
    y = np.array([[n in r["labels"].split(";") for n in LABELS] for r in test_rows], dtype=int)
    assert test["f1_micro"] == pytest.approx(f1_score(y, pred, average="micro", zero_division=0))
    assert Run.open(tmp_path / "run").metrics["test"]["f1_micro"] == test["f1_micro"]

    r = CliRunner().invoke(app, ["evaluate", str(tmp_path / "run"), "--split", "test"])
    assert r.exit_code == 0, r.output
    assert "F1 (micro)" in r.output and "Jaccard (samples)" in r.output and "F1, joy (threshold" in r.output
    r = CliRunner().invoke(app, ["predict", str(tmp_path / "run"), texts[0], "--precision", "fp32"])
    assert r.exit_code == 0, r.output
    assert "labels" in r.output and (again[0]["labels"][0] if again[0]["labels"] else "-") in r.output

    from fastapi.testclient import TestClient

    from emotune.inference.engines import ModelRegistry
    from emotune.serve import create_app

    with TestClient(create_app(ModelRegistry.load([f"ml={tmp_path / 'run'}"], precision="fp32"))) as c:
        served = c.post("/v1/predict", json={"texts": texts[:4], "model": "ml"})
    assert served.status_code == 200, served.text
    assert [p["labels"] for p in served.json()["predictions"]] == [p["labels"] for p in again[:4]]


# ---- real data ----------------------------------------------------------------------------------------------

@pytest.mark.integration
def test_a_short_goemotions_run_beats_always_neutral(real_data, tmp_path):
    """MiniLM, LoRA defaults, 300 steps on 2,000 training comments, validated on 1,000: micro F1 (at the
    thresholds chosen on that validation sample) beats predicting `neutral` for every text."""
    proc = subprocess.run([sys.executable, "-m", "emotune.cli", "train", "goemotions", "--data-dir", str(real_data),
                           "--out", str(tmp_path / "run"), "--max-steps", "300", "--eval-every", "150",
                           "--max-train-samples", "2000", "--max-eval-samples", "1000", "--no-progress"],
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    run = Run.open(tmp_path / "run")
    data = load_data(run.config.data, run.config.train.seed)  # the same validation sample
    y = np.asarray(data["validation"].labels, dtype=int)
    neutral = np.zeros_like(y)
    neutral[:, data.label_names.index("neutral")] = 1
    baseline = f1_score(y, neutral, average="micro", zero_division=0)
    print(f"goemotions: validation micro F1 {metrics['validation']['f1_micro']:.4f}, macro F1 "
          f"{metrics['validation']['f1_macro']:.4f}; always neutral {baseline:.4f}")
    assert metrics["validation"]["f1_micro"] > baseline


def test_the_page_shows_label_chips(tiny_model, tmp_path):
    """The served page shows a chip per predicted label (here every label: thresholds set to 0) and bars of the
    most probable labels."""
    from .test_page import Browser, chromium_binary
    from .test_serve import ServerProcess

    chromium_binary()  # skips without chromium
    data = write_multilabel_folder(tmp_path / "data", n_train=40, n_eval=16)
    cfg = RunConfig()
    cfg.data.name, cfg.data.label_column, cfg.data.label_delimiter = str(data), "labels", ","
    cfg.model.name, cfg.method = tiny_model, {"name": "full"}
    cfg.train.max_steps, cfg.train.eval_every, cfg.train.precision = 5, 5, "fp32"
    api.train(cfg, tmp_path / "run", progress=False)
    (tmp_path / "run" / TASK_STATE).write_text(json.dumps({"thresholds": {n: 0.0 for n in LABELS}}))
    server = ServerProcess(f"ml={tmp_path / 'run'}", "--precision", "fp32")
    browser = Browser(tmp_path / "profile")
    try:
        browser.send("Page.enable")
        browser.send("Page.navigate", url=server.url + "/")
        browser.wait_for("document.body && document.body.dataset.ready === '1'")
        browser.type("#texts", ["today i am happy now", "today i am quiet"])
        browser.click("#go")
        browser.wait_for("document.querySelectorAll('.result').length === 2")
        chips = browser.eval("JSON.stringify([...document.querySelectorAll('.result')].map(c => "
                             "[...c.querySelectorAll('.chip')].map(x => x.dataset.label)))")
        bars = browser.eval("[...document.querySelectorAll('.result')[0].querySelectorAll('.bar-row')].length")
        assert json.loads(chips) == [LABELS, LABELS] and bars == len(LABELS)
    finally:
        browser.close()
        server.stop()
