"""Export a run as a standalone Transformers model folder (``emotune export RUN --merged --out DIR``).

The adapter is merged into the base weights (full fine-tuning runs need no merge) and the folder holds
``config.json`` (with ``id2label``/``label2id`` from the run's labels), ``model.safetensors`` and the
tokenizer files, so that plain ``AutoModelForSequenceClassification.from_pretrained(DIR)`` predicts what
emotune's ``Predictor`` predicts in fp32.

Which model class:

- ``pooling: pooler`` on an encoder whose stock ``...ForSequenceClassification`` is "base model -> its
  pooler output -> dropout -> linear ``classifier``" (BERT and MiniLM's ``BertForSequenceClassification``):
  the stock class, weights mapped as encoder -> ``bert.*``, head -> ``classifier``.
- ``mean`` and ``cls`` pooling (and any encoder whose stock class pools differently) have no stock class:
  a stand-in would change the predictions (a pooler set to identity still applies tanh). The folder then
  ships emotune's small classifier class (``modeling_emotune.py``, named in ``config.json``'s ``auto_map``)
  and is loaded with ``trust_remote_code=True``; its own ``model_type`` makes loading without it fail
  loudly rather than fall back to a stock class. ``stock_only=True`` (``--stock``) refuses instead.

Every task type exports; the model's logits are emotune's logits, and ``config.json`` says how to read them:

- classification: ``problem_type`` single_label_classification; softmax gives the raw probabilities, and
  softmax of the logits divided by the run's fitted temperature (``emotune.task_state.calibration``; vector
  scaling: times ``weights`` plus ``biases``) the calibrated ones emotune answers;
- multilabel: ``problem_type`` multi_label_classification; sigmoid gives each label's probability, and a
  label is predicted at or above its threshold (the run's task_state.json, kept under ``emotune.task_state``);
- regression: ``problem_type`` regression; the logits are the predicted values on the targets' original
  scale: the head's de-standardisation (``value = z * std + mean``, targets.json) is folded into the linear
  classifier's weights and bias, so a stock class predicts values; the statistics stay under
  ``emotune.targets`` for reference;
- multi-task: emotune's class with one linear head per task (``heads``; regression heads folded as above),
  its logits the heads' logits side by side; ``emotune.tasks`` gives each task's type, labels and columns.
  No stock class has several heads: ``--stock`` refuses a multi-task run.

``config.json``'s ``emotune`` entry (and ``emotune_export.json``) hold the task type, labels, thresholds,
target statistics and per-task columns; ``id2label`` names every output column (``task:label`` for
multi-task runs).

Every export is verified before it is moved into place: the folder is reloaded with
``AutoModelForSequenceClassification`` and its outputs (the task's: probabilities or values) on probe texts
must match emotune's within ``TOLERANCE`` (relative to the value for values above 1). Methods whose adapter
cannot be folded into the weights (prefix and prompt tuning add virtual tokens) are refused with a clear
error, as is a head no export format carries.
"""

from __future__ import annotations

import copy
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError, RunError
from ..io import write_json
from ..runs import Run, run_lock, staged_dir
from ..tasks import MultiHead, RegressionHead

TOLERANCE = 1e-5  # largest allowed difference of an output (probability; value relative above 1) from emotune's
PROBLEM_TYPES = {"classification": "single_label_classification", "multilabel": "multi_label_classification",
                 "regression": "regression"}
MODELING_FILE = "modeling_emotune.py"
EXPORT_INFO = "emotune_export.json"
AUTO_MAP = {"AutoConfig": "modeling_emotune.EmotuneClassifierConfig",
            "AutoModelForSequenceClassification": "modeling_emotune.EmotuneForSequenceClassification"}
# Texts of different lengths in one padded batch: the check covers masking and pooling over padding.
PROBE_TEXTS = ["i feel wonderful today", "this is terrifying",
               "i have been feeling a little anxious about the exam tomorrow but my friends keep cheering me up",
               "ok", "i am so angry that nobody told me", "what a lovely surprise to see you here after all "
               "these years, i could not stop smiling for the whole evening"]


