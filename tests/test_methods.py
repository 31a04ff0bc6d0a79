import pytest

from emotune.config import ModelConfig
from emotune.errors import ConfigError
from emotune.methods import METHODS, apply_method
from emotune.models import build_transformer
from emotune.train.metrics import parameter_counts


def build(tiny_model, spec):
    model, _ = build_transformer(ModelConfig(name=tiny_model), 6)
    return apply_method(model, spec)[0]


def trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


# Methods that train and that this machine can run (zero-shot trains nothing; loftq needs CUDA/XPU).
RUNNABLE = [n for n, m in METHODS.items() if m.trains and not (m.unavailable and m.unavailable())]


@pytest.mark.parametrize("name", RUNNABLE)
def test_every_method_trains_the_head(tiny_model, name):
    model = build(tiny_model, {"name": name})
    assert {"head.weight", "head.bias"} <= trainable(model)
    assert METHODS.get(name).lr > 0


def test_full_trains_everything(tiny_model):
    model = build(tiny_model, {"name": "full"})
    assert trainable(model) == {n for n, _ in model.named_parameters()}


def test_lora_attention_targets_query_key_value_only(tiny_model):
    model = build(tiny_model, {"name": "lora", "r": 4, "train_norm": False})
    names = trainable(model) - {"head.weight", "head.bias"}
    assert names and all("lora_" in n for n in names)
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in names} == {"query", "key", "value"}
    # rank 4 on 3 projections x 2 layers, A (4x32) and B (32x4) each
    assert sum(p.numel() for n, p in model.named_parameters() if n in names) == 2 * 3 * 2 * 4 * 32


def test_lora_all_linear_and_norms(tiny_model):
    model = build(tiny_model, {"name": "lora", "target": "all-linear"})
    targets = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable(model) if "lora_" in n}
    assert targets == {"query", "key", "value", "dense"}
    assert any("LayerNorm" in n for n in trainable(model))
    counts = parameter_counts(model)
    assert 0 < counts["trainable_params"] < counts["total_params"]


def test_lora_explicit_module_list(tiny_model):
    model = build(tiny_model, {"name": "lora", "target": ["value"], "train_norm": False})
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable(model) if "lora_" in n} == {"value"}


@pytest.mark.parametrize("spec, message", [({"name": "lora", "rank": 8}, "unknown option"),
                                           ({"name": "lora", "r": 0}, "r must be at least 1"),
                                           ({"name": "lora", "target": "mlp"}, "unknown LoRA target"),
                                           ({"name": "nope"}, "unknown method"),
                                           ({"name": "full", "r": 8}, "unknown option")])
def test_bad_method_options(tiny_model, spec, message):
    with pytest.raises(ConfigError, match=message):
        build(tiny_model, spec)
