"""Continual learning on a stream (``emotune stream CONFIG --out DIR``): streams built from emotune's data sets,
the strategies compared on them (Online-LoRA, naive sequential LoRA, joint training), and the metrics along the
stream, written as each segment finishes.

A stream is a list of segments (a domain, or a group of classes), each with training examples and a held-out
evaluation set. The learner (``train.online``) reads the training examples once, in order, in mini-batches, and is
never told where a segment ends. After each segment every evaluation set seen so far is scored, which gives the
accuracy matrix ``acc[i][j]`` (segment j's accuracy after segment i) and from it:

- final average accuracy: the mean of the last row;
- backward transfer, BWT = mean over j < K-1 of (acc[K-1][j] - acc[j][j]) (negative: forgetting);
- forgetting = mean over j < K-1 of (max over i in j..K-2 of acc[i][j] - acc[K-1][j]);
- the plateaus the detector found against the true boundaries (the first step of each segment after the first):
  a boundary is matched when a plateau falls within ``stream.boundary_tolerance`` batches from it.

``joint`` reads the same examples shuffled together (one pass, as many steps); its "segments" end at the same
shares of its steps as the true segments' shares of the examples, so the same matrix is measured at the same
points.

The learner's whole state is checkpointed at each segment's end and every ``stream.checkpoint_every`` steps
(DIR/checkpoint.safetensors), so the same command run again resumes an interrupted stream, which then ends with
the metrics of an uninterrupted one; the checkpoint goes when the stream completes.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import yaml

from ..config import DataConfig, RunConfig, _at_least, _build, _f, _in_range, _positive, read_yaml, yaml_error_line
from ..data import load_data
from ..data.base import Split
from ..data.emotion import LABELS as EMOTION_LABELS
from ..data.encode import Encoded, batches, data_fingerprint, encode
from ..errors import ConfigError, DataError, RunError
from ..io import load_tensors, remove_stale_tmp, save_tensors, write_json, write_text
from ..methods import method_options
from ..registry import Registry
from ..runs import CHECKPOINT, build_model, run_lock
from ..train.evaluate import predict_logits
from ..train.online import OnlineLearner, OnlineSettings, check_restartable, check_settings
from ..train.precision import resolve_device, resolve_precision
from ..train.stopping import stop_requests

STREAM_METRICS, STREAM_TABLE, STREAM_STEPS, STREAM_CONFIG = "stream.json", "stream.md", "steps.jsonl", "stream.yaml"
STREAM_CHECKPOINT = CHECKPOINT  # the learner's whole state, to resume from; removed when the stream completes
STREAM_FILES = (STREAM_METRICS, STREAM_TABLE, STREAM_STEPS, STREAM_CONFIG, STREAM_CHECKPOINT)

# domain-drift's shared label space and each domain's map into it (every label of a domain must be mapped).
SHARED_LABELS = ["positive", "negative", "other"]
DOMAIN_MAPS: dict[str, dict[str, str]] = {
    "mr": {"positive": "positive", "negative": "negative"},
    "semeval2017a": {"positive": "positive", "negative": "negative", "neutral": "other"},
    "emotion": {"joy": "positive", "love": "positive", "sadness": "negative", "anger": "negative",
                "fear": "negative", "surprise": "other"},
}
TEXT_FIELDS = ("data_dir",)  # `--set stream.data_dir=...` keeps the path as typed


@dataclass
class Segment:
    name: str
    train: Split
    eval: Split


@dataclass
class Stream:
    kind: str
    label_names: list[str]
    segments: list[Segment]
    labels: dict  # how the labels were made: each domain's map, or each group's classes


@dataclass(frozen=True)
class Strategy:
    name: str
    description: str
    shuffled: bool = False  # every segment's examples shuffled together (joint)
    merge: bool = False  # fold the adapter into the base and restart it at each plateau
    regularise: bool = False  # the importance-weighted penalty
    hard_buffer: bool = False  # train on the recent highest-loss examples too


EVAL_SPLITS = ("validation", "test")
STREAMS: Registry[Callable[["StreamConfig"], Stream]] = Registry("stream")
STRATEGIES: Registry[Strategy] = Registry("strategy")
for _s in (Strategy("online-lora", "Online-LoRA: merge and restart at loss plateaus, MAS regulariser, hard buffer",
                    merge=True, regularise=True, hard_buffer=True),
           Strategy("naive", "sequential fine-tuning of one LoRA, no merges, no regulariser (the lower bound)"),
           Strategy("joint", "one LoRA on every segment's examples shuffled together, as many steps (the upper "
                             "bound)", shuffled=True)):
    STRATEGIES.register(_s.name)(_s)


@dataclass
class StreamConfig:
    """The stream, the strategy and Online-LoRA's settings (the config file's ``stream`` section)."""

    kind: str = _f("domain-drift", "Which stream: `domain-drift` (MR reviews -> SemEval-2017 4A tweets -> Emotion "
                                   "sentences on positive/negative/other) or `class-incremental` (Emotion's classes "
                                   "in groups; a 6-way head from the start).")
    strategy: str = _f("online-lora", "`online-lora` (merge and restart at loss plateaus, MAS regulariser, hard "
                                      "buffer), `naive` (sequential LoRA fine-tuning: the lower bound) or `joint` "
                                      "(all segments shuffled together, as many steps: the upper bound).")
    segment_size: int | list[int] = _f(600, "Training examples per segment (a seeded sample of the data set's "
                                            "training split); a list gives each segment its own.")
    eval_size: int = _f(300, "Held-out examples per segment (at most; a seeded sample of `stream.eval_split`).")
    eval_split: str = _f("validation", "Where the held-out examples come from: `validation` while choosing "
                                       "settings, `test` once for the chosen ones; carved from the training split "
                                       "where a data set has no such split (MR's validation, SemEval's test).")
    domains: list[str] = _f(["mr", "semeval2017a", "emotion"], "domain-drift: the data sets in stream order "
                                                               "(each has a map to the shared labels).")
    groups: list[list[str]] = _f([["sadness", "joy"], ["love", "anger"], ["fear", "surprise"]],
                                 "class-incremental: Emotion's classes in the order they arrive, a list per segment.")
    batch_size: int = _f(16, "Examples per incoming mini-batch (train.batch_size is not used).")
    window: int = _f(10, "Plateau detector: the losses in the sliding window (one per batch).")
    mean_threshold: float = _f(1.2, "Plateau detector: the window's mean loss must be below this (per-example "
                                    "cross-entropy; ln 3 = 1.10 is chance over three classes).")
    variance_threshold: float = _f(0.01, "Plateau detector: the window's loss variance must be below this (MiniLM "
                                         "at batch 16: ~0.005 where the loss is flat, 0.01-0.02 while it falls).")
    reg_weight: float = _f(0.1, "Weight lambda of the importance-weighted penalty lambda * sum Omega (theta - "
                                "theta*)^2 (Omega: MAS importances normalised to mean 1). 0: off.")
    reg_scope: str = _f("adapter", "What the penalty anchors: `adapter` (the LoRA's A and B, as the paper) or "
                                   "`trainable` (also the head and the norms, at their values at the last plateau).")
    head_reg_weight: float = _f(0.0, "Weight of a separate penalty on the head, anchored at the last plateau, with "
                                     "its MAS importances normalised to mean 1 on their own (an emotune addition: "
                                     "the head carries a stream's label-prior shifts, which the adapter-only "
                                     "penalty leaves free). Needs reg_scope adapter. 0: off (the paper).")
    hard_buffer: int = _f(8, "Online-LoRA: the highest-loss recent examples kept, trained on with every batch and "
                             "used for the importances. 0: none.")
    hard_loss: bool = _f(True, "Online-LoRA: add the hard buffer's loss to each batch's (the official default).")
    labels_trick: bool = _f(False, "Every strategy: the cross-entropy of a batch (and of the hard buffer) only "
                                   "over the classes among its labels (the 'labels trick', Zeno et al. 2018), so "
                                   "training on new classes does not push down the logits of classes it does not "
                                   "show. Needs no task boundaries.")
    replay: int = _f(0, "Experience replay (Chaudhry et al. 2019; an emotune addition to Online-LoRA): keep a "
                        "uniform reservoir sample of this many of the examples seen so far, and train on "
                        "`stream.replay_batch` of them with every incoming batch. Needs no task boundaries. Any "
                        "strategy but joint; 0: off (the paper).")
    replay_batch: int = _f(16, "Replay: reservoir examples trained on with each incoming batch.")
    boundary_tolerance: int = _f(30, "A true boundary counts as detected when a plateau falls within this many "
                                     "batches from it.")
    max_length: int = _f(128, "Truncate texts to this many tokens.")
    checkpoint_every: int = _f(50, "Save the learner's state every this many steps (and at each segment's end), "
                                   "so that running the same command again resumes an interrupted stream. 0: only "
                                   "at segment ends.")
    seed: int = _f(42, "Seeds the samples, the order of the stream, the model's initialisation and dropout "
                       "(train.seed is set to it).")
    data_dir: str | None = _f(None, "Local root holding emotion/, mr/, semeval2017a/; default $EMOTUNE_DATA_DIR.")

    def __post_init__(self) -> None:
        STREAMS.get(self.kind)
        STRATEGIES.get(self.strategy)
        sizes = self.segment_size if isinstance(self.segment_size, list) else [self.segment_size]
        if not sizes:
            raise ConfigError("stream.segment_size must be a whole number or a list of them, one per segment")
        for n in sizes:
            _at_least("stream.segment_size", n, 1)
        for name in ("eval_size", "batch_size", "boundary_tolerance", "max_length"):
            _at_least(f"stream.{name}", getattr(self, name), 1)
        _at_least("stream.window", self.window, 2)
        _at_least("stream.hard_buffer", self.hard_buffer, 0)
        _at_least("stream.replay", self.replay, None)  # whole numbers; check_settings has their ranges
        _at_least("stream.replay_batch", self.replay_batch, None)
        _at_least("stream.checkpoint_every", self.checkpoint_every, 0)
        _at_least("stream.seed", self.seed, None)
        _positive("stream.mean_threshold", self.mean_threshold)
        _positive("stream.variance_threshold", self.variance_threshold)
        _in_range("stream.reg_weight", self.reg_weight, 0, None)
        _in_range("stream.head_reg_weight", self.head_reg_weight, 0, None)
        if self.eval_split not in EVAL_SPLITS:
            raise ConfigError(f"stream.eval_split must be one of {', '.join(EVAL_SPLITS)}, got {self.eval_split!r}")
        check_settings(self.reg_scope, self.head_reg_weight, self.replay, self.replay_batch, prefix="stream.")
        if not isinstance(self.domains, list) or not self.domains or len(set(self.domains)) != len(self.domains):
            raise ConfigError("stream.domains must be a list of different data sets, e.g. [mr, semeval2017a, emotion]")
        unknown = [d for d in self.domains if d not in DOMAIN_MAPS]
        if unknown:
            raise ConfigError(f"stream.domains: no label map for {', '.join(map(str, unknown))} "
                              f"(mapped: {', '.join(DOMAIN_MAPS)})")
        if not isinstance(self.groups, list) or not self.groups or \
                not all(isinstance(g, list) and g for g in self.groups):
            raise ConfigError("stream.groups must be a list of non-empty class lists, e.g. "
                              "[[sadness, joy], [love, anger]]")
        classes = [c for g in self.groups for c in g]
        if set(classes) - set(EMOTION_LABELS) or len(set(classes)) != len(classes):
            raise ConfigError(f"stream.groups must name each of Emotion's classes ({', '.join(EMOTION_LABELS)}) "
                              f"at most once, got {self.groups}")


@dataclass
class StreamRun:
    """A stream config file: the ``stream`` section plus a run's model, method and train sections."""

    stream: StreamConfig = field(default_factory=StreamConfig)
    run: RunConfig = field(default_factory=RunConfig)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "StreamRun":
        if d is not None and not isinstance(d, dict):
            raise ConfigError(f"a stream config is a mapping of sections (stream, model, method, train), got "
                              f"{type(d).__name__}")
        d = dict(d or {})
        stream = _build(StreamConfig, d.pop("stream", None), "stream")
        extra = sorted({"data", "multitask"} & set(d))
        if extra:
            raise ConfigError(f"a stream config takes its data from the stream section (stream.kind, stream.data_dir, "
                              f"stream.max_length); remove the {', '.join(extra)} section")
        return cls(stream, RunConfig.from_dict(d))

    @classmethod
    def from_yaml(cls, path: str | Path) -> "StreamRun":
        _, spec = read_yaml(path, "stream config")
        try:
            return cls.from_dict(spec)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        run = self.run.to_dict()
        return {"stream": dataclasses.asdict(self.stream), **{k: run[k] for k in ("model", "method", "train")}}

    def override(self, assignments: list[str]) -> "StreamRun":
        """``stream.field=value`` sets the stream section (values parsed as YAML); other sections as ``--set``
        does for runs."""
        stream = dataclasses.asdict(self.stream)
        rest = []
        for a in assignments:
            key, _, raw = a.partition("=")
            if not key.strip().startswith("stream."):
                rest.append(a)
                continue
            name = key.strip()[len("stream."):]
            try:
                value = yaml.safe_load(raw)
            except yaml.YAMLError as e:
                if name not in TEXT_FIELDS:
                    raise ConfigError(f"bad override {a!r}: not a YAML value ({yaml_error_line(e)}); "
                                      "quote it") from None
                value = raw
            stream[name] = raw.strip() if name in TEXT_FIELDS and value is not None else value  # a path as typed
        return StreamRun(_build(StreamConfig, stream, "stream"), self.run.override(rest) if rest else self.run)

    def with_stream(self, **values: Any) -> "StreamRun":
        """A copy with stream fields set to Python values as given (no YAML parsing); None leaves a field as is."""
        stream = {**dataclasses.asdict(self.stream), **{k: v for k, v in values.items() if v is not None}}
        return StreamRun(_build(StreamConfig, stream, "stream"), self.run)


