"""Instruction-tuned SmolLM2 beside its zero-shot self and MiniLM trained on the same examples, per task.

    python benchmarks/instruct_compare.py RUNS [--zero-shot DATA_FOLDER ...]

RUNS holds the runs of scripts/instruct.sh: instruction-tuned decoders (``smollm2-lora-N``) and encoders trained
on the same examples (``minilm-multitask-N``), each tested once (``emotune evaluate --split test``).
Speed: texts per second with every task answered (a decoder answers one prompt per task; an encoder all tasks
in one pass, measured here on the test texts, median of 3). ``--zero-shot FOLDER`` scores the untrained SmolLM2 on that instruction folder with the same prompts and the
same constrained answers (multi-label thresholds and classification temperatures fitted on its validation
split, like the trained runs'), and keeps the result as RUNS/zeroshot-smollm2-<folder>.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from emotune.config import ModelConfig
from emotune.data.instruct import read_instructions
from emotune.models.causal import build_instruct
from emotune.runs import find_runs
from emotune.train.instruct import answer_logits, fit_states, task_metrics

ROWS = [("emotion", "accuracy", "Emotion accuracy"), ("emotion", "f1_weighted", "Emotion weighted F1"),
        ("sentiment", "recall_macro", "SemEval-2017 4A AvgRec"), ("sentiment", "f1_pn", "SemEval-2017 4A F1-PN"),
        ("polarity", "accuracy", "MR accuracy"),
        ("vad_V", "pearson", "EmoBank V Pearson r"), ("vad_A", "pearson", "EmoBank A Pearson r"),
        ("vad_D", "pearson", "EmoBank D Pearson r"),
        ("goemotions", "f1_micro", "GoEmotions micro F1"), ("goemotions", "f1_macro", "GoEmotions macro F1")]


def zero_shot(folder: Path, max_length: int = 128, batch_size: int = 16) -> dict:
    rows, tasks = read_instructions(folder)
    model, tok = build_instruct(ModelConfig(name="smollm2"))
    model.eval()
    val = answer_logits(model, tok, rows["validation"], tasks, max_length, batch_size)
    state = fit_states(rows["validation"], tasks, val, "temperature")
    start = time.perf_counter()
    test = answer_logits(model, tok, rows["test"], tasks, max_length, batch_size)
    speed = len(rows["test"]) / (time.perf_counter() - start)
    return {"validation": task_metrics(rows["validation"], tasks, val, state),
            "test": {"answers_per_s": speed, **task_metrics(rows["test"], tasks, test, state)}}


def encoder_texts_per_s(run, texts: list[str]) -> float:
    """An encoder run's prediction speed on ``texts`` (every task answered per text; median of 3 passes)."""
    from emotune.inference.predictor import Predictor

    predictor = Predictor(run)
    predictor.predict(texts[:16])  # warm-up
    times = []
    for _ in range(3):
        start = time.perf_counter()
        predictor.predict(texts)
        times.append(time.perf_counter() - start)
    return len(texts) / sorted(times)[1]


def value(test: dict, task: str, metric: str):
    """A test metric of an instruction task, from either kind of run (an encoder keeps V/A/D under `vad`)."""
    if task in test:
        return test[task].get(metric)
    source, _, target = task.partition("_")
    per_target = test.get(source, {}).get("per_target", {})
    return per_target.get(target, {}).get(metric) if target else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", type=Path)
    ap.add_argument("--zero-shot", type=Path, nargs="*", default=[])
    args = ap.parse_args()
    columns: dict[str, dict] = {}
    for folder in args.zero_shot:
        cache = args.runs / f"zeroshot-smollm2-{folder.name}.json"
        if not cache.is_file():
            cache.write_text(json.dumps(zero_shot(folder), indent=1))
    for cache in sorted(args.runs.glob("zeroshot-smollm2-*.json")):
        got = json.loads(cache.read_text())
        columns[cache.stem] = {"test": got["test"], "train": {}, "texts_per_s": got["test"]["answers_per_s"] /
                               (len(got["test"]) - 2)}  # its tasks: all keys but score and answers_per_s
    texts = sorted({r["input"] for folder in args.zero_shot for r in read_instructions(folder)[0]["test"]})
    for run in find_runs(args.runs):
        m = run.metrics
        if "test" in m:
            columns[run.path.name] = {"test": m["test"], "train": m.get("train", {})}
            if run.config.data.task == "instruct":  # one prompt per task and text
                columns[run.path.name]["texts_per_s"] = m["test"]["answers_per_s"] / len(run.task_state["tasks"])
            elif texts:
                columns[run.path.name]["texts_per_s"] = encoder_texts_per_s(run, texts)
    names = list(columns)
    print("| test metric | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for task, metric, label in ROWS:
        cells = [value(columns[n]["test"], task, metric) for n in names]
        print(f"| {label} | " + " | ".join("" if c is None else f"{c:.3f}" for c in cells) + " |")
    for key, label in (("trainable_params", "trainable parameters"), ("runtime_s", "training time (s)")):
        cells = [columns[n]["train"].get(key) for n in names]
        print(f"| {label} | " + " | ".join("" if c is None else f"{c:,.0f}" for c in cells) + " |")
    cells = [columns[n].get("texts_per_s") for n in names]
    print("| texts/s, every task answered (test texts) | " + " | ".join("" if c is None else f"{c:.1f}" for c in cells)
          + " |")


if __name__ == "__main__":
    main()
