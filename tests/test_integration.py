"""Real MiniLM on small slices of the real Emotion data: assert real outcomes."""

import json

import pytest

from emotune import api
from emotune.config import RunConfig

pytestmark = pytest.mark.integration


def slice_config(real_data, method: str) -> RunConfig:
    cfg = RunConfig()
    cfg.data.data_dir = str(real_data)
    cfg.data.max_train_samples = 1200
    cfg.data.max_eval_samples = 300
    cfg.method = {"name": method}
    cfg.train.max_epochs = 2
    cfg.train.eval_every = 50
    return cfg


@pytest.mark.parametrize("method", ["lora", "full"])
def test_minilm_beats_the_majority_class(real_data, tmp_path, method):
    out = tmp_path / method
    metrics = api.train(slice_config(real_data, method), out, progress=False)
    val = api.Run.open(out)
    labels = json.loads((out / "labels.json").read_text())
    counts = [metrics["validation"]["per_class"][name]["support"] for name in labels]
    majority = max(counts) / sum(counts)
    assert metrics["validation"]["accuracy"] > majority + 0.1, (metrics["validation"]["accuracy"], majority)
    test = api.evaluate(out, "test")
    assert test["accuracy"] > majority + 0.1
    assert (out / "predictions_test.csv").exists() and "test" in val.metrics
    if method == "lora":
        assert metrics["train"]["trainable_pct"] < 1.0
    # reload: identical predictions to what training wrote
    import csv

    rows = list(csv.DictReader(open(out / "predictions_validation.csv", encoding="utf-8")))
    preds = api.predict(out, [r["text"] for r in rows])
    assert [p["label"] for p in preds] == [r["predicted"] for r in rows]
    if method == "full":  # explanations of a real model point at words that matter
        from emotune.inference.explain import Explainer, faithfulness

        result = faithfulness(Explainer(out), [r["text"] for r in rows[:40]], k=3)
        assert result["texts"] >= 30 and result["share"] > 0.6, result
        assert result["mean_drop_top"] > result["mean_drop_random"]


def test_smollm2_instruction_tuning_lowers_the_validation_loss(real_data, tmp_path):
    """SmolLM2-135M-Instruct + LoRA on a small slice of real instruction data: the answers' validation loss
    falls below the untrained model's, and every task is answered."""
    import torch

    from emotune.data.instruct import instruction_rows, write_instructions
    from emotune.models.causal import build_instruct
    from emotune.tasks.instruct import INSTRUCT
    from emotune.train.evaluate import evaluate_model
    from emotune.train.instruct import encode_rows

    sources = RunConfig.from_dict({"data": {"data_dir": str(real_data)}, "multitask": {"tasks": [
        {"name": "emotion", "data": {"name": "emotion"}}, {"name": "polarity", "data": {"name": "mr"}}]}})
    rows, tasks = instruction_rows(sources, per_task=24, per_task_eval=8)
    folder = write_instructions(rows, tasks, tmp_path / "inst")
    cfg = RunConfig.from_dict({"data": {"name": str(folder)}, "model": {"name": "smollm2"},
                               "method": {"name": "lora"},
                               "train": {"batch_size": 4, "max_steps": 12, "eval_every": 6, "precision": "fp32"}})
    model, tok = build_instruct(cfg.model)
    before, _ = evaluate_model(model, encode_rows(tok, rows["validation"], cfg.data.max_length), [], 16,
                               torch.device("cpu"), tok.pad_token_id, task=INSTRUCT)
    metrics = api.train(cfg, tmp_path / "run", progress=False)
    assert metrics["validation"]["loss"] < before["loss"] - 0.1, (metrics["validation"]["loss"], before["loss"])
    assert set(tasks) <= set(metrics["validation"])
