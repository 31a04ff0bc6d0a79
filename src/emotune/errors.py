"""Errors that the CLI turns into a one-line message and exit code 2 (no traceback), and the
interruption that it turns into exit code 130."""

from __future__ import annotations

from pathlib import Path


class EmotuneError(Exception):
    """Base class of errors caused by the user's input rather than a bug."""


class ConfigError(EmotuneError):
    """A bad option, config file or override."""


class DataError(EmotuneError):
    """Unreadable or malformed data; the message names the file and, where known, the line."""

    def __init__(self, message: str, path: object = None, line: int | None = None):
        where = f"{path}:{line}: " if path is not None and line is not None else f"{path}: " if path else ""
        super().__init__(f"{where}{message}")
        self.path, self.line = path, line


class RunError(EmotuneError):
    """A run folder that is missing, incomplete or inconsistent."""


class Interrupted(Exception):
    """Training stopped by Ctrl-C/SIGTERM (after saving a checkpoint unless checkpoints are off)."""

    def __init__(self, step: int, path: Path, saved: bool = True):
        what = ("checkpoint saved, run the same command again to resume" if saved else
                "no checkpoint (train.checkpoint=false): running the same command again starts afresh")
        super().__init__(f"interrupted at step {step}; {what}")
        self.step, self.path, self.saved = step, path, saved
