"""Merge LoRA runs into a new run (``emotune merge RUN_A RUN_B ... --how ties --weights ...``): runs of one task
into a run of that task, runs of different tasks into a multi-task run.

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
- ``zip`` (two runs of different tasks) learns per-column coefficients, ZipLoRA-style: ``zip_merge.py``.

Runs of different tasks (data sets) merge into a multi-task run: one shared merged adapter, each run's own head
unchanged as that task's head (named after the task's data set, or ``tasks``), each task validated on its own data
with its run's splits; the base tensors the runs trained are averaged as above. What a task fitted after training
(calibration, multi-label thresholds) is not carried over: it was fitted to the run's own model.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..errors import ConfigError, RunError
from ..io import save_tensors, write_json, write_text
from ..registry import Registry
from ..runs import BEST, CONFIG, LABELS, METRICS, TARGETS, Run, build_model, run_lock, staged_dir
from ..tasks import SCORE, flat_labels
from . import zip_merge


@dataclass
class MergedAdapter:
    """A combination's result: the merged adapter's LoRA settings, its tensors (named as in a fresh model of
    the merged config) and what ``merged_from`` records about it."""

    r: int
    alpha: float
    targets: list[str]
    tensors: dict[str, torch.Tensor]
    record: dict = field(default_factory=dict)
    files: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # extra tensor files for the folder


@dataclass
class Merge:
    """What a combination works from: the runs, their adapters in one engine (keys), the weights, the options."""

    runs: list[Run]
    engine: object  # inference.engines.SharedLoraEngine
    keys: list[str]
    weights: list[float]
    how: str
    density: float | None = None
    rank: int | None = None
    learn: dict = field(default_factory=dict)  # learned combinations: examples, steps, overlap_weight, lr
    data_dir: str | None = None


def peft_combination(m: Merge) -> MergedAdapter:
    """PEFT's ``add_weighted_adapter`` in the engine, read back as tensors of the default adapter."""
    comb = COMBINATIONS.get(m.how)
    torch.manual_seed(m.runs[0].config.train.seed)  # DARE's random drops
    try:
        m.engine.encoder.add_weighted_adapter(m.keys, m.weights, MERGED, combination_type=comb.peft_name,
                                              density=m.density, svd_rank=m.rank)
    except ValueError as e:  # e.g. unequal ranks for linear/ties/dare
        raise ConfigError(f"cannot merge with {m.how!r}: {e}") from None
    cfg = m.engine.encoder.peft_config[MERGED]
    tensors = {_default_key(n): p.detach() for n, p in m.engine.encoder.named_parameters()
               if f".{MERGED}." in n and ".lora_" in n}
    return MergedAdapter(int(cfg.r), float(cfg.lora_alpha), sorted(cfg.target_modules), tensors,
                         {"combination_type": comb.peft_name, "density": m.density, "rank": int(cfg.r)})


def zip_combination(m: Merge) -> MergedAdapter:
    """ZipLoRA-style learned coefficients (``zip_merge``) on each run's own training examples."""
    from ..data import load_data
    from ..data.encode import encode

    examples = m.learn.get("examples", zip_merge.DEFAULT_EXAMPLES)
    if examples < 2:
        raise ConfigError("--examples must be at least 2 per task")
    zip_merge.check_same_targets(zip_merge.lora_factors(m.engine.encoder, m.keys[0]),
                                 zip_merge.lora_factors(m.engine.encoder, m.keys[1]), m.runs[0].path, m.runs[1].path)
    seed = m.runs[0].config.train.seed
    texts = []
    for run in m.runs:  # a seeded draw from the run's own training data
        data_cfg = dataclasses.replace(run.config.data, data_dir=m.data_dir or run.config.data.data_dir)
        train = load_data(data_cfg, run.config.train.seed)["train"].texts
        pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:examples].tolist()
        texts.append(encode(m.engine.tokenizer, [train[i] for i in pick], data_cfg.max_length))
    result = zip_merge.learn_zip(m.engine, (m.keys[0], m.keys[1]), (texts[0], texts[1]),
                                 averaged_overrides(m.engine, m.keys, m.weights), seed=seed,
                                 **{k: v for k, v in m.learn.items() if k != "examples"})
    tensors = {f"encoder.{name}.default.weight": t for name, t in result.lora_tensors().items()}
    rank = sum(int(fa.A.shape[0]) for fa in next(iter(result.factors.values())))
    targets = sorted({name.rsplit(".", 1)[-1] for name in result.factors})
    return MergedAdapter(rank, float(rank), targets, tensors,  # alpha = r: scale 1, the runs' scales are in B
                         {"rank": rank, "examples": [len(t) for t in texts], **result.record},
                         {zip_merge.COEFFICIENTS: result.coefficient_tensors()})


