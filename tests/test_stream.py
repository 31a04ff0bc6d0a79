"""Online-LoRA on a stream (`emotune stream`): the plateau detector on synthetic loss curves, merge and restart
keeping predictions, the MAS penalty, the streams' label maps, the continual-learning metrics, and tiny end-to-end
runs of each strategy, interrupted and resumed."""

from __future__ import annotations

import copy
import json
import math
import os
import random
import signal

import pytest
import torch
import yaml
from typer.testing import CliRunner

from emotune.data.encode import encode
from emotune.errors import ConfigError, DataError, RunError
from emotune.runs import build_model
from emotune.train.online import (ImportanceRegulariser, OnlineLearner, OnlineSettings, PlateauDetector,
                                  mas_importance)
from emotune.workflows.stream import (DOMAIN_MAPS, SHARED_LABELS, STREAM_CHECKPOINT, STREAM_METRICS, STREAM_STEPS,
                                      STREAM_TABLE, StreamConfig, StreamRun, class_incremental, continual_metrics,
                                      domain_drift, match_plateaus, run_stream)

from .conftest import EMOTIONS, WORDS, tiny_config, write_emotion_folder
from .test_lab_data import tweets, write_mr, write_semeval


def plateaus(losses: list[float], **kw) -> list[int]:
    """The 1-based steps at which a detector fed ``losses`` reports a plateau."""
    d = PlateauDetector(**{"window": 5, "mean_threshold": 1.0, "variance_threshold": 0.01, **kw})
    return [i for i, x in enumerate(losses, start=1) if d.update(x)]


# ---- the plateau detector --------------------------------------------------------------------------------
def test_a_flat_curve_is_a_plateau_once_the_window_is_full():
    rng = random.Random(0)
    assert plateaus([0.5 + rng.uniform(-0.02, 0.02) for _ in range(30)])[0] == 5
    assert plateaus([0.5] * 30) == [5]  # once: the next one needs a new peak first


def test_decreasing_and_noisy_curves_are_no_plateau():
    assert plateaus([0.95 - 0.08 * i for i in range(12)]) == []  # still learning: variance 2 x 0.08^2 > 0.01
    rng = random.Random(1)
    noisy = [0.5 + rng.choice([-1, 1]) * rng.uniform(0.2, 0.4) for _ in range(50)]
    assert plateaus(noisy) == []  # noisy: every window's variance is above 0.01


def test_the_thresholds_are_respected():
    flat = [2.0] * 10
    assert plateaus(flat) == []  # mean 2.0, above the mean threshold 1.0
    assert plateaus(flat, mean_threshold=2.5) == [5]
    wobble = [0.5 + (0.15 if i % 2 else -0.15) for i in range(10)]  # variance 0.0225 (0.0216 over 5 values)
    assert plateaus(wobble, variance_threshold=0.02) == []
    assert plateaus(wobble, variance_threshold=0.03) == [5]


def test_a_new_peak_rearms_the_detector():
    """The official rule: after a plateau at (m, v), the next needs the window mean above m + sqrt(v) first."""
    curve = [0.5] * 10 + [2.0] * 3 + [0.3] * 10  # a shift of the data, then a new plateau
    found = plateaus(curve, mean_threshold=1.0)
    assert found[0] == 5 and len(found) == 2 and found[1] >= 18  # the window holds only the new losses by then
    wobble = [0.45, 0.55] * 5  # the plateau at step 5: mean 0.49, standard deviation 0.049
    assert plateaus(wobble + [0.47, 0.57] * 5) == [5]  # a rise within a standard deviation is no new peak
    assert plateaus(wobble + [0.6] * 10) == [5, 12]  # step 12: the window mean 0.55 is above 0.49 + 0.049


# ---- the continual-learning metrics --------------------------------------------------------------------------
def test_continual_metrics_follow_the_standard_definitions():
    acc = [[0.8], [0.6, 0.9], [0.7, 0.5, 0.95]]
    m = continual_metrics(acc)
    assert m["final_average_accuracy"] == pytest.approx((0.7 + 0.5 + 0.95) / 3)
    assert m["bwt"] == pytest.approx(((0.7 - 0.8) + (0.5 - 0.9)) / 2)
    assert m["forgetting"] == pytest.approx(((0.8 - 0.7) + (0.9 - 0.5)) / 2)  # max previous - final
    assert continual_metrics([[0.5]])["bwt"] is None and continual_metrics([])["forgetting"] is None


