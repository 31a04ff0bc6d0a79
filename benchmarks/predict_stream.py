"""Streaming corpus prediction: texts/s and memory of `emotune predict RUN --file BIG.txt --out preds.jsonl`.

Writes a file of --lines lines (the Emotion training texts repeated), streams it through a finished run in
chunks (emotune.inference.stream.predict_file) and prints texts/s and memory: the resident set after loading
the model, after the first chunk and after the last, and the peak. Memory is constant when the last chunk's
RSS is that of the first, whatever --lines is. Trains nothing.

    python benchmarks/predict_stream.py runs/lora --data-dir ../shared/data [--lines 100000 --chunk 4096]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/machine.py
from machine import machine_line  # noqa: E402


def status_mb(field: str) -> float:
    """A memory figure of this process from /proc/self/status (VmRSS: now, VmHWM: peak) in MB; 0 elsewhere."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024  # KiB
    except OSError:
        pass
    return 0.0


def write_corpus(path: Path, data_dir: str, lines: int) -> None:
    from emotune.config import DataConfig
    from emotune.data import load_data

    texts = list(load_data(DataConfig(name="emotion", data_dir=data_dir))["train"].texts)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(lines):
            f.write(texts[i % len(texts)] + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", help="a finished run folder")
    ap.add_argument("--data-dir", default="../shared/data")
    ap.add_argument("--lines", type=int, default=100_000)
    ap.add_argument("--chunk", type=int, default=4096)
    ap.add_argument("--precision", default=None, help="as `emotune predict --precision` (default: as trained)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()

    from emotune.inference.predictor import Predictor
    from emotune.inference.stream import predict_file

    with tempfile.TemporaryDirectory(prefix="emotune-stream-") as tmp:
        corpus, out = Path(tmp) / "corpus.txt", Path(tmp) / "preds.jsonl"
        write_corpus(corpus, args.data_dir, args.lines)
        predictor = Predictor(args.run, precision=args.precision, threads=args.threads, batch_size=args.batch_size)
        loaded_rss, loaded_peak = status_mb("VmRSS"), status_mb("VmHWM")
        rss: list[float] = []
        s = predict_file(predictor, corpus, out, chunk=args.chunk, progress=False,
                         on_chunk=lambda _: rss.append(status_mb("VmRSS")))
        written = sum(1 for _ in open(out, "rb"))
    assert written == args.lines == s["texts"], (written, args.lines, s["texts"])
    print(f"run {args.run} ({predictor.precision}, batch {args.batch_size}); {s['texts']:,} lines in chunks of "
          f"{args.chunk:,} ({len(rss)} chunks)")
    print(f"{s['texts_per_s']:,.1f} texts/s ({s['seconds']:.1f} s)")
    print(f"RSS MB: after loading the model {loaded_rss:,.0f} (peak so far {loaded_peak:,.0f}); after the first chunk "
          f"{rss[0]:,.0f}; after the last {rss[-1]:,.0f}; highest after a chunk {max(rss):,.0f}; "
          f"peak {s['peak_rss_mb']:,.0f} (+{s['peak_rss_mb'] - loaded_rss:,.0f} over the loaded model)")
    print(machine_line())


if __name__ == "__main__":
    main()
