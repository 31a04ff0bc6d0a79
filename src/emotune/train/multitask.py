"""Training a multi-task run: one shared encoder, a head per task, batches drawn from the tasks' own data.

Each batch comes from one task (temperature, proportional or round-robin sampling, or fixed shares) and
trains the shared encoder and that task's head; with ``multitask.mix`` each batch instead holds rows of every
task in those shares, so one step's gradient weighs the tasks by their loss weights (with one task per batch,
AdamW's per-parameter normalisation largely cancels a constant weight); mixed batches are not grouped by length.
Losses are weighted per task, fixed or learned (uncertainty weighting, Kendall et al. 2018, in the common form
exp(-s_k) * L_k + s_k). Every evaluation validates every task on its own validation split; the selection metric is
their mean (``tasks.multitask``).

A curriculum (``multitask.stages``) trains stage after stage, each adding tasks and starting from the
previous stage's best weights, in ``<run>/stages/<k>/`` (each resumable like any run); the run's budget
(``train.max_steps``, else ``train.max_epochs`` over all tasks' data) is split evenly between the stages.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path
from typing import Callable

import torch

from ..config import RunConfig
from ..data import load_data
from ..data.encode import Encoded, batches, collate, encode
from ..errors import ConfigError, DataError
from ..io import load_tensors, write_json, write_text
from ..models.lexicon import lexicon_record
from ..models.vocab import WordTokenizer
from ..runs import BEST, CHECKPOINT, CONFIG, HISTORY, LABELS, TARGETS, TASK_STATE, VOCAB, Run, build_model, predictions_file
from ..tasks import REGRESSION, MultiTask, flat_labels, target_statistics
from .evaluate import predict_logits
from .distill import Distillation
from .distributed import processes
from .loop import Trainer, TrainResult

STAGES = "stages"


class TaskBatch(list):
    """Indices into one task's training data."""

    def __init__(self, idx: list[int], task: str):
        super().__init__(idx)
        self.task = task


class MixedBatch(list):
    """(task, index into that task's training data) rows: a batch of several tasks (``multitask.mix``)."""

    def by_task(self) -> dict[str, tuple[list[int], list[int]]]:
        """Per task: its rows' positions in the batch and their indices into the task's data."""
        groups: dict[str, tuple[list[int], list[int]]] = {}
        for pos, (name, i) in enumerate(self):
            rows, idx = groups.setdefault(name, ([], []))
            rows.append(pos)
            idx.append(i)
        return groups