@dataclass(frozen=True)
class Combination:
    peft_name: str
    description: str
    density: bool = False  # takes a density (share of entries kept)
    svd: bool = False  # factors the combined update back to a rank
    combine: Callable[[Merge], MergedAdapter] = peft_combination
    learned: bool = False  # trains on the runs' examples (takes examples, steps, overlap_weight, lr; no weights)


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
    "zip": Combination("zip", "ZipLoRA: per-column coefficients learned on each task's examples (two runs of "
                              "different tasks; rank = sum)", combine=zip_combination, learned=True),
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


def task_key(run: Run) -> tuple:
    """What makes two runs' tasks one: the data they read and what they predict from it (not its folder, caps or
    seeds)."""
    d = run.config.data
    return (d.name, d.task, d.text_column, d.label_column, tuple(d.target_columns), tuple(d.label_columns),
            d.label_delimiter)


def task_names(runs: list[Run], given: str | Sequence[str] | None = None) -> list[str] | None:
    """None when the runs share one task (the merge is a run of that task); else one task name per run for the
    multi-task run they merge into: ``given`` (``"emotion,mr"``), or each run's data set name."""
    keys = [task_key(r) for r in runs]
    if len(set(keys)) == 1:
        if given is not None:
            raise ConfigError("--tasks names the tasks of runs of different tasks; these runs share one task")
        return None
    if len(set(keys)) != len(keys):
        raise ConfigError("runs of different tasks merge into a multi-task run of one run per task; merge the runs "
                          "of each task first")
    for run in runs:
        if run.config.is_multitask:
            raise ConfigError(f"{run.path}: a multi-task run cannot be merged with runs of other tasks")
    if given is None:
        names = [re.sub(r"[^A-Za-z0-9_-]+", "-", Path(r.config.data.name).stem).strip("-") or "task" for r in runs]
        return [n if names.count(n) == 1 else f"{n}-{i + 1}" for i, n in enumerate(names)]
    names = [n.strip() for n in (given.split(",") if isinstance(given, str) else given)]
    if len(names) != len(runs):
        raise ConfigError(f"{len(names)} task name(s) for {len(runs)} runs: give one per run")
    return names


def _check_runs(runs: list[Run], tasks: list[str] | None) -> None:
    from ..inference.adapters import check_same_base

    for run in runs:
        lora_options(run)
    check_same_base({str(r.path): r for r in runs})
    first = runs[0]
    for run in runs[1:]:
        if tasks is None and run.labels != first.labels:
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
               overwrite: bool = False, tasks: str | Sequence[str] | None = None, examples: int | None = None,
               steps: int | None = None, overlap_weight: float | None = None, lr: float | None = None) -> dict:
    """Merge LoRA runs into the run folder ``out``: a run of their task, or a multi-task run when they are runs of
    different tasks (``tasks``: the task names); return its metrics (validation when ``evaluate``). ``examples``
    (per task), ``steps``, ``overlap_weight`` and ``lr`` are a learned combination's (zip)."""
    from ..inference.engines import SharedLoraEngine
    from ..inference.predictor import Mode

    comb = COMBINATIONS.get(how)
    if len(run_dirs) < 2:
        raise ConfigError("merging needs at least two runs")
    learn = {k: v for k, v in {"examples": examples, "steps": steps, "overlap_weight": overlap_weight,
                               "lr": lr}.items() if v is not None}
    learned = ", ".join(n for n, c in COMBINATIONS.items() if c.learned)
    if learn and not comb.learned:
        raise ConfigError(f"--{next(iter(learn)).replace('_', '-')} applies to {learned}, not {how}")
    if comb.learned and len(run_dirs) != 2:
        raise ConfigError(f"{how} merges exactly two runs (of different tasks), not {len(run_dirs)}")
    if comb.learned and weights is not None:
        raise ConfigError(f"{how} learns its coefficients: --weights do not apply (the runs' trained norms are "
                          "averaged equally)")
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
    names = task_names(runs, tasks)
    if comb.learned and names is None:
        raise ConfigError(f"{how} merges runs of different tasks (each keeps its head); runs of one task merge "
                          "with linear, ties, dare, cat or svd")
    _check_runs(runs, names)
    out = Path(out).resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not (out / CONFIG).is_file():
            raise RunError(f"{out}: exists and is not a run folder; choose another --out")
        if not overwrite:
            raise RunError(f"{out}: a run is already there; choose another --out or pass --overwrite")

    engine = SharedLoraEngine(runs, Mode("fp32", torch.float32, torch.float32), torch.device("cpu"), 64)
    keys = list(engine.adapters)
    adapter = comb.combine(Merge(runs, engine, keys, w, how, density, rank, learn, data_dir))
    cfg = merged_config(runs, adapter, names)
    labels = {n: r.labels for n, r in zip(names, runs)} if names else runs[0].labels
    stats = ({n: r.target_statistics for n, r in zip(names, runs) if r.target_statistics} if names
             else runs[0].target_statistics)
    flat = flat_labels(labels) if names else labels
    model, _, _ = build_model(cfg, len(flat), targets=stats or None, labels=flat)
    tensors = merged_tensors(model, engine, keys, w, adapter.tensors, names)

    with run_lock(out, "emotune merge"), staged_dir(out) as tmp:  # the old run stays until this one is complete
        write_text(tmp / CONFIG, cfg.to_yaml())
        write_json(tmp / LABELS, labels)
        if stats:  # regression heads' training mean and spread (per task in a multi-task run)
            write_json(tmp / TARGETS, stats)
        save_tensors(tmp / BEST, tensors)
        for name, extra in adapter.files.items():
            save_tensors(tmp / name, extra)
        from ..train.metrics import parameter_counts

        write_json(tmp / METRICS, {
            "completed": True,
            "merged_from": {"runs": [str(r.path.resolve()) for r in runs], "weights": w, "how": how,
                            **({"tasks": names} if names else {}), **adapter.record},
            "train": {**parameter_counts(model), "precision": "fp32"}})
        if evaluate:
            from ..inference.evaluate import evaluate as evaluate_run

            evaluate_run(tmp, "validation", data_dir=data_dir, precision="fp32")
    return Run.open(out).metrics


