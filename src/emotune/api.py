"""The library API the CLI wraps: train, evaluate, predict, list runs. Plain functions a notebook calls."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Callable, Sequence

import torch

from .config import RunConfig
from .data import load_data
from .data.encode import Encoded, encode
from .inference.evaluate import evaluate, recalibrate
from .inference.predictor import Predictor
from .inference.stream import predict_file
from .io import write_json, write_text
from .models.lexicon import lexicon_record
from .models.vocab import WordTokenizer
from .runs import (
    CONFIG,
    LABELS,
    TARGETS,
    TASK_STATE,
    VOCAB,
    Run,
    build_model,
    find_runs,
    predictions_file,
    prepare_run_dir,
    replace_dir,
    resolve_config,
    run_lock,
)
from .tasks import REGRESSION, target_statistics, task_for
from .train.evaluate import evaluate_model
from .train.loop import Trainer, TrainResult


def train(cfg: RunConfig, out: str | Path, *, overwrite: bool = False, progress: bool = True,
          on_step: Callable[[int], bool] | None = None,
          on_evaluate: Callable[[int, dict], None] | None = None) -> dict:
    """Train one run into the folder ``out`` (resuming it if it was interrupted); return its metrics.

    ``on_step(step)`` runs after every optimisation step (return True to stop with a checkpoint);
    ``on_evaluate(step, validation_metrics)`` after every validation (e.g. to prune a search trial)."""
    from .methods import METHODS

    if METHODS.get(cfg.method.get("name", "")).build is not None:  # nothing to train (zero-shot, ensemble)
        from .workflows.built import write_built_run

        return write_built_run(cfg, out, overwrite=overwrite, progress=progress)
    from .train.distributed import processes

    out = Path(out)
    cfg = resolve_config(cfg)
    procs = processes()  # data-parallel under torchrun / accelerate launch: the main process owns the folder
    with ExitStack() as held:
        def prepare() -> Path:  # out itself, or a staging folder with overwrite
            held.enter_context(run_lock(out, "emotune train"))
            return prepare_run_dir(cfg, out, overwrite)

        work = procs.from_main(prepare)
        metrics = _train_into(cfg, work, progress and procs.main, on_step, on_evaluate)
        if work != out and procs.main:
            replace_dir(work, out)
    return procs.broadcast(metrics)  # every process returns the main one's metrics


def _train_into(cfg: RunConfig, out: Path, progress: bool, on_step, on_evaluate) -> dict:
    from .methods import lr_scales
    from .train.distributed import processes

    if cfg.is_multitask:  # one shared encoder, a head per task, each task's own data
        from .train.multitask import train_multitask

        teach = None
        if cfg.train.teacher:  # each task's teacher targets: from the teachers' columns of that task
            from .workflows.teacher import multitask_teacher_targets

            def teach(texts, labels, task):
                return multitask_teacher_targets(cfg.train.teacher, texts, labels, task,
                                                 cfg.train.distill_temperature, progress)
        return train_multitask(cfg, out, progress, on_step, on_evaluate, teach=teach)
    if cfg.data.task == "instruct":  # a causal LM tuned on an instruction folder
        from .train.instruct import train_instruct

        return train_instruct(cfg, out, progress, on_step, on_evaluate)
    data = load_data(cfg.data, cfg.train.seed)
    train_split, val_split = data["train"], data["validation"]
    task = task_for(cfg)
    # Regression heads predict around the training targets' mean and spread, kept in the run folder.
    targets = target_statistics(train_split.labels) if task is REGRESSION else None
    # Classic models build their vocabulary from the training texts and keep it in the run folder.
    model, tokenizer, _ = build_model(cfg, len(data.label_names), texts=train_split.texts, targets=targets)
    if getattr(model, "head", None) is not None:  # multilabel: biases at the labels' priors
        task.init_head(model.head, train_split.labels)
    main = processes().main  # data-parallel: one process writes the folder
    if main:
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / CONFIG, cfg.to_yaml())
        write_json(out / LABELS, data.label_names)
        if targets is not None:
            write_json(out / TARGETS, targets)
        if isinstance(tokenizer, WordTokenizer):
            tokenizer.save(out / VOCAB)
    texts, labels, distill, teaching = list(train_split.texts), list(train_split.labels), None, {}
    if cfg.train.teacher:  # knowledge distillation: the teachers' targets per training text, computed once
        texts, labels, distill, teaching = _teaching(cfg, texts, labels, data.label_names, task, progress)
    enc_train = Encoded(encode(tokenizer, texts, cfg.data.max_length), labels)
    enc_val = Encoded(encode(tokenizer, val_split.texts, cfg.data.max_length), val_split.labels)
    assert cfg.train.lr is not None and cfg.train.warmup_ratio is not None
    from .train.augment import epoch_augmenter

    # With a teacher, data.augment's copies were made once and are already among the rows (_teaching).
    augment = None if distill is not None else epoch_augmenter(
        texts, labels, tokenizer, cfg.data.max_length, cfg.data.augment, cfg.train.seed, encoded=enc_train)
    trainer = Trainer(model, enc_train, enc_val, data.label_names, cfg.train, out, lr=cfg.train.lr,
                      warmup_ratio=cfg.train.warmup_ratio, pad_id=tokenizer.pad_token_id or 0,
                      progress=progress, on_step=on_step, on_evaluate=on_evaluate,
                      lr_scales=lr_scales(cfg.method, model), task=task, augment=augment, distill=distill)
    result: TrainResult = trainer.fit()
    if not main:  # the other processes are done: the main one writes what follows
        return {}
    # The best weights are back in the model: keep its validation predictions (reload checks use them).
    _, logits = evaluate_model(trainer.model, enc_val, data.label_names, cfg.train.eval_batch_size,
                               trainer.device, tokenizer.pad_token_id or 0, trainer.dtype, trainer.task)
    # What the task fits on those logits (multilabel: per-label thresholds) is kept with the run; the final
    # validation metrics then use it (fitted on this very split, so they are optimistic; test ones are not).
    state = trainer.task.fit_state(logits, val_split.labels, data.label_names, calibration=cfg.train.calibration)
    validation = result.best_metrics
    if state is not None:
        write_json(out / TASK_STATE, state)
        validation = trainer.task.metrics(logits, val_split.labels, data.label_names, state=state)
    trainer.task.write_predictions(out / predictions_file("validation"), val_split.texts, val_split.labels, logits,
                                   data.label_names, state=state)
    metrics = Run.open(out).update_metrics(
        completed=True, data={"name": data.name, **{s: len(v) for s, v in data.splits.items()}},
        train={**result.summary, **lexicon_record(cfg.model.lexicon), **teaching}, validation=validation)
    trainer.finish()  # only now: a kill before this line resumes at the last step, never from step 0
    return metrics


def _teaching(cfg: RunConfig, texts: list[str], labels: list, label_names: list[str], task, progress: bool):
    """The training rows with ``train.distill_unlabeled``'s texts and data.augment's copies (made once) appended
    (their placeholder labels never count: they are marked as having no gold label, so the teachers alone label
    them), the loop's Distillation and what the run records."""
    from .data.base import read_text
    from .train.augment import copies_once
    from .train.distill import Distillation
    from .workflows.teacher import teacher_targets

    extra = [t for t in read_text(Path(cfg.train.distill_unlabeled).expanduser()) if t.strip()] \
        if cfg.train.distill_unlabeled else []
    copies = copies_once(texts, cfg.data.augment, cfg.train.seed) if cfg.data.augment else []
    soft, record = teacher_targets(cfg.train.teacher, [texts, extra, copies], label_names, task,
                                   cfg.train.distill_temperature, progress)
    gold = [True] * len(texts) + [False] * (len(extra) + len(copies))
    texts, labels = texts + extra + copies, labels + [labels[0]] * (len(extra) + len(copies))
    distill = Distillation(soft, torch.tensor(gold), cfg.train.distill_alpha, cfg.train.distill_temperature)
    return texts, labels, distill, {**record, "distill_alpha": cfg.train.distill_alpha,
                                    "distill_temperature": cfg.train.distill_temperature,
                                    "unlabeled_texts": len(extra), "teacher_labelled_copies": len(copies)}


