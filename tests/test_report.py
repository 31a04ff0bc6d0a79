"""Reports from a few tiny runs: tables with the study's rows and columns, test figures only for the chosen
runs (once), example predictions, PNG plots, and an HTML page that needs nothing from the network."""

import json
import os
import re
import subprocess
import sys
from html.parser import HTMLParser

import pytest

from emotune import api
from emotune.errors import Interrupted
from emotune.experiments.grid import Grid, run_grid
from emotune.report import build_report

from .conftest import write_emotion_folder

VALIDATION_ROWS = ["loss", "accuracy (%)", "precision (weighted, %)", "recall (weighted, %)", "F1 (weighted, %)",
                   "runtime (s)", "steps", "steps to best", "steps/s", "samples/s", "peak memory (MB)",
                   "weights file (MB)", "trainable parameters", "trainable %", "run folder"]
TEST_ROWS = ["chosen run", "validation accuracy (%)", "test loss", "test accuracy (%)", "test precision (weighted, %)",
             "test recall (weighted, %)", "test F1 (weighted, %)", "test F1 (macro, %)", "runtime (s)",
             "steps to best", "steps/s", "samples/s", "peak memory (MB)", "weights file (MB)", "trainable parameters",
             "trainable %", "run folder"]
FAMILIES = ["full fine-tuning", "LoRA all-linear", "LoRA attention"]


@pytest.fixture(scope="module")
def runs(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    data = write_emotion_folder(root / "data")
    grid = Grid.from_dict({
        "base": {"data": {"data_dir": str(data)}, "model": {"name": tiny_model},
                 "train": {"batch_size": 8, "eval_every": 4, "max_steps": 12, "precision": "fp32", "patience": None,
                           "threads": 1}},
        "grids": [{"name": "full", "set": {"method": "full"}, "axes": {"train.lr": [1e-3, 3e-3]}},
                  {"name": "lora", "set": {"method": "lora", "train.lr": 5e-3},
                   "axes": {"method.r": [2, 4], "method.target": ["attention"]}},
                  {"name": "lora-all", "set": {"method": {"name": "lora", "target": "all-linear"}, "train.lr": 5e-3}}]})
    out = root / "runs"
    assert {r.status for r in run_grid(grid, out, progress=False)} == {"done"}
    with pytest.raises(Interrupted):  # an unfinished run: listed, never compared
        api.train(grid.cells[0].config.override(["train.seed=3"]), out / "cut", progress=False,
                  on_step=lambda s: s == 5)
    return out


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory):
    calls = []
    real = api.evaluate

    def counting(run_dir, split="test", **kw):
        calls.append((str(run_dir), split))
        return real(run_dir, split, **kw)

    api.evaluate = counting
    try:
        out = tmp_path_factory.mktemp("rep") / "report"
        first = build_report([runs], out, examples=3, seed=1)
        again = build_report([runs], out, examples=3, seed=1)
    finally:
        api.evaluate = real
    return out, first, again, calls


