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

Every export is verified before it is moved into place: the folder is reloaded with
``AutoModelForSequenceClassification`` and its probabilities on probe texts must match emotune's within
``TOLERANCE``. Methods whose adapter cannot be folded into the weights (prefix and prompt tuning add
virtual tokens) are refused with a clear error.
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

TOLERANCE = 1e-5  # largest allowed difference of a class probability between emotune and the export
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
    """Largest difference of a class probability between emotune and the reloaded export (probe texts)."""


def export_merged(run_dir: str | Path, out: str | Path, *, stock_only: bool = False,
                  overwrite: bool = False) -> ExportResult:
    """Write ``out``: a Transformers model folder with the run's adapter merged into the base."""
    run = Run.open_finished(run_dir)
    given, out = Path(out), Path(out).resolve()
    _check_out(out, overwrite)
    check_mergeable(run)
    with run_lock(run.path, "emotune export"):  # the run cannot be retrained or re-evaluated meanwhile
        return _export(run, given, out, stock_only)


def _export(run: Run, given: Path, out: Path, stock_only: bool) -> ExportResult:
    model, tokenizer = run.load_model()
    model = merged_model(model, run)
    hf = stock_classifier(model, run) if run.config.model.pooling == "pooler" else None
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
        diff = verify_export(model, tokenizer, tmp, run.config.data.max_length, custom)
        result = ExportResult(given, f"{'modeling_emotune.' if custom else ''}{type(hf).__name__}", custom, diff)
        write_json(tmp / EXPORT_INFO, {"source_run": str(run.path.resolve()), "method": run.config.method,
                                       "base_model": run.config.model.name, "pooling": run.config.model.pooling,
                                       "model_class": result.model_class, "trust_remote_code": custom,
                                       "max_abs_diff_probabilities": diff, "labels": run.labels})
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


def _labels_config(config, labels: list[str]) -> None:
    config.num_labels = len(labels)
    config.id2label = dict(enumerate(labels))
    config.label2id = {name: i for i, name in enumerate(labels)}


def stock_classifier(model: nn.Module, run: Run) -> nn.Module | None:
    """The encoder's stock ``...ForSequenceClassification`` carrying the run's weights, or None where that
    class is not "base model pooler output -> dropout -> linear classifier" (checked on probe inputs)."""
    from transformers import AutoModelForSequenceClassification

    encoder = model.encoder
    config = copy.deepcopy(encoder.config)
    _labels_config(config, run.labels)
    config.architectures = None
    try:
        hf = AutoModelForSequenceClassification.from_config(config)
    except (ValueError, KeyError):
        return None
    base, head = getattr(hf, hf.base_model_prefix, None), getattr(hf, "classifier", None)
    if (type(base) is not type(encoder) or not isinstance(head, nn.Linear)
            or head.weight.shape != model.head.weight.shape):
        return None
    try:
        base.load_state_dict(encoder.state_dict(), strict=True)
    except RuntimeError:
        return None
    head.load_state_dict(model.head.state_dict())
    hf.eval()
    ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 102], [101, 7592, 102, 0, 0, 0]]) % config.vocab_size
    mask = (torch.arange(6) < torch.tensor([[6], [3]])).long()
    with torch.no_grad():
        same = torch.allclose(hf(input_ids=ids, attention_mask=mask).logits, model(ids, mask), atol=1e-5)
    return hf if same else None


def custom_classifier(model: nn.Module, run: Run) -> nn.Module:
    """emotune's own classifier class (``export_modeling``) carrying the run's weights."""
    from .export_modeling import EmotuneClassifierConfig, EmotuneForSequenceClassification

    encoder_config = encoder_dict(model.encoder.config)
    config = EmotuneClassifierConfig(encoder=encoder_config, pooling=model.pooling,
                                     classifier_dropout=float(model.dropout.p))
    _labels_config(config, run.labels)
    config.auto_map = dict(AUTO_MAP)
    hf = EmotuneForSequenceClassification(config)
    try:
        hf.encoder.load_state_dict(model.encoder.state_dict(), strict=True)
    except RuntimeError as e:
        raise RunError(f"{run.path}: the merged encoder does not fit its own configuration: {e}") from None
    hf.classifier.load_state_dict(model.head.state_dict())
    return hf.eval()


def encoder_dict(config) -> dict:
    """The encoder's configuration as plain data, without the local path it was loaded from."""
    d = config.to_dict()
    for key in ("_name_or_path", "architectures", "id2label", "label2id", "dtype", "torch_dtype",
                "transformers_version"):
        d.pop(key, None)
    return d


def verify_export(model: nn.Module, tokenizer, folder: Path, max_length: int, trust_remote_code: bool) -> float:
    """Reload ``folder`` as Transformers would and compare its probabilities with ``model``'s on probe texts;
    return the largest difference (a RunError above ``TOLERANCE`` or on a different predicted class)."""
    from transformers import AutoModelForSequenceClassification

    hf = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=trust_remote_code,
                                                            use_safetensors=True).eval()
    batch = tokenizer(PROBE_TEXTS, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    with torch.no_grad():
        want = torch.softmax(model(batch["input_ids"], batch["attention_mask"]).float(), -1)
        got = torch.softmax(hf(**batch).logits.float(), -1)
    diff = float((want - got).abs().max())
    if diff > TOLERANCE or not torch.equal(want.argmax(-1), got.argmax(-1)):
        raise RunError(f"the exported model's probabilities differ from emotune's by {diff:.2e} "
                       f"(tolerance {TOLERANCE:g}); nothing was written to the output folder")
    return diff
