"""Instruction tuning a causal LM on an instruction folder (``emotune instruct-data``) through the one training
loop, and answering its tasks afterwards by scoring every allowed answer (``emotune.tasks.instruct``).

The run folder is an ordinary one: config.yaml, labels.json ({task: its labels or target}), model.safetensors
(the adapter, or every weight with full fine-tuning), history.jsonl (validation loss), task_state.json (the
tasks' descriptions: type, choices or scale, instruction; and what each fitted on validation: multi-label
thresholds, a classification temperature) and metrics.json with each task's metrics.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch

from ..config import RunConfig
from ..data.encode import Encoded
from ..data.instruct import read_instructions
from ..errors import ConfigError, DataError
from ..io import write_json, write_text
from ..models.causal import InstructLM, InstructTokenizer
from ..runs import CONFIG, LABELS, TASK_STATE, Run, build_model, predictions_file
from ..tasks import SCORE
from ..tasks.instruct import BY_TYPE, INSTRUCT, candidates, fitted, gold, labels_of, parse, to_logits
from .distributed import processes
from .evaluate import evaluate_model
from .loop import Trainer


def encode_rows(tok: InstructTokenizer, rows: list[dict], max_length: int) -> Encoded:
    """Prompt + answer ids per row; the target is the answer's length (its tokens are the ones the loss reads)."""
    ids, counts = [], []
    for r in rows:
        answer = tok.answer(str(r["output"]))
        ids.append(tok.prompt(r["instruction"], r["input"], max_length) + answer)
        counts.append(len(answer))
    return Encoded(ids, counts)


def of_task(rows: list[dict], name: str) -> list[dict]:
    """The rows of one instruction task, in their order (the order of its answers' logits)."""
    return [r for r in rows if r["task"] == name]


def golds_of(rows: list[dict], name: str, desc: dict) -> list:
    """One task's gold answers as its task type's targets."""
    return gold(desc, [r["gold"] for r in of_task(rows, name)])


def answer_logits(model: InstructLM, tok: InstructTokenizer, rows: list[dict], tasks: dict[str, dict],
                  max_length: int, batch_size: int, progress: bool = False) -> dict[str, torch.Tensor]:
    """Per task present in ``rows``: what its task type's metrics read (see ``tasks.instruct.to_logits``), in
    the order of that task's rows."""
    from ..progress import training_progress

    out = {}
    with training_progress(len(rows), progress, "answering") as bar:
        for name, desc in tasks.items():
            mine = of_task(rows, name)
            if not mine:
                continue
            prompts = [tok.prompt(r["instruction"], r["input"], max_length) for r in mine]
            cands = [tok.answer(c, end=False) for c in candidates(desc)]
            out[name] = to_logits(desc, model.candidate_scores(prompts, cands, tok.pad_token_id, batch_size))
            bar.update(completed=sum(len(out_rows) for out_rows in out.values()))
    return out


def answer_texts(model: InstructLM, tok: InstructTokenizer, texts: list[str], state: dict, max_length: int,
                 batch_size: int) -> torch.Tensor:
    """[texts, the run's flat labels]: every task's answer to each text (its instruction from the run's task
    state), in the column blocks ``tasks.instruct.parts`` describes."""
    tasks = state["tasks"]
    rows = [{"task": name, "instruction": desc["instruction"], "input": t} for name, desc in tasks.items()
            for t in texts]
    got = answer_logits(model, tok, rows, tasks, max_length, batch_size)
    return torch.cat([got[name].float() for name in tasks], 1)


def task_metrics(rows: list[dict], tasks: dict[str, dict], logits: dict[str, torch.Tensor],
                 state: dict | None) -> dict:
    """Each task's metrics under its task type (``state``: the run's task state), and their
    ``score``: the mean of the tasks' selection metrics (the source task's ``metric``, else its type's default:
    accuracy, f1_micro, Pearson r), as multi-task runs report it."""
    out = {}
    for name, lg in logits.items():
        desc = tasks[name]
        golds = golds_of(rows, name, desc)
        out[name] = BY_TYPE[desc["type"]].metrics(lg, golds, labels_of(name, desc), state=fitted(state, name))
    picks = [out[name][tasks[name].get("metric") or BY_TYPE[tasks[name]["type"]].default_metric] for name in out]
    return {SCORE: sum(picks) / len(picks), **out} if picks else out


