"""Stopping at a step boundary: the first Ctrl-C / SIGTERM becomes a flag that a training loop checks after each
step (so it can checkpoint a consistent state before leaving); a second Ctrl-C interrupts at once."""

from __future__ import annotations

import signal
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def stop_requests() -> Iterator[dict]:
    """Turn the first Ctrl-C / SIGTERM into a flag the loop checks at step boundaries; a second
    Ctrl-C interrupts at once."""
    flag = {"stop": False}
    previous = {}

    def handler(signum, frame):
        if flag["stop"]:
            raise KeyboardInterrupt
        flag["stop"] = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread: signals stay as they are
            pass
    try:
        yield flag
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)
