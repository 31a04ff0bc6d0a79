"""Instruction data built from emotune's tasks, as EmoLLMs' AAID is built from affect data sets (Liu et al.
2024): every example of a multi-task config's tasks becomes an (instruction, input, output) triple, worded by
one of several templates per task (assigned with a seed), with the gold label or value kept beside it.

Answers are label words (classification), comma-separated label lists in the data set's label order
(multi-label; ``none`` for a text without labels), or numbers with one decimal on the task's scale
(regression; one instruction task per target, named ``<task>_<target>``: ``vad_V``). Splits follow the source
splits, so no test text is ever in training; a source without a test split (SemEval-2017 4A and GoEmotions
here) gives its validation split's texts to test and validation, disjoint halves after a seeded shuffle.

The folder holds ``train.jsonl``, ``validation.jsonl``, ``test.jsonl`` and ``tasks.json`` (per task: its type,
its choices or its scale), which instruction-tuned runs read as their data (``data.name=FOLDER``).
"""

from __future__ import annotations

import json
import random
import zlib
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError
from ..io import write_json, write_text

SPLITS = ("train", "validation", "test")
TASKS_FILE = "tasks.json"
FIELDS = ("task", "instruction", "input", "output", "gold")

# ``{labels}``: the choices, comma-separated; ``{scale}``: "1.0 to 5.0"; ``{what}``: the task's subject.
NAMED = {
    "emotion": [
        "Which emotion does this text express? Answer with one of: {labels}.",
        "Read the sentence and name the emotion it conveys ({labels}).",
        "Classify the emotion of the text into one of these categories: {labels}.",
        "What is the writer feeling? Choose from {labels}.",
        "Emotion recognition. Possible answers: {labels}. Give the emotion of the text.",
    ],
    "semeval2017a": [
        "What is the sentiment of this tweet? Answer with one of: {labels}.",
        "Classify the tweet's sentiment as {labels}.",
        "Is the attitude of this tweet {labels}?",
        "Sentiment analysis of a tweet. Choose from {labels}.",
        "Decide whether the tweet expresses a {labels} sentiment.",
    ],
    "mr": [
        "Is this movie review {labels}?",
        "Classify the polarity of the movie review: {labels}.",
        "Does the critic like the film? Answer {labels}.",
        "What is the sentiment of this review snippet? Choose from {labels}.",
        "Movie review polarity. Possible answers: {labels}.",
    ],
    "goemotions": [
        "Which emotions does this comment express? List them, comma-separated, from: {labels}.",
        "Name every emotion in the text (one or more of: {labels}).",
        "Multi-label emotion classification. Choose all that apply from {labels}.",
        "What emotions does the writer show? Answer with labels from {labels}, separated by commas.",
        "Tag the comment with its emotions ({labels}); give several if several apply.",
    ],
}
GENERIC = {
    "classification": [
        "Classify the {what} of the text. Answer with one of: {labels}.",
        "Which {what} fits this text best? Choose from {labels}.",
        "Read the text and give its {what} ({labels}).",
        "Decide the {what} of the text: {labels}.",
        "What is the {what} here? Possible answers: {labels}.",
    ],
    "multilabel": [
        "Which {what} labels apply to the text? List them, comma-separated, from: {labels}.",
        "Tag the text with every {what} that applies ({labels}).",
        "Choose all {what} labels that fit from {labels}, separated by commas.",
        "Give the {what} labels of the text (one or more of: {labels}).",
        "Multi-label {what} classification. Possible labels: {labels}.",
    ],
    "regression": [
        "Rate the {what} of the text on a scale from {scale}. Answer with one number with one decimal.",
        "How high is the {what} expressed by the writer? Give a score from {scale}.",
        "Score the text's {what} ({scale}; one decimal).",
        "On a scale of {scale}, what is the {what} of this text?",
        "{What} intensity regression: answer with a number between {scale}.",
    ],
}
DIMENSIONS = {"V": "valence (how pleasant the feeling is)", "A": "arousal (how calm or excited the writer is)",
              "D": "dominance (how much in control the writer feels)"}
SCALES = {"emobank": (1.0, 5.0)}
WHAT = {"emotion": "emotion", "semeval2017a": "sentiment", "mr": "sentiment", "goemotions": "emotions"}


