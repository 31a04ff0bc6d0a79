"""Learned merging of two LoRA runs of different tasks, ZipLoRA-style (Shah et al. 2023): ``emotune merge --how zip``.

For every matrix both runs adapted, two coefficient vectors ``m_A`` and ``m_B`` (one entry per column of the
update, i.e. per input feature: ZipLoRA's convention, ``merger * weight`` over an ``(out, in)`` weight) give

    merged dW = dW_A diag(m_A) + dW_B diag(m_B),     dW_X = s_X B_X A_X  (s_X = alpha_X / r_X)

Only the coefficients train; they start at 1 (the plain sum of the two updates) and are clamped to
``COEFFICIENT_RANGE`` after every step. The objective, on a few hundred of each run's own training texts: the
merged model's sentence vector (the pooled vector its task head reads) should match the vector the run itself
computes, each task's mean squared difference divided by the variance of the run's own vectors over those texts
(so tasks and encoders weigh alike; 0 is a perfect match); plus ``overlap_weight`` times the sum over matrices of
``|cos(m_A, m_B)|``, which pushes the two tasks onto different columns. Adam, seeded, in float32 on the CPU.

The learning forward uses the dense weights ``W0 + merged dW`` (the adapters switched off), so it computes the
formula itself; the result is written as one ordinary LoRA of rank ``r_A + r_B`` and scale 1 that equals it
exactly: ``A = [A_A diag(m_A); A_B diag(m_B)]``, ``B = [s_A B_A, s_B B_B]`` (see ``zip_factors``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from ..data.encode import collate
from ..errors import ConfigError

COEFFICIENT_RANGE = (0.0, 2.0)  # ZipLoRA's coefficients scale columns; 0 drops one, 2 doubles it
DEFAULT_EXAMPLES, DEFAULT_STEPS, DEFAULT_OVERLAP_WEIGHT, DEFAULT_LR = 200, 100, 0.01, 1e-2  # overlap: the paper's
BATCH_SIZE = 16
COEFFICIENTS = "zip_coefficients.safetensors"  # in the merged run folder: <module>.m_a / <module>.m_b


@dataclass
class LoraFactors:
    """One run's update of one matrix: ``scale * B @ A`` with ``A`` (r, in) and ``B`` (out, r)."""

    A: torch.Tensor
    B: torch.Tensor
    scale: float

    @property
    def update(self) -> torch.Tensor:
        return self.scale * self.B @ self.A


def zip_update(a: LoraFactors, b: LoraFactors, m_a: torch.Tensor, m_b: torch.Tensor) -> torch.Tensor:
    """``dW_A diag(m_A) + dW_B diag(m_B)``: each coefficient scales a column (an input feature) of its update."""
    return a.update * m_a + b.update * m_b


def zip_factors(a: LoraFactors, b: LoraFactors, m_a: torch.Tensor,
                m_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) of a rank r_A + r_B LoRA at scale 1 whose ``B @ A`` is exactly ``zip_update``."""
    return torch.cat([a.A * m_a, b.A * m_b], 0), torch.cat([a.scale * a.B, b.scale * b.B], 1)


class ZipCoefficients(nn.Module):
    """The learned vectors: ``m_a[i]``, ``m_b[i]`` for matrix ``names[i]``, each as long as its input features."""

    def __init__(self, names: Sequence[str], in_features: Sequence[int]):
        super().__init__()
        self.names = list(names)
        self.m_a = nn.ParameterList([nn.Parameter(torch.ones(n)) for n in in_features])
        self.m_b = nn.ParameterList([nn.Parameter(torch.ones(n)) for n in in_features])

    @torch.no_grad()
    def clamp_(self) -> None:
        for p in self.parameters():
            p.clamp_(*COEFFICIENT_RANGE)

    def cosines(self) -> torch.Tensor:
        """|cos(m_A, m_B)| per matrix (1 at the start: both all ones)."""
        return torch.stack([torch.cosine_similarity(a, b, dim=0, eps=1e-8).abs() for a, b in zip(self.m_a, self.m_b)])

    def pair(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        i = self.names.index(name)
        return self.m_a[i], self.m_b[i]


@dataclass
class ZipResult:
    coefficients: ZipCoefficients
    factors: dict[str, tuple[LoraFactors, LoraFactors]]  # adapted module name -> (run A's, run B's)
    record: dict  # what merged_from keeps

    def coefficient_tensors(self) -> dict[str, torch.Tensor]:
        c = self.coefficients
        return {f"{n}.{side}": m.detach().clone() for n, a, b in zip(c.names, c.m_a, c.m_b)
                for side, m in (("m_a", a), ("m_b", b))}

    def lora_tensors(self) -> dict[str, torch.Tensor]:
        """The merged adapter's A and B per module, named ``<module>.lora_A`` / ``<module>.lora_B``."""
        out = {}
        with torch.no_grad():
            for name, (fa, fb) in self.factors.items():
                A, B = zip_factors(fa, fb, *self.coefficients.pair(name))
                out[f"{name}.lora_A"], out[f"{name}.lora_B"] = A.clone(), B.clone()
        return out


def lora_factors(encoder: nn.Module, key: str) -> dict[str, LoraFactors]:
    """Every matrix the PEFT adapter ``key`` adapts in ``encoder``: module name -> its factors."""
    return {name: LoraFactors(m.lora_A[key].weight.detach().float(), m.lora_B[key].weight.detach().float(),
                              float(m.scaling[key]))
            for name, m in encoder.named_modules() if hasattr(m, "lora_A") and key in m.lora_A}


