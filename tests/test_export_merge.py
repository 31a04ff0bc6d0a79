"""`emotune export --merged` (a Transformers folder with identical predictions) and `emotune merge` (LoRA
adapters of one task combined into a new run), on tiny random BERT runs trained for a few steps."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from emotune import api
from emotune.errors import ConfigError, RunError
from emotune.inference.predictor import Predictor
from emotune.io import load_tensors

from .conftest import EMOTIONS, tiny_config, write_emotion_folder

TEXTS = ["i feel happy today", "i am so scared right now", "ok", "i feel loving and tender but a little sad",
         "what a surprise, i am amazed and stunned and shocked by all of this"]


def raw_probabilities(run) -> torch.Tensor:
    """The model's own softmax, before the run's calibration: what an exported or merged model computes."""
    return torch.softmax(Predictor(run, precision="fp32").logits(TEXTS), -1)


@pytest.fixture(scope="module")
def runs(tiny_model, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export-merge")
    data = write_emotion_folder(root / "data")
    specs = {"lora-pooler": ("lora", "pooler", {}, 1), "full-pooler": ("full", "pooler", {}, 2),
             "lora-mean": ("lora", "mean", {}, 3), "lora-mean2": ("lora", "mean", {"bias": "all"}, 4),
             "lora-cls-r4": ("lora", "cls", {"r": 4}, 5), "lora-mean-r4": ("lora", "mean", {"r": 4}, 6)}
    out = {}
    for name, (method, pooling, options, seed) in specs.items():
        cfg = tiny_config(tiny_model, data, method, max_steps=8, seed=seed, lr=2e-2)
        cfg.method = {"name": method, **options}
        cfg.model.pooling = pooling
        out[name] = root / name
        api.train(cfg, out[name], progress=False)
    out["data"] = data
    return out


def hf_probabilities(folder: Path, texts: list[str], **kw) -> torch.Tensor:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(folder, **kw).eval()
    tok = AutoTokenizer.from_pretrained(folder, **kw)
    with torch.no_grad():
        return torch.softmax(model(**tok(texts, padding=True, truncation=True, return_tensors="pt")).logits, -1)


def assert_same_predictions(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.shape == want.shape
    assert (got - want).abs().max() < 1e-5
    assert torch.equal(got.argmax(-1), want.argmax(-1))


# ---- export --merged -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["lora-pooler", "full-pooler"])
def test_pooler_runs_export_to_the_stock_class(runs, name, tmp_path):
    from emotune.workflows.export import export_merged

    out = tmp_path / "export"
    r = export_merged(runs[name], out)
    assert r.model_class == "BertForSequenceClassification" and not r.trust_remote_code
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in out.iterdir()}
    assert not (out / "modeling_emotune.py").exists()
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert config["id2label"] == {str(i): lab for i, lab in enumerate(EMOTIONS)}
    assert config["label2id"] == {lab: i for i, lab in enumerate(EMOTIONS)}
    want = raw_probabilities(runs[name])
    assert_same_predictions(hf_probabilities(out, TEXTS), want)  # plain from_pretrained, no custom code


def test_merged_export_carries_the_adapter(runs, tiny_model, tmp_path):
    """The exported query weights are the base's plus the LoRA update (not the untouched base)."""
    from emotune.workflows.export import export_merged

    export_merged(runs["lora-pooler"], tmp_path / "e")
    exported, _ = load_tensors(tmp_path / "e" / "model.safetensors")
    base, _ = load_tensors(Path(tiny_model) / "model.safetensors")
    run, _ = load_tensors(runs["lora-pooler"] / "model.safetensors")
    key = "encoder.layer.0.attention.self.query.weight"
    prefix = "encoder.base_model.model.encoder.layer.0.attention.self.query"
    a, b = run[f"{prefix}.lora_A.default.weight"], run[f"{prefix}.lora_B.default.weight"]
    update = (b @ a) * (16 / 8)  # default alpha / r
    assert update.abs().max() > 1e-4
    assert torch.allclose(exported[f"bert.{key}"], base[key] + update, atol=1e-6)
    assert torch.equal(exported["classifier.weight"], run["head.weight"])


