"""The ensemble method: finished runs' probabilities averaged into a run folder that loads like any other."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from emotune import api
from emotune.cli import app
from emotune.errors import ConfigError
from emotune.inference.predictor import Predictor
from emotune.runs import Run

from .conftest import tiny_config, write_emotion_folder

TEXTS = ["i feel happy today", "i feel scared right now", "i feel furious today", "i feel tender"]


def validation_texts(run: Path) -> list[str]:
    with open(run / "predictions_validation.csv", newline="", encoding="utf-8") as f:
        return sorted(row["text"] for row in csv.DictReader(f))


def member(model: str, data_dir: Path, out: Path, train_seed: int, **data) -> Path:
    cfg = tiny_config(model, data_dir, method="full", max_steps=4, seed=train_seed)
    for k, v in data.items():
        setattr(cfg.data, k, v)
    api.train(cfg, out, progress=False)
    return out


def write_csv_folder(folder: Path, rows: dict[str, list[tuple[str, str]]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, split_rows in rows.items():
        with (folder / f"{split}.csv").open("w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([("text", "label"), *split_rows])
    return folder


@pytest.fixture(scope="module")
def members(tiny_model, tmp_path_factory) -> list[Path]:
    """Three short runs on train.csv + test.csv: validation is carved from training data, and data.seed
    keeps it the same whatever train.seed."""
    root = tmp_path_factory.mktemp("ens")
    emotion = write_emotion_folder(root / "emotion-data") / "emotion"
    rows = {split: [tuple(line.rsplit(";", 1)) for line in (emotion / f"{split}.txt").read_text().splitlines()]
            for split in ("train", "test")}
    data = write_csv_folder(root / "data", rows)
    return [member(tiny_model, data, root / f"seed-{s}", s, name=str(data), seed=7) for s in (1, 2, 3)]


def ensemble_config(members: list[Path], **options):
    cfg = Run.open(members[0]).config
    cfg.method = {"name": "ensemble", "members": [str(m) for m in members], **options}
    return cfg


def test_ensemble_averages_member_probabilities(members, tmp_path):
    out = tmp_path / "ens"
    r = CliRunner().invoke(app, ["ensemble", *map(str, members), "--out", str(out), "--test", "--no-progress"])
    assert r.exit_code == 0, r.output
    run = Run.open(out)
    assert run.complete and run.config.method["name"] == "ensemble"
    assert run.config.method["members"] == [str(m.resolve()) for m in members]
    assert run.metrics["train"]["trainable_params"] == 0 and "test" in run.metrics
    # the members' own calibrated probabilities (each fitted its temperature on validation), averaged
    assert all(Run.open(m).task_state["calibration"]["temperature"] != 1.0 for m in members)
    expected = torch.stack([Predictor(m, precision="fp32").probabilities(TEXTS) for m in members]).mean(0)
    got = Predictor(out, precision="fp32").probabilities(TEXTS)
    assert torch.allclose(got, expected, atol=1e-5)
    # validated on every member's own validation examples
    texts = {m: validation_texts(m) for m in [out, *members]}
    assert len(set(map(tuple, texts.values()))) == 1 and len(texts[out]) > 0


def test_ensemble_weights(members, tmp_path):
    out = tmp_path / "weighted"
    r = CliRunner().invoke(app, ["ensemble", str(members[0]), str(members[1]), "-w", "3", "-w", "1",
                                 "--out", str(out), "--no-progress"])
    assert r.exit_code == 0, r.output
    p0, p1 = (Predictor(m, precision="fp32").probabilities(TEXTS) for m in members[:2])
    assert torch.allclose(Predictor(out, precision="fp32").probabilities(TEXTS), 0.75 * p0 + 0.25 * p1, atol=1e-5)


def test_members_on_other_examples_are_refused(members, tiny_model, tmp_path):
    data = Run.open(members[0]).config.data.name
    other = member(tiny_model, tmp_path, tmp_path / "other-split", 4, name=data)  # no data.seed: its seed carves
    cfg = ensemble_config([members[0], other])
    with pytest.raises(ConfigError, match="other examples"):
        api.train(cfg, tmp_path / "bad", progress=False)
    assert not (tmp_path / "bad" / "metrics.json").exists()


@pytest.mark.parametrize("members_of, weights, needle", [
    (lambda m: m[:1], None, "at least two"),
    (lambda m: m[:2], [1.0], "2 members"),
    (lambda m: m[:2], [-1.0, 1.0], "non-negative"),
])
def test_bad_options(members, tmp_path, members_of, weights, needle):
    cfg = ensemble_config(members_of(members), **({"weights": weights} if weights else {}))
    with pytest.raises(ConfigError, match=needle):
        api.train(cfg, tmp_path / "bad", progress=False)


def test_cli_errors_are_one_line(members, tiny_model, tmp_path):
    r = CliRunner().invoke(app, ["ensemble", str(members[0]), str(tmp_path / "nothing"), "--out",
                                 str(tmp_path / "x"), "--no-progress"])
    assert r.exit_code == 2 and "not a run folder" in r.output
    polar = write_csv_folder(tmp_path / "polar", {"train": [(f"i feel {w}", w) for w in ("good", "bad") * 20]})
    cfg = tiny_config(tiny_model, tmp_path, method="full", max_steps=2)
    cfg.data.name, cfg.data.seed = str(polar), 7
    api.train(cfg, tmp_path / "polar-run", progress=False)
    r = CliRunner().invoke(app, ["ensemble", str(members[0]), str(tmp_path / "polar-run"), "--out",
                                 str(tmp_path / "y"), "--no-progress"])
    assert r.exit_code == 2 and "labels" in r.output


def test_served_and_default_precision_match_the_library(members, tmp_path):
    from fastapi.testclient import TestClient

    from emotune.inference.engines import ModelRegistry
    from emotune.serve import create_app

    out = tmp_path / "served"
    api.train(ensemble_config(members), out, progress=False)
    want = Predictor(out, precision="fp32").probabilities(TEXTS)
    predictor = Predictor(out, precision="fp32")  # every member takes its own lean forward (merged, fast BERT)
    assert {type(m).__name__ for m in predictor.model.members} == {"FastBertClassifier"}
    assert torch.allclose(Predictor(out).probabilities(TEXTS), want, atol=1e-5)  # as trained: fp32 here
    assert torch.allclose(Predictor(out, precision="int8").probabilities(TEXTS), want, atol=5e-2)
    with TestClient(create_app(ModelRegistry.load([f"ens={out}"], precision="fp32"))) as client:
        r = client.post("/v1/predict", json={"texts": TEXTS, "model": "ens"})
    assert r.status_code == 200, r.text
    got = torch.tensor([list(p["probabilities"].values()) for p in r.json()["predictions"]])
    assert torch.allclose(got, want, atol=1e-5)
