"""`emotune merge --how zip` (ZipLoRA-style learned per-column coefficients) and merges of runs of different tasks
into a multi-task run, on tiny random BERT runs of a six-emotion task and a positive/negative polarity task."""

from __future__ import annotations

import csv
import json
import random
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from emotune import api
from emotune.errors import ConfigError
from emotune.inference.predictor import Predictor
from emotune.io import load_tensors
from emotune.workflows.merge import merge_runs
from emotune.workflows.zip_merge import COEFFICIENT_RANGE, COEFFICIENTS, LoraFactors, zip_factors, zip_update

from .conftest import EMOTIONS, tiny_config, write_emotion_folder

POLARITY = {"positive": "great wonderful superb lovely brilliant", "negative": "awful dull terrible boring bad"}
TEXTS = ["i feel happy today", "the film was dull", "i am so scared right now"]


def write_polarity_folder(root: Path, n_train: int = 100, n_eval: int = 30, seed: int = 0) -> Path:
    """train/val/test CSVs (text,label) whose adjective gives the polarity away."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("val", n_eval), ("test", n_eval)):
        with (root / f"{split}.csv").open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            for i in range(n):
                label = list(POLARITY)[i % 2]
                w.writerow([f"the film was {rng.choice(POLARITY[label].split())} overall", label])
    return root


@pytest.fixture(scope="module")
def runs(tiny_model, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("zip-merge")
    data = write_emotion_folder(root / "data")
    polarity = write_polarity_folder(root / "polarity")
    specs = {"emotion": ("emotion", "lora", {}, 1), "polarity": (str(polarity), "lora", {}, 2),
             "polarity-r4": (str(polarity), "lora", {"r": 4}, 3), "emotion-full": ("emotion", "full", {}, 4),
             "emotion-query": ("emotion", "lora", {"target": ["query"]}, 5)}
    out = {}
    for name, (dataset, method, options, seed) in specs.items():
        cfg = tiny_config(tiny_model, data, method, max_steps=10, seed=seed, lr=2e-2)
        cfg.data.name = dataset
        cfg.method = {"name": method, **options}
        out[name] = root / name
        api.train(cfg, out[name], progress=False)
    return out


def lora_pairs(weights: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Adapted module (as named in the engine: without the leading ``encoder.``) -> (A, B)."""
    return {k.split(".lora_A.")[0].removeprefix("encoder."): (weights[k], weights[k.replace("lora_A", "lora_B")])
            for k in weights if ".lora_A." in k}


def factors(run: Path) -> dict[str, LoraFactors]:
    cfg = yaml.safe_load((run / "config.yaml").read_text())["method"]
    scale = cfg.get("alpha", 16) / cfg.get("r", 8)
    return {m: LoraFactors(a, b, scale) for m, (a, b) in lora_pairs(load_tensors(run / "model.safetensors")[0]).items()}


def effective_weights(run: Path) -> dict[str, torch.Tensor]:
    """Every adapted matrix of a run as its model computes it: the base weight plus the LoRA update, merged."""
    from emotune.runs import Run

    model, _ = Run.open(run).load_model()
    encoder = model.encoder.merge_and_unload()
    return {m: encoder.get_submodule(m.removeprefix("base_model.model.")).weight.detach()
            for m in lora_pairs(load_tensors(run / "model.safetensors")[0])}


# ---- the formula --------------------------------------------------------------------------------------------
def test_each_coefficient_scales_a_column_and_the_factors_are_exact():
    g = torch.Generator().manual_seed(0)
    a = LoraFactors(torch.randn(8, 12, generator=g), torch.randn(10, 8, generator=g), 2.0)
    b = LoraFactors(torch.randn(4, 12, generator=g), torch.randn(10, 4, generator=g), 0.5)
    ones = torch.ones(12)
    assert torch.allclose(zip_update(a, b, ones, ones), a.update + b.update)  # m = 1: the plain sum
    m_a, m_b = torch.rand(12, generator=g) * 2, torch.rand(12, generator=g) * 2
    want = a.update @ torch.diag(m_a) + b.update @ torch.diag(m_b)  # dW diag(m): column j times m[j]
    assert torch.allclose(zip_update(a, b, m_a, m_b), want, atol=1e-5)
    A, B = zip_factors(a, b, m_a, m_b)
    assert A.shape == (12, 12) and B.shape == (10, 12)  # rank r_A + r_B
    assert torch.allclose(B @ A, want, atol=1e-5)


