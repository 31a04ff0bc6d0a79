"""Knowledge distillation (train.teacher): the mixed loss, teacher outputs computed once and cached, the
teachers' hashes recorded, unlabeled texts, regression students, and one-line refusals."""

from __future__ import annotations

import pytest
import torch

from emotune import api
from emotune.errors import ConfigError
from emotune.tasks.classification import CLASSIFICATION
from emotune.train.distill import Distillation

from .conftest import tiny_config
from .test_regression import write_regression_folder


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EMOTUNE_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_the_soft_term_is_t_squared_kl_and_alpha_mixes_it_with_the_gold_loss():
    student, teacher = torch.randn(5, 3), torch.randn(5, 3)
    T = 2.0
    soft = CLASSIFICATION.soften([teacher], T)
    p = torch.softmax(teacher / T, -1)
    want = T**2 * (p * (p.log() - torch.log_softmax(student / T, -1))).sum(-1).mean()
    assert CLASSIFICATION.distill(student, soft, T) == pytest.approx(float(want), rel=1e-5)
    gold = torch.tensor([0, 1, 2, 0, 1])
    hard = CLASSIFICATION.loss(student, gold)
    rows = list(range(5))
    mixed = Distillation(soft, torch.ones(5, dtype=torch.bool), 0.3, T).loss(CLASSIFICATION, student, gold, rows,
                                                                            None, None)
    assert mixed == pytest.approx(float(0.3 * hard + 0.7 * want), rel=1e-5)
    # Rows without a gold label count in the soft term only.
    only = Distillation(soft, torch.zeros(5, dtype=torch.bool), 0.3, T).loss(CLASSIFICATION, student, gold, rows,
                                                                            None, None)
    assert only == pytest.approx(float(0.7 * want), rel=1e-5)
    # Several teachers: their softened probabilities averaged.
    other = torch.randn(5, 3)
    assert torch.allclose(CLASSIFICATION.soften([teacher, other], T),
                          (p + torch.softmax(other / T, -1)) / 2)


def test_a_student_learns_from_a_cached_teacher_and_records_it(tiny_model, toy_data, tmp_path, cache):
    teacher = tmp_path / "teacher"
    api.train(tiny_config(tiny_model, toy_data, "full", max_steps=10), teacher, progress=False)
    cfg = tiny_config(tiny_model, toy_data, "lora", max_steps=6, teacher=[str(teacher)], distill_alpha=0.5)
    first = api.train(cfg, tmp_path / "student", progress=False)["train"]
    from emotune.runs import weights_sha256

    assert first["teachers"] == [{"path": str(teacher.resolve()), "sha256": weights_sha256(teacher)}]
    assert (first["teacher_passes"], first["teacher_passes_cached"]) == (1, 0)
    assert len(list((cache / "teachers").glob("*.safetensors"))) == 1
    again = api.train(cfg, tmp_path / "student2", progress=False)["train"]
    # The same teacher on the same texts: read from the cache.
    assert (again["teacher_passes"], again["teacher_passes_cached"], again["teacher_pass_s"]) == (0, 1, 0)
    unlabeled = tmp_path / "extra.txt"
    unlabeled.write_text("i feel glad\nso scared tonight\n\nwhat a lovely day\n")
    cfg.train.distill_unlabeled = str(unlabeled)
    m = api.train(cfg, tmp_path / "student3", progress=False)["train"]
    # The training texts' outputs come from the cache; the new texts need a teacher pass.
    assert m["unlabeled_texts"] == 3 and (m["teacher_passes"], m["teacher_passes_cached"]) == (1, 1)


def test_a_regression_student_and_an_ensemble_teacher(tiny_model, tmp_path, cache):
    reg = write_regression_folder(tmp_path / "reg")

    def config(seed: int, **train):
        cfg = tiny_config(tiny_model, reg, "full", max_steps=8, seed=seed, **train)
        cfg.data.name, cfg.data.target_columns = str(reg), ["V", "A"]
        return cfg

    members = []
    for seed in (1, 2):
        members.append(tmp_path / f"t{seed}")
        api.train(config(seed), members[-1], progress=False)
    ensemble = config(0)
    ensemble.method = {"name": "ensemble", "members": [str(m) for m in members]}
    api.train(ensemble, tmp_path / "ens", progress=False)
    m = api.train(config(3, teacher=[str(tmp_path / "ens")]), tmp_path / "student", progress=False)
    assert m["train"]["teachers"][0]["path"] == str((tmp_path / "ens").resolve())
    assert "pearson" in m["validation"]


