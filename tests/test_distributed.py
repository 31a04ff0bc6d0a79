"""Data-parallel training: several processes (torchrun's launcher, gloo on the CPU) train one run as one process
would with the same global batch; a killed run resumes under another process count; launcher errors are one
line."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

from emotune.train import distributed
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


def test_the_process_group_emotune_joins_is_destroyed_at_exit(monkeypatch, tmp_path):
    """Left to the interpreter's teardown, a gloo group can abort a finished process (SIGABRT) and fail its
    launcher's whole run: emotune destroys it in an exit handler, registered once."""
    registered = []
    monkeypatch.setattr(atexit, "register", registered.append)
    monkeypatch.setattr(atexit, "unregister", lambda f: registered.remove(f) if f in registered else None)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        distributed.close_at_exit()
        distributed.close_at_exit()
        assert len(registered) == 1
        registered[0]()
        assert not dist.is_initialized()
        registered[0]()  # already gone: a no-op
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


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


@pytest.mark.parametrize("switch", [{"accumulate": 3}, {"gradient_checkpointing": True}])
def test_accumulation_and_checkpointing_train_as_the_plain_step(still_model, toy_data, tmp_path, switch):
    from emotune import api

    losses = []
    for name, extra in (("plain", {}), ("switched", switch)):
        cfg = tiny_config(still_model, toy_data, "lora", max_steps=10, **extra)
        cfg.model.dropout = 0.0
        api.train(cfg, tmp_path / name, progress=False)
        losses.append([h["validation"]["loss"] for h in _history(tmp_path / name)])
    assert losses[1] == pytest.approx(losses[0], abs=1e-5)
    assert losses[0][0] != pytest.approx(losses[0][-1], abs=1e-3)  # it learned


def test_gradient_checkpointing_needs_a_transformers_model(toy_data, tmp_path):
    from emotune import api
    from emotune.errors import ConfigError

    cfg = tiny_config("baseline", toy_data, "full", max_steps=2, gradient_checkpointing=True)
    with pytest.raises(ConfigError, match="gradient_checkpointing needs a Transformers model"):
        api.train(cfg, tmp_path / "run", progress=False)


def _numbers(d, prefix=""):
    """The numeric leaves of a nested dict, by dotted key."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_numbers(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[prefix + k] = v
    return out


def test_a_multitask_run_trains_data_parallel_as_in_one_process(still_model, toy_data, tmp_path):
    from .test_multitask import multitask_config

    cfg = multitask_config(still_model, toy_data, tmp_path).with_values(
        {"train.max_steps": 10, "train.batch_size": 6, "model.dropout": 0.0})
    config = tmp_path / "mt.yaml"
    config.write_text(cfg.to_yaml())
    p1, p2 = _train(config, tmp_path / "one"), _train(config, tmp_path / "two", 2)
    assert p1.returncode == 0, p1.stderr
    assert p2.returncode == 0, p2.stderr
    h1, h2 = _history(tmp_path / "one"), _history(tmp_path / "two")
    assert [h["step"] for h in h1] == [h["step"] for h in h2]
    for a, b in zip(h1, h2):
        va, vb = _numbers(a["validation"]), _numbers(b["validation"])
        assert va.keys() == vb.keys() and any("vad" in k for k in va)
        for k in va:
            assert vb[k] == pytest.approx(va[k], abs=1e-3), k
    assert json.loads((tmp_path / "two" / "metrics.json").read_text())["train"]["processes"] == 2


def test_grid_cells_train_data_parallel_under_torchrun(tiny_model, toy_data, tmp_path):
    import yaml

    spec = {"name": "dp", "base": {"data": {"data_dir": str(toy_data)}, "model": {"name": tiny_model},
                                   "train": {"batch_size": 8, "eval_every": 3, "max_steps": 6, "precision": "fp32",
                                             "patience": None, "lr": 5e-3}},
            "axes": {"method": ["full", {"name": "lora", "r": 4}]}}
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(spec))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "emotune.cli", "grid", str(tmp_path / "grid.yaml"), "--out", str(tmp_path / "g"),
                           "--no-progress"], env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "g" / "grid.json").read_text())
    assert len(summary["sessions"]) == 1 and [c["status"] for c in summary["cells"]] == ["done", "done"]
    for cell in summary["cells"]:
        metrics = json.loads((tmp_path / "g" / cell["cell"] / "metrics.json").read_text())
        assert metrics["train"]["processes"] == 2 and metrics["train"]["steps"] == 6
    assert proc.stdout.count("dp ->") == 1  # one table, from the main process


def test_under_several_processes_tune_and_grid_workers_refuse_in_one_line(monkeypatch, tmp_path):
    from emotune.errors import ConfigError
    from emotune.experiments.grid import Grid, run_grid
    from emotune.experiments.tune import tune
    from emotune.train import distributed

    monkeypatch.setattr(distributed, "_PROCESSES", Processes(0, 2))
    with pytest.raises(ConfigError, match="a trial does not train data-parallel"):
        tune(None, tmp_path, trials=1)
    with pytest.raises(ConfigError, match="leave --workers out"):
        run_grid(Grid.from_dict({"base": {}, "axes": {"train.lr": [1e-3]}}), tmp_path, workers=2)


def test_accelerate_launch_on_the_cpu_trains_in_the_processes_it_was_asked_for(tiny_model, toy_data, tmp_path):
    cfg = tiny_config(tiny_model, toy_data, "lora", max_steps=4)
    config, out = tmp_path / "run.yaml", tmp_path / "run"
    config.write_text(cfg.to_yaml())
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                           "-m", "emotune.cli", "train", "--config", str(config), "--out", str(out), "--no-progress"],
                          env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "metrics.json").read_text())["train"]["processes"] == 2