# ---- merged runs --------------------------------------------------------------------------------------------
def test_zip_without_training_is_the_plain_sum_of_the_updates(runs, tiny_model, tmp_path):
    out = tmp_path / "zip0"
    m = merge_runs([runs["emotion"], runs["polarity-r4"]], out, how="zip", steps=0, examples=20, evaluate=False)
    z = m["merged_from"]
    assert z["how"] == "zip" and z["steps"] == 0 and z["rank"] == 12 and z["tasks"] == ["emotion", "polarity"]
    assert z["cosine"]["mean"] == pytest.approx(1.0) and z["examples"] == [20, 20]
    coefs, _ = load_tensors(out / COEFFICIENTS)
    assert all(torch.equal(c, torch.ones_like(c)) for c in coefs.values())
    fa, fb = factors(runs["emotion"]), factors(runs["polarity-r4"])
    base, _ = load_tensors(Path(tiny_model) / "model.safetensors")
    merged = effective_weights(out)
    assert merged.keys() == fa.keys() == fb.keys() and len(merged) == 6  # q, k, v of two layers
    for name, w in merged.items():
        w0 = base[name.removeprefix("base_model.model.") + ".weight"]
        assert torch.allclose(w, w0 + fa[name].update + fb[name].update, atol=1e-5)
    # PEFT's cat at weights 1,1 is that sum too: the same multi-task model through the other code path.
    merge_runs([runs["emotion"], runs["polarity-r4"]], tmp_path / "cat", how="cat", weights="1,1", evaluate=False)
    want = Predictor(tmp_path / "cat", precision="fp32").probabilities(TEXTS)
    assert torch.allclose(Predictor(out, precision="fp32").probabilities(TEXTS), want, atol=1e-5)


def test_learned_coefficients_stay_in_range_and_the_weights_equal_the_formula(runs, tiny_model, tmp_path):
    out = tmp_path / "zip"
    m = merge_runs([runs["emotion"], runs["polarity"]], out, how="zip", steps=25, examples=40,
                   overlap_weight=0.05, lr=5e-2)
    z = m["merged_from"]
    coefs, _ = load_tensors(out / COEFFICIENTS)
    low, high = COEFFICIENT_RANGE
    assert all(bool(((c >= low) & (c <= high)).all()) for c in coefs.values())
    assert any((c - 1).abs().max() > 1e-3 for c in coefs.values())  # they learned something
    assert len(z["cosine"]["per_matrix"]) == 6 and z["cosine"]["max"] <= 1 + 1e-6
    before = sum(t["plain_sum"] for t in z["matching_loss"]) + 0.05 * 6
    after = sum(t["zip"] for t in z["matching_loss"]) + 0.05 * sum(z["cosine"]["per_matrix"].values())
    assert after < before  # the objective over all the examples went down
    fa, fb = factors(runs["emotion"]), factors(runs["polarity"])
    base, _ = load_tensors(Path(tiny_model) / "model.safetensors")
    for name, w in effective_weights(out).items():
        w0 = base[name.removeprefix("base_model.model.") + ".weight"]
        m_a, m_b = coefs[f"{name}.m_a"], coefs[f"{name}.m_b"]
        want = w0 + fa[name].update @ torch.diag(m_a) + fb[name].update @ torch.diag(m_b)
        assert torch.allclose(w, want, atol=1e-5)
    # Each run's head is its task's head, unchanged; the norms both runs trained are averaged.
    wm, wa, wb = (load_tensors(p / "model.safetensors")[0] for p in (out, runs["emotion"], runs["polarity"]))
    assert torch.equal(wm["head.heads.emotion.weight"], wa["head.weight"])
    assert torch.equal(wm["head.heads.polarity.bias"], wb["head.bias"])
    norm = "encoder.base_model.model.embeddings.LayerNorm.weight"
    assert torch.allclose(wm[norm], (wa[norm] + wb[norm]) / 2)
    # Seeded: the same merge again gives the same coefficients.
    merge_runs([runs["emotion"], runs["polarity"]], tmp_path / "again", how="zip", steps=25, examples=40,
               overlap_weight=0.05, lr=5e-2, evaluate=False)
    again, _ = load_tensors(tmp_path / "again" / COEFFICIENTS)
    assert all(torch.equal(again[k], coefs[k]) for k in coefs)


