"""Inference speed and accuracy: emotune's Predictor in each precision vs the Transformers pipeline and
ONNX Runtime, on the Emotion test split, with the same model and thread count, in one process.

The model is a run fine-tuned with ``--method full --set model.pooling=pooler``: its weights map one to
one onto ``BertForSequenceClassification`` (encoder -> bert, head -> classifier), which is what the
pipeline and the ONNX export run. Every variant classifies all test sentences (tokenization
included) in each repetition; repetitions are interleaved, the median is reported.

    pip install -e ".[bench]"
    python benchmarks/inference.py --run runs/full-pooler --data-dir ../shared/data --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/machine.py
from machine import machine_line  # noqa: E402

warnings.filterwarnings("ignore")


def hf_classifier(run, folder: Path):
    """The run as a BertForSequenceClassification (saved to ``folder`` with its tokenizer)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from emotune.inference.predictor import merge_adapter

    if run.config.model.pooling != "pooler":
        sys.exit(f"{run.path}: the comparison needs a run trained with model.pooling=pooler")
    model, tokenizer = run.load_model()
    model = merge_adapter(model).eval()
    cfg = model.encoder.config
    cfg.num_labels = len(run.labels)
    cfg.id2label = dict(enumerate(run.labels))
    cfg.label2id = {name: i for i, name in enumerate(run.labels)}
    cfg.architectures = ["BertForSequenceClassification"]
    hf = AutoModelForSequenceClassification.from_config(cfg)
    state = {f"bert.{k}": v for k, v in model.encoder.state_dict().items()}
    state.update({"classifier.weight": model.head.weight, "classifier.bias": model.head.bias})
    hf.load_state_dict(state, strict=True)
    hf.eval()
    probe = tokenizer(["i feel wonderful today", "this is terrifying"], padding=True, return_tensors="pt")
    with torch.no_grad():
        diff = (hf(**probe).logits - model(probe["input_ids"], probe["attention_mask"])).abs().max().item()
    assert diff < 1e-4, f"the Transformers model does not reproduce the run ({diff})"
    hf.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return hf, tokenizer


