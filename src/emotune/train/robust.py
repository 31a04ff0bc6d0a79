"""Regularisers of fine-tuning, each a switch of the run config: mixout, R-Drop and adversarial training on the
word embeddings (FGM, PGD, FreeLB). They change how a batch's gradients are made, so they work for every task
type and multi-task runs alike (the trainer supplies the batch's loss and the passes' disagreement).

- Mixout (Lee, Cho & Kang, ICLR 2020, "Mixout: Effective Regularization to Finetune Large-scale Pretrained
  Language Models"): no maintained library provides it, so ``mixout`` below is the paper's definition, written
  small. Each weight of the encoder's linear layers is swapped for its pretrained value with probability p and
  the result rescaled, ``(M * w + (1 - M) * u - p * u) / (1 - p)`` with ``M ~ Bernoulli(1 - p)``, so its
  expectation is the current weight w and p = 0 is the identity. It applies only while training.
- R-Drop (Liang et al., NeurIPS 2021): the batch passes twice (in one doubled batch, two dropout masks); the
  loss is the mean of the two passes' losses plus alpha times their disagreement (``Task.consistency``).
- Adversarial training perturbs the output of the word-embedding layer, never its weights (so a frozen
  embedding under LoRA works too, and nothing needs restoring): FGM (Miyato et al., ICLR 2017) adds one
  perturbation of norm eps per text along the normalised gradient, and the loss is clean + adversarial; PGD
  (Madry et al., ICLR 2018) takes K projected steps of size 2.5 eps / K inside the eps ball, then clean +
  adversarial; FreeLB (Zhu et al., ICLR 2020) starts from a small random perturbation, takes K ascent steps
  and averages the K adversarial losses' gradients (no separate clean term).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn
from torch.nn import functional as F

from ..config import TrainConfig
from ..errors import ConfigError
from .precision import autocast


# ---- mixout ----------------------------------------------------------------------------------------------------

def mixout(weight: torch.Tensor, target: torch.Tensor, p: float) -> torch.Tensor:
    """The paper's mixout(w, u, p): each entry takes u with probability p, rescaled so E[result] = w."""
    if p == 0:
        return weight
    keep = torch.empty_like(weight).bernoulli_(1 - p)
    return (keep * weight + (1 - keep) * target - p * target) / (1 - p)


class MixoutLinear(nn.Linear):
    """An ``nn.Linear`` that mixes towards ``mixout_target`` (its pretrained weight) while training. The target
    is a non-persistent buffer: saved weights and parameter names are those of the plain layer."""

    mixout_p: float = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.mixout_p > 0:
            # the target is copied before bf16 training casts the weights: mix in the weights' dtype
            target = self.mixout_target.to(self.weight.dtype)
            return F.linear(x, mixout(self.weight, target, self.mixout_p), self.bias)
        return super().forward(x)


def apply_mixout(encoder: nn.Module, p: float) -> int:
    """Turn every plain linear layer of ``encoder`` into a MixoutLinear towards its current (pretrained)
    weight; returns how many. Layers already turned keep their target (a later curriculum stage)."""
    n = 0
    for module in encoder.modules():
        if type(module) is nn.Linear:
            module.__class__ = MixoutLinear
            module.register_buffer("mixout_target", module.weight.detach().clone(), persistent=False)
        if isinstance(module, MixoutLinear):
            module.mixout_p = p
            n += 1
    return n


# ---- adversarial perturbations -----------------------------------------------------------------------------

def word_embeddings(model: nn.Module) -> nn.Module:
    """The layer whose output adversarial training perturbs: a pretrained encoder's input embeddings (through
    any PEFT wrapper), or a classic model's ``embedding``."""
    encoder = getattr(model, "encoder", None)
    if encoder is not None and hasattr(encoder, "get_input_embeddings"):
        return encoder.get_input_embeddings()
    embedding = getattr(model, "embedding", None)
    if isinstance(embedding, nn.Module):
        return embedding
    raise ConfigError("train.adversarial: this model has no word-embedding layer to perturb")


