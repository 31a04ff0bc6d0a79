"""Task-free online continual learning (Online-LoRA, Wei et al. 2024): a loss-plateau detector, an online
importance-weighted (MAS) regulariser, and a learner that reads a stream of mini-batches once, in order.

At every plateau of the training loss the learner folds its adapter into the frozen base weights and starts a
fresh one (new random A, B = 0: the model computes exactly what it computed before the merge), and the adapter's
importances (accumulated over plateaus) anchor the fresh adapter to the plateau's state.

What the official code does, read in Christina200/Online-LoRA-official at commit 96e7de0,
``Disjoint/engine.py`` (``train_and_evaluate``; the same rule is in ``Si-blurry/online_lora.py``):

- the loss window holds the last ``loss_window_length`` training losses, one per incoming batch, each measured in
  the forward pass before that batch's optimisation step; its mean ``m`` and population variance ``v``
  (``np.var``) are recomputed after every batch;
- a flag ``new_peak_detected`` starts True; when it is False and ``m > m_last + sqrt(v_last)`` (the window's mean
  rose by more than a standard deviation above the mean at the last plateau) it becomes True again;
- a plateau is ``m < loss_window_mean_threshold and v < loss_window_variance_threshold and new_peak_detected``;
  it records ``m_last, v_last = m, v`` and clears the flag, so the next plateau needs a new peak first;
- at a plateau the importances are computed on the hard buffer (the few highest-loss recent examples), folded
  into a running average over plateaus (``Omega_k = new / k + (1 - 1/k) Omega_{k-1}``), then the current LoRA is
  added into the frozen one and a fresh LoRA starts (``update_and_reset_lora_parameters``: A Kaiming-uniform,
  B zero); every batch trains on itself plus the hard buffer, and the buffer keeps the highest losses among both.

Where emotune differs, and why:

- a plateau needs a full window (the official code tests from the first batch, where one loss has variance 0);
- the window holds the incoming batch's own mean loss (the official one adds the hard buffer's losses to it), so
  its thresholds read as a per-example cross-entropy whatever the buffer's size;
- importance is MAS's (Aljundi et al. 2018): the mean over the hard examples of ``|d||f(x)||^2 / d theta|``, f the
  logits, one example at a time (the official code squares the gradients of the predicted label's NLL), divided
  by its mean over the regularised entries so that ``stream.reg_weight`` does not depend on the model's scale;
- the anchor ``theta*`` is the state at the last plateau: the fresh adapter's initial values (the official code
  anchors at 0) and, with ``reg_scope: trainable``, the head and norms as they were at the plateau. The penalty
  ``lambda * sum Omega (theta - theta*)^2`` is therefore 0 right after each restart;
- ``head_reg_weight`` (off by default) adds a second penalty of the same form on the head, with its importances
  normalised apart from the adapter's: on a stream whose label prior shifts (a domain with a class the earlier ones
  lack) the head is what moves, and one shared normalisation lets its few entries dwarf the adapter's;
- the merge folds ``scale * B @ A`` into the base weight (``methods.merge_adapter``), which leaves the predictions
  unchanged; the official code adds the new factors to the old ones (A += A', B += B'), which does not;
- ``replay`` (off by default) adds experience replay (Chaudhry et al. 2019, "On Tiny Episodic Memories in
  Continual Learning"): a reservoir sample of every example the stream has shown so far (Vitter's algorithm R, so
  it needs no task boundaries), of which ``replay_batch`` are trained on beside each incoming batch. The hard
  buffer keeps only the last few hardest examples, which after a domain change all come from the new domain.

Why not the Trainer (``train/loop.py``): it plans epochs over a fixed data set, evaluates and early-stops on a
validation split, restores the best weights at the end and decays the learning rate towards a planned last step.
A stream is read once with no validation split, its model changes shape mid-run (merge and restart), and the
rate stays constant (a stream has no planned end to decay towards). The pieces that fit are shared: encoding and
batching (``data.encode``), devices and precisions (``train.precision``), forward passes (``train.evaluate``).
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.encode import collate
from ..errors import ConfigError, RunError
from ..io import optimizer_state, optimizer_tensors
from ..methods import METHODS, apply_method, merge_adapter
from ..methods.peft_common import NORM_TYPES
from .precision import autocast

REG_SCOPES = ("adapter", "trainable")  # which parameters the regulariser anchors


@dataclass
class PlateauDetector:
    """Online-LoRA's loss-plateau rule (see the module's docstring): ``update(loss)`` after every batch, True at
    a plateau."""

    window: int
    mean_threshold: float
    variance_threshold: float
    losses: deque = field(default_factory=deque)
    armed: bool = True  # the official new_peak_detected: a plateau needs a new peak since the last one
    last_mean: float = math.inf
    last_variance: float = 0.0
    mean: float = math.nan
    variance: float = math.nan

    def __post_init__(self) -> None:
        if self.window < 2:
            raise ConfigError(f"the plateau window needs at least 2 losses, got {self.window}")
        self.losses = deque(self.losses, maxlen=self.window)

    def update(self, loss: float) -> bool:
        self.losses.append(float(loss))
        n = len(self.losses)
        self.mean = sum(self.losses) / n
        self.variance = sum((x - self.mean) ** 2 for x in self.losses) / n  # population variance, as np.var
        if n < self.window:
            return False
        if not self.armed and self.mean > self.last_mean + math.sqrt(self.last_variance):
            self.armed = True
        if self.armed and self.mean < self.mean_threshold and self.variance < self.variance_threshold:
            self.last_mean, self.last_variance, self.armed = self.mean, self.variance, False
            return True
        return False


def mas_importance(model: nn.Module, params: dict[str, nn.Parameter], examples: list[list[int]],
                   device: torch.device, dtype: torch.dtype = torch.float32,
                   pad_id: int = 0) -> dict[str, torch.Tensor]:
    """MAS importance of ``params`` (name -> parameter) on ``examples`` (token id lists): the mean over examples of
    ``|d ||f(x)||^2 / d theta|`` (f: the logits), one example at a time, without dropout; gradients are left
    cleared."""
    was_training = model.training
    model.eval()
    total = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    try:
        for ids in examples:
            model.zero_grad(set_to_none=True)
            batch = {k: v.to(device) for k, v in collate([ids], pad_id).items()}
            with torch.enable_grad(), autocast(device, dtype):
                out = model(**batch).float()
            out.pow(2).sum().backward()
            for n, p in params.items():
                if p.grad is not None:
                    total[n] += p.grad.detach().float().abs()
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return {n: t / max(len(examples), 1) for n, t in total.items()}


class ImportanceRegulariser:
    """``weight * sum Omega * (theta - theta*)^2`` over named parameters. ``accumulate`` adds one importance
    estimate (normalised to mean 1, then averaged with the earlier ones as the official code does: the k-th
    estimate weighs 1/k); ``anchor_at`` sets ``theta*``."""

    def __init__(self, weight: float):
        self.weight = weight
        self.omega: dict[str, torch.Tensor] = {}
        self.anchor: dict[str, torch.Tensor] = {}
        self.updates = 0

    def accumulate(self, importance: dict[str, torch.Tensor]) -> None:
        mean = torch.cat([t.flatten() for t in importance.values()]).mean() if importance else torch.tensor(0.)
        scaled = {n: t / mean if mean > 0 else t for n, t in importance.items()}
        self.updates += 1
        k = self.updates
        self.omega = {n: t / k + (1 - 1 / k) * self.omega[n] if n in self.omega else t for n, t in scaled.items()}

    def anchor_at(self, params: dict[str, torch.Tensor]) -> None:
        self.anchor = {n: p.detach().clone() for n, p in params.items()}

    def penalty(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        terms = [(self.omega[n].to(p.device) * (p - self.anchor[n].to(p.device)) ** 2).sum()
                 for n, p in params.items() if n in self.omega and n in self.anchor]
        if not terms:
            return torch.zeros(())
        return self.weight * torch.stack(terms).sum()


@dataclass
class OnlineSettings:
    """How the learner trains: the optimiser, and what a strategy switches on (merge and restart at plateaus, the
    regulariser, the hard buffer)."""

    lr: float
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.99)
    max_grad_norm: float | None = 1.0
    window: int = 10
    mean_threshold: float = 1.2
    variance_threshold: float = 0.01
    merge: bool = True
    regularise: bool = True
    reg_weight: float = 0.1
    reg_scope: str = "adapter"
    head_reg_weight: float = 0.0  # the head's own penalty, its importances normalised apart from the adapter's
    hard_buffer: int = 8
    hard_loss: bool = True
    labels_trick: bool = False  # cross-entropy over the classes among the labels of each pass only
    replay: int = 0  # the reservoir's capacity: a uniform sample of every example seen so far; 0: no replay
    replay_batch: int = 16  # reservoir examples trained on with each incoming batch
    replay_seed: int = 0  # seeds the reservoir's choices and draws

    def __post_init__(self) -> None:
        check_settings(self.reg_scope, self.head_reg_weight, self.replay, self.replay_batch)


def check_settings(reg_scope: str, head_reg_weight: float, replay: int, replay_batch: int, prefix: str = "") -> None:
    """The checks the learner's settings and the stream config share (the stream's, with ``prefix`` "stream.",
    fail before any data is read)."""
    if reg_scope not in REG_SCOPES:
        raise ConfigError(f"{prefix}reg_scope must be one of {', '.join(REG_SCOPES)}, got {reg_scope!r}")
    if head_reg_weight and reg_scope != "adapter":
        raise ConfigError(f"{prefix}head_reg_weight needs {prefix}reg_scope adapter (trainable anchors the head "
                          "already)")
    if replay < 0:
        raise ConfigError(f"{prefix}replay must be at least 0, got {replay}")
    if replay_batch < 1:
        raise ConfigError(f"{prefix}replay_batch must be at least 1, got {replay_batch}")


def check_restartable(method_spec: dict[str, Any]) -> None:
    """Merging at plateaus needs an adapter that folds into the base weights."""
    method = METHODS.get(method_spec.get("name", ""))
    if not method.mergeable or method.build is not None or method.name == "full":
        raise ConfigError(f"online-lora folds an adapter into the base at each plateau; method {method.name} has no "
                          "adapter that folds (use lora, dora, multilora...)")


class OnlineLearner:
    """Trains ``model`` (built with ``method_spec``) one incoming batch at a time; see the module's docstring."""

    def __init__(self, model: nn.Module, method_spec: dict[str, Any], settings: OnlineSettings,
                 device: torch.device, dtype: torch.dtype = torch.float32, pad_id: int = 0):
        if settings.merge:
            check_restartable(method_spec)
        self.model, self.method_spec, self.s = model.to(device), dict(method_spec), settings
        self.device, self.dtype, self.pad_id = device, dtype, pad_id
        self.detector = PlateauDetector(settings.window, settings.mean_threshold, settings.variance_threshold)
        self.regulariser = ImportanceRegulariser(settings.reg_weight)
        self.head_regulariser = ImportanceRegulariser(settings.head_reg_weight)
        self.buffer: list[tuple[list[int], int]] = []  # the hard examples: (token ids, label)
        self.reservoir: list[tuple[list[int], int]] = []  # replay: a uniform sample of the examples seen
        self.seen = 0  # examples offered to the reservoir
        self.rng = random.Random(settings.replay_seed)
        self.step_count = 0
        self.merges: list[dict] = []
        self.optimizer = self._optimizer(None)
        self.model.train()

    # ---- parameters ----------------------------------------------------------------------------
    def trainable(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def regularised(self) -> dict[str, nn.Parameter]:
        """The adapter's parameters (trainable, inside the encoder, not a norm); with reg_scope trainable, every
        trainable parameter (head and norms too)."""
        trainable = self.trainable()
        if self.s.reg_scope == "trainable":
            return trainable
        norms = {f"{m}.{n}" if m else n for m, mod in self.model.named_modules() if isinstance(mod, NORM_TYPES)
                 for n, _ in mod.named_parameters(recurse=False)}
        return {n: p for n, p in trainable.items() if n.startswith("encoder.") and n not in norms}

    def head(self) -> dict[str, nn.Parameter]:
        """The head's trainable parameters (outside the encoder), which ``head_reg_weight`` anchors."""
        return {n: p for n, p in self.trainable().items() if not n.startswith("encoder.")}

    def _optimizer(self, old: torch.optim.Optimizer | None) -> torch.optim.Optimizer:
        """AdamW over the trainable parameters (no decay on 1-D ones); the moments of parameters that survive a
        restart (head, norms) carry over from ``old``, a fresh adapter's start at zero."""
        params = list(self.trainable().values())
        groups = [g for g in ({"params": [p for p in params if p.ndim >= 2], "weight_decay": self.s.weight_decay},
                              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}) if g["params"]]
        opt = torch.optim.AdamW(groups, lr=self.s.lr, betas=tuple(self.s.betas), eps=1e-8)
        if old is not None:
            for p in params:
                if p in old.state:
                    opt.state[p] = old.state[p]
        return opt

    # ---- one batch -------------------------------------------------------------------------------
    def logits(self, ids: list[list[int]]) -> torch.Tensor:
        """Logits of ``ids`` without dropout or gradients (the model's mode is kept)."""
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), autocast(self.device, self.dtype):
                batch = {k: v.to(self.device) for k, v in collate(ids, self.pad_id).items()}
                return self.model(**batch).float().cpu()
        finally:
            self.model.train(was_training)

    def _losses(self, ids: list[list[int]], labels: list[int]) -> torch.Tensor:
        batch = {k: v.to(self.device) for k, v in collate(ids, self.pad_id).items()}
        with autocast(self.device, self.dtype):
            logits = self.model(**batch).float()
        targets = torch.tensor(labels, device=self.device)
        if self.s.labels_trick:  # classes absent from these labels get no gradient (their logits leave the softmax)
            shown = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
            shown[targets] = True
            logits = logits.masked_fill(~shown, float("-inf"))
        return F.cross_entropy(logits, targets, reduction="none")

    def step(self, ids: list[list[int]], labels: list[int]) -> dict:
        """Train on one incoming batch (plus the hard buffer and replayed examples); the step's record: the batch's
        loss before the update, the window's mean and variance, the penalty, whether a plateau was detected and acted
        on."""
        self.step_count += 1
        hard = self.buffer if self.s.hard_buffer else []
        all_ids = ids + [x for x, _ in hard]
        all_labels = labels + [y for _, y in hard]
        # The batch and the buffer in separate passes: hard examples are often the longest, and one pass would
        # pad the whole batch to them.
        losses = self._losses(ids, labels)
        replayed = self.rng.sample(self.reservoir, min(self.s.replay_batch, len(self.reservoir))) if self.s.replay \
            else []
        if hard:
            with torch.set_grad_enabled(self.s.hard_loss):  # without hard_loss the buffer's losses only rank it
                hard_losses = self._losses([x for x, _ in hard], [y for _, y in hard])
            losses = torch.cat([losses, hard_losses])
        batch_loss = losses[: len(ids)].mean()
        loss = batch_loss + (losses[len(ids):].mean() if hard and self.s.hard_loss else 0.0)
        if replayed:  # its own pass and its own mean, as the hard buffer's: it weighs as much as the batch
            loss = loss + self._losses([x for x, _ in replayed], [y for _, y in replayed]).mean()
        penalty = torch.zeros(())
        if self.s.regularise and self.regulariser.omega:
            penalty = self.regulariser.penalty(self.regularised())
            if self.head_regulariser.omega:
                penalty = penalty + self.head_regulariser.penalty(self.head())
            loss = loss + penalty.to(loss.device)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.s.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(list(self.trainable().values()), self.s.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

        value = float(batch_loss.detach())
        plateau = self.detector.update(value)
        record = {"step": self.step_count, "loss": value, "window_mean": self.detector.mean,
                  "window_variance": self.detector.variance, "penalty": float(penalty.detach()), "plateau": plateau}
        if plateau and self.s.merge:
            record["merge"] = self.merge_and_restart(check=ids)
        if self.s.hard_buffer:  # the highest losses of this step (before its update) among the batch and buffer
            values = losses.detach().tolist()
            order = sorted(range(len(all_ids)), key=values.__getitem__, reverse=True)
            self.buffer = [(all_ids[i], all_labels[i]) for i in order[: self.s.hard_buffer]]
        if self.s.replay:
            self.remember(ids, labels)
        return record

    def remember(self, ids: list[list[int]], labels: list[int]) -> None:
        """Offer each example to the reservoir (algorithm R): the n-th one seen replaces a random slot with
        probability capacity / n, so the reservoir stays a uniform sample of everything seen."""
        for example in zip(ids, labels):
            self.seen += 1
            if len(self.reservoir) < self.s.replay:
                self.reservoir.append(example)
            else:
                slot = self.rng.randrange(self.seen)
                if slot < self.s.replay:
                    self.reservoir[slot] = example

    # ---- plateaus ------------------------------------------------------------------------------
    def merge_and_restart(self, check: list[list[int]] | None = None) -> dict:
        """At a plateau: the adapter's importance on the hard examples joins the running average, the adapter is
        folded into the frozen base and a fresh one starts, and the regulariser anchors there. Returns the merge's
        record, with the largest change of any logit of ``check`` + the hard examples (0 up to rounding)."""
        examples = [x for x, _ in self.buffer] or list(check or [])
        head = self.head() if self.s.head_reg_weight else {}
        if self.s.regularise and examples:
            # One pass for both penalties; each normalises its own importances, so the head's few entries do not
            # dwarf the adapter's (what made reg_scope trainable pin the head).
            importance = mas_importance(self.model, {**self.regularised(), **head}, examples, self.device,
                                        self.dtype, self.pad_id)
            self.regulariser.accumulate({n: t for n, t in importance.items() if n not in head})
            if head:
                self.head_regulariser.accumulate({n: importance[n] for n in head})
        shown = examples + list(check or [])
        before = self.logits(shown) if shown else None
        merge_adapter(self.model)  # the adapter's update is now part of the (frozen) base weights
        self.model, _, _ = apply_method(self.model, self.method_spec)  # a fresh adapter: random A, B = 0
        self.model.to(self.device).train()
        self.optimizer = self._optimizer(self.optimizer)
        self.regulariser.anchor_at(self.regularised())
        if self.s.head_reg_weight:
            self.head_regulariser.anchor_at(self.head())
        change = float((self.logits(shown) - before).abs().max()) if shown else 0.0
        record = {"step": self.step_count, "max_logit_change": change, "importance_updates": self.regulariser.updates}
        self.merges.append(record)
        return record

    # ---- checkpoints ---------------------------------------------------------------------------
    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """What resuming needs, as (tensors, JSON values): the whole model (merges change the base weights), the
        optimiser's moments, the regulariser's importances and anchor; the hard buffer, the replay reservoir and its
        random state, the detector, the step count and the merges. A merge rebuilds the same modules (a fresh
        adapter on the merged base), so a freshly built learner takes this state as it is."""
        tensors = {f"model.{k}": v for k, v in _unshared(self.model.state_dict()).items()}
        tensors.update(optimizer_tensors(self.optimizer.state_dict()["state"]))
        tensors.update({f"omega.{n}": t for n, t in self.regulariser.omega.items()})
        tensors.update({f"anchor.{n}": t for n, t in self.regulariser.anchor.items()})
        tensors.update({f"head_omega.{n}": t for n, t in self.head_regulariser.omega.items()})
        tensors.update({f"head_anchor.{n}": t for n, t in self.head_regulariser.anchor.items()})
        d = self.detector
        values = {"step_count": self.step_count, "merges": self.merges, "trainable": list(self.trainable()),
                  "importance_updates": self.regulariser.updates,
                  "head_importance_updates": self.head_regulariser.updates, "buffer": [[x, y] for x, y in self.buffer],
                  "reservoir": [[x, y] for x, y in self.reservoir], "seen": self.seen, "rng": self.rng.getstate(),
                  "detector": {"losses": list(d.losses), "armed": d.armed, "last_mean": d.last_mean,
                               "last_variance": d.last_variance, "mean": d.mean, "variance": d.variance}}
        return tensors, values

    def load_state(self, tensors: dict[str, torch.Tensor], values: dict[str, Any]) -> None:
        """Continue from what ``state`` returned (on a learner built with the same model, method and settings)."""
        if values["trainable"] != list(self.trainable()):  # the optimiser's state is by position: same parameters
            raise RunError("the checkpoint's trainable parameters differ from the model's")
        parts: dict[str, dict[str, torch.Tensor]] = {}
        for key, t in tensors.items():
            kind, _, name = key.partition(".")
            parts.setdefault(kind, {})[name] = t
        self.model.load_state_dict(parts.get("model", {}), strict=True)
        self.optimizer.load_state_dict({**self.optimizer.state_dict(), "state": optimizer_state(tensors)})
        self.regulariser.omega = {n: t.to(self.device) for n, t in parts.get("omega", {}).items()}
        self.regulariser.anchor = {n: t.to(self.device) for n, t in parts.get("anchor", {}).items()}
        self.regulariser.updates = values["importance_updates"]
        self.head_regulariser.omega = {n: t.to(self.device) for n, t in parts.get("head_omega", {}).items()}
        self.head_regulariser.anchor = {n: t.to(self.device) for n, t in parts.get("head_anchor", {}).items()}
        self.head_regulariser.updates = values.get("head_importance_updates", 0)
        self.buffer = [(list(x), int(y)) for x, y in values["buffer"]]
        self.reservoir = [(list(x), int(y)) for x, y in values.get("reservoir", [])]
        self.seen = values.get("seen", 0)
        if "rng" in values:  # JSON turned the state's tuples into lists
            version, internal, gauss = values["rng"]
            self.rng.setstate((version, tuple(internal), gauss))
        self.step_count, self.merges = values["step_count"], list(values["merges"])
        d = values["detector"]
        self.detector.losses = deque(d["losses"], maxlen=self.detector.window)
        for k in ("armed", "last_mean", "last_variance", "mean", "variance"):
            setattr(self.detector, k, d[k])


def _unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``tensors`` with a copy of any that shares memory with an earlier one (tied weights): safetensors refuses
    shared tensors."""
    seen: set[int] = set()
    out = {}
    for k, t in tensors.items():
        ptr = t.untyped_storage().data_ptr() if t.numel() else -1
        out[k] = t.clone() if ptr in seen else t
        if ptr != -1:
            seen.add(ptr)
    return out
