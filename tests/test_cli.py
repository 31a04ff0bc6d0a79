"""The command line, end to end on a tiny model: real subprocess exit codes and output."""

import json
import os
import subprocess
import sys

import pytest


def emotune(*args, stdin=None):
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "emotune.cli", *map(str, args)], capture_output=True, text=True,
                          input=stdin, env=env, timeout=600)


@pytest.fixture(scope="module")
def cli_run(tiny_model, tmp_path_factory):
    from .conftest import write_emotion_folder

    root = tmp_path_factory.mktemp("cli")
    data = write_emotion_folder(root / "data")
    out = root / "runs" / "tiny"
    r = emotune("train", "emotion", "--data-dir", data, "--model", tiny_model, "--out", out, "--max-steps", 6,
                "--eval-every", 3, "--precision", "fp32", "--no-progress", "--set", "method.r=4", "--test")
    assert r.returncode == 0, r.stderr
    assert "accuracy" in r.stdout and "test" in r.stdout
    return out


def test_train_wrote_a_run_with_test_metrics(cli_run):
    metrics = json.loads((cli_run / "metrics.json").read_text())
    assert metrics["completed"] and "test" in metrics and (cli_run / "predictions_test.csv").exists()
    assert "r: 4" in (cli_run / "config.yaml").read_text()


def test_predict_json_and_file(cli_run, tmp_path):
    r = emotune("predict", cli_run, "i feel happy", "i am scared", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert [o["text"] for o in out] == ["i feel happy", "i am scared"]
    for o in out:
        assert set(o["probabilities"]) == {"sadness", "joy", "love", "anger", "fear", "surprise"}
        assert abs(sum(o["probabilities"].values()) - 1) < 1e-5
        assert o["label"] == max(o["probabilities"], key=o["probabilities"].get)
    f = tmp_path / "texts.txt"
    f.write_text("one\n\ntwo\n")
    r = emotune("predict", cli_run, "--file", f, "--json")
    assert [o["text"] for o in json.loads(r.stdout)] == ["one", "two"]


def test_evaluate_and_runs(cli_run):
    r = emotune("evaluate", cli_run, "--split", "validation")
    assert r.returncode == 0 and "accuracy" in r.stdout
    r = emotune("runs", cli_run.parent, "--json")
    rows = json.loads(r.stdout)
    assert rows[0]["status"] == "complete" and rows[0]["method"] == "lora"
    assert rows[0]["test_accuracy"] is not None


def test_methods_and_datasets_listed():
    r = emotune("methods")
    assert "lora" in r.stdout and "full" in r.stdout and "target" in r.stdout
    assert "emotion" in emotune("datasets").stdout


@pytest.mark.parametrize("args, message", [
    (["train", "emotion", "--data-dir", "/no/such/dir", "--out", "x"], "data directory not found"),
    (["train", "emotion", "--out", "x", "--method", "nope"], "unknown method 'nope'"),
    (["train", "emotion", "--out", "x", "--set", "train.lr"], "bad override"),
    (["evaluate", "/no/such/run"], "not a run folder"),
    (["predict", "/no/such/run", "hi"], "not a run folder"),
])
def test_user_errors_are_one_line_exit_2(args, message, tmp_path):
    r = emotune(*args)
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_bad_data_file_error_names_file_and_line(tmp_path):
    (tmp_path / "emotion").mkdir()
    for name in ("train.txt", "val.txt", "test.txt"):
        (tmp_path / "emotion" / name).write_text("fine;joy\n")
    (tmp_path / "emotion" / "val.txt").write_bytes(b"fine;joy\nbad \xff;joy\n")
    r = emotune("train", "emotion", "--data-dir", tmp_path, "--out", tmp_path / "run")
    assert r.returncode == 2 and f"{tmp_path / 'emotion' / 'val.txt'}:2:" in r.stderr
    assert "Traceback" not in r.stderr


def test_ctrl_c_saves_a_checkpoint_and_the_same_command_resumes(tiny_model, tmp_path):
    import signal
    import time

    from .conftest import write_emotion_folder

    data = write_emotion_folder(tmp_path / "data")
    out = tmp_path / "run"
    args = ["train", "emotion", "--data-dir", data, "--model", tiny_model, "--out", out, "--max-steps", 150,
            "--epochs", 100, "--eval-every", 10, "--patience", 1000, "--precision", "fp32", "--no-progress"]
    proc = subprocess.Popen([sys.executable, "-m", "emotune.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (out / "checkpoint.safetensors").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr
    assert "interrupted at step" in stderr and "Traceback" not in stderr
    assert (out / "checkpoint.safetensors").exists() and not (out / "metrics.json").exists()
    r = emotune(*args)
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stderr
    train = json.loads((out / "metrics.json").read_text())["train"]
    assert 0 < train["resumed_from_step"] < 150 and train["steps"] == 150