def mixed_counts(shares: dict[str, float], size: int, step: int, even: bool, gen: torch.Generator) -> list[int]:
    """How many rows of each task a mixed batch of ``size`` holds: equal parts (``even``; the remainder goes to
    tasks in turn, by step), else drawn by the shares."""
    n = len(shares)
    if even:
        return [size // n + ((i - step) % n < size % n) for i in range(n)]
    probs = torch.tensor(list(shares.values()), dtype=torch.float64)
    return torch.bincount(torch.multinomial(probs, size, True, generator=gen), minlength=n).tolist()


def sampling_shares(cfg: RunConfig, sizes: dict[str, int]) -> dict[str, float]:
    """Each task's share of training batches: its fixed ``share``, the rest split by size^(1/T) (T = 1 for
    proportional sampling)."""
    mt = cfg.multitask
    specs = {t.name: t for t in mt.tasks if t.name in sizes}
    given = {n: s.share for n, s in specs.items() if s.share is not None}
    if mt.sampling == "round_robin":
        if given:
            raise ConfigError("multitask: task shares and round_robin sampling exclude each other")
        return {n: 1 / len(sizes) for n in sizes}
    rest = 1.0 - sum(given.values())
    free = [n for n in sizes if n not in given]
    if rest < -1e-9 or (free and rest <= 1e-9) or (not free and abs(rest) > 1e-6):
        raise ConfigError(f"multitask: task shares add up to {sum(given.values()):g}; they must leave room "
                          "for the tasks without one (or add up to 1 when all tasks have one)")
    t = 1.0 if mt.sampling == "proportional" else mt.temperature
    base = {n: sizes[n] ** (1 / t) for n in free}
    return {**given, **{n: rest * base[n] / sum(base.values()) for n in free}}


class MultiTaskTrainer(Trainer):
    """The Trainer over several tasks' data (``train``/``validation``: task name -> encoded split)."""

    def __init__(self, model, train: dict[str, Encoded], validation: dict[str, Encoded], task: MultiTask,
                 cfg: RunConfig, out_dir: Path, augment: dict[str, Callable[[int], Encoded]] | None = None,
                 distills: dict[str, Distillation] | None = None, **kw):
        self.task_augment, self.augmented = augment or {}, {}
        self.distills = distills or {}  # train.teacher: per task, its training rows' teacher targets
        combined = Encoded([ids for enc in train.values() for ids in enc.ids],
                           [[name, label] for name, enc in train.items() for label in enc.labels])
        labels = flat_labels({p.name: p.labels for p in task.parts})
        super().__init__(model, combined, Encoded([], []), labels, cfg.train, out_dir, task=task, **kw)
        self.train_sets, self.val_sets = train, validation
        self.shares = sampling_shares(cfg, {n: len(e) for n, e in train.items()})
        self.round_robin = cfg.multitask.sampling == "round_robin"
        self.mix = cfg.multitask.mix
        self.index = {p.name: i for i, p in enumerate(task.parts)}
        self.part_weights = {
            p.name: p.task.loss_weights(cfg.train.class_weights if p.task.name == "classification" else None,
                                        train[p.name].labels, len(p.labels), self.device)
            for p in task.parts if p.name in train}

    def task_data(self, name: str) -> Encoded:
        """A task's training data this epoch (with its augmented copies when the task's data asks for them)."""
        return self.augmented.get(name) or self.train_sets[name]

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        gen = torch.Generator().manual_seed(self.cfg.seed * 1000 + epoch)
        names = list(self.train_sets)
        self.augmented = {n: f(epoch) for n, f in self.task_augment.items() if n in self.train_sets}
        pools: dict[str, list[TaskBatch]] = {n: [] for n in names}

        def next_batch(name: str) -> TaskBatch:
            if not pools[name]:  # a task's batches run out: a fresh shuffle of its data
                lengths = [len(x) for x in self.task_data(name).ids]
                pools[name] = [TaskBatch(b, name) for b in batches(
                    lengths, self.cfg.batch_size, shuffle=True, generator=gen,
                    group_by_length=self.cfg.group_by_length)][::-1]
            return pools[name].pop()

        if self.mix:
            return self.mixed_batches(names, gen)
        if self.round_robin:
            order = [names[i % len(names)] for i in range(self.steps_per_epoch)]
        else:
            probs = torch.tensor([self.shares[n] for n in names], dtype=torch.float64)
            order = [names[i] for i in torch.multinomial(probs, self.steps_per_epoch, True, generator=gen).tolist()]
        return [next_batch(n) for n in order]

    def mixed_batches(self, names: list[str], gen: torch.Generator) -> list[list[int]]:
        """An epoch of mixed batches: each task's rows come from its own reshuffled data."""
        pools: dict[str, list[int]] = {n: [] for n in names}

        def take(name: str, k: int) -> list[tuple[str, int]]:
            rows = []
            while len(rows) < k:
                if not pools[name]:
                    pools[name] = torch.randperm(len(self.task_data(name)), generator=gen).tolist()
                rows.append((name, pools[name].pop()))
            return rows

        out = []
        for step in range(self.steps_per_epoch):
            counts = mixed_counts({n: self.shares[n] for n in names}, self.cfg.batch_size, step, self.round_robin,
                                  gen)
            out.append(MixedBatch([row for n, k in zip(names, counts) for row in take(n, k)]))
        return out

    def batch_tensors(self, idx: list[int]) -> tuple[dict, torch.Tensor | dict[str, torch.Tensor]]:
        """A mixed batch's targets are per task (their shapes differ between task types)."""
        if isinstance(idx, MixedBatch):
            ids = [self.task_data(name).ids[i] for name, i in idx]
            targets = {name: torch.tensor([self.task_data(name).labels[i] for i in rows], device=self.device)
                       for name, (_, rows) in idx.by_task().items()}
        else:
            data = self.task_data(idx.task)  # type: ignore[attr-defined]
            ids = [data.ids[i] for i in idx]
            targets = torch.tensor([data.labels[i] for i in idx], device=self.device)
        batch = {k: v.to(self.device) for k, v in collate(ids, self.pad_id, self.cfg.pad_multiple).items()}
        return batch, targets

    def loss_of(self, logits: torch.Tensor, targets, idx: list[int]) -> torch.Tensor:
        if isinstance(idx, MixedBatch):  # each task's mean loss weighted by its share of the rows
            return sum(len(pos) / len(idx) * self.task_loss(name, logits[pos], targets[name], rows)
                       for name, (pos, rows) in idx.by_task().items())
        return self.task_loss(idx.task, logits, targets, idx)  # type: ignore[attr-defined]

    def task_loss(self, name: str, logits: torch.Tensor, targets: torch.Tensor, idx: list[int]) -> torch.Tensor:
        """One task's weighted loss over its rows (``idx``: their indices into the task's data)."""
        part = self.task.part(name)
        kind = self.cfg.loss if self.cfg.loss in part.task.losses else None
        if name in self.distills:
            loss = self.distills[name].loss(part.task, logits[:, part.columns], targets, idx,
                                            self.part_weights[name], kind)
        else:
            loss = part.task.loss(logits[:, part.columns], targets, self.part_weights[name], kind)
        log_vars = getattr(self.model.head, "log_vars", None)
        if log_vars is not None:
            s = log_vars[self.index[name]].float()
            return torch.exp(-s) * loss + s
        return part.weight * loss

    def consistency(self, a: torch.Tensor, b: torch.Tensor, idx: list[int]) -> torch.Tensor:
        if isinstance(idx, MixedBatch):
            return sum(len(pos) / len(idx) * self.task_consistency(name, a[pos], b[pos])
                       for name, (pos, _) in idx.by_task().items())
        return self.task_consistency(idx.task, a, b)  # type: ignore[attr-defined]

    def task_consistency(self, name: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        part = self.task.part(name)
        return part.task.consistency(a[:, part.columns], b[:, part.columns], self.part_weights[name])

    def split(self, idx: list[int], n: int, i: int) -> list[int]:
        if isinstance(idx, MixedBatch):
            return MixedBatch(idx[i::n])
        return TaskBatch(super().split(idx, n, i), idx.task)  # type: ignore[attr-defined]

    def evaluate(self) -> dict:
        logits = {n: self.predict(enc) for n, enc in self.val_sets.items()}
        gold = {n: enc.labels for n, enc in self.val_sets.items()}
        return self.procs.from_main(lambda: self.task.metrics(logits, gold, self.label_names))


def check_collisions(cfg: RunConfig) -> None:
    """Two tasks reading the same data set would predict the same texts twice under two names."""
    seen: dict[tuple, str] = {}
    for spec in cfg.multitask.tasks:
        d = spec.data
        key = (d.name, d.data_dir, d.text_column, d.label_column, tuple(d.target_columns), d.task)
        if key in seen:
            raise DataError(f"multitask: tasks {seen[key]!r} and {spec.name!r} read the same data ({d.name})")
        seen[key] = spec.name


def train_multitask(cfg: RunConfig, out: Path, progress: bool = True, on_step: Callable[[int], bool] | None = None,
                    on_evaluate: Callable[[int, dict], None] | None = None, teach: Callable | None = None) -> dict:
    """Train the multi-task run ``cfg`` (resolved) into ``out``; returns its metrics (keyed by task).
    ``teach(texts by task, labels, task)``: with ``train.teacher``, each task's teacher targets and the record."""
    from ..methods import lr_scales

    check_collisions(cfg)
    data = {t.name: load_data(t.data, cfg.train.seed) for t in cfg.multitask.tasks}
    label_sets = {name: d.label_names for name, d in data.items()}
    labels = flat_labels(label_sets)
    task = MultiTask(cfg, labels)
    targets = {p.name: target_statistics(data[p.name]["train"].labels) for p in task.parts if p.task is REGRESSION}
    model, tokenizer, _ = build_model(cfg, len(labels), texts=[t for d in data.values() for t in d["train"].texts],
                                      targets=targets or None, labels=labels)
    task.init_head(model.head, {n: d["train"].labels for n, d in data.items()})  # multilabel: label priors
    main = processes().main  # data-parallel: one process writes the folder
    if main:
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / CONFIG, cfg.to_yaml())
        write_json(out / LABELS, label_sets)
        if targets:
            write_json(out / TARGETS, targets)
        if isinstance(tokenizer, WordTokenizer):
            tokenizer.save(out / VOCAB)
    pad = tokenizer.pad_token_id or 0
    enc = {split: {name: Encoded(encode(tokenizer, d[split].texts, t.data.max_length), d[split].labels)
                   for (name, d), t in zip(data.items(), cfg.multitask.tasks)} for split in ("train", "validation")}
    from .augment import epoch_augmenter

    augment = {t.name: epoch_augmenter(data[t.name]["train"].texts, data[t.name]["train"].labels, tokenizer,
                                       t.data.max_length, t.data.augment, cfg.train.seed, enc["train"][t.name])
               for t in cfg.multitask.tasks if t.data.augment}
    distills, teaching = {}, {}
    if teach is not None:
        soft, teaching = teach({n: list(d["train"].texts) for n, d in data.items()}, labels, task)
        distills = {n: Distillation(s, torch.ones(len(s), dtype=torch.bool), cfg.train.distill_alpha,
                                    cfg.train.distill_temperature) for n, s in soft.items()}
        teaching.update(distill_alpha=cfg.train.distill_alpha, distill_temperature=cfg.train.distill_temperature)
    stages = cfg.multitask.stages or [[t.name for t in cfg.multitask.tasks]]
    total = cfg.train.max_steps or math.ceil(cfg.train.max_epochs * sum(
        math.ceil(len(e) / cfg.train.batch_size) for e in enc["train"].values()))
    active: list[str] = []
    results: list[TrainResult] = []
    trainer = None
    for k, stage in enumerate(stages):
        active += stage
        folder = out if len(stages) == 1 else out / STAGES / str(k + 1)
        if main:
            folder.mkdir(parents=True, exist_ok=True)
        train_cfg = dataclasses.replace(cfg.train, max_steps=math.ceil(total / len(stages)), max_epochs=1e9)
        stage_cfg = dataclasses.replace(cfg, train=train_cfg)
        trainer = MultiTaskTrainer(model, {n: enc["train"][n] for n in active},
                                   {n: enc["validation"][n] for n in active}, task, stage_cfg, folder, augment,
                                   lr=cfg.train.lr, warmup_ratio=cfg.train.warmup_ratio, pad_id=pad,
                                   progress=progress, on_step=on_step, on_evaluate=on_evaluate,
                                   lr_scales=lr_scales(cfg.method, model), distills=distills)
        if k:  # a stage starts from the previous stage's best weights (its own checkpoint, if any, wins in fit)
            trainer.masters.load_state_dict(load_tensors(out / STAGES / str(k) / BEST)[0])
        results.append(trainer.fit())  # a finished stage's checkpoint says so: resuming skips its training
    if not main:  # the other processes are done: the main one writes what follows
        return {}
    if len(stages) > 1:
        shutil.copyfile(out / STAGES / str(len(stages)) / BEST, out / BEST)
        write_text(out / HISTORY, "".join(
            (out / STAGES / str(k + 1) / HISTORY).read_text(encoding="utf-8") for k in range(len(stages))))
    result = results[-1]
    summary = {**result.summary, "runtime_s": sum(r.summary["runtime_s"] for r in results),
               "steps": sum(r.summary["steps"] for r in results), "stages": len(stages),
               "sampling_shares": trainer.shares}
    log_vars = getattr(model.head, "log_vars", None)
    if log_vars is not None:
        summary["learned_loss_weights"] = dict(zip(label_sets, torch.exp(-log_vars.float()).tolist()))
    # The best weights are back in the model: per-task validation logits, what the tasks fit on them (multilabel
    # thresholds, kept as task_state.json keyed by task) and the per-task validation predictions.
    logits = {p.name: predict_logits(trainer.model, enc["validation"][p.name], cfg.train.eval_batch_size,
                                     trainer.device, pad, trainer.dtype) for p in task.parts}
    gold = {n: d["validation"].labels for n, d in data.items()}
    state = task.fit_state(logits, gold, labels, calibration=cfg.train.calibration)
    validation = result.best_metrics
    if state is not None:
        write_json(out / TASK_STATE, state)
        validation = task.metrics(logits, gold, labels, state=state)
    for p in task.parts:
        p.task.write_predictions(out / predictions_file("validation", p.name), data[p.name]["validation"].texts,
                                 gold[p.name], logits[p.name][:, p.columns], p.labels,
                                 state=(state or {}).get(p.name))
    metrics = Run.open(out).update_metrics(
        completed=True, data={n: {s: len(v) for s, v in d.splits.items()} for n, d in data.items()},
        train={**summary, **lexicon_record(cfg.model.lexicon), **teaching}, validation=validation)
    trainer.finish()
    if len(stages) > 1:
        for k in range(len(stages) - 1):  # earlier stages' checkpoints: their stage is long finished
            (out / STAGES / str(k + 1) / CHECKPOINT).unlink(missing_ok=True)
    return metrics

