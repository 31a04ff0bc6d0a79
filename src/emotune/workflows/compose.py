"""LoraHub-style composition (Huang et al. 2023): k trained LoRA adapters on one base model, mixed for a new
task from a few labelled examples ("shots"), without a gradient through the base.

For mixing weights w (one per adapter, each in [-1.5, 1.5]) the composed adapter is, as in LoraHub,
A = sum_i w_i A_i and B = sum_i w_i B_i per adapted layer (the factors are mixed, not their products);
LayerNorm weights that the runs trained are averaged (kept at the base where no run trained them). The new
task has its own labels, so each candidate gets its own head: the shots' pooled sentence vectors through the
composed encoder (a forward pass only) feed a scikit-learn logistic regression, and w is scored by the
head's k-fold cross-validated log-loss on the shots + ``l1`` * |w|_1. Optuna's CMA-ES sampler searches w.

The result is an ordinary run folder (method ``lora``, the new task's labels, the composed adapter and the
head fitted on every shot) that ``evaluate``, ``predict`` and ``serve`` use like any other. Its
metrics.json also holds ``composed_from`` (runs, weights, shots) and ``baselines`` measured the same way
on the same shots: each adapter alone (its run's encoder as trained) and the base encoder without adapter
(a few-shot linear probe). The zero-shot baseline comes from ``emotune zeroshot``.
"""

from __future__ import annotations

import dataclasses
import math
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..config import DataConfig, RunConfig
from ..data import load_data
from ..data.encode import Encoded, encode
from ..errors import ConfigError, DataError, RunError
from ..io import load_tensors, save_tensors, write_json, write_text
from ..runs import BEST, CONFIG, LABELS, Run, build_model, predictions_file
from ..tasks import task_for
from ..train.evaluate import evaluate_model, predict_logits
from ..train.metrics import parameter_counts
from ..train.precision import resolve_device

# Methods whose saved weights are plain LoRA factors on an unchanged base (PiSSA-style inits change the base,
# DoRA adds magnitudes: mixing their factors would not rebuild what they trained).
COMPOSABLE = ("lora", "loraplus")
BOUND = 1.5  # LoraHub's bounds on each mixing weight
FACTOR = re.compile(r"\.lora_([AB])\.")
PROB_FLOOR = 1e-3  # a held-out shot of a class its fold never saw still costs a finite -log(1e-3)


@dataclass
class Source:
    """One trained LoRA run as composition sees it."""

    run: Run
    factors: dict[str, torch.Tensor]
    """lora_A / lora_B tensors by parameter name; B already rescaled to the composed adapter's alpha/r."""
    extras: dict[str, torch.Tensor]
    """Other encoder tensors the run trained (LayerNorms, biases)."""
    trained_norms: bool


@dataclass
class Candidate:
    """One way to build the encoder, scored on the shots (and later on validation/test)."""

    name: str
    weights: list[float] | None = None
    cv_log_loss: float | None = None
    objective: float | None = None
    splits: dict[str, dict] = field(default_factory=dict)

    def summary(self) -> dict:
        out = {"name": self.name, "cv_log_loss": self.cv_log_loss}
        if self.weights is not None:
            out["weights"] = self.weights
        if self.objective is not None:
            out["objective"] = self.objective
        for split, m in self.splits.items():
            out[split] = {k: m[k] for k in ("accuracy", "f1_weighted", "f1_macro", "loss")}
        return out


# ---- the adapters ----------------------------------------------------------------------------------------

def _lora_config(run: Run):
    from ..methods import METHODS

    name = run.config.method.get("name")
    if name not in COMPOSABLE:
        raise ConfigError(f"{run.path}: compose mixes LoRA adapters ({', '.join(COMPOSABLE)}); "
                          f"this run used method {name!r}")
    cfg = METHODS.get(name).make_config({k: v for k, v in run.config.method.items() if k != "name"})
    init = getattr(cfg, "init", None)
    if init not in (None, True, "gaussian", "default") or getattr(cfg, "use_dora", False):
        raise ConfigError(f"{run.path}: a LoRA run whose init or DoRA option changes the base model cannot be mixed")
    return cfg