def fit_states(rows: list[dict], tasks: dict[str, dict], logits: dict[str, torch.Tensor],
               calibration: str | None) -> dict:
    """The run's task state: the tasks' descriptions and what each fits on these (validation) answers."""
    states = {}
    for name, lg in logits.items():
        desc = tasks[name]
        golds = golds_of(rows, name, desc)
        s = BY_TYPE[desc["type"]].fit_state(lg, golds, labels_of(name, desc), calibration=calibration)
        if s is not None:
            states[name] = s
    return {"tasks": tasks, "fitted": states}


def write_task_predictions(folder: Path, split: str, rows: list[dict], tasks: dict[str, dict],
                           logits: dict[str, torch.Tensor], state: dict | None) -> None:
    for name, lg in logits.items():
        desc = tasks[name]
        BY_TYPE[desc["type"]].write_predictions(folder / predictions_file(split, name),
                                                [r["input"] for r in of_task(rows, name)], golds_of(rows, name, desc),
                                                lg, labels_of(name, desc),
                                                state=fitted(state, name))


class InstructTrainer(Trainer):
    """The loop; with ``train.metric=score`` each evaluation also answers the validation rows, so checkpoints and
    early stopping follow the tasks' own metrics instead of the answer loss."""

    def __init__(self, *args, rows: list[dict], tasks: dict[str, dict], tok: InstructTokenizer, max_length: int,
                 **kw):
        super().__init__(*args, **kw)
        self.rows, self.tasks, self.tok, self.max_length = rows, tasks, tok, max_length
        zero3 = (self.ds_config or {}).get("zero_optimization", {}).get("stage") == 3
        if self.cfg.metric == SCORE and zero3 and self.procs.world > 1:  # the main process alone answers
            raise ConfigError("train.metric=score with ZeRO-3 in several processes: every process would have to "
                              "answer (ZeRO-3 gathers weights together); use train.metric=loss or ZeRO-2")

    def evaluate(self) -> dict:
        metrics = super().evaluate()
        if self.cfg.metric == SCORE:  # answered by the main process (data-parallel: the others wait for it)
            def score() -> dict:
                logits = answer_logits(self.model, self.tok, self.rows, self.tasks, self.max_length,
                                       self.cfg.eval_batch_size)
                state = fit_states(self.rows, self.tasks, logits, None)  # thresholds only: no calibration needed
                return task_metrics(self.rows, self.tasks, logits, state)
            metrics.update(self.procs.from_main(score))
        return metrics


def train_instruct(cfg: RunConfig, out: Path, progress: bool = True, on_step: Callable[[int], bool] | None = None,
                   on_evaluate: Callable[[int, dict], None] | None = None) -> dict:
    from ..methods import lr_scales

    rows, tasks = read_instructions(cfg.data.name)
    labels = {name: labels_of(name, desc) for name, desc in tasks.items()}
    model, tok, _ = build_model(cfg, 0)
    main = processes().main  # data-parallel: one process writes the folder
    if main:
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / CONFIG, cfg.to_yaml())
        write_json(out / LABELS, labels)
    train, val = rows["train"], rows["validation"]
    enc_train, enc_val = (encode_rows(tok, r, cfg.data.max_length) for r in (train, val))
    trainer = InstructTrainer(model, enc_train, enc_val, [], cfg.train, out, lr=cfg.train.lr,
                              warmup_ratio=cfg.train.warmup_ratio, pad_id=tok.pad_token_id, progress=progress,
                              on_step=on_step, on_evaluate=on_evaluate, lr_scales=lr_scales(cfg.method, model),
                              task=INSTRUCT, rows=val, tasks=tasks, tok=tok, max_length=cfg.data.max_length)
    result = trainer.fit()
    if not main:  # the other processes are done: the main one writes what follows
        return {}
    logits = answer_logits(trainer.model, tok, val, tasks, cfg.data.max_length, cfg.train.eval_batch_size, progress)
    state = fit_states(val, tasks, logits, cfg.train.calibration)
    write_json(out / TASK_STATE, state)
    write_task_predictions(out, "validation", val, tasks, logits, state)
    validation = {**result.best_metrics, **task_metrics(val, tasks, logits, state)}
    metrics = Run.open(out).update_metrics(
        completed=True, data={"name": cfg.data.name, "tasks": sorted(tasks),
                              **{s: len(v) for s, v in rows.items()}},
        train=result.summary, validation=validation)
    trainer.finish()
    return metrics