def test_plateaus_are_matched_to_boundaries_within_the_tolerance():
    m = match_plateaus([5, 43, 90], [40, 80], tolerance=10)
    assert m["matched"] == 1 and m["delays"] == [3, None]


# ---- merge and restart, the regulariser ---------------------------------------------------------------------
@pytest.fixture()
def learner_parts(tiny_model, tmp_path):
    data = write_emotion_folder(tmp_path / "data", n_train=48, n_eval=12)
    cfg = tiny_config(tiny_model, data)
    cfg.method = {"name": "lora", "r": 4}
    model, tokenizer, _ = build_model(cfg, len(EMOTIONS))
    lines = (data / "emotion" / "train.txt").read_text().splitlines()
    texts = [line.rpartition(";")[0] for line in lines]
    labels = [EMOTIONS.index(line.rpartition(";")[2]) for line in lines]
    return model, cfg.method, encode(tokenizer, texts, 32), labels


def test_merge_and_restart_keeps_the_predictions(learner_parts):
    model, method, ids, labels = learner_parts
    learner = OnlineLearner(model, method, OnlineSettings(lr=5e-2, hard_buffer=4), torch.device("cpu"))
    for i in range(0, 40, 8):  # the adapter moves away from its start (B != 0)
        learner.step(ids[i:i + 8], labels[i:i + 8])
    lora_b = {n: p for n, p in learner.model.named_parameters() if "lora_B" in n}
    assert any(p.abs().max() > 0 for p in lora_b.values())
    base = {n: p.detach().clone() for n, p in learner.model.named_parameters() if n.endswith("query.base_layer.weight")}
    earlier = ids[:40]
    before = learner.logits(earlier)
    record = learner.merge_and_restart(check=ids[40:])
    after = learner.logits(earlier)
    assert (after - before).abs().max() <= 1e-5 and record["max_logit_change"] <= 1e-5
    params = dict(learner.model.named_parameters())
    assert all(params[n].abs().max() == 0 for n in lora_b)  # a fresh adapter: B = 0 ...
    assert all(params[n].requires_grad for n in lora_b)
    assert any(not torch.equal(params[n], base[n]) for n in base)  # ... the old one folded into the frozen base
    assert not any(params[n].requires_grad for n in base)
    assert learner.regulariser.updates == 1 and learner.regulariser.penalty(learner.regularised()) == 0
    learner.step(ids[40:48], labels[40:48])  # training goes on with the fresh adapter
    assert learner.regulariser.penalty(learner.regularised()) > 0


def test_without_hard_loss_the_buffer_only_ranks_and_the_batch_still_trains(learner_parts):
    model, method, ids, labels = learner_parts
    learner = OnlineLearner(model, method, OnlineSettings(lr=5e-2, hard_buffer=4, hard_loss=False),
                            torch.device("cpu"))
    before = {n: p.detach().clone() for n, p in learner.trainable().items()}
    for i in range(0, 24, 8):
        learner.step(ids[i:i + 8], labels[i:i + 8])
    assert len(learner.buffer) == 4  # kept for the importances
    assert any(not torch.equal(p, before[n]) for n, p in learner.trainable().items())


def test_the_labels_trick_leaves_the_classes_a_batch_does_not_show_alone(learner_parts):
    model, method, all_ids, all_labels = learner_parts
    pick = [i for i, y in enumerate(all_labels) if y in (0, 1)][:8]  # a batch of two classes out of six
    ids, labels = [all_ids[i] for i in pick], [all_labels[i] for i in pick]
    shown = [0, 1]
    learner = OnlineLearner(model, method, OnlineSettings(lr=5e-2, hard_buffer=0, labels_trick=True),
                            torch.device("cpu"))
    learner._losses(ids, labels).mean().backward()
    head = next(p for n, p in learner.model.named_parameters() if n.startswith("head.") and n.endswith("weight"))
    grad = head.grad
    unseen = [c for c in range(len(EMOTIONS)) if c not in shown]
    assert grad[unseen].abs().max() == 0 and grad[shown].abs().max() > 0  # only the shown classes' rows move
    plain = OnlineLearner(model, method, OnlineSettings(lr=5e-2, hard_buffer=0), torch.device("cpu"))
    restricted = torch.nn.functional.cross_entropy(plain.logits(ids)[:, shown], torch.tensor(labels), reduction="none")
    learner.model.eval()
    assert torch.allclose(learner._losses(ids, labels).detach(), restricted, atol=1e-5)  # a softmax over them only