def lora_scale(cfg) -> float:
    """The scaling PEFT applies to B @ A: alpha / r (alpha / sqrt(r) with rank-stabilised LoRA)."""
    return cfg.alpha / (math.sqrt(cfg.r) if getattr(cfg, "use_rslora", False) else cfg.r)


def load_sources(paths: list[str | Path]) -> tuple[list[Source], dict]:
    """The runs' adapters, checked to be mixable: same base model, same rank, same adapted layers.
    Returns them with the method config of the composed run (the first run's LoRA options)."""
    if len(paths) < 2:
        raise ConfigError("compose needs at least two LoRA runs")
    runs = [Run.open_finished(p) for p in paths]
    cfgs = [_lora_config(r) for r in runs]
    first, first_cfg = runs[0], cfgs[0]
    for run, cfg in zip(runs[1:], cfgs[1:]):
        if run.config.model.name != first.config.model.name:
            raise ConfigError(f"{run.path}: base model {run.config.model.name!r} differs from "
                              f"{first.path}'s {first.config.model.name!r}; adapters mix on one base only")
        if cfg.r != first_cfg.r:
            raise ConfigError(f"LoRA ranks differ ({first.path}: r={first_cfg.r}, {run.path}: r={cfg.r}); "
                              "A and B are mixed elementwise, so every adapter needs the same rank")
    out_scale = lora_scale(first_cfg)
    sources, keys = [], None
    for run, cfg in zip(runs, cfgs):
        weights, _ = load_tensors(run.path / BEST)
        factors = {n: w.float() for n, w in weights.items() if FACTOR.search(n)}
        if keys is None:
            keys = set(factors)
        elif set(factors) != keys:
            raise ConfigError(f"{run.path}: adapts other layers than {first.path}; the adapters must target "
                              "the same modules")
        ratio = lora_scale(cfg) / out_scale  # fold a different alpha into B so one scaling serves all
        factors = {n: w * ratio if FACTOR.search(n).group(1) == "B" else w for n, w in factors.items()}
        extras = {n: w.float() for n, w in weights.items() if n not in factors and not n.startswith("head.")}
        sources.append(Source(run, factors, extras, bool(getattr(cfg, "train_norm", False))))
    from ..methods.lora import LoraConfig

    method = {"name": "lora", **{f.name: getattr(first_cfg, f.name) for f in dataclasses.fields(LoraConfig)
                                 if hasattr(first_cfg, f.name)}}
    method["train_norm"] = any(s.trained_norms for s in sources)
    return sources, method