@dataclass
class ExportResult:
    path: Path
    model_class: str
    trust_remote_code: bool
    max_abs_diff: float
    """Largest difference of an output (a probability; a value, relative above 1) between emotune and the
    reloaded export (probe texts)."""


def export_merged(run_dir: str | Path, out: str | Path, *, stock_only: bool = False,
                  overwrite: bool = False) -> ExportResult:
    """Write ``out``: a Transformers model folder with the run's adapter merged into the base."""
    run = Run.open_finished(run_dir)
    given, out = Path(out), Path(out).resolve()
    _check_out(out, overwrite)
    check_mergeable(run)
    if run.config.model.lexicon:
        raise ConfigError(f"{run.path}: its lexicon features ({run.config.model.lexicon}) are computed from the text "
                          "by emotune; no exported model format carries them (serve the run instead)")
    with run_lock(run.path, "emotune export"):  # the run cannot be retrained or re-evaluated meanwhile
        return _export(run, given, out, stock_only)


def _export(run: Run, given: Path, out: Path, stock_only: bool) -> ExportResult:
    model, tokenizer = run.load_model()
    model = merged_model(model, run)
    multi = isinstance(model.head, MultiHead)
    if multi and stock_only:
        raise ConfigError(f"{run.path}: a multi-task run has a head per task and no stock Transformers class "
                          "carries several heads; export without --stock (ships emotune's class, "
                          "trust_remote_code=True)")
    hf = stock_classifier(model, run) if run.config.model.pooling == "pooler" and not multi else None
    if hf is None:
        if stock_only:
            raise ConfigError(f"{run.path}: pooling {run.config.model.pooling!r} on "
                              f"{type(model.encoder).__name__} has no stock Transformers class that reproduces "
                              "it; export without --stock (ships emotune's class, trust_remote_code=True) or "
                              "train with --set model.pooling=pooler")
        hf = custom_classifier(model, run)
    custom = not hf.__class__.__module__.startswith("transformers.")
    tokenizer = copy.deepcopy(tokenizer)
    # `tokenizer(texts, truncation=True)` then truncates where emotune does.
    tokenizer.model_max_length = run.config.data.max_length
    # A fresh, randomly named folder: nothing another user placed there is ever loaded with trust_remote_code.
    with staged_dir(out) as tmp:
        hf.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if custom:
            from . import export_modeling

            shutil.copyfile(export_modeling.__file__, tmp / MODELING_FILE)
        diff = verify_export(model, tokenizer, tmp, run.config.data.max_length, custom, run.task)
        result = ExportResult(given, f"{'modeling_emotune.' if custom else ''}{type(hf).__name__}", custom, diff)
        write_json(tmp / EXPORT_INFO, {"source_run": str(run.path.resolve()), "method": run.config.method,
                                       "base_model": run.config.model.name, "pooling": run.config.model.pooling,
                                       "model_class": result.model_class, "trust_remote_code": custom,
                                       "max_abs_diff_outputs": diff, **task_info(run)})
    return result


