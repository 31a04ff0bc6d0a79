"""Merge LoRA runs of one task into a new run (``emotune merge RUN_A RUN_B ... --how ties --weights ...``).

The adapters are combined by PEFT's ``add_weighted_adapter``; the runs' heads, and the base tensors they
trained themselves (LayerNorms with ``train_norm``, biases with ``bias``), are averaged with the same
weights normalised to sum to 1 (a run that did not train a tensor contributes the base's value). The result
is an ordinary LoRA run folder (config, labels, weights, metrics with ``merged_from`` and validation
metrics), so ``evaluate``, ``predict``, ``report`` and ``serve`` treat it like any run.

What the combinations compute, per adapted matrix, with adapters ``B_i A_i`` scaled by ``s_i = alpha/r``:

- ``linear``, ``ties``, ``dare_linear``, ``dare_ties``, ``magnitude_prune`` combine the A matrices and the
  B matrices separately (equal ranks needed): ``linear`` gives ``A = sum sqrt(w_i s_i) A_i`` and
  ``B = sum sqrt(w_i s_i) B_i``, so the update ``BA`` has cross terms; it is not the weighted sum of the
  updates (two copies of one adapter at weights 0.25/0.25 give back that adapter; at 0.5/0.5 twice it).
- ``cat`` concatenates the adapters (rank = sum of ranks): exactly ``sum w_i s_i B_i A_i``.
- ``svd`` and the ``*_svd`` variants combine the full updates ``s_i B_i A_i`` and factor the result back to
  rank ``rank`` (default: the largest rank) by SVD.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from ..errors import ConfigError, RunError
from ..io import save_tensors, write_json, write_text
from ..registry import Registry
from ..runs import BEST, CONFIG, LABELS, METRICS, Run, build_model, run_lock, staged_dir


@dataclass(frozen=True)
class Combination:
    peft_name: str
    description: str
    density: bool = False  # takes a density (share of entries kept)
    svd: bool = False  # factors the combined update back to a rank


COMBINATIONS: Registry[Combination] = Registry("merge combination")
for _name, _c in {
    "linear": Combination("linear", "weighted sums of the A and of the B matrices (equal ranks)"),
    "ties": Combination("ties", "TIES: trim to the top `density` entries, elect signs, disjoint mean", density=True),
    "dare": Combination("dare_linear", "DARE: drop entries at random (keep `density`), rescale, weighted sum",
                        density=True),
    "dare_ties": Combination("dare_ties", "DARE drops, then TIES sign election", density=True),
    "magnitude_prune": Combination("magnitude_prune", "keep the largest `density` entries, weighted sum",
                                   density=True),
    "cat": Combination("cat", "concatenate the adapters: exactly the weighted sum of the updates (rank = sum)"),
    "svd": Combination("svd", "weighted sum of the updates, factored back to `rank` by SVD", svd=True),
    "ties_svd": Combination("ties_svd", "TIES on the updates, then SVD", density=True, svd=True),
    "dare_linear_svd": Combination("dare_linear_svd", "DARE on the updates, then SVD", density=True, svd=True),
    "dare_ties_svd": Combination("dare_ties_svd", "DARE + TIES on the updates, then SVD", density=True, svd=True),
}.items():
    COMBINATIONS.register(_name)(_c)
DEFAULT_DENSITY = 0.5
MERGED = "merged"


def parse_weights(text: str | Sequence[float] | None, n: int) -> list[float]:
    """``"0.5,0.5"`` (or a list) -> floats, one per run; None -> equal weights 1/n."""
    if text is None:
        return [1.0 / n] * n
    try:
        weights = [float(w) for w in (text.split(",") if isinstance(text, str) else text)]
    except ValueError:
        raise ConfigError(f"--weights must be numbers separated by commas, not {text!r}") from None
    if len(weights) != n:
        raise ConfigError(f"{len(weights)} weight(s) for {n} runs: give one weight per run")
    if sum(weights) <= 0:
        raise ConfigError("the weights must sum to more than 0 (heads and norms are averaged with them)")
    return weights


def lora_options(run: Run):
    """The run's LoRA options (a LoraConfig or a subclass such as LoRA+'s), or a ConfigError when its adapter
    is not a plain LoRA adapter on an untouched base (what ``add_weighted_adapter`` combines)."""
    from ..methods import method_options
    from ..methods.lora import LoraConfig

    method, options = method_options(run.config.method)
    if method.shared_adapter is None or not isinstance(options, LoraConfig) or getattr(options, "use_dora", False):
        raise ConfigError(f"{run.path}: method {method.name!r} cannot be merged: only plain LoRA adapters on an "
                          "unchanged base combine (lora, loraplus)")
    return options


def _check_runs(runs: list[Run]) -> None:
    from ..inference.adapters import check_same_base

    for run in runs:
        lora_options(run)
    check_same_base({str(r.path): r for r in runs})
    first = runs[0]
    for run in runs[1:]:
        if run.labels != first.labels:
            raise ConfigError(f"runs of different label sets cannot be merged: {first.path} has {first.labels}, "
                              f"{run.path} has {run.labels}")
        if run.config.model.pooling != first.config.model.pooling:
            raise ConfigError(f"{first.path} pools with {first.config.model.pooling!r}, {run.path} with "
                              f"{run.config.model.pooling!r}: their heads read different vectors")
        if run.config.model.lexicon != first.config.model.lexicon:
            raise ConfigError(f"{first.path} has model.lexicon={first.config.model.lexicon}, {run.path} "
                              f"model.lexicon={run.config.model.lexicon}: their heads read different vectors")


def merge_runs(run_dirs: Sequence[str | Path], out: str | Path, *, how: str = "linear",
               weights: str | Sequence[float] | None = None, density: float | None = None,
               rank: int | None = None, evaluate: bool = True, data_dir: str | None = None,
               overwrite: bool = False) -> dict:
    """Merge LoRA runs of one task into the run folder ``out``; return its metrics (validation when
    ``evaluate``)."""
    from ..inference.engines import SharedLoraEngine
    from ..inference.predictor import Mode

    comb = COMBINATIONS.get(how)
    if len(run_dirs) < 2:
        raise ConfigError("merging needs at least two runs")
    runs = [Run.open_finished(p) for p in run_dirs]
    w = parse_weights(weights, len(runs))
    if density is not None and not comb.density:
        raise ConfigError(f"--density applies to {', '.join(n for n, c in COMBINATIONS.items() if c.density)}, "
                          f"not {how}")
    if comb.density:
        density = DEFAULT_DENSITY if density is None else density
        if not 0 < density <= 1:
            raise ConfigError("density must be in (0, 1]")
    if rank is not None and (not comb.svd or rank < 1):
        raise ConfigError("--rank is a positive rank for the svd combinations only")
    _check_runs(runs)
    out = Path(out).resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not (out / CONFIG).is_file():
            raise RunError(f"{out}: exists and is not a run folder; choose another --out")
        if not overwrite:
            raise RunError(f"{out}: a run is already there; choose another --out or pass --overwrite")

    cpu = torch.device("cpu")
    engine = SharedLoraEngine(runs, Mode("fp32", torch.float32, torch.float32), cpu, 64)
    keys = list(engine.adapters)
    torch.manual_seed(runs[0].config.train.seed)  # DARE's random drops
    try:
        engine.encoder.add_weighted_adapter(keys, w, MERGED, combination_type=comb.peft_name, density=density,
                                            svd_rank=rank)
    except ValueError as e:  # e.g. unequal ranks for linear/ties/dare
        raise ConfigError(f"cannot merge with {how!r}: {e}") from None
    merged_cfg = engine.encoder.peft_config[MERGED]
    cfg = merged_config(runs, merged_cfg)
    model, _, _ = build_model(cfg, len(runs[0].labels))
    tensors = merged_tensors(model, engine, keys, w)

    with run_lock(out, "emotune merge"), staged_dir(out) as tmp:  # the old run stays until this one is complete
        write_text(tmp / CONFIG, cfg.to_yaml())
        write_json(tmp / LABELS, runs[0].labels)
        save_tensors(tmp / BEST, tensors)
        from ..train.metrics import parameter_counts

        write_json(tmp / METRICS, {
            "completed": True,
            "merged_from": {"runs": [str(r.path.resolve()) for r in runs], "weights": w, "how": how,
                            "combination_type": comb.peft_name, "density": density, "rank": int(merged_cfg.r)},
            "train": {**parameter_counts(model), "precision": "fp32"}})
        if evaluate:
            from ..inference.evaluate import evaluate as evaluate_run

            evaluate_run(tmp, "validation", data_dir=data_dir, precision="fp32")
    return Run.open(out).metrics


def merged_config(runs: list[Run], peft_cfg):
    """The first run's configuration with the merged adapter's LoRA settings (rank, alpha, targets), training
    every base tensor any of the runs trained."""
    from ..config import RunConfig

    options = [lora_options(r) for r in runs]
    biases = {o.bias for o in options}
    targets = {str(o.target) for o in options}
    cfg = RunConfig.from_dict(runs[0].config.to_dict())
    # The runs' own target spec where they agree (attention, all-linear: reports group by it), else the names.
    target = options[0].target if len(targets) == 1 else sorted(peft_cfg.target_modules)
    cfg.method = {"name": "lora", "r": int(peft_cfg.r), "alpha": float(peft_cfg.lora_alpha),
                  "dropout": options[0].dropout, "target": target,
                  "bias": next(b for b in ("all", "lora_only", "none") if b in biases),
                  "train_norm": any(o.train_norm for o in options)}
    return cfg


def merged_tensors(model: torch.nn.Module, engine, keys: list[str], weights: list[float]) -> dict[str, torch.Tensor]:
    """The trainable tensors of ``model`` (a fresh LoRA model of the merged config): the merged adapter, and
    heads and trained base tensors averaged with the normalised weights."""
    total = sum(weights)
    share = [x / total for x in weights]
    adapters = [engine.adapters[k] for k in keys]
    merged = {_default_key(n): p.detach() for n, p in engine.encoder.named_parameters()
              if f".{MERGED}." in n and ".lora_" in n}
    out: dict[str, torch.Tensor] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.startswith("head."):
            key = name[5:]
            value = sum(s * a.model.head.state_dict()[key].float() for s, a in zip(share, adapters))
        elif ".lora_" in name:
            if name not in merged:
                raise RunError(f"the merged adapter has no tensor {name}")
            value = merged[name]
        else:  # a base tensor some run trained: the others contribute the base's own value
            value = sum(s * a.overrides.get(name, param.detach()).float() for s, a in zip(share, adapters))
        if value.shape != param.shape:
            raise RunError(f"merged tensor {name} has shape {tuple(value.shape)}, expected {tuple(param.shape)}")
        out[name] = value.float().contiguous()
    return out


def _default_key(name: str) -> str:
    """``query.lora_A.merged.weight`` (in the shared encoder) -> ``encoder.query.lora_A.default.weight``."""
    parts = name.split(".")
    for i in range(1, len(parts)):
        if parts[i] == MERGED and parts[i - 1].startswith("lora_"):
            parts[i] = "default"
    return "encoder." + ".".join(parts)