class Composer:
    """One LoRA-wrapped model whose adapter and norms are overwritten per candidate."""

    def __init__(self, cfg: RunConfig, num_labels: int, sources: list[Source], device: torch.device):
        self.model, self.tokenizer, _ = build_model(cfg, num_labels)
        self.model.eval().to(device)
        self.device = device
        self.sources = sources
        params = dict(self.model.named_parameters())
        missing = [n for s in sources for n in [*s.factors, *s.extras] if n not in params]
        if missing:
            raise RunError(f"adapter tensors do not fit the base model (e.g. {missing[0]})")
        self.params = params
        extra_names = sorted({n for s in sources for n in s.extras})
        self.base = {n: params[n].detach().clone() for n in extra_names}
        # Norms averaged over the runs; a run that did not train one contributes the base value.
        self.mean_extras = {n: torch.stack([s.extras.get(n, self.base[n]) for s in sources]).mean(0)
                            for n in extra_names}

    @torch.no_grad()
    def set_state(self, factors: dict[str, torch.Tensor], extras: dict[str, torch.Tensor]) -> None:
        for n, w in {**factors, **extras}.items():
            self.params[n].copy_(w)

    def mix(self, w: list[float]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        names = self.sources[0].factors
        return {n: sum(wi * s.factors[n] for wi, s in zip(w, self.sources)) for n in names}, self.mean_extras

    def use_mix(self, w: list[float]) -> None:
        self.set_state(*self.mix(w))

    def use_source(self, i: int) -> None:
        s = self.sources[i]
        self.set_state(s.factors, {n: s.extras.get(n, b) for n, b in self.base.items()})

    def use_base(self) -> None:
        self.set_state({n: torch.zeros_like(t) for n, t in self.sources[0].factors.items()}, self.base)

    def features(self, ids: list[list[int]], batch_size: int = 64) -> np.ndarray:
        """Pooled sentence vectors (what the head sees): the model's forward with the head swapped out."""
        head, self.model.head = self.model.head, nn.Identity()
        try:
            x = predict_logits(self.model, Encoded(ids, [0] * len(ids)), batch_size, self.device,
                               self.tokenizer.pad_token_id or 0)
        finally:
            self.model.head = head
        return x.double().numpy()


# ---- shots and heads ---------------------------------------------------------------------------------------

def sample_shots(labels: list[int], n: int, num_labels: int, seed: int) -> list[int]:
    """Indices of n examples, stratified: each label's share in proportion to its count (largest remainders),
    at least one per label when n allows, drawn at random within each label."""
    if n < 1:
        raise ConfigError("--shots must be at least 1")
    if n >= len(labels):
        return list(range(len(labels)))
    rng = random.Random(seed)
    pools = {c: [i for i, y in enumerate(labels) if y == c] for c in range(num_labels)}
    pools = {c: rng.sample(p, len(p)) for c, p in pools.items() if p}
    exact = {c: n * len(p) / len(labels) for c, p in pools.items()}
    quota = {c: int(e) for c, e in exact.items()}
    for c in sorted(pools, key=lambda c: (exact[c] - quota[c], rng.random()), reverse=True)[:n - sum(quota.values())]:
        quota[c] += 1
    if n >= len(pools):  # a label without a shot would be one the head can never predict
        for c in [c for c in pools if quota[c] == 0]:
            quota[max(quota, key=quota.get)] -= 1
            quota[c] = 1
    return sorted(i for c, p in pools.items() for i in p[:quota[c]])


def _fit(x: np.ndarray, y: np.ndarray, c: float):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x)
    return scaler, LogisticRegression(C=c, max_iter=2000).fit(scaler.transform(x), y)


def _proba(scaler, lr, x: np.ndarray, num_labels: int) -> np.ndarray:
    p = np.zeros((len(x), num_labels))
    p[:, lr.classes_] = lr.predict_proba(scaler.transform(x))
    return p


