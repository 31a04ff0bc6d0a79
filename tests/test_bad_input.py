"""Bad input through the real command line: one line on stderr, exit code 2, no traceback; user text is
taken as typed (never re-read as YAML, never read as Rich markup)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from emotune.cli import app
from emotune.config import DataConfig, RunConfig
from emotune.data import load_data
from emotune.errors import ConfigError, DataError

from .conftest import write_emotion_folder

FAST = ["--max-steps", 2, "--eval-every", 2, "--precision", "fp32", "--no-progress", "--set", "method.r=2"]


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    """Tables as wide as they need (a test's stdout is no terminal: Rich would assume 80 columns)."""
    from rich.console import Console

    import emotune.cli

    monkeypatch.setattr(emotune.cli, "out", Console(width=250))


def cli(*args, input: str | None = None):
    return CliRunner().invoke(app, [str(a) for a in args], input=input)


def one_line_error(r, message: str) -> None:
    assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
    assert message in r.stderr, r.stderr
    assert "Traceback" not in r.output and len(r.stderr.strip().splitlines()) == 1, r.stderr


def write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def polarity_rows(n: int = 24) -> list[str]:
    return [f"{'great lovely film' if i % 2 else 'awful boring film'} {i},{'pos' if i % 2 else 'neg'}"
            for i in range(n)]


@pytest.fixture(scope="module")
def run(tiny_model, tmp_path_factory) -> Path:
    """A finished tiny run in a folder whose name looks like Rich markup."""
    root = tmp_path_factory.mktemp("bad-input")
    data = write_emotion_folder(root / "data")
    out = root / "runs" / "[bold]run[/bold]"
    r = cli("train", "emotion", "--data-dir", data, "--model", tiny_model, "--out", out, *FAST)
    assert r.exit_code == 0, (r.output, r.exception)
    return out


# ---- 1. CLI values are typed values, not YAML -------------------------------------------------------------


def test_cli_values_are_taken_as_typed(tiny_model, tmp_path):
    folder = tmp_path / "2024-01-01"
    path = write_csv(folder / "[x].csv", "text #1,on", polarity_rows())
    r = cli("train", path, "--text-column", "text #1", "--label-column", "on", "--model", tiny_model,
            "--out", tmp_path / "run", *FAST)
    assert r.exit_code == 0, (r.output, r.exception)
    cfg = RunConfig.from_yaml(tmp_path / "run" / "config.yaml")
    assert cfg.data.text_column == "text #1" and cfg.data.label_column == "on"
    assert cfg.data.name == str(path)


def test_zeroshot_values_are_taken_as_typed(tiny_model, tmp_path):
    path = write_csv(tmp_path / "[x].csv", "text #1,on", polarity_rows())
    r = cli("zeroshot", path, "--text-column", "text #1", "--label-column", "on", "--model", tiny_model,
            "--out", tmp_path / "zs", "--precision", "fp32", "--no-progress")
    assert r.exit_code == 0, (r.output, r.exception)
    cfg = RunConfig.from_yaml(tmp_path / "zs" / "config.yaml")
    assert (cfg.data.name, cfg.data.text_column, cfg.data.label_column) == (str(path), "text #1", "on")


def test_data_dir_named_like_a_date_or_number_stays_a_name():
    from emotune.cli import _settings
    from emotune.experiments.settings import apply_settings, parse_assignment

    for folder in ("2024-01-01", "1e5", "on"):
        assert apply_settings(RunConfig(), _settings([], folder)).data.data_dir == folder
    assert parse_assignment("data.name=2024-01-01") == ("data.name", "2024-01-01")
    assert RunConfig().override(["data.label_column=on", "data.name=[x].csv"]).data.label_column == "on"
    assert RunConfig().override(["data.name=[x].csv"]).data.name == "[x].csv"


@pytest.mark.parametrize("setting", ["method.target=[a", "train.lr=: x", "model.options={a"])
def test_bad_yaml_in_set_is_one_line(setting, tmp_path):
    one_line_error(cli("train", "emotion", "--out", tmp_path / "r", "--set", setting), "bad override")


def test_bad_yaml_in_grid_set_is_one_line(tmp_path):
    spec = tmp_path / "g.yaml"
    spec.write_text("base: {train: {max_steps: 2}}\naxes: {train.lr: [0.001, 0.002]}\n")
    one_line_error(cli("grid", spec, "--out", tmp_path / "g", "--dry-run", "--set", "method.target=[a"),
                   "bad setting")


# ---- 2. user text is never Rich markup --------------------------------------------------------------------


def test_predict_prints_texts_as_typed(run):
    r = cli("predict", run, "I [love] this", "a [/] b", "[bold]x")
    assert r.exit_code == 0, (r.output, r.exception)
    for text in ("I [love] this", "a [/] b", "[bold]x"):
        assert text in r.stdout


def test_error_messages_keep_file_names_as_typed(tmp_path):
    path = write_csv(tmp_path / "[bold]d[/].csv", "text,label", ["fine,pos", ",neg"])
    one_line_error(cli("train", path, "--out", tmp_path / "r"), f"{path}:3: empty text")


def test_runs_table_shows_folder_names_as_typed(run):
    r = cli("runs", run.parent)
    assert r.exit_code == 0, (r.output, r.exception)
    assert "[bold]run[/bold]" in r.stdout


# ---- 3. lines split on \n only ----------------------------------------------------------------------------


def test_loaders_split_lines_on_newline_only(tmp_path):
    root = write_emotion_folder(tmp_path / "data")
    train = root / "emotion" / "train.txt"
    train.write_text("i feel\u2028happy\x1ctoday\u0085now;joy\r\ni am blue\x1d\x1e;sadness\n", encoding="utf-8")
    data = load_data(DataConfig(name="emotion", data_dir=str(root)))
    assert data["train"].texts == ["i feel\u2028happy\x1ctoday\u0085now", "i am blue"]
    path = write_csv(tmp_path / "d.csv", "text,label", ["one\u2028two,pos", "three\x1cfour,neg", "five,neg"])
    data = load_data(DataConfig(name=str(path), validation_fraction=0.4))
    assert sorted(data["train"].texts + data["validation"].texts) == ["five", "one\u2028two", "three\x1cfour"]


def test_predict_file_splits_on_newline_only(run, tmp_path):
    f = tmp_path / "texts.txt"
    f.write_text("one\u2028two\r\nthree\x1cfour\n", encoding="utf-8")
    r = cli("predict", run, "--file", f, "--json")
    assert r.exit_code == 0, (r.output, r.exception)
    assert [o["text"] for o in json.loads(r.stdout)] == ["one\u2028two", "three\x1cfour"]
    r = cli("predict", run, "--file", "-", "--json", input="a\u0085b\nc\n")
    assert [o["text"] for o in json.loads(r.stdout)] == ["a\u0085b", "c"]


# ---- 4. CSV/TSV quoting ----------------------------------------------------------------------------------


def test_tsv_text_starting_with_a_quote_keeps_the_rows_after_it(tmp_path):
    path = tmp_path / "d.tsv"
    path.write_text('text\tlabel\n"quoted start\tpos\nsecond\tneg\nthird\tpos\n', encoding="utf-8")
    data = load_data(DataConfig(name=str(path), validation_fraction=0.34))
    assert sorted(data["train"].texts + data["validation"].texts) == ['"quoted start', "second", "third"]


def test_csv_unclosed_quote_is_one_line_naming_the_file(tmp_path):
    path = write_csv(tmp_path / "d.csv", "text,label", ["fine,pos", '"never closed,neg', "more,pos"])
    r = cli("train", path, "--out", tmp_path / "r")
    one_line_error(r, f"{path}:")
    assert "not valid CSV" in r.stderr


# ---- 5. labels -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, lines, message", [
    ("a.csv", ["text,label", "x,pos", "y,", "z,neg"], "a.csv:3: empty label"),
    ("b.csv", ["text,label", "x,pos", "y,NaN", "z,neg"], "b.csv:3: empty label"),
    ("c.jsonl", ['{"text": "x", "label": "a"}', '{"text": "y", "label": null}'], "c.jsonl:2: empty label"),
    ("d.jsonl", ['{"text": "x", "label": "a"}', '{"text": "y", "label": ["a", "b"]}'], "d.jsonl:2: label"),
    ("e.jsonl", ['{"text": "x", "label": 1}', '{"text": "y", "label": NaN}'], "e.jsonl:2: label nan"),
    ("f.jsonl", ['{"text": "x", "label": 1}', '{"text": "y", "label": 0}', '{"text": "z", "label": 1.0}'],
     "f.jsonl:3: label '1.0' is the number of label '1'"),
    ("g.csv", ["text,label", "x,1", "y,01"], "g.csv:3: label '01'"),
])
def test_bad_labels_are_refused_with_file_and_line(tmp_path, name, lines, message):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_data(DataConfig(name=str(path)))
    one_line_error(cli("train", path, "--out", tmp_path / "r"), message)