def test_the_mas_penalty_is_zero_at_the_anchor_and_grows_with_the_distance(learner_parts):
    model, method, ids, labels = learner_parts
    learner = OnlineLearner(model, method, OnlineSettings(lr=5e-2, reg_scope="trainable"), torch.device("cpu"))
    params = learner.regularised()
    assert any("lora_A" in n for n in params) and any(n.startswith("head.") for n in params)
    omega = mas_importance(learner.model, params, ids[:6], torch.device("cpu"))
    assert all((t >= 0).all() for t in omega.values()) and sum(float(t.sum()) for t in omega.values()) > 0
    assert all(p.grad is None for p in learner.model.parameters())  # gradients left cleared
    reg = ImportanceRegulariser(weight=0.5)
    reg.accumulate(omega)
    assert float(torch.cat([t.flatten() for t in reg.omega.values()]).mean()) == pytest.approx(1.0)
    reg.anchor_at(params)
    assert float(reg.penalty(params).detach()) == 0.0
    direction = {n: torch.randn_like(p) for n, p in params.items()}
    values = []
    for eps in (1e-3, 2e-3, 4e-3):
        moved = {n: p.detach() + eps * direction[n] for n, p in params.items()}
        values.append(float(reg.penalty(moved)))
    assert 0 < values[0] < values[1] < values[2]
    assert values[1] / values[0] == pytest.approx(4, rel=1e-3)  # quadratic in the distance
    expected = 0.5 * sum(float((reg.omega[n] * (1e-3 * direction[n]) ** 2).sum()) for n in params)
    assert values[0] == pytest.approx(expected, rel=1e-4)
    reg.accumulate({n: 3 * t for n, t in omega.items()})  # a second estimate: the running average (1/2 each)
    assert reg.updates == 2 and all(torch.allclose(reg.omega[n], omega[n] / omega_mean(omega)) for n in omega)


def test_the_head_penalty_anchors_the_head_with_importances_of_its_own(learner_parts):
    model, method, ids, labels = learner_parts
    learner = OnlineLearner(model, method, OnlineSettings(lr=5e-2, hard_buffer=4, head_reg_weight=2.0),
                            torch.device("cpu"))
    head = learner.head()
    assert head and all(n.startswith("head.") for n in head)
    assert not set(head) & set(learner.regularised())  # the adapter's penalty leaves the head alone
    for i in range(0, 24, 8):
        learner.step(ids[i:i + 8], labels[i:i + 8])
    learner.merge_and_restart(check=ids[24:32])
    for reg, params in ((learner.regulariser, learner.regularised()), (learner.head_regulariser, learner.head())):
        assert set(reg.omega) == set(params) and reg.updates == 1  # each normalised to mean 1 apart
        assert float(torch.cat([t.flatten() for t in reg.omega.values()]).mean()) == pytest.approx(1.0)
    assert float(learner.head_regulariser.penalty(learner.head()).detach()) == 0.0  # anchored at the plateau
    record = learner.step(ids[24:32], labels[24:32])
    assert record["penalty"] == 0.0  # measured before the update, at the anchors
    moved = float(learner.head_regulariser.penalty(learner.head()).detach())
    assert moved > 0
    expected = 2.0 * sum(float((learner.head_regulariser.omega[n] * (p.detach() - learner.head_regulariser.anchor[n])
                                ** 2).sum()) for n, p in learner.head().items())
    assert moved == pytest.approx(expected, rel=1e-5)  # weighed by head_reg_weight
    adapter = float(learner.regulariser.penalty(learner.regularised()).detach())
    record = learner.step(ids[32:40], labels[32:40])
    assert record["penalty"] == pytest.approx(adapter + moved, rel=1e-5)  # the step's penalty: the sum of the two
    with pytest.raises(ConfigError, match="head_reg_weight needs reg_scope adapter"):
        OnlineSettings(lr=1e-3, reg_scope="trainable", head_reg_weight=1.0)


