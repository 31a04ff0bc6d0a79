"""The one training loop every model goes through.

AdamW with a linear schedule (optional warm-up), evaluation every N steps, early stopping on a
validation metric, the best weights kept, and a checkpoint at every evaluation that a later call
resumes from. Ctrl-C or SIGTERM stop at the next step boundary after saving a checkpoint. The last
checkpoint stays until the caller has written the run's final metrics (``finish`` removes it), so a kill
while a run finishes never sends it back to step 0.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..config import TrainConfig
from ..data.encode import Encoded, batches, collate, data_fingerprint
from ..errors import ConfigError, Interrupted, RunError
from ..io import append_jsonl, load_tensors, optimizer_state, optimizer_tensors, save_tensors
from ..runs import BEST, CHECKPOINT, HISTORY, read_history, write_history
from ..tasks import Task, is_better, task_for
from .evaluate import predict_logits
from .metrics import parameter_counts, peak_memory_mb, reset_peak_memory
from .precision import MasterWeights, resolve_device, resolve_precision
from .distill import Distillation
from .distributed import local_device, processes
from .stopping import stop_requests
from .deepspeed_step import DeepSpeedStep, RunShape, check_switches, config_path, fill_config, read_config
from .robust import Objective, apply_mixout, model_forward


@dataclass
class TrainResult:
    best_step: int
    best_metrics: dict
    history: list[dict]
    summary: dict
    stopped_early: bool = False
    resumed_from: int | None = None
    extra: dict = field(default_factory=dict)


def optimizer_groups(named: list[tuple[str, nn.Parameter]], weight_decay: float,
                     lr_scales: dict[str, float] | None = None) -> list[dict]:
    """No decay on biases and normalisation weights (1-D tensors), as is usual for transformers.

    ``lr_scales`` (name -> multiplier, e.g. LoRA+'s B matrices) adds groups whose ``lr_scale`` the
    schedule multiplies its rate by; without it the two plain groups are all there is."""
    lr_scales = lr_scales or {}
    groups = []
    for scale in [1.0] + sorted({s for s in lr_scales.values() if s != 1.0}):
        members = [(n, p) for n, p in named if lr_scales.get(n, 1.0) == scale]
        for decay in (True, False):
            params = [p for _, p in members if (p.ndim >= 2) == decay]
            if scale == 1.0 or params:
                groups.append({"params": params, "weight_decay": weight_decay if decay else 0.0, "lr_scale": scale})
    return groups


def make_optimizer(groups: list[dict], cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    kw = dict(lr=lr, betas=tuple(cfg.betas), eps=1e-8)
    try:  # the fused kernel does the whole update in one pass: much faster on CPU for big models
        return torch.optim.AdamW(groups, fused=True, **kw)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, **kw)


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """train.gradient_checkpointing on the Transformers model inside ``model`` (non-reentrant: it works with
    frozen embeddings, as under LoRA)."""
    from transformers import PreTrainedModel

    hf = next((m for m in model.modules() if isinstance(m, PreTrainedModel)), None)
    if hf is None or not hf.supports_gradient_checkpointing:
        raise ConfigError("train.gradient_checkpointing needs a Transformers model that supports it")
    hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


class Trainer:
    """Trains ``model`` (logits from input_ids/attention_mask) on encoded data.

    ``on_step`` (optional) is called after every optimisation step with the step number; it may
    return True to request a stop (used by tests to simulate an interruption). ``lr_scales`` (trainable
    parameter name -> multiplier; ``methods.lr_scales`` gives the method's) scales some parameters'
    learning rate throughout the schedule.
    """

    def __init__(self, model: nn.Module, train: Encoded, validation: Encoded, label_names: list[str],
                 cfg: TrainConfig, out_dir: Path, *, lr: float, warmup_ratio: float, pad_id: int = 0,
                 progress: bool = True, on_step: Callable[[int], bool] | None = None,
                 on_evaluate: Callable[[int, dict], None] | None = None, lr_scales: dict[str, float] | None = None,
                 task: Task | None = None, augment: Callable[[int], Encoded] | None = None,
                 distill: Distillation | None = None):
        self.task = task or task_for()
        self.task.check_metric(cfg.metric, label_names)
        self.task.check_loss(cfg.loss)
        self.cfg, self.out_dir = cfg, Path(out_dir)
        self.train_data, self.val_data, self.label_names = train, validation, label_names
        self.lr, self.warmup_ratio, self.pad_id = lr, warmup_ratio, pad_id
        self.progress, self.on_step, self.on_evaluate = progress, on_step, on_evaluate
        self.procs = processes()  # data-parallel: this process's share of each batch; one process: all of it
        if self.procs.world > min(len(train), cfg.batch_size):
            raise ConfigError(f"{self.procs.world} processes for {len(train)} training examples in batches of "
                              f"{cfg.batch_size}: use at most {min(len(train), cfg.batch_size)} processes")
        self.device = resolve_device(local_device(cfg.device))
        self.progress = progress and self.procs.main
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.dtype = resolve_precision(cfg.precision, self.device)
        # train.deepspeed: the config is checked now (one-line errors before any step); the engine starts in fit,
        # after a checkpoint's weights are in the model.
        ds_path = config_path(cfg)
        if ds_path is not None:
            check_switches(cfg)
        self.ds_config = fill_config(read_config(ds_path), RunShape(cfg, self.procs.world, self.dtype), ds_path) \
            if ds_path else None
        self.engine: DeepSpeedStep | None = None
        self.model = model.to(self.device)
        self.procs.sync_parameters(self.model)
        if cfg.gradient_checkpointing:
            enable_gradient_checkpointing(self.model)
        if cfg.mixout:  # towards the weights as they are now: the pretrained ones
            apply_mixout(getattr(model, "encoder", model), cfg.mixout)
        self.objective = Objective(cfg, self.model)
        # train.compile: training steps through inductor (dynamic shapes: batches differ in length); evaluation
        # and saving use the plain module, which shares its weights.
        trained = torch.compile(self.model, dynamic=True) if cfg.compile else self.model
        self.forward = model_forward(trained, self.device, self.dtype)
        # data.augment: the epoch's training data (the texts and their fresh augmented copies) by epoch number.
        self.augment = augment
        self.distill = distill  # train.teacher: each training row's teacher targets
        self.epoch_data, self._epoch = train, None
        self.params = parameter_counts(model)
        reset_peak_memory(self.device)  # this run's own peak, even after other runs in this process
        # Under DeepSpeed the engine keeps the float32 masters and low-precision copies itself.
        self.masters = MasterWeights(self.model, torch.float32 if self.ds_config else self.dtype)
        named_masters = list(self.masters.state_dict().items())
        unknown = set(lr_scales or {}) - {n for n, _ in named_masters}
        if unknown:
            raise ConfigError(f"learning-rate scales for parameters that do not train: {sorted(unknown)[:3]}")
        self.optimizer = make_optimizer(optimizer_groups(named_masters, cfg.weight_decay, lr_scales), cfg, lr)
        self.plain_groups = self.optimizer.state_dict()["param_groups"]  # what a checkpoint records, DeepSpeed or not
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16 and not self.ds_config)
        self.steps_per_epoch = math.ceil(len(self.data_of_epoch(0)) / cfg.batch_size)
        total = math.ceil(cfg.max_epochs * self.steps_per_epoch)
        self.total_steps = min(total, cfg.max_steps) if cfg.max_steps else total
        self.warmup_steps = int(round(warmup_ratio * self.total_steps))
        self.lengths = [len(x) for x in train.ids]
        self.class_weights = self.task.loss_weights(cfg.class_weights, train.labels, len(label_names), self.device)
        self.fingerprint = data_fingerprint(train, label_names)
        self.history: list[dict] = []

    # ---- schedule -------------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        """Linear warm-up to the peak, then linear decay to zero at the last planned step."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        rest = max(1, self.total_steps - self.warmup_steps)
        return self.lr * max(0.0, (self.total_steps - step) / rest)

    def data_of_epoch(self, epoch: int) -> Encoded:
        """The training data of an epoch: with data.augment, the texts plus that epoch's copies (the same
        copies again when a resumed run replays the epoch)."""
        if self.augment is None:
            return self.train_data
        if self._epoch != epoch:
            self.epoch_data, self._epoch = self.augment(epoch), epoch
        return self.epoch_data

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        gen = torch.Generator().manual_seed(self.cfg.seed * 1000 + epoch)
        data = self.data_of_epoch(epoch)
        lengths = self.lengths if data is self.train_data else [len(x) for x in data.ids]
        return batches(lengths, self.cfg.batch_size, shuffle=True, generator=gen,
                       group_by_length=self.cfg.group_by_length)

    # ---- checkpoints ------------------------------------------------------------------------
    def weights(self) -> dict[str, torch.Tensor]:
        """The float32 trainable weights by name (under DeepSpeed gathered from their partitions: every process
        calls this)."""
        return self.engine.weights() if self.engine is not None else self.masters.state_dict()

    def save_checkpoint(self, state: dict) -> None:
        if not self.cfg.checkpoint:
            return
        weights = self.weights()
        if not self.procs.main:
            return
        tensors = {f"param.{k}": v for k, v in weights.items()}
        # DeepSpeed's optimizer state is partitioned and saved only in its own pickles: its runs resume with fresh
        # AdamW moments.
        opt = self.optimizer.state_dict() if self.engine is None else {"state": {}, "param_groups": self.plain_groups}
        tensors.update(optimizer_tensors(opt["state"]))
        tensors["rng.torch"] = torch.get_rng_state()
        groups = [{k: v for k, v in g.items()} for g in opt["param_groups"]]
        meta = {"state": json.dumps(state), "param_groups": json.dumps(groups),
                "labels": json.dumps(self.label_names), "data": self.fingerprint}
        save_tensors(self.out_dir / CHECKPOINT, tensors, meta)

    def load_checkpoint(self) -> dict | None:
        path = self.out_dir / CHECKPOINT
        if not path.exists():
            return None
        tensors, meta = load_tensors(path)
        labels = json.loads(meta.get("labels", "null")) or self.label_names  # older checkpoints: unchecked
        if labels != self.label_names or meta.get("data", self.fingerprint) != self.fingerprint:
            what = f"labels {labels}" if labels != self.label_names else "other training texts"
            raise RunError(f"{self.out_dir}: the checkpoint was trained on other data ({what}); "
                           "restore the data or pass --overwrite to start afresh")
        self.masters.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("param.")})
        groups = json.loads(meta["param_groups"])
        for g in groups:
            g["betas"] = tuple(g["betas"])
        if self.ds_config is None:  # a DeepSpeed run starts its engine from the weights with fresh moments
            self.optimizer.load_state_dict({"state": optimizer_state(tensors), "param_groups": groups})
        torch.set_rng_state(tensors["rng.torch"])
        return json.loads(meta["state"])

    # ---- the loop ---------------------------------------------------------------------------
    def predict(self, data: Encoded) -> torch.Tensor:
        """``data``'s logits in order; several processes each predict a share and all get the whole."""
        if self.engine is not None and self.engine.stage == 3:
            # ZeRO-3 gathers weights into the parameters during forward passes: gathered under inference mode they
            # could not take part in the next backward, hence no_grad. Every forward pass is a collective (the
            # processes gather each layer together), so every process predicts everything, in the same batches.
            return predict_logits(self.model, data, self.cfg.eval_batch_size, self.device, self.pad_id, self.dtype,
                                  no_grad=True)
        if self.procs.world == 1:
            return predict_logits(self.model, data, self.cfg.eval_batch_size, self.device, self.pad_id, self.dtype)
        mine = self.procs.shard(range(len(data)))
        part = Encoded([data.ids[i] for i in mine], [data.labels[i] for i in mine])
        shares = self.procs.gather((mine, predict_logits(self.model, part, self.cfg.eval_batch_size, self.device,
                                                         self.pad_id, self.dtype)))
        width = max(share.shape[-1] if share.ndim == 2 else 0 for _, share in shares)
        full = torch.empty(len(data), width)
        for idx, share in shares:
            if idx:
                full[idx] = share
        return full

    def evaluate(self) -> dict:
        """The validation metrics, computed once (by the main process) and shared."""
        logits = self.predict(self.val_data)
        return self.procs.from_main(lambda: self.task.metrics(logits, self.val_data.labels, self.label_names))

    def fit(self) -> TrainResult:
        cfg = self.cfg
        torch.manual_seed(cfg.seed + self.procs.rank)  # each replica its own dropout masks
        state = self.load_checkpoint() or {"step": 0, "epoch": 0, "batch": 0, "best": None, "best_step": 0,
                                           "bad_evals": 0, "elapsed": 0.0, "samples": 0, "train_time": 0.0,
                                           "finished": False, "stopped_early": False}
        resumed_from = state["step"] or None
        if self.ds_config is not None and self.engine is None:  # the engine takes the (resumed) weights as they are
            self.engine = DeepSpeedStep(self.model, self.optimizer, self.ds_config, self.device)
            self.forward = model_forward(self.engine.engine, self.device, self.dtype)
        # The log may hold evaluations after the checkpoint (a kill between the two): drop them.
        self.history = [h for h in read_history(self.out_dir) if h["step"] <= state["step"]]
        if self.procs.main and (state["step"] == 0 or len(self.history) != len(read_history(self.out_dir))):
            write_history(self.out_dir, self.history)
        start = time.perf_counter() - state["elapsed"]
        loss_sum, loss_n = torch.zeros((), device=self.device), 0
        stopped_early = state.get("stopped_early", False)
        self.model.train()
        from ..progress import training_progress

        with stop_requests() as stop, training_progress(self.total_steps, enabled=self.progress) as bar:
            bar.update(completed=state["step"], best=state["best"], metric=cfg.metric)
            while state["step"] < self.total_steps and not stopped_early and not state.get("finished"):
                epoch_batches = self.epoch_batches(state["epoch"])
                for bi in range(state["batch"], len(epoch_batches)):
                    t0 = time.perf_counter()
                    loss = self.train_step(epoch_batches[bi], state["step"])
                    state["train_time"] += time.perf_counter() - t0
                    state["samples"] += len(epoch_batches[bi])
                    loss_sum, loss_n = loss_sum + loss, loss_n + 1
                    state["step"] += 1
                    state["batch"] = bi + 1
                    end_of_epoch = state["batch"] == len(epoch_batches)
                    if end_of_epoch:
                        state["epoch"], state["batch"] = state["epoch"] + 1, 0
                    done = state["step"] >= self.total_steps
                    if state["step"] % cfg.eval_every == 0 or end_of_epoch or done:
                        mean_loss = float(loss_sum) / max(loss_n, 1)  # the one read of the losses
                        stopped_early = self._evaluate_and_keep(state, mean_loss, start)
                        loss_sum, loss_n = torch.zeros((), device=self.device), 0
                        bar.update(completed=state["step"], loss=mean_loss, best=state["best"], metric=cfg.metric,
                                   value=self.history[-1]["validation"][cfg.metric],
                                   epoch=state["step"] / self.steps_per_epoch)
                        if stopped_early or done:
                            break
                    else:
                        bar.update(completed=state["step"])
                    requested = self.on_step(state["step"]) if self.on_step else False
                    if self.procs.any(stop["stop"] or requested):
                        state["elapsed"] = time.perf_counter() - start
                        self.save_checkpoint(state)
                        raise Interrupted(state["step"], self.out_dir / CHECKPOINT, saved=self.cfg.checkpoint)
                    if end_of_epoch:
                        break

        # Restore the best weights for whatever comes next (test evaluation, saving predictions).
        self.procs.barrier()  # the main process has written them
        deepspeed = self.deepspeed_summary()
        if self.engine is not None:  # a plain float32 module again, for what the caller does next
            self.engine.release()
            self.engine, self.forward = None, model_forward(self.model, self.device, self.dtype)
        best, _ = load_tensors(self.out_dir / BEST)
        self.masters.load_state_dict(best)
        elapsed = time.perf_counter() - start
        best_eval = next(h for h in self.history if h["step"] == state["best_step"])
        summary = {
            "runtime_s": elapsed, "steps": state["step"], "best_step": state["best_step"],
            "epochs": state["step"] / self.steps_per_epoch,
            "steps_per_s": state["step"] / max(state["train_time"], 1e-9),
            "samples_per_s": state["samples"] / max(state["train_time"], 1e-9),
            "peak_memory_mb": peak_memory_mb(self.device),
            "memory_kind": "cuda_max_allocated" if self.device.type == "cuda" else "rss",
            "precision": str(self.dtype).replace("torch.", ""), "device": str(self.device),
            "lr": self.lr, "warmup_steps": self.warmup_steps, "stopped_early": stopped_early,
            "resumed_from_step": resumed_from, "processes": self.procs.world, **deepspeed, **self.params,
        }
        if self.augment is not None:  # data.augment: copies per training text each epoch
            summary["augmented_copies"] = len(self.data_of_epoch(0)) // len(self.train_data) - 1
        # The checkpoint (marked finished) stays until the caller has written the final metrics: `finish`.
        return TrainResult(state["best_step"], best_eval["validation"], self.history, summary,
                           stopped_early, resumed_from)

    def deepspeed_summary(self) -> dict:
        """What metrics.json records of a DeepSpeed run (nothing without one)."""
        if self.engine is None:
            return {}
        return {"deepspeed": {"config": config_path(self.cfg), "zero_stage": self.engine.stage,
                              "offload": sorted(k for k, v in self.ds_config.get("zero_optimization", {}).items()
                                                if k.startswith("offload_") and v.get("device", "none") != "none")}}

    def finish(self) -> None:
        """Free the checkpoint's space once the run's final metrics are on disk."""
        if self.procs.main:
            (self.out_dir / CHECKPOINT).unlink(missing_ok=True)

    def batch_tensors(self, idx: list[int]) -> tuple[dict, torch.Tensor]:
        """The model inputs and targets of one batch (indices into the epoch's training data)."""
        data = self.epoch_data
        batch = collate([data.ids[i] for i in idx], self.pad_id, self.cfg.pad_multiple)
        batch = {k: v.to(self.device) for k, v in batch.items()}
        return batch, torch.tensor([data.labels[i] for i in idx], device=self.device)

    def loss_of(self, logits: torch.Tensor, targets: torch.Tensor, idx: list[int]) -> torch.Tensor:
        """The task's training loss of a batch's logits (mixed with the teachers' term when distilling)."""
        if self.distill is not None:
            return self.distill.loss(self.task, logits, targets, idx, self.class_weights, self.cfg.loss)
        return self.task.loss(logits, targets, self.class_weights, self.cfg.loss)

    def consistency(self, a: torch.Tensor, b: torch.Tensor, idx: list[int]) -> torch.Tensor:
        """R-Drop: how far two passes of a batch disagree, as the task measures it."""
        return self.task.consistency(a, b, self.class_weights)

    def split(self, idx: list[int], n: int, i: int) -> list[int]:
        """Share ``i`` of ``n`` of a batch (strided, so grouped lengths stay balanced)."""
        return list(idx[i::n])

    def train_step(self, global_idx: list[int], step: int) -> torch.Tensor:
        """One optimisation step; the batch's loss as a tensor (not read: no wait for the device): emotune's own
        step, or a DeepSpeed engine's (train.deepspeed)."""
        return (self.plain_step if self.engine is None else self.deepspeed_step)(global_idx, step)

    def deepspeed_step(self, global_idx: list[int], step: int) -> torch.Tensor:
        """The step through the DeepSpeed engine: the same shares and weights as ``plain_step``. Every process runs
        exactly train.accumulate micro-batches, because the engine counts them to know when to update and its
        collectives need every process; an empty share runs the batch's first row with weight 0."""
        world, k = self.procs.world, self.cfg.accumulate
        idx = self.split(global_idx, world, self.procs.rank) if world > 1 else global_idx
        self.engine.set_lr(self.lr_at(step))
        loss = torch.zeros((), device=self.device)
        for j in range(k):
            part = self.split(idx, k, j) if k > 1 else idx
            # DeepSpeed averages the processes' gradients: the factor `world` makes that average the batch's mean.
            w = len(part) * world / len(global_idx)
            rows = part if len(part) else self.split(global_idx, len(global_idx), 0)
            batch, targets = self.batch_tensors(rows)
            value = self.objective.clean_loss(self.forward, batch,
                                              lambda logits: w * self.loss_of(logits, targets, rows),
                                              lambda a, b: w * self.consistency(a, b, rows))
            self.engine.backward_and_step(value)
            loss = loss + value.detach()
        return loss

    def plain_step(self, global_idx: list[int], step: int) -> torch.Tensor:
        """emotune's own step. Several processes each take their share of the batch; train.accumulate splits a
        share into micro-batches. Each part's mean loss is weighted by its share, so the gradient is the whole
        batch's mean."""
        idx = self.split(global_idx, self.procs.world, self.procs.rank) if self.procs.world > 1 else global_idx
        loss = torch.zeros((), device=self.device)
        k = min(self.cfg.accumulate, len(idx))  # 0 for a process whose share of a short last batch is empty
        for j in range(k):
            part = self.split(idx, k, j) if k > 1 else idx
            w = len(part) / len(idx)
            batch, targets = self.batch_tensors(part)
            loss = loss + self.objective.backward(
                self.forward, batch, lambda logits: w * self.loss_of(logits, targets, part),
                lambda a, b: w * self.consistency(a, b, part), self.scaler.scale)
            self.masters.grads_to_masters()
        self.procs.average_grads(self.masters.masters, len(idx), len(global_idx))
        if self.cfg.max_grad_norm:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.masters.masters, self.cfg.max_grad_norm, foreach=True)
        lr = self.lr_at(step)
        for g in self.optimizer.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.masters.masters_to_model()
        return loss

    def _evaluate_and_keep(self, state: dict, train_loss: float, start: float) -> bool:
        """Evaluate, keep the best weights, checkpoint; True when early stopping triggers."""
        metrics = self.evaluate()
        value = metrics[self.cfg.metric]
        entry = {"step": state["step"], "epoch": state["step"] / self.steps_per_epoch, "train_loss": train_loss,
                 "lr": self.lr_at(state["step"] - 1), "elapsed_s": time.perf_counter() - start,
                 "validation": metrics}
        self.history.append(entry)
        if self.procs.main:
            append_jsonl(self.out_dir / HISTORY, entry)
        if is_better(self.cfg.metric, value, state["best"]):
            state.update(best=value, best_step=state["step"], bad_evals=0)
            weights = self.weights()  # under DeepSpeed a collective: every process takes part
            if self.procs.main:
                save_tensors(self.out_dir / BEST, weights)
        else:
            state["bad_evals"] += 1
        if self.on_evaluate:
            self.on_evaluate(state["step"], metrics)
        state["elapsed"] = time.perf_counter() - start
        stop = self.cfg.patience is not None and state["bad_evals"] >= self.cfg.patience
        # The last evaluation's checkpoint marks the loop finished: a kill before the caller's final
        # metrics are written resumes here, with nothing to retrain.
        state.update(finished=stop or state["step"] >= self.total_steps, stopped_early=stop)
        self.save_checkpoint(state)
        return stop