def per_text_normalised(g: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``g`` (texts x tokens x dims) scaled to norm 1 per text over its real tokens (padding stays 0)."""
    g = g * mask
    norm = g.flatten(1).norm(dim=1).clamp(min=1e-12)
    return g / norm.view(-1, *[1] * (g.dim() - 1))


def project(delta: torch.Tensor, eps: float) -> torch.Tensor:
    """Shrink each text's perturbation into the ball of radius eps."""
    norm = delta.flatten(1).norm(dim=1).clamp(min=1e-12)
    return delta * (eps / norm).clamp(max=1.0).view(-1, *[1] * (delta.dim() - 1))


class Perturbation:
    """A forward hook adding ``delta`` to the word embeddings' output. With ``delta`` None the hook makes one
    (``start(output)``, zeros by default) that requires grad, so a backward pass leaves the gradient with
    respect to the embeddings in ``delta.grad``."""

    def __init__(self, layer: nn.Module):
        self.layer = layer
        self.delta: torch.Tensor | None = None
        self.start: Callable[[torch.Tensor], torch.Tensor] = torch.zeros_like

    def hook(self, module, args, output):
        if self.delta is None:
            self.delta = self.start(output).float().requires_grad_()
        return output + self.delta.to(output.dtype)

    @contextmanager
    def active(self) -> Iterator["Perturbation"]:
        handle = self.layer.register_forward_hook(self.hook)
        try:
            yield self
        finally:
            handle.remove()
            self.delta = None


# ---- the objective -------------------------------------------------------------------------------------------

Loss = Callable[[torch.Tensor], torch.Tensor]


class Objective:
    """Runs a batch's forward and backward passes as the switches say; ``backward`` returns the loss value.

    The trainer provides ``forward(batch) -> logits``, ``loss_of(logits) -> scalar`` and ``consistency(a, b)``
    for the batch, and ``scale`` (its gradient scaler's ``scale``)."""

    def __init__(self, cfg: TrainConfig, model: nn.Module):
        self.cfg = cfg
        self.perturbation = Perturbation(word_embeddings(model)) if cfg.adversarial else None

    def backward(self, forward: Callable[[dict], torch.Tensor], batch: dict, loss_of: Loss,
                 consistency: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 scale: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Backpropagate the step's objective; its value as a detached tensor (reading it as a number waits for
        the device, so the loop does that only when it reports)."""
        if self.perturbation is None:
            loss = self.clean_loss(forward, batch, loss_of, consistency)
            scale(loss).backward()
            return loss.detach()
        with self.perturbation.active() as pert:
            if self.cfg.adversarial == "freelb":
                return self.freelb(pert, forward, batch, loss_of, scale)
            return self.fgm_pgd(pert, forward, batch, loss_of, consistency, scale)

    def clean_loss(self, forward, batch: dict, loss_of: Loss, consistency) -> torch.Tensor:
        if not self.cfg.rdrop:
            return loss_of(forward(batch))
        doubled = {k: torch.cat([v, v]) for k, v in batch.items()}
        a, b = forward(doubled).chunk(2)
        return 0.5 * (loss_of(a) + loss_of(b)) + self.cfg.rdrop * consistency(a, b)

    def fgm_pgd(self, pert: Perturbation, forward, batch: dict, loss_of: Loss, consistency, scale) -> torch.Tensor:
        eps, steps = self.cfg.adversarial_eps, self.cfg.adversarial_steps
        mask = batch["attention_mask"].unsqueeze(-1).float()
        n = mask.shape[0]
        pert.delta = None
        clean = self.clean_loss(forward, batch, loss_of, consistency)
        scale(clean).backward()
        grad = pert.delta.grad
        grad = grad[:n] + grad[n:] if grad.shape[0] > n else grad  # R-Drop's doubled batch: both passes
        if self.cfg.adversarial == "fgm":
            delta = eps * per_text_normalised(grad, mask)
        else:  # pgd: K projected ascent steps from the clean gradient; only the last one trains the weights
            alpha = 2.5 * eps / steps
            delta = project(alpha * per_text_normalised(grad, mask), eps)
            for _ in range(steps - 1):
                pert.delta = delta.detach().requires_grad_()
                g, = torch.autograd.grad(loss_of(forward(batch)), pert.delta)
                delta = project(pert.delta.detach() + alpha * per_text_normalised(g, mask), eps)
        pert.delta = delta.detach()
        adv = loss_of(forward(batch))
        scale(adv).backward()
        return (clean + adv).detach()

    def freelb(self, pert: Perturbation, forward, batch: dict, loss_of: Loss, scale) -> torch.Tensor:
        """FreeLB: a random start (uniform entries times eps / sqrt(dims), the paper's initialisation), K ascent
        steps inside the eps ball; the K adversarial losses (each divided by K) train the weights."""
        eps, steps = self.cfg.adversarial_eps, self.cfg.adversarial_steps
        mask = batch["attention_mask"].unsqueeze(-1).float()
        alpha = 2.5 * eps / steps

        def start(out: torch.Tensor) -> torch.Tensor:
            dims = (mask.sum((1, 2)) * out.shape[-1]).clamp(min=1).view(-1, 1, 1)
            return torch.empty_like(out, dtype=torch.float32).uniform_(-1, 1) * mask * eps / dims.sqrt()

        pert.delta, pert.start = None, start
        total = torch.zeros(())
        try:
            for k in range(steps):
                loss = loss_of(forward(batch)) / steps
                scale(loss).backward()
                total = total + loss.detach().cpu()
                if k < steps - 1:
                    delta = pert.delta
                    pert.delta = project(delta.detach() + alpha * per_text_normalised(delta.grad, mask),
                                         eps).requires_grad_()
        finally:
            pert.start = torch.zeros_like
        return total


def model_forward(model: nn.Module, device: torch.device, dtype: torch.dtype) -> Callable[[dict], torch.Tensor]:
    """``batch -> logits`` under the run's precision (what the objective calls once or several times)."""
    def forward(batch: dict) -> torch.Tensor:
        with autocast(device, dtype):
            return model(**batch)
    return forward
