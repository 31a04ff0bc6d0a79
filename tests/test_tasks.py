"""The task seam: what is predicted (head, loss, metrics, output format, prediction files) is asked of the run's
task by the loop, evaluation and inference."""

from __future__ import annotations

import csv

import torch

from emotune import api
from emotune.data.encode import Encoded, encode
from emotune.runs import Run, build_model
from emotune.tasks import CLASSIFICATION, HIGHER_IS_BETTER, TASKS, is_better, task_for
from emotune.tasks.classification import Classification
from emotune.train.loop import Trainer

from .conftest import EMOTIONS, tiny_config


def test_classification_is_the_default_task_and_owns_its_metrics():
    assert "classification" in TASKS and task_for(None) is CLASSIFICATION
    assert HIGHER_IS_BETTER["accuracy"] and not HIGHER_IS_BETTER["loss"] and list(HIGHER_IS_BETTER)[-1] == "loss"
    assert is_better("loss", 0.1, 0.2) and not is_better("accuracy", 0.1, 0.2)
    logits = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 0.0]])
    m = CLASSIFICATION.metrics(logits, [0, 1, 1], ["negative", "positive"])
    assert abs(m["accuracy"] - 2 / 3) < 1e-9 and "f1_pn" in m and m["loss"] > 0
    rows = CLASSIFICATION.format(CLASSIFICATION.outputs(logits), ["negative", "positive"])
    assert [r["label"] for r in rows] == ["negative", "positive", "negative"]
    assert abs(sum(rows[0]["probabilities"].values()) - 1) < 1e-6


def test_prediction_files_come_from_the_task(tmp_path):
    path = tmp_path / "p.csv"
    CLASSIFICATION.write_predictions(path, ["a", "b"], [0, 1], torch.tensor([[3.0, 0.0], [3.0, 0.0]]), ["x", "y"])
    rows = list(csv.DictReader(path.open(encoding="utf-8")))
    assert [(r["text"], r["label"], r["predicted"]) for r in rows] == [("a", "x", "x"), ("b", "y", "x")]
    assert float(rows[0]["p_x"]) > 0.9


class Counting(Classification):
    """Classification that counts how often the loop and evaluation ask it."""

    def __init__(self):
        self.calls = {"head": 0, "loss": 0, "metrics": 0}

    def head(self, in_features, num_outputs):
        self.calls["head"] += 1
        return super().head(in_features, num_outputs)

    def loss(self, logits, targets, weight=None, kind=None):
        self.calls["loss"] += 1
        return super().loss(logits, targets, weight, kind)

    def metrics(self, logits, targets, label_names):
        self.calls["metrics"] += 1
        return super().metrics(logits, targets, label_names)


def test_the_loop_and_the_models_ask_the_task(tiny_model, toy_data, tmp_path):
    from emotune.data import load_data
    from emotune.models import build_transformer

    cfg = api.resolve_config(tiny_config(tiny_model, toy_data, "full", max_steps=10))
    task = Counting()
    model, tokenizer = build_transformer(cfg.model, len(EMOTIONS), task)
    assert task.calls["head"] == 1
    data = load_data(cfg.data, cfg.train.seed)
    enc = {s: Encoded(encode(tokenizer, data[s].texts, cfg.data.max_length), data[s].labels)
           for s in ("train", "validation")}
    trainer = Trainer(model, enc["train"], enc["validation"], data.label_names, cfg.train, tmp_path,
                      lr=cfg.train.lr, warmup_ratio=0.0, progress=False, task=task)
    trainer.fit()
    assert task.calls["metrics"] == 2  # evaluations at steps 5 and 10
    assert task.calls["loss"] == 10 + 2  # every training step, and each evaluation's loss


def test_runs_and_predictions_use_the_runs_task(tiny_model, toy_data, tmp_path):
    api.train(tiny_config(tiny_model, toy_data, "lora", max_steps=5), tmp_path / "run", progress=False)
    run = Run.open(tmp_path / "run")
    assert run.task is CLASSIFICATION
    model, _, _ = build_model(run.config, len(run.labels))
    assert isinstance(model.head, torch.nn.Linear) and model.head.out_features == len(EMOTIONS)
    p = api.predict(tmp_path / "run", ["i feel happy"])[0]
    assert p["text"] == "i feel happy" and set(p["probabilities"]) == set(EMOTIONS)
