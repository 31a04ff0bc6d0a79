"""Load test: N concurrent clients against `emotune serve` on loopback, for a bounded time.

Starts `emotune serve` on 127.0.0.1 (a free port), waits until it is healthy, warms it up, then runs N
clients, each on its own keep-alive connection sending one request after another (a sentence from
the Emotion test split per request, by default). Prints throughput, latency percentiles, errors,
the server's batch sizes and its resident memory before, during and after.

    pip install -e ".[bench]"
    python benchmarks/load.py runs/lora --clients 32 --duration 60 --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/machine.py
from machine import machine_line  # noqa: E402

FALLBACK = ["i feel wonderful today", "this is terrifying", "i am so angry right now", "i miss her so much",
            "what a lovely surprise", "i feel a little nervous about tomorrow"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Connection:
    """A minimal HTTP/1.1 keep-alive client (asyncio streams): light enough that the load generator,
    which shares the machine with the server, costs little CPU."""

    def __init__(self, port: int):
        self.port = port
        self.reader = self.writer = None

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        head = (f"{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\n\r\n").encode()
        self.writer.write(head + body)
        await self.writer.drain()
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("connection closed")
        status = int(status_line.split()[1])
        length, close = 0, False
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "connection" and value.strip().lower() == "close":
                close = True
        data = await self.reader.readexactly(length)
        if close:
            self.close()
        return status, data

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


async def client(port: int, texts: list[str], per_request: int, model: str | None, deadline: float,
                 latencies: list[float], errors: list[str], rng: random.Random) -> None:
    conn = Connection(port)
    while time.perf_counter() < deadline:
        payload = {"texts": rng.sample(texts, per_request)}
        if model:
            payload["model"] = model
        t = time.perf_counter()
        try:
            status, body = await asyncio.wait_for(conn.request("POST", "/v1/predict", json.dumps(payload).encode()),
                                                  timeout=10)
            if status != 200:
                errors.append(f"HTTP {status}: {body[:200]!r}")
            else:
                latencies.append(time.perf_counter() - t)
        except (OSError, asyncio.TimeoutError, ConnectionError, asyncio.IncompleteReadError) as e:
            errors.append(f"{type(e).__name__}: {e}")
            conn.close()
            await asyncio.sleep(0.05)
    conn.close()


async def load(port: int, pid: int, args, texts: list[str]) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    rss = [rss_mb(pid)]
    start = time.perf_counter()
    deadline = start + args.duration
    tasks = [asyncio.create_task(client(port, texts, args.texts_per_request, args.model, deadline, latencies,
                                        errors, random.Random(i))) for i in range(args.clients)]
    while time.perf_counter() < deadline:
        await asyncio.sleep(min(5, max(0.0, deadline - time.perf_counter())))
        rss.append(rss_mb(pid))
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=30)
    elapsed = time.perf_counter() - start
    return {"latencies": latencies, "errors": errors, "elapsed": elapsed, "rss_samples": rss}


def scrape(port: int) -> dict:
    import httpx

    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text

    def total(metric: str) -> float:
        return sum(float(v) for v in re.findall(rf"^{metric}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M))

    count = total("emotune_batch_size_count")
    return {"batches": count, "mean_batch": total("emotune_batch_size_sum") / count if count else 0.0,
            "server_5xx": sum(float(v) for v in re.findall(r'emotune_requests_total{[^}]*status="5\d\d"} ([0-9.e+-]+)',
                                                           text))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="run folders for `emotune serve` (RUN or NAME=RUN)")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--duration", type=float, default=60, help="seconds of load (bounded: at most 600)")
    ap.add_argument("--texts-per-request", type=int, default=1)
    ap.add_argument("--model", default=None, help="model name to request (default: the server's first)")
    ap.add_argument("--data-dir", default=os.environ.get("EMOTUNE_DATA_DIR", "../shared/data"))
    ap.add_argument("--warmup", type=float, default=5, help="seconds of warm-up load before measuring")
    ap.add_argument("--serve-args", default="", help="extra `emotune serve` options, e.g. '--precision int8'")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    args.duration = min(args.duration, 600)

    test = Path(args.data_dir) / "emotion" / "test.txt"
    texts = [line.rsplit(";", 1)[0] for line in test.read_text(encoding="utf-8").splitlines()
             if line.strip()] if test.exists() else FALLBACK

    port = free_port()
    cmd = [sys.executable, "-m", "emotune.cli", "serve", *args.runs, "--host", "127.0.0.1", "--port", str(port),
           *args.serve_args.split()]
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        import httpx

        deadline = time.monotonic() + 300
        while True:
            if server.poll() is not None:
                sys.exit(f"emotune serve exited:\n{server.stdout.read()}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                sys.exit("the server did not become healthy in 300 s")
            time.sleep(0.3)
        models = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=10).json()
        rss_loaded = rss_mb(server.pid)
        if args.warmup:
            warm = argparse.Namespace(**{**vars(args), "duration": args.warmup})
            asyncio.run(load(port, server.pid, warm, texts))
        before = scrape(port)
        result = asyncio.run(load(port, server.pid, args, texts))
        after = scrape(port)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()

    machine = machine_line()  # the server has stopped: measured on an idle machine
    lat = sorted(result["latencies"])
    n = len(lat)

    def pct(p: float) -> float:
        return 1000 * lat[min(n - 1, int(round(p / 100 * (n - 1))))] if n else float("nan")

    rss = result["rss_samples"]
    batches = after["batches"] - before["batches"]
    mean_batch = ((after["mean_batch"] * after["batches"] - before["mean_batch"] * before["batches"]) / batches
                  if batches else 0.0)
    per_s = n / result["elapsed"]
    served = " ".join(f"{m['name']} ({m['precision']})" for m in models["models"])
    rows = [
        ("server", f"emotune serve {served}"),
        ("clients x duration", f"{args.clients} x {result['elapsed']:.0f} s, "
                               f"{args.texts_per_request} text(s) per request"),
        ("requests", f"{n:,} ok, {len(result['errors'])} errors"),
        ("throughput", f"{per_s:,.0f} requests/s ({per_s * args.texts_per_request:,.0f} texts/s)"),
        ("latency p50 / p90 / p99 / max",
         f"{pct(50):.0f} / {pct(90):.0f} / {pct(99):.0f} / {1000 * lat[-1] if n else 0:.0f} ms"),
        ("mean latency", f"{1000 * statistics.mean(lat) if n else 0:.0f} ms"),
        ("micro-batches", f"{batches:,.0f}, mean size {mean_batch:.1f}"),
        ("server RSS loaded / start / end / max",
         f"{rss_loaded:,.0f} / {rss[0]:,.0f} / {rss[-1]:,.0f} / {max(rss):,.0f} MB"),
    ]
    print(f"\n{machine}\n")
    print("| load test | |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")
    if result["errors"]:
        print("\nfirst errors:", *result["errors"][:5], sep="\n  ")
    if args.json:
        args.json.write_text(json.dumps({"requests": n, "errors": len(result["errors"]), "elapsed": result["elapsed"],
                                         "p50_ms": pct(50), "p99_ms": pct(99), "rss_mb": rss,
                                         "rss_loaded_mb": rss_loaded, "mean_batch": mean_batch,
                                         "machine": machine}, indent=2))


if __name__ == "__main__":
    main()
