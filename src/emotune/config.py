"""Run configuration: dataclasses with a help text per field, loadable from YAML and
overridable with ``section.field=value`` strings (the CLI's ``--set``)."""

from __future__ import annotations

import dataclasses
import datetime
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError


def _f(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, (list, dict, tuple)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class DataConfig:
    """Which data to train on and how to read it."""

    name: str = _f("emotion", "A registered data set (`emotune datasets`), a CSV/TSV/JSONL file or a "
                              "folder of split files, or a Hugging Face hub id.")
    data_dir: str | None = _f(None, "Local root holding one folder per named data set (emotion/, mr/...). "
                                    "Defaults to $EMOTUNE_DATA_DIR; if neither is set, named data sets "
                                    "load from the Hugging Face hub.")
    text_column: str = _f("text", "Column holding the text (CSV/TSV/JSONL/hub data).")
    label_column: str = _f("label", "Column holding the label (CSV/TSV/JSONL/hub data).")
    max_train_samples: int | None = _f(None, "Use only the first N training examples (after a seeded shuffle).")
    max_eval_samples: int | None = _f(None, "Use only the first N validation and test examples "
                                            "(after a seeded shuffle).")
    max_length: int = _f(128, "Truncate texts to this many tokens.")
    validation_fraction: float = _f(0.1, "Fraction of the training data held out as validation (seeded by "
                                         "train.seed) when the data set has no validation split.")
    seed: int | None = _f(None, "Seed of the held-out validation split, the cross-validation folds and the "
                                "sample caps; None uses train.seed. Set it when runs that differ in train.seed "
                                "must share their splits (seed ensembles, seed studies).")
    cv_folds: int | None = _f(None, "Cross-validation: pool train and test and split them into this many "
                                    "stratified folds (seeded by train.seed); needs data.cv_fold.")
    cv_fold: int | None = _f(None, "Cross-validation: the fold (0-based, below data.cv_folds) used as the "
                                   "test split; the other folds are the training data. A grid axis over "
                                   "0..cv_folds-1 runs the whole cross-validation.")
    task: str | None = _f(None, "What is predicted: classification, multilabel, regression or instruct "
                                "(`emotune tasks`; instruct: an instruction folder). "
                                "None: what the data set declares (emobank: regression, goemotions: "
                                "multilabel), multilabel when label_columns or label_delimiter are given, "
                                "regression when target_columns are given, else classification.")
    target_columns: list[str] = _f([], "Regression: the numeric target columns of a CSV/TSV/JSONL file (e.g. "
                                       "[V, A, D]); each becomes one output.")
    label_delimiter: str | None = _f(None, "Multi-label: the label column holds several labels separated by "
                                           "this (e.g. `,`); an empty cell is a text with no label.")
    label_columns: list[str] = _f([], "Multi-label: one 0/1 column per label of a CSV/TSV/JSONL file (e.g. "
                                      "[joy, anger]); the column names are the labels.")
    test_files: list[str] = _f([], "Extra files used as the test split, for data sets that read them "
                                   "(semeval2017a: `id<TAB>label<TAB>text` files); relative paths resolve "
                                   "against the current folder.")
    augment: dict[str, Any] = _f({}, "EDA data augmentation of the training split only (Wei & Zou 2019), new "
                                     "copies every epoch: {copies: 1, synonym: 0.1, insert: 0.1, swap: 0.1, "
                                     "delete: 0.1}; each rate is the share of a text's words changed by that "
                                     "operation; synonyms are GloVe neighbours that do not flip NRC polarity. "
                                     "With train.teacher: the copies are made once and learn the teachers' "
                                     "outputs on them only. Empty: no augmentation.")

    def __post_init__(self) -> None:
        if isinstance(self.test_files, str):  # `--set data.test_files=gold.tsv`
            self.test_files = [self.test_files]
        if isinstance(self.target_columns, str):  # `--target-columns V,A,D`
            self.target_columns = [c.strip() for c in self.target_columns.split(",") if c.strip()]
        if isinstance(self.label_columns, str):  # `--label-columns joy,anger`
            self.label_columns = [c.strip() for c in self.label_columns.split(",") if c.strip()]
        if not isinstance(self.test_files, (list, tuple)):
            raise ConfigError(f"data.test_files must be a list of paths, got {self.test_files!r}")
        # Absolute paths, so `emotune evaluate` finds them from any folder later.
        self.test_files = [str(Path(str(p)).expanduser().resolve()) for p in self.test_files]
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError for inconsistent options (also called by load_data, after any mutation)."""
        _at_least("data.max_train_samples", self.max_train_samples, 1, optional=True)
        _at_least("data.max_eval_samples", self.max_eval_samples, 1, optional=True)
        _at_least("data.max_length", self.max_length, 1)
        self._check_multilabel()
        self._check_augment()
        if not isinstance(self.validation_fraction, (int, float)) or isinstance(self.validation_fraction, bool) \
                or not 0 < self.validation_fraction < 1:
            raise ConfigError(f"data.validation_fraction must be between 0 and 1, got {self.validation_fraction}")
        if self.cv_folds is None and self.cv_fold is None:
            return
        if self.cv_folds is None or self.cv_fold is None:
            raise ConfigError("cross-validation needs both data.cv_folds (e.g. 10) and data.cv_fold (0-based)")
        _at_least("data.cv_folds", self.cv_folds, 2)
        _at_least("data.cv_fold", self.cv_fold, None)  # its range is checked below
        if self.cv_folds < 2:
            raise ConfigError(f"data.cv_folds must be at least 2, got {self.cv_folds}")
        if not 0 <= self.cv_fold < self.cv_folds:
            raise ConfigError(f"data.cv_fold must be in 0..{self.cv_folds - 1} (0-based), got {self.cv_fold}")

    def _check_augment(self) -> None:
        """data.augment: known keys, rates in [0, 1], a whole number of copies."""
        if not isinstance(self.augment, dict):
            raise ConfigError(f"data.augment must be a mapping such as {{copies: 1, synonym: 0.1}}, got {self.augment!r}")
        unknown = set(self.augment) - {"copies", *AUGMENT_OPS}
        if unknown:
            raise ConfigError(f"unknown data.augment option(s): {', '.join(sorted(map(str, unknown)))} "
                              f"(known: copies, {', '.join(AUGMENT_OPS)})")
        for op in AUGMENT_OPS:
            _in_range(f"data.augment.{op}", self.augment.get(op, 0.0), 0, 1)
        if self.augment:
            _at_least("data.augment.copies", self.augment.get("copies", 1), 1)
            if not any(self.augment.get(op, 0.0) for op in AUGMENT_OPS):
                raise ConfigError("data.augment: give a rate above 0 for at least one of "
                                  f"{', '.join(AUGMENT_OPS)}")

    def _check_multilabel(self) -> None:
        """label_columns and label_delimiter: multi-label options, one at a time, not with regression targets."""
        if self.label_delimiter == "":
            raise ConfigError("data.label_delimiter must be a character such as `,` (or null)")
        if not (self.label_columns or self.label_delimiter):
            return
        given = "data.label_columns" if self.label_columns else "data.label_delimiter"
        if self.label_columns and self.label_delimiter:
            raise ConfigError("give data.label_columns (one 0/1 column per label) or data.label_delimiter (labels "
                              "in one column), not both")
        if self.target_columns:
            raise ConfigError(f"{given} is for multi-label data, data.target_columns for regression: not both")
        if self.task not in (None, "multilabel"):
            raise ConfigError(f"{given} is for data.task=multilabel, not {self.task}")
        if len(set(self.label_columns)) != len(self.label_columns):
            raise ConfigError("data.label_columns names a column twice")


@dataclass
class ModelConfig:
    """The network that reads the text."""

    name: str = _f("minilm", "Encoder: an alias (`minilm` = the pip-shipped all-MiniLM-L6-v2), a local "
                             "folder or any Hugging Face model id; or a classic model registered by name "
                             "(`emotune models` lists them); with an instruction folder, a causal LM (`smollm2`, "
                             "`gemma-3-270m`, a folder, a .gguf file or a hub id).")
    pooling: str = _f("mean", "How token vectors become one sentence vector: `mean` (masked average, what "
                              "sentence encoders such as MiniLM were trained with), `cls` (first token) or "
                              "`pooler` (first token through the encoder's pretrained dense+tanh pooler, as in "
                              "BertForSequenceClassification).")
    dropout: float = _f(0.1, "Dropout before the classification layer.")
    options: dict[str, Any] = _f({}, "Options of a classic model (embeddings, sizes, layers...; "
                                     "`emotune models` lists them); of an instruction-tuned decoder: `system` (its "
                                     "system message) and `format` (the prompt of a model without a chat template, "
                                     "with {instruction} and {input}); unused by pretrained encoders.")
    attention: str | None = _f(None, "Attention kernel of a pretrained encoder: `sdpa` (PyTorch's fused "
                                     "scaled-dot-product attention), `eager` (plain matmul + softmax) or None "
                                     "(the Transformers default for the model: sdpa where supported).")
    lexicon: str | None = _f(None, "`nrc`: append each text's NRC EmoLex counts (8 emotions, 2 polarities; "
                                   "a negated word's polarity flips) to the pooled sentence vector before the "
                                   "head. The lexicon is for research use only (its terms). None: no features.")

    def __post_init__(self) -> None:
        if self.attention not in (None, "sdpa", "eager"):
            raise ConfigError(f"model.attention must be sdpa, eager or null, got {self.attention!r}")
        if self.lexicon not in (None, *LEXICONS):
            raise ConfigError(f"model.lexicon must be one of {', '.join(LEXICONS)} or null, got {self.lexicon!r}")


ADVERSARIAL = ("fgm", "pgd", "freelb")
LEXICONS = ("nrc",)
AUGMENT_OPS = ("synonym", "insert", "swap", "delete")


@dataclass
class TrainConfig:
    """The optimisation loop."""

    lr: float | None = _f(None, "Peak learning rate; None takes the method's default "
                                "(`emotune methods` lists them).")
    weight_decay: float = _f(0.01, "AdamW weight decay (not applied to biases and LayerNorm weights).")
    betas: list[float] = _f([0.9, 0.99], "AdamW betas.")
    max_grad_norm: float | None = _f(1.0, "Clip the gradient norm to this value; None disables clipping.")
    warmup_ratio: float | None = _f(None, "Fraction of the planned steps spent warming the learning rate up "
                                          "linearly; None takes the method's default.")
    batch_size: int = _f(16, "Training batch size.")
    eval_batch_size: int = _f(64, "Batch size for evaluation and prediction.")
    eval_every: int = _f(250, "Evaluate on the validation split every N optimisation steps (and at the "
                              "end of each epoch).")
    metric: str = _f("accuracy", "Validation metric that picks the best checkpoint and drives early stopping "
                                 "(accuracy, f1_weighted, f1_macro, recall_macro (= SemEval's AvgRec), f1_pn "
                                 "(positive/negative data) or loss; regression: pearson (its default), "
                                 "spearman, mse, mae).")
    class_weights: str | None = _f(None, "`balanced`: weigh each class's training loss by n / (classes x its "
                                         "count), as scikit-learn's class_weight='balanced' (lifts the recall "
                                         "of rare classes, i.e. macro recall); None: plain cross-entropy. "
                                         "Validation loss stays unweighted.")
    loss: str | None = _f(None, "Regression loss: `mse` (None: the default), `huber` (delta 1 on targets "
                                "standardised by their training spread: errors beyond one standard deviation "
                                "count linearly, so outliers pull less) or `ccc` (1 - the batch's concordance "
                                "correlation per target: correlation, mean and spread at once; wants batches of "
                                "8 or more). Classification and multi-label have one loss each.")
    mixout: float = _f(0.0, "Mixout probability p (Lee et al. 2020): during full fine-tuning of a pretrained "
                            "encoder, each weight of its linear layers is swapped for its pretrained value with "
                            "probability p (rescaled so its expectation is unchanged). 0: off.")
    adversarial: str | None = _f(None, "Adversarial training on the word embeddings: `fgm` (one step along the "
                                       "normalised gradient), `pgd` (adversarial_steps projected steps) or "
                                       "`freelb` (adversarial_steps ascent steps, gradients averaged). None: off.")
    adversarial_eps: float = _f(0.3, "Norm of each text's embedding perturbation (fgm) or radius of its ball "
                                     "(pgd, freelb); MiniLM's word vectors have norm ~1.1 each, and 1.0 drove "
                                     "small-data runs to the majority class.")
    adversarial_steps: int = _f(3, "Ascent steps K of pgd and freelb.")
    rdrop: float = _f(0.0, "R-Drop weight alpha (Liang et al. 2021): two dropout passes per batch, their mean "
                           "loss plus alpha x the symmetric KL between them (regression: squared difference). "
                           "0: off.")
    teacher: list[str] | None = _f(None, "Knowledge distillation: finished run folder(s) (an ensemble run, or "
                                         "several runs whose outputs are averaged) on the same labels; their "
                                         "outputs on the training texts are computed once and cached.")
    distill_alpha: float = _f(0.5, "Distillation: weight of the gold-label loss; 1 - alpha weighs the "
                                   "teachers' term (T² x KL to their softened probabilities; regression: "
                                   "squared error to their values).")
    distill_temperature: float = _f(2.0, "Distillation temperature T softening teacher and student "
                                         "probabilities.")
    distill_unlabeled: str | None = _f(None, "Distillation: a text file (one text per line) of extra training "
                                             "texts without labels; they count in the teachers' term only.")
    calibration: str | None = _f("temperature", "Classification confidence fitted on validation after training "
                                                "and applied by predict, serve, evaluate and ensembles: "
                                                "`temperature` (one T dividing the logits: predictions unchanged), "
                                                "`vector` (a weight and a bias per class: may change predictions) "
                                                "or None (raw softmax).")
    patience: int | None = _f(4, "Stop after this many evaluations without a better validation metric; "
                                 "None disables early stopping.")
    max_epochs: float = _f(10, "Upper bound on passes over the training data.")
    max_steps: int | None = _f(None, "Upper bound on optimisation steps (overrides max_epochs when smaller).")
    seed: int = _f(42, "Seed for shuffling, dropout and initialisation.")
    precision: str = _f("auto", "`fp32`, `bf16` (bfloat16 weights and float32 master weights in the "
                                "optimizer), `fp16` (CUDA autocast) or `auto` (bf16 where the CPU/GPU multiplies "
                                "bfloat16 natively, fp16 on older GPUs, else fp32).")
    threads: int | None = _f(None, "CPU threads for PyTorch; None uses every core.")
    group_by_length: bool = _f(True, "Batch texts of similar length together (shuffled in chunks) to cut "
                                     "padding.")
    pad_multiple: int = _f(1, "Pad each training batch to a multiple of this many tokens (8: fewer distinct "
                              "shapes, which torch.compile and some kernels prefer); 1: to the longest text.")
    accumulate: int = _f(1, "Gradient accumulation: each batch runs as this many micro-batches, one after "
                            "another, their gradients summed before the one optimizer step (the batch stays "
                            "train.batch_size; memory falls to a micro-batch's).")
    gradient_checkpointing: bool = _f(False, "Recompute each layer's activations in the backward pass instead "
                                             "of keeping them (Transformers models; less memory for large "
                                             "decoders, about a third more compute).")
    compile: bool = _f(False, "torch.compile the model for training steps (inductor, dynamic shapes; the first "
                              "steps compile, tens of seconds on a CPU).")
    checkpoint: bool = _f(True, "Save a resumable checkpoint at every evaluation.")
    device: str = _f("auto", "`cpu`, `cuda`, `cuda:N` or `auto`.")
    deepspeed: str | None = _f(None, "A DeepSpeed JSON config (`experiments/deepspeed/zero2.json`, "
                                     "`zero3-offload.json`): the optimisation step runs through a DeepSpeed ZeRO "
                                     "engine around emotune's AdamW and schedule; its \"auto\" values are filled "
                                     "from this config (batch, accumulate, max_grad_norm, precision). Under "
                                     "`accelerate launch --use_deepspeed --deepspeed_config_file F`, None takes F. "
                                     "Needs `pip install 'emotune[deepspeed]'`.")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError for values out of range (a zero batch size, a negative patience...)."""
        for name in ("batch_size", "eval_batch_size", "eval_every", "pad_multiple", "accumulate"):
            _at_least(f"train.{name}", getattr(self, name), 1)
        for name in ("patience", "max_steps", "threads"):
            _at_least(f"train.{name}", getattr(self, name), 1, optional=True)
        _positive("train.max_epochs", self.max_epochs)
        _in_range("train.lr", self.lr, 0, None, optional=True)  # 0: methods that do not train
        _positive("train.max_grad_norm", self.max_grad_norm, optional=True)
        _in_range("train.weight_decay", self.weight_decay, 0, None)
        _in_range("train.warmup_ratio", self.warmup_ratio, 0, 1, optional=True)
        _in_range("train.mixout", self.mixout, 0, 0.99)
        _in_range("train.rdrop", self.rdrop, 0, None)
        _positive("train.adversarial_eps", self.adversarial_eps)
        _at_least("train.adversarial_steps", self.adversarial_steps, 1)
        if self.adversarial not in (None, *ADVERSARIAL):
            raise ConfigError(f"train.adversarial must be one of {', '.join(ADVERSARIAL)} or null, "
                              f"got {self.adversarial!r}")
        _in_range("train.distill_alpha", self.distill_alpha, 0, 1)
        _positive("train.distill_temperature", self.distill_temperature)
        if isinstance(self.teacher, str):  # `--set train.teacher=runs/a` names one run
            self.teacher = [self.teacher]
        if self.distill_unlabeled is not None and not self.teacher:
            raise ConfigError("train.distill_unlabeled needs train.teacher: unlabeled texts get only teacher targets")
        if self.calibration not in (None, "temperature", "vector"):
            raise ConfigError(f"train.calibration must be temperature, vector or null, got {self.calibration!r}")
        if self.deepspeed is not None and not isinstance(self.deepspeed, str):
            raise ConfigError(f"train.deepspeed must be the path of a DeepSpeed JSON config or null, "
                              f"got {self.deepspeed!r}")
        if self.loss not in (None, "mse", "huber", "ccc"):
            raise ConfigError(f"train.loss must be mse, huber, ccc or null, got {self.loss!r}")


def _number(name: str, value: Any, optional: bool) -> bool:
    """False for an allowed None; ConfigError for anything but a finite number."""
    if value is None and optional:
        return False
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    return True


def _at_least(name: str, value: Any, minimum: int | None, optional: bool = False) -> None:
    """A whole number of at least ``minimum`` (any whole number when None); None allowed when ``optional``."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be a whole number, got {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}{' (or null for none)' if optional else ''}, "
                          f"got {value}")


def _positive(name: str, value: Any, optional: bool = False) -> None:
    if _number(name, value, optional) and value <= 0:
        raise ConfigError(f"{name} must be above 0, got {value}")


def _in_range(name: str, value: Any, low: float, high: float | None, optional: bool = False) -> None:
    if _number(name, value, optional) and (value < low or (high is not None and value > high)):
        raise ConfigError(f"{name} must be {f'between {low} and {high}' if high is not None else f'at least {low}'}"
                          f", got {value}")


SAMPLINGS = ("temperature", "proportional", "round_robin")
WEIGHTINGS = ("fixed", "uncertainty")


@dataclass
class TaskSpec:
    """One task of a multi-task model: its own data (and so its own labels or targets) and head."""

    name: str = _f("", "The task's name: the key of its metrics, predictions and head (letters, digits, _ and -).")
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "The task's data, as a run's data "
                                                                           "section (its task type included)."})
    weight: float = _f(1.0, "Fixed loss weight (multitask.weighting=fixed; the starting weight otherwise).")
    share: float | None = _f(None, "Sampling share: this task's fraction of training batches; None follows "
                                   "multitask.sampling.")
    metric: str | None = _f(None, "Validation metric of this task; None: its task type's default (accuracy, "
                                  "pearson, f1_micro).")

    def __post_init__(self) -> None:
        if isinstance(self.data, dict):
            self.data = _build(DataConfig, self.data, f"multitask task {self.name!r} data")
        if not isinstance(self.name, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", self.name):
            raise ConfigError(f"multitask task name {self.name!r}: use letters, digits, _ and - only")
        _positive(f"multitask task {self.name!r} weight", self.weight)
        _positive(f"multitask task {self.name!r} share", self.share, optional=True)


@dataclass
class MultiTaskConfig:
    """Several tasks on one shared encoder (one head each). Empty ``tasks``: a single-task run (``data``)."""

    tasks: list[TaskSpec] = _f([], "The tasks, each {name, data: {...}, weight, share, metric}.")
    sampling: str = _f("temperature", "Which task the next training batch comes from: `temperature` (share "
                                      "proportional to size^(1/T)), `proportional` (to size) or `round_robin`.")
    temperature: float = _f(2.0, "T of temperature sampling (1 = proportional; larger evens the tasks out).")
    mix: bool = _f(False, "Mix the tasks inside each batch: its rows are split between the tasks by their "
                          "sampling shares (round_robin: equal parts) and its loss is the mean over rows of each "
                          "row's weighted task loss. False: each batch comes from one task.")
    weighting: str = _f("fixed", "`fixed`: each task's loss times its weight; `uncertainty`: weights learned "
                                 "as exp(-s_k) with a penalty s_k per task (Kendall et al. 2018).")
    stages: list[list[str]] = _f([], "Curriculum: a list of stages, each the task names it adds; a stage "
                                     "starts from the previous stage's best weights. Empty: all tasks at once.")

    def __post_init__(self) -> None:
        if not isinstance(self.tasks, list):
            raise ConfigError(f"multitask.tasks must be a list of tasks, got {self.tasks!r}")
        self.tasks = [t if isinstance(t, TaskSpec) else _build(TaskSpec, t, "multitask task") for t in self.tasks]
        names = [t.name for t in self.tasks]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"multitask: task name(s) used twice: {', '.join(dup)}")
        if self.sampling not in SAMPLINGS:
            raise ConfigError(f"multitask.sampling must be one of {', '.join(SAMPLINGS)}, got {self.sampling!r}")
        if self.weighting not in WEIGHTINGS:
            raise ConfigError(f"multitask.weighting must be one of {', '.join(WEIGHTINGS)}, got {self.weighting!r}")
        _positive("multitask.temperature", self.temperature)
        if not isinstance(self.stages, list) or not all(isinstance(s, list) for s in self.stages):
            raise ConfigError("multitask.stages must be a list of stages, each a list of task names")
        staged = [n for s in self.stages for n in s]
        unknown = sorted(set(staged) - set(names))
        if unknown:
            raise ConfigError(f"multitask.stages names unknown task(s): {', '.join(map(str, unknown))}")
        if self.stages and (sorted(staged) != sorted(names) or any(not s for s in self.stages)):
            raise ConfigError("multitask.stages must add every task exactly once, at least one per stage")


@dataclass
class RunConfig:
    """Everything that defines a run; saved as config.yaml in the run folder."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: dict[str, Any] = field(default_factory=lambda: {"name": "lora"},
                                   metadata={"help": "Fine-tuning method and its options, e.g. "
                                                     "{name: lora, r: 8, target: attention}."})
    train: TrainConfig = field(default_factory=TrainConfig)
    multitask: MultiTaskConfig = field(default_factory=MultiTaskConfig,
                                       metadata={"help": "Tasks of a multi-task model (empty: single-task)."})

    @property
    def is_multitask(self) -> bool:
        return bool(self.multitask.tasks)

    # ---- (de)serialisation -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "RunConfig":
        if d is not None and not isinstance(d, dict):
            raise ConfigError(f"a run config is a mapping of sections (data, model, method, train, multitask), "
                              f"got {type(d).__name__}")
        d = dict(d or {})
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown config section(s): {', '.join(sorted(unknown))}")
        method = d.get("method", {"name": "lora"})
        if isinstance(method, str):
            method = {"name": method}
        if not isinstance(method, dict):
            raise ConfigError(f"method must be a name or a mapping such as {{name: lora, r: 8}}, got {method!r}")
        return cls(
            data=_build(DataConfig, d.get("data"), "data"),
            model=_build(ModelConfig, d.get("model"), "model"),
            method=dict(method),
            train=_build(TrainConfig, d.get("train"), "train"),
            multitask=_build(MultiTaskConfig, d.get("multitask"), "multitask"),
        )

    @classmethod
    def from_yaml(cls, path: str | Path) -> "RunConfig":
        _, spec = read_yaml(path, "config file")
        if spec is not None and not isinstance(spec, dict):
            raise ConfigError(f"{path}: expected a mapping of config sections (data, model, method, train), "
                              f"got a {type(spec).__name__}")
        try:
            return cls.from_dict(spec)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def override(self, assignments: list[str]) -> "RunConfig":
        """Return a copy with ``section.field=value`` assignments applied (values parsed as YAML; a text
        field keeps the text as typed, so `on` or `2024-01-01` stay strings). Deeper keys set entries of
        mapping fields: ``model.options.hidden=128``."""
        d = self.to_dict()
        for a in assignments:
            key, sep, raw = a.partition("=")
            if not sep or "." not in key:
                raise ConfigError(f"bad override {a!r}: expected section.field=value, e.g. train.lr=1e-3")
            key = key.strip()
            try:
                value = yaml.safe_load(raw)
            except yaml.YAMLError as e:
                if not is_text_field(key):
                    raise ConfigError(f"bad override {a!r}: not a YAML value ({yaml_error_line(e)}); "
                                      "quote it") from None
                value = raw.strip()  # `[x].csv`: a text field takes the text as typed
            if is_text_field(key) and value is not None and not isinstance(value, str):
                value = raw.strip()  # `on`, `1`, `2024-01-01`: the user meant the text
            _assign(d, key, value, repr(a))
        return RunConfig.from_dict(d)

    def with_values(self, values: dict[str, Any]) -> "RunConfig":
        """Return a copy with dotted fields set to Python values as given (no YAML parsing), e.g.
        ``{"data.text_column": "text #1", "train.batch_size": 8}``; validated like a loaded config."""
        d = self.to_dict()
        for key, value in values.items():
            if "." not in key:
                raise ConfigError(f"bad field {key!r}: expected section.field")
            _assign(d, key, value, repr(key))
        return RunConfig.from_dict(d)


