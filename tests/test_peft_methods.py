"""Every registered fine-tuning method, the way PEFT's own suite tests its tuners: a tiny random BERT trains
a few steps, saves its trainable tensors, reloads with identical predictions, merges (where it can) with the
same predictions, ignores padding; unknown options fail clearly. A newly registered method is covered by
being registered. Plus what is special to some: LoRA+'s learning-rate groups, PiSSA's residual base,
QLoRA's 4-bit base, VeRA's regenerated projections, the shared-base serving condition."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from torch import nn

from emotune import api
from emotune.config import ModelConfig
from emotune.data.encode import Encoded, encode
from emotune.errors import ConfigError, Interrupted
from emotune.inference.predictor import Predictor
from emotune.io import load_tensors
from emotune.methods import METHODS, apply_method, lr_scales, merge_adapter
from emotune.models import build_transformer
from emotune.runs import Run, build_model
from emotune.train.loop import Trainer

from .conftest import tiny_config, write_emotion_folder

TRAINED = [name for name, m in METHODS.items() if m.trains]


def unavailable(name: str) -> str | None:
    method = METHODS.get(name)
    return method.unavailable() if method.unavailable else None


RUNNABLE = [name for name in TRAINED if not unavailable(name)]




def build(tiny_model: str, spec: dict, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model, _ = build_transformer(ModelConfig(name=tiny_model), 6)
    return apply_method(model, spec)[0]


def trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def read_probs(path) -> tuple[list[str], torch.Tensor]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [r["text"] for r in rows], torch.tensor([[float(v) for k, v in r.items() if k.startswith("p_")]
                                                     for r in rows])


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_emotion_folder(tmp_path_factory.mktemp("peft") / "data", n_train=48, n_eval=24)


@pytest.fixture(scope="module")
def trained(tiny_model, data_dir, tmp_path_factory):
    """Train a method once per module: ``trained(name, precision) -> (run folder, metrics)``."""
    root = tmp_path_factory.mktemp("peft-runs")
    cache: dict = {}

    def get(name: str, precision: str = "fp32"):
        if (name, precision) not in cache:
            cfg = tiny_config(tiny_model, data_dir, precision=precision, max_steps=6, eval_every=3)
            cfg.method = {"name": name}
            out = root / f"{name}-{precision}"
            cache[name, precision] = (out, api.train(cfg, out, progress=False))
        return cache[name, precision]

    return get


def check_available(name: str) -> None:
    reason = unavailable(name)
    if reason:
        pytest.skip(reason)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])  # bf16: bf16 weights, fp32 master copies
@pytest.mark.parametrize("name", TRAINED)
def test_trains_saves_only_its_tensors_and_reloads_identically(tiny_model, trained, name, precision):
    check_available(name)
    out, metrics = trained(name, precision)
    assert metrics["completed"] and metrics["train"]["steps"] == 6
    assert metrics["train"]["precision"] == {"fp32": "float32", "bf16": "bfloat16"}[precision]

    # The run file holds exactly the method's trainable tensors (fp32), nothing of the frozen base.
    fresh = build(tiny_model, {"name": name}, seed=42)
    initial = trainable(fresh)
    weights, _ = load_tensors(out / "model.safetensors")
    assert set(weights) == set(initial)
    assert all(w.dtype == torch.float32 for w in weights.values())
    if name != "full":
        total = sum(p.numel() for p in fresh.parameters())
        assert sum(w.numel() for w in weights.values()) < 0.2 * total
    # ... and the method's own tensors (not only the head) moved away from their initial values.
    assert any(not torch.equal(w, initial[n]) for n, w in weights.items() if not n.startswith("head."))

    # Reloaded (Run.load_model through Predictor, as trained), it predicts what training wrote, exactly.
    texts, written = read_probs(out / "predictions_validation.csv")
    assert torch.allclose(Predictor(out).probabilities(texts), written, atol=2e-6)
    # Building twice (PiSSA's residual, VeRA's projections, QLoRA's 4-bit base...) gives the same model.
    a, tok = Run.open(out).load_model()
    b, _ = Run.open(out).load_model()
    enc = tok(texts[:4], padding=True, return_tensors="pt")
    batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    a.eval(), b.eval()
    with torch.no_grad():
        assert torch.equal(a(**batch), b(**batch))


@pytest.mark.parametrize("name", TRAINED)
def test_explicit_precisions_merge_where_possible_and_never_crash(trained, name):
    check_available(name)
    out, _ = trained(name)
    texts, written = read_probs(out / "predictions_validation.csv")
    fp32 = Predictor(out, precision="fp32", streams=1)
    encoder = getattr(fp32.model, "encoder", None)
    wrapped = encoder is not None and hasattr(encoder, "peft_config")
    assert wrapped == (not METHODS.get(name).mergeable)  # merged into plain weights unless it cannot be
    assert torch.allclose(fp32.probabilities(texts), written, atol=1e-5)
    for precision in ("bf16", "int8"):  # approximations of the fp32 model (here off by < 0.002)
        probs = Predictor(out, precision=precision, streams=1).probabilities(texts)
        assert probs.shape == written.shape and torch.isfinite(probs).all()
        assert (probs - written).abs().max() < 0.02


@pytest.mark.parametrize("name", RUNNABLE)
def test_outputs_ignore_padding(tiny_model, name):
    model = build(tiny_model, {"name": name}).eval()
    ids = torch.tensor([[101, 2000, 2001, 102, 0, 0, 0], [101, 2000, 2001, 2002, 2003, 2004, 102]])
    mask = (ids != 0).long()
    with torch.no_grad():
        alone = model(input_ids=ids[:1, :4], attention_mask=mask[:1, :4])
        padded = model(input_ids=ids, attention_mask=mask)[:1]
    assert torch.allclose(alone, padded, atol=1e-5)


@pytest.mark.parametrize("name", TRAINED)
def test_unknown_and_bad_options_fail_clearly(tiny_model, name):
    with pytest.raises(ConfigError, match="unknown option"):
        build(tiny_model, {"name": name, "no_such_option": 1})


@pytest.mark.parametrize("spec, message", [
    ({"name": "loraplus", "lr_ratio": 0}, "lr_ratio must be positive"),
    ({"name": "pissa", "niter": -1}, "niter"),
    ({"name": "qlora", "quant_type": "int3"}, "quant_type"),
    ({"name": "qlora", "block_size": 48}, "block_size"),
    ({"name": "vera", "r": 0}, "r must be at least 1"),
    ({"name": "ia3", "target": "mlp"}, "unknown IA3 target"),
    ({"name": "ia3", "target": ["no_such_module"]}, "cannot apply the adapter"),
    ({"name": "prefix", "num_virtual_tokens": 0}, "num_virtual_tokens"),
    ({"name": "prompt", "init": "zeros"}, "init must be one of"),
    ({"name": "loftq", "bits": 3}, "bits must be 4 or 8"),
])
def test_bad_option_values(tiny_model, spec, message):
    with pytest.raises(ConfigError, match=message):
        build(tiny_model, spec)


def test_a_method_this_machine_cannot_run_says_why(tiny_model):
    for name in TRAINED:
        reason = unavailable(name)
        if reason:
            with pytest.raises(ConfigError, match="CUDA|XPU|needs"):
                build(tiny_model, {"name": name})
    if not torch.cuda.is_available():  # PEFT 0.21's LoftQ initialisation is CUDA/XPU only
        assert unavailable("loftq")


def test_every_method_has_a_report_family():
    from emotune.report.collect import method_family

    assert all(METHODS.get(name).family is not None for name in TRAINED)
    assert method_family({"name": "dora", "target": "all-linear"}) == "DoRA all-linear"
    assert method_family({"name": "prompt"}) == "prompt tuning"


def test_cli_lists_every_method_with_its_options():
    from typer.testing import CliRunner

    from emotune.cli import app
    from emotune.methods import option_help

    result = CliRunner().invoke(app, ["methods"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    for name, method in METHODS.items():
        assert f"{name}: " in result.output
        assert all(f"    {opt} = " in result.output for opt in option_help(method))


# ---- LoRA+ ---------------------------------------------------------------------------------------------

def loraplus_trainer(tiny_model, data_dir, out, precision="fp32", ratio=16.0):
    cfg = api.resolve_config(tiny_config(tiny_model, data_dir, precision=precision, max_steps=4, eval_every=2))
    cfg.method = {"name": "loraplus", "lr_ratio": ratio}
    model, tokenizer, _ = build_model(cfg, 6)
    lines = (data_dir / "emotion" / "train.txt").read_text().splitlines()
    texts, labels = [t.rsplit(";", 1)[0] for t in lines], [0] * len(lines)
    enc = Encoded(encode(tokenizer, texts, 64), labels)
    return Trainer(model, enc, enc, [str(i) for i in range(6)], cfg.train, out, lr=cfg.train.lr, warmup_ratio=0.0,
                   progress=False, lr_scales=lr_scales(cfg.method, model))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_loraplus_b_matrices_get_ratio_times_the_rate(tiny_model, data_dir, tmp_path, precision):
    trainer = loraplus_trainer(tiny_model, data_dir, tmp_path, precision, ratio=8.0)
    by_id = {id(m): n for n, m in trainer.masters.state_dict().items()}  # the fp32 masters the optimizer updates
    groups: dict[float, list[str]] = {}
    for g in trainer.optimizer.param_groups:
        groups.setdefault(g["lr_scale"], []).extend(by_id[id(p)] for p in g["params"])
    assert set(groups) == {1.0, 8.0}
    assert groups[8.0] and all(".lora_B." in n for n in groups[8.0])
    assert not any(".lora_B." in n for n in groups[1.0]) and any(".lora_A." in n for n in groups[1.0])
    trainer.train_step(list(range(8)), step=1)
    for g in trainer.optimizer.param_groups:
        assert g["lr"] == pytest.approx(trainer.lr_at(1) * g["lr_scale"])
    assert trainer.lr_at(1) > 0


def test_loraplus_resume_is_exact(tiny_model, data_dir, tmp_path):
    cfg = tiny_config(tiny_model, data_dir, max_steps=6, eval_every=3)
    cfg.method = {"name": "loraplus"}
    api.train(cfg, tmp_path / "straight", progress=False)
    with pytest.raises(Interrupted):
        api.train(cfg, tmp_path / "cut", progress=False, on_step=lambda step: step == 4)
    _, meta = load_tensors(tmp_path / "cut" / "checkpoint.safetensors")
    assert {g["lr_scale"] for g in json.loads(meta["param_groups"])} == {1.0, 16.0}
    assert api.train(cfg, tmp_path / "cut", progress=False)["train"]["resumed_from_step"] == 4
    a, _ = load_tensors(tmp_path / "straight" / "model.safetensors")
    b, _ = load_tensors(tmp_path / "cut" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_plain_methods_keep_the_two_plain_optimizer_groups(tiny_model, data_dir):
    from emotune.train.loop import optimizer_groups

    cfg = tiny_config(tiny_model, data_dir)
    model, _, _ = build_model(api.resolve_config(cfg), 6)
    assert lr_scales(cfg.method, model) == {}
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = optimizer_groups(named, 0.01, lr_scales(cfg.method, model))
    assert [(g["weight_decay"], g["lr_scale"]) for g in groups] == [(0.01, 1.0), (0.0, 1.0)]
    assert sum(len(g["params"]) for g in groups) == len(named)


# ---- what is special to some methods ---------------------------------------------------------------------

def test_pissa_starts_as_the_pretrained_function_on_a_residual_base(tiny_model):
    ids = torch.tensor([[101, 2000, 2001, 2002, 102]])
    mask = torch.ones_like(ids)
    plain = build(tiny_model, {"name": "lora", "dropout": 0.0}).eval()  # LoRA's B starts at zero
    pissa = build(tiny_model, {"name": "pissa"}).eval()
    with torch.no_grad():
        assert torch.allclose(plain(ids, mask), pissa(ids, mask), atol=1e-5)
    name = "encoder.base_model.model.encoder.layer.0.attention.self.query.base_layer.weight"
    residual, pretrained = dict(pissa.named_parameters())[name], dict(plain.named_parameters())[name]
    assert not torch.allclose(residual, pretrained, atol=1e-3)  # the principal part moved into the adapter


def test_qlora_quantizes_the_encoder_linears_not_the_head(tiny_model, trained):
    import bitsandbytes as bnb

    out, metrics = trained("qlora")
    # the 4-bit weights count as the weights they stand for: the same model size as LoRA's
    assert metrics["train"]["total_params"] == trained("lora")[1]["train"]["total_params"]
    model, _ = Run.open(out).load_model()
    linears = [m for n, m in model.encoder.named_modules() if isinstance(m, nn.Linear) and "lora_" not in n]
    four_bit = [m for m in linears if isinstance(m, bnb.nn.Linear4bit)]
    assert four_bit and len(four_bit) == len(linears)  # every base linear layer of the encoder is 4-bit
    assert type(model.head) is nn.Linear and model.head.weight.dtype == torch.float32
    assert all(m.weight.dtype == torch.uint8 for m in four_bit)
    merged = merge_adapter(model)  # dequantized, adapter folded in: a plain float encoder
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in merged.modules())


def test_vera_projections_are_rebuilt_not_saved(tiny_model, trained):
    out, _ = trained("vera")
    weights, _ = load_tensors(out / "model.safetensors")
    assert not any("vera_A" in n or "vera_B" in n for n in weights)
    assert any("vera_lambda_b" in n for n in weights) and any("vera_lambda_d" in n for n in weights)
    a, b = build(tiny_model, {"name": "vera"}, seed=1), build(tiny_model, {"name": "vera"}, seed=2)
    assert torch.equal(a.encoder.base_model.vera_A["default"], b.encoder.base_model.vera_A["default"])


def test_ia3_targets_keys_values_and_the_feed_forward(tiny_model):
    model = build(tiny_model, {"name": "ia3"})
    scaled = {n.split(".ia3_l")[0].split("model.encoder.", 1)[1] for n in trainable(model) if ".ia3_l" in n}
    assert scaled == {f"layer.{i}.{m}" for i in range(2) for m in ("attention.self.key", "attention.self.value",
                                                                   "output.dense")}
    ff = {n for n, m in model.encoder.named_modules() if getattr(m, "is_feedforward", False)}
    assert ff and all(n.endswith("output.dense") and ".attention." not in n for n in ff)


def test_only_base_preserving_lora_runs_share_a_base_when_served(trained):
    from emotune.inference.engines import ModelRegistry, PredictorEngine, SharedLoraEngine, shares_base

    assert {n for n in TRAINED if shares_base({"name": n})} == {"lora", "loraplus"}
    specs = [(n, trained(n)[0]) for n in ("lora", "loraplus", "dora", "prefix")]
    registry = ModelRegistry.load(specs, precision="fp32")
    engines = {n: type(registry[n].engine) for n, _ in specs}
    assert engines == {"lora": SharedLoraEngine, "loraplus": SharedLoraEngine, "dora": PredictorEngine,
                       "prefix": PredictorEngine}
    for name, out in specs:  # shared or alone, every run predicts as its own Predictor does
        texts, written = read_probs(out / "predictions_validation.csv")
        assert torch.allclose(registry[name].probabilities(texts), written, atol=1e-5)


@pytest.mark.integration
def test_qlora_on_minilm_learns_and_reloads(real_data, tmp_path):
    """The real encoder's sizes through bitsandbytes' 4-bit kernels on this machine, on a small slice."""
    from emotune.config import RunConfig

    cfg = RunConfig()
    cfg.data.data_dir = str(real_data)
    cfg.data.max_train_samples, cfg.data.max_eval_samples = 960, 200
    cfg.method = {"name": "qlora"}
    cfg.train.max_steps, cfg.train.eval_every = 60, 30
    out = tmp_path / "qlora"
    metrics = api.train(cfg, out, progress=False)
    counts = [c["support"] for c in metrics["validation"]["per_class"].values()]
    assert metrics["validation"]["accuracy"] > max(counts) / sum(counts) + 0.05
    assert metrics["train"]["trainable_pct"] < 1.0
    texts, written = read_probs(out / "predictions_validation.csv")
    assert torch.allclose(Predictor(out).probabilities(texts), written, atol=2e-6)  # the 4-bit base, rebuilt
    merged = Predictor(out, precision="fp32").probabilities(texts)  # dequantized, adapter folded in
    assert (merged.argmax(-1) == written.argmax(-1)).float().mean() >= 0.95
