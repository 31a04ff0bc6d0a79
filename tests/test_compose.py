"""LoraHub-style composition on tiny runs: two LoRA adapters of the toy emotion task mixed for a new
2-label task; the run folder, its reload, the baselines, the search bounds and the checks on the inputs."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from emotune import api
from emotune.errors import ConfigError, DataError
from emotune.inference.predictor import Predictor
from emotune.io import load_tensors
from emotune.workflows.compose import BOUND, cv_log_loss, fit_head, folds, sample_shots

from .conftest import tiny_config, write_emotion_folder

POSITIVE = "happy glad joyful cheerful delighted loving tender caring".split()
NEGATIVE = "sad lonely crying miserable angry furious scared afraid".split()


def write_polarity_folder(root, n_train=40, n_val=24, seed=0):
    """A new 2-label task (CSV files with text,label) whose words give the label away."""
    import random

    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for name, n in (("train.csv", n_train), ("validation.csv", n_val), ("test.csv", n_val)):
        with open(root / name, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            for i in range(n):
                label = "positive" if i % 2 else "negative"
                w.writerow([f"this is {rng.choice(POSITIVE if i % 2 else NEGATIVE)} stuff", label])
    return root


@pytest.fixture(scope="module")
def lora_runs(tiny_model, tmp_path_factory):
    """Two r=4 LoRA runs (different seeds and learning rates), one r=2 run and one full run."""
    root = tmp_path_factory.mktemp("compose")
    data = write_emotion_folder(root / "data")
    out = {}
    specs = (("a", "lora", 4, 1), ("b", "lora", 4, 2), ("r2", "lora", 2, 3), ("full", "full", 0, 4))
    for name, method, r, seed in specs:
        cfg = tiny_config(tiny_model, data, method, max_steps=8, eval_every=4, seed=seed, threads=1)
        if r:
            cfg.method["r"] = r
        api.train(cfg, root / name, progress=False)
        out[name] = root / name
    out["new_task"] = write_polarity_folder(root / "polarity")
    return out


@pytest.fixture(scope="module")
def composed(lora_runs, tmp_path_factory):
    from emotune.workflows.compose import compose

    out = tmp_path_factory.mktemp("composed") / "run"
    trials = []
    result = compose([lora_runs["a"], lora_runs["b"]], str(lora_runs["new_task"]), out, shots=12, trials=8, seed=3,
                     on_trial=lambda n, v: trials.append((n, v)))
    return result, out, trials


def test_composed_run_folder_holds_the_new_tasks_head_and_metrics(composed, lora_runs):
    result, out, trials = composed
    for name in ("config.yaml", "labels.json", "model.safetensors", "metrics.json", "predictions_validation.csv"):
        assert (out / name).is_file(), name
    assert json.loads((out / "labels.json").read_text()) == ["negative", "positive"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["completed"] and 0.0 <= metrics["validation"]["accuracy"] <= 1.0
    assert sum(sum(row) for row in metrics["validation"]["confusion_matrix"]) == 24
    src = metrics["composed_from"]
    assert src["runs"] == [str(lora_runs["a"].resolve()), str(lora_runs["b"].resolve())]
    assert src["shots"] == 12 and src["shot_labels"] == [6, 6]
    assert len(src["trials"]) == 8 and [n for n, _ in trials] == list(range(8))
    assert all(-BOUND <= w <= BOUND for t in src["trials"] for w in t["weights"])
    # The chosen weights are the best trial's (objective = CV log-loss + 0.05 * |w|_1).
    best = min(src["trials"], key=lambda t: t["objective"])
    assert src["weights"] == best["weights"] == result.composed.weights
    assert best["objective"] == pytest.approx(best["cv_log_loss"] + 0.05 * sum(map(abs, best["weights"])))
    base = metrics["baselines"]
    assert len(base["adapters"]) == 2 and base["adapters"][0]["weights"] == [1.0, 0.0]
    assert base["base_encoder"]["weights"] == [0.0, 0.0] and "accuracy" in base["base_encoder"]["validation"]
    assert "zeroshot" in base["zero_shot"] and "test" not in metrics  # test only when asked
    config = (out / "config.yaml").read_text()
    assert "name: lora" in config and "r: 4" in config and str(lora_runs["new_task"]) in config


def test_saved_adapter_is_the_weighted_sum_of_the_factors(composed, lora_runs):
    result, out, _ = composed
    w = result.composed.weights
    saved, _ = load_tensors(out / "model.safetensors")
    a, _ = load_tensors(lora_runs["a"] / "model.safetensors")
    b, _ = load_tensors(lora_runs["b"] / "model.safetensors")
    factors = [n for n in saved if ".lora_A." in n or ".lora_B." in n]
    assert len(factors) == 2 * 2 * 3  # 2 layers x query/key/value x (A, B)
    for n in factors:
        torch.testing.assert_close(saved[n], w[0] * a[n] + w[1] * b[n])
    norm = next(n for n in saved if n.endswith("LayerNorm.weight"))
    torch.testing.assert_close(saved[norm], (a[norm] + b[norm]) / 2)  # trained norms are averaged
    assert saved["head.weight"].shape == (2, 32)


def test_reload_reproduces_the_saved_validation_predictions(composed):
    _, out, _ = composed
    with open(out / "predictions_validation.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    probs = Predictor(out).probabilities([r["text"] for r in rows])
    saved = torch.tensor([[float(r["p_negative"]), float(r["p_positive"])] for r in rows])
    torch.testing.assert_close(probs, saved, atol=2e-6, rtol=0)
    assert api.evaluate(out, "validation")["accuracy"] == json.loads(
        (out / "metrics.json").read_text())["baselines"]["composed"]["validation"]["accuracy"]


def test_rank_mismatch_and_other_methods_are_refused(lora_runs, tmp_path):
    from emotune.workflows.compose import compose

    with pytest.raises(ConfigError, match="same rank"):
        compose([lora_runs["a"], lora_runs["r2"]], str(lora_runs["new_task"]), tmp_path / "x", trials=1)
    with pytest.raises(ConfigError, match="'full'"):
        compose([lora_runs["a"], lora_runs["full"]], str(lora_runs["new_task"]), tmp_path / "y", trials=1)
    with pytest.raises(ConfigError, match="at least two"):
        compose([lora_runs["a"]], str(lora_runs["new_task"]), tmp_path / "z", trials=1)
    assert not (tmp_path / "x").exists()


def test_cli_compose_with_test_split(lora_runs, tmp_path):
    out = tmp_path / "cli"
    env = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "emotune.cli", "compose", lora_runs["a"], lora_runs["b"], "--data",
                        lora_runs["new_task"], "--shots", "8", "--trials", "3", "--out", out, "--test"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "composed" in r.stdout and "base encoder" in r.stdout and "test accuracy" in r.stdout
    assert "emotune zeroshot" in r.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert "test" in metrics and (out / "predictions_test.csv").is_file()
    assert all("test" in a for a in metrics["baselines"]["adapters"])
    again = subprocess.run([sys.executable, "-m", "emotune.cli", "compose", lora_runs["a"], lora_runs["b"], "--data",
                            lora_runs["new_task"], "--out", out], capture_output=True, text=True, env=env)
    assert again.returncode == 2 and "already there" in again.stderr


def test_shots_are_stratified_seeded_and_cover_every_label():
    labels = [0] * 50 + [1] * 30 + [2] * 15 + [3] * 5
    pick = sample_shots(labels, 20, 4, seed=0)
    counts = np.bincount([labels[i] for i in pick], minlength=4)
    assert len(pick) == len(set(pick)) == 20 and counts.tolist() == [10, 6, 3, 1]
    assert sample_shots(labels, 20, 4, seed=0) == pick != sample_shots(labels, 20, 4, seed=1)
    rare = sample_shots(labels, 5, 4, seed=0)  # the rarest label still gets one
    assert set(labels[i] for i in rare) == {0, 1, 2, 3}


def test_head_is_the_logistic_regression_folded_into_a_linear_layer():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    for k, c in ((2, 1.0), (3, 1.0), (3, 0.01)):
        y = np.arange(30) % k
        x = rng.normal(size=(30, 8)) + y[:, None] * 0.7
        w, b = fit_head(x, y, k, [str(i) for i in range(k)], c)
        ours = torch.softmax(torch.tensor(x, dtype=torch.float32) @ w.T + b, -1).numpy()
        ref = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000)).fit(x, y).predict_proba(x)
        np.testing.assert_allclose(ours, ref, atol=1e-5)
    with pytest.raises(DataError, match="no example of label"):
        fit_head(x[y < 2], y[y < 2], 3, ["a", "b", "c"])


def test_cv_log_loss_prefers_separable_features():
    rng = np.random.default_rng(1)
    y = np.arange(20) % 2
    splits = folds(y, 5, seed=0)
    good = rng.normal(size=(20, 4)) + 3.0 * y[:, None]
    noise = rng.normal(size=(20, 4))
    assert cv_log_loss(good, y, 2, splits, c=1.0) < 0.3 < np.log(2) - 0.05 < cv_log_loss(noise, y, 2, splits, c=1.0)
    # Strong regularisation keeps an uninformative head near the uniform guess (log 2), not far above it.
    assert cv_log_loss(good, y, 2, splits) < np.log(2) < cv_log_loss(noise, y, 2, splits) < np.log(2) + 0.05
