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