def test_labels_that_look_numeric_do_not_crash_the_sort(tmp_path):
    path = write_csv(tmp_path / "d.csv", "text,label", ["a,--1", "b,²", "c,1", "d,--1", "e,²", "f,1"])
    assert load_data(DataConfig(name=str(path)), seed=0).label_names == sorted(["--1", "²", "1"])
    path = write_csv(tmp_path / "n.csv", "text,label", ["a,10", "b,-2", "c,3", "d,10", "e,-2", "f,3"])
    assert load_data(DataConfig(name=str(path)), seed=0).label_names == ["-2", "3", "10"]


@pytest.mark.parametrize("split", ["test", "dev"])
def test_label_missing_from_training_is_refused(tmp_path, split):
    write_csv(tmp_path / "train.csv", "text,label", ["a,x", "b,y"])
    write_csv(tmp_path / f"{split}.csv", "text,label", ["c,x", "d,z"])
    r = cli("train", tmp_path, "--out", tmp_path / "r")
    one_line_error(r, f"{split}.csv:3: unknown label 'z'")
    assert "never in the training split" in r.stderr


class FakeFeature:
    def __init__(self, names):
        self.names = names


class FakeSplit:
    def __init__(self, texts, labels, names):
        self.data = {"text": texts, "label": labels}
        self.column_names = ["text", "label"]
        self.features = {"label": FakeFeature(names)} if names else {}

    def __getitem__(self, column):
        return self.data[column]


