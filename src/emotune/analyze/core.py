"""`analyze`: fine-tuned runs in, per-matrix intruder dimensions, effective ranks and update norms out
(analysis.json, analysis.md and per-layer PNG plots)."""

from __future__ import annotations

import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn

from ..errors import ConfigError, RunError
from ..io import write_json
from ..runs import Run
from .spectra import left_singular_vectors, matrix_stats

ANALYSIS = "analysis.json"
LAYER = re.compile(r"(?:^|\.)layers?\.(\d+)\.(.+)$")


@dataclass
class AnalysisResult:
    out: Path
    data: dict
    figures: list[Path] = field(default_factory=list)

    @property
    def json(self) -> Path:
        return self.out / ANALYSIS

    @property
    def markdown(self) -> Path:
        """Written by ``emotune.report.analysis.analyze_runs`` (the report layer renders analyses)."""
        return self.out / "analysis.md"


def linear_weights(encoder: nn.Module) -> dict[str, torch.Tensor]:
    """The weight of every linear layer of an encoder, by module name."""
    return {name: m.weight.detach() for name, m in encoder.named_modules() if isinstance(m, nn.Linear)}


def fine_tuned_encoder(run: Run) -> nn.Module:
    """The run's encoder with its trained weights, in float64, any adapter merged into the base weights
    (in float64, so a LoRA update W0 + scale * B @ A is not blurred by float32 rounding)."""
    from ..methods import merge_adapter

    model, _ = run.load_model()
    model = merge_adapter(model.double())
    if hasattr(model.encoder, "peft_config"):
        raise RunError(f"{run.path}: method {run.config.method.get('name')!r} has no weights to merge into the "
                       "encoder, so no weight matrix changed")
    return model.encoder


def split_name(name: str) -> tuple[int | None, str]:
    """(layer index, module name within the layer): ``encoder.layer.3.attention.self.query`` -> 3,
    ``attention.self.query``; names outside numbered layers keep their full name."""
    m = LAYER.search(name)
    return (int(m.group(1)), m.group(2)) if m else (None, name)


def method_label(run: Run) -> str:
    """The report's family name plus the rank (defaults filled in): ``LoRA attention, r=8``; with parallel modules
    (MultiLoRA) their number: ``MultiLoRA attention, r=4 x 3 modules``."""
    from ..methods import METHODS

    method = run.config.method
    options = {k: v for k, v in method.items() if k != "name"}
    try:
        cfg = METHODS.get(method.get("name", "")).make_config(options)
    except ConfigError:
        cfg = None
    rank = getattr(cfg, "r", None)
    name = method.get("name", "?")
    family = METHODS.get(name).family_name(options) if name in METHODS else str(name)
    modules = getattr(cfg, "modules", None)
    return family + (f", r={rank}" if rank is not None else "") + (f" x {modules} modules" if modules else "")


def run_labels(runs: list[Run]) -> list[str]:
    """Folder names, or paths below the runs' common folder where names repeat."""
    names = [r.path.name for r in runs]
    if len(set(names)) == len(names):
        return names
    root = Path(os.path.commonpath([str(r.path.resolve()) for r in runs]))
    return [str(r.path.resolve().relative_to(root)) or r.path.name for r in runs]


def matrix_pairs(run: Run, base_cache: dict) -> Iterator[tuple[str, torch.Tensor, torch.Tensor, tuple]]:
    """(name, W0, W, cache key) for every linear layer of the run's encoder that fine-tuning changed."""
    from ..models import build_transformer

    key = (run.config.model.name, run.config.model.pooling)
    if key not in base_cache:
        base, _ = build_transformer(run.config.model, len(run.labels))
        base_cache[key] = linear_weights(base.encoder)
    pretrained = base_cache[key]
    tuned = linear_weights(fine_tuned_encoder(run))
    for name, w in tuned.items():
        w0 = pretrained.get(name)
        if w0 is None or w0.shape != w.shape:
            raise RunError(f"{run.path}: encoder layer {name!r} does not match the base model {key[0]!r}")
        if not torch.equal(w, w0.double()):
            yield name, w0, w, (*key, name)


def analyze(runs: list[str | Path], out: str | Path, *, top_k: int = 10, epsilon: float = 0.5,
            on_run: Callable[[str], None] | None = None) -> AnalysisResult:
    """Compare each run's changed encoder weight matrices with the pretrained ones (see the package
    docstring) and write ``analysis.json``, ``analysis.md`` and the per-layer plots into ``out``."""
    if top_k < 1:
        raise ConfigError("--top-k must be at least 1")
    if not 0 < epsilon <= 1:
        raise ConfigError("--epsilon is a cosine threshold: it must be in (0, 1]")
    if not runs:
        raise ConfigError("name at least one run folder to analyse")
    start = time.perf_counter()
    opened = [Run.open_finished(p) for p in runs]
    base_cache: dict = {}
    svd_cache: dict[tuple, torch.Tensor] = {}  # W0's singular vectors, shared by the runs on one base model
    records = []
    for run, label in zip(opened, run_labels(opened)):
        if on_run is not None:
            on_run(label)
        matrices = []
        for name, w0, w, key in matrix_pairs(run, base_cache):
            if key not in svd_cache:
                svd_cache[key] = left_singular_vectors(w0)
            layer, module = split_name(name)
            stats = matrix_stats(w0, w, top_k, epsilon, svd_cache[key])
            matrices.append({"name": name, "layer": layer, "module": module, "shape": list(w.shape),
                             **asdict(stats)})
        records.append({"run": str(run.path.resolve()), "label": label, "method": method_label(run),
                        "model": run.config.model.name, "totals": totals(matrices), "matrices": matrices})
    data = {"paper": "arXiv 2410.21228", "top_k": top_k, "epsilon": epsilon,
            "runtime_s": round(time.perf_counter() - start, 2), "runs": records}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / ANALYSIS, data)
    return AnalysisResult(out, data)


def totals(matrices: list[dict]) -> dict:
    n = len(matrices)
    return {"matrices": n, "intruders": sum(m["intruders"] for m in matrices),
            "matrices_with_intruders": sum(m["intruders"] > 0 for m in matrices),
            "mean_effective_rank": sum(m["effective_rank"] for m in matrices) / n if n else None,
            "update_norm": sum(m["update_norm"] ** 2 for m in matrices) ** 0.5}
