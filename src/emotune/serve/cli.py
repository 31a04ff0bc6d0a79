"""`emotune serve`: load the runs, build the app, run uvicorn (graceful shutdown on SIGINT/SIGTERM)."""

from __future__ import annotations

import time
from typing import Callable, Optional, Sequence

from ..errors import ConfigError


def serve(run_dirs: Sequence[str], *, host: str = "127.0.0.1", port: int = 8000, precision: str = "auto",
          threads: Optional[int] = None, workers: int = 1, max_batch: int = 32, batch_size: int = 16,
          max_wait_ms: float = 2.0,
          max_texts: int = 64, max_chars: int = 2000, max_body_bytes: int = 1_000_000, share: bool = True,
          log_level: str = "warning", echo: Callable[[str], None] = print) -> None:
    import uvicorn

    from .app import BatchConfig, Limits, create_app
    from .models import ModelRegistry

    for name, value in (("--workers", workers), ("--max-batch", max_batch), ("--batch-size", batch_size),
                        ("--max-texts", max_texts), ("--max-chars", max_chars), ("--max-body-bytes", max_body_bytes)):
        if value < 1:
            raise ConfigError(f"{name} must be at least 1")
    if max_wait_ms < 0:
        raise ConfigError("--max-wait-ms must be at least 0")
    if not 0 <= port < 65536:
        raise ConfigError(f"--port {port} is not a port number")
    start = time.perf_counter()
    registry = ModelRegistry.load(list(run_dirs), precision=precision, threads=threads, batch_size=batch_size,
                                  share=share)
    for name in registry.names:
        m = registry[name]
        shared = f", shares its base with {', '.join(m.shared_with)}" if m.shared_with else ""
        echo(f"loaded {name}: {m.run.config.method.get('name')} on {m.run.config.model.name}, "
             f"{len(m.labels)} labels, {m.precision}{shared}")
    app = create_app(registry, limits=Limits(max_texts, max_chars, max_body_bytes),
                     batching=BatchConfig(max_batch=max_batch, max_wait_ms=max_wait_ms, workers=workers))
    echo(f"serving {len(registry.names)} model(s) on http://{host}:{port} "
         f"(loaded in {time.perf_counter() - start:.1f} s; page at /, API docs at /docs)")
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=log_level == "info",
                            timeout_graceful_shutdown=30, lifespan="on")
    uvicorn.Server(config).run()