def merged_config(runs: list[Run], adapter: MergedAdapter, tasks: list[str] | None = None):
    """The first run's configuration with the merged adapter's LoRA settings (rank, alpha, targets), training
    every base tensor any of the runs trained; with ``tasks``, a multi-task configuration of the runs' data, each
    task keeping the seed of its run's splits."""
    from ..config import DataConfig, MultiTaskConfig, RunConfig, TaskSpec

    options = [lora_options(r) for r in runs]
    biases = {o.bias for o in options}
    targets = {str(o.target) for o in options}
    cfg = RunConfig.from_dict(runs[0].config.to_dict())
    # The runs' own target spec where they agree (attention, all-linear: reports group by it), else the names.
    target = options[0].target if len(targets) == 1 else adapter.targets
    cfg.method = {"name": "lora", "r": adapter.r, "alpha": adapter.alpha,
                  "dropout": options[0].dropout, "target": target,
                  "bias": next(b for b in ("all", "lora_only", "none") if b in biases),
                  "train_norm": any(o.train_norm for o in options)}
    if tasks:
        specs = []
        for name, run in zip(tasks, runs):
            own = run.config.data  # resolved: its data_dir absolute; the seed pins its validation split
            seed = own.seed if own.seed is not None else run.config.train.seed
            specs.append(TaskSpec(name=name, data=dataclasses.replace(own, seed=seed)))
        cfg.multitask = MultiTaskConfig(tasks=specs)
        cfg.data = DataConfig(data_dir=runs[0].config.data.data_dir,
                              max_length=max(r.config.data.max_length for r in runs))
        cfg.train.metric = SCORE
    return cfg


def averaged_overrides(engine, keys: list[str], weights: list[float]) -> dict[str, torch.Tensor]:
    """The base tensors any run trained (norms, biases), averaged with the normalised weights; a run that did not
    train one contributes the base's value (the engine's overrides hold it)."""
    share = [x / sum(weights) for x in weights]
    adapters = [engine.adapters[k] for k in keys]
    names = {n for a in adapters for n in a.overrides}
    return {n: sum(s * a.overrides[n].float() for s, a in zip(share, adapters)) for n in sorted(names)}


def merged_tensors(model: torch.nn.Module, engine, keys: list[str], weights: list[float],
                   adapter: dict[str, torch.Tensor], tasks: list[str] | None = None) -> dict[str, torch.Tensor]:
    """The trainable tensors of ``model`` (a fresh LoRA model of the merged config): the merged ``adapter``,
    trained base tensors averaged with the normalised weights, and the heads: averaged too, or with ``tasks``
    each run's own head as its task's."""
    total = sum(weights)
    share = [x / total for x in weights]
    adapters = [engine.adapters[k] for k in keys]
    base = averaged_overrides(engine, keys, weights)
    out: dict[str, torch.Tensor] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.startswith("head.") and tasks:  # head.heads.<task>.<tensor>
            task, _, key = name[len("head.heads."):].partition(".")
            value = adapters[tasks.index(task)].model.head.state_dict()[key].float()
        elif name.startswith("head."):
            key = name[5:]
            value = sum(s * a.model.head.state_dict()[key].float() for s, a in zip(share, adapters))
        elif ".lora_" in name:
            if name not in adapter:
                raise RunError(f"the merged adapter has no tensor {name}")
            value = adapter[name]
        else:  # a base tensor some run trained
            value = base.get(name, param.detach())
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