def test_the_reservoir_is_a_uniform_sample_of_everything_seen(learner_parts):
    """Algorithm R: capacity kept, every example equally likely to be in it, whatever its place in the stream."""
    model, method, _, _ = learner_parts
    learner = OnlineLearner(model, method, OnlineSettings(lr=5e-2, replay=50), torch.device("cpu"))
    early = []
    for seed in range(200):
        learner.reservoir, learner.seen, learner.rng = [], 0, random.Random(seed)
        for start in range(0, 900, 16):  # 900 examples in batches, "token ids" that name their position
            stop = min(start + 16, 900)
            learner.remember([[i] for i in range(start, stop)], [0] * (stop - start))
        assert len(learner.reservoir) == 50 and learner.seen == 900
        assert len({x[0] for x, _ in learner.reservoir}) == 50
        early.append(sum(x[0] < 300 for x, _ in learner.reservoir) / 50)
    assert sum(early) / len(early) == pytest.approx(1 / 3, abs=0.02)  # the first third keeps its share


def test_replay_trains_on_examples_drawn_from_the_reservoir(learner_parts, monkeypatch):
    model, method, ids, labels = learner_parts
    learner = OnlineLearner(model, method, OnlineSettings(lr=5e-2, hard_buffer=0, replay=6, replay_batch=4),
                            torch.device("cpu"))
    passes = []
    losses = OnlineLearner._losses

    def spy(self, batch, targets):
        passes.append([tuple(x) for x in batch])
        return losses(self, batch, targets)

    monkeypatch.setattr(OnlineLearner, "_losses", spy)
    learner.step(ids[:8], labels[:8])
    assert len(passes) == 1 and len(learner.reservoir) == 6  # nothing to replay yet; then 6 of the first 8 kept
    kept = [tuple(x) for x, _ in learner.reservoir]
    learner.step(ids[8:16], labels[8:16])
    assert len(passes) == 3 and passes[1] == [tuple(x) for x in ids[8:16]]
    assert len(passes[2]) == 4 and set(passes[2]) <= set(kept)  # drawn from what the reservoir held
    assert learner.seen == 16 and len(learner.reservoir) == 6
    naive = OnlineLearner(copy.deepcopy(model), method, OnlineSettings(lr=5e-2, hard_buffer=0), torch.device("cpu"))
    naive.step(ids[:8], labels[:8])
    assert naive.reservoir == [] and naive.seen == 0  # off by default


def test_a_fresh_learner_takes_the_state_of_one_that_merged(learner_parts):
    """After merge and restart the modules are the same (a fresh adapter on the merged base): a learner built
    afresh takes the state, JSON values included, and its next step is the same as the original's."""
    model, method, ids, labels = learner_parts
    fresh = copy.deepcopy(model)  # as built, before any training
    settings = OnlineSettings(lr=5e-2, hard_buffer=4, head_reg_weight=1.0, replay=6, replay_batch=4)
    learner = OnlineLearner(model, method, settings, torch.device("cpu"))
    for i in range(0, 24, 8):
        learner.step(ids[i:i + 8], labels[i:i + 8])
    learner.merge_and_restart(check=ids[24:32])
    learner.step(ids[24:32], labels[24:32])
    tensors, values = learner.state()
    resumed = OnlineLearner(fresh, method, settings, torch.device("cpu"))
    resumed.load_state({k: v.clone() for k, v in tensors.items()}, json.loads(json.dumps(values)))
    mine, theirs = learner.model.state_dict(), resumed.model.state_dict()
    assert list(mine) == list(theirs) and all(torch.equal(mine[k], theirs[k]) for k in mine)  # merged base too
    assert resumed.regulariser.omega and resumed.buffer == learner.buffer and resumed.merges == learner.merges
    assert resumed.head_regulariser.updates == learner.head_regulariser.updates
    assert resumed.reservoir == learner.reservoir and resumed.seen == learner.seen == 32
    assert resumed.rng.getstate() == learner.rng.getstate()  # the same replay draws next
    assert all(torch.equal(t, resumed.head_regulariser.anchor[n]) for n, t in learner.head_regulariser.anchor.items())
    rng = torch.get_rng_state()
    expected = learner.step(ids[32:40], labels[32:40])
    torch.set_rng_state(rng)  # the same dropout masks
    assert resumed.step(ids[32:40], labels[32:40]) == expected and expected["penalty"] > 0
    assert all(torch.equal(p, resumed.trainable()[n]) for n, p in learner.trainable().items())


def omega_mean(omega: dict) -> torch.Tensor:
    return torch.cat([t.flatten() for t in omega.values()]).mean()


