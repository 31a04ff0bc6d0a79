"""Word attributions: Integrated Gradients through Captum on the word embeddings, sub-word pieces merged into
words, any target of any task type, the command line."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from emotune import api
from emotune.cli import app
from emotune.errors import ConfigError, DataError
from emotune.inference.explain import Explainer, faithfulness

from .conftest import EMOTIONS, tiny_config


@pytest.fixture(scope="module")
def trained(tiny_model, tmp_path_factory):
    from .conftest import write_emotion_folder

    root = tmp_path_factory.mktemp("explain")
    out = root / "run"
    api.train(tiny_config(tiny_model, write_emotion_folder(root / "data"), "lora", max_steps=12), out,
              progress=False)
    return out


def test_integrated_gradients_add_up_to_the_change_of_the_output(trained):
    explainer = Explainer(trained)
    e = explainer.explain("i feel happy and glad today", steps=64)
    assert e.target == e.predicted and e.target in EMOTIONS
    # Completeness: the attributions sum to log p(text) - log p(baseline), up to the path integral's error.
    enc = explainer.encode(e.text)
    ids = enc["input_ids"]
    base = torch.where(torch.tensor([[t in explainer.special for t in ids[0].tolist()]]), ids,
                       torch.full_like(ids, explainer.pad_id))
    column = explainer.labels.index(e.target)
    with torch.no_grad():
        gap = (explainer.outputs(ids, enc["attention_mask"])[0, column].log()
               - explainer.outputs(base, enc["attention_mask"])[0, column].log())
    assert sum(w["score"] for w in e.words) == pytest.approx(float(gap), abs=0.02 + 0.02 * abs(float(gap)))
    assert e.convergence_delta < 0.05


def test_pieces_merge_into_words_with_offsets(trained):
    text = "unbelievably, i feel glad!"
    e = Explainer(trained).explain(text, method="gxi")
    assert [w["word"] for w in e.words] == ["unbelievably", ",", "i", "feel", "glad", "!"]
    assert all(text[w["start"]:w["end"]] == w["word"] for w in e.words)
    assert e.convergence_delta is None and e.method == "gxi"


def test_a_chosen_target_and_bad_ones(trained):
    explainer = Explainer(trained)
    e = explainer.explain("i am so scared", target="fear")
    assert e.target == "fear" and 0 < e.value < 1
    with pytest.raises(DataError, match="unknown target"):
        explainer.explain("i am so scared", target="boredom")
    with pytest.raises(ConfigError, match="ig or gxi"):
        explainer.explain("i am so scared", method="shap")
    with pytest.raises(DataError, match="empty"):
        explainer.explain("   ")


def test_regression_and_multitask_targets(tiny_model, toy_data, tmp_path):
    from .test_multitask import multitask_config

    out = tmp_path / "mt"
    cfg = multitask_config(tiny_model, toy_data, tmp_path)
    cfg.train.max_steps = 6
    api.train(cfg, out, progress=False)
    explainer = Explainer(out)
    regression = [name for name in explainer.labels if explainer._part(explainer.labels.index(name))[1] == "regression"]
    e = explainer.explain("i feel happy", target=regression[0])
    assert e.predicted == regression[0] and len(e.words) == 3
    default = explainer.explain("i feel happy")  # the first task's predicted class
    assert default.target.split(":")[0] == explainer.run.task.parts[0].name


def test_faithfulness_counts_texts_with_more_words_than_deleted(trained):
    result = faithfulness(Explainer(trained), ["i feel happy and glad today", "sad", "i am so very scared now"], k=3)
    assert result["texts"] == 2 and 0.0 <= result["share"] <= 1.0 and result["ms_per_explanation"] > 0


def test_cli_explain_json_and_terminal(trained):
    runner = CliRunner()
    r = runner.invoke(app, ["explain", str(trained), "i feel happy today", "--json"])
    assert r.exit_code == 0, r.output
    body = json.loads(r.output)
    assert [w["word"] for w in body["words"]] == ["i", "feel", "happy", "today"]
    r = runner.invoke(app, ["explain", str(trained), "i feel happy today", "--target", "joy"])
    assert r.exit_code == 0 and "target joy" in r.output and "strongest:" in r.output
    r = runner.invoke(app, ["explain", str(trained), "i feel happy", "--target", "boredom"])
    assert r.exit_code != 0 and "unknown target" in r.output