def folds(y: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k folds when every label has k shots or more, else plain shuffled k folds."""
    from sklearn.model_selection import KFold, StratifiedKFold

    k = max(2, min(k, len(y)))
    smallest = np.bincount(y)[np.unique(y)].min()
    splitter = StratifiedKFold(k, shuffle=True, random_state=seed) if smallest >= k else \
        KFold(k, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(y)), y))


def cv_log_loss(x: np.ndarray, y: np.ndarray, num_labels: int, splits, c: float = 0.01) -> float:
    """Mean held-out log-loss of the logistic-regression head over the folds."""
    losses = np.empty(len(y))
    for train, held in splits:
        if len(np.unique(y[train])) < 2:  # one class only: the head predicts it with certainty
            p = np.zeros((len(held), num_labels))
            p[:, y[train][0]] = 1.0
        else:
            p = _proba(*_fit(x[train], y[train], c), x[held], num_labels)
        losses[held] = -np.log(np.maximum(p[np.arange(len(held)), y[held]], PROB_FLOOR))
    return float(losses.mean())


def fit_head(x: np.ndarray, y: np.ndarray, num_labels: int, label_names: list[str],
             c: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """A logistic regression on all the shots as a linear layer on raw pooled vectors (the standardisation
    folded in): returns (weight [num_labels, hidden], bias [num_labels])."""
    absent = sorted(set(range(num_labels)) - set(y.tolist()))
    if absent:
        raise DataError(f"the shots hold no example of label(s) {', '.join(label_names[i] for i in absent)}; "
                        "ask for more --shots (at least one per label)")
    scaler, lr = _fit(x, y, c)
    coef, intercept = lr.coef_, lr.intercept_
    if num_labels == 2 and coef.shape[0] == 1:  # binary: p(1) = sigmoid(z) = softmax([0, z])[1]
        coef = np.vstack([np.zeros_like(coef), coef])
        intercept = np.concatenate([[0.0], intercept])
    weight = coef / scaler.scale_
    bias = intercept - weight @ scaler.mean_
    return torch.tensor(weight, dtype=torch.float32), torch.tensor(bias, dtype=torch.float32)


# ---- the search ---------------------------------------------------------------------------------------------

@dataclass
class ComposeResult:
    out: Path
    composed: Candidate
    adapters: list[Candidate]
    base: Candidate
    shots: int
    trials: list[dict]


def compose(runs: list[str | Path], data: str, out: str | Path, *, shots: int = 20, trials: int = 40,
            data_dir: str | None = None, text_column: str | None = None, label_column: str | None = None,
            seed: int = 42, l1: float = 0.05, c: float = 0.01, cv_folds: int = 5, test: bool = False,
            max_eval_samples: int | None = None, overwrite: bool = False, device: str = "cpu",
            on_trial: Callable[[int, float], None] | None = None) -> ComposeResult:
    """Learn mixing weights of the LoRA ``runs`` for the data set ``data`` from ``shots`` training examples
    and write the composed run into ``out`` (see the module docstring). ``l1`` weighs |w|_1 in the
    objective, ``c`` is the logistic regression's inverse regularisation strength on standardised features
    (strong by default: with a few shots and hundreds of features a weakly regularised head is overconfident,
    and its cross-validated log-loss then ranks encoders by noise), ``test`` also scores the test split.
    ``on_trial(number, objective)`` is called after each trial."""
    import optuna

    from ..runs import prepare_run_dir, run_lock, staged_dir

    if trials < 1:
        raise ConfigError("--trials must be at least 1")
    start = time.perf_counter()
    sources, method = load_sources(runs)
    first = sources[0].run.config
    cfg = RunConfig.from_dict(first.to_dict())
    cfg.method = method
    cfg.data = DataConfig(name=data, max_eval_samples=max_eval_samples, max_length=first.data.max_length)
    if data_dir:
        cfg.data.data_dir = str(Path(data_dir).expanduser().resolve())
    for key, value in (("text_column", text_column), ("label_column", label_column)):
        if value is not None:
            setattr(cfg.data, key, value)
    cfg.train.seed, cfg.train.precision, cfg.train.lr, cfg.train.warmup_ratio = seed, "fp32", None, None  # no training
    out = Path(out)
    if not overwrite:
        prepare_run_dir(cfg, out, overwrite=False)  # refuse a finished run before the work, not after

    dataset = load_data(cfg.data, seed)
    labels = dataset.label_names
    train = dataset["train"]
    pick = sample_shots(train.labels, shots, len(labels), seed)
    shot_texts = [train.texts[i] for i in pick]
    y = np.array([train.labels[i] for i in pick])
    composer = Composer(cfg, len(labels), sources, resolve_device(device))
    shot_ids = encode(composer.tokenizer, shot_texts, cfg.data.max_length)
    splits = folds(y, cv_folds, seed)

    def score(candidate: Candidate) -> np.ndarray:
        x = composer.features(shot_ids)
        candidate.cv_log_loss = cv_log_loss(x, y, len(labels), splits, c)
        return x

    # CMA-ES starts at the centre of the bounds, w = 0 (the base encoder): LoraHub's starting point.
    names = [f"w{i}" for i in range(len(sources))]
    sampler = optuna.samplers.CmaEsSampler(seed=seed)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", sampler=sampler)
    history: list[dict] = []

    def objective(trial: optuna.Trial) -> float:
        w = [trial.suggest_float(n, -BOUND, BOUND) for n in names]
        composer.use_mix(w)
        cand = Candidate("trial")
        score(cand)
        value = cand.cv_log_loss + l1 * sum(abs(v) for v in w)
        history.append({"trial": trial.number, "weights": w, "cv_log_loss": cand.cv_log_loss, "objective": value})
        if on_trial is not None:
            on_trial(trial.number, value)
        return value

    study.optimize(objective, n_trials=trials)
    best_w = [float(study.best_params[n]) for n in names]

    eval_splits = ["validation"] + (["test"] if test else [])
    encoded = {s: Encoded(encode(composer.tokenizer, dataset[s].texts, cfg.data.max_length), dataset[s].labels)
               for s in eval_splits}

    def evaluate(candidate: Candidate, keep: bool = False) -> dict[str, torch.Tensor]:
        """Fit the head on every shot, score the splits; with ``keep`` the head stays in the model."""
        x = score(candidate)
        weight, bias = fit_head(x, y, len(labels), labels, c)
        saved = composer.model.head.weight.detach().clone(), composer.model.head.bias.detach().clone()
        with torch.no_grad():
            composer.model.head.weight.copy_(weight)
            composer.model.head.bias.copy_(bias)
        logits = {}
        for s, enc in encoded.items():
            candidate.splits[s], logits[s] = evaluate_model(composer.model, enc, labels, 64, composer.device,
                                                            composer.tokenizer.pad_token_id or 0)
        if not keep:
            with torch.no_grad():
                composer.model.head.weight.copy_(saved[0])
                composer.model.head.bias.copy_(saved[1])
        return logits

    adapters = []
    for i, s in enumerate(sources):
        composer.use_source(i)
        cand = Candidate(str(s.run.path), weights=[float(i == j) for j in range(len(sources))])
        evaluate(cand)
        adapters.append(cand)
    base = Candidate("base encoder (no adapter)", weights=[0.0] * len(sources))
    composer.use_base()
    evaluate(base)
    composed = Candidate("composed", weights=best_w, objective=float(study.best_value))
    composer.use_mix(best_w)
    logits = evaluate(composed, keep=True)  # last: the model now holds the composed adapter and its head

    result = ComposeResult(out, composed, adapters, base, len(pick), history)
    counts = parameter_counts(composer.model)
    sections = dict(
        completed=True, data={"name": dataset.name, **{k: len(v) for k, v in dataset.splits.items()}},
        train={"runtime_s": time.perf_counter() - start, "steps": 0, "trials": trials, **counts},
        **{s: composed.splits[s] for s in eval_splits},
        composed_from={"runs": [str(s.run.path.resolve()) for s in sources], "weights": best_w,
                       "shots": len(pick), "shot_seed": seed, "shot_labels": np.bincount(
                           y, minlength=len(labels)).tolist(),
                       "objective": f"{cv_folds}-fold cross-validated log-loss of a logistic-regression head "
                                    f"(C={c}) + {l1} * |w|_1", "bounds": [-BOUND, BOUND], "sampler": "CMA-ES",
                       "cv_log_loss": composed.cv_log_loss, "best_objective": composed.objective,
                       "trials": history},
        baselines={"adapters": [a.summary() for a in adapters], "base_encoder": base.summary(),
                   "composed": composed.summary(),
                   "zero_shot": "not measured here: run `emotune zeroshot` on the same data and split"})
    with run_lock(out, "emotune compose"):
        if not overwrite:
            prepare_run_dir(cfg, out, overwrite=False)  # again: another process may have written it meanwhile
        with staged_dir(out) as tmp:  # swapped in only when complete
            _save_run(tmp, cfg, composer, labels, dataset, logits, sources)
            Run.open(tmp).update_metrics(**sections)
    return result


def _save_run(out: Path, cfg: RunConfig, composer: Composer, labels: list[str], dataset, logits, sources) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / CONFIG, cfg.to_yaml())
    write_json(out / LABELS, labels)
    model = composer.model
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    keep = trained | set(composer.mean_extras) | {n for n in sources[0].factors}
    save_tensors(out / BEST, {n: p for n, p in model.named_parameters() if n in keep},
                 metadata={"composed_from": ",".join(str(s.run.path) for s in sources)})
    for split, lg in logits.items():
        part = dataset[split]
        task_for(cfg).write_predictions(out / predictions_file(split), part.texts, part.labels, lg, labels)


__all__ = ["COMPOSABLE", "ComposeResult", "compose", "cv_log_loss", "fit_head", "lora_scale", "load_sources",
           "sample_shots"]