# ---- the streams ---------------------------------------------------------------------------------------------
@pytest.fixture()
def drift_data(tmp_path):
    root = tmp_path / "data"
    write_mr(root)
    write_semeval(root, {"a.tsv": tweets(0, 60)}, {"dev.tsv": tweets(200, 30)})
    write_emotion_folder(root, n_train=120, n_eval=36)
    return root


def test_the_domain_drift_stream_maps_every_domain_onto_shared_labels(drift_data):
    cfg = StreamConfig(segment_size=[30, 24, 36], eval_size=12, data_dir=str(drift_data))
    stream = domain_drift(cfg)
    assert stream.label_names == SHARED_LABELS
    assert [s.name for s in stream.segments] == ["mr", "semeval2017a", "emotion"]
    assert [len(s.train) for s in stream.segments] == [30, 24, 36] and all(len(s.eval) == 12 for s in stream.segments)
    mr, semeval, emotion = stream.segments
    for text, y in zip(mr.train.texts, mr.train.labels):
        assert SHARED_LABELS[y] == ("positive" if text.startswith("pos") else "negative")
    raw = {f"tweet number {i}": ["negative", "neutral", "positive"][i % 3] for i in range(300)}
    for text, y in zip(semeval.train.texts + semeval.eval.texts, semeval.train.labels + semeval.eval.labels):
        assert SHARED_LABELS[y] == DOMAIN_MAPS["semeval2017a"][raw[text]]
    assert {SHARED_LABELS[y] for y in semeval.train.labels} == {"positive", "negative", "other"}
    words = {w: label for label, ws in WORDS.items() for w in ws.split()}
    for text, y in zip(emotion.train.texts, emotion.train.labels):
        assert SHARED_LABELS[y] == DOMAIN_MAPS["emotion"][words[text.split()[2]]]
    again = domain_drift(cfg)
    assert again.segments[0].train.texts == mr.train.texts  # seeded
    with pytest.raises(DataError, match="fewer than the segment's 100"):
        domain_drift(StreamConfig(segment_size=100, eval_size=12, data_dir=str(drift_data)))


def test_a_domain_without_a_test_split_has_its_test_examples_carved_from_train(drift_data):
    stream = domain_drift(StreamConfig(segment_size=[30, 24, 36], eval_size=12, eval_split="test",
                                       data_dir=str(drift_data)))
    semeval = stream.segments[1]  # SemEval-2017 4A here: train and dev, no test
    dev = {f"tweet number {i}" for i in range(200, 230)}
    assert len(semeval.eval) == 12 and not set(semeval.eval.texts) & (set(semeval.train.texts) | dev)
    assert [len(seg.eval) for seg in stream.segments] == [12, 12, 12]  # MR and Emotion: their own test splits


def test_the_class_incremental_stream_brings_classes_in_groups(tmp_path):
    root = write_emotion_folder(tmp_path / "data", n_train=120, n_eval=36)
    stream = class_incremental(StreamConfig(kind="class-incremental", segment_size=20, eval_size=8,
                                            data_dir=str(root)))
    assert stream.label_names == EMOTIONS  # the head has every output from the start
    assert [s.name for s in stream.segments] == ["sadness+joy", "love+anger", "fear+surprise"]
    for seg, group in zip(stream.segments, [["sadness", "joy"], ["love", "anger"], ["fear", "surprise"]]):
        assert {EMOTIONS[y] for y in seg.train.labels} == set(group) and len(seg.train) == 20
        assert {EMOTIONS[y] for y in seg.eval.labels} <= set(group) and len(seg.eval) == 8


def test_the_held_out_examples_come_from_the_split_asked_for(tmp_path):
    root = write_emotion_folder(tmp_path / "data", n_train=120, n_eval=36)
    test_file = root / "emotion" / "test.txt"  # test texts told apart from validation ones by a marker word
    test_file.write_text("".join(f"marked {line}\n" for line in test_file.read_text().splitlines()))
    for split in ("validation", "test"):
        stream = class_incremental(StreamConfig(kind="class-incremental", segment_size=20, eval_size=8,
                                                eval_split=split, data_dir=str(root)))
        marked = [t.startswith("marked ") for seg in stream.segments for t in seg.eval.texts]
        assert all(marked) if split == "test" else not any(marked)
    with pytest.raises(ConfigError, match="eval_split"):
        StreamConfig(eval_split="train")