def onnx_sessions(hf, tokenizer, folder: Path, threads: int) -> dict:
    """float32 export and its dynamic int8 quantization (ONNX Runtime's quantize_dynamic)."""
    import onnxruntime as ort
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32, int8 = folder / "model.onnx", folder / "model-int8.onnx"
    probe = tokenizer(["i feel wonderful today", "this is terrifying"], padding=True, return_tensors="pt")
    axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}, "logits": {0: "batch"}}
    with torch.no_grad():
        torch.onnx.export(hf, (probe["input_ids"], probe["attention_mask"]), str(fp32),
                          input_names=["input_ids", "attention_mask"], output_names=["logits"],
                          dynamic_axes=axes, opset_version=17, dynamo=False)
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
    sessions = {}
    for name, path in (("ONNX Runtime fp32", fp32), ("ONNX Runtime int8", int8)):
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sessions[name] = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return sessions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a full fine-tuning run with model.pooling=pooler")
    ap.add_argument("--data-dir", default=os.environ.get("EMOTUNE_DATA_DIR", "../shared/data"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=32, help="emotune's and ONNX Runtime's batch size")
    ap.add_argument("--precisions", default="fp32,bf16-autocast,bf16,int8")
    ap.add_argument("--streams", type=int, default=None, help="emotune's streams (default: its own, 2 on 2 threads)")
    ap.add_argument("--no-compile", action="store_true", help="skip the bf16 + torch.compile variant")
    ap.add_argument("--one-stream", action="store_true", help="also run bf16 with 1 stream x all threads")
    ap.add_argument("--pipeline-batch-size", type=int, default=32)
    ap.add_argument("--no-pipeline", action="store_true")
    ap.add_argument("--no-onnx", action="store_true")
    ap.add_argument("--limit", type=int, default=None, help="only the first N test sentences")
    ap.add_argument("--max-minutes", type=float, default=30, help="stop adding repetitions after this long")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from emotune.config import DataConfig
    from emotune.data import load_data
    from emotune.data.encode import batches, collate
    from emotune.inference.predictor import Predictor
    from emotune.runs import Run

    run = Run.open(args.run)
    data = load_data(DataConfig(name="emotion", data_dir=args.data_dir))
    test = data["test"]
    texts, gold = test.texts[: args.limit], test.labels[: args.limit]
    assert data.label_names == run.labels, (data.label_names, run.labels)
    labels = run.labels

    variants: dict[str, callable] = {}  # name -> texts -> predicted label ids
    notes: dict[str, str] = {}
    t0 = time.perf_counter()
    configs = [(p, args.streams, False) for p in args.precisions.split(",") if p]
    if args.one_stream:
        configs.append(("bf16", 1, False))
    if not args.no_compile:
        configs.append(("bf16", args.streams, True))
    for precision, streams, compiled in configs:
        predictor = Predictor(run, precision=precision, batch_size=args.batch_size, streams=streams,
                              compile=compiled)
        name = f"emotune {precision}" + (" + compile" if compiled else "") + \
            (f" ({predictor.streams} stream)" if streams == 1 else "")
        variants[name] = lambda t, p=predictor: p.probabilities(t).argmax(-1).tolist()
        notes[name] = (f"batch {args.batch_size}, length-sorted, {predictor.streams} stream(s) x "
                       f"{max(1, args.threads // predictor.streams)} thread(s)")
    tmp = Path(tempfile.mkdtemp(prefix="emotune-bench-"))
    if not (args.no_pipeline and args.no_onnx):
        hf, tokenizer = hf_classifier(run, tmp / "hf")
    if not args.no_pipeline:
        from transformers import pipeline

        pipe = pipeline("text-classification", model=hf, tokenizer=tokenizer, device=-1)
        index = {name: i for i, name in enumerate(labels)}
        variants["pipeline (default)"] = lambda t: [index[r["label"]] for r in pipe(list(t))]
        notes["pipeline (default)"] = "pipeline('text-classification')"
        bs = args.pipeline_batch_size
        variants[f"pipeline batch_size={bs}"] = lambda t: [index[r["label"]] for r in pipe(list(t), batch_size=bs)]
        notes[f"pipeline batch_size={bs}"] = "same, batch_size set"
    if not args.no_onnx:
        import numpy as np

        for name, sess in onnx_sessions(hf, tokenizer, tmp, args.threads).items():
            def run_onnx(t, sess=sess):
                ids = tokenizer(list(t), truncation=True, max_length=run.config.data.max_length)["input_ids"]
                out = np.empty(len(ids), dtype=np.int64)
                for idx in batches([len(x) for x in ids], args.batch_size, shuffle=False):
                    b = collate([ids[i] for i in idx], tokenizer.pad_token_id or 0)
                    logits = sess.run(None, {"input_ids": b["input_ids"].numpy(),
                                             "attention_mask": b["attention_mask"].numpy()})[0]
                    out[idx] = logits.argmax(-1)
                return out.tolist()

            variants[name] = run_onnx
            notes[name] = f"exported model, batch {args.batch_size}, length-sorted"
    print(f"{len(texts)} sentences, {args.threads} threads, model {run.path} "
          f"(set up in {time.perf_counter() - t0:.0f} s)", file=sys.stderr)

    for f in variants.values():  # warm-up
        f(texts[:64])
    speeds: dict[str, list[float]] = {n: [] for n in variants}
    accuracy: dict[str, float] = {}
    start = time.perf_counter()
    for rep in range(args.reps):
        for name, f in variants.items():
            t = time.perf_counter()
            pred = f(texts)
            speeds[name].append(len(texts) / (time.perf_counter() - t))
            accuracy[name] = sum(int(p == g) for p, g in zip(pred, gold)) / len(gold)
        print(f"repetition {rep + 1}: " + ", ".join(f"{n} {s[-1]:.0f}/s" for n, s in speeds.items()), file=sys.stderr)
        if (time.perf_counter() - start) / 60 > args.max_minutes:
            print("time limit reached", file=sys.stderr)
            break

    median = {n: statistics.median(s) for n, s in speeds.items()}
    machine = machine_line(threads=args.threads)  # after the repetitions, so it does not heat or disturb them
    base = median.get("pipeline (default)")
    onnx8 = median.get("ONNX Runtime int8")
    ref = accuracy.get("emotune fp32")
    print(f"\nEmotion test split ({len(texts)} sentences), {args.threads} threads, "
          f"median of {len(next(iter(speeds.values())))} repetitions\n")
    for name, note in notes.items():
        print(f"  {name}: {note}")
    print(f"\n{machine}\n")
    print("| variant | sentences/s | x pipeline default | x ONNX int8 | accuracy | vs fp32 (points) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in variants:
        cols = [f"{median[name]:,.0f}", f"{median[name] / base:.2f}" if base else "",
                f"{median[name] / onnx8:.2f}" if onnx8 else "", f"{100 * accuracy[name]:.2f}%",
                f"{100 * (accuracy[name] - ref):+.2f}" if ref is not None else ""]
        print(f"| {name} | " + " | ".join(cols) + " |")
    if args.json:
        args.json.write_text(json.dumps({"sentences": len(texts), "threads": args.threads, "speeds": speeds,
                                         "median": median, "accuracy": accuracy, "notes": notes,
                                         "machine": machine}, indent=2))


if __name__ == "__main__":
    main()
