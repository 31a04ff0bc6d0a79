"""Experiment grids: YAML expansion, run folders named from axis values, resume, parallel workers, CLI."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from emotune import api
from emotune.errors import ConfigError, Interrupted
from emotune.experiments.grid import Grid, plan, run_grid

from .conftest import REPO


def spec(model="minilm", data_dir=None, **train):
    base = {"model": {"name": model}, "train": {"batch_size": 8, "eval_every": 3, "max_steps": 6,
                                                 "precision": "fp32", "patience": None, "threads": 1, **train}}
    if data_dir:
        base["data"] = {"data_dir": str(data_dir)}
    return {"name": "t", "base": base,
            "grids": [{"name": "full", "set": {"method": "full"}, "axes": {"train.lr": ["2e-5", 5.0e-5]}},
                      {"name": "lora", "set": {"method": {"name": "lora", "alpha": 16}},
                       "axes": {"method.r": [2, 8], "method.target": ["attention", "all-linear"]}}]}


def test_expansion_names_and_configs():
    g = Grid.from_dict(spec())
    assert [c.name for c in g.cells] == [
        "full/lr=2e-05", "full/lr=5e-05",
        "lora/r=2_target=attention", "lora/r=2_target=all-linear",
        "lora/r=8_target=attention", "lora/r=8_target=all-linear"]
    full, lora = g.cells[0].config, g.cells[5].config
    assert full.train.lr == 2e-5 and isinstance(full.train.lr, float)  # YAML 1.1 reads "2e-5" as a string
    assert full.method == {"name": "full"}  # switching method drops the previous method's options
    assert lora.method == {"name": "lora", "alpha": 16, "r": 8, "target": "all-linear"}
    assert lora.train.batch_size == 8 and lora.train.max_steps == 6
    assert g.select(["lora/r=8*"]).cells[0].name == "lora/r=8_target=attention"


def test_shared_axes_overrides_and_errors():
    s = spec()
    s["axes"] = {"train.seed": [1, 2]}
    g = Grid.from_dict(s, [("train.max_epochs", 3)])
    assert len(g.cells) == 12 and g.cells[0].name == "full/seed=1_lr=2e-05"
    assert all(c.config.train.max_epochs == 3 for c in g.cells)
    with pytest.raises(ConfigError, match="unknown key"):
        Grid.from_dict({**spec(), "axis": {}})
    with pytest.raises(ConfigError, match="unknown option"):  # method options are checked before training
        Grid.from_dict({"axes": {"method.rank": [2]}})
    with pytest.raises(ConfigError, match="unknown train option"):
        Grid.from_dict({"axes": {"train.learning_rate": [1e-3]}})
    with pytest.raises(ConfigError, match="share a run folder"):
        Grid.from_dict({"grids": [{"name": "a", "axes": {"train.lr": [1e-3]}},
                                  {"name": "a", "axes": {"train.lr": [1e-3]}}]})
    with pytest.raises(ConfigError, match="non-empty list"):
        Grid.from_dict({"axes": {"train.lr": 1e-3}})


def test_thesis_grid_file():
    g = Grid.from_yaml(REPO / "experiments" / "thesis-ft-vs-lora.yaml")
    full = [c for c in g.cells if c.group == "full"]
    lora = [c for c in g.cells if c.group == "lora"]
    assert len(full) == 6 and len(lora) == 12
    assert {(c.config.train.lr, c.config.train.weight_decay) for c in full} == {
        (lr, wd) for lr in (2e-5, 3e-5, 5e-5) for wd in (0.01, 0.001)}
    assert {(c.config.method["r"], c.config.train.lr, c.config.method["target"]) for c in lora} == {
        (r, lr, t) for r in (2, 8, 32) for lr in (3e-4, 1e-3) for t in ("attention", "all-linear")}
    for c in g.cells:
        t = c.config.train
        assert (t.batch_size, t.eval_every, t.patience, t.max_epochs, t.metric) == (16, 250, 4, 10, "accuracy")
        assert c.config.data.name == "emotion" and c.config.model.name == "minilm"
    for c in lora:
        assert c.config.method["alpha"] == 16 and c.config.method["dropout"] == 0.1
        assert c.config.method["bias"] == "none"


def tiny_grid(tiny_model, toy_data):
    return Grid.from_dict({"base": {"data": {"data_dir": str(toy_data)}, "model": {"name": tiny_model},
                                    "train": {"batch_size": 8, "eval_every": 3, "max_steps": 9, "precision": "fp32",
                                              "patience": None, "threads": 1, "lr": 5e-3}},
                           "axes": {"method": ["full", {"name": "lora", "r": 4}]}})


def test_run_resume_and_skip(tiny_model, toy_data, tmp_path):
    g = tiny_grid(tiny_model, toy_data)
    assert [c.name for c in g.cells] == ["method=full", "method=lora-r4"]
    out = tmp_path / "grid"
    # The second cell was interrupted at step 4 (a checkpoint from the evaluation at step 3 is kept).
    with pytest.raises(Interrupted):
        api.train(g.cells[1].config, out / g.cells[1].name, progress=False, on_step=lambda s: s == 4)
    assert [s for _, s in plan(g, out)] == ["new", "interrupted"]
    results = run_grid(g, out, progress=False)
    assert [r.status for r in results] == ["done", "done"]
    metrics = json.loads((out / "method=lora-r4" / "metrics.json").read_text())
    assert metrics["train"]["resumed_from_step"] == 4 and metrics["train"]["steps"] == 9
    assert [s for _, s in plan(g, out)] == ["done", "done"]
    again = run_grid(g, out, progress=False)
    assert [r.status for r in again] == ["skipped", "skipped"]
    summary = json.loads((out / "grid.json").read_text())
    assert [c["status"] for c in summary["cells"]] == ["skipped", "skipped"]
    # Each session is recorded; the total wall time is their sum (not a timing check: either may round to 0.0).
    assert [(s["trained"], s["skipped"]) for s in summary["sessions"]] == [(2, 0), (0, 2)]
    assert summary["wall_s"] == pytest.approx(round(sum(s["wall_s"] for s in summary["sessions"]), 1))
    assert (out / "experiment.yaml").exists() is False  # from_dict grids have no source text


def test_conflicting_folder_is_not_touched(tiny_model, toy_data, tmp_path):
    g = tiny_grid(tiny_model, toy_data).select(["method=full"])
    out = tmp_path / "grid"
    other = g.cells[0].config.override(["train.seed=7"])
    api.train(other, out / "method=full", progress=False)
    before = (out / "method=full" / "model.safetensors").read_bytes()
    [r] = run_grid(g, out, progress=False)
    assert r.status == "failed" and "different configuration" in r.error
    assert (out / "method=full" / "model.safetensors").read_bytes() == before


def test_parallel_workers(tiny_model, toy_data, tmp_path):
    g = tiny_grid(tiny_model, toy_data)
    results = run_grid(g, tmp_path / "grid", workers=2, progress=False)
    assert sorted(r.status for r in results) == ["done", "done"]
    assert all(r.metrics["steps"] == 9 for r in results)
    assert [s for _, s in plan(g, tmp_path / "grid")] == ["done", "done"]


def test_cli_dry_run_lists_cells(tiny_model, toy_data, tmp_path):
    f = tmp_path / "exp.yaml"
    f.write_text(yaml.safe_dump(spec(tiny_model, toy_data)))
    env = {**os.environ, "COLUMNS": "200"}
    r = subprocess.run([sys.executable, "-m", "emotune.cli", "grid", str(f), "--out", str(tmp_path / "out"),
                        "--dry-run", "--only", "lora/*"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "lora/r=8_target=all-linear" in r.stdout and "full/" not in r.stdout and "4 new" in r.stdout
    assert not (tmp_path / "out").exists()
    bad = subprocess.run([sys.executable, "-m", "emotune.cli", "grid", str(tmp_path / "missing.yaml"), "--out",
                          str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 2 and "not found" in bad.stderr


def test_ctrl_c_stops_parallel_cells_with_checkpoints(tiny_model, toy_data, tmp_path):
    s = {"base": {"data": {"data_dir": str(toy_data)}, "model": {"name": tiny_model},
                  "train": {"batch_size": 8, "eval_every": 5, "max_steps": 100000, "max_epochs": 100000,
                            "precision": "fp32", "patience": None, "threads": 1, "checkpoint": True}},
         "axes": {"method": ["full", "lora"]}}
    f, out = tmp_path / "long.yaml", tmp_path / "grid"
    f.write_text(yaml.safe_dump(s))
    env = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    # Started as a shell starts a background job (nohup, `cmd &`, many CI runners): SIGINT inherited as
    # ignored. The grid must still stop on it.
    proc = subprocess.Popen([sys.executable, "-m", "emotune.cli", "grid", str(f), "--out", str(out), "-j", "2",
                             "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True,  # its own process group: cleanup can kill the workers too
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        deadline = time.time() + 240  # a failure bound only: the loop waits for both checkpoints
        while not all((out / c / "checkpoint.safetensors").exists() for c in ("method=full", "method=lora")):
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends to the grid process
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:  # never leave workers training after a failure
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, stderr
    assert "run the same command again to resume" in stderr
    assert [st for _, st in plan(Grid.from_yaml(f), out)] == ["interrupted", "interrupted"]
    summary = json.loads((out / "grid.json").read_text())
    assert [c["status"] for c in summary["cells"]] == ["interrupted", "interrupted"]


@pytest.mark.parametrize("group", [".", "..", "../escape", ".hidden"])
def test_group_names_never_leave_the_grid_folder(tiny_model, toy_data, tmp_path, group):
    spec = {"base": {"data": {"data_dir": str(toy_data)}, "model": {"name": tiny_model}},
            "grids": [{"name": group, "set": {"method": "lora"}}, {"name": "other", "set": {"method": "full"}}]}
    grid = Grid.from_dict(spec)
    out = tmp_path / "out"
    for c in grid.cells:
        folder = (out / c.name).resolve()
        assert folder.is_relative_to(out) and folder != out and not folder.name.startswith(".")
