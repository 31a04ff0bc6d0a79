"""MultiLoRA (emotune.methods.multilora): one module is LoRA of that rank, the start is the pretrained model, the
scales learn first, a run trains, reloads and predicts as trained (merged too), a multi-task run shares it, `emotune
analyze` reads its dW, and bad options are one-line errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from emotune import api
from emotune.config import ModelConfig
from emotune.errors import ConfigError
from emotune.inference.predictor import Predictor
from emotune.io import load_tensors
from emotune.methods import METHODS, apply_method, merge_adapter
from emotune.methods.multilora import MultiLoraLinear, fold_multilora
from emotune.models import build_transformer
from emotune.runs import Run

from .conftest import tiny_config, write_emotion_folder
from .test_peft_methods import read_probs
from .test_regression import write_regression_folder

IDS = torch.tensor([[101, 2000, 2001, 2002, 102, 0], [101, 2003, 2004, 2005, 2006, 102]])
MASK = (IDS != 0).long()
TEXTS = ["i feel happy today", "i feel scared right now", "i feel loving and tender"]


def base_model(tiny_model: str) -> nn.Module:
    torch.manual_seed(0)
    model, _ = build_transformer(ModelConfig(name=tiny_model), 6)
    return model.eval()


def multilora(model: nn.Module, **options) -> nn.Module:
    return apply_method(copy.deepcopy(model), {"name": "multilora", **options})[0].eval()


def layers(model: nn.Module) -> dict[str, MultiLoraLinear]:
    """The wrapped layers by name within the encoder (as `emotune analyze` names them)."""
    return {n: m for n, m in model.encoder.named_modules() if isinstance(m, MultiLoraLinear)}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_emotion_folder(tmp_path_factory.mktemp("multilora") / "data", n_train=48, n_eval=24)


@pytest.fixture(scope="module")
def run(tiny_model, data_dir, tmp_path_factory):
    cfg = tiny_config(tiny_model, data_dir, max_steps=8, eval_every=4, lr=2e-2)
    cfg.method = {"name": "multilora", "modules": 3, "r": 2}
    out = tmp_path_factory.mktemp("multilora-run") / "run"
    return out, api.train(cfg, out, progress=False)


def test_one_module_is_lora_of_that_rank(tiny_model):
    """Given the same A, B and scale s, one MultiLoRA module is LoRA (PEFT) with B' = s B, and each layer computes
    W0 x + b + s (alpha / r) B A x."""
    base = base_model(tiny_model)
    opts = {"r": 4, "alpha": 8, "dropout": 0.0, "target": "attention", "train_norm": False}
    multi = multilora(base, modules=1, **opts)
    lora = apply_method(copy.deepcopy(base), {"name": "lora", **opts})[0].eval()
    torch.manual_seed(1)
    peft_layers = {n.removeprefix("encoder.base_model.model."): m for n, m in lora.named_modules()
                   if hasattr(m, "lora_A") and "default" in getattr(m, "lora_A", {})}
    assert set(peft_layers) == set(layers(multi)) and len(peft_layers) == 6  # q, k, v x 2 layers: the same targets
    with torch.no_grad():
        for name, m in layers(multi).items():
            m.lora_A.normal_()
            m.lora_B.normal_()
            m.lora_scale.fill_(0.7)
            p = peft_layers[name]
            p.lora_A["default"].weight.copy_(m.lora_A[0])
            p.lora_B["default"].weight.copy_(0.7 * m.lora_B[0])
        # one layer against the formula
        layer = layers(multi)["encoder.layer.0.attention.self.query"]
        x = torch.randn(5, 32)
        want = x @ layer.base.weight.T + layer.base.bias + 0.7 * (8 / 4) * x @ (layer.lora_B[0] @ layer.lora_A[0]).T
        assert torch.allclose(layer(x), want, atol=1e-5)
        assert torch.allclose(layer.delta_weight(), 0.7 * 2 * layer.lora_B[0] @ layer.lora_A[0], atol=1e-6)
        # the whole model against PEFT's LoRA
        assert torch.allclose(multi(input_ids=IDS, attention_mask=MASK), lora(input_ids=IDS, attention_mask=MASK),
                              atol=1e-5)


def test_starts_as_the_pretrained_model_in_different_subspaces(tiny_model):
    base = base_model(tiny_model)
    multi = multilora(base, modules=3, r=4)
    wrapped = layers(multi)
    assert len(wrapped) == 6
    for m in wrapped.values():
        assert m.lora_A.shape == (3, 4, 32) and m.lora_B.shape == (3, 32, 4)
        assert torch.equal(m.lora_scale, torch.zeros(3))  # s = 0: dW = 0 ...
        assert torch.count_nonzero(m.delta_weight()) == 0
        assert m.lora_A.abs().min() > 0 and m.lora_B.abs().min() > 0  # ... with A and B both random (Kaiming)
        assert not torch.equal(m.lora_A[0], m.lora_A[1]) and not torch.equal(m.lora_B[1], m.lora_B[2])
        bound = 1 / 32 ** 0.5  # kaiming_uniform_(a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in)), as nn.Linear
        assert m.lora_A.abs().max() <= bound and m.lora_B.abs().max() <= 1 / 4 ** 0.5
    with torch.no_grad():
        assert torch.equal(multi(input_ids=IDS, attention_mask=MASK), base(input_ids=IDS, attention_mask=MASK))


def test_the_scales_learn_first(tiny_model):
    multi = multilora(base_model(tiny_model), modules=2, r=2).train()
    multi(input_ids=IDS, attention_mask=MASK).logsumexp(-1).sum().backward()
    for m in layers(multi).values():
        assert m.lora_scale.grad is not None and m.lora_scale.grad.abs().min() > 0
        assert torch.count_nonzero(m.lora_A.grad) == 0 and torch.count_nonzero(m.lora_B.grad) == 0  # s = 0
    with torch.no_grad():
        for m in layers(multi).values():
            m.lora_scale.sub_(0.1 * m.lora_scale.grad.sign())
    multi.zero_grad()
    multi(input_ids=IDS, attention_mask=MASK).logsumexp(-1).sum().backward()
    assert all(torch.count_nonzero(m.lora_A.grad) > 0 and torch.count_nonzero(m.lora_B.grad) > 0
               for m in layers(multi).values())


def test_targets_parameters_and_folding(tiny_model):
    base = base_model(tiny_model)
    multi = multilora(base, modules=3, r=2, target="all-linear", train_norm=False)
    leaves = {n.rsplit(".", 1)[-1] for n in layers(multi)}
    assert leaves == {"query", "key", "value", "dense"}  # as lora's all-linear
    trained = {n: p for n, p in multi.named_parameters() if p.requires_grad}
    assert not any(".base." in n or "LayerNorm" in n for n in trained)
    per_layer = sum(3 * 2 * (m.base.in_features + m.base.out_features) + 3 for m in layers(multi).values())
    assert sum(p.numel() for n, p in trained.items() if not n.startswith("head.")) == per_layer
    only_value = multilora(base, target=["value"])
    assert {n.rsplit(".", 1)[-1] for n in layers(only_value)} == {"value"}
    assert any("LayerNorm" in n for n, p in only_value.named_parameters() if p.requires_grad)  # train_norm default
    # Folded: plain nn.Linear layers whose weights are W0 + dW, the same function.
    with torch.no_grad():
        for m in layers(multi).values():
            m.lora_scale.normal_()
        want = multi(input_ids=IDS, attention_mask=MASK)
        deltas = {n: m.delta_weight() + m.base.weight for n, m in layers(multi).items()}
        merge_adapter(multi)
        assert not layers(multi) and all(type(multi.encoder.get_submodule(n)) is nn.Linear for n in deltas)
        assert all(torch.equal(multi.encoder.get_submodule(n).weight, w) for n, w in deltas.items())
        assert torch.allclose(multi(input_ids=IDS, attention_mask=MASK), want, atol=1e-5)
    assert fold_multilora(base.encoder) is base.encoder  # nothing to fold: unchanged


def test_a_run_trains_reloads_and_predicts_identically(tiny_model, run):
    out, metrics = run
    assert metrics["completed"] and metrics["train"]["steps"] == 8
    weights, _ = load_tensors(out / "model.safetensors")
    fresh = multilora(base_model(tiny_model), modules=3, r=2)
    initial = {n: p for n, p in fresh.named_parameters() if p.requires_grad}
    assert set(weights) == set(initial) and any(".lora_scale" in n for n in weights)
    assert all(weights[n].abs().max() > 0 for n in weights if n.endswith(".lora_scale"))  # the scales moved
    texts, written = read_probs(out / "predictions_validation.csv")
    assert torch.allclose(Predictor(out).probabilities(texts), written, atol=2e-6)  # as trained (unmerged)
    merged = Predictor(out, precision="fp32", streams=1)  # merged into plain weights (the fast BERT path)
    assert not any(isinstance(m, MultiLoraLinear) for m in merged.model.modules())
    assert torch.allclose(merged.probabilities(texts), written, atol=1e-5)
    rows = api.predict(out, TEXTS)
    assert len(rows) == 3 and all(r["label"] in Run.open(out).labels for r in rows)
    assert METHODS.get("multilora").family_name({"target": "all-linear"}) == "MultiLoRA all-linear"


def test_analyze_reads_the_spectrum_of_its_update(run, tmp_path):
    from emotune.analyze import analyze

    out, _ = run
    data = analyze([out], tmp_path / "analysis", top_k=3).data
    (rec,) = data["runs"]
    assert rec["method"] == "MultiLoRA attention, r=2 x 3 modules" and rec["totals"]["matrices"] == 6
    weights, _ = load_tensors(out / "model.safetensors")
    for m in rec["matrices"]:
        p = f"encoder.{m['name']}"
        a, b, s = (weights[f"{p}.lora_{k}"].double() for k in ("A", "B", "scale"))
        dw = (16 / 2) * torch.einsum("m,mor,mri->oi", s, b, a)
        assert m["update_norm"] == pytest.approx(torch.linalg.matrix_norm(dw).item(), rel=1e-9)
        assert 0 < m["effective_rank"] <= 3 * 2 + 1e-6  # at most modules x r


def test_a_multitask_run_shares_one_multilora(tiny_model, data_dir, tmp_path):
    reg = write_regression_folder(tmp_path / "reg")
    cfg = tiny_config(tiny_model, data_dir, "multilora", max_steps=6, eval_every=3).with_values({
        "method.modules": 2, "method.r": 2,
        "multitask.tasks": [{"name": "emotion", "data": {"name": "emotion"}},
                            {"name": "vad", "data": {"name": str(reg), "target_columns": ["V", "A"]}}]})
    out = tmp_path / "mt"
    m = api.train(cfg, out, progress=False)
    assert m["completed"] and {"emotion", "vad", "score"} <= set(m["validation"])
    weights, _ = load_tensors(out / "model.safetensors")
    assert sum(n.endswith(".lora_scale") for n in weights) == 6  # one adapter for both heads
    again = api.evaluate(out, "validation")
    assert again["score"] == m["validation"]["score"]
    rows = api.predict(out, TEXTS[:2])
    assert set(rows[0]["tasks"]) == {"emotion", "vad"}
    assert Run.open(out).config.method == {"name": "multilora", "modules": 2, "r": 2}


@pytest.mark.parametrize("options, message", [
    ({"modules": 0}, "modules must be a whole number of at least 1"),
    ({"modules": 1.5}, "modules must be a whole number"),
    ({"r": 0}, "r must be at least 1"),
    ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
    ({"target": "mlp"}, "unknown LoRA target"),
    ({"target": ["no_such_layer"]}, "matches no linear layer"),
    ({"rank": 4}, "unknown option"),
])
def test_bad_options_are_one_line_errors(tiny_model, options, message):
    with pytest.raises(ConfigError, match=message) as e:
        multilora(base_model(tiny_model), **options)
    assert "\n" not in str(e.value)
