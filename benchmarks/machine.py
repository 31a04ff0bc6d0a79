"""Name the machine a benchmark ran on: CPU model, threads, float32 and bfloat16 matmul GFLOP/s.

Absolute speeds differ 2-3x between machines that report the same CPU model (cloud "AMD EPYC"
2-core instances, for example), so every benchmark prints this line beside its figures:

    python benchmarks/machine.py            # prints the line
    from machine import machine_line        # inside benchmarks/ scripts
"""

from __future__ import annotations

import platform
import statistics
import time


BF16_FLAGS = ("avx512_bf16", "amx_bf16", "avx512_vnni")


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (Linux) with its family/model numbers and bfloat16/VNNI flags,
    e.g. 'AMD EPYC (family 26 model 2; avx512_bf16 avx512_vnni)'; else platform.processor()."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor is enough
                key, _, value = line.partition(":")
                fields.setdefault(key.strip().lower(), value.strip())
    except OSError:
        pass
    if "model name" not in fields:
        return platform.processor() or platform.machine() or "unknown CPU"
    flags = [f for f in BF16_FLAGS if f in fields.get("flags", "").split()]
    extra = f"family {fields.get('cpu family', '?')} model {fields.get('model', '?')}"
    return f"{fields['model name']} ({extra}; {' '.join(flags) or 'no bf16/VNNI flags'})"


def matmul_gflops(dtype, n: int = 1024, reps: int = 7, inner: int = 4) -> float:
    """Median GFLOP/s of torch.matmul on two n x n matrices of `dtype` (2 n^3 flops per product)."""
    import torch

    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(dtype)
    b = torch.randn(n, n, generator=gen).to(dtype)
    torch.matmul(a, b)  # warm-up: kernel selection, page faults
    rates = []
    for _ in range(reps):
        start = time.perf_counter()
        for _ in range(inner):
            torch.matmul(a, b)
        elapsed = time.perf_counter() - start
        rates.append(2 * n**3 * inner / elapsed / 1e9)
    return statistics.median(rates)


def measure(n: int = 1024, threads: int | None = None) -> dict:
    """CPU model, torch thread count and the fp32/bf16 matmul GFLOP/s of this machine (a few seconds).

    `threads` sets torch's intra-op threads for the measurement only (default: the current setting).
    """
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return {
            "cpu": cpu_model(),
            "threads": torch.get_num_threads(),
            "size": n,
            "fp32_gflops": matmul_gflops(torch.float32, n),
            "bf16_gflops": matmul_gflops(torch.bfloat16, n),
            "torch": torch.__version__,
        }
    finally:
        torch.set_num_threads(before)


def gpu_line(n: int = 8192, reps: int = 10) -> str:
    """The GPU's name and its bf16/fp16/fp32 matmul TFLOP/s (mean of `reps` n x n products after warm-ups)."""
    import torch

    rates = {}
    for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp32", torch.float32)):
        a = torch.randn(n, n, device="cuda").to(dtype)
        b = torch.randn(n, n, device="cuda").to(dtype)
        for _ in range(3):
            a @ b
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        torch.cuda.synchronize()
        rates[name] = 2 * n**3 * reps / (time.perf_counter() - start) / 1e12
    return (f"gpu: {torch.cuda.get_device_name()}; matmul {n}x{n} TFLOP/s: "
            + ", ".join(f"{k} {v:.0f}" for k, v in rates.items()))


def machine_line(info: dict | None = None, threads: int | None = None) -> str:
    """One line naming the machine: CPU model, torch threads and version, fp32 and bf16 matmul GFLOP/s (and
    the GPU's name and matmul TFLOP/s where one is present)."""
    import torch

    info = info or measure(threads=threads)
    line = (
        f"machine: {info['cpu']}, {info['threads']} torch threads, torch {info['torch']}; "
        f"matmul {info['size']}x{info['size']} median GFLOP/s: fp32 {info['fp32_gflops']:.0f}, "
        f"bf16 {info['bf16_gflops']:.0f}"
    )
    return line + ("; " + gpu_line() if torch.cuda.is_available() else "")


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Print this machine's CPU model and matmul GFLOP/s.")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    print(machine_line(threads=ap.parse_args().threads))
