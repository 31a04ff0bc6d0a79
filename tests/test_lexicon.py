"""NRC EmoLex lexicon features (model.lexicon=nrc): values on hand-written texts, the head's input size, runs of
every kind that train with them, and reloads (fast path on and off) that compute them the same way."""

from __future__ import annotations

import pytest
import torch
import yaml

from emotune import api
from emotune.errors import ConfigError
from emotune.inference.predictor import Predictor
from emotune.models.lexicon import FEATURES, lexicon_features
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


def test_a_lexicon_run_trains_reloads_identically_and_is_saved(tiny_model, tmp_path):
    data = write_emotion_folder(tmp_path / "data", n_train=24, n_eval=12)
    api.train(tiny_config(tiny_model, data, method="full").with_values(SHORT), tmp_path / "run", progress=False)
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["model"]["lexicon"] == "nrc"
    model, tok = Run.open(tmp_path / "run").load_model()
    assert model.head.in_features == model.encoder.config.hidden_size + len(FEATURES)
    model.eval()
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = torch.softmax(model(batch["input_ids"], batch["attention_mask"]), -1)
        plain = model.head(torch.cat([model.dropout(_pooled(model, batch)), torch.zeros(len(TEXTS), 10)], -1))
    assert not torch.allclose(expected, torch.softmax(plain, -1))  # the features change the outputs
    for fast in (True, False):
        got = Predictor(tmp_path / "run", precision="fp32", fast=fast).probabilities(TEXTS)
        assert torch.allclose(torch.as_tensor(got, dtype=torch.float32), expected, atol=1e-5)


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