# ---- streams --------------------------------------------------------------------------------------
def _sizes(cfg: StreamConfig, n: int) -> list[int]:
    """Each of the ``n`` segments' training size."""
    if not isinstance(cfg.segment_size, list):
        return [cfg.segment_size] * n
    if len(cfg.segment_size) != n:
        raise ConfigError(f"stream.segment_size lists {len(cfg.segment_size)} sizes for a stream of {n} segments")
    return cfg.segment_size


def _segment(name: str, train: Split, held_out: Split, size: int, cfg: StreamConfig) -> Segment:
    """A seeded sample of ``size`` training examples and at most ``stream.eval_size`` held-out ones."""
    if len(train) < size:
        raise DataError(f"{name}: {len(train)} training examples, fewer than the segment's {size} "
                        "(stream.segment_size)")
    if not len(held_out):
        raise DataError(f"{name}: no held-out examples to evaluate the segment on")
    return Segment(name, train.head(size, cfg.seed), held_out.head(cfg.eval_size, cfg.seed))


def _pool_and_held_out(data, cfg: StreamConfig) -> tuple[Split, Split]:
    """The training pool and the held-out split ``stream.eval_split``; a data set without that split (SemEval-2017
    4A has no test split) has ``stream.eval_size`` examples carved from its training split (seeded)."""
    if cfg.eval_split in data.splits:
        return data["train"], data[cfg.eval_split]
    train = data["train"]
    return train.carve(min(0.5, cfg.eval_size / max(len(train), 1)), cfg.seed)


