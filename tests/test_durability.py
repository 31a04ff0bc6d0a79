"""Nothing lost: kill -9 while a run finishes, --overwrite that fails, two processes on one folder, stale
temporary files, resuming on changed data, durable and append-only writes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from emotune import api, io
from emotune.errors import DataError, Interrupted, RunError
from emotune.io import load_tensors
from emotune.runs import Run, read_history, run_lock

from .conftest import REPO, tiny_config, write_emotion_folder

# Runs `api.train` in a fresh process that SIGKILLs itself at one stage of finishing the run.
KILLER = textwrap.dedent("""
    import os, signal, sys
    from emotune import api, runs
    from emotune.config import RunConfig
    from emotune.tasks.classification import Classification

    stage, config, out = sys.argv[1:]

    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    def then_die(fn):
        def wrapped(*args, **kwargs):
            fn(*args, **kwargs)
            die()
        return wrapped

    if stage == "after-training":  # the loop is done; the final validation predictions are not written
        api.evaluate_model = die
    elif stage == "after-predictions":  # predictions written; the final metrics are not
        Classification.write_predictions = then_die(Classification.write_predictions)
    elif stage == "after-metrics":  # metrics written; the checkpoint is not removed yet
        runs.Run.update_metrics = then_die(runs.Run.update_metrics)
    api.train(RunConfig.from_yaml(config), out, progress=False)
