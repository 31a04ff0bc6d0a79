"""Resource figures of a run: peak memory and parameter counts (quality metrics belong to the tasks)."""

from __future__ import annotations

import resource
import sys

import torch


def reset_peak_memory(device: torch.device) -> None:
    """Start a fresh peak-memory measurement, so runs one after another in one process (grid cells, search
    trials) each report their own peak rather than the process's peak so far."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # Linux: "5" resets the process's peak resident set size (VmHWM)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_memory_mb(device: torch.device) -> float:
    """Peak resident memory since the last ``reset_peak_memory`` (CPU; the process's peak where it cannot be
    reset) or peak allocated memory (CUDA), in MB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # KiB
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux


def _numel(p: torch.Tensor) -> int:
    """A 4-bit bitsandbytes weight (QLoRA) counts the weights it stands for, not its packed bytes."""
    state = getattr(p, "quant_state", None)
    return torch.Size(state.shape).numel() if state is not None else p.numel()


def parameter_counts(model: torch.nn.Module) -> dict:
    total = sum(_numel(p) for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable_params": trainable, "total_params": total,
            "trainable_pct": 100.0 * trainable / max(total, 1)}
