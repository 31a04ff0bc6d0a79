"""LoRA vs full fine-tuning, in the weights (Shuttleworth et al. 2024, "LoRA vs Full Fine-tuning: An Illusion
of Equivalence", arXiv 2410.21228).

For each fine-tuned run, every linear weight matrix of the encoder that fine-tuning changed (full
fine-tuning: all of them; LoRA: the adapted ones, merged W = W0 + scale * B @ A) is compared with the
pretrained W0 of the run's base model:

- intruder dimensions: W's top-k left singular vectors whose largest |cosine| with every left singular
  vector of W0 (thin SVD) is below epsilon: new directions the pretrained matrix did not have;
- the effective rank of the update dW = W - W0 (Roy & Vetterli 2007: exp of the entropy of its normalised
  singular values) and its Frobenius norm.
"""

from .core import ANALYSIS, AnalysisResult, analyze
from .spectra import count_intruders, effective_rank, matrix_stats, top_cosines

__all__ = ["ANALYSIS", "AnalysisResult", "analyze", "count_intruders", "effective_rank", "matrix_stats",
           "top_cosines"]