# ---- end to end ----------------------------------------------------------------------------------------------
def stream_config(tmp_path, tiny_model, method: dict | None = None, **stream) -> object:
    spec = {"stream": {"kind": "class-incremental", "segment_size": 24, "eval_size": 12, "batch_size": 8, "window": 2,
                       "mean_threshold": 10.0, "variance_threshold": 10.0, "hard_buffer": 4,
                       "boundary_tolerance": 2, **stream},
            "model": {"name": tiny_model}, "method": method or {"name": "lora", "r": 4},
            "train": {"precision": "fp32", "lr": 5e-3}}
    path = tmp_path / "stream.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize("strategy", ["online-lora", "naive", "joint"])
def test_emotune_stream_writes_its_metrics(strategy, tiny_model, tmp_path):
    from emotune.cli import app

    data = write_emotion_folder(tmp_path / "data", n_train=120, n_eval=36)
    out = tmp_path / strategy
    r = CliRunner().invoke(app, ["stream", str(stream_config(tmp_path, tiny_model)), "--out", str(out), "--strategy",
                                 strategy, "--data-dir", str(data)])
    assert r.exit_code == 0, r.output
    assert "final average accuracy" in r.output and "love+anger" in r.output
    m = json.loads((out / STREAM_METRICS).read_text())
    assert m["completed"] and m["strategy"] == strategy and m["steps"] == m["steps_done"] == 9
    assert [len(row) for row in m["accuracy"]] == [1, 2, 3] and all(0 <= a <= 1 for row in m["accuracy"] for a in row)
    assert m["final_average_accuracy"] == pytest.approx(sum(m["accuracy"][-1]) / 3)
    assert m["bwt"] is not None and m["forgetting"] is not None and m["time"]["wall_s"] > 0
    assert [(s["first_step"], s["last_step"]) for s in m["stream"]["segments"]] == [(1, 3), (4, 6), (7, 9)]
    steps = [json.loads(line) for line in (out / STREAM_STEPS).read_text().splitlines()]
    assert [s["step"] for s in steps] == list(range(1, 10)) and all(math.isfinite(s["loss"]) for s in steps)
    assert m["plateaus"]["steps"] == [s["step"] for s in steps if s["plateau"]] and m["plateaus"]["steps"]
    if strategy == "online-lora":  # every plateau merged, predictions kept
        assert len(m["plateaus"]["merges"]) == len(m["plateaus"]["steps"])
        assert all(x["max_logit_change"] <= 1e-5 for x in m["plateaus"]["merges"])
    else:
        assert m["plateaus"]["merges"] == []
    assert m["plateaus"]["boundaries"] == ([] if strategy == "joint" else [4, 7])
    assert "| after segment |" in (out / STREAM_TABLE).read_text()
    assert not (out / STREAM_CHECKPOINT).exists()  # a finished stream has nothing to resume
    r = CliRunner().invoke(app, ["stream", str(stream_config(tmp_path, tiny_model)), "--out", str(out)])
    assert r.exit_code == 2 and "--overwrite" in r.output and len(r.output.strip().splitlines()) == 1


def test_a_domain_drift_stream_runs_from_the_library(drift_data, tiny_model, tmp_path):
    cfg = StreamRun.from_yaml(stream_config(tmp_path, tiny_model, kind="domain-drift", segment_size=[16, 16, 16],
                                            eval_size=6, data_dir=str(drift_data)))
    seen = []
    m = run_stream(cfg, tmp_path / "drift", echo=seen.append)
    assert m["completed"] and [s["name"] for s in m["stream"]["segments"]] == ["mr", "semeval2017a", "emotion"]
    assert m["stream"]["labels"]["emotion"]["surprise"] == "other" and len(seen) == 3
    assert m["plateaus"]["boundaries"] == [3, 5]


