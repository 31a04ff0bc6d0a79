"""The spectral measures of "LoRA vs Full Fine-tuning: An Illusion of Equivalence" (Shuttleworth et al. 2024,
arXiv 2410.21228) and the effective rank of Roy & Vetterli (2007), on one weight matrix at a time."""

from __future__ import annotations

from dataclasses import dataclass

import torch


def left_singular_vectors(w: torch.Tensor) -> torch.Tensor:
    """U of the thin SVD (columns ordered by decreasing singular value), in float64."""
    return torch.linalg.svd(w.double(), full_matrices=False).U


def top_cosines(u0: torch.Tensor, w: torch.Tensor, top_k: int) -> torch.Tensor:
    """For each of ``w``'s top-k left singular vectors: its largest |cosine| with any column of ``u0`` (the
    pretrained matrix's left singular vectors; singular vectors have unit norm, so dot products are cosines)."""
    u = left_singular_vectors(w)[:, :top_k]
    return (u.T @ u0.double()).abs().max(dim=1).values


def count_intruders(cosines: torch.Tensor, epsilon: float) -> int:
    """Intruder dimensions: top singular vectors unlike every pretrained one (max |cosine| below epsilon)."""
    return int((cosines < epsilon).sum())


def effective_rank(m: torch.Tensor) -> float:
    """exp(entropy of the singular values normalised to sum 1): r for r equal singular values, between 1 and
    rank(m) otherwise, 0 for a zero matrix (Roy & Vetterli 2007)."""
    s = torch.linalg.svdvals(m.double())
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s / total
    return float(torch.exp(-torch.special.xlogy(p, p).sum()))


@dataclass
class MatrixStats:
    intruders: int
    effective_rank: float
    update_norm: float
    relative_update_norm: float
    top_cosines: list[float]


def matrix_stats(w0: torch.Tensor, w: torch.Tensor, top_k: int = 10, epsilon: float = 0.5,
                 u0: torch.Tensor | None = None) -> MatrixStats:
    """Every measure for one pretrained/fine-tuned pair (``u0``: W0's left singular vectors, if cached)."""
    w0, w = w0.double(), w.double()
    u0 = left_singular_vectors(w0) if u0 is None else u0
    cos = top_cosines(u0, w, top_k)
    dw = w - w0
    norm = float(torch.linalg.matrix_norm(dw))
    return MatrixStats(count_intruders(cos, epsilon), effective_rank(dw), norm,
                       norm / max(float(torch.linalg.matrix_norm(w0)), 1e-30), [round(float(c), 5) for c in cos])
