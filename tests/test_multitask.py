"""Multi-task runs: the config section and its errors, sampling shares, a tiny emotion + regression run that
reloads with identical outputs, uncertainty weighting, curriculum stages resumed mid-stage, and the CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections import Counter

import pytest
import torch
import yaml

from emotune import api
from emotune.config import RunConfig
from emotune.errors import ConfigError, DataError
from emotune.runs import Run
from emotune.tasks import MultiTask, flat_labels, label_sets
from emotune.train.multitask import MixedBatch, MultiTaskTrainer, mixed_counts, sampling_shares

from .conftest import tiny_config
from .test_regression import write_regression_folder


def multitask_config(tiny_model, toy_data, tmp_path, **multitask) -> RunConfig:
    reg = write_regression_folder(tmp_path / "reg")
    cfg = tiny_config(tiny_model, toy_data)
    return cfg.with_values({"multitask.tasks": [
        {"name": "emotion", "data": {"name": "emotion"}},
        {"name": "vad", "data": {"name": str(reg), "target_columns": ["V", "A"]}}],
        **{f"multitask.{k}": v for k, v in multitask.items()}})


@pytest.mark.parametrize("section, message", [
    ({"tasks": [{"name": "a b"}]}, "letters, digits"),
    ({"tasks": [{"name": "x"}, {"name": "x"}]}, "used twice"),
    ({"tasks": [{"name": "x"}], "sampling": "random"}, "multitask.sampling"),
    ({"tasks": [{"name": "x"}], "weighting": "learned"}, "multitask.weighting"),
    ({"tasks": [{"name": "x"}], "stages": [["y"]]}, "unknown task"),
    ({"tasks": [{"name": "x"}, {"name": "y"}], "stages": [["x"]]}, "every task exactly once"),
    ({"tasks": [{"name": "x", "weight": 0}]}, "above 0"),
    ({"tasks": [{"name": "x", "data": {"nme": "emotion"}}]}, "unknown multitask task"),
])
def test_bad_multitask_sections_are_one_line_errors(section, message):
    with pytest.raises(ConfigError, match=message) as e:
        RunConfig.from_dict({"multitask": section})
    assert "\n" not in str(e.value)


def test_config_round_trips_through_yaml(tmp_path):
    cfg = RunConfig.from_dict({"multitask": {"tasks": [{"name": "e", "data": {"name": "emotion"}, "share": 0.5},
                                                       {"name": "v", "data": {"name": "emobank"}}],
                                             "stages": [["e"], ["v"]], "weighting": "uncertainty"}})
    (tmp_path / "c.yaml").write_text(cfg.to_yaml())
    again = RunConfig.from_yaml(tmp_path / "c.yaml")
    assert again.to_dict() == cfg.to_dict() and again.is_multitask and not RunConfig().is_multitask
    assert again.override(["multitask.sampling=round_robin"]).multitask.sampling == "round_robin"


def test_grids_take_a_multitask_base_and_axes():
    from emotune.experiments.grid import Grid
    base = RunConfig.from_dict({"multitask": {"tasks": [{"name": "e", "data": {"name": "emotion"}}]}}).to_dict()
    cells = Grid.from_dict({"base": base, "axes": {"multitask.temperature": [1.0, 5.0]}}).cells
    assert [c.config.multitask.temperature for c in cells] == [1.0, 5.0]
    assert all(c.config.multitask.tasks[0].name == "e" for c in cells)


def test_sampling_shares():
    def shares(sampling, **kw):
        tasks = [{"name": "a", "share": kw.get("a")}, {"name": "b"}, {"name": "c"}]
        cfg = RunConfig.from_dict({"multitask": {"tasks": tasks, "sampling": sampling,
                                                 "temperature": kw.get("t", 2.0)}})
        return sampling_shares(cfg, {"a": 100, "b": 400, "c": 1600})

    assert shares("proportional") == pytest.approx({"a": 100 / 2100, "b": 400 / 2100, "c": 1600 / 2100})
    assert shares("temperature") == pytest.approx({"a": 10 / 70, "b": 20 / 70, "c": 40 / 70})  # sqrt of sizes
    assert shares("round_robin") == pytest.approx({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3})
    assert shares("proportional", a=0.5) == pytest.approx({"a": 0.5, "b": 0.5 * 400 / 2000, "c": 0.5 * 1600 / 2000})
    with pytest.raises(ConfigError, match="add up to 1.2"):
        shares("proportional", a=1.2)


def test_labels_are_flat_task_label_names():
    sets = {"emotion": ["joy", "sadness"], "vad": ["V", "A", "D"]}
    assert flat_labels(sets) == ["emotion:joy", "emotion:sadness", "vad:V", "vad:A", "vad:D"]
    assert label_sets(flat_labels(sets)) == sets


def test_batches_follow_the_shares_and_hold_one_task(tiny_model, toy_data, tmp_path):
    cfg = api.resolve_config(multitask_config(tiny_model, toy_data, tmp_path, sampling="proportional"))
    from emotune.data.encode import Encoded

    train = {"emotion": Encoded([[1, 2]] * 300, [0] * 300), "vad": Encoded([[3]] * 100, [[1.0, 2.0]] * 100)}
    labels = flat_labels({"emotion": ["a"], "vad": ["V", "A"]})
    model = torch.nn.Module()
    model.head = torch.nn.Linear(1, 1)  # nothing trains here: only batches are drawn
    trainer = MultiTaskTrainer(model, train, {}, MultiTask(cfg, labels), cfg, tmp_path / "out", lr=1e-3,
                               warmup_ratio=0.0, progress=False)
    counts = Counter()
    for epoch in range(20):
        for b in trainer.epoch_batches(epoch):
            counts[b.task] += 1
            data = train[b.task]
            assert all(i < len(data) for i in b)
    assert counts["emotion"] / sum(counts.values()) == pytest.approx(0.75, abs=0.03)


def batch_trainer(cfg: RunConfig, tmp_path, emotion: int = 300, vad: int = 100) -> MultiTaskTrainer:
    """A trainer over toy encoded data whose model trains nothing: for drawing batches and computing losses."""
    from emotune.data.encode import Encoded

    train = {"emotion": Encoded([[1, 2]] * emotion, [i % 6 for i in range(emotion)]),
             "vad": Encoded([[3]] * vad, [[1.0 + i % 3, 2.0] for i in range(vad)])}
    labels = flat_labels({"emotion": ["a", "b", "c", "d", "e", "f"], "vad": ["V", "A"]})
    model = torch.nn.Module()
    model.head = torch.nn.Linear(1, 1)
    return MultiTaskTrainer(model, train, {}, MultiTask(cfg, labels), cfg, tmp_path / "out", lr=1e-3,
                            warmup_ratio=0.0, progress=False)


def test_mixed_counts_split_a_batch_evenly_or_by_the_shares():
    gen = torch.Generator().manual_seed(0)
    shares = {"a": 0.5, "b": 0.3, "c": 0.2}
    even = [mixed_counts(shares, 8, step, True, gen) for step in range(3)]
    assert even == [[3, 3, 2], [2, 3, 3], [3, 2, 3]]  # the remainder rows go to each task in turn
    drawn = torch.tensor([mixed_counts(shares, 10, 0, False, gen) for _ in range(2000)], dtype=torch.float64)
    assert (drawn.sum(1) == 10).all()
    assert (drawn.sum(0) / drawn.sum()).tolist() == pytest.approx([0.5, 0.3, 0.2], abs=0.01)


def test_mixed_batches_hold_every_task_and_walk_each_tasks_data(tiny_model, toy_data, tmp_path):
    cfg = api.resolve_config(multitask_config(tiny_model, toy_data, tmp_path, sampling="round_robin", mix=True))
    trainer = batch_trainer(cfg, tmp_path)
    batches = trainer.epoch_batches(0)
    assert len(batches) == trainer.steps_per_epoch == 50  # (300 + 100) rows / batch 8
    assert all(isinstance(b, MixedBatch) and len(b) == 8 for b in batches)
    assert all(Counter(name for name, _ in b) == {"emotion": 4, "vad": 4} for b in batches)
    seen = [i for b in batches for name, i in b if name == "vad"]
    # 200 vad rows from 100 texts: every text twice, once per reshuffle, the first 100 all distinct
    assert sorted(seen[:100]) == list(range(100)) and Counter(seen) == {i: 2 for i in range(100)}
    assert trainer.epoch_batches(0) == batches and trainer.epoch_batches(1) != batches  # seeded per epoch
    halves = [trainer.split(batches[0], 2, i) for i in range(2)]
    assert all(isinstance(h, MixedBatch) for h in halves) and sorted(halves[0] + halves[1]) == sorted(batches[0])
    cfg = api.resolve_config(multitask_config(tiny_model, toy_data, tmp_path, sampling="proportional", mix=True))
    rows = Counter(name for epoch in range(5) for b in batch_trainer(cfg, tmp_path).epoch_batches(epoch)
                   for name, _ in b)
    assert rows["emotion"] / sum(rows.values()) == pytest.approx(0.75, abs=0.03)


def test_a_mixed_batch_loss_weighs_each_tasks_mean_loss_by_its_rows_and_weight(tiny_model, toy_data, tmp_path):
    cfg = multitask_config(tiny_model, toy_data, tmp_path, sampling="round_robin", mix=True)
    cfg.multitask.tasks[0].weight = 3.0
    trainer = batch_trainer(api.resolve_config(cfg), tmp_path)
    batch = MixedBatch([("emotion", 0), ("vad", 5), ("emotion", 7), ("emotion", 2), ("vad", 1)])
    _, targets = trainer.batch_tensors(batch)
    assert targets["emotion"].tolist() == [0, 1, 2] and targets["vad"].tolist() == [[3.0, 2.0], [2.0, 2.0]]
    logits = torch.randn(5, 8)
    emotion = torch.nn.functional.cross_entropy(logits[[0, 2, 3], :6], torch.tensor([0, 1, 2]))
    vad = ((logits[[1, 4], 6:] - targets["vad"]) ** 2 / trainer.part_weights["vad"].reciprocal()).mean()
    assert trainer.loss_of(logits, targets, batch).item() == pytest.approx(3 / 5 * 3.0 * emotion + 2 / 5 * vad,
                                                                           rel=1e-5)


def test_a_mixed_run_trains_with_learned_weights_and_r_drop_and_saves_the_switch(tiny_model, toy_data, tmp_path):
    cfg = multitask_config(tiny_model, toy_data, tmp_path, sampling="round_robin", mix=True, weighting="uncertainty")
    cfg.train.rdrop = 1.0
    m = api.train(cfg, tmp_path / "run", progress=False)
    assert m["completed"] and set(m["validation"]) >= {"score", "emotion", "vad"}
    assert all(w != 1.0 for w in m["train"]["learned_loss_weights"].values())
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["multitask"]["mix"] is True


def test_a_multitask_run_trains_every_head_and_reloads_with_identical_outputs(tiny_model, toy_data, tmp_path):
    cfg = multitask_config(tiny_model, toy_data, tmp_path)
    out = tmp_path / "run"
    m = api.train(cfg, out, progress=False)
    val = m["validation"]
    assert set(val) >= {"score", "emotion", "vad"}
    assert val["score"] == pytest.approx((val["emotion"]["accuracy"] + val["vad"]["pearson"]) / 2)
    assert json.loads((out / "labels.json").read_text()) == {
        "emotion": ["sadness", "joy", "love", "anger", "fear", "surprise"], "vad": ["V", "A"]}
    assert set(json.loads((out / "targets.json").read_text())) == {"vad"}
    assert (out / "predictions_validation_emotion.csv").is_file() and (out / "predictions_validation_vad.csv").is_file()
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert all({"score", "emotion", "vad"} <= set(h["validation"]) for h in history)
    # Reloaded from the folder: the same validation figures, bit for bit.
    again = api.evaluate(out, "validation")
    assert again["score"] == val["score"] and again["vad"]["per_target"] == val["vad"]["per_target"]
    test = api.evaluate(out, "test")
    assert set(test) >= {"emotion", "vad", "score"} and Run.open(out).metrics["test"]["score"] == test["score"]
    rows = api.predict(out, ["i feel happy today", "the film was great overall"])
    assert set(rows[0]["tasks"]) == {"emotion", "vad"}
    assert rows[0]["tasks"]["emotion"]["label"] in json.loads((out / "labels.json").read_text())["emotion"]
    assert set(rows[1]["tasks"]["vad"]["values"]) == {"V", "A"}
    assert sum(rows[0]["tasks"]["emotion"]["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)


def test_uncertainty_weights_are_learned_and_saved(tiny_model, toy_data, tmp_path):
    cfg = multitask_config(tiny_model, toy_data, tmp_path, weighting="uncertainty")
    m = api.train(cfg, tmp_path / "run", progress=False)
    weights = m["train"]["learned_loss_weights"]
    assert set(weights) == {"emotion", "vad"} and all(w != 1.0 for w in weights.values())
    model, _ = Run.open(tmp_path / "run").load_model()
    assert torch.exp(-model.head.log_vars).tolist() == pytest.approx(list(weights.values()), rel=1e-3)


def test_a_curriculum_resumes_mid_stage_and_ends_where_an_uninterrupted_one_does(tiny_model, toy_data, tmp_path):
    cfg = multitask_config(tiny_model, toy_data, tmp_path, stages=[["emotion"], ["vad"]])
    whole = api.train(cfg, tmp_path / "whole", progress=False)
    assert whole["train"]["stages"] == 2
    first = json.loads((tmp_path / "whole" / "stages" / "1" / "history.jsonl").read_text().splitlines()[0])
    assert set(first["validation"]) == {"score", "emotion"}  # stage 1 validates its own task only
    calls = {"n": 0}

    def stop_in_stage_two(step: int) -> bool:
        calls["n"] += 1
        return calls["n"] == 47  # stage 1 has 34 steps (half the budget of 68): this is in stage 2

    from emotune.errors import Interrupted

    with pytest.raises(Interrupted):
        api.train(cfg, tmp_path / "cut", on_step=stop_in_stage_two, progress=False)
    assert (tmp_path / "cut" / "stages" / "2" / "checkpoint.safetensors").is_file()
    resumed = api.train(cfg, tmp_path / "cut", progress=False)
    assert resumed["validation"] == whole["validation"]
    assert not list((tmp_path / "cut").rglob("checkpoint.safetensors"))


def test_tasks_reading_the_same_data_are_refused(tiny_model, toy_data, tmp_path):
    cfg = tiny_config(tiny_model, toy_data).with_values({"multitask.tasks": [
        {"name": "a", "data": {"name": "emotion"}}, {"name": "b", "data": {"name": "emotion"}}]})
    with pytest.raises(DataError, match="tasks 'a' and 'b' read the same data"):
        api.train(cfg, tmp_path / "run", progress=False)


def test_the_cli_trains_a_multitask_config_and_prints_a_table_per_task(tiny_model, toy_data, tmp_path):
    cfg = multitask_config(tiny_model, toy_data, tmp_path)
    (tmp_path / "mt.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    r = subprocess.run([sys.executable, "-m", "emotune.cli", "train", "--config", str(tmp_path / "mt.yaml"), "--out",
                        str(tmp_path / "run"), "--no-progress", "--test"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "run · emotion" in r.stdout and "run · vad" in r.stdout and "score" in r.stdout
    p = subprocess.run([sys.executable, "-m", "emotune.cli", "predict", str(tmp_path / "run"), "i feel happy"],
                       capture_output=True, text=True)
    assert p.returncode == 0 and "emotion" in p.stdout and "V " in p.stdout, p.stderr
    missing = subprocess.run([sys.executable, "-m", "emotune.cli", "train", "--out", str(tmp_path / "x")],
                             capture_output=True, text=True)
    assert missing.returncode != 0 and "name a data set" in missing.stderr


def test_a_multilabel_task_keeps_its_thresholds_and_label_priors(tiny_model, toy_data, tmp_path):
    from .test_multilabel import write_multilabel_folder

    ml = write_multilabel_folder(tmp_path / "ml")
    cfg = tiny_config(tiny_model, toy_data).with_values({"multitask.tasks": [
        {"name": "emotion", "data": {"name": "emotion"}},
        {"name": "feel", "data": {"name": str(ml), "task": "multilabel", "label_column": "labels",
                                  "label_delimiter": ","}}]})
    # A fresh multi-label head starts at its labels' training log-odds; the classification head as built.
    task = MultiTask(cfg, flat_labels({"emotion": ["a", "b"], "feel": ["x", "y"]}))
    head = task.head(4, 4)
    before = head.heads["emotion"].bias.detach().clone()
    task.init_head(head, {"emotion": [0, 1], "feel": [[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]]})
    assert torch.equal(head.heads["emotion"].bias, before)
    assert head.heads["feel"].bias.tolist() == pytest.approx([math.log(0.6 / 0.4), math.log(0.2 / 0.8)], rel=1e-5)

    out = tmp_path / "run"
    m = api.train(cfg, out, progress=False)
    state = json.loads((out / "task_state.json").read_text())
    run = Run.open(out)
    assert set(state["feel"]["thresholds"]) == set(run.task.part("feel").labels)
    assert set(state) == {"feel", "emotion"} and state["emotion"]["calibration"]["how"] == "temperature"
    # The fitted thresholds are what validation, evaluate and predict use.
    again = api.evaluate(out, "validation")["feel"]
    assert [again[k] for k in ("f1_micro", "f1_macro", "jaccard")] == \
        [m["validation"]["feel"][k] for k in ("f1_micro", "f1_macro", "jaccard")]
    pred = api.predict(out, ["today i am happy now"])[0]["tasks"]["feel"]
    thresholds = state["feel"]["thresholds"]
    assert pred["labels"] == [k for k, v in pred["scores"].items() if v >= thresholds[k]]


def test_huber_applies_to_the_regression_tasks_only():
    cfg = RunConfig.from_dict({"multitask": {"tasks": [{"name": "e", "data": {"name": "emotion"}},
                                                       {"name": "v", "data": {"name": "x", "task": "regression"}}]}})
    MultiTask(cfg, ["e:joy", "e:sad", "v:V"]).check_loss("huber")
    only_classes = MultiTask(cfg.with_values({"multitask.tasks": cfg.to_dict()["multitask"]["tasks"][:1]}), ["e:joy"])
    with pytest.raises(ConfigError, match="applies to none of the tasks"):
        only_classes.check_loss("huber")


def test_a_search_optimises_one_task_of_a_multitask_run(tiny_model, toy_data, tmp_path):
    from emotune.experiments.tune import SearchSpace, tune

    base = multitask_config(tiny_model, toy_data, tmp_path).with_values(
        {"train.max_steps": 6, "train.eval_every": 3, "train.patience": None}).to_dict()
    spec = {"base": base, "objective": {"metric": "vad.mae"}, "sampler": {"name": "random", "seed": 0},
            "pruner": "none", "space": {"train.lr": [1e-3, 3e-2]}}
    space = SearchSpace.from_dict(spec)
    # mae: lower is better; checkpoints keep following the run's own metric (a multi-task run's score)
    assert (space.direction, space.base.train.metric) == ("minimize", base["train"]["metric"])
    r = tune(space, tmp_path / "study", trials=2, progress=False)
    maes = [json.loads(p.read_text())["validation"]["vad"]["mae"]
            for p in sorted((tmp_path / "study" / "trials").glob("*/metrics.json"))]
    assert r.complete == 2 and r.best["value"] == pytest.approx(min(maes))
    with pytest.raises(ConfigError, match="not a validation metric"):
        SearchSpace.from_dict({**spec, "objective": {"metric": "vad.nonsense"}})