@pytest.mark.parametrize("settings, message", [
    (["--set", "stream.window=1"], "stream.window must be at least 2"),
    (["--set", "stream.kind=topics"], "unknown stream 'topics'"),
    (["--strategy", "replay"], "unknown strategy 'replay'"),
    (["--set", "stream.bogus=1"], "unknown stream option(s): bogus"),
    (["--set", "stream.segment_size=[8, 8]"], "lists 2 sizes for a stream of 3 segments"),
    (["--set", "stream.groups=[[joy], [joy]]"], "at most once"),
    (["--set", "stream.domains=[imdb]"], "no label map for imdb"),
    ("full", "method full has no adapter that folds"),
    (["--set", "stream.reg_scope=head"], "stream.reg_scope must be one of adapter, trainable"),
    (["--set", "stream.reg_scope=trainable", "--set", "stream.head_reg_weight=1"], "needs stream.reg_scope adapter"),
    (["--set", "stream.replay=-5"], "stream.replay must be at least 0"),
])
def test_a_bad_config_is_a_one_line_error(settings, message, tiny_model, tmp_path):
    from emotune.cli import app

    data = write_emotion_folder(tmp_path / "data", n_train=60, n_eval=12)
    method = {"name": settings} if isinstance(settings, str) else None
    config = stream_config(tmp_path, tiny_model, method=method)
    r = CliRunner().invoke(app, ["stream", str(config), "--out", str(tmp_path / "x"), "--data-dir", str(data),
                                 *(settings if method is None else [])])
    assert r.exit_code == 2, r.output
    assert message in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_a_data_section_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="remove the data section"):
        StreamRun.from_dict({"data": {"name": "emotion"}})


def test_an_interrupted_stream_keeps_its_finished_segments(tiny_model, tmp_path, monkeypatch):
    data = write_emotion_folder(tmp_path / "data", n_train=120, n_eval=36)
    cfg = StreamRun.from_yaml(stream_config(tmp_path, tiny_model, data_dir=str(data)))
    step = OnlineLearner.step

    def stop_at_step_five(self, ids, labels):
        if self.step_count == 4:  # Ctrl-C during the second segment
            raise KeyboardInterrupt
        return step(self, ids, labels)

    monkeypatch.setattr(OnlineLearner, "step", stop_at_step_five)
    with pytest.raises(RunError, match="interrupted at step 4"):
        run_stream(cfg, tmp_path / "cut")
    m = json.loads((tmp_path / "cut" / STREAM_METRICS).read_text())
    assert m["status"] == "interrupted" and not m["completed"] and len(m["accuracy"]) == 1 and m["steps_done"] == 4
    assert (tmp_path / "cut" / STREAM_CHECKPOINT).is_file()  # the first segment's end
    monkeypatch.setattr(OnlineLearner, "step", step)
    m = run_stream(cfg, tmp_path / "cut")  # resumed, no --overwrite
    assert m["completed"] and m["resumed_from_step"] == 3 and not (tmp_path / "cut" / STREAM_CHECKPOINT).exists()


def test_sigterm_saves_the_step_it_arrives_in_and_the_stream_resumes_there(tiny_model, tmp_path, monkeypatch):
    data = write_emotion_folder(tmp_path / "data", n_train=120, n_eval=36)
    cfg = StreamRun.from_yaml(stream_config(tmp_path, tiny_model, data_dir=str(data)))
    step = OnlineLearner.step

    def terminated_in_step_five(self, ids, labels):
        record = step(self, ids, labels)
        if self.step_count == 5:  # between the checkpoints at segment ends (steps 3 and 6)
            os.kill(os.getpid(), signal.SIGTERM)
        return record

    monkeypatch.setattr(OnlineLearner, "step", terminated_in_step_five)
    with pytest.raises(RunError, match="resume from its checkpoint at step 5"):
        run_stream(cfg, tmp_path / "cut")
    assert json.loads((tmp_path / "cut" / STREAM_METRICS).read_text())["status"] == "interrupted"
    monkeypatch.setattr(OnlineLearner, "step", step)
    m = run_stream(cfg, tmp_path / "cut")
    assert m["completed"] and m["resumed_from_step"] == 5 and m["steps_done"] == 9


def cut_before(monkeypatch, step_number: int):
    """Make ``OnlineLearner.step`` raise KeyboardInterrupt (Ctrl-C) as step ``step_number`` begins; returns the
    real step."""
    step = OnlineLearner.step

    def cut(self, ids, labels):
        if self.step_count == step_number - 1:
            raise KeyboardInterrupt
        return step(self, ids, labels)

    monkeypatch.setattr(OnlineLearner, "step", cut)
    return step


def outputs(out) -> tuple[dict, list[dict]]:
    return (json.loads((out / STREAM_METRICS).read_text()),
            [json.loads(line) for line in (out / STREAM_STEPS).read_text().splitlines()])