""")


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}


@pytest.mark.parametrize("stage", ["after-training", "after-predictions", "after-metrics"])
def test_kill_9_while_finishing_never_sends_a_run_back_to_step_0(tiny_model, toy_data, tmp_path, stage):
    cfg = tiny_config(tiny_model, toy_data, "lora", max_steps=20)
    config, out = tmp_path / "run.yaml", tmp_path / "run"
    config.write_text(cfg.to_yaml())
    proc = subprocess.run([sys.executable, "-c", KILLER, stage, str(config), str(out)], env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9, proc.stderr
    evaluations = len(read_history(out))
    assert evaluations == 4  # steps 5, 10, 15, 20
    if stage == "after-metrics":
        assert Run.open(out).complete
        with pytest.raises(RunError, match="finished run"):
            api.train(cfg, out, progress=False)
        assert not (out / "checkpoint.safetensors").exists()  # the leftover is cleaned up
        return
    assert Run.open(out).status() == "interrupted"
    metrics = api.train(cfg, out, progress=False)  # resumes at the last step: nothing is trained again
    assert metrics["completed"] and metrics["train"]["resumed_from_step"] == 20
    assert len(read_history(out)) == evaluations
    assert not (out / "checkpoint.safetensors").exists()


def test_overwrite_keeps_the_old_run_until_the_new_one_is_complete(tiny_model, toy_data, tmp_path):
    out = tmp_path / "run"
    good = tiny_config(tiny_model, toy_data, "lora", max_steps=10)
    api.train(good, out, progress=False)
    weights, _ = load_tensors(out / "model.safetensors")

    typo = tiny_config(tiny_model, tmp_path / "no-such-data", "lora", max_steps=10)
    with pytest.raises(DataError):
        api.train(typo, out, overwrite=True, progress=False)
    assert Run.open(out).complete and Run.open(out).config.train.max_steps == 10
    again, _ = load_tensors(out / "model.safetensors")
    assert all(torch.equal(weights[k], again[k]) for k in weights)

    new = tiny_config(tiny_model, toy_data, "lora", max_steps=15)
    with pytest.raises(Interrupted):  # Ctrl-C during the replacement: the old run is still the run
        api.train(new, out, overwrite=True, progress=False, on_step=lambda step: step == 7)
    assert Run.open(out).complete and Run.open(out).config.train.max_steps == 10
    metrics = api.train(new, out, overwrite=True, progress=False)  # resumes the replacement, then swaps
    assert metrics["train"]["resumed_from_step"] == 7
    assert Run.open(out).complete and Run.open(out).config.train.max_steps == 15
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "run"]  # no staging folder left


def test_a_second_process_on_a_locked_run_gets_one_line_naming_the_holder(tiny_model, toy_data, tmp_path):
    out = tmp_path / "run"
    api.train(tiny_config(tiny_model, toy_data, "lora", max_steps=5), out, progress=False)
    with run_lock(out, "a test"):
        for args in (["train", "emotion", "--data-dir", str(toy_data), "--model", tiny_model, "--out", str(out),
                      "--max-steps", "5", "--overwrite", "--no-progress"],
                     ["evaluate", str(out), "--split", "validation"]):
            proc = subprocess.run([sys.executable, "-m", "emotune.cli", *args], env=_env(), capture_output=True,
                                  text=True, timeout=300)
            assert proc.returncode == 2, proc.stderr
            assert f"in use by process {os.getpid()} (a test)" in proc.stderr
            assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    # Released: the same process can take it again, and so can another one.
    assert api.evaluate(out, "validation")["accuracy"] >= 0


def test_stale_temporary_files_are_removed_when_a_run_starts(tiny_model, toy_data, tmp_path):
    cfg = tiny_config(tiny_model, toy_data, "lora", max_steps=10)
    out = tmp_path / "run"
    with pytest.raises(Interrupted):
        api.train(cfg, out, progress=False, on_step=lambda step: step == 5)
    stale = out / ".checkpoint.safetensors.99999.tmp"  # what a kill -9 during a write leaves
    stale.write_bytes(b"\0" * 1024)
    api.train(cfg, out, progress=False)
    assert not stale.exists()


def test_resuming_on_changed_data_is_a_clear_error(tiny_model, tmp_path):
    data = write_emotion_folder(tmp_path / "data", seed=0)
    cfg = tiny_config(tiny_model, data, "lora", max_steps=20)
    out = tmp_path / "run"
    with pytest.raises(Interrupted):
        api.train(cfg, out, progress=False, on_step=lambda step: step == 5)
    write_emotion_folder(tmp_path / "data", seed=1)  # other training texts, same labels
    with pytest.raises(RunError, match="trained on other data"):
        api.train(cfg, out, progress=False)


def test_history_is_appended_and_old_history_files_still_read(tiny_model, toy_data, tmp_path):
    out = tmp_path / "run"
    inodes = []
    api.train(tiny_config(tiny_model, toy_data, "lora", max_steps=20), out, progress=False,
              on_evaluate=lambda step, m: inodes.append(os.stat(out / "history.jsonl").st_ino))
    assert len(inodes) == 4 and len(set(inodes)) == 1  # one file appended to, never rewritten
    history = read_history(out)
    assert [h["step"] for h in history] == [5, 10, 15, 20]
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    io.write_json(legacy / "history.json", history)  # run folders written before history.jsonl
    assert read_history(legacy) == history


def test_writes_are_synced_before_they_replace_the_file(tmp_path, monkeypatch):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd)))
    monkeypatch.setattr(os, "replace", lambda a, b: (calls.append("replace"), real_replace(a, b)))
    io.write_json(tmp_path / "m.json", {"a": 1})
    assert calls == ["fsync", "replace", "fsync"]  # the file, the rename, then the folder


def test_ctrl_c_without_checkpoints_does_not_claim_one(tiny_model, toy_data, tmp_path):
    cfg = tiny_config(tiny_model, toy_data, "lora", max_steps=20, checkpoint=False)
    with pytest.raises(Interrupted) as e:
        api.train(cfg, tmp_path / "run", progress=False, on_step=lambda step: step == 3)
    assert "checkpoint saved" not in str(e.value) and "starts afresh" in str(e.value)


def test_runs_built_on_other_runs_refuse_a_member_retrained_since(tiny_model, toy_data, tmp_path):
    members = []
    for seed in (1, 2):
        members.append(tmp_path / f"m{seed}")
        api.train(tiny_config(tiny_model, toy_data, "full", max_steps=4, seed=seed), members[-1], progress=False)
    ens = tiny_config(tiny_model, toy_data)
    ens.method = {"name": "ensemble", "members": [str(m) for m in members]}
    api.train(ens, tmp_path / "ens", progress=False)
    transfer = tiny_config(tiny_model, toy_data)
    transfer.method = {"name": "zero-shot", "how": "transfer", "source": str(members[0])}
    api.train(transfer, tmp_path / "transfer", progress=False)
    assert api.predict(tmp_path / "ens", ["i feel happy"]) and api.predict(tmp_path / "transfer", ["i feel happy"])

    api.train(tiny_config(tiny_model, toy_data, "full", max_steps=4, seed=9), members[0], progress=False,
              overwrite=True)  # the member is retrained
    for run, role in (("ens", "member"), ("transfer", "source")):
        with pytest.raises(RunError, match=f"the {role} run's weights changed"):
            api.predict(tmp_path / run, ["i feel happy"])


def test_predicting_with_an_unfinished_run_is_refused_unless_asked(tiny_model, toy_data, tmp_path):
    from emotune.inference.predictor import Predictor

    out = tmp_path / "run"
    with pytest.raises(Interrupted):
        api.train(tiny_config(tiny_model, toy_data, "lora", max_steps=20), out, progress=False,
                  on_step=lambda step: step == 12)
    with pytest.raises(RunError, match="not finished training.*--unfinished"):
        api.predict(out, ["i feel happy"])
    p = Predictor(out, unfinished=True)
    assert p.step in (5, 10) and p.predict(["i feel happy"])[0]["label"]
    refused = subprocess.run([sys.executable, "-m", "emotune.cli", "predict", str(out), "i feel happy"], env=_env(),
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "--unfinished" in refused.stderr and "Traceback" not in refused.stderr
    asked = subprocess.run([sys.executable, "-m", "emotune.cli", "predict", str(out), "i feel happy", "--unfinished",
                            "--json"], env=_env(), capture_output=True, text=True, timeout=300)
    assert asked.returncode == 0 and f"best weights so far (step {p.step})" in asked.stderr, asked.stderr


def test_evaluate_records_the_precision_of_its_figures(tiny_model, toy_data, tmp_path):
    out = tmp_path / "run"
    api.train(tiny_config(tiny_model, toy_data, "lora", max_steps=5), out, progress=False)
    assert api.evaluate(out, "test", precision="int8")["precision"] == "int8"
    assert Run.open(out).metrics["test"]["precision"] == "int8"
    assert api.evaluate(out, "test")["precision"] == "trained-float32"  # as trained (tiny_config: fp32)