def predict(run_dir: str | Path, texts: Sequence[str], min_confidence: float | None = None, **kw) -> list[dict]:
    """Predict labels (and all class probabilities, calibrated) for texts with a trained run; ``uncertain`` where
    the top probability is below ``min_confidence``."""
    return Predictor(run_dir, **kw).predict(texts, min_confidence)


def explain(run_dir: str | Path, text: str, target: str | None = None, method: str = "ig", steps: int = 20) -> dict:
    """Word attributions for one text (``target``: a label or regression target; default: the prediction);
    see ``emotune.inference.explain``. For many texts, keep an ``Explainer``: it loads the run once."""
    from .inference.explain import Explainer

    return Explainer(run_dir).explain(text, target, method, steps).as_dict()


def list_runs(root: str | Path = "runs", on_error: Callable[[Path, str], None] | None = None) -> list[dict]:
    """One summary row per run folder below ``root``; an unreadable one is left out (after
    ``on_error(folder, why)`` when given)."""
    rows = []
    for run in find_runs(root, on_error):
        m = run.metrics
        data = ("+".join(t.name for t in run.config.multitask.tasks) if run.config.is_multitask
                else run.config.data.name)
        rows.append({"run": str(run.path), "status": run.status(), "data": data,
                     "model": run.config.model.name, "method": run.config.method.get("name"),
                     "val_accuracy": m.get("validation", {}).get("accuracy"),
                     "val_f1_weighted": m.get("validation", {}).get("f1_weighted"),
                     "test_accuracy": m.get("test", {}).get("accuracy"),
                     "test_f1_weighted": m.get("test", {}).get("f1_weighted"),
                     "runtime_s": m.get("train", {}).get("runtime_s"),
                     "trainable_pct": m.get("train", {}).get("trainable_pct")})
    return rows


__all__ = ["Predictor", "evaluate", "explain", "recalibrate", "list_runs", "predict", "predict_file",
           "resolve_config", "train"]
