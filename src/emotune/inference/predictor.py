"""Prediction with a trained run: load once, classify many texts fast.

Precision (``precision=``):

- ``None`` (default): exactly as the run was trained: a bf16 run keeps bfloat16 weights under autocast
  and LoRA stays unmerged, so predictions reproduce the training's own evaluation bit for bit.
- ``fp32``: float32 weights.
- ``bf16``: bfloat16 weights, forward under bfloat16 autocast (norms and softmax stay float32).
- ``bf16-autocast``: float32 weights, matrix products in bfloat16 (autocast only).
- ``int8``: dynamic int8 quantization of the encoder's linear layers (weights int8 per output channel,
  activations quantized per batch; VNNI kernels on x86), everything else float32. CPU only.
- ``auto``: ``bf16`` where the CPU/GPU multiplies bfloat16 natively, else ``fp32``.

Every explicit precision is an inference mode: a mergeable adapter (LoRA family, IA3, VeRA; a QLoRA
base is dequantized) is merged into the base weights first (no adapter branch left at run time). Texts
are tokenized once, sorted by length and batched so little padding is computed; the forward runs under
``torch.inference_mode``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ..data.encode import batches, collate, encode
from ..errors import ConfigError, RunError
from ..methods import merge_adapter
from ..runs import Run
from ..train.precision import autocast, cpu_flags, resolve_device, resolve_precision
from .format import check_texts, format_predictions

PRECISIONS = {
    "fp32": "float32 weights",
    "bf16": "bfloat16 weights under bfloat16 autocast",
    "bf16-autocast": "float32 weights, bfloat16 autocast",
    "int8": "dynamic int8 quantization of the encoder's linear layers (CPU)",
    "fp16": "float32 weights, float16 autocast (CUDA)",
    "auto": "bf16 where the hardware multiplies bfloat16 natively, else fp32",
}


@dataclass(frozen=True)
class Mode:
    """How a model runs: the dtype its weights are stored in, the autocast dtype, int8, LoRA merged."""

    name: str
    weights: torch.dtype
    compute: torch.dtype
    int8: bool = False
    merge: bool = True


def resolve_mode(precision: str | None, run: Run, device: torch.device) -> Mode:
    if precision is None:  # as trained: bf16 runs evaluate with bf16 weights, adapters unmerged
        trained = run.config.train.precision
        # fp16 is a CUDA training mode over float32 weights: off the GPU those weights answer in float32.
        dtype = resolve_precision("fp32" if trained == "fp16" and device.type != "cuda" else trained, device)
        return Mode(f"trained-{str(dtype).replace('torch.', '')}",
                    torch.bfloat16 if dtype == torch.bfloat16 else torch.float32, dtype, merge=False)
    if precision == "auto":
        precision = "bf16" if resolve_precision("auto", device) == torch.bfloat16 else "fp32"
    if precision == "fp32":
        return Mode("fp32", torch.float32, torch.float32)
    if precision == "bf16":
        return Mode("bf16", torch.bfloat16, torch.bfloat16)
    if precision == "bf16-autocast":
        return Mode("bf16-autocast", torch.float32, torch.bfloat16)
    if precision == "fp16":
        if device.type != "cuda":
            raise ConfigError("fp16 needs a CUDA device; use bf16, int8 or fp32 on the CPU")
        return Mode("fp16", torch.float32, torch.float16)
    if precision == "int8":
        if device.type != "cpu":
            raise ConfigError("int8 (dynamic quantization) runs on the CPU only")
        return Mode("int8", torch.float32, torch.float32, int8=True)
    raise ConfigError(f"unknown precision {precision!r}; choose {', '.join(PRECISIONS)}")


def cpu_has_vnni() -> bool:
    """True when the CPU has AVX512-VNNI or AVX-VNNI: int8 products accumulate in int32 without saturating."""
    return "avx512_vnni" in cpu_flags() or "avx_vnni" in cpu_flags()


def quantize_int8(model: nn.Module, names: set[str] | None = None) -> nn.Module:
    """Dynamic int8 quantization of the encoder's linear layers (the classification head stays float:
    it is tiny and its outputs are the logits). ``names`` picks the modules instead.

    Weights are int8 per output channel; activations are quantized per batch. PyTorch quantizes them to
    7 bits by default, a guard against int16 saturation on CPUs without VNNI; with VNNI they use all 8
    bits, which keeps accuracy within a tenth of a point of float32 here (7 bits lose about 0.4)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notices
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        if names is None:
            # exactly nn.Linear: MultiheadAttention's out_proj (a subclass) is read as a float weight
            names = {n for n, m in model.named_modules() if type(m) is nn.Linear and n.startswith("encoder.")}
        model = quantize_dynamic(model, {n: per_channel_dynamic_qconfig for n in names}, inplace=True)
    if cpu_has_vnni() and torch.backends.quantized.engine in ("x86", "fbgemm"):
        full_range = _full_range_linear()
        for m in model.modules():
            if type(m).__name__ == "Linear" and getattr(m, "_packed_params", None) is not None \
                    and m._packed_params.dtype == torch.qint8:
                m.__class__ = full_range
    return model


