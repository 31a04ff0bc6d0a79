"""The Predictor: precisions (fp32, bf16, bf16-autocast, int8), LoRA merged for inference, the lean BERT
forward, streams and torch.compile, on tiny random BERT runs."""

from __future__ import annotations

import copy

import pytest
import torch

from emotune.errors import ConfigError
from emotune.inference.predictor import Predictor

from .conftest import EMOTIONS
from .test_serve import TEXTS, train_serving_runs


@pytest.fixture(scope="module")
def runs(tiny_model, tmp_path_factory):
    return train_serving_runs(tmp_path_factory.mktemp("predictor"), tiny_model)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "bf16-autocast", "int8", "auto"])
def test_predictor_precisions_agree_with_float32(runs, precision):
    ref = Predictor(runs["emo-full"], precision="fp32").probabilities(TEXTS)
    p = Predictor(runs["emo-full"], precision=precision, batch_size=2, threads=1)
    probs = p.probabilities(TEXTS)
    assert probs.shape == (len(TEXTS), len(EMOTIONS))
    assert torch.allclose(probs.sum(-1), torch.ones(len(TEXTS)), atol=1e-5)
    assert (probs - ref).abs().max() < (1e-5 if precision == "fp32" else 0.05)
    out = p.predict(TEXTS)
    assert [r["text"] for r in out] == TEXTS and all(set(r["probabilities"]) == set(EMOTIONS) for r in out)
    assert all(r["label"] == max(r["probabilities"], key=r["probabilities"].get) for r in out)


def test_predictor_merges_a_lora_adapter_and_keeps_the_trained_default(runs):
    merged = Predictor(runs["emo-lora"], precision="fp32")
    assert not any("lora_" in n for n, _ in merged.model.named_parameters())  # the adapter is folded in
    plain = Predictor(runs["emo-lora"], precision="fp32", fast=False)
    assert not hasattr(plain.model.encoder, "peft_config")
    assert torch.allclose(plain.probabilities(TEXTS), merged.probabilities(TEXTS), atol=1e-5)
    trained = Predictor(runs["emo-lora"])  # default: exactly as trained, adapter unmerged
    assert hasattr(trained.model.encoder, "peft_config") and trained.precision == "trained-float32"
    assert torch.allclose(merged.probabilities(TEXTS), trained.probabilities(TEXTS), atol=1e-5)
    # length-sorted batching returns rows in the input order, whatever the batch size
    assert torch.allclose(Predictor(runs["emo-lora"], precision="fp32", batch_size=1).probabilities(TEXTS),
                          merged.probabilities(TEXTS), atol=1e-5)


@pytest.mark.parametrize("pooling", ["mean", "cls", "pooler"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fast_forward_matches_the_transformers_one(tiny_model, pooling, dtype):
    from emotune.config import ModelConfig
    from emotune.inference.fast import FastBertClassifier, supports
    from emotune.models import build_transformer

    torch.manual_seed(0)
    model, tok = build_transformer(ModelConfig(name=tiny_model, pooling=pooling), 6)
    model.eval()
    assert supports(model)
    fast = FastBertClassifier(copy.deepcopy(model)).to(dtype)  # it takes the model's modules over
    b = tok(TEXTS + ["a much longer text than the others, with many more tokens to pad the rest"],
            padding=True, return_tensors="pt")
    with torch.inference_mode():
        ref = model(b["input_ids"], b["attention_mask"])
        got = fast(b["input_ids"], b["attention_mask"]).float()
    assert torch.allclose(got, ref, atol=1e-5 if dtype == torch.float32 else 0.1), (got - ref).abs().max()


def test_streams_and_compile_give_the_same_predictions(runs):
    ref = Predictor(runs["emo-lora"], precision="fp32", streams=1, batch_size=2).probabilities(TEXTS)
    two = Predictor(runs["emo-lora"], precision="fp32", streams=2, threads=2, batch_size=2)
    assert two.streams == 2 and torch.allclose(two.probabilities(TEXTS), ref, atol=1e-5)
    compiled = Predictor(runs["emo-lora"], precision="fp32", streams=2, threads=2, batch_size=2, compile=True)
    assert torch.allclose(compiled.probabilities(TEXTS), ref, atol=1e-4)
    assert torch.allclose(compiled.probabilities(TEXTS[:1]), ref[:1], atol=1e-4)  # a batch of one


def test_predictor_rejects_unknown_precision(runs):
    with pytest.raises(ConfigError, match="unknown precision"):
        Predictor(runs["emo-full"], precision="int4")


def test_int8_quantizes_the_encoder_not_the_head(runs):
    from emotune.inference.predictor import cpu_has_vnni

    p = Predictor(runs["emo-full"], precision="int8")
    kinds = {n: type(m).__name__ for n, m in p.model.named_modules()}
    assert kinds["head"] == "Linear"  # the logits layer stays float
    quantized = {k for n, k in kinds.items() if n.startswith("layers.") and k.endswith("Linear")}
    assert quantized == {"FullRangeInt8Linear" if cpu_has_vnni() else "Linear"}
    assert all(getattr(m, "_packed_params", None) is not None for n, m in p.model.named_modules()
               if n.startswith("layers.") and type(m).__name__.endswith("Linear"))


def test_padding_to_multiples_changes_nothing(runs):
    ref = Predictor(runs["emo-lora"], precision="fp32", streams=1).probabilities(TEXTS)
    p = Predictor(runs["emo-lora"], precision="fp32", streams=1, batch_size=3)
    p.pad_multiple, p.batch_multiple = 8, 4  # what the server does to keep its set of shapes small
    assert torch.allclose(p.probabilities(TEXTS), ref, atol=1e-5)


def test_a_run_trained_in_fp16_on_a_gpu_answers_in_float32_on_the_cpu():
    from types import SimpleNamespace

    from emotune.config import RunConfig
    from emotune.inference.predictor import resolve_mode

    cfg = RunConfig()
    cfg.train.precision = "fp16"
    mode = resolve_mode(None, SimpleNamespace(config=cfg), torch.device("cpu"))
    assert mode.name == "trained-float32" and mode.weights == torch.float32
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):  # asked for explicitly: refused
        resolve_mode("fp16", SimpleNamespace(config=cfg), torch.device("cpu"))