def test_refusals_are_one_line(tiny_model, toy_data, tmp_path, cache):
    teacher = tmp_path / "teacher"
    api.train(tiny_config(tiny_model, toy_data, "full", max_steps=4), teacher, progress=False)
    reg = write_regression_folder(tmp_path / "reg")
    cfg = tiny_config(tiny_model, reg, "full", max_steps=4, teacher=[str(teacher)])
    cfg.data.name, cfg.data.target_columns = str(reg), ["V", "A"]
    with pytest.raises(ConfigError, match="is a classification run; the student is a regression run"):
        api.train(cfg, tmp_path / "bad", progress=False)
    with pytest.raises(ConfigError, match="needs train.teacher"):
        tiny_config(tiny_model, toy_data, "full", distill_unlabeled="x.txt").train.validate()
    with pytest.raises(ConfigError, match="distill_alpha"):
        tiny_config(tiny_model, toy_data, "full", distill_alpha=1.5).train.validate()


def test_augmented_copies_are_made_once_and_labelled_by_the_teacher(tiny_model, toy_data, tmp_path, cache):
    from emotune.data import load_data
    from emotune.inference.predictor import Predictor
    from emotune.io import load_tensors
    from emotune.train.augment import copies_once

    teacher = tmp_path / "teacher"
    api.train(tiny_config(tiny_model, toy_data, "full", max_steps=4), teacher, progress=False)
    cfg = tiny_config(tiny_model, toy_data, "full", max_steps=4, teacher=[str(teacher)], seed=3)
    cfg.data.augment = {"copies": 2, "swap": 0.5, "delete": 0.3}
    m = api.train(cfg, tmp_path / "student", progress=False)["train"]
    texts = list(load_data(cfg.data, 3)["train"].texts)
    copies = copies_once(texts, cfg.data.augment, 3)
    assert copies == copies_once(texts, cfg.data.augment, 3) and copies != copies_once(texts, cfg.data.augment, 4)
    assert len(copies) == 2 * len(texts) and sum(c != t for c, t in zip(copies, texts * 2)) > len(texts)
    # The copies are extra rows labelled by the teacher on the copy itself; no fresh copies per epoch.
    assert m["teacher_labelled_copies"] == len(copies) and "augmented_copies" not in m
    # The training texts and the copies are cached apart: a student with other extra texts reuses the former.
    assert (m["teacher_passes"], m["teacher_passes_cached"]) == (2, 0)
    cached = {len(t): t for t in (load_tensors(f)[0]["logits"] for f in (cache / "teachers").glob("*.safetensors"))}
    assert set(cached) == {len(texts), 2 * len(texts)}
    assert torch.allclose(cached[2 * len(texts)], Predictor(teacher).logits(copies), atol=1e-5)


def test_a_multitask_student_learns_each_task_from_a_multitask_teacher(tiny_model, toy_data, tmp_path, cache):
    from .test_multitask import multitask_config

    teacher = tmp_path / "teacher"
    cfg = multitask_config(tiny_model, toy_data, tmp_path)
    cfg.train.max_steps = 8
    api.train(cfg, teacher, progress=False)
    cfg.train.teacher = [str(teacher)]
    m = api.train(cfg, tmp_path / "student", progress=False)
    # One teacher pass per task: each task's texts are its own.
    assert m["train"]["teachers"][0]["path"] == str(teacher.resolve()) and m["train"]["teacher_passes"] == 2
    assert {"emotion", "vad"} <= set(m["validation"])
    single = tmp_path / "single"
    api.train(tiny_config(tiny_model, toy_data, "full", max_steps=4), single, progress=False)
    cfg.train.teacher = [str(single)]
    with pytest.raises(ConfigError, match="single-task teacher cannot teach a multi-task student"):
        api.train(cfg, tmp_path / "bad", progress=False)
    cfg.train.teacher = [str(teacher)]
    cfg.multitask.tasks[0].data.augment = {"swap": 0.1}
    with pytest.raises(ConfigError, match="augmented copies of a single-task run only"):
        api.train(cfg, tmp_path / "bad2", progress=False)