def _mapped(split: Split, to_shared: list[int]) -> Split:
    return Split(list(split.texts), [to_shared[y] for y in split.labels])


def _load(name: str, cfg: StreamConfig):
    return load_data(DataConfig(name=name, data_dir=cfg.data_dir, max_length=cfg.max_length), seed=cfg.seed)


@STREAMS.register("domain-drift")
def domain_drift(cfg: StreamConfig) -> Stream:
    """MR -> SemEval-2017 4A -> Emotion (or ``stream.domains``' order), each mapped by DOMAIN_MAPS onto
    positive/negative/other."""
    segments = []
    for name, size in zip(cfg.domains, _sizes(cfg, len(cfg.domains))):
        data = _load(name, cfg)
        unmapped = [label for label in data.label_names if label not in DOMAIN_MAPS[name]]
        if unmapped:
            raise DataError(f"data set {name!r}: label(s) {', '.join(unmapped)} have no map to "
                            f"{'/'.join(SHARED_LABELS)}")
        to_shared = [SHARED_LABELS.index(DOMAIN_MAPS[name][label]) for label in data.label_names]
        pool, held_out = _pool_and_held_out(data, cfg)
        segments.append(_segment(name, _mapped(pool, to_shared), _mapped(held_out, to_shared), size, cfg))
    return Stream("domain-drift", list(SHARED_LABELS), segments, {d: DOMAIN_MAPS[d] for d in cfg.domains})


