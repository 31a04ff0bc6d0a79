"""Intruder dimensions and update ranks: synthetic matrices whose answer is known, then end to end on a tiny
full run and a tiny LoRA run (analysis.json, analysis.md, plots, the report's section, the CLI)."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from emotune import api
from emotune.analyze import analyze, count_intruders, effective_rank, matrix_stats, top_cosines
from emotune.analyze.core import split_name
from emotune.errors import ConfigError
from emotune.io import load_tensors
from emotune.report.analysis import analyze_runs

from .conftest import tiny_config, write_emotion_folder


def orthogonal(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64)).Q


@pytest.fixture()
def pretrained():
    """W0 = U0 S0 V0^T, 16x16: ten large singular values and six small ones, all distinct (so the SVD of W0
    gives back U0's columns, up to sign)."""
    u0, v0 = orthogonal(16, 0), orthogonal(16, 1)
    s0 = torch.tensor([10.0 - i * 0.5 for i in range(10)] + [0.1 - i * 0.01 for i in range(6)], dtype=torch.float64)
    return u0, s0, v0, u0 @ torch.diag(s0) @ v0.T


def test_a_large_update_along_a_new_direction_is_exactly_one_intruder(pretrained):
    u0, s0, v0, w0 = pretrained
    # A direction spread evenly over W0's six weakest directions: |cos| = 1/sqrt(6) ~ 0.41 with each of them,
    # 0 with the top ten. A rank-1 update along it, far larger than W0's top singular value, becomes W's top
    # direction (up to the weak directions' own pull, < 0.01); W's next nine are W0's top directions (|cos| = 1).
    c = torch.zeros(16, dtype=torch.float64)
    c[10:] = 1 / math.sqrt(6)
    w = w0 + 20.0 * torch.outer(u0 @ c, v0 @ c)
    cos = top_cosines(u0, w, 10)
    assert cos[0].item() == pytest.approx(1 / math.sqrt(6), abs=1e-2)
    assert torch.allclose(cos[1:], torch.ones(9, dtype=torch.float64), atol=1e-9)
    stats = matrix_stats(w0, w, top_k=10, epsilon=0.5)
    assert stats.intruders == 1
    assert stats.effective_rank == pytest.approx(1.0, abs=1e-9)  # the update is rank 1
    assert stats.update_norm == pytest.approx(20.0, rel=1e-9)
    assert matrix_stats(w0, w, top_k=10, epsilon=0.4).intruders == 0  # 0.41 is not below 0.4
    assert matrix_stats(w0, w, top_k=1, epsilon=0.5).intruders == 1


def test_scaling_the_pretrained_matrix_has_no_intruder(pretrained):
    _, s0, _, w0 = pretrained
    stats = matrix_stats(w0, 1.7 * w0, top_k=10, epsilon=0.5)
    assert stats.intruders == 0 and min(stats.top_cosines) > 1 - 1e-9
    assert stats.effective_rank == pytest.approx(effective_rank(w0), rel=1e-9)  # dW = 0.7 W0
    assert stats.relative_update_norm == pytest.approx(0.7, rel=1e-9)
    assert count_intruders(torch.tensor([0.2, 0.6, 0.49]), 0.5) == 2


def test_effective_rank_of_a_rank_r_update():
    for r in (1, 3, 8):
        u, v = orthogonal(32, r)[:, :r], orthogonal(32, r + 100)[:, :r]
        assert effective_rank(2.5 * u @ v.T) == pytest.approx(r, abs=1e-6)  # r equal singular values
        g = torch.Generator().manual_seed(r)
        lowrank = torch.randn(48, r, generator=g) @ torch.randn(r, 32, generator=g)  # unequal singular values
        assert 0.7 * r <= effective_rank(lowrank) <= r + 1e-4
    assert effective_rank(torch.zeros(4, 4)) == 0.0


def test_layer_names():
    assert split_name("encoder.layer.3.attention.self.query") == (3, "attention.self.query")
    assert split_name("pooler.dense") == (None, "pooler.dense")


@pytest.fixture(scope="module")
def tiny_runs(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("analyze")
    data = write_emotion_folder(root / "data")
    for name, method in (("full", "full"), ("lora", "lora")):
        cfg = tiny_config(tiny_model, data, method, max_steps=8, eval_every=4, threads=1, lr=2e-2)
        if method == "lora":
            cfg.method["r"] = 4
        api.train(cfg, root / "runs" / name, progress=False)
    return root


@pytest.fixture(scope="module")
def analysis(tiny_runs):
    return analyze_runs([tiny_runs / "runs" / "full", tiny_runs / "runs" / "lora"], tiny_runs / "analysis", top_k=5,
                   epsilon=0.5)


def test_analysis_of_a_full_and_a_lora_run(analysis, tiny_runs):
    data = json.loads(analysis.json.read_text())
    assert data["top_k"] == 5 and data["epsilon"] == 0.5
    full, lora = data["runs"]
    assert (full["label"], lora["label"]) == ("full", "lora") and lora["method"] == "LoRA attention, r=4"
    # Full fine-tuning changes every linear layer: 6 per layer x 2 layers (no pooler with mean pooling).
    assert full["totals"]["matrices"] == 12 and {m["layer"] for m in full["matrices"]} == {0, 1}
    assert {m["module"] for m in full["matrices"]} == {"attention.self.query", "attention.self.key",
                                                       "attention.self.value", "attention.output.dense",
                                                       "intermediate.dense", "output.dense"}
    # LoRA changes the adapted ones only; each update is B @ A, of rank at most r = 4.
    assert sorted(m["module"] for m in lora["matrices"]) == sorted(["attention.self.key", "attention.self.query",
                                                                    "attention.self.value"] * 2)
    assert all(0 < m["effective_rank"] <= 4 + 1e-6 for m in lora["matrices"])
    assert max(m["effective_rank"] for m in full["matrices"]) > 4  # full updates are not low-rank
    weights, _ = load_tensors(tiny_runs / "runs" / "lora" / "model.safetensors")
    for m in lora["matrices"]:
        prefix = f"encoder.base_model.model.{m['name']}"
        a, b = weights[f"{prefix}.lora_A.default.weight"], weights[f"{prefix}.lora_B.default.weight"]
        expected = torch.linalg.matrix_norm((16 / 4) * b.double() @ a.double()).item()  # alpha / r = 16 / 4
        assert m["update_norm"] == pytest.approx(expected, rel=1e-9)
    for run in (full, lora):
        assert run["totals"]["intruders"] == sum(m["intruders"] for m in run["matrices"])
        assert all(len(m["top_cosines"]) == 5 and m["intruders"] == sum(c < 0.5 for c in m["top_cosines"])
                   for m in run["matrices"])
    md = analysis.markdown.read_text()
    assert "| full | full fine-tuning | 12 |" in md and "| lora | LoRA attention, r=4 | 6 |" in md
    for png in ("analysis-intruders.png", "analysis-effective-rank.png", "analysis-update-norm.png"):
        assert (analysis.out / png).read_bytes()[:4] == b"\x89PNG" and f"]({png})" in md


def test_report_includes_the_analysis_section(analysis, tiny_runs):
    from emotune.report import build_report

    out = tiny_runs / "report"
    r = build_report([tiny_runs / "runs", analysis.out], out, examples=0, evaluate_test=False)
    text = r.markdown.read_text()
    assert "## Intruder dimensions: LoRA vs full fine-tuning" in text and "| lora | LoRA attention, r=4 |" in text
    assert (out / "analysis-intruders.png").is_file() and out / "analysis-intruders.png" in r.figures
    assert text.count("data:image") == 0 and r.html.read_text().count("data:image/png;base64,") == len(r.figures)
    assert str(tiny_runs) not in text and f"(from `{analysis.out.name}`)" in text  # no machine paths
    plain = build_report([tiny_runs / "runs"], tiny_runs / "report-plain", examples=0, evaluate_test=False)
    assert "Intruder dimensions" not in plain.markdown.read_text()


def test_cli_analyze(tiny_runs, tmp_path):
    env = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"}

    def emotune(*args):
        return subprocess.run([sys.executable, "-m", "emotune.cli", *map(str, args)], capture_output=True, text=True,
                              env=env, timeout=600)

    r = emotune("analyze", tiny_runs / "runs" / "full", tiny_runs / "runs" / "lora", "--top-k", "3", "--out",
                tmp_path / "a")
    assert r.returncode == 0, r.stderr
    assert "LoRA attention, r=4" in r.stdout and "analysis.json" in r.stdout
    assert json.loads((tmp_path / "a" / "analysis.json").read_text())["top_k"] == 3
    bad = emotune("analyze", tiny_runs / "runs" / "lora", "--epsilon", "1.5", "--out", tmp_path / "b")
    assert bad.returncode == 2 and "epsilon" in bad.stderr


def test_bad_input():
    with pytest.raises(ConfigError, match="top-k"):
        analyze(["x"], "y", top_k=0)