@pytest.mark.parametrize("name", ["lora-mean", "lora-cls-r4"])
def test_mean_and_cls_pooling_ship_emotune_class(runs, name, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from emotune.workflows.export import export_merged

    out = tmp_path / "export"
    r = export_merged(runs[name], out)
    assert r.trust_remote_code and r.model_class.endswith("EmotuneForSequenceClassification")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "emotune-classifier" and config["auto_map"]["AutoModelForSequenceClassification"]
    assert config["pooling"] == runs[name].name.split("-")[1] and "_name_or_path" not in config["encoder"]
    assert (out / "modeling_emotune.py").exists()
    with pytest.raises(ValueError, match="custom code"):  # never silently a stock class with another pooling
        AutoModelForSequenceClassification.from_pretrained(out, trust_remote_code=False)
    want = raw_probabilities(runs[name])
    assert_same_predictions(hf_probabilities(out, TEXTS, trust_remote_code=True), want)


def test_stock_only_and_refusals(runs, tmp_path):
    from emotune.methods import METHODS
    from emotune.workflows.export import export_merged

    with pytest.raises(ConfigError, match="no stock Transformers class"):
        export_merged(runs["lora-mean"], tmp_path / "stock", stock_only=True)
    assert not (tmp_path / "stock").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("mine")
    (tmp_path / "other-model").mkdir()
    (tmp_path / "other-model" / "config.json").write_text("{}")  # a model folder emotune did not write
    for folder in ("mine", "other-model"):
        for overwrite in (False, True):  # a folder of other files is never replaced
            with pytest.raises(RunError, match="not a folder emotune exported"):
                export_merged(runs["lora-mean"], tmp_path / folder, overwrite=overwrite)
    assert (tmp_path / "mine" / "keep.txt").exists() and (tmp_path / "other-model" / "config.json").exists()
    export_merged(runs["lora-mean"], tmp_path / "earlier")
    with pytest.raises(RunError, match="pass --overwrite"):
        export_merged(runs["full-pooler"], tmp_path / "earlier")
    export_merged(runs["full-pooler"], tmp_path / "earlier", overwrite=True)
    assert not (tmp_path / "earlier" / "modeling_emotune.py").exists()  # the earlier export is gone
    unmergeable = [n for n, m in METHODS.items() if not m.mergeable]
    if not unmergeable:
        pytest.skip("no registered method is unmergeable")
    for name in unmergeable:  # e.g. prefix/prompt tuning: refused before anything is loaded
        fake = tmp_path / f"fake-{name}"
        shutil.copytree(runs["lora-mean"], fake)
        cfg = yaml.safe_load((fake / "config.yaml").read_text())
        cfg["method"] = {"name": name}
        (fake / "config.yaml").write_text(yaml.safe_dump(cfg))
        with pytest.raises(ConfigError, match=f"method '{name}' cannot be exported merged"):
            export_merged(fake, tmp_path / f"out-{name}")


def test_export_cli(runs, tmp_path):
    from emotune.cli import app

    r = CliRunner().invoke(app, ["export", str(runs["full-pooler"]), "--merged", "--out", str(tmp_path / "x")])
    assert r.exit_code == 0, r.output
    assert "BertForSequenceClassification" in r.output and (tmp_path / "x" / "config.json").exists()
    r = CliRunner().invoke(app, ["export", str(runs["lora-mean"]), "--merged", "--stock", "--out",
                                 str(tmp_path / "y")])
    assert r.exit_code == 2 and "pooling=pooler" in r.output
    r = CliRunner().invoke(app, ["export", str(runs["lora-mean"]), "--out", str(tmp_path / "z")])
    assert r.exit_code == 2 and "--merged" in r.output and not (tmp_path / "z").exists()


# ---- merge ---------------------------------------------------------------------------------------------
def lora_pairs(weights: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {k.split(".lora_A.")[0]: (weights[k], weights[k.replace("lora_A", "lora_B")])
            for k in weights if ".lora_A." in k}


def updates(run: Path) -> dict[str, torch.Tensor]:
    """Per adapted module: scale * B @ A."""
    cfg = yaml.safe_load((run / "config.yaml").read_text())["method"]
    r, alpha = cfg.get("r", 8), cfg.get("alpha", 16)
    weights, _ = load_tensors(run / "model.safetensors")
    return {m: alpha / r * (b @ a) for m, (a, b) in lora_pairs(weights).items()}


def test_linear_merge_of_a_run_with_itself(runs, tmp_path):
    """linear combines A and B separately: A' = sum sqrt(w) A, B' = sum sqrt(w) B, so two copies at 0.25/0.25
    give back the run, and at 0.5/0.5 twice its update (the head, averaged, is unchanged either way)."""
    from emotune.workflows.merge import merge_runs

    run = runs["lora-mean"]
    metrics = merge_runs([run, run], tmp_path / "quarter", how="linear", weights="0.25,0.25")
    assert metrics["completed"] and metrics["merged_from"]["weights"] == [0.25, 0.25]
    want = raw_probabilities(run)
    assert_same_predictions(raw_probabilities(tmp_path / "quarter"), want)
    merge_runs([run, run], tmp_path / "half", how="linear", weights=[0.5, 0.5], evaluate=False)
    original, doubled = updates(run), updates(tmp_path / "half")
    assert original.keys() == doubled.keys()
    for m in original:
        assert torch.allclose(doubled[m], 2 * original[m], atol=1e-6)
    head, _ = load_tensors(tmp_path / "half" / "model.safetensors")
    assert torch.allclose(head["head.weight"], load_tensors(run / "model.safetensors")[0]["head.weight"])


def test_cat_merge_is_the_weighted_sum_of_updates_heads_and_norms_averaged(runs, tiny_model, tmp_path):
    from emotune.workflows.merge import merge_runs

    a, b = runs["lora-mean"], runs["lora-mean2"]  # lora-mean2 also trained every bias
    metrics = merge_runs([a, b], tmp_path / "cat", how="cat", weights="3,1")
    assert metrics["merged_from"]["rank"] == 16 and metrics["merged_from"]["weights"] == [3.0, 1.0]
    merged, ua, ub = updates(tmp_path / "cat"), updates(a), updates(b)
    for m in ua:
        assert torch.allclose(merged[m], 3 * ua[m] + ub[m], atol=1e-5)
    wm, wa, wb = (load_tensors(p / "model.safetensors")[0] for p in (tmp_path / "cat", a, b))
    for key in ("head.weight", "head.bias", "encoder.base_model.model.embeddings.LayerNorm.weight"):
        assert torch.allclose(wm[key], 0.75 * wa[key] + 0.25 * wb[key], atol=1e-6)  # weights normalised
    bias = "encoder.base_model.model.encoder.layer.0.intermediate.dense.bias"
    base_bias = load_tensors(Path(tiny_model) / "model.safetensors")[0]["encoder.layer.0.intermediate.dense.bias"]
    assert bias in wm and bias in wb and bias not in wa  # a did not train it: it contributes the base's value
    assert torch.allclose(wm[bias], 0.75 * base_bias + 0.25 * wb[bias], atol=1e-6)
    cfg = yaml.safe_load((tmp_path / "cat" / "config.yaml").read_text())
    assert cfg["method"]["bias"] == "all" and cfg["method"]["r"] == 16 and cfg["method"]["target"] == "attention"


@pytest.mark.parametrize("how", ["ties", "dare", "dare_ties", "svd"])
def test_ties_and_dare_give_runs_that_evaluate_like_any(runs, how, tmp_path):
    from emotune.workflows.merge import merge_runs

    out = tmp_path / how
    metrics = merge_runs([runs["lora-mean"], runs["lora-mean2"]], out, how=how, weights="0.6,0.4")
    m = metrics["merged_from"]
    assert m["how"] == how and m["density"] == (None if how == "svd" else 0.5)
    assert m["runs"] == [str(runs["lora-mean"].resolve()), str(runs["lora-mean2"].resolve())]
    assert 0 <= metrics["validation"]["accuracy"] <= 1 and (out / "predictions_validation.csv").exists()
    assert json.loads((out / "labels.json").read_text()) == EMOTIONS
    test = api.evaluate(out, "test")
    assert 0 <= test["accuracy"] <= 1 and (out / "predictions_test.csv").exists()
    probs = Predictor(out, precision="fp32").probabilities(TEXTS)
    assert torch.allclose(probs.sum(-1), torch.ones(len(TEXTS)), atol=1e-5)
    # the merged adapter is neither source adapter
    for src in ("lora-mean", "lora-mean2"):
        assert (probs - Predictor(runs[src], precision="fp32").probabilities(TEXTS)).abs().max() > 1e-6
    rows = {Path(r["run"]).name: r for r in api.list_runs(tmp_path)}
    assert rows[how]["status"] == "complete" and rows[how]["method"] == "lora"


def test_merged_run_shares_a_base_with_its_sources(runs, tmp_path):
    from emotune.inference.adapters import AdapterSet
    from emotune.workflows.merge import merge_runs

    merge_runs([runs["lora-mean"], runs["lora-mean2"]], tmp_path / "m", how="ties", evaluate=False)
    s = AdapterSet.load({"merged": tmp_path / "m", "source": runs["lora-mean"]})
    assert torch.allclose(s.probabilities(TEXTS, "merged"), Predictor(tmp_path / "m", precision="fp32")
                          .probabilities(TEXTS), atol=1e-5)


def test_merge_errors(runs, tmp_path):
    from emotune.workflows.merge import merge_runs

    a, b = runs["lora-mean"], runs["lora-mean2"]
    with pytest.raises(ConfigError, match="3 weight.*for 2 runs"):
        merge_runs([a, b], tmp_path / "x", weights="0.2,0.3,0.5")
    with pytest.raises(ConfigError, match="numbers"):
        merge_runs([a, b], tmp_path / "x", weights="half,half")
    with pytest.raises(ConfigError, match="at least two"):
        merge_runs([a], tmp_path / "x")
    with pytest.raises(ConfigError, match="unknown merge combination 'average'"):
        merge_runs([a, b], tmp_path / "x", how="average")
    with pytest.raises(ConfigError, match="--density applies to"):
        merge_runs([a, b], tmp_path / "x", how="linear", density=0.3)
    with pytest.raises(ConfigError, match="same r"):  # linear needs equal ranks (cat does not)
        merge_runs([a, runs["lora-mean-r4"]], tmp_path / "x", how="linear")
    with pytest.raises(ConfigError, match="method 'full' cannot be merged"):
        merge_runs([runs["full-pooler"], runs["lora-pooler"]], tmp_path / "x")
    with pytest.raises(ConfigError, match="pooler layer"):
        merge_runs([a, runs["lora-pooler"]], tmp_path / "x")
    with pytest.raises(ConfigError, match="pools with 'mean'"):
        merge_runs([a, runs["lora-cls-r4"]], tmp_path / "x", how="cat")
    relabelled = tmp_path / "relabelled"
    shutil.copytree(b, relabelled)
    (relabelled / "labels.json").write_text(json.dumps(list(reversed(EMOTIONS))))
    with pytest.raises(ConfigError, match="different label sets"):
        merge_runs([a, relabelled], tmp_path / "x")
    assert not (tmp_path / "x").exists()
    merge_runs([a, runs["lora-mean-r4"]], tmp_path / "cat", how="cat", evaluate=False)
    with pytest.raises(RunError, match="already there"):
        merge_runs([a, b], tmp_path / "cat", how="cat")
    merge_runs([a, b], tmp_path / "cat", how="cat", evaluate=False, overwrite=True)
    assert json.loads((tmp_path / "cat" / "metrics.json").read_text())["merged_from"]["rank"] == 16
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(RunError, match="not a run folder"):
        merge_runs([a, b], tmp_path / "mine", overwrite=True)


def test_merge_cli(runs, tmp_path):
    from emotune.cli import app

    out = tmp_path / "merged"
    r = CliRunner().invoke(app, ["merge", str(runs["lora-mean"]), str(runs["lora-mean2"]), "--how", "dare",
                                 "--weights", "0.5,0.5", "--density", "0.7", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "accuracy" in r.output and "dare" in r.output
    merged_from = json.loads((out / "metrics.json").read_text())["merged_from"]
    assert merged_from["combination_type"] == "dare_linear" and merged_from["density"] == 0.7
    r = CliRunner().invoke(app, ["merge", str(runs["lora-mean"]), str(runs["lora-mean2"]), "--weights", "1",
                                 "--out", str(tmp_path / "bad")])
    assert r.exit_code == 2 and "give one weight per run" in r.output


@pytest.mark.integration
def test_minilm_pooler_run_exports_to_bert_for_sequence_classification(real_data, tmp_path):
    """Real MiniLM (with its pretrained pooler), a LoRA run of a few steps on a slice of Emotion: the stock
    class gives emotune's fp32 probabilities on real validation texts."""
    from emotune.config import RunConfig
    from emotune.data import load_data
    from emotune.workflows.export import export_merged

    cfg = RunConfig()
    cfg.data.data_dir = str(real_data)
    cfg.data.max_train_samples, cfg.data.max_eval_samples = 64, 32
    cfg.model.pooling = "pooler"
    cfg.train.max_steps, cfg.train.eval_every, cfg.train.batch_size, cfg.train.precision = 6, 6, 8, "fp32"
    api.train(cfg, tmp_path / "run", progress=False)
    r = export_merged(tmp_path / "run", tmp_path / "hf")
    assert r.model_class == "BertForSequenceClassification" and not r.trust_remote_code
    texts = load_data(cfg.data, cfg.train.seed)["validation"].texts
    want = torch.softmax(Predictor(tmp_path / "run", precision="fp32").logits(texts), -1)  # before calibration
    assert_same_predictions(hf_probabilities(tmp_path / "hf", texts), want)


def test_export_stages_in_a_fresh_random_folder(runs, tmp_path, monkeypatch):
    """What is loaded with trust_remote_code comes from a folder made for this export (mkdtemp: a random name,
    mode 0700), never from a predictable path another user could have prepared."""
    import tempfile

    from emotune.workflows import export

    made, loaded = [], []
    real_mkdtemp, real_verify = tempfile.mkdtemp, export.verify_export
    monkeypatch.setattr(tempfile, "mkdtemp", lambda **kw: made.append(real_mkdtemp(**kw)) or made[-1])
    monkeypatch.setattr(export, "verify_export", lambda m, t, folder, *a: loaded.append(str(folder)) or
                        real_verify(m, t, folder, *a))
    export.export_merged(runs["lora-mean"], tmp_path / "out")
    assert loaded and loaded[0] in made
    assert not [p for p in tmp_path.iterdir() if p.name != "out"]  # nothing left beside the export