def _check_out(out: Path, overwrite: bool) -> None:
    """An export goes to a new or empty folder, or replaces an earlier export with ``overwrite``; never
    anything else (a mistyped --out must not delete a folder of other files, even another model)."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    if not out.is_dir() or not (out / EXPORT_INFO).is_file():
        raise RunError(f"{out}: exists and is not a folder emotune exported (no {EXPORT_INFO}); "
                       "choose another --out")
    if not overwrite:
        raise RunError(f"{out}: holds an exported model; choose another --out or pass --overwrite")


def check_mergeable(run: Run) -> None:
    from ..methods import METHODS
    from ..models import is_classic

    if is_classic(run.config.model.name):
        raise ConfigError(f"{run.path}: {run.config.model.name!r} is a classic emotune model, not a Transformers "
                          "encoder: use emotune's Predictor or `emotune serve` for this run")
    name = run.config.method.get("name")
    if name in METHODS and not METHODS.get(name).mergeable:
        raise ConfigError(f"{run.path}: method {name!r} cannot be exported merged: it is no weight update of "
                          "a Transformers encoder (prefix and prompt tuning add virtual tokens; zero-shot runs "
                          "score labels; an ensemble runs several models); use emotune's Predictor or "
                          "`emotune serve` for this run")


def merged_model(model: nn.Module, run: Run) -> nn.Module:
    """The run's float32 model with its adapter folded into the encoder's weights (a plain encoder)."""
    from ..methods import merge_adapter

    check_mergeable(run)
    name = run.config.method.get("name")
    model.eval()
    model = merge_adapter(model)
    leftover = sorted({type(m).__module__.split(".")[0] for m in model.encoder.modules()} & {"peft", "bitsandbytes"})
    if leftover:
        raise ConfigError(f"{run.path}: method {name!r} cannot be exported merged: {' and '.join(leftover)} "
                          "modules remain after merging; use emotune's Predictor or `emotune serve` for this run")
    return model


def _labels_config(config, run: Run) -> None:
    """Output names, how to read the outputs (``problem_type``; none for several heads) and the task's info."""
    labels = run.labels
    config.num_labels = len(labels)
    config.id2label = dict(enumerate(labels))
    config.label2id = {name: i for i, name in enumerate(labels)}
    config.problem_type = PROBLEM_TYPES.get(run.task.name)
    config.emotune = task_info(run)


def task_info(run: Run) -> dict:
    """What reading the export's outputs needs beyond the weights: the task type and labels, per-task columns of
    a multi-task run, the run's fitted state (multilabel thresholds) and regression target statistics (already
    folded into the heads' weights: kept for reference)."""
    info: dict = {"task": run.task.name, "labels": run.labels}
    parts = getattr(run.task, "parts", None)
    if parts is not None:
        info["tasks"] = [{"name": p.name, "task": p.task.name, "labels": p.labels,
                          "columns": [p.columns.start, p.columns.stop]} for p in parts]
    if run.task_state is not None:
        info["task_state"] = run.task_state
    if run.target_statistics is not None:
        info["targets"] = run.target_statistics
    return info


def linear_head(head: nn.Module, where: Path) -> nn.Linear:
    """A task head as one plain linear layer with the same outputs: a regression head's de-standardisation
    (``z * std + mean``) folded into its weights and bias (computed in float64)."""
    if type(head) is nn.Linear:
        return head
    if isinstance(head, RegressionHead):
        lin = head.linear
        std = torch.tensor(head.std, dtype=torch.float64)
        mean = torch.tensor(head.mean, dtype=torch.float64)
        out = nn.Linear(lin.in_features, lin.out_features)
        with torch.no_grad():
            out.weight.copy_((lin.weight.double() * std[:, None]).float())
            out.bias.copy_((lin.bias.double() * std + mean).float())
        return out
    raise ConfigError(f"{where}: its {type(head).__name__} head has no Transformers export (exports carry linear "
                      "classification, multi-label and regression heads); use emotune's Predictor or "
                      "`emotune serve` for this run")


def stock_classifier(model: nn.Module, run: Run) -> nn.Module | None:
    """The encoder's stock ``...ForSequenceClassification`` carrying the run's weights, or None where that
    class is not "base model pooler output -> dropout -> linear classifier" (checked on probe inputs)."""
    from transformers import AutoModelForSequenceClassification

    encoder = model.encoder
    linear = linear_head(model.head, run.path)
    config = copy.deepcopy(encoder.config)
    _labels_config(config, run)
    config.architectures = None
    try:
        hf = AutoModelForSequenceClassification.from_config(config)
    except (ValueError, KeyError):
        return None
    base, head = getattr(hf, hf.base_model_prefix, None), getattr(hf, "classifier", None)
    if (type(base) is not type(encoder) or not isinstance(head, nn.Linear)
            or head.weight.shape != linear.weight.shape):
        return None
    try:
        base.load_state_dict(encoder.state_dict(), strict=True)
    except RuntimeError:
        return None
    head.load_state_dict(linear.state_dict())
    hf.eval()
    ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 102], [101, 7592, 102, 0, 0, 0]]) % config.vocab_size
    mask = (torch.arange(6) < torch.tensor([[6], [3]])).long()
    with torch.no_grad():
        same = torch.allclose(hf(input_ids=ids, attention_mask=mask).logits, model(ids, mask).float(), atol=1e-5,
                              rtol=1e-5)  # regression values need not be near 0
    return hf if same else None


