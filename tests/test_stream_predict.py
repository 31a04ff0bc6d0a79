"""Streaming prediction of a corpus (`emotune predict RUN --file BIG.txt --out preds.jsonl`): sharded outputs
merged equal the unsharded one and Predictor.predict, a killed output resumes to the uninterrupted one, blank
lines are skipped with the input's numbering kept, and bad input is one line. On a tiny random BERT run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from emotune import api
from emotune.errors import ConfigError, DataError
from emotune.inference.predictor import Predictor
from emotune.inference.stream import parse_shard, predict_file

from .conftest import tiny_config, write_emotion_folder
from .test_bad_input import cli, one_line_error
from .test_serve import TEXTS


@pytest.fixture(scope="module")
def run(tiny_model, tmp_path_factory) -> Path:
    """A finished tiny LoRA run (as test_predictor's runs are trained, one of them)."""
    root = tmp_path_factory.mktemp("stream")
    out = root / "emo-lora"
    api.train(tiny_config(tiny_model, write_emotion_folder(root / "data"), "lora", max_steps=12, seed=1), out,
              progress=False)
    return out


@pytest.fixture(scope="module")
def predictor(run) -> Predictor:
    return Predictor(run, precision="fp32", batch_size=4, threads=1, streams=1)


# 22 lines: texts of several lengths, blank and whitespace-only lines among them (numbered, never predicted).
LINES = [f"{t} {'and more ' * (i % 4)}".strip() for i, t in enumerate(TEXTS * 4)]
LINES[3] = LINES[10] = ""
LINES[7] = "   "
LINES.append("")
LINES.insert(15, "")
KEPT = [i for i, t in enumerate(LINES) if t.strip()]


@pytest.fixture()
def corpus(tmp_path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    return path


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def same(a: list[dict], b: list[dict]) -> None:
    """Same lines, texts and labels; probabilities equal up to float rounding (batches differ)."""
    assert [(r.get("line"), r["text"], r["label"]) for r in a] == [(r.get("line"), r["text"], r["label"]) for r in b]
    for x, y in zip(a, b):
        assert x["probabilities"].keys() == y["probabilities"].keys()
        assert all(abs(x["probabilities"][k] - y["probabilities"][k]) < 1e-5 for k in x["probabilities"])


def test_shards_merged_equal_unsharded_and_predictor(predictor, corpus, tmp_path):
    whole = predict_file(predictor, corpus, tmp_path / "all.jsonl", chunk=4, progress=False)
    assert whole["texts"] == len(KEPT) and whole["skipped"] == 0 and not whole["complete"]
    assert whole["peak_rss_mb"] > 0
    full = records(tmp_path / "all.jsonl")
    assert [r["line"] for r in full] == KEPT  # blank lines absent, numbering that of the input file
    expected = [{"line": i, **row} for i, row in zip(KEPT, predictor.predict([LINES[i] for i in KEPT]))]
    same(full, expected)
    parts = []
    for i in range(2):
        s = predict_file(predictor, corpus, tmp_path / f"part{i}.jsonl", shard=(i, 2), chunk=3, progress=False)
        part = records(tmp_path / f"part{i}.jsonl")
        assert s["texts"] == len(part) and all(r["line"] % 2 == i for r in part)
        parts += part
    same(sorted(parts, key=lambda r: r["line"]), full)


@pytest.mark.parametrize("shard", [(0, 1), (1, 2)])
@pytest.mark.parametrize("k", [0, 2, 5])
def test_a_killed_output_resumes_to_the_uninterrupted_one(predictor, corpus, tmp_path, shard, k):
    full_path = tmp_path / "full.jsonl"
    predict_file(predictor, corpus, full_path, shard=shard, chunk=4, progress=False)
    full = full_path.read_bytes().splitlines(keepends=True)
    killed = tmp_path / "killed.jsonl"
    killed.write_bytes(b"".join(full[:k]) + full[k][: len(full[k]) // 2])  # k lines, then half a line
    s = predict_file(predictor, corpus, killed, shard=shard, chunk=4, progress=False)
    assert s["skipped"] == k and s["texts"] == len(full) - k
    same(records(killed), records(full_path))
    before = killed.read_bytes()

    def must_not_load() -> Predictor:
        raise AssertionError("a finished output loads no model")

    again = predict_file(must_not_load, corpus, killed, shard=shard, chunk=4, progress=False)
    assert again["complete"] and again["texts"] == 0 and again["skipped"] == len(full)
    assert killed.read_bytes() == before


def test_an_output_of_another_shard_or_input_is_refused(predictor, corpus, tmp_path):
    out = tmp_path / "p.jsonl"
    predict_file(predictor, corpus, out, shard=(0, 2), progress=False)
    with pytest.raises(DataError, match="another input or --shard"):
        predict_file(predictor, corpus, out, shard=(1, 2), progress=False)
    small = tmp_path / "small.txt"
    small.write_text("i feel happy\n", encoding="utf-8")
    with pytest.raises(DataError, match="has only 1 texts"):
        predict_file(predictor, small, out, progress=False)
    (tmp_path / "junk.jsonl").write_text("hello\n", encoding="utf-8")
    with pytest.raises(DataError, match="not a prediction record"):
        predict_file(predictor, corpus, tmp_path / "junk.jsonl", progress=False)


@pytest.mark.parametrize("spec", ["3/2", "a/b", "0/0", "-1/2", "1", "0/2/1"])
def test_bad_shards_are_config_errors(spec):
    with pytest.raises(ConfigError, match="shard"):
        parse_shard(spec)


def test_good_shards_parse():
    assert parse_shard("0/2") == (0, 2) and parse_shard(" 3/4 ") == (3, 4) and parse_shard("0/1") == (0, 1)


def test_a_bad_chunk_and_bytes_that_are_not_utf8(predictor, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\n\xff\xfe broken\n")
    with pytest.raises(ConfigError, match="chunk"):
        predict_file(predictor, bad, tmp_path / "o.jsonl", chunk=0, progress=False)
    with pytest.raises(DataError, match=r"bad.txt:2: bytes that are not UTF-8"):
        predict_file(predictor, bad, tmp_path / "o.jsonl", progress=False)


# ---- the command line ------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", ["3/2", "a/b", "0/0"])
def test_cli_bad_shard_is_one_line(run, corpus, tmp_path, spec):
    one_line_error(cli("predict", run, "--file", corpus, "--out", tmp_path / "o.jsonl", "--shard", spec), "shard")
    assert not (tmp_path / "o.jsonl").exists()


def test_cli_out_needs_file_and_shard_needs_out(run, corpus, tmp_path):
    needs_file = "--out streams the texts of --file"
    one_line_error(cli("predict", run, "i feel happy", "--out", tmp_path / "o.jsonl"), needs_file)
    one_line_error(cli("predict", run, "--out", tmp_path / "o.jsonl"), needs_file)
    one_line_error(cli("predict", run, "--file", corpus, "--shard", "0/2"), "--shard needs --out")
    one_line_error(cli("predict", run, "--file", corpus, "--out", tmp_path / "o.jsonl", "--chunk", 0), "chunk")


def test_cli_streams_a_file_and_stdin_then_says_complete(run, corpus, tmp_path):
    out = tmp_path / "o.jsonl"
    r = cli("predict", run, "--file", corpus, "--out", out, "--chunk", 5, "--precision", "fp32", "--no-progress")
    assert r.exit_code == 0, r.output
    assert f"predicted {len(KEPT)} texts" in r.stdout and "texts/s" in r.stdout and "peak RSS" in r.stdout
    assert [x["line"] for x in records(out)] == KEPT
    r = cli("predict", run, "--file", corpus, "--out", out, "--chunk", 5)
    assert r.exit_code == 0 and "is complete" in r.stdout and f"{len(KEPT)} predictions" in r.stdout, r.output
    piped = tmp_path / "piped.jsonl"
    r = cli("predict", run, "--file", "-", "--out", piped, "--shard", "1/2", "--precision", "fp32",
            input="\n".join(LINES) + "\n")
    assert r.exit_code == 0, r.output
    assert "texts/s" in r.stderr  # the progress line per chunk
    same(records(piped), [x for x in records(out) if x["line"] % 2 == 1])
