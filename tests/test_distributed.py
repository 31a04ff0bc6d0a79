"""Data-parallel training: several processes (torchrun's launcher, gloo on the CPU) train one run as one process
would with the same global batch; a killed run resumes under another process count; launcher errors are one
line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from emotune.train.distributed import Processes

from .conftest import tiny_config

REPO = Path(__file__).resolve().parents[1]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}


def _train(config: Path, out: Path, processes: int | None = None, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "emotune.cli", "train", "--config", str(config), "--out", str(out),
           "--no-progress", *extra]
    if processes is not None:
        cmd += ["--processes", str(processes)]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)


def _history(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def still_model(tiny_model, tmp_path_factory) -> str:
    """The tiny BERT without dropout: two runs with the same batches then compute the same gradients."""
    folder = tmp_path_factory.mktemp("tiny-bert-no-dropout")
    for f in Path(tiny_model).iterdir():
        shutil.copy(f, folder / f.name)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (folder / "config.json").write_text(json.dumps(cfg))
    return str(folder)


def test_shards_cover_a_batch_once_and_weights_add_up():
    idx = [7, 3, 9, 1, 4]
    shares = [Processes(r, 2).shard(idx) for r in range(2)]
    assert sorted(shares[0] + shares[1]) == sorted(idx) and shares == [[7, 9, 4], [3, 1]]
    assert Processes().shard(idx) == idx and Processes().main and not Processes(1, 2).main


def test_two_processes_follow_one_process_with_the_same_global_batch(still_model, toy_data, tmp_path):
    cfg = tiny_config(still_model, toy_data, "full", max_steps=15)
    cfg.model.dropout = 0.0
    cfg.train.batch_size = 7  # uneven shares (4 + 3): each process's loss is weighted by its share
    config = tmp_path / "run.yaml"
    config.write_text(cfg.to_yaml())
    one, two = tmp_path / "one", tmp_path / "two"
    p1 = _train(config, one)
    p2 = _train(config, two, 2)
    assert p1.returncode == 0, p1.stderr
    assert p2.returncode == 0, p2.stderr
    h1, h2 = _history(one), _history(two)
    assert [h["step"] for h in h1] == [h["step"] for h in h2] == [5, 10, 15]
    for a, b in zip(h1, h2):
        assert b["validation"]["loss"] == pytest.approx(a["validation"]["loss"], abs=1e-4)
    assert h1[0]["validation"]["loss"] != pytest.approx(h1[-1]["validation"]["loss"], abs=1e-3)  # it learned
    m1, m2 = (json.loads((o / "metrics.json").read_text()) for o in (one, two))
    assert m1["train"]["processes"] == 1 and m2["train"]["processes"] == 2
    assert m2["validation"]["accuracy"] == pytest.approx(m1["validation"]["accuracy"], abs=1e-9)
    assert not list(two.glob(".*.tmp")) and not (two / "checkpoint.safetensors").exists()
    assert p2.stdout.count("validation") == 1  # one process prints the metrics table


def test_a_killed_data_parallel_run_resumes_under_one_process(tiny_model, toy_data, tmp_path):
    import psutil

    cfg = tiny_config(tiny_model, toy_data, "lora", max_steps=300, max_epochs=100)
    config, out = tmp_path / "run.yaml", tmp_path / "run"
    config.write_text(cfg.to_yaml())
    cmd = [sys.executable, "-m", "emotune.cli", "train", "--config", str(config), "--out", str(out),
           "--no-progress", "--processes", "2"]
    launcher = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # Wait for a checkpoint (a condition, not a duration), then kill one training process.
        while not (out / "checkpoint.safetensors").exists():
            assert launcher.poll() is None, launcher.communicate()[1]
            psutil.wait_procs([psutil.Process(launcher.pid)], timeout=0.05)
        workers = [c for c in psutil.Process(launcher.pid).children(recursive=True)
                   if "emotune.cli" in " ".join(c.cmdline())]
        assert len(workers) == 2
        workers[-1].send_signal(signal.SIGKILL)
        _, stderr = launcher.communicate(timeout=300)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode != 0
    assert len(stderr.strip().splitlines()[-1]) < 200  # the launcher's last word is one line
    done = _history(out)[-1]["step"]
    assert 0 < done < 300
    resumed = _train(config, out)  # one process picks up what two left
    assert resumed.returncode == 0, resumed.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["resumed_from_step"] >= 5 and metrics["train"]["steps"] == 300
    steps = [h["step"] for h in _history(out)]
    assert steps == sorted(set(steps)) and steps[-1] == 300


def test_more_processes_than_examples_is_one_line(tiny_model, toy_data, tmp_path):
    cfg = tiny_config(tiny_model, toy_data, "lora", max_steps=2)
    cfg.train.batch_size = 2
    config = tmp_path / "run.yaml"
    config.write_text(cfg.to_yaml())
    proc = _train(config, tmp_path / "run", 3)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if "error" in ln.lower()]
    assert any("3 processes for 120 training examples in batches of 2: use at most 2" in ln for ln in lines), proc.stderr
    bad = _train(config, tmp_path / "run", 0)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: --processes must be at least 1, got 0"