def test_the_zip_run_reloads_and_predicts_both_tasks(runs, tmp_path):
    from emotune.cli import app

    out = tmp_path / "zip-cli"
    r = CliRunner().invoke(app, ["merge", "--how", "zip", str(runs["emotion"]), str(runs["polarity"]), "--out",
                                 str(out), "--steps", "5", "--examples", "24", "--tasks", "feel,film"])
    assert r.exit_code == 0, r.output
    assert "feel" in r.output and "film" in r.output and "accuracy" in r.output
    assert json.loads((out / "labels.json").read_text()) == {"feel": EMOTIONS, "film": ["negative", "positive"]}
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert [t["name"] for t in cfg["multitask"]["tasks"]] == ["feel", "film"]
    assert cfg["multitask"]["tasks"][1]["data"]["seed"] == 2  # the polarity run's splits
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["validation"]) >= {"score", "feel", "film"} and metrics["merged_from"]["how"] == "zip"
    again = api.evaluate(out, "validation")
    assert again["feel"]["accuracy"] == metrics["validation"]["feel"]["accuracy"]
    test = api.evaluate(out, "test")
    assert 0 <= test["film"]["accuracy"] <= 1 and (out / "predictions_test_film.csv").is_file()
    rows = api.predict(out, TEXTS)
    assert all(set(row["tasks"]) == {"feel", "film"} for row in rows)
    assert rows[0]["tasks"]["feel"]["label"] in EMOTIONS and rows[1]["tasks"]["film"]["label"] in POLARITY
    listed = {Path(x["run"]).name: x for x in api.list_runs(tmp_path)}
    assert listed["zip-cli"]["status"] == "complete"


@pytest.mark.parametrize("how", ["linear", "ties", "dare"])
def test_runs_of_different_tasks_merge_into_a_multitask_run(runs, how, tmp_path):
    out = tmp_path / how
    m = merge_runs([runs["emotion"], runs["polarity"]], out, how=how)
    assert m["merged_from"]["tasks"] == ["emotion", "polarity"] and m["merged_from"]["how"] == how
    assert 0 <= m["validation"]["emotion"]["accuracy"] <= 1 and 0 <= m["validation"]["polarity"]["accuracy"] <= 1
    wm, wa = load_tensors(out / "model.safetensors")[0], load_tensors(runs["emotion"] / "model.safetensors")[0]
    assert torch.equal(wm["head.heads.emotion.weight"], wa["head.weight"])  # heads kept, not averaged
    assert not (out / COEFFICIENTS).exists()
    rows = api.predict(out, TEXTS)
    assert set(rows[0]["tasks"]) == {"emotion", "polarity"}


# ---- refusals -----------------------------------------------------------------------------------------------
def one_line(call, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as e:
        call()
    assert "\n" not in str(e.value)


def test_refusals_are_one_line(runs, tmp_path):
    emotion, polarity = runs["emotion"], runs["polarity"]
    x = tmp_path / "x"
    one_line(lambda: merge_runs([emotion], x, how="zip"), "at least two runs")
    one_line(lambda: merge_runs([emotion, polarity, runs["polarity-r4"]], x, how="zip"), "exactly two runs")
    one_line(lambda: merge_runs([runs["emotion-full"], polarity], x, how="zip"), "method 'full' cannot be merged")
    one_line(lambda: merge_runs([emotion, runs["emotion-query"]], x, how="zip"), "runs of different tasks")
    one_line(lambda: merge_runs([emotion, polarity], x, how="linear", steps=5), "--steps applies to zip")
    one_line(lambda: merge_runs([emotion, polarity], x, how="zip", weights="0.5,0.5"), "--weights do not apply")
    one_line(lambda: merge_runs([emotion, polarity], x, how="zip", tasks="a,b,c"), "3 task name")
    one_line(lambda: merge_runs([emotion, polarity], x, how="zip", examples=1), "--examples")
    one_line(lambda: merge_runs([runs["emotion-query"], polarity], x, how="zip"), "differ in their LoRA targets")
    other = tmp_path / "other-base"
    shutil.copytree(polarity, other)
    cfg = yaml.safe_load((other / "config.yaml").read_text())
    cfg["model"]["name"] = str(tmp_path / "another-model")
    (other / "config.yaml").write_text(yaml.safe_dump(cfg))
    one_line(lambda: merge_runs([emotion, other], x, how="zip"), "different base models")
    assert not x.exists()
    from emotune.cli import app

    r = CliRunner().invoke(app, ["merge", "--how", "zip", str(emotion), "--out", str(x)])
    assert r.exit_code == 2 and "at least two runs" in r.output and len(r.output.strip().splitlines()) == 1
