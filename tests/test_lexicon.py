"""NRC EmoLex lexicon features (model.lexicon=nrc): values on hand-written texts, the head's input size, runs of
every kind that train with them, and reloads (fast path on and off) that compute them the same way."""

from __future__ import annotations

import pytest
import torch
import yaml

from emotune import api
from emotune.errors import ConfigError
from emotune.inference.predictor import Predictor
from emotune.models.lexicon import FEATURES, LexiconFeatures, lexicon_features
from emotune.models.nrc import nrc_sha256
from emotune.runs import Run

from .conftest import tiny_config, write_emotion_folder
from .test_multitask import multitask_config

SHORT = {"train.max_steps": 4, "train.eval_every": 2, "train.threads": 1, "model.lexicon": "nrc"}
TEXTS = ["i am so happy today", "i am not happy at all", "what a terrible, sad day", "qwerty zxcv"]


def _f(text: str) -> dict[str, float]:
    return dict(zip(FEATURES, lexicon_features(text)))


def test_features_count_categories_per_word_and_flip_negated_polarity():
    happy = _f("I am happy")
    assert happy["joy"] == happy["positive"] == pytest.approx(1 / 3) and happy["negative"] == 0
    negated = _f("I am not happy")
    assert negated["positive"] == 0 and negated["negative"] == pytest.approx(1 / 4)
    assert negated["joy"] == pytest.approx(1 / 4)  # emotions stay as they are
    assert _f("i don ' t feel happy")["negative"] > 0  # word-piece decoding of "don't"
    assert set(_f("qwerty zxcv").values()) == {0.0} and set(_f("").values()) == {0.0}


def test_features_from_a_classic_vocabulary_and_from_word_pieces_agree():
    from transformers import AutoTokenizer

    from emotune.data.encode import encode
    from emotune.models import resolve_model_path
    from emotune.models.vocab import WordTokenizer

    texts = ["I am not happy", "i don't feel sad", "what a terrible day"]
    want = torch.tensor([lexicon_features(t) for t in texts])
    for tok in (WordTokenizer.build(texts), AutoTokenizer.from_pretrained(resolve_model_path("minilm"))):
        ids = encode(tok, texts + ["a much longer text so that the others are padded"], 32)
        got = _features(LexiconFeatures(tok), ids, tok.pad_token_id or 0)[:3]
        assert torch.allclose(got, want), (type(tok).__name__, got, want)
    # a word the vocabulary lacks (<unk>) still counts as a word; its categories are unknown
    unk = _features(LexiconFeatures(WordTokenizer.build(["i am"])), encode(WordTokenizer.build(["i am"]),
                                                                             ["i am happy"], 8), 0)
    assert unk.tolist() == [[0.0] * len(FEATURES)]


def _features(lexicon: LexiconFeatures, ids: list[list[int]], pad: int) -> torch.Tensor:
    n = max(map(len, ids))
    input_ids = torch.tensor([r + [pad] * (n - len(r)) for r in ids])
    mask = torch.tensor([[1] * len(r) + [0] * (n - len(r)) for r in ids])
    return lexicon(input_ids, mask)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_fast_forward_appends_the_features_too(tiny_model, dtype):
    import copy

    from emotune.config import ModelConfig
    from emotune.inference.fast import FastBertClassifier, supports
    from emotune.models import build_transformer

    torch.manual_seed(0)
    model, tok = build_transformer(ModelConfig(name=tiny_model, lexicon="nrc"), 6)
    model.eval()
    assert supports(model) and model.head.in_features == model.encoder.config.hidden_size + len(FEATURES)
    fast = FastBertClassifier(copy.deepcopy(model)).to(dtype)
    assert fast.lexicon is not None and set(fast.int8_names()).isdisjoint({"head", "lexicon"})
    b = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.inference_mode():
        ref = model(b["input_ids"], b["attention_mask"])
        got = fast(b["input_ids"], b["attention_mask"]).float()
    assert torch.allclose(got, ref, atol=1e-5 if dtype == torch.float32 else 0.1), (got - ref).abs().max()