@STREAMS.register("class-incremental")
def class_incremental(cfg: StreamConfig) -> Stream:
    """Emotion's classes arriving in ``stream.groups``; labels keep their ids, the head has all six outputs."""
    data = _load("emotion", cfg)
    segments = []
    for group, size in zip(cfg.groups, _sizes(cfg, len(cfg.groups))):
        ids = {data.label_names.index(c) for c in group}

        def only(split: Split) -> Split:
            keep = [i for i, y in enumerate(split.labels) if y in ids]
            return Split([split.texts[i] for i in keep], [split.labels[i] for i in keep])

        pool, held_out = _pool_and_held_out(data, cfg)
        segments.append(_segment("+".join(group), only(pool), only(held_out), size, cfg))
    return Stream("class-incremental", list(data.label_names), segments, {"+".join(g): g for g in cfg.groups})


# ---- metrics ----------------------------------------------------------------------------------------
def continual_metrics(acc: list[list[float]]) -> dict:
    """Final average accuracy, BWT and forgetting of an accuracy matrix (row i: after segment i, segments 0..i);
    BWT and forgetting are None with fewer than two rows."""
    if not acc:
        return {"final_average_accuracy": None, "bwt": None, "forgetting": None}
    k, final = len(acc), acc[-1]
    earlier = range(k - 1)
    return {
        "final_average_accuracy": sum(final) / len(final),
        "bwt": sum(final[j] - acc[j][j] for j in earlier) / (k - 1) if k > 1 else None,
        "forgetting": sum(max(acc[i][j] for i in range(j, k - 1)) - final[j] for j in earlier) / (k - 1)
        if k > 1 else None,
    }


