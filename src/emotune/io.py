"""Durable file writes: a killed process (even kill -9, even a power cut) never leaves a half-written file.

Every write goes to a hidden temporary file beside its target, is flushed to disk (fsync), renamed over the
target (atomic on POSIX: readers see the old file or the new one), and the rename itself is made durable by
syncing the folder. Append-only logs (history.jsonl) are appended and synced line by line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

TMP_GLOB = ".*.tmp"  # what `_atomic` leaves behind after a kill -9 (see remove_stale_tmp)


def cache_dir() -> Path:
    """emotune's cache (assembled models, converted GGUF files): $EMOTUNE_CACHE_DIR, else
    $XDG_CACHE_HOME/emotune, else ~/.cache/emotune."""
    root = os.environ.get("EMOTUNE_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "emotune"
    return Path(root).expanduser()


def fsync_dir(folder: Path) -> None:
    """Make renames and new files in ``folder`` durable."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. a platform that cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        _fsync_file(tmp)  # the data is on disk before the rename makes it visible
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def remove_stale_tmp(folder: Path) -> None:
    """Delete temporary files a killed writer left in ``folder`` (they can hold hundreds of MB)."""
    for p in Path(folder).glob(TMP_GLOB):
        if p.is_file():
            p.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    _atomic(path, lambda p: p.write_text(text, encoding="utf-8"))


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def append_jsonl(path: Path, obj: Any) -> None:
    """Append one JSON line and sync it: the cost of a log entry does not grow with the log."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(obj) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: Path) -> list:
    """Every complete line of a JSON Lines file; a last line cut short by a kill is ignored."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").split("\n"):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError:
                break
    return rows


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    _atomic(path, lambda p: save_file(tensors, str(p), metadata=metadata))


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    return load_file(str(path)), metadata


def optimizer_tensors(state: dict[int, dict[str, Any]]) -> dict[str, torch.Tensor]:
    """An optimizer's per-parameter state (``state_dict()["state"]``) as flat ``opt.<index>.<name>`` tensors for a
    safetensors checkpoint (scalars such as Adam's step become 0-d tensors)."""
    return {f"opt.{i}.{k}": v if torch.is_tensor(v) else torch.tensor(v)
            for i, per_param in state.items() for k, v in per_param.items()}


def optimizer_state(tensors: dict[str, torch.Tensor]) -> dict[int, dict[str, torch.Tensor]]:
    """The ``opt.`` entries of a checkpoint's ``tensors`` back as an optimizer's per-parameter state."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        if key.startswith("opt."):
            _, i, name = key.split(".", 2)
            state.setdefault(int(i), {})[name] = t
    return state