@pytest.fixture()
def fake_hub(monkeypatch):
    """A `datasets` module whose load_dataset returns the splits set in ``fake_hub["splits"]``."""
    import types

    state: dict = {"calls": []}

    def load_dataset(hub_id, trust_remote_code=None):
        state["calls"].append({"hub_id": hub_id, "trust_remote_code": trust_remote_code})
        return state["splits"]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    return state


def test_hub_test_split_labelled_minus_one_is_left_out(fake_hub):
    names = ["neg", "pos"]
    fake_hub["splits"] = {"train": FakeSplit(["a", "b", "c"], [0, 1, 0], names),
                          "validation": FakeSplit(["d", "e"], [1, 0], names),
                          "test": FakeSplit(["f", "g"], [-1, -1], names)}
    data = load_data(DataConfig(name="owner/set"))
    assert fake_hub["calls"] == [{"hub_id": "owner/set", "trust_remote_code": False}]
    assert set(data.splits) == {"train", "validation"}
    with pytest.raises(DataError, match="labels are hidden"):
        data["test"]
    fake_hub["splits"]["test"] = FakeSplit(["f", "g"], [1, -1], names)
    with pytest.raises(DataError, match=r"owner/set \(test, row 1\): unlabelled example"):
        load_data(DataConfig(name="owner/set"))


def test_hub_plain_labels_unknown_or_missing(fake_hub):
    fake_hub["splits"] = {"train": FakeSplit(["a", "b"], ["x", "y"], None),
                          "test": FakeSplit(["c"], ["z"], None)}
    with pytest.raises(DataError, match=r"owner/set \(test, row 0\): unknown label 'z'"):
        load_data(DataConfig(name="owner/set"))
    fake_hub["splits"] = {"train": FakeSplit(["a", "b"], ["x", None], None)}
    with pytest.raises(DataError, match="empty label"):
        load_data(DataConfig(name="owner/set"))


# ---- 6. ranges and shapes --------------------------------------------------------------------------------


@pytest.mark.parametrize("option, value, message", [
    ("--batch-size", 0, "train.batch_size must be at least 1"),
    ("--eval-every", 0, "train.eval_every must be at least 1"),
    ("--patience", 0, "train.patience must be at least 1"),
    ("--max-steps", 0, "train.max_steps must be at least 1"),
    ("--max-train-samples", -1, "data.max_train_samples must be at least 1"),
    ("--max-eval-samples", -5, "data.max_eval_samples must be at least 1"),
    ("--max-train-samples", 0, "data.max_train_samples must be at least 1"),
])
def test_out_of_range_options(tmp_path, option, value, message):
    one_line_error(cli("train", "emotion", "--out", tmp_path / "r", option, value), message)
    with pytest.raises(ConfigError, match=message):  # the library API checks them too
        RunConfig.from_dict({"train" if option.startswith(("--b", "--e", "--p", "--max-s")) else "data":
                             {option[2:].replace("-", "_").replace("max_steps", "max_steps"): value}})


