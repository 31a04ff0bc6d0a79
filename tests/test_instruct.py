"""Instruction tuning: the instruction data builder, answer-token masking, constrained answers against brute force,
numeric answers, a tiny Llama run that reloads with the same answers, and the CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from emotune import api
from emotune.config import RunConfig
from emotune.data.instruct import instruction_rows, read_instructions, write_instructions
from emotune.errors import ConfigError, DataError
from emotune.models.causal import ANSWER_WINDOW, build_instruct
from emotune.runs import Run
from emotune.tasks.instruct import INSTRUCT, answer_mask, candidates, grid, to_logits
from emotune.train.instruct import encode_rows

from .conftest import tiny_config, write_emotion_folder
from .test_multilabel import write_multilabel_folder
from .test_regression import write_regression_folder


def sources(tmp_path, tiny_model: str = "minilm") -> RunConfig:
    """A multi-task config over three small data sets: emotion classes, V/A regression, multi-label."""
    root = write_emotion_folder(tmp_path / "data", n_train=48, n_eval=12)
    for f in (root / "emotion").iterdir():  # every text unique, so that split membership is checkable
        lines = [line.replace(";", f" ({f.stem} {i});") for i, line in enumerate(f.read_text().splitlines())]
        f.write_text("\n".join(lines) + "\n")
    reg = write_regression_folder(tmp_path / "reg", n_train=30, n_eval=10)
    ml = write_multilabel_folder(tmp_path / "ml", n_train=30, n_eval=10)
    cfg = tiny_config(tiny_model, root)
    return cfg.with_values({"multitask.tasks": [
        {"name": "emotion", "data": {"name": "emotion"}},
        {"name": "vad", "data": {"name": str(reg), "target_columns": ["V", "A"]}},
        {"name": "tags", "data": {"name": str(ml), "label_delimiter": ",", "label_column": "labels"}}]})


def test_instruction_data_keeps_splits_apart_covers_every_task_and_is_seeded(tmp_path):
    cfg = sources(tmp_path)
    rows, tasks = instruction_rows(cfg, per_task=20, per_task_eval=8, seed=3)
    assert set(tasks) == {"emotion", "vad_V", "vad_A", "tags"}
    assert tasks["vad_V"]["type"] == "regression" and tasks["tags"]["type"] == "multilabel"
    for split in ("train", "validation", "test"):
        assert {r["task"] for r in rows[split]} == set(tasks)  # every task in every split
    train_texts = {r["input"] for r in rows["train"]}
    test_texts = {r["input"] for r in rows["test"]}
    source_test = set((tmp_path / "data" / "emotion" / "test.txt").read_text().splitlines())
    assert not {r["input"] for r in rows["train"] if r["task"] == "emotion"} & \
        {line.rsplit(";", 1)[0] for line in source_test}  # source splits followed: no test text in training
    assert sum(r["task"] == "emotion" for r in rows["train"]) == 20
    assert sum(r["task"] == "emotion" for r in rows["test"]) == 8
    assert len({r["template"] for r in rows["train"] if r["task"] == "emotion"}) >= 3  # templates vary...
    again, _ = instruction_rows(cfg, per_task=20, per_task_eval=8, seed=3)
    assert again == rows  # ...with the seed
    other, _ = instruction_rows(cfg, per_task=20, per_task_eval=8, seed=4)
    assert [r["template"] for r in other["train"]] != [r["template"] for r in rows["train"]]
    assert train_texts and test_texts
    # answers: label words, label lists, one-decimal numbers on the scale
    for r in rows["train"]:
        if r["task"] == "emotion":
            assert r["output"] == r["gold"] and r["output"] in tasks["emotion"]["choices"]
        elif r["task"] == "tags":
            assert r["output"] == (", ".join(r["gold"]) or "none")
        else:
            lo, hi = tasks[r["task"]]["scale"]
            assert len(r["output"].split(".")[1]) == 1 and lo <= float(r["output"]) <= hi


def test_instruction_folder_round_trips_and_exports_the_same_examples_for_encoders(tmp_path):
    cfg = sources(tmp_path)
    rows, tasks = instruction_rows(cfg, per_task=12, per_task_eval=6)
    folder = write_instructions(rows, tasks, tmp_path / "inst")
    back, tasks_back = read_instructions(folder)
    assert back == rows and tasks_back == tasks
    enc = RunConfig.from_yaml(folder / "encoders.yaml")
    assert [t.name for t in enc.multitask.tasks] == ["emotion", "vad", "tags"]
    from emotune.data import load_data

    vad = load_data(enc.multitask.tasks[1].data)
    assert vad.label_names == ["V", "A"] and len(vad["test"]) == 6  # V and A rows of one text are one record
    (folder / "train.jsonl").write_text('{"task": "emotion"}\n')
    with pytest.raises(DataError, match="missing field") as e:
        read_instructions(folder)
    assert "\n" not in str(e.value)
    with pytest.raises(DataError, match="not an instruction data folder"):
        read_instructions(tmp_path)


def test_the_loss_reads_answer_tokens_only():
    logp = -torch.arange(1.0, 7.0).reshape(1, 6).repeat(2, 1)  # [-1 ... -6]
    counts = torch.tensor([1, 3])
    mask = answer_mask(counts, 6)
    assert mask.tolist() == [[False] * 5 + [True], [False] * 3 + [True] * 3]
    assert INSTRUCT.loss(logp, counts).item() == pytest.approx((6 + 4 + 5 + 6) / 4)


def test_the_model_scores_the_last_tokens_as_a_plain_forward_does(tiny_llama):
    model, tok = build_instruct(RunConfig().model.__class__(name=tiny_llama))
    model.eval()
    rows = [{"instruction": "Which emotion?", "input": "i feel happy", "output": "joy"},
            {"instruction": "Which emotion? Answer with one word.", "input": "so scared of the dark tonight",
             "output": "fear"}]
    enc = encode_rows(tok, rows, 64)
    assert enc.labels == [len(tok.answer("joy")), len(tok.answer("fear"))]
    assert enc.ids[0][-enc.labels[0]:] == tok.answer("joy")
    from emotune.data.encode import collate

    b = collate(enc.ids, tok.pad_token_id)
    got = model(**b)
    assert got.shape == (2, ANSWER_WINDOW)
    with torch.no_grad():
        for i, ids in enumerate(enc.ids):
            logits = model.encoder(input_ids=torch.tensor([ids])).logits[0].log_softmax(-1)
            want = [logits[t - 1, ids[t]].item() for t in range(1, len(ids))][-ANSWER_WINDOW:]
            want = [0.0] * (ANSWER_WINDOW - len(want)) + want
            assert got[i].tolist() == pytest.approx(want, abs=1e-4)


def test_constrained_scores_equal_brute_force_token_sums(tiny_llama):
    model, tok = build_instruct(RunConfig().model.__class__(name=tiny_llama))
    model.eval()
    prompts = [tok.prompt("Pick a label.", t, 64) for t in ("a calm day", "what a terrible and loud evening it was")]
    words = ["joy", "sadness", "surprise", "love", "joy, love", "3.2", "3.25"]  # shared prefixes on purpose
    cands = [tok.answer(w, end=False) for w in words]
    got = model.candidate_scores(prompts, cands, tok.pad_token_id, batch_size=2)
    with torch.no_grad():
        for i, p in enumerate(prompts):
            for k, c in enumerate(cands):
                ids = torch.tensor([p + c])
                logp = model.encoder(input_ids=ids).logits[0].log_softmax(-1)
                want = sum(logp[len(p) + j - 1, c[j]].item() for j in range(len(c)))
                assert got[i, k].item() == pytest.approx(want, abs=1e-4)


def test_free_answers_are_parsed_or_counted_as_failures():
    from emotune.tasks.instruct import parse

    emo = {"type": "classification", "choices": ["joy", "sadness", "love"]}
    assert parse(emo, " Joy.") == "joy" and parse(emo, "The emotion is sadness") == "sadness"
    assert parse(emo, "joy or love") is None and parse(emo, "enjoyment") is None
    tags = {"type": "multilabel", "choices": ["joy", "anger"]}
    assert parse(tags, "anger, joy") == ["anger", "joy"] and parse(tags, "none") == [] and parse(tags, "joy, x") is None
    vad = {"type": "regression", "scale": [1.0, 5.0]}
    assert parse(vad, "3.4") == 3.4 and parse(vad, "about 7") == 5.0 and parse(vad, "high") is None


def test_numeric_answers_are_the_expectation_over_the_scale():
    desc = {"type": "regression", "scale": [1.0, 2.0]}
    assert candidates(desc) == [f"{1 + v / 10:.1f}" for v in range(11)] and grid([1, 5])[-1] == 5.0
    scores = torch.full((2, 11), -50.0)
    scores[0, 2] = 0.0  # all mass on 1.2
    scores[1, 0] = scores[1, 10] = 0.0  # half on 1.0, half on 2.0
    assert to_logits(desc, scores)[:, 0].tolist() == pytest.approx([1.2, 1.5])
    multi = to_logits({"type": "multilabel", "choices": ["a", "b"]}, torch.tensor([[0.0, math.log(3)]]))
    assert torch.sigmoid(multi).tolist()[0] == pytest.approx([0.25, 0.75])


def test_a_tiny_llama_tunes_evaluates_and_reloads_with_the_same_answers(tmp_path, tiny_llama):
    cfg = sources(tmp_path)
    rows, tasks = instruction_rows(cfg, per_task=12, per_task_eval=6)
    folder = write_instructions(rows, tasks, tmp_path / "inst")
    run_cfg = tiny_config(tiny_llama, tmp_path, max_steps=6, eval_every=3, lr=1e-2)
    run_cfg.data.name = str(folder)
    out = tmp_path / "run"
    metrics = api.train(run_cfg, out, progress=False)
    run = Run.open(out)
    assert run.config.data.task == "instruct" and run.config.train.metric == "loss"
    val = metrics["validation"]
    assert set(tasks) <= set(val) and 0 <= val["emotion"]["accuracy"] <= 1 and "pearson" in val["vad_V"]
    state = json.loads((out / "task_state.json").read_text())
    assert "thresholds" in state["fitted"]["tags"] and state["tasks"] == tasks
    history = [json.loads(line)["validation"]["loss"] for line in (out / "history.jsonl").read_text().splitlines()]
    assert len(history) == 2 and all(math.isfinite(v) for v in history)
    test = api.evaluate(out, "test")
    again = api.evaluate(out, "test")  # a fresh load of the saved adapter answers the same
    for name in tasks:
        for key, v in test[name].items():
            if isinstance(v, float):
                assert again[name][key] == pytest.approx(v, abs=1e-6), (name, key)
    assert (out / "predictions_test_emotion.csv").is_file() and test["answers_per_s"] > 0
    generated = api.evaluate(out, "test", answers="generated")
    assert set(generated) == set(tasks) and all(0 <= m["parse_failure_rate"] <= 1 for m in generated.values())
    assert "test_generated" in Run.open(out).metrics and Run.open(out).metrics["test"]["emotion"] == test["emotion"]
    from emotune.cli import app

    r = CliRunner().invoke(app, ["evaluate", str(out), "--answers", "generated"])
    assert r.exit_code == 0, r.output
    assert all(f"{name}: parse failures" in r.output for name in tasks)
    parsed = [name for name, m in generated.items() if m["parse_failure_rate"] < 1]
    assert parsed and r.output.count("┃ metric") == len(parsed), r.output  # a table for each task that parsed
    # predict: every task's answer for a text, each in its task type's format
    [row] = api.predict(out, ["i feel happy today"])
    answers = row["tasks"]
    assert answers["emotion"]["label"] in tasks["emotion"]["choices"]
    assert sum(answers["emotion"]["probabilities"].values()) == pytest.approx(1, abs=1e-5)
    lo, hi = tasks["vad_V"]["scale"]
    assert lo <= answers["vad_V"]["values"]["V"] <= hi
    assert set(answers["tags"]["labels"]) <= set(tasks["tags"]["choices"])
    # the predicted answer is the one evaluation scores highest for the same prompt
    from emotune.train.instruct import answer_logits

    model, tok = run.load_model()
    rows = [{"task": "emotion", "instruction": tasks["emotion"]["instruction"], "input": "i feel happy today"}]
    best = answer_logits(model, tok, rows, tasks, run.config.data.max_length, 4)["emotion"].argmax().item()
    assert answers["emotion"]["label"] == tasks["emotion"]["choices"][best]
    # served: the same answers over HTTP, LoRA merged
    from fastapi.testclient import TestClient

    from emotune.inference.engines import ModelRegistry
    from emotune.serve import create_app

    with TestClient(create_app(ModelRegistry.load([f"llm={out}"], precision="fp32"))) as client:
        r = client.post("/v1/predict", json={"texts": ["i feel happy today"], "model": "llm"})
    assert r.status_code == 200, r.text
    served = r.json()["predictions"][0]["tasks"]
    assert served["emotion"]["label"] == answers["emotion"]["label"]
    assert served["vad_V"]["values"]["V"] == pytest.approx(answers["vad_V"]["values"]["V"], abs=1e-3)


def test_methods_that_bypass_the_layers_are_refused_for_decoders(tmp_path, tiny_llama):
    cfg = sources(tmp_path)
    rows, tasks = instruction_rows(cfg, per_task=4, per_task_eval=2)
    folder = write_instructions(rows, tasks, tmp_path / "inst")
    run_cfg = tiny_config(tiny_llama, tmp_path, method="prompt", max_steps=1)
    run_cfg.data.name = str(folder)
    with pytest.raises(ConfigError, match="PEFT's own model forward") as e:
        api.train(run_cfg, tmp_path / "run", progress=False)
    assert "\n" not in str(e.value)
    run_cfg = tiny_config(tiny_llama, tmp_path, max_steps=1)
    run_cfg.data.name = str(tmp_path / "data")
    run_cfg.data.task = "instruct"
    with pytest.raises(ConfigError, match="instruction folder"):
        api.train(run_cfg, tmp_path / "run2", progress=False)


def test_the_cli_builds_instruction_data(tmp_path):
    cfg = sources(tmp_path)
    (tmp_path / "c.yaml").write_text(cfg.to_yaml())
    out = subprocess.run([sys.executable, "-m", "emotune.cli", "instruct-data", str(tmp_path / "c.yaml"), "--out",
                          str(tmp_path / "inst"), "--per-task", "5", "--per-task-eval", "2"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "vad_V" in out.stdout and len((tmp_path / "inst" / "train.jsonl").read_text().splitlines()) == 20
    (tmp_path / "single.yaml").write_text("data: {name: emotion}\n")
    bad = subprocess.run([sys.executable, "-m", "emotune.cli", "instruct-data", str(tmp_path / "single.yaml"),
                          "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert bad.returncode != 0 and "multi-task config" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "x").exists()


def test_an_interrupted_instruction_run_resumes_where_it_stopped(tmp_path, tiny_llama):
    from emotune.errors import Interrupted

    cfg = sources(tmp_path)
    rows, tasks = instruction_rows(cfg, per_task=8, per_task_eval=4)
    folder = write_instructions(rows, tasks, tmp_path / "inst")
    run_cfg = tiny_config(tiny_llama, tmp_path, max_steps=6, eval_every=2)
    run_cfg.data.name = str(folder)
    with pytest.raises(Interrupted):
        api.train(run_cfg, tmp_path / "run", progress=False, on_step=lambda step: step == 3)
    steps = []
    metrics = api.train(run_cfg, tmp_path / "run", progress=False, on_step=lambda step: steps.append(step) and False)
    assert steps[0] == 4 and metrics["train"]["resumed_from_step"] == 3 and metrics["train"]["steps"] == 6


def test_an_architecture_search_crosses_an_encoder_and_a_decoder_on_one_folder(tmp_path, tiny_model, tiny_llama):
    from emotune.experiments.tune import SearchSpace, tune

    cfg = sources(tmp_path)
    rows, tasks = instruction_rows(cfg, per_task=30, per_task_eval=6)  # every emotion in training
    folder = write_instructions(rows, tasks, tmp_path / "inst")
    space = SearchSpace.from_dict({
        "base": {"data": {"name": str(folder)}, "method": {"name": "lora"},
                 "train": {"batch_size": 8, "max_steps": 4, "eval_every": 2, "precision": "fp32", "lr": 1e-2}},
        "objective": {"metric": "score"}, "sampler": {"name": "bruteforce", "seed": 0}, "pruner": "none",
        "space": {"model.name": [tiny_model, tiny_llama]}})
    result = tune(space, tmp_path / "search", trials=2, progress=False, retrain=True)
    runs = [Run.open(p.parent) for p in sorted((tmp_path / "search" / "trials").glob("*/config.yaml"))]
    assert sorted(r.config.is_multitask for r in runs) == [False, True]  # one encoder view, one decoder
    for r in runs:  # both rank on the same validation score: the mean of the tasks' selection metrics
        assert math.isfinite(r.metrics["validation"]["score"])
    encoder = next(r for r in runs if r.config.is_multitask)
    assert [t.name for t in encoder.config.multitask.tasks] == ["emotion", "vad", "tags"]
    retrained = Run.open(result.retrained["run"])  # the best, retrained on train+validation, tested once
    assert retrained.metrics["retrained"]["data"] == "train+validation" and "score" in result.retrained["test"]
    if not retrained.config.is_multitask:
        assert retrained.metrics["data"]["train"] == len(rows["train"]) + len(rows["validation"])


def test_checkpoints_can_follow_the_tasks_score(tmp_path, tiny_llama):
    cfg = sources(tmp_path)
    rows, tasks = instruction_rows(cfg, per_task=8, per_task_eval=4)
    folder = write_instructions(rows, tasks, tmp_path / "inst")
    run_cfg = tiny_config(tiny_llama, tmp_path, max_steps=4, eval_every=2, metric="score")
    run_cfg.data.name = str(folder)
    api.train(run_cfg, tmp_path / "run", progress=False)
    history = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert all("score" in h["validation"] and "emotion" in h["validation"] for h in history)
    best = max(history, key=lambda h: h["validation"]["score"])
    assert Run.open(tmp_path / "run").metrics["train"]["best_step"] == best["step"]
    with pytest.raises(ConfigError, match="loss or score"):
        INSTRUCT.check_metric("accuracy", [])