def _assign(d: dict, key: str, value: Any, shown: str) -> None:
    section, *path, name = key.split(".")
    if section not in d:
        raise ConfigError(f"bad override {shown}: unknown section {section!r}")
    target = d[section]
    for i, part in enumerate(path):
        target = target.setdefault(part, {})
        if not isinstance(target, dict):
            raise ConfigError(f"bad override {shown}: {'.'.join([section, *path[:i + 1]])} is not a mapping")
    target[name] = value


def is_text_field(key: str) -> bool:
    """Whether a dotted key names a plain text field (str or str | None) of a config section."""
    section, _, name = key.partition(".")
    cls = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}.get(section)
    types = {f.name: str(f.type) for f in dataclasses.fields(cls)} if cls else {}
    return name in types and {t.strip() for t in types[name].split("|")} <= {"str", "None"}


def read_yaml(path: str | Path, what: str) -> tuple[str, Any]:
    """(text, parsed YAML) of a file; every way it can fail is a one-line ConfigError naming the file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
        return text, yaml.safe_load(text)
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: a folder, not a {what}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: bytes that are not UTF-8 at byte {e.start}") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the {what} ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {yaml_error_line(e)}") from None


def yaml_error_line(e: Exception) -> str:
    """A YAML error in one line: its problem and where (`expected ',' or ']' at line 1, column 3`)."""
    problem, mark = getattr(e, "problem", None), getattr(e, "problem_mark", None)
    if problem and mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(e).split())


def _build(cls: type, values: dict[str, Any] | None, section: str) -> Any:
    if values is not None and not isinstance(values, dict):
        raise ConfigError(f"{section} must be a mapping of options, got {values!r}")
    values = dict(values or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(fields)
    if unknown:
        raise ConfigError(f"unknown {section} option(s): {', '.join(sorted(unknown))} "
                          f"(known: {', '.join(sorted(fields))})")
    return cls(**{k: _coerce(v, str(fields[k].type), f"{section}.{k}") for k, v in values.items()})


def _coerce(value: Any, annotation: str, name: str) -> Any:
    """YAML 1.1 reads `2e-5` as a string and `1` where a float is meant as an int: fix by the field's type.
    Text fields refuse YAML's booleans (`on`, `yes`) and keep dates (`2024-01-01`) as written."""
    kinds = [t.strip() for t in annotation.split("|")]
    if value is None:
        if "None" not in kinds:
            raise ConfigError(f"{name} needs a value")
        return None
    if "float" in kinds and not isinstance(value, bool) and isinstance(value, (str, int, float)):
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if "int" in kinds and not isinstance(value, bool) and isinstance(value, (str, int, float)):
        if isinstance(value, float):
            if not value.is_integer():
                raise ConfigError(f"{name} must be a whole number, got {value!r}")
            return int(value)
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if "bool" in kinds and not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    if "str" in kinds and not isinstance(value, str):
        if isinstance(value, (datetime.date, datetime.datetime)):
            return value.isoformat()
        if isinstance(value, bool):
            raise ConfigError(f"{name} must be text, got {value!r} (quote it in YAML: '{value}')")
        if isinstance(value, (int, float)):
            return str(value)
        raise ConfigError(f"{name} must be text, got {value!r}")
    return value


def field_help(cls: type) -> dict[str, str]:
    """Field name -> help text, for docs and `--help`."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}