def test_library_config_mutated_then_trained_is_checked(tmp_path):
    import emotune

    cfg = RunConfig()
    cfg.train.batch_size = 0
    with pytest.raises(ConfigError, match="batch_size"):
        emotune.train(cfg, tmp_path / "r")


@pytest.mark.parametrize("rows, message", [
    (["only,pos"], "1 training example(s) and no validation split"),
    ([], "no examples"),
])
def test_too_little_data(tmp_path, rows, message):
    path = write_csv(tmp_path / "d.csv", "text,label", rows)
    one_line_error(cli("train", path, "--out", tmp_path / "r"), message)


def test_empty_validation_file(tmp_path):
    write_csv(tmp_path / "train.csv", "text,label", ["a,x", "b,y"])
    write_csv(tmp_path / "val.csv", "text,label", [])
    one_line_error(cli("train", tmp_path, "--out", tmp_path / "r"), "val.csv: no examples")


@pytest.mark.parametrize("content, message", [
    ("- train\n- data\n", "expected a mapping of config sections"),
    ("train: 5\n", "train must be a mapping"),
    ("method: [lora]\n", "method must be a name or a mapping"),
    ("data: {label_column: on}\n", "data.label_column must be text"),
])
def test_bad_config_file_shapes(tmp_path, content, message):
    path = tmp_path / "c.yaml"
    path.write_text(content)
    one_line_error(cli("train", "emotion", "--out", tmp_path / "r", "--config", path), message)


def test_config_that_is_a_folder(tmp_path):
    one_line_error(cli("train", "emotion", "--out", tmp_path / "r", "--config", tmp_path), "a folder, not a config")


# ---- 7. runs and report skip unreadable run folders ------------------------------------------------------


@pytest.fixture()
def damaged_runs(run, tmp_path) -> Path:
    root = tmp_path / "runs"
    for name in ("good", "corrupt", "unknown-field"):
        shutil.copytree(run, root / name)
    (root / "corrupt" / "metrics.json").write_text('{"completed": tru')
    cfg = root / "unknown-field" / "config.yaml"
    cfg.write_text(cfg.read_text().replace("train:\n", "train:\n  learning_speed: 3\n", 1))
    return root


def test_runs_skips_unreadable_run_folders(damaged_runs):
    r = cli("runs", damaged_runs, "--json")
    assert r.exit_code == 0, (r.output, r.exception)
    assert [Path(row["run"]).name for row in json.loads(r.stdout)] == ["good"]
    warnings = r.stderr.strip().splitlines()
    assert len(warnings) == 2 and all(w.startswith("warning: skipped") for w in warnings), r.stderr
    assert "corrupt" in warnings[0] and "unreadable JSON" in warnings[0]
    assert "unknown-field" in warnings[1] and "learning_speed" in warnings[1]


def test_report_skips_unreadable_run_folders(damaged_runs, tmp_path):
    r = cli("report", damaged_runs, "--out", tmp_path / "report", "--no-test", "--examples", 0)
    assert r.exit_code == 0, (r.output, r.exception)
    warnings = [w for w in r.stderr.strip().splitlines() if w.startswith("warning:")]
    assert len(warnings) == 2, r.stderr
    assert any("corrupt" in w for w in warnings) and any("learning_speed" in w for w in warnings)
    assert (tmp_path / "report" / "report.md").is_file()


# ---- 8. evaluate names the split it evaluated ------------------------------------------------------------


def test_evaluate_train_split_column_is_named_train(run):
    r = cli("evaluate", run, "--split", "train")
    assert r.exit_code == 0, (r.output, r.exception)
    header = next(line for line in r.stdout.splitlines() if "metric" in line)
    assert "train" in header and "test" not in header


# ---- 9. plain progress lines when the console is not a terminal ------------------------------------------


def test_training_progress_without_a_terminal_prints_a_line_per_evaluation(tiny_model, tmp_path):
    data = write_emotion_folder(tmp_path / "data")
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")}
    args = ["train", "emotion", "--data-dir", data, "--model", tiny_model, "--out", tmp_path / "run",
            "--max-steps", 6, "--eval-every", 3, "--precision", "fp32", "--set", "method.r=2"]
    r = subprocess.run([sys.executable, "-m", "emotune.cli", *map(str, args)], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, env={**env, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("training: step")]
    assert [line.split()[2] for line in lines] == ["3/6", "6/6"], r.stderr
    for line in lines:
        assert "train loss" in line and "val accuracy" in line and "best" in line
        assert "elapsed" in line and "ETA" in line
