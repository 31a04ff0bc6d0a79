"""Stopping at a step boundary: the first Ctrl-C / SIGTERM becomes a flag that a training loop checks after each
step (so it can checkpoint a consistent state before leaving); a second Ctrl-C interrupts at once."""

from __future__ import annotations

import signal
from contextlib import contextmanager
from typing import Callable, Iterator


@contextmanager
def signal_handlers(handler: Callable) -> Iterator[None]:
    """``handler`` for SIGINT and SIGTERM while the block runs, the previous handlers restored after it. Installed
    explicitly: a process started in the background of a shell (nohup, CI runners, `cmd &`) inherits SIGINT as
    *ignored*, and Ctrl-C would otherwise never reach it."""
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread: signals stay as they are
            pass
    try:
        yield
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)


@contextmanager
def stop_requests() -> Iterator[dict]:
    """Turn the first Ctrl-C / SIGTERM into a flag the loop checks at step boundaries; a second
    Ctrl-C interrupts at once."""
    flag = {"stop": False}

    def handler(signum, frame):
        if flag["stop"]:
            raise KeyboardInterrupt
        flag["stop"] = True

    with signal_handlers(handler):
        yield flag