def templates(data_name: str, kind: str, what: str) -> list[str]:
    """The templates of a task: its data set's own, else the generic ones of its type about ``what``."""
    chosen = NAMED.get(data_name) if kind != "regression" else None
    return chosen or [t.replace("{What}", what[:1].upper() + what[1:]).replace("{what}", what)
                      for t in GENERIC[kind]]


def number(value: float) -> str:
    return f"{value:.1f}"


def _pick(split, n: int | None, seed: int):
    return split.head(n, seed) if n else split


def instruction_rows(cfg, per_task: int | None = None, per_task_eval: int | None = None,
                     seed: int = 42) -> tuple[dict[str, list[dict]], dict[str, dict]]:
    """(rows per split, each instruction task's type and choices or scale) for the tasks of the multi-task
    run config ``cfg``: at most ``per_task`` training texts and ``per_task_eval`` validation and test texts
    per task (seeded samples)."""
    from .base import load_data, resolve_task

    if not cfg.is_multitask:
        raise ConfigError("instruction data comes from the tasks of a multi-task config (multitask.tasks: ...)")
    rows: dict[str, list[dict]] = {s: [] for s in SPLITS}
    tasks: dict[str, dict] = {}
    for spec in cfg.multitask.tasks:
        data_cfg = spec.data
        if not data_cfg.data_dir:
            data_cfg.data_dir = cfg.data.data_dir
        resolve_task(data_cfg)
        data = load_data(data_cfg, seed)
        kind = data_cfg.task
        splits = {"train": _pick(data["train"], per_task, seed)}
        if "test" in data.splits:
            splits["validation"] = _pick(data["validation"], per_task_eval, seed)
            splits["test"] = _pick(data["test"], per_task_eval, seed)
        else:  # disjoint halves of the source's validation texts
            shuffled = data["validation"].head(None, seed)
            half = per_task_eval if per_task_eval and 2 * per_task_eval <= len(shuffled) else len(shuffled) // 2
            splits["test"] = shuffled._pick(list(range(half)))
            splits["validation"] = shuffled._pick(list(range(half, 2 * half)))
        what = WHAT.get(data_cfg.name, spec.name.replace("_", " "))
        if kind == "regression":
            scale = SCALES.get(data_cfg.name) or _scale(data["train"].labels)
            for j, target in enumerate(data.label_names):
                name = f"{spec.name}_{target}"
                tasks[name] = {"type": kind, "scale": list(scale), "source": spec.name, "target": target,
                               "metric": spec.metric}
                subject = DIMENSIONS.get(target, target) if data_cfg.name == "emobank" else f"{what} {target}"
                answer = (lambda y, j=j: (number(min(max(y[j], scale[0]), scale[1])), float(y[j])))
                tasks[name]["instruction"] = _add(rows, splits, name, templates(data_cfg.name, kind, subject), seed,
                                                  answer, {"scale": number(scale[0]) + " to " + number(scale[1])})
        elif kind in ("classification", "multilabel"):
            names = data.label_names
            tasks[spec.name] = {"type": kind, "choices": list(names), "source": spec.name, "metric": spec.metric}
            if kind == "classification":
                answer = (lambda y: (names[y], names[y]))
            else:
                answer = (lambda y: (", ".join(n for n, on in zip(names, y) if on) or "none",
                                     [n for n, on in zip(names, y) if on]))
            tasks[spec.name]["instruction"] = _add(rows, splits, spec.name, templates(data_cfg.name, kind, what),
                                                   seed, answer, {"labels": ", ".join(names)})
        else:
            raise ConfigError(f"task {spec.name!r}: instruction data has no template for {kind} tasks")
    return rows, tasks


def _scale(values: list) -> tuple[float, float]:
    flat = [float(v) for row in values for v in (row if isinstance(row, (list, tuple)) else [row])]
    return float(round(min(flat), 1)), float(round(max(flat), 1))


def _fill(template: str, fill: dict[str, str]) -> str:
    for key, value in fill.items():
        template = template.replace("{" + key + "}", value)
    return template


def _add(rows: dict, splits: dict, task: str, texts: list[str], seed: int, answer, fill: dict[str, str]) -> str:
    """Append a task's examples to every split; return its first template, filled (what `predict` asks)."""
    for split in SPLITS:  # seeded per task and split: a split's templates do not depend on the others' sizes
        rng = random.Random(seed * 1_000_003 + zlib.crc32(f"{task}/{split}".encode()))
        for text, y in zip(splits[split].texts, splits[split].labels):
            template = rng.randrange(len(texts))
            instruction = _fill(texts[template], fill)
            output, gold = answer(y)
            rows[split].append({"task": task, "template": template, "instruction": instruction, "input": text,
                                "output": output, "gold": gold})
    return _fill(texts[0], fill)