def match_plateaus(plateaus: list[int], boundaries: list[int], tolerance: int) -> dict:
    """How many true boundaries (steps) had a plateau within ``tolerance`` batches from them, and each one's delay
    to its first plateau there (None: none)."""
    delays = [next((p - b for p in sorted(plateaus) if b <= p < b + tolerance), None) for b in boundaries]
    return {"boundaries": boundaries, "tolerance": tolerance, "matched": sum(d is not None for d in delays),
            "delays": delays}


# ---- the run ----------------------------------------------------------------------------------------
def _schedule(stream: Stream, lengths: list[int], batch_size: int, shuffled: bool,
              seed: int) -> tuple[list[list[int]], list[int]]:
    """(batches of global example indices, the step that ends each segment). Sequential: each segment's examples
    shuffled within it (batches of similar lengths); shuffled: all of them together, each segment ending at its
    share of the examples, as a share of the steps."""
    starts = [0]
    for seg in stream.segments:
        starts.append(starts[-1] + len(seg.train))
    if shuffled:
        gen = torch.Generator().manual_seed(seed)
        order = batches(lengths, batch_size, shuffle=True, generator=gen)
        total = len(order)
        ends = [max(1, round(total * starts[k + 1] / starts[-1])) for k in range(len(stream.segments))]
        return order, ends
    order, ends = [], []
    for k in range(len(stream.segments)):
        gen = torch.Generator().manual_seed(seed * 1000 + k)
        local = batches(lengths[starts[k]:starts[k + 1]], batch_size, shuffle=True, generator=gen)
        order += [[starts[k] + i for i in b] for b in local]
        ends.append(len(order))
    return order, ends


def _accuracy(model, data: Encoded, batch_size: int, device, pad_id: int, dtype) -> float:
    logits = predict_logits(model, data, batch_size, device, pad_id, dtype)
    return float((logits.argmax(-1) == torch.tensor(data.labels)).float().mean())


def render_markdown(m: dict) -> str:
    """The Markdown table of a stream's metrics (accuracies in percent)."""
    names = [s["name"] for s in m["stream"]["segments"]]
    pct = lambda v: "" if v is None else f"{100 * v:.1f}"  # noqa: E731
    pts = lambda v: "n/a" if v is None else f"{100 * v:+.1f}"  # noqa: E731
    lines = [f"# {m['stream']['kind']} · {m['strategy']}", "",
             f"{m['stream']['description']}", "",
             "| after segment | steps | " + " | ".join(names) + " | average |",
             "|---|---|" + "---:|" * (len(names) + 1)]
    for i, row in enumerate(m["accuracy"]):
        seg = m["stream"]["segments"][i]
        cells = [pct(row[j]) if j < len(row) else "" for j in range(len(names))]
        lines.append(f"| {i + 1} · {names[i]} | {seg['first_step']}-{seg['last_step']} | " + " | ".join(cells)
                     + f" | {pct(sum(row) / len(row))} |")
    p, t = m["plateaus"], m["time"]
    forgetting = "n/a" if m["forgetting"] is None else f"{100 * m['forgetting']:.1f}"
    lines += ["", f"- final average accuracy {pct(m['final_average_accuracy']) or 'n/a'}%; BWT {pts(m['bwt'])} points; "
                  f"forgetting {forgetting} points",
              f"- plateaus detected at steps {', '.join(map(str, p['steps'])) or 'none'} "
              f"({len(p['steps'])}; {len(p['merges'])} merged and restarted)"]
    if p["boundaries"]:
        lines.append(f"- true boundaries at steps {', '.join(map(str, p['boundaries']))}: {p['matched']} of "
                     f"{len(p['boundaries'])} followed by a plateau within {p['tolerance']} batches")
    lines.append(f"- wall time {t['wall_s']:.0f} s (loading {t['load_s']:.0f} s, training {t['train_s']:.0f} s, "
                 f"evaluation {t['eval_s']:.0f} s); {m['steps_done']} of {m['steps']} steps; status {m['status']}")
    return "\n".join(lines) + "\n"


