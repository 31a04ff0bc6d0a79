"""Calibrated confidence: temperature and vector scaling fitted on validation, ECE/Brier/NLL before and after,
applied wherever probabilities are made, and abstaining below a confidence."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from emotune import api
from emotune.errors import ConfigError, DataError
from emotune.inference.format import abstain, format_predictions
from emotune.tasks.calibration import (apply_calibration, calibration_metrics, coverage_curve,
                                       expected_calibration_error, fit_calibration, reliability)
from emotune.tasks.classification import CLASSIFICATION

from .conftest import EMOTIONS, tiny_config


def _overconfident(n: int = 4000, k: int = 4, true_t: float = 3.0, seed: int = 0):
    """Logits whose softmax at T=1 is overconfident: the labels are drawn from softmax(logits / true_t)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=g, dtype=torch.float64) * 4
    labels = torch.multinomial(torch.softmax(logits / true_t, -1), 1, generator=g).squeeze(1)
    return logits, labels.tolist()


def test_temperature_scaling_recovers_the_temperature_and_keeps_predictions():
    logits, labels = _overconfident()
    fitted = fit_calibration(logits, labels, "temperature")
    assert fitted["how"] == "temperature" and fitted["temperature"] == pytest.approx(3.0, rel=0.1)
    scaled = apply_calibration(logits, fitted)
    assert torch.equal(scaled.argmax(-1), logits.argmax(-1))  # one temperature never changes a prediction
    before = calibration_metrics(torch.softmax(logits, -1), labels)
    after = calibration_metrics(torch.softmax(scaled, -1), labels)
    assert after["nll"] < before["nll"] and after["ece"] < before["ece"] / 3 and after["brier"] < before["brier"]


def test_vector_scaling_fits_a_weight_and_bias_per_class():
    logits, labels = _overconfident(k=3)
    shifted = logits + torch.tensor([2.0, 0.0, 0.0], dtype=torch.float64)  # a biased class 0
    fitted = fit_calibration(shifted, labels, "vector")
    assert len(fitted["weights"]) == 3 and len(fitted["biases"]) == 3
    after = calibration_metrics(torch.softmax(apply_calibration(shifted, fitted), -1), labels)
    assert after["nll"] < calibration_metrics(torch.softmax(shifted, -1), labels)["nll"]
    with pytest.raises(ConfigError, match="temperature, vector"):
        fit_calibration(logits, labels, "isotonic")


def test_ece_brier_and_nll_by_hand():
    # Two bins used: confidence 0.9 (2 texts, 1 right) and 0.6 (2 texts, both right).
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]], dtype=torch.float64)
    labels = [0, 1, 0, 1]
    m = calibration_metrics(probs, labels)
    assert m["ece"] == pytest.approx(0.5 * abs(0.5 - 0.9) + 0.5 * abs(1.0 - 0.6))
    assert m["brier"] == pytest.approx(np.mean([2 * 0.1 ** 2, 2 * 0.9 ** 2, 2 * 0.4 ** 2, 2 * 0.4 ** 2]))
    assert m["nll"] == pytest.approx(-np.mean(np.log([0.9, 0.1, 0.6, 0.6])))
    conf, correct = probs.max(1).values.numpy(), np.array([1.0, 0.0, 1.0, 1.0])
    assert expected_calibration_error(conf, correct) == pytest.approx(m["ece"])
    assert [(round(c, 2), a, n) for c, a, n in reliability(conf, correct)] == [(0.6, 1.0, 2), (0.9, 0.5, 2)]
    coverage, accuracy, cut = coverage_curve(conf, correct)
    assert coverage.tolist() == [0.25, 0.5, 0.75, 1.0] and accuracy[-1] == 0.75 and cut[0] == pytest.approx(0.9)


