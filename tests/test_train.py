"""The training loop and run folders, on a tiny random BERT."""

import csv
import os

import pytest
import torch

from emotune import api
from emotune.errors import ConfigError, Interrupted, RunError
from emotune.io import load_tensors
from emotune.runs import read_history
from emotune.tasks.classification import class_weights

from .conftest import tiny_config, write_emotion_folder
from .test_peft_methods import read_probs


@pytest.mark.parametrize("method", ["full", "lora"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_run_folder_and_exact_reload(tiny_model, toy_data, tmp_path, method, precision):
    out = tmp_path / "run"
    metrics = api.train(tiny_config(tiny_model, toy_data, method, precision=precision), out, progress=False)
    names = {p.name for p in out.iterdir()}
    assert {"config.yaml", "labels.json", "model.safetensors", "history.jsonl", "metrics.json",
            "predictions_validation.csv"} <= names
    assert "checkpoint.safetensors" not in names and not any(n.endswith(".tmp") for n in names)
    assert metrics["completed"] and metrics["train"]["steps"] == 30  # 120 examples / 8 x 2 epochs
    assert metrics["train"]["precision"] == {"fp32": "float32", "bf16": "bfloat16"}[precision]
    assert set(metrics["validation"]) >= {"loss", "accuracy", "f1_weighted", "precision_macro", "per_class",
                                          "confusion_matrix"}
    weights, _ = load_tensors(out / "model.safetensors")
    if method == "lora":  # the adapter and head alone, not the frozen encoder
        assert all("lora_" in k or k.startswith("head.") or "LayerNorm" in k for k in weights)
    # Reloading the run gives exactly the predictions the trained model made.
    texts = [r["text"] for r in csv.DictReader(open(out / "predictions_validation.csv", encoding="utf-8"))]
    reloaded = api.Predictor(out).probabilities(texts)
    assert torch.allclose(reloaded, read_probs(out / "predictions_validation.csv")[1], atol=2e-6)


def test_learns_the_toy_task(tiny_model, toy_data, tmp_path):
    cfg = tiny_config(tiny_model, toy_data, "full", max_epochs=8, lr=3e-3, patience=None)
    metrics = api.train(cfg, tmp_path / "run", progress=False)
    assert metrics["validation"]["accuracy"] > 0.6  # chance is 1/6


def test_resume_after_interruption_matches_uninterrupted(tiny_model, toy_data, tmp_path):
    cfg = tiny_config(tiny_model, toy_data, "lora", patience=None)
    api.train(cfg, tmp_path / "straight", progress=False)
    with pytest.raises(Interrupted) as e:
        api.train(cfg, tmp_path / "cut", progress=False, on_step=lambda step: step == 12)
    assert e.value.step == 12 and (tmp_path / "cut" / "checkpoint.safetensors").exists()
    metrics = api.train(cfg, tmp_path / "cut", progress=False)
    assert metrics["train"]["resumed_from_step"] == 12 and metrics["train"]["steps"] == 30
    a, _ = load_tensors(tmp_path / "straight" / "model.safetensors")
    b, _ = load_tensors(tmp_path / "cut" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_early_stopping_and_best_checkpoint(tiny_model, toy_data, tmp_path):
    cfg = tiny_config(tiny_model, toy_data, "full", lr=1e-9, patience=2, max_epochs=20, metric="loss")
    metrics = api.train(cfg, tmp_path / "run", progress=False)
    t = metrics["train"]
    assert t["stopped_early"] and t["steps"] < 20 * 15
    history = read_history(tmp_path / "run")
    best = min(history, key=lambda h: h["validation"]["loss"])
    assert t["best_step"] == best["step"]


def test_refuses_to_clobber_a_finished_run(tiny_model, toy_data, tmp_path):
    cfg = tiny_config(tiny_model, toy_data, "lora", max_steps=3)
    api.train(cfg, tmp_path / "run", progress=False)
    with pytest.raises(RunError, match="finished run"):
        api.train(cfg, tmp_path / "run", progress=False)
    assert api.train(cfg, tmp_path / "run", progress=False, overwrite=True)["completed"]


def test_interrupted_run_with_other_config_is_not_mixed(tiny_model, toy_data, tmp_path):
    cfg = tiny_config(tiny_model, toy_data, "lora")
    with pytest.raises(Interrupted):
        api.train(cfg, tmp_path / "run", progress=False, on_step=lambda s: s == 2)
    cfg.train.seed = 7
    with pytest.raises(RunError, match="different configuration"):
        api.train(cfg, tmp_path / "run", progress=False)


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="peak resets need Linux /proc")
def test_each_run_reports_its_own_peak_memory(tiny_model, toy_data, tmp_path):
    """Runs one after another in one process (grid cells) must not inherit an earlier peak."""
    from emotune.train.metrics import peak_memory_mb

    big = torch.ones(100_000_000)  # 400 MB resident, then freed
    big.add_(1)
    earlier_peak = peak_memory_mb(torch.device("cpu"))
    del big
    m = api.train(tiny_config(tiny_model, toy_data, max_steps=2), tmp_path / "run", progress=False)
    assert m["train"]["peak_memory_mb"] < earlier_peak - 300


def test_balanced_class_weights_follow_the_training_counts():
    w = class_weights("balanced", [0, 0, 0, 1], 3, torch.device("cpu"))
    assert w.tolist() == pytest.approx([4 / 9, 4 / 3, 0.0])  # n / (classes x count); absent class: 0
    assert class_weights(None, [0, 1], 2, torch.device("cpu")) is None
    with pytest.raises(ConfigError, match="balanced"):
        class_weights("inverse", [0, 1], 2, torch.device("cpu"))


def test_class_weights_change_training_and_bad_values_fail_early(tiny_model, tmp_path):
    toy_data = write_emotion_folder(tmp_path / "data", n_train=100)  # 17 or 16 per class: weights differ
    plain = api.train(tiny_config(tiny_model, toy_data, "full", max_steps=4), tmp_path / "plain", progress=False)
    cfg = tiny_config(tiny_model, toy_data, "full", max_steps=4, class_weights="balanced")
    weighted = api.train(cfg, tmp_path / "weighted", progress=False)
    assert weighted["train"]["trainable_params"] == plain["train"]["trainable_params"]
    assert weighted["validation"]["loss"] != plain["validation"]["loss"]
    with pytest.raises(ConfigError, match="class_weights"):
        api.train(tiny_config(tiny_model, toy_data, "full", max_steps=2, class_weights="rare"),
                  tmp_path / "bad", progress=False)