def online_settings(s: StreamConfig, run: RunConfig, strategy: Strategy, default_lr: float) -> OnlineSettings:
    """The learner's settings: the optimiser from the train section (the method's rate by default), what the
    strategy switches on, and the stream section's detector and regulariser."""
    return OnlineSettings(
        lr=run.train.lr if run.train.lr is not None else default_lr, weight_decay=run.train.weight_decay,
        betas=tuple(run.train.betas), max_grad_norm=run.train.max_grad_norm, window=s.window,
        mean_threshold=s.mean_threshold, variance_threshold=s.variance_threshold, merge=strategy.merge,
        regularise=strategy.regularise and (s.reg_weight > 0 or s.head_reg_weight > 0), reg_weight=s.reg_weight,
        reg_scope=s.reg_scope, head_reg_weight=s.head_reg_weight,
        hard_buffer=s.hard_buffer if strategy.hard_buffer else 0, hard_loss=s.hard_loss, labels_trick=s.labels_trick,
        replay=0 if strategy.shuffled else s.replay, replay_batch=s.replay_batch, replay_seed=s.seed)


def _finished(out: Path) -> bool:
    try:
        return bool(json.loads((out / STREAM_METRICS).read_text(encoding="utf-8")).get("completed"))
    except (OSError, ValueError):
        return False