def test_a_lexicon_run_trains_reloads_identically_and_is_saved(tiny_model, tmp_path):
    data = write_emotion_folder(tmp_path / "data", n_train=24, n_eval=12)
    m = api.train(tiny_config(tiny_model, data, method="full").with_values(SHORT), tmp_path / "run", progress=False)
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["model"]["lexicon"] == "nrc" and m["train"]["lexicon_sha256"] == nrc_sha256()
    model, tok = Run.open(tmp_path / "run").load_model()
    assert model.head.in_features == model.encoder.config.hidden_size + len(FEATURES)
    model.eval()
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        # what emotune answers: the model's logits with the run's calibration
        run = Run.open(tmp_path / "run")
        expected = run.task.outputs(model(batch["input_ids"], batch["attention_mask"]), run.task_state)
        plain = model.head(torch.cat([model.dropout(_pooled(model, batch)), torch.zeros(len(TEXTS), 10)], -1))
    assert not torch.allclose(expected, torch.softmax(plain, -1))  # the features change the outputs
    for fast in (True, False):
        predictor = Predictor(tmp_path / "run", precision="fp32", fast=fast)
        assert (type(predictor.model).__name__ == "FastBertClassifier") == fast  # the lean forward takes them
        got = predictor.probabilities(TEXTS)
        assert torch.allclose(torch.as_tensor(got, dtype=torch.float32), expected, atol=1e-5)
    int8 = Predictor(tmp_path / "run", precision="int8").probabilities(TEXTS)  # the features stay float
    assert torch.allclose(torch.as_tensor(int8, dtype=torch.float32), expected, atol=5e-2)
    from fastapi.testclient import TestClient

    from emotune.inference.engines import ModelRegistry
    from emotune.serve import create_app

    with TestClient(create_app(ModelRegistry.load([f"lex={tmp_path / 'run'}"], precision="fp32"))) as client:
        r = client.post("/v1/predict", json={"texts": TEXTS, "model": "lex"})
    assert r.status_code == 200, r.text
    served = torch.tensor([list(p["probabilities"].values()) for p in r.json()["predictions"]])
    assert torch.allclose(served, expected, atol=1e-5)


def _pooled(model, batch) -> torch.Tensor:
    hidden = model.encoder(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return (hidden * mask).sum(1) / mask.sum(1)


def test_classic_and_multitask_runs_take_lexicon_features(tiny_model, tmp_path):
    data = write_emotion_folder(tmp_path / "data", n_train=24, n_eval=12)
    classic = tiny_config("baseline", data, method="full").with_values({**SHORT, "train.lr": 1e-3})
    api.train(classic, tmp_path / "classic", progress=False)
    model, _ = Run.open(tmp_path / "classic").load_model()
    assert model.head.in_features == model.encoder.out_dim + len(FEATURES)
    m = api.train(multitask_config(tiny_model, data, tmp_path).with_values(SHORT), tmp_path / "mt", progress=False)
    assert m["completed"]
    preds = api.predict(tmp_path / "mt", ["so happy"])
    assert set(preds[0]["tasks"]) == {"emotion", "vad"}


def test_export_refuses_a_lexicon_run_and_bad_names_are_refused(tiny_model, tmp_path):
    from emotune.workflows.export import export_merged

    data = write_emotion_folder(tmp_path / "data", n_train=24, n_eval=12)
    api.train(tiny_config(tiny_model, data, method="full").with_values(SHORT), tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match="lexicon features .* no exported model format carries them"):
        export_merged(tmp_path / "run", tmp_path / "export")
    with pytest.raises(ConfigError, match="model.lexicon must be one of nrc"):
        tiny_config(tiny_model, data).override(["model.lexicon=foo"])


def test_a_lexicon_lora_run_shares_a_base_with_a_plain_one(tiny_model, tmp_path):
    from emotune.inference.adapters import AdapterSet

    data = write_emotion_folder(tmp_path / "data", n_train=24, n_eval=12)
    api.train(tiny_config(tiny_model, data).with_values(SHORT), tmp_path / "lex", progress=False)
    api.train(tiny_config(tiny_model, data).with_values({**SHORT, "model.lexicon": None}), tmp_path / "plain",
              progress=False)
    both = AdapterSet.load({"lex": tmp_path / "lex", "plain": tmp_path / "plain"})
    for name in ("lex", "plain"):
        alone = Predictor(tmp_path / name, precision="fp32").predict(TEXTS)
        shared = both.predict_mixed([(name, t) for t in TEXTS])
        for a, s in zip(alone, shared):
            assert max(abs(s["probabilities"][k] - v) for k, v in a["probabilities"].items()) < 1e-5
    # an ensemble of the two averages their probabilities, each member computing its own inputs
    cfg = Run.open(tmp_path / "lex").config
    cfg.method = {"name": "ensemble", "members": [str(tmp_path / "lex"), str(tmp_path / "plain")]}
    api.train(cfg, tmp_path / "ens", progress=False)
    members = [Predictor(tmp_path / n, precision="fp32").probabilities(TEXTS) for n in ("lex", "plain")]
    ens = Predictor(tmp_path / "ens", precision="fp32").probabilities(TEXTS)
    assert torch.allclose(ens, (members[0] + members[1]) / 2, atol=1e-5)
    # merging LoRA runs averages their heads: a lexicon run's head reads 10 more inputs
    from emotune.workflows.merge import merge_runs

    with pytest.raises(ConfigError, match="model.lexicon=nrc.*model.lexicon=None"):
        merge_runs([tmp_path / "lex", tmp_path / "plain"], tmp_path / "merged", evaluate=False)
