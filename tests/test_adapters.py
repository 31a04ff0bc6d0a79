"""Many adapters on one base (emotune.inference.adapters.AdapterSet) and its memory benchmark, on tiny random BERT
LoRA runs trained for a few steps (once for the module)."""

from __future__ import annotations

import importlib.util
import json
import random
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from emotune import api
from emotune.errors import ConfigError, DataError
from emotune.inference.adapters import AdapterSet
from emotune.inference.predictor import Predictor

from .conftest import EMOTIONS, REPO, tiny_config, write_emotion_folder

TEXTS = ["i feel happy today", "i am so scared right now", "the film was awful overall",
         "i feel loving and tender", "what a surprise, i am amazed", "ok"]
POLARITY = {"positive": "great lovely wonderful superb fine", "negative": "awful terrible horrid bad poor"}


def write_polarity_csv(path: Path, n: int = 48, seed: int = 1) -> Path:
    rng = random.Random(seed)
    rows = ["text,label"] + [f"the film was {rng.choice(POLARITY[lab].split())} overall,{lab}"
                             for lab in ("positive", "negative") * (n // 2)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def runs(tiny_model, tmp_path_factory) -> dict[str, Path]:
    """Two emotion LoRA runs (mean pooling), a polarity run (2 labels, cls pooling, all-linear targets with
    trained biases), a pooler run and a full fine-tuning run, all on the tiny base."""
    root = tmp_path_factory.mktemp("adapters")
    data = write_emotion_folder(root / "data")
    specs = {"emotion": ("lora", {}, 1), "emotion2": ("lora", {"r": 4}, 2),
             "polarity": ("lora", {"target": "all-linear", "bias": "all"}, 3),
             "pooler": ("lora", {}, 4), "full": ("full", {}, 5)}
    out = {}
    for name, (method, options, seed) in specs.items():
        cfg = tiny_config(tiny_model, data, method, max_steps=8, seed=seed)
        cfg.method = {"name": method, **options}
        if name == "polarity":
            cfg.data.name = str(write_polarity_csv(root / "polarity.csv"))
            cfg.model.pooling = "cls"
        if name == "pooler":
            cfg.model.pooling = "pooler"
        out[name] = root / name
        api.train(cfg, out[name], progress=False)
    return out


@pytest.fixture(scope="module")
def adapter_set(runs) -> AdapterSet:
    return AdapterSet.load({"emotion": runs["emotion"], "polarity": runs["polarity"], "emotion2": runs["emotion2"]})


def test_mixed_batch_equals_each_run_alone_in_input_order(runs, adapter_set):
    assert adapter_set.names == ["emotion", "polarity", "emotion2"]
    assert adapter_set.labels("emotion") == EMOTIONS and set(adapter_set.labels("polarity")) == {"positive",
                                                                                                "negative"}
    order = ["polarity", "emotion", "emotion2", "emotion", "polarity", "emotion2"] * 2
    items = [(name, TEXTS[i % len(TEXTS)]) for i, name in enumerate(order)]
    results = adapter_set.predict_mixed(items)
    assert [(r["adapter"], r["text"]) for r in results] == items
    alone = {name: Predictor(runs[name], precision="fp32") for name in ("emotion", "polarity", "emotion2")}
    for (name, text), r in zip(items, results):
        want = alone[name].predict([text])[0]
        assert list(r["probabilities"]) == alone[name].labels  # each adapter answers in its own label set
        assert r["label"] == want["label"]
        assert max(abs(r["probabilities"][k] - v) for k, v in want["probabilities"].items()) < 1e-5


def test_predict_per_adapter_switches_back_and_forth(runs, adapter_set):
    for name in ("emotion", "polarity", "emotion", "emotion2", "polarity"):
        got = adapter_set.probabilities(TEXTS, name)
        want = Predictor(runs[name], precision="fp32").probabilities(TEXTS)
        assert got.shape == want.shape and torch.allclose(got, want, atol=1e-5)
    # the two emotion adapters really differ (so switching is tested, not a no-op)
    assert not torch.allclose(adapter_set.probabilities(TEXTS, "emotion"),
                              adapter_set.probabilities(TEXTS, "emotion2"), atol=1e-6)
    assert adapter_set.predict([], "emotion") == []


def test_unknown_adapter_and_bad_text(adapter_set):
    with pytest.raises(ConfigError, match="unknown adapter 'sentiment'.*emotion, polarity, emotion2"):
        adapter_set.predict(["hi"], adapter="sentiment")
    with pytest.raises(ConfigError, match="unknown adapter"):
        adapter_set.predict_mixed([("emotion", "hi"), ("nope", "there")])
    with pytest.raises(DataError, match="text 2 is empty"):
        adapter_set.predict_mixed([("emotion", "hi"), ("emotion", " ")])


def test_one_base_in_memory(runs, adapter_set):
    from emotune.inference.engines import tensor_bytes

    single = Predictor(runs["emotion"], precision="fp32")
    one = tensor_bytes([single.model])
    adapters = sum((runs[n] / "model.safetensors").stat().st_size for n in ("emotion", "polarity", "emotion2"))
    # three adapters on one base: the base once, plus roughly the adapters' own size (files, with headers)
    assert one < adapter_set.nbytes() < one + 2 * adapters
    assert adapter_set.nbytes() < 1.5 * one


def test_runs_named_by_folder_or_name_equals_path(runs):
    s = AdapterSet.load([runs["emotion"], f"pos={runs['polarity']}"])
    assert s.names == ["emotion", "pos"]


def test_refuses_runs_that_cannot_share_a_base(runs, tiny_model, tmp_path):
    other_base = tmp_path / "other-bert"
    shutil.copytree(tiny_model, other_base)
    moved = tmp_path / "moved"
    shutil.copytree(runs["emotion2"], moved)
    cfg = yaml.safe_load((moved / "config.yaml").read_text())
    cfg["model"]["name"] = str(other_base)
    (moved / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="different base models"):
        AdapterSet.load({"emotion": runs["emotion"], "other": moved})
    with pytest.raises(ConfigError, match="pooler layer"):
        AdapterSet.load({"emotion": runs["emotion"], "pooler": runs["pooler"]})
    with pytest.raises(ConfigError, match="method 'full'"):
        AdapterSet.load({"emotion": runs["emotion"], "full": runs["full"]})


def _benchmark():
    spec = importlib.util.spec_from_file_location("adapters_memory", REPO / "benchmarks" / "adapters_memory.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_memory_benchmark_on_tiny_runs(runs, monkeypatch, capsys):
    """The benchmark's measurements and summary, each configuration loaded in this process (the fresh
    subprocesses it normally starts cost half a minute each on this machine)."""
    bench = _benchmark()
    monkeypatch.setattr(bench, "measure", lambda kind, paths, precision, threads: bench.child(kind, paths, precision))
    paths = [str(runs[n]) for n in ("emotion", "polarity", "emotion2")]
    monkeypatch.setattr("sys.argv", ["adapters_memory.py", *paths, "--json", "--unmerged"])
    assert bench.main() == 0  # shared predictions equal the separate models'
    summary = json.loads(capsys.readouterr().out)
    confs = summary["configurations"]
    assert set(confs) == {"single", "separate", "separate-unmerged", "shared"}
    assert summary["max_probability_difference_shared_vs_separate"] < 1e-5
    # three separate copies of the base hold about three times the tensors of one base + three adapters
    assert 2.5 < summary["ratio_separate_to_shared_tensors"] < 3.0
    assert 0 < confs["shared"]["tensor_bytes"] - confs["single"]["tensor_bytes"] < 2**20
    assert all(c["after_load_mb"] > 0 and "growth_mb" in c for c in confs.values())
    monkeypatch.setattr("sys.argv", ["adapters_memory.py", *paths])
    assert bench.main() == 0
    table = capsys.readouterr().out
    assert "1 base + 3 adapters" in table and "separate / shared" in table