def check_same_targets(factors_a: dict, factors_b: dict, path_a: object, path_b: object) -> None:
    if set(factors_a) != set(factors_b):
        only = sorted(set(factors_a) ^ set(factors_b))
        raise ConfigError(f"zip merges adapters of the same layers: {path_a} and {path_b} differ in their LoRA "
                          f"targets ({len(only)} matrices adapted by one only, e.g. {only[0]})")


class _HeadInput:
    """Catches the vector a model's head reads (the pooled sentence vector, lexicon features after it)."""

    def __init__(self, model: nn.Module, width: int):
        self.width, self.value = width, None
        self.handle = model.head.register_forward_hook(self._keep)

    def _keep(self, module, inputs, output) -> None:
        self.value = inputs[0][:, : self.width]  # the lexicon features, fixed per text, are left out


def learn_zip(engine, keys: tuple[str, str], texts: tuple[list[list[int]], list[list[int]]],
              norms: dict[str, torch.Tensor], *, steps: int = DEFAULT_STEPS,
              overlap_weight: float = DEFAULT_OVERLAP_WEIGHT, lr: float = DEFAULT_LR, seed: int = 0,
              batch_size: int = BATCH_SIZE) -> ZipResult:
    """Learn the coefficients for the adapters ``keys`` of a ``SharedLoraEngine`` on each run's token ids
    ``texts``; ``norms``: the base tensors the merged model uses in place of the runs' own (their trained
    LayerNorms and biases, averaged), engine parameter name -> value."""
    if steps < 0 or overlap_weight < 0 or lr <= 0:
        raise ConfigError("zip needs steps >= 0, overlap weight >= 0 and a learning rate above 0")
    encoder = engine.encoder
    fa, fb = lora_factors(encoder, keys[0]), lora_factors(encoder, keys[1])
    names = sorted(fa)
    factors = {n: (fa[n], fb[n]) for n in names}
    modules = dict(encoder.named_modules())
    base = {n: modules[n].base_layer.weight.detach() for n in names}
    coefs = ZipCoefficients(names, [base[n].shape[1] for n in names])
    models = [engine.adapters[k].model for k in keys]
    width = engine.encoder.config.hidden_size
    pad = engine.tokenizer.pad_token_id or 0
    catchers = [_HeadInput(m, width) for m in models]
    try:
        # Each run's own sentence vectors: its adapter and its own norms (the engine's switching).
        targets = []
        with torch.no_grad():
            for key, model, catch, ids in zip(keys, models, catchers, texts):
                engine.activate(key)
                targets.append(torch.cat([_forward(model, catch, [ids[i] for i in chunk], pad, None)
                                          for chunk in _chunks(len(ids), 64)]))
        spread = [t.var(0, unbiased=False).mean().clamp(min=1e-12) for t in targets]

        def merged(i: int, idx: Sequence[int]) -> torch.Tensor:
            weights = {f"encoder.{n}.base_layer.weight": base[n] + zip_update(*factors[n], *coefs.pair(n))
                       for n in names}
            return _forward(models[i], catchers[i], [texts[i][j] for j in idx], pad, {**norms, **weights})

        def matching(i: int) -> float:
            with torch.no_grad():
                got = torch.cat([merged(i, chunk) for chunk in _chunks(len(texts[i]), 64)])
            return float(((got - targets[i]) ** 2).mean() / spread[i])

        with encoder.disable_adapter():  # the merged update enters through the dense weights
            before = [matching(0), matching(1)]
            gen = torch.Generator().manual_seed(seed)
            orders: list[list[int]] = [[], []]
            opt = torch.optim.Adam(coefs.parameters(), lr=lr)
            for _ in range(steps):
                loss = overlap_weight * coefs.cosines().sum()
                for i in (0, 1):
                    if len(orders[i]) < min(batch_size, len(texts[i])):  # a fresh seeded pass over the texts
                        orders[i] += torch.randperm(len(texts[i]), generator=gen).tolist()
                    idx, orders[i] = orders[i][:batch_size], orders[i][batch_size:]
                    loss = loss + ((merged(i, idx) - targets[i][idx]) ** 2).mean() / spread[i]
                opt.zero_grad()
                loss.backward()
                opt.step()
                coefs.clamp_()
            after = [matching(0), matching(1)]
    finally:
        for c in catchers:
            c.handle.remove()
        engine.active = None  # the engine's parameters were not touched, but its adapter switch was
    with torch.no_grad():
        cos = coefs.cosines()
        values = {"A": torch.cat(list(coefs.m_a)), "B": torch.cat(list(coefs.m_b))}
    record = {
        "steps": steps, "overlap_weight": overlap_weight, "lr": lr, "seed": seed, "batch_size": batch_size,
        "coefficient_range": list(COEFFICIENT_RANGE), "matrices": len(names),
        # each task's matching loss over its examples: at the plain sum of the updates (all 1) and learned
        "matching_loss": [{"plain_sum": b, "zip": a} for b, a in zip(before, after)],
        "cosine": {"mean": float(cos.mean()), "min": float(cos.min()), "max": float(cos.max()),
                   "per_matrix": {n: float(c) for n, c in zip(names, cos)}},
        "coefficients": [{"mean": float(v.mean()), "min": float(v.min()), "max": float(v.max()),
                          "zero": float((v == 0).float().mean())} for v in values.values()],
    }
    return ZipResult(coefs, factors, record)


def _chunks(n: int, size: int) -> list[list[int]]:
    return [list(range(i, min(i + size, n))) for i in range(0, n, size)]


def _forward(model: nn.Module, catch: _HeadInput, ids: list[list[int]], pad: int,
             params: dict[str, torch.Tensor] | None) -> torch.Tensor:
    batch = collate(ids, pad)
    if params is None:
        model(**batch)
    else:
        torch.func.functional_call(model, params, args=(), kwargs=batch, strict=False)
    return catch.value.float()