def _same_config(out: Path, cfg: StreamRun) -> bool:
    """Whether ``out``'s stream.yaml holds ``cfg`` (both read back from YAML, so tuples and lists compare equal)."""
    try:
        saved = yaml.safe_load((out / STREAM_CONFIG).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return False
    return saved == yaml.safe_load(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def _prepare(out: Path, cfg: StreamRun, overwrite: bool) -> bool:
    """Refuse a finished stream in ``out`` without ``overwrite``, and an interrupted one with another config; True
    when there is a checkpoint to resume, else clear what an earlier (or interrupted) stream left."""
    remove_stale_tmp(out)  # a checkpoint's temporary file after a kill -9
    if not overwrite and _finished(out):
        (out / STREAM_CHECKPOINT).unlink(missing_ok=True)  # left by a kill between the final metrics and its removal
        raise RunError(f"{out}: a finished stream is already there; choose another --out or pass --overwrite")
    if not overwrite and (out / STREAM_CHECKPOINT).is_file():
        if not _same_config(out, cfg):
            raise RunError(f"{out}: holds an interrupted stream with a different configuration; "
                           "pass --overwrite to start afresh")
        return True
    for name in STREAM_FILES:
        (out / name).unlink(missing_ok=True)
    return False


def _save_checkpoint(out: Path, learner: OnlineLearner, m: dict, records: list[dict]) -> None:
    """The learner's state, the metrics and step records so far, and the RNG state (dropout, fresh adapters), in
    one safetensors file (written then renamed: a kill leaves the previous checkpoint)."""
    tensors, values = learner.state()
    tensors["rng.torch"] = torch.get_rng_state()
    if learner.device.type == "cuda":
        tensors["rng.cuda"] = torch.cuda.get_rng_state(learner.device)
    meta = {"learner": json.dumps(values), "metrics": json.dumps(m), "records": json.dumps(records)}
    save_tensors(out / STREAM_CHECKPOINT, tensors, meta)


def _resume(out: Path, learner: OnlineLearner, stream: dict) -> tuple[dict, list[dict]]:
    """Load ``out``'s checkpoint into ``learner`` and the RNGs; (the metrics, the step records) it saved. The
    stream just built (``stream``: segments, sizes, steps, labels) must be the checkpoint's."""
    tensors, meta = load_tensors(out / STREAM_CHECKPOINT)
    m = json.loads(meta["metrics"])
    if m["stream"] != stream:
        raise RunError(f"{out}: the interrupted stream was built from other data (its segments or texts differ); "
                       "restore the data or pass --overwrite to start afresh")
    rng = {k: tensors.pop(k) for k in ("rng.torch", "rng.cuda") if k in tensors}
    learner.load_state(tensors, json.loads(meta["learner"]))
    torch.set_rng_state(rng["rng.torch"])
    if "rng.cuda" in rng and learner.device.type == "cuda":
        torch.cuda.set_rng_state(rng["rng.cuda"], learner.device)
    return m, json.loads(meta["records"])


def _new_metrics(cfg: StreamRun, stream: Stream, strategy: Strategy, settings: OnlineSettings, firsts: list[int],
                 ends: list[int], steps: int, load_s: float, fingerprint: str) -> dict:
    """stream.json's contents before the first step. ``stream`` (with the data's fingerprint) is what a resumed
    stream must match."""
    s = cfg.stream
    description = (f"{strategy.name}: {strategy.description}; {len(stream.segments)} segments of "
                   f"{', '.join(str(len(seg.train)) for seg in stream.segments)} training examples in batches of "
                   f"{s.batch_size}, {steps} steps")
    return {
        "completed": False, "status": "running", "strategy": strategy.name,
        "stream": {"kind": stream.kind, "description": description, "label_names": stream.label_names,
                   "labels": stream.labels, "data": fingerprint,
                   "segments": [{"name": seg.name, "train": len(seg.train), "eval": len(seg.eval),
                                 "first_step": f, "last_step": e}
                                for seg, f, e in zip(stream.segments, firsts, ends)]},
        "config": cfg.to_dict(), "lr": settings.lr, "steps": steps, "steps_done": 0, "accuracy": [],
        "average_accuracy": [], **continual_metrics([]),
        "plateaus": {"steps": [], "merges": [], **match_plateaus([], [] if strategy.shuffled else firsts[1:],
                                                                s.boundary_tolerance), "per_segment": []},
        "time": {"wall_s": 0.0, "load_s": load_s, "train_s": 0.0, "eval_s": 0.0}, "resumed_from_step": None,
    }


def run_stream(cfg: StreamRun, out: str | Path, *, overwrite: bool = False,
               echo: Callable[[str], None] | None = None) -> dict:
    """Build the stream, train on it once with ``stream.strategy`` and write DIR/stream.json, stream.md (the
    table), steps.jsonl (every step's loss, window statistics and plateau) and stream.yaml (the config). The
    metrics are rewritten after every segment, and the learner's state saved at segment ends and every
    ``stream.checkpoint_every`` steps: run again with the same config, an interrupted stream resumes from its
    checkpoint and ends as it would have without the interruption."""
    start = time.perf_counter()
    s, run = cfg.stream, RunConfig.from_dict(cfg.run.to_dict())
    strategy = STRATEGIES.get(s.strategy)
    method, _ = method_options(run.method)  # a bad method fails before any data is read
    if strategy.merge:
        check_restartable(run.method)
    run.train.seed = s.seed
    out = Path(out)
    with run_lock(out, "emotune stream"):
        resume = _prepare(out, cfg, overwrite)
        stream = STREAMS.get(s.kind)(s)
        texts = [t for seg in stream.segments for t in seg.train.texts]
        model, tokenizer, _ = build_model(run, len(stream.label_names), texts=texts)
        pad = tokenizer.pad_token_id or 0
        ids = encode(tokenizer, texts, s.max_length)
        labels = [y for seg in stream.segments for y in seg.train.labels]
        evals = [Encoded(encode(tokenizer, seg.eval.texts, s.max_length), list(seg.eval.labels))
                 for seg in stream.segments]
        order, ends = _schedule(stream, [len(x) for x in ids], s.batch_size, strategy.shuffled, s.seed)
        device = resolve_device(run.train.device)
        dtype = resolve_precision(run.train.precision, device)
        if run.train.threads:
            torch.set_num_threads(run.train.threads)
        settings = online_settings(s, run, strategy, method.lr)
        torch.manual_seed(s.seed)
        learner = OnlineLearner(model, run.method, settings, device, dtype, pad)
        load_s = time.perf_counter() - start
        write_text(out / STREAM_CONFIG, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        firsts = [1] + [e + 1 for e in ends[:-1]]
        held_out = Encoded([x for e in evals for x in e.ids], [y for e in evals for y in e.labels])
        fingerprint = data_fingerprint(Encoded(ids + held_out.ids, labels + held_out.labels), stream.label_names)
        m = _new_metrics(cfg, stream, strategy, settings, firsts, ends, len(order), load_s, fingerprint)
        records: list[dict] = []
        saved = None  # the step of the last checkpoint
        if resume:
            m, records = _resume(out, learner, m["stream"])
            saved = m["resumed_from_step"] = m["steps_done"]
            m["time"]["load_s"] += load_s
        earlier_s = m["time"]["wall_s"]  # wall time before this run (a resumed stream's earlier runs)

        def write(status: str) -> None:
            p = m["plateaus"]
            p.update(match_plateaus(p["steps"], p["boundaries"], s.boundary_tolerance))
            p["per_segment"] = [sum(f <= x <= e for x in p["steps"]) for f, e in zip(firsts, ends)][:len(m["accuracy"])]
            m.update(continual_metrics(m["accuracy"]), status=status, completed=status == "complete")
            m["time"]["wall_s"] = earlier_s + time.perf_counter() - start
            write_text(out / STREAM_STEPS, "".join(json.dumps(r) + "\n" for r in records))
            write_json(out / STREAM_METRICS, m)
            write_text(out / STREAM_TABLE, render_markdown(m))

        def checkpoint() -> int:
            m["time"]["wall_s"] = earlier_s + time.perf_counter() - start
            _save_checkpoint(out, learner, m, records)
            return m["steps_done"]

        def end_segment(segment: int, step: int) -> None:
            """Score every segment seen so far, add the row and write the metrics."""
            t0 = time.perf_counter()
            row = [_accuracy(learner.model, evals[j], run.train.eval_batch_size, device, pad, dtype)
                   for j in range(segment + 1)]
            m["time"]["eval_s"] += time.perf_counter() - t0
            m["accuracy"].append(row)
            m["average_accuracy"].append(sum(row) / len(row))
            write("complete" if segment == len(stream.segments) - 1 else "running")
            if echo:
                names = [seg.name for seg in stream.segments]
                echo(f"segment {segment + 1}/{len(names)} {names[segment]}: steps {firsts[segment]}-{step}, "
                     f"{m['plateaus']['per_segment'][segment]} plateau(s); accuracy "
                     + ", ".join(f"{names[j]} {100 * a:.1f}" for j, a in enumerate(row)))

        segment = len(m["accuracy"])
        try:
            with stop_requests() as stop:
                for step in range(m["steps_done"] + 1, len(order) + 1):
                    idx = order[step - 1]
                    t0 = time.perf_counter()
                    record = learner.step([ids[i] for i in idx], [labels[i] for i in idx])
                    m["time"]["train_s"] += time.perf_counter() - t0
                    records.append(record)
                    m["steps_done"] = step
                    if record["plateau"]:
                        m["plateaus"]["steps"].append(step)
                    if "merge" in record:
                        m["plateaus"]["merges"].append(record["merge"])
                    ended = segment < len(ends) and step == ends[segment]
                    while segment < len(ends) and step == ends[segment]:
                        end_segment(segment, step)
                        segment += 1
                    stopping = stop["stop"] and step < len(order)  # Ctrl-C / SIGTERM: save this step, then leave
                    every = s.checkpoint_every and step % s.checkpoint_every == 0
                    if step < len(order) and (ended or stopping or every):
                        saved = checkpoint()
                    if stopping:
                        raise KeyboardInterrupt
        except KeyboardInterrupt:  # a first Ctrl-C / SIGTERM checkpoints after its step; a second one may come
            # mid-step, with the learner's state half updated: the last checkpoint stands
            write("interrupted")
            then = f"run the same command again to resume from its checkpoint at step {saved}" if saved else \
                "run again to start afresh"
            raise RunError(f"interrupted at step {m['steps_done']}; {out / STREAM_METRICS} keeps the "
                           f"{len(m['accuracy'])} finished segment(s); {then}") from None
        (out / STREAM_CHECKPOINT).unlink(missing_ok=True)  # complete: nothing to resume
    return m
