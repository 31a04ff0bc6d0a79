"""DeepSpeed ZeRO under the one loop (train.deepspeed, or accelerate launch --use_deepspeed): the shipped configs'
"auto" values come from the run config, a bad config file is one line, and where DeepSpeed is installed a ZeRO run
on the CPU (DeepSpeed's CPU accelerator, gloo) follows emotune's own step and leaves weights predict loads."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from emotune.config import TrainConfig
from emotune.errors import ConfigError
from emotune.train.deepspeed_step import RunShape, config_path, fill_config, read_config

from .conftest import tiny_config
from .test_distributed import _history, still_model  # noqa: F401 - the fixture: the tiny BERT without dropout

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "experiments" / "deepspeed"
ZERO2, ZERO3 = SHIPPED / "zero2.json", SHIPPED / "zero3-offload.json"


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src"), "DS_ACCELERATOR": "cpu"}


def test_the_shipped_configs_get_their_auto_values_from_the_run():
    cfg = TrainConfig(batch_size=16, accumulate=2, max_grad_norm=0.5)
    for path in (ZERO2, ZERO3):
        filled = fill_config(read_config(str(path)), RunShape(cfg, 2, torch.bfloat16))
        assert filled["train_micro_batch_size_per_gpu"] == 4 and filled["gradient_accumulation_steps"] == 2
        assert filled["train_batch_size"] == 16 and filled["gradient_clipping"] == 0.5
        assert filled["bf16"]["enabled"] is True and filled["fp16"]["enabled"] is False
        assert '"auto"' not in json.dumps(filled)
    assert fill_config(read_config(str(ZERO3)), RunShape(cfg, 1, torch.float16))["fp16"]["enabled"] is True


def test_accelerate_launch_use_deepspeed_passes_its_config_file(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(ZERO2))
    assert config_path(TrainConfig()) == str(ZERO2)
    assert config_path(TrainConfig(deepspeed="mine.json")) == "mine.json"  # the run config's own wins
    monkeypatch.delenv("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    with pytest.raises(ConfigError, match="pass --deepspeed_config_file"):
        config_path(TrainConfig())
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "false")
    assert config_path(TrainConfig()) is None


@pytest.mark.parametrize("content, message", [
    (None, "no DeepSpeed config file"),
    ("{not json", "is not JSON at line 1"),
    ("[1, 2]", "must hold a JSON object"),
    ('{"optimizer": {"type": "Adam"}}', "remove its 'optimizer' section"),
    ('{"gradient_accumulation_steps": 4}', "gradient_accumulation_steps is 4 but this run's train.accumulate gives 1"),
    ('{"bf16": {"enabled": true}}', "bf16.enabled is True but this run's train.precision gives False"),
])
def test_a_bad_deepspeed_config_is_one_line_before_training(tiny_model, toy_data, tmp_path, content, message):
    """Checked when training starts (not when a finished run's config is read elsewhere), before any step."""
    from emotune import api

    path = tmp_path / "ds.json"
    if content is not None:
        path.write_text(content)
    cfg = tiny_config(tiny_model, toy_data, "lora", max_steps=2, deepspeed=str(path))
    with pytest.raises(ConfigError) as e:
        api.train(cfg, tmp_path / "run", progress=False)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "run" / "checkpoint.safetensors").exists()


