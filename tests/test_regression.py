"""Regression: metrics against scipy/scikit-learn, the head's target statistics, a tiny run on numeric target
columns that reloads exactly, bad targets, and EmoBank (the named data set, and a short real run)."""

from __future__ import annotations

import csv
import json
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import mean_absolute_error, mean_squared_error

from emotune import api
from emotune.config import DataConfig, RunConfig
from emotune.data import load_data
from emotune.errors import DataError
from emotune.runs import Run
from emotune.tasks import REGRESSION, RegressionHead, regression_metrics, target_statistics

WORDS = {"great": 4.5, "good": 3.8, "fine": 3.0, "poor": 2.2, "awful": 1.5}


def write_regression_folder(root, n_train=150, n_eval=40, seed=0):
    """train/val/test CSVs whose word gives the valence away; arousal is noise."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("val", n_eval), ("test", n_eval)):
        with (root / f"{split}.csv").open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["text", "V", "A"])
            for _ in range(n):
                word = rng.choice(list(WORDS))
                w.writerow([f"the film was {word} overall", WORDS[word] + rng.gauss(0, 0.1), 3 + rng.gauss(0, 0.3)])
    return root


def test_metrics_match_scipy_and_sklearn():
    rng = np.random.default_rng(0)
    y = rng.normal(3, 0.5, size=(50, 2))
    p = y + rng.normal(0, 0.3, size=(50, 2))
    m = regression_metrics(y, p, ["V", "A"])
    for i, name in enumerate(["V", "A"]):
        assert m["per_target"][name]["pearson"] == pytest.approx(pearsonr(y[:, i], p[:, i])[0])
        assert m["per_target"][name]["spearman"] == pytest.approx(spearmanr(y[:, i], p[:, i])[0])
        assert m["per_target"][name]["mse"] == pytest.approx(mean_squared_error(y[:, i], p[:, i]))
        assert m["per_target"][name]["mae"] == pytest.approx(mean_absolute_error(y[:, i], p[:, i]))
    assert m["pearson"] == pytest.approx(np.mean([m["per_target"][n]["pearson"] for n in ["V", "A"]]))
    constant = regression_metrics(y, np.full_like(y, 3.0), ["V", "A"])  # r undefined: no correlation
    assert constant["pearson"] == 0.0


def test_head_predicts_on_the_targets_scale_and_the_loss_is_standardised():
    head = REGRESSION.head(4, 2)
    assert isinstance(head, RegressionHead)
    stats = target_statistics([[1.0, 10.0], [3.0, 30.0]])
    assert stats == {"mean": [2.0, 20.0], "std": [1.0, 10.0]}
    head.set_statistics(**stats)
    torch.nn.init.zeros_(head.linear.weight)
    torch.nn.init.zeros_(head.linear.bias)
    assert torch.equal(head(torch.randn(3, 4)), torch.tensor([[2.0, 20.0]] * 3))  # untrained: the mean
    weight = REGRESSION.loss_weights(None, [[1.0, 10.0], [3.0, 30.0]], 2, torch.device("cpu"))
    loss = REGRESSION.loss(torch.tensor([[3.0, 30.0]]), torch.tensor([[2.0, 20.0]]), weight)
    assert loss.item() == pytest.approx(1.0)  # one standard deviation off on both targets


def test_huber_loss_is_linear_beyond_one_standard_deviation():
    weight = REGRESSION.loss_weights(None, [[1.0, 10.0], [3.0, 30.0]], 2, torch.device("cpu"))  # std 1 and 10
    pred, gold = torch.tensor([[2.5, 50.0]]), torch.tensor([[2.0, 20.0]])  # 0.5 and 3 standard deviations off
    huber = REGRESSION.loss(pred, gold, weight, "huber")
    assert huber.item() == pytest.approx((0.5 * 0.5**2 + (3 - 0.5)) / 2)
    assert REGRESSION.loss(pred, gold, weight, "mse").item() == pytest.approx((0.5**2 + 3**2) / 2)
    assert torch.equal(REGRESSION.loss(pred, gold, weight), REGRESSION.loss(pred, gold, weight, "mse"))


def test_ccc_loss_is_one_minus_the_concordance_correlation_per_target():
    gen = torch.Generator().manual_seed(0)
    pred, gold = torch.randn(16, 3, generator=gen), torch.randn(16, 3, generator=gen) * 2 + 1
    loss = REGRESSION.loss(pred, gold, None, "ccc")
    x, y = pred.double().numpy(), gold.double().numpy()
    ccc = [2 * np.cov(x[:, k], y[:, k], bias=True)[0, 1] / (x[:, k].var() + y[:, k].var()
                                                            + (x[:, k].mean() - y[:, k].mean()) ** 2) for k in range(3)]
    assert loss.item() == pytest.approx(1 - np.mean(ccc), rel=1e-5)
    assert REGRESSION.loss(gold, gold, None, "ccc").item() == pytest.approx(0.0, abs=1e-6)  # perfect agreement
    # r = 1 but on the wrong scale and mean: CCC still asks for more, unlike a correlation loss
    assert REGRESSION.loss(gold / 2 + 3, gold, None, "ccc").item() > 0.3


def test_huber_trains_regression_and_is_refused_elsewhere(tiny_model, toy_data, tmp_path):
    from emotune.errors import ConfigError

    from .conftest import tiny_config

    data = write_regression_folder(tmp_path / "data")
    cfg = tiny_config(tiny_model, toy_data).with_values({"data.name": str(data), "data.target_columns": ["V", "A"],
                                                         "train.loss": "huber", "train.max_steps": 5})
    m = api.train(cfg, tmp_path / "run", progress=False)
    assert m["completed"] and Run.open(tmp_path / "run").config.train.loss == "huber"
    m = api.train(cfg.with_values({"train.loss": "ccc"}), tmp_path / "ccc", progress=False)
    assert m["completed"] and Run.open(tmp_path / "ccc").config.train.loss == "ccc"
    with pytest.raises(ConfigError, match="does not apply to classification"):
        api.train(tiny_config(tiny_model, toy_data).with_values({"train.loss": "huber"}), tmp_path / "c",
                  progress=False)
    with pytest.raises(ConfigError, match="train.loss must be"):
        RunConfig.from_dict({"train": {"loss": "l1"}})


def test_a_regression_run_on_target_columns_trains_reloads_and_predicts_values(tiny_model, tmp_path):
    data = write_regression_folder(tmp_path / "data")
    cfg = RunConfig()
    cfg.data.name, cfg.data.target_columns = str(data), ["V", "A"]
    cfg.model.name, cfg.method = tiny_model, {"name": "full"}
    cfg.train.max_steps, cfg.train.eval_every, cfg.train.batch_size, cfg.train.precision = 30, 10, 16, "fp32"
    cfg.train.lr, cfg.train.patience = 1e-3, None
    metrics = api.train(cfg, tmp_path / "run", progress=False)
    run = Run.open(tmp_path / "run")
    assert run.config.data.task == "regression" and run.config.train.metric == "pearson"
    assert run.labels == ["V", "A"] and run.target_statistics["mean"][0] == pytest.approx(3.0, abs=0.5)
    assert {"pearson", "spearman", "mse", "mae", "per_target"} <= set(metrics["validation"])
    with open(tmp_path / "run" / "predictions_validation.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    texts = [r["text"] for r in rows]
    saved = torch.tensor([[float(r["predicted_V"]), float(r["predicted_A"])] for r in rows])
    again = api.predict(tmp_path / "run", texts, precision="fp32")
    values = torch.tensor([[p["values"]["V"], p["values"]["A"]] for p in again])
    assert torch.allclose(values, saved, atol=1e-3)  # reloaded, the run predicts what it saved
    assert "label" not in again[0] and set(again[0]["values"]) == {"V", "A"}

    from fastapi.testclient import TestClient

    from emotune.inference.engines import ModelRegistry
    from emotune.serve import create_app

    with TestClient(create_app(ModelRegistry.load([f"vad={tmp_path / 'run'}"], precision="fp32"))) as c:
        r = c.post("/v1/predict", json={"texts": texts[:3], "model": "vad"})
    assert r.status_code == 200, r.text
    served = torch.tensor([[p["values"]["V"], p["values"]["A"]] for p in r.json()["predictions"]])
    assert torch.allclose(served, saved[:3], atol=1e-3)  # the server answers what the run predicts


@pytest.mark.parametrize("value, message", [("high", "not a number"), ("", "not a number"),
                                            ("nan", "missing or not finite")])
def test_bad_targets_are_one_line_errors(tmp_path, value, message):
    path = tmp_path / "d.csv"
    path.write_text(f"text,V\nfine film,3.0\nbad film,{value}\n", encoding="utf-8")
    with pytest.raises(DataError, match=message):
        load_data(DataConfig(name=str(path), target_columns=["V"]))
    proc = subprocess.run([sys.executable, "-m", "emotune.cli", "train", str(path), "--target-columns", "V",
                           "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "d.csv:3" in proc.stderr and "Traceback" not in proc.stderr


def test_emobank_splits_and_targets(real_data):
    data = load_data(DataConfig(name="emobank", data_dir=str(real_data)))
    assert {s: len(v) for s, v in data.splits.items()} == {"train": 8062, "validation": 1000, "test": 1000}
    assert data.label_names == ["V", "A", "D"]
    means = np.mean(data["train"].labels, axis=0)
    assert np.allclose(means, [2.98, 3.04, 3.06], atol=0.03)  # the data README's means


@pytest.mark.integration
def test_a_short_emobank_run_beats_the_mean(real_data, tmp_path):
    """MiniLM, LoRA defaults, 150 steps on 2,400 training sentences: valence is learned (r > 0.3 on
    validation), which predicting the training mean (r = 0) never is."""
    proc = subprocess.run([sys.executable, "-m", "emotune.cli", "train", "emobank", "--data-dir", str(real_data),
                           "--out", str(tmp_path / "run"), "--max-steps", "150", "--eval-every", "75",
                           "--max-train-samples", "2400", "--max-eval-samples", "500", "--no-progress"],
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["validation"]["per_target"]["V"]["pearson"] > 0.3


def test_cli_lists_the_task_types():
    from typer.testing import CliRunner

    from emotune.cli import app

    r = CliRunner().invoke(app, ["tasks"])
    assert r.exit_code == 0 and "classification" in r.output and "regression" in r.output and "pearson" in r.output