@lru_cache(maxsize=1)
def _full_range_linear() -> type:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    class FullRangeInt8Linear(DynamicLinear):
        """Dynamic int8 linear layer whose activations use all 8 bits (safe with VNNI)."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.ops.quantized.linear_dynamic(x, self._packed_params._packed_params,
                                                      reduce_range=False).to(x.dtype)

    return FullRangeInt8Linear


def prepare_model(model: nn.Module, mode: Mode, device: torch.device, fast: bool = True) -> nn.Module:
    """A freshly loaded float32 model made ready for inference in ``mode``; with ``fast``, BERT-architecture
    encoders run through the lean forward of ``emotune.inference.fast`` (same weights, same mathematics)."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    members = getattr(model, "members", None)
    if isinstance(members, nn.ModuleList):  # an ensemble: each member takes its own fast path
        model.members = nn.ModuleList(prepare_model(m, mode, device, fast) for m in members)
        return model.to(device)
    names = None
    if mode.merge:
        model = merge_adapter(model)
        from .fast import FastBertClassifier, supports

        if fast and supports(model):
            model = FastBertClassifier(model)
            names = model.int8_names()
    if mode.int8:
        return quantize_int8(model, names)
    return model.to(device, mode.weights if mode.weights != torch.float32 else None)


class Predictor:
    """A trained run loaded for prediction: ``Predictor(run_dir).predict(["text", ...])``.

    ``precision`` as in the module docstring; ``threads`` sets PyTorch's CPU threads; ``batch_size`` is
    the number of texts per forward pass (texts are sorted by length first).

    ``streams``: batches run at once, each on its own thread with ``threads / streams`` PyTorch threads.
    On a few cores a small model uses them better this way than by splitting every matrix product,
    and a core busy with other work stalls one stream instead of every operation. Default: 2 on a
    CPU with at least 2 threads for the explicit precisions, else 1.

    ``compile``: ``torch.compile`` the model (inductor, weights frozen as constants; about half a
    minute at start-up on 2 cores): fused element-wise work, packed weights; fastest with ``bf16``.

    ``unfinished``: predict with an interrupted run's best weights so far (``step`` says which evaluation);
    without it such a run is refused.

    ``fast`` (default): BERT-architecture encoders run through ``emotune.inference.fast``'s lean forward.
    """

    def __init__(self, run: str | Path | Run, *, precision: str | None = None, device: str = "cpu",
                 batch_size: int = 64, threads: int | None = None, streams: int | None = None,
                 compile: bool = False, fast: bool = True, unfinished: bool = False):
        self.run = run if isinstance(run, Run) else Run.open(run)
        if not self.run.complete and not unfinished:
            raise RunError(f"{self.run.path}: the run has not finished training ({self.run.status()}); resume it, "
                           "or predict with its best weights so far with --unfinished")
        self.step = self.run.best_step()
        """The training step whose weights predict (an unfinished run: its best evaluation so far)."""
        if threads:
            torch.set_num_threads(threads)
        if batch_size < 1 or (streams is not None and streams < 1):
            raise ConfigError("batch_size and streams must be at least 1")
        self.device = resolve_device(device)
        self.mode = resolve_mode(precision, self.run, self.device)
        self.dtype = self.mode.compute  # the autocast dtype (what evaluate_classifier expects)
        if streams is None:
            streams = 2 if self.device.type == "cpu" and self.mode.merge and torch.get_num_threads() >= 2 else 1
        self.streams = streams
        self._pool = None
        model, self.tokenizer = self.run.load_model()
        self.model = prepare_model(model, self.mode, self.device, fast)
        from .fast import FastBertClassifier

        # The lean forward with bfloat16 weights runs in bfloat16 throughout: no autocast casts needed.
        self._autocast = (torch.float32 if isinstance(self.model, FastBertClassifier)
                          and self.mode.weights == torch.bfloat16 else self.dtype)
        self.labels = self.run.labels
        self.task_state = self.run.task_state  # multilabel: the run's per-label thresholds
        self.batch_size = batch_size
        self.max_length = self.run.config.data.max_length
        self.pad_id = self.tokenizer.pad_token_id or 0
        # Padding to multiples bounds the set of shapes a long-running server sees (see pad_batch).
        self.pad_multiple = self.batch_multiple = 1
        self.compiled = False
        if compile:
            self.compile()

    def compile(self) -> None:
        """``torch.compile`` the model once (dynamic shapes) and warm it up."""
        ids = encode(self.tokenizer, ["warm up", "a somewhat longer sentence to warm the compiled model up"],
                     self.max_length)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch-internal notices while compiling
            import torch._inductor.config as inductor

            inductor.freezing = True  # weights become constants: packed for the matrix units, folded casts
            self.model = torch.compile(self.model, dynamic=True)
            self.compiled = True
            # The compiled graph is specialised to the thread count: warm it up where it will run.
            if self.streams > 1:
                self.pool().submit(self._forward, ids).result()
            else:
                self._forward(ids)

    @property
    def precision(self) -> str:
        return self.mode.name

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        return encode(self.tokenizer, texts, self.max_length)

    @torch.inference_mode()
    def _forward(self, ids: Sequence[Sequence[int]]) -> torch.Tensor:
        n = len(ids)
        if self.compiled and n == 1:  # a batch of one would be a second specialised graph: pad it to two
            ids = [ids[0], ids[0]]
        b = collate(ids, self.pad_id)
        if self.pad_multiple > 1 or self.batch_multiple > 1:
            b = pad_batch(b, self.pad_multiple, self.batch_multiple, self.pad_id)
        with autocast(self.device, self._autocast):
            return self.model(**{k: v.to(self.device) for k, v in b.items()}).float().cpu()[:n]

    def logits_from_ids(self, ids: Sequence[Sequence[int]]) -> torch.Tensor:
        """Logits in the input order; batches of similar length so little padding is computed."""
        out = torch.empty(len(ids), len(self.labels))
        order = batches([len(x) for x in ids], self.batch_size, shuffle=False)
        if self.streams > 1 and (len(order) > 1 or self.compiled):
            results = self.pool().map(lambda idx: self._forward([ids[i] for i in idx]), order)
        else:
            results = (self._forward([ids[i] for i in idx]) for idx in order)
        for idx, logits in zip(order, results):
            out[idx] = logits
        return out

    def pool(self):
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            per_stream = max(1, torch.get_num_threads() // self.streams)
            self._pool = ThreadPoolExecutor(self.streams, thread_name_prefix="emotune-stream",
                                            initializer=torch.set_num_threads, initargs=(per_stream,))
        return self._pool

    def logits(self, texts: Sequence[str]) -> torch.Tensor:
        if not texts:
            return torch.empty(0, len(self.labels))
        if self.run.config.data.task == "instruct":  # a decoder answering every task: scored answers
            from ..train.instruct import answer_texts

            with autocast(self.device, self._autocast):
                return answer_texts(self.model, self.tokenizer, list(texts), self.task_state, self.max_length,
                                    self.batch_size)
        return self.logits_from_ids(self.encode(texts))

    def probabilities(self, texts: Sequence[str]) -> torch.Tensor:
        """The run's task outputs (class probabilities), one row per text, columns in ``labels`` order."""
        return self.run.task.outputs(self.logits(texts), self.task_state)

    def predict(self, texts: Sequence[str], min_confidence: float | None = None) -> list[dict]:
        """Per text: the predicted label and every class's (calibrated) probability; ``uncertain`` where the top
        probability is below ``min_confidence``."""
        texts = list(texts)
        check_texts(texts)
        return format_predictions(texts, self.probabilities(texts), self.labels, self.run.task, self.task_state,
                                  min_confidence)


def pad_batch(b: dict[str, torch.Tensor], length_multiple: int, batch_multiple: int,
              pad_id: int) -> dict[str, torch.Tensor]:
    """Pad a collated batch to a multiple of ``length_multiple`` tokens and ``batch_multiple`` rows.

    Every new input shape costs memory that is kept: oneDNN caches kernels per shape and the C
    allocator fragments over ever-new sizes. A server sees every (rows, tokens) pair over time; on
    multiples the set stays small and its memory flat, for a few padded tokens."""
    ids, mask = b["input_ids"], b["attention_mask"]
    rows, length = ids.shape
    new_rows = -(-rows // batch_multiple) * batch_multiple
    new_length = -(-length // length_multiple) * length_multiple
    if (new_rows, new_length) == (rows, length):
        return b
    padded_ids = torch.full((new_rows, new_length), pad_id, dtype=ids.dtype)
    padded_mask = torch.zeros((new_rows, new_length), dtype=mask.dtype)
    padded_ids[:rows, :length], padded_mask[:rows, :length] = ids, mask
    padded_mask[rows:, 0] = 1  # padding rows attend to one token, so their softmax stays finite
    return {"input_ids": padded_ids, "attention_mask": padded_mask}