def generated_metrics(model: InstructLM, tok: InstructTokenizer, rows: list[dict], tasks: dict[str, dict],
                      max_length: int, batch_size: int) -> dict:
    """Free generation read by ``tasks.instruct.parse``: per task its ``parse_failure_rate`` and its task type's
    metrics over the answers that could be read (classification also ``accuracy_all``, a failure counting as
    wrong)."""
    out = {}
    stop = list(dict.fromkeys(tok.end[:1] + ([tok.tokenizer.eos_token_id] if tok.tokenizer.eos_token_id is not None
                                              else [])))
    for name, desc in tasks.items():
        mine = of_task(rows, name)
        if not mine:
            continue
        prompts = [tok.prompt(r["instruction"], r["input"], max_length) for r in mine]
        said = [tok.tokenizer.decode(x, skip_special_tokens=True) for x in
                model.generate(prompts, tok.pad_token_id, stop, batch_size=batch_size)]
        read = [parse(desc, t) for t in said]
        ok = [i for i, v in enumerate(read) if v is not None]
        m: dict = {"parse_failure_rate": 1 - len(ok) / len(mine), "examples": [
            {"input": mine[i]["input"], "generated": said[i]} for i in range(min(3, len(mine)))]}
        if ok:
            labels = labels_of(name, desc)
            if desc["type"] == "classification":
                lg = torch.full((len(ok), len(labels)), -1e4)
                lg[torch.arange(len(ok)), torch.tensor([labels.index(read[i]) for i in ok])] = 0.0
                m["accuracy_all"] = sum(read[i] == mine[i]["gold"] for i in ok) / len(mine)
            elif desc["type"] == "multilabel":
                lg = torch.tensor([[10.0 if c in read[i] else -10.0 for c in labels] for i in ok])
            else:
                lg = torch.tensor([[read[i]] for i in ok])
            golds = gold(desc, [mine[i]["gold"] for i in ok])
            m.update(BY_TYPE[desc["type"]].metrics(lg, golds, labels, state=None))
        out[name] = m
    return out


def evaluate_instruct(run: Run, split: str, answers: str = "scored", progress: bool = False) -> dict:
    """A finished instruction-tuned run on a split of its instruction folder: the answer loss and every task's
    metrics (at the thresholds and temperatures fitted on validation) and predictions per task; with
    ``answers="generated"``, free generation read by a parser (``generated_metrics``)."""
    rows, _ = read_instructions(run.config.data.name)
    state = run.task_state
    tasks = state["tasks"]
    part = rows.get(split) or []
    if not part:
        raise DataError(f"{run.config.data.name}: no {split} examples")
    model, tok = run.load_model()
    cfg = run.config
    if answers == "generated":
        return generated_metrics(model, tok, part, tasks, cfg.data.max_length, cfg.train.eval_batch_size)
    loss, _ = evaluate_model(model, encode_rows(tok, part, cfg.data.max_length), [], cfg.train.eval_batch_size,
                             torch.device("cpu"), tok.pad_token_id, task=INSTRUCT)
    start = time.perf_counter()
    logits = answer_logits(model, tok, part, tasks, cfg.data.max_length, cfg.train.eval_batch_size, progress)
    speed = len(part) / (time.perf_counter() - start)
    write_task_predictions(run.path, split, part, tasks, logits, state)
    return {**loss, "answers_per_s": speed, **task_metrics(part, tasks, logits, state)}