def test_abstaining_keeps_the_guess_and_handles_every_task_shape():
    outputs = torch.tensor([[0.55, 0.45], [0.95, 0.05]])
    rows = format_predictions(["a", "b"], outputs, ["neg", "pos"], CLASSIFICATION, min_confidence=0.6)
    assert rows[0]["label"] == "uncertain" and rows[0]["best_guess"] == "neg"
    assert rows[1]["label"] == "neg" and "best_guess" not in rows[1]
    multi = {"tasks": {"emotion": {"label": "joy", "probabilities": {"joy": 0.4, "sad": 0.6 - 0.3}},
                       "vad": {"values": {"V": 3.0}}}}
    assert abstain(multi, 0.5)["tasks"]["emotion"]["label"] == "uncertain"
    assert abstain(multi, 0.5)["tasks"]["vad"] == {"values": {"V": 3.0}}
    with pytest.raises(DataError, match="between 0 and 1"):
        format_predictions(["a"], outputs[:1], ["neg", "pos"], CLASSIFICATION, min_confidence=1.5)


def test_a_trained_run_keeps_its_calibration_and_applies_it_everywhere(tiny_model, toy_data, tmp_path):
    out = tmp_path / "run"
    metrics = api.train(tiny_config(tiny_model, toy_data, "full", max_steps=8), out, progress=False)
    state = json.loads((out / "task_state.json").read_text())
    t = state["calibration"]["temperature"]
    assert t > 0 and t != 1.0
    val = metrics["validation"]
    for name in ("ece", "brier", "nll"):  # before and after, fitted on this very split: never worse NLL
        assert name in val and f"{name}_uncalibrated" in val
    assert val["nll"] <= val["nll_uncalibrated"] + 1e-9
    with open(out / "predictions_validation.csv", newline="") as f:
        row = next(csv.DictReader(f))
    assert "confidence_uncalibrated" in row

    predictor = api.Predictor(out)
    raw = predictor.logits(["i feel happy", "i am scared"])
    got = predictor.probabilities(["i feel happy", "i am scared"])
    assert torch.allclose(got, torch.softmax(raw / t, -1), atol=1e-6)
    test = api.evaluate(out, "test")
    assert {"ece", "ece_uncalibrated"} <= set(test)
    everything = api.predict(out, ["i feel happy"], min_confidence=1.0)[0]
    assert everything["label"] == "uncertain" and everything["best_guess"] in EMOTIONS


def test_calibration_can_be_switched_off(tiny_model, toy_data, tmp_path):
    cfg = tiny_config(tiny_model, toy_data, "full", max_steps=4)
    cfg.train.calibration = None
    m = api.train(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "task_state.json").exists() and "ece_uncalibrated" not in m["validation"]
    with pytest.raises(ConfigError, match="train.calibration"):
        cfg.train.calibration = "platt"
        cfg.train.validate()


def test_the_server_abstains_on_request(tiny_model, toy_data, tmp_path):
    from fastapi.testclient import TestClient

    from emotune.inference.engines import ModelRegistry
    from emotune.serve import create_app

    api.train(tiny_config(tiny_model, toy_data, "full", max_steps=4), tmp_path / "run", progress=False)
    with TestClient(create_app(ModelRegistry.load([f"m={tmp_path / 'run'}"]))) as client:
        sure = client.post("/v1/predict", json={"texts": ["i feel happy"], "min_confidence": 1.0})
        bad = client.post("/v1/predict", json={"texts": ["i feel happy"], "min_confidence": 2})
    assert sure.status_code == 200 and sure.json()["predictions"][0]["label"] == "uncertain"
    assert bad.status_code == 422


def test_a_run_can_be_calibrated_again_and_its_stale_test_figures_go(tiny_model, toy_data, tmp_path):
    from typer.testing import CliRunner

    from emotune.cli import app

    out = tmp_path / "run"
    cfg = tiny_config(tiny_model, toy_data, "full", max_steps=8)
    cfg.train.calibration = None
    api.train(cfg, out, progress=False)
    api.evaluate(out, "test")
    r = CliRunner().invoke(app, ["calibrate", str(out), "--how", "vector"])
    assert r.exit_code == 0 and "before: ECE" in r.output, r.output
    state = json.loads((out / "task_state.json").read_text())
    assert state["calibration"]["how"] == "vector"
    run = api.Run.open(out)
    assert run.config.train.calibration == "vector" and "test" not in run.metrics
    assert "ece_uncalibrated" in run.metrics["validation"] and not (out / "predictions_test.csv").exists()
    assert {"ece", "ece_uncalibrated"} <= set(api.evaluate(out, "test"))
    api.recalibrate(out, None)
    assert not (out / "task_state.json").exists() and api.Run.open(out).config.train.calibration is None