def md_tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    """(header, rows) of every Markdown table."""
    tables, block = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            block.append([c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
        elif block:
            tables.append((block[0], block[2:]))
            block = []
    return tables


def test_validation_tables_have_the_studys_rows_and_hyper_parameter_columns(report):
    out, first, _, _ = report
    text = (out / "report.md").read_text()
    assert [h for h in re.findall(r"^## Validation: (.+)$", text, re.M)] == FAMILIES
    tables = md_tables(text)
    full, lora_all, lora_att = tables[:3]
    assert full[0][0] == "" and sorted(h.rstrip(" ★") for h in full[0][1:]) == ["lr=0.001", "lr=0.003"]
    assert sorted(h.rstrip(" ★") for h in lora_att[0][1:]) == ["r=2", "r=4"]
    assert len(lora_all[0]) == 2  # one run: a single column
    for header, rows in (full, lora_all, lora_att):
        assert [r[0] for r in rows] == VALIDATION_ROWS
        assert sum(h.endswith("★") for h in header) == 1  # the chosen run is marked
        assert all(len(r) == len(header) and all(r) for r in rows)
    chosen_full = first.chosen["full fine-tuning"]
    accs = {h: float(v) for h, v in zip(full[0][1:], full[1][1][1:])}
    assert max(accs.values()) == accs[next(h for h in accs if h.endswith("★"))]
    assert chosen_full.name.startswith("full/")


def test_chosen_runs_alone_are_tested_once(report, runs):
    out, first, again, calls = report
    chosen = {str(e.path) for e in first.chosen.values()}
    assert sorted(c for c, _ in calls) == sorted(chosen) and {s for _, s in calls} == {"test"}
    assert again.evaluated == [] and sorted(first.evaluated) == sorted(e.name for e in first.chosen.values())
    for m in runs.rglob("metrics.json"):
        tested = "test" in json.loads(m.read_text())
        assert tested == (str(m.parent) in chosen), m
    test_table = md_tables((out / "report.md").read_text())[3]
    assert test_table[0] == [""] + FAMILIES
    assert [r[0] for r in test_table[1]] == TEST_ROWS


def test_examples_unfinished_and_files(report):
    out, first, _, _ = report
    text = (out / "report.md").read_text()
    examples = [t for t in md_tables(text) if t[0][0] == "right: text"]
    assert len(examples) == 3
    for header, rows in examples:
        assert header == ["right: text", "label", "conf.", "wrong: text", "true → predicted", "conf."]
        assert 1 <= len(rows) <= 3 and all(" → " in r[4] for r in rows if r[3])
    assert "## Unfinished runs (left out)" in text and "`cut`" in text
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["confusion.png", "coverage.png", "curves-full-fine-tuning.png", "curves-lora-all-linear.png",
                    "curves-lora-attention.png", "reliability.png", "tradeoff.png"]
    for p in pngs:
        assert (out / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({p})" in text
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["families"]) == FAMILIES and summary["runs"] == 5 and summary["unfinished"] == 1
    assert summary["families"]["full fine-tuning"]["chosen"]["test"]["accuracy"] is not None
    assert len((out / "runs.csv").read_text().strip().splitlines()) == 1 + 6


class _Checker(HTMLParser):
    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self):
        super().__init__()
        self.stack, self.images, self.external = [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a.get("src", ""))
        for key in ("src", "href"):
            if a.get(key) and not a[key].startswith(("data:", "#")):
                self.external.append(a[key])
        if tag in ("script", "link", "iframe"):
            self.external.append(tag)
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack.pop() == tag, f"unbalanced </{tag}>"


def test_html_is_self_contained(report):
    out, *_ = report
    page = (out / "report.html").read_text()
    checker = _Checker()
    checker.feed(page)
    assert checker.stack == [] and checker.external == []
    assert len(checker.images) == 7 and all(src.startswith("data:image/png;base64,") for src in checker.images)
    assert "http://" not in page and "https://" not in page
    assert page.count("<table>") == len(md_tables((out / "report.md").read_text()))


def test_cli_report(runs, tmp_path):
    env = {**os.environ, "COLUMNS": "200"}
    r = subprocess.run([sys.executable, "-m", "emotune.cli", "report", str(runs), "--out", str(tmp_path / "r"),
                        "--no-test", "--examples", "0", "--max-columns", "1"], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "full fine-tuning" in r.stdout and (tmp_path / "r" / "report.html").exists()
    text = (tmp_path / "r" / "report.md").read_text()
    assert "Shown: the best 1 on validation; all 2 are in `runs.csv`." in text
    assert "## Example test predictions" not in text
    assert len(md_tables(text)[0][0]) == 2  # one run column: the chosen one
    r = subprocess.run([sys.executable, "-m", "emotune.cli", "report", str(tmp_path / "none"), "--out",
                        str(tmp_path / "r2")], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2 and "no such folder" in r.stderr


def test_calibration_section_gives_before_and_after_and_its_plots(report):
    out, first, _, _ = report
    text = (out / "report.md").read_text()
    assert "## Calibration" in text and (out / "reliability.png").is_file() and (out / "coverage.png").is_file()
    header, rows = next((h, r) for h, r in md_tables(text) if h[:4] == ["family", "ECE", "Brier", "NLL"])
    assert {r[0] for r in rows} == set(FAMILIES)
    assert all("→" in cell for r in rows for cell in r[1:4]) and all(r[4].startswith("T = ") for r in rows)
