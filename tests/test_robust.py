"""The robustness switches on tiny random models: mixout against the paper's definition, adversarial perturbations
(norm, restored embeddings, the summed loss), R-Drop's term per task type, EDA augmentation (seeded, fresh each
epoch, training data only, no antonym-like synonyms), each switch saved in config.yaml and refused where it
cannot apply."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from emotune import api
from emotune.config import RunConfig, TrainConfig
from emotune.data.encode import collate
from emotune.errors import ConfigError
from emotune.runs import build_model, resolve_config
from emotune.tasks import TASKS
from emotune.train.augment import EDA, antonym_like, epoch_augmenter, glove_synonyms
from emotune.train.robust import MixoutLinear, Objective, apply_mixout, mixout, per_text_normalised

from .conftest import tiny_config, write_emotion_folder
from .test_multilabel import write_multilabel_folder
from .test_multitask import multitask_config


# ---- mixout ---------------------------------------------------------------------------------------------------

def test_mixout_keeps_the_expected_value_and_p0_is_the_identity():
    torch.manual_seed(0)
    w, u = torch.randn(64, 32), torch.randn(64, 32)
    assert torch.equal(mixout(w, u, 0.0), w)
    mean = torch.stack([mixout(w, u, 0.3) for _ in range(4000)]).mean(0)
    assert torch.allclose(mean, w, atol=0.15)  # E[mixout(w, u, p)] = w
    # Each draw is, entry by entry, either w (rescaled around u) or u: (M w + (1-M) u - p u) / (1-p).
    one = mixout(w, u, 0.3)
    kept = torch.isclose(one, (w - 0.3 * u) / 0.7)
    assert torch.allclose(one[~kept], u[~kept], atol=1e-6) and 0.6 < kept.float().mean() < 0.8


def test_mixout_layers_mix_only_while_training_and_keep_their_names():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    names = list(net.state_dict())
    x = torch.randn(4, 8)
    assert apply_mixout(net, 0.5) == 2 and isinstance(net[0], MixoutLinear)
    assert list(net.state_dict()) == names  # the pretrained copy is not saved with the weights
    with torch.no_grad():
        net[0].weight += 1.0  # "fine-tuned" away from the pretrained weights
    net.eval()  # eval: plain linear layers with the fine-tuned weights
    plain = nn.functional.linear(torch.relu(nn.functional.linear(x, net[0].weight, net[0].bias)), net[2].weight,
                                 net[2].bias)
    assert torch.allclose(net(x), plain)
    net.train()
    assert not torch.allclose(net(x), plain)


def test_mixout_is_refused_where_it_cannot_apply(tiny_model, toy_data):
    cfg = tiny_config(tiny_model, toy_data, method="lora", mixout=0.1)
    with pytest.raises(ConfigError, match="train.mixout.*method lora leaves the pretrained weights frozen"):
        resolve_config(cfg)
    classic = tiny_config("baseline", toy_data, method="full", mixout=0.1)
    with pytest.raises(ConfigError, match="classic model has no pretrained linear layers"):
        resolve_config(classic)
    built = tiny_config(tiny_model, toy_data, method="zero-shot", rdrop=1.0)
    with pytest.raises(ConfigError, match="train.rdrop: method zero-shot does not train"):
        resolve_config(built)


# ---- adversarial training -------------------------------------------------------------------------------------

def _batch(tiny_model):
    cfg = RunConfig()
    cfg.model.name, cfg.method = tiny_model, {"name": "lora"}
    model, tok, _ = build_model(cfg, 3)
    ids = tok(["i feel wonderful today", "so angry", "what a sad and lonely evening it was"])["input_ids"]
    return model.eval(), collate(ids), torch.tensor([0, 1, 2])  # eval: no dropout, so passes repeat exactly


def _objective(model, **train) -> Objective:
    return Objective(TrainConfig(**train), model)


def _run(model, obj: Objective, batch, labels, deltas: list | None = None):
    loss_of = lambda logits: nn.functional.cross_entropy(logits, labels)  # noqa: E731

    def forward(b):
        out = model(**b)
        if deltas is not None and obj.perturbation is not None:
            deltas.append(None if obj.perturbation.delta is None else obj.perturbation.delta.detach().clone())
        return out
    return obj.backward(forward, batch, loss_of, lambda a, b: torch.zeros(()), lambda x: x)


def test_fgm_perturbation_has_norm_eps_per_text_and_the_loss_is_clean_plus_adversarial(tiny_model):
    model, batch, labels = _batch(tiny_model)
    emb = model.encoder.get_input_embeddings()
    weights = emb.weight.detach().clone()
    trainable = [p for p in model.parameters() if p.requires_grad]
    obj = _objective(model, adversarial="fgm", adversarial_eps=0.5)
    deltas: list = []
    value = float(_run(model, obj, batch, labels, deltas))
    mask = batch["attention_mask"].unsqueeze(-1).float()
    delta = deltas[1]  # the adversarial pass's perturbation
    assert torch.allclose(delta.flatten(1).norm(dim=1), torch.full((3,), 0.5), atol=1e-5)
    assert torch.equal(delta * (1 - mask), torch.zeros_like(delta))  # padding is never perturbed
    got = [p.grad.clone() for p in trainable]
    # The same by hand: clean loss, its gradient w.r.t. the embeddings, the perturbed loss; gradients of the sum.
    for p in trainable:
        p.grad = None
    zero = torch.zeros_like(delta, requires_grad=True)
    hook = emb.register_forward_hook(lambda m, a, out: out + zero)
    clean = nn.functional.cross_entropy(model(**batch), labels)
    g, = torch.autograd.grad(clean, zero, retain_graph=True)
    hook.remove()
    r = 0.5 * per_text_normalised(g, mask)
    hook = emb.register_forward_hook(lambda m, a, out: out + r)
    adv = nn.functional.cross_entropy(model(**batch), labels)
    hook.remove()
    (clean + adv).backward()
    assert value == pytest.approx(clean.item() + adv.item(), rel=1e-5)
    for a, b in zip(got, (p.grad for p in trainable)):
        assert torch.allclose(a, b, atol=1e-6)
    # The embeddings are exactly as before: the hook is gone and the weights were never touched.
    assert torch.equal(emb.weight, weights) and not emb._forward_hooks
    assert torch.allclose(model(**batch), model(**batch))


@pytest.mark.parametrize("kind", ["pgd", "freelb"])
def test_pgd_and_freelb_stay_in_the_eps_ball_and_train_on_their_steps(tiny_model, kind):
    model, batch, labels = _batch(tiny_model)
    obj = _objective(model, adversarial=kind, adversarial_eps=0.3, adversarial_steps=3)
    deltas: list = []
    value = float(_run(model, obj, batch, labels, deltas))
    passes = [d for d in deltas if d is not None]
    assert len(deltas) == (3 + 1 if kind == "pgd" else 3)  # pgd: clean + 2 inner + the adversarial pass
    for d in passes:
        assert (d.flatten(1).norm(dim=1) <= 0.3 + 1e-5).all()
    assert passes[-1].abs().sum() > 0 and np.isfinite(value)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert not model.encoder.get_input_embeddings()._forward_hooks


# ---- R-Drop ---------------------------------------------------------------------------------------------------

def test_rdrop_terms_per_task_type():
    torch.manual_seed(0)
    a, b = torch.randn(5, 4), torch.randn(5, 4)
    pa, pb = a.softmax(-1), b.softmax(-1)
    kl = lambda p, q: (p * (p / q).log()).sum(-1).mean()  # noqa: E731
    assert TASKS.get("classification").consistency(a, b).item() == pytest.approx(0.5 * (kl(pa, pb) + kl(pb, pa)).item(),
                                                                                   rel=1e-5)
    sa, sb = a.sigmoid(), b.sigmoid()
    bern = lambda p, q: (p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()).sum(-1).mean()  # noqa: E731
    assert TASKS.get("multilabel").consistency(a, b).item() == pytest.approx(0.5 * (bern(sa, sb) + bern(sb, sa)).item(),
                                                                               rel=1e-5)
    w = torch.tensor([1.0, 0.5, 2.0, 1.0])
    assert TASKS.get("regression").consistency(a, b, w).item() == pytest.approx(((a - b) ** 2 * w).mean().item())
    for name in ("classification", "multilabel", "regression"):
        assert TASKS.get(name).consistency(a, a).item() == pytest.approx(0.0, abs=1e-6)


def test_rdrop_loss_is_the_two_passes_mean_plus_alpha_times_their_disagreement(tiny_model):
    model, batch, labels = _batch(tiny_model)
    model.train()
    seen = []
    obj = _objective(model, rdrop=2.0)
    loss_of = lambda logits: nn.functional.cross_entropy(logits, labels)  # noqa: E731
    task = TASKS.get("classification")

    def forward(b):
        out = model(**b)
        seen.append(out.detach())
        return out
    value = obj.backward(forward, batch, loss_of, task.consistency, lambda x: x)
    a, b = seen[0].chunk(2)  # one doubled batch: two dropout masks
    assert not torch.allclose(a, b)
    expected = 0.5 * (loss_of(a) + loss_of(b)) + 2.0 * task.consistency(a, b)
    assert float(value) == pytest.approx(expected.item(), rel=1e-5)


# ---- EDA ------------------------------------------------------------------------------------------------------

def test_eda_synonyms_are_never_antonym_like_and_operations_do_what_they_say():
    syn = glove_synonyms(["happy", "sad", "good", "bad", "terrible", "love", "hate", "angry", "movie"])
    for word, options in syn.items():
        assert options and all(not antonym_like(word, o) for o in options), word
    assert "sad" not in syn["happy"] and "good" not in syn["bad"] and "hate" not in syn.get("love", [])
    assert antonym_like("happy", "sad") and not antonym_like("happy", "glad")
    eda = EDA({"synonym": 0.3, "insert": 0.3, "swap": 0.3, "delete": 0.3}, syn)
    rng = random.Random(0)
    words = "what a terrible and sad movie".split()
    assert sorted(eda("what a terrible and sad movie", rng, "swap").split()) == sorted(words)
    inserted = eda("what a terrible and sad movie", rng, "insert").split()
    assert len(inserted) == len(words) + 1 and all(w in inserted for w in words)
    replaced = eda("what a terrible and sad movie", rng, "synonym").split()
    assert len(replaced) == len(words) and replaced != words
    assert all(r == w or r in syn[w] for r, w in zip(replaced, words))
    deleted = eda("what a terrible and sad movie", rng, "delete").split()
    assert 1 <= len(deleted) <= len(words) and all(w in words for w in deleted)


def test_augmented_epochs_are_seeded_fresh_and_keep_their_labels(tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    texts = ["i am so happy with this great movie", "a sad and terrible day", "what an angry crowd tonight"]
    make = lambda seed: epoch_augmenter(texts, [0, 1, 2], tok, 32, {"copies": 2, "synonym": 0.3, "swap": 0.3},  # noqa: E731
                                        seed)
    first, again = make(1), make(1)
    e0, e1 = first(0), first(1)
    assert len(e0) == 3 * 3 and e0.labels == [0, 1, 2] * 3  # the texts, then two copies of each with its label
    assert e0.ids[:3] == tok(texts, truncation=True, max_length=32)["input_ids"]  # originals untouched
    assert again(0).ids == e0.ids and e1.ids != e0.ids  # seeded by (seed, epoch): a resumed epoch replays
    assert make(2)(0).ids != e0.ids
    assert epoch_augmenter(texts, [0, 1, 2], tok, 32, {}, 1) is None


# ---- every switch trains every task type, is saved, and only the training data is augmented -----------------------

SWITCHES = {"train.rdrop": 1.0, "train.adversarial": "fgm", "train.max_steps": 4, "train.eval_every": 2,
            "train.threads": 1}


def test_switches_train_a_classification_run_and_are_saved(tiny_model, tmp_path):
    data = write_emotion_folder(tmp_path / "data", n_train=24, n_eval=12)
    cfg = tiny_config(tiny_model, data, method="full").with_values(
        {**SWITCHES, "train.mixout": 0.2, "data.augment": {"copies": 1, "swap": 0.2, "delete": 0.1}})
    m = api.train(cfg, tmp_path / "run", progress=False)
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["train"]["mixout"] == 0.2 and saved["train"]["rdrop"] == 1.0
    assert saved["train"]["adversarial"] == "fgm" and saved["data"]["augment"]["swap"] == 0.2
    assert m["data"]["validation"] == 12 and m["data"]["train"] == 24  # the splits themselves are not augmented
    assert m["train"]["epochs"] == pytest.approx(4 / 6)  # 48 texts an epoch (24 + a copy each): 6 batches of 8
    assert np.isfinite(m["validation"]["loss"])


@pytest.mark.parametrize("kind", ["regression", "multilabel", "multitask"])
def test_switches_train_every_task_type(tiny_model, tmp_path, kind):
    emotion = write_emotion_folder(tmp_path / "data", n_train=24, n_eval=12)
    if kind == "multitask":
        cfg = multitask_config(tiny_model, emotion, tmp_path)
    else:
        cfg = tiny_config(tiny_model, emotion, method="lora")
        if kind == "multilabel":
            cfg.data.name, cfg.data.label_column, cfg.data.label_delimiter = str(
                write_multilabel_folder(tmp_path / "ml")), "labels", ","
        else:
            multitask_config(tiny_model, emotion, tmp_path)  # writes the regression data into tmp_path/reg
            cfg.data.name, cfg.data.target_columns = str(tmp_path / "reg"), ["V", "A"]
    cfg = cfg.with_values({**SWITCHES, "train.adversarial": "pgd", "train.adversarial_steps": 2})
    m = api.train(cfg, tmp_path / "run", progress=False)
    assert m["completed"] and m["train"]["steps"] == 4


def test_classic_models_take_adversarial_training_rdrop_and_augmentation(tmp_path):
    data = write_emotion_folder(tmp_path / "data", n_train=24, n_eval=12)
    cfg = tiny_config("baseline", data, method="full").with_values(
        {**SWITCHES, "train.lr": 1e-3, "data.augment": {"copies": 1, "swap": 0.2}})
    m = api.train(cfg, tmp_path / "run", progress=False)
    assert m["completed"] and m["train"]["augmented_copies"] == 1