def test_the_command_line_says_a_missing_deepspeed_config_in_one_line(tiny_model, toy_data, tmp_path):
    cfg = tiny_config(tiny_model, toy_data, "lora", max_steps=2)
    config = tmp_path / "run.yaml"
    config.write_text(cfg.to_yaml())
    proc = subprocess.run([sys.executable, "-m", "emotune.cli", "train", "--config", str(config), "--out",
                           str(tmp_path / "run"), "--no-progress", "--deepspeed", str(tmp_path / "none.json")],
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and proc.stderr.strip().splitlines() == [
        f"error: train.deepspeed: no DeepSpeed config file {tmp_path / 'none.json'} (emotune ships "
        "experiments/deepspeed/zero2.json or zero3-offload.json)"], proc.stderr


def test_switches_deepspeed_does_not_take_are_refused(tiny_model, toy_data, tmp_path):
    from emotune import api

    cfg = tiny_config(tiny_model, toy_data, "lora", max_steps=2, deepspeed=str(ZERO2), adversarial="fgm")
    with pytest.raises(ConfigError, match="several backward passes per step"):
        api.train(cfg, tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match="must be the path of a DeepSpeed JSON config"):
        TrainConfig(deepspeed=3)


# ---- with DeepSpeed installed: real ZeRO runs on the CPU --------------------------------------------------------

def _config(model: str, data: Path, tmp_path: Path, **train) -> Path:
    cfg = tiny_config(model, data, "full", max_steps=10, **train)
    cfg.model.dropout = 0.0
    cfg.train.batch_size = 7  # uneven shares under 2 processes (4 + 3)
    path = tmp_path / f"run{len(list(tmp_path.glob('run*.yaml')))}.yaml"
    path.write_text(cfg.to_yaml())
    return path


# A bound for a run of a few seconds on a busy 2-core machine: reaching it means the processes hung.
HANG_S = 600


def _train(config: Path, out: Path, *extra: str, launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    """The training command, waited on until it exits; past HANG_S the test fails saying it hung. Its output goes to
    files, not pipes, so workers a launcher started in sessions of their own never keep the wait open; the launcher
    gets SIGTERM (torchrun passes it on to its workers, then kills them), SIGKILL if it is still there a minute on."""
    cmd = [sys.executable, *(launcher or []), "-m", "emotune.cli", "train", "--config", str(config), "--out",
           str(out), "--no-progress", *extra]
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        proc = subprocess.Popen(cmd, env=_env(), stdout=stdout, stderr=stderr, text=True, start_new_session=True)
        try:
            proc.wait(timeout=HANG_S)
            hung = False
        except subprocess.TimeoutExpired:
            hung = True
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        stdout.seek(0), stderr.seek(0)
        result = subprocess.CompletedProcess(cmd, proc.returncode, stdout.read(), stderr.read())
    if hung:
        pytest.fail(f"train {' '.join(extra)}: not finished after {HANG_S} s (hung); stderr ends:\n"
                    f"{result.stderr[-3000:]}")
    return result


def _losses(out: Path) -> list[float]:
    return [h["validation"]["loss"] for h in _history(out)]


def _predict(run: Path) -> list[str]:
    p = subprocess.run([sys.executable, "-m", "emotune.cli", "predict", str(run), "i feel happy", "i am scared",
                        "--json"], env=_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    return [r["label"] for r in json.loads(p.stdout)]


@pytest.fixture(scope="module")
def deepspeed():
    return pytest.importorskip("deepspeed")


def test_a_zero2_run_follows_emotunes_own_step_and_predict_loads_it(deepspeed, still_model, toy_data,  # noqa: F811
                                                                     tmp_path):
    """With train.accumulate=2 (the two-process test below covers 1)."""
    config = _config(still_model, toy_data, tmp_path, accumulate=2)
    plain, zero = _train(config, tmp_path / "plain"), _train(config, tmp_path / "zero2", "--deepspeed", str(ZERO2))
    assert plain.returncode == 0, plain.stderr
    assert zero.returncode == 0, zero.stderr[-3000:]
    assert _losses(tmp_path / "zero2") == pytest.approx(_losses(tmp_path / "plain"), abs=1e-4)
    assert _losses(tmp_path / "plain")[0] != pytest.approx(_losses(tmp_path / "plain")[-1], abs=1e-3)  # it learned
    metrics = json.loads((tmp_path / "zero2" / "metrics.json").read_text())
    assert metrics["train"]["deepspeed"]["zero_stage"] == 2 and metrics["completed"]
    assert not (tmp_path / "zero2" / "checkpoint.safetensors").exists()
    assert _predict(tmp_path / "plain") == _predict(tmp_path / "zero2")


def test_accelerate_launch_use_deepspeed_trains_zero2_in_two_processes(deepspeed, still_model, toy_data,  # noqa: F811
                                                                       tmp_path):
    config = _config(still_model, toy_data, tmp_path)
    plain = _train(config, tmp_path / "plain")
    two = _train(config, tmp_path / "two", launcher=[
        "-m", "accelerate.commands.launch", "--use_deepspeed", "--deepspeed_config_file", str(ZERO2),
        "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"])
    assert plain.returncode == 0, plain.stderr
    assert two.returncode == 0, two.stderr[-3000:]
    assert _losses(tmp_path / "two") == pytest.approx(_losses(tmp_path / "plain"), abs=1e-4)
    train = json.loads((tmp_path / "two" / "metrics.json").read_text())["train"]
    assert train["processes"] == 2 and train["deepspeed"]["zero_stage"] == 2


def _final_validation(out: Path) -> tuple[float, list[float]]:
    """metrics.json's validation loss and the validation predictions' probabilities: both from the best weights,
    computed after training by the main process alone."""
    loss = json.loads((out / "metrics.json").read_text())["validation"]["loss"]
    with open(out / "predictions_validation.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return loss, [float(v) for row in rows for k, v in row.items() if k.startswith("p_")]


@pytest.mark.parametrize("processes", [1, 2])
def test_a_zero3_offload_run_follows_emotunes_own_step(deepspeed, still_model, toy_data, tmp_path,  # noqa: F811
                                                       processes):
    """Two processes take uneven shares (4 + 3). The module handed back after training must be a plain one: ZeRO-3's
    leftovers made the main process's first forward afterwards gather alone (two processes hung there) or, in one
    process, put the last step's weights back over the best ones. The best step here is not the last one."""
    config = _config(still_model, toy_data, tmp_path)
    plain = _train(config, tmp_path / "plain")
    launcher = ["--processes", str(processes)] if processes > 1 else []
    zero = _train(config, tmp_path / "zero3", "--deepspeed", str(ZERO3), *launcher)
    assert plain.returncode == 0, plain.stderr
    assert zero.returncode == 0, zero.stderr[-3000:]
    assert _losses(tmp_path / "zero3") == pytest.approx(_losses(tmp_path / "plain"), abs=1e-4)
    metrics = json.loads((tmp_path / "zero3" / "metrics.json").read_text())
    train = metrics["train"]
    assert train["deepspeed"]["zero_stage"] == 3 and train["deepspeed"]["offload"] == ["offload_optimizer",
                                                                                        "offload_param"]
    assert train["processes"] == processes and metrics["completed"]
    assert train["best_step"] != train["steps"]
    (plain_loss, plain_p), (zero_loss, zero_p) = _final_validation(tmp_path / "plain"), \
        _final_validation(tmp_path / "zero3")
    assert zero_loss == pytest.approx(plain_loss, abs=1e-4)
    assert zero_p == pytest.approx(plain_p, abs=1e-4)
    assert _predict(tmp_path / "zero3") == _predict(tmp_path / "plain")