def custom_classifier(model: nn.Module, run: Run) -> nn.Module:
    """emotune's own classifier class (``export_modeling``) carrying the run's weights."""
    from .export_modeling import EmotuneClassifierConfig, EmotuneForSequenceClassification

    encoder_config = encoder_dict(model.encoder.config)
    # A multi-task model: one linear head per task, in the order of the run's output columns.
    heads = ({name: linear_head(h, run.path) for name, h in model.head.heads.items()}
             if isinstance(model.head, MultiHead) else None)
    config = EmotuneClassifierConfig(encoder=encoder_config, pooling=model.pooling,
                                     classifier_dropout=float(model.dropout.p),
                                     heads=None if heads is None else [{"name": name, "num_labels": h.out_features}
                                                                       for name, h in heads.items()])
    _labels_config(config, run)
    config.auto_map = dict(AUTO_MAP)
    hf = EmotuneForSequenceClassification(config)
    try:
        hf.encoder.load_state_dict(model.encoder.state_dict(), strict=True)
    except RuntimeError as e:
        raise RunError(f"{run.path}: the merged encoder does not fit its own configuration: {e}") from None
    if heads is None:
        hf.classifier.load_state_dict(linear_head(model.head, run.path).state_dict())
    else:
        for name, h in heads.items():
            hf.heads[name].load_state_dict(h.state_dict())
    return hf.eval()


def encoder_dict(config) -> dict:
    """The encoder's configuration as plain data, without the local path it was loaded from."""
    d = config.to_dict()
    for key in ("_name_or_path", "architectures", "id2label", "label2id", "dtype", "torch_dtype",
                "transformers_version"):
        d.pop(key, None)
    return d


def verify_export(model: nn.Module, tokenizer, folder: Path, max_length: int, trust_remote_code: bool,
                  task=None) -> float:
    """Reload ``folder`` as Transformers would and compare its outputs (``task``'s: probabilities or values;
    default classification) with ``model``'s on probe texts; return the largest difference (relative for values
    above 1); a RunError above ``TOLERANCE`` or on a different predicted class."""
    from transformers import AutoModelForSequenceClassification

    from ..tasks import CLASSIFICATION

    task = task or CLASSIFICATION
    hf = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=trust_remote_code,
                                                            use_safetensors=True).eval()
    batch = tokenizer(PROBE_TEXTS, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    with torch.no_grad():
        want = task.outputs(model(batch["input_ids"], batch["attention_mask"]).float())
        got = task.outputs(hf(**batch).logits.float())
    if want.shape != got.shape:
        raise RunError(f"the exported model gives {got.shape[-1]} outputs, emotune's {want.shape[-1]}; nothing was "
                       "written to the output folder")
    diff = float(((want - got).abs() / want.abs().clamp(min=1)).max())
    parts = getattr(task, "parts", None)
    blocks = ([p.columns for p in parts if p.task.name == "classification"] if parts is not None
              else [slice(None)] if task.name == "classification" else [])
    same_class = all(torch.equal(want[:, c].argmax(-1), got[:, c].argmax(-1)) for c in blocks)
    if diff > TOLERANCE or not same_class:
        raise RunError(f"the exported model's outputs differ from emotune's by {diff:.2e} "
                       f"(tolerance {TOLERANCE:g}); nothing was written to the output folder")
    return diff