def write_instructions(rows: dict[str, list[dict]], tasks: dict[str, dict], out: str | Path) -> Path:
    """Write the splits as JSONL and the tasks' description into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:  # each file written whole (temporary file, then renamed)
        write_text(out / f"{split}.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows[split]))
    write_sources(rows, tasks, out)
    write_json(out / TASKS_FILE, tasks)  # last: a folder without it is not taken for instruction data
    return out


def write_sources(rows: dict[str, list[dict]], tasks: dict[str, dict], out: str | Path) -> Path:
    """The same examples for encoders: ``out/sources/<task>/<split>.jsonl`` (text and label, label columns or
    targets) and ``out/encoders.yaml``, a multi-task config over them, so that an encoder trains, validates and
    tests on exactly the texts the instruction-tuned decoder saw (``emotune train --config .../encoders.yaml``)."""
    import yaml

    out = Path(out).resolve()
    specs = []
    for source in dict.fromkeys(d["source"] for d in tasks.values()):
        names = [n for n, d in tasks.items() if d["source"] == source]
        desc = tasks[names[0]]
        folder = out / "sources" / source
        folder.mkdir(parents=True, exist_ok=True)
        for split in SPLITS:
            records: list[dict] = []
            for name in names:  # a source's targets are one task each, their rows in the same text order
                for i, r in enumerate(x for x in rows[split] if x["task"] == name):
                    if i == len(records):
                        records.append({"text": r["input"]})
                    rec = records[i]
                    if desc["type"] == "regression":
                        rec[tasks[name]["target"]] = r["gold"]
                    elif desc["type"] == "multilabel":
                        rec.update({c: int(c in r["gold"]) for c in desc["choices"]})
                    else:
                        rec["label"] = r["gold"]
            write_text(folder / f"{split}.jsonl", "".join(json.dumps(v, ensure_ascii=False) + "\n"
                                                          for v in records))
        data: dict[str, Any] = {"name": str(folder), "task": desc["type"]}
        if desc["type"] == "regression":
            data["target_columns"] = [tasks[n]["target"] for n in names]
        elif desc["type"] == "multilabel":
            data["label_columns"] = list(desc["choices"])
        specs.append({"name": source, "data": data})
    write_text(out / "encoders.yaml", yaml.safe_dump({"multitask": {"tasks": specs}}, sort_keys=False))
    return out


def is_instruction_folder(path: str | Path) -> bool:
    return (Path(path).expanduser() / TASKS_FILE).is_file()


def read_instructions(folder: str | Path) -> tuple[dict[str, list[dict]], dict[str, dict]]:
    """(rows per split, tasks) of an instruction folder; a one-line DataError for a damaged one."""
    folder = Path(folder).expanduser()
    if not is_instruction_folder(folder):
        raise DataError(f"{folder}: not an instruction data folder (no {TASKS_FILE}); make one with "
                        "`emotune instruct-data CONFIG --out FOLDER`")
    try:
        tasks = json.loads((folder / TASKS_FILE).read_text(encoding="utf-8"))
    except ValueError as e:
        raise DataError(f"{folder / TASKS_FILE}: unreadable JSON ({e})") from None
    rows: dict[str, list[dict]] = {}
    for split in SPLITS:
        path = folder / f"{split}.jsonl"
        rows[split] = []
        if not path.is_file():
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row: Any = json.loads(line)
            except ValueError:
                raise DataError(f"{path}:{n}: not a JSON line") from None
            missing = [f for f in FIELDS if not isinstance(row, dict) or f not in row]
            if missing:
                raise DataError(f"{path}:{n}: missing field(s) {', '.join(missing)}")
            if row["task"] not in tasks:
                raise DataError(f"{path}:{n}: task {row['task']!r} is not described in {TASKS_FILE}")
            rows[split].append(row)
    if not rows["train"] or not rows["validation"]:
        raise DataError(f"{folder}: needs train.jsonl and validation.jsonl with at least one example each")
    return rows, tasks