@pytest.mark.parametrize("strategy, every, cut, resumed_from", [("online-lora", 2, 6, 4), ("naive", 0, 5, 3)])
def test_a_resumed_stream_ends_as_an_uninterrupted_one(strategy, every, cut, resumed_from, tiny_model, tmp_path,
                                                       monkeypatch):
    data = write_emotion_folder(tmp_path / "data", n_train=120, n_eval=36)
    cfg = StreamRun.from_yaml(stream_config(tmp_path, tiny_model, data_dir=str(data), strategy=strategy,
                                            checkpoint_every=every, replay=10, replay_batch=4))
    whole, whole_steps = run_stream(cfg, tmp_path / "whole"), outputs(tmp_path / "whole")[1]
    step = cut_before(monkeypatch, cut)
    with pytest.raises(RunError, match=f"interrupted at step {cut - 1}.*checkpoint at step {resumed_from}"):
        run_stream(cfg, tmp_path / "cut")
    assert (tmp_path / "cut" / STREAM_CHECKPOINT).is_file()
    monkeypatch.setattr(OnlineLearner, "step", step)
    m = run_stream(cfg, tmp_path / "cut")
    assert m["completed"] and m["resumed_from_step"] == resumed_from
    assert not (tmp_path / "cut" / STREAM_CHECKPOINT).exists()
    written, steps = outputs(tmp_path / "cut")
    assert written["accuracy"] == m["accuracy"]
    for row, expected in zip(written["accuracy"], whole["accuracy"], strict=True):
        assert row == pytest.approx(expected, abs=1e-6)
    assert [(s["step"], s["plateau"]) for s in steps] == [(s["step"], s["plateau"]) for s in whole_steps]
    for s, expected in zip(steps, whole_steps):  # the same batches, dropout masks and fresh adapters
        for key in ("loss", "window_mean", "window_variance", "penalty"):
            assert s[key] == pytest.approx(expected[key], abs=1e-6), (s["step"], key)
    assert written["plateaus"]["steps"] == whole["plateaus"]["steps"]
    merges = written["plateaus"]["merges"]
    assert [x["step"] for x in merges] == [x["step"] for x in whole["plateaus"]["merges"]]
    if strategy == "online-lora":  # the checkpoint held merged base weights
        assert any(x["step"] <= resumed_from for x in merges)
    else:
        assert merges == []


def test_a_changed_config_is_refused_and_overwrite_starts_afresh(tiny_model, tmp_path, monkeypatch):
    from emotune.cli import app

    data = write_emotion_folder(tmp_path / "data", n_train=120, n_eval=36)
    args = ["stream", str(stream_config(tmp_path, tiny_model)), "--out", str(tmp_path / "cut"), "--data-dir",
            str(data)]
    step = cut_before(monkeypatch, 5)
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2 and "checkpoint at step 3" in r.output, r.output
    monkeypatch.setattr(OnlineLearner, "step", step)
    r = CliRunner().invoke(app, [*args, "--set", "stream.window=3"])
    assert r.exit_code == 2 and "different configuration" in r.output and "--overwrite" in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1 and (tmp_path / "cut" / STREAM_CHECKPOINT).is_file()
    r = CliRunner().invoke(app, [*args, "--set", "stream.window=3", "--overwrite"])
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "cut" / STREAM_METRICS).read_text())
    assert m["completed"] and m["resumed_from_step"] is None and m["config"]["stream"]["window"] == 3
    assert not (tmp_path / "cut" / STREAM_CHECKPOINT).exists()


def test_a_stream_whose_texts_changed_is_not_resumed(tiny_model, tmp_path, monkeypatch):
    """Same sizes, labels and config, other texts: the checkpoint's learner saw other data, so resuming is refused
    in one line (the data's fingerprint is part of the stream's description)."""
    data = write_emotion_folder(tmp_path / "data", n_train=120, n_eval=36)
    cfg = StreamRun.from_yaml(stream_config(tmp_path, tiny_model, data_dir=str(data)))
    step = cut_before(monkeypatch, 5)
    with pytest.raises(RunError, match="checkpoint at step 3"):
        run_stream(cfg, tmp_path / "cut")
    monkeypatch.setattr(OnlineLearner, "step", step)
    write_emotion_folder(tmp_path / "data", n_train=120, n_eval=36, seed=1)  # the same shape, other words
    with pytest.raises(RunError, match="built from other data") as e:
        run_stream(cfg, tmp_path / "cut")
    assert "\n" not in str(e.value) and (tmp_path / "cut" / STREAM_CHECKPOINT).is_file()
