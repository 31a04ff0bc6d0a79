"""`emotune serve`: load the runs, build the app, run uvicorn (graceful shutdown on SIGINT/SIGTERM)."""

from __future__ import annotations

import ipaddress
import time
from typing import Callable, Optional, Sequence

from ..errors import ConfigError

LOOPBACK_NAMES = ["localhost", "127.0.0.1", "::1"]
WILDCARDS = ("", "0.0.0.0", "::", "*")


def default_allowed_hosts(host: str) -> list[str]:
    """The Host header values a server bound to ``host`` answers by default: on loopback the bound address
    plus localhost, 127.0.0.1 and ::1 (so a page on another site cannot reach it through a browser by DNS
    rebinding); on one address that address; on every interface (0.0.0.0, ::) any host, since the server
    cannot know the names clients reach it by (name them with --allowed-host)."""
    if host in WILDCARDS:
        return ["*"]
    try:
        loopback = ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        loopback = host.lower() == "localhost"
    hosts = [host.strip("[]").lower()]
    if loopback:
        hosts += [h for h in LOOPBACK_NAMES if h not in hosts]
    return hosts


def serve(run_dirs: Sequence[str], *, host: str = "127.0.0.1", port: int = 8000, precision: str = "auto",
          threads: Optional[int] = None, workers: int = 1, max_batch: int = 32, batch_size: int = 16,
          max_wait_ms: float = 2.0,
          max_texts: int = 64, max_chars: int = 2000, max_body_bytes: int = 1_000_000, share: bool = True,
          max_queue: int = 256, timeout_s: float = 30.0, allowed_hosts: Optional[Sequence[str]] = None,
          log_level: str = "warning", echo: Callable[[str], None] = print) -> None:
    """Serve the runs. ``max_queue``: most requests waiting for or in inference (more get 503 with
    Retry-After); ``timeout_s``: a request's longest wait (then 504; 0: none); ``allowed_hosts``: the Host
    header values answered (default: see ``default_allowed_hosts``; ``*``: any)."""
    import uvicorn

    from ..inference.engines import ModelRegistry
    from .app import BatchConfig, Limits, create_app

    for name, value in (("--workers", workers), ("--max-batch", max_batch), ("--batch-size", batch_size),
                        ("--max-texts", max_texts), ("--max-chars", max_chars), ("--max-body-bytes", max_body_bytes),
                        ("--max-queue", max_queue)):
        if value < 1:
            raise ConfigError(f"{name} must be at least 1")
    if max_wait_ms < 0:
        raise ConfigError("--max-wait-ms must be at least 0")
    if timeout_s < 0:
        raise ConfigError("--timeout must be at least 0 (0: no timeout)")
    if not 0 <= port < 65536:
        raise ConfigError(f"--port {port} is not a port number")
    hosts = check_hosts(allowed_hosts) if allowed_hosts else default_allowed_hosts(host)
    start = time.perf_counter()
    registry = ModelRegistry.load(list(run_dirs), precision=precision, threads=threads, batch_size=batch_size,
                                  share=share)
    for name in registry.names:
        m = registry[name]
        shared = f", shares its base with {', '.join(m.shared_with)}" if m.shared_with else ""
        echo(f"loaded {name}: {m.run.config.method.get('name')} on {m.run.config.model.name}, "
             f"{len(m.labels)} labels, {m.precision}{shared}")
    app = create_app(registry, limits=Limits(max_texts, max_chars, max_body_bytes, timeout_s or None),
                     batching=BatchConfig(max_batch=max_batch, max_wait_ms=max_wait_ms, workers=workers,
                                          max_queue=max_queue),
                     allowed_hosts=hosts)
    echo(f"serving {len(registry.names)} model(s) on http://{host}:{port} "
         f"(loaded in {time.perf_counter() - start:.1f} s; page at /, API docs at /docs; "
         f"answers Host {'any' if '*' in hosts else ', '.join(hosts)})")
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=log_level == "info",
                            timeout_graceful_shutdown=30, lifespan="on")
    uvicorn.Server(config).run()


def check_hosts(hosts: Sequence[str]) -> list[str]:
    """``--allowed-host`` values: host names or addresses (no port), ``*.example.com`` or ``*``."""
    out = []
    for h in hosts:
        h = h.strip().lower()
        if h != "*" and ("*" in h[1:] or (h.startswith("*") and not h.startswith("*.")) or not h or
                         ("/" in h) or (":" in h and not _is_ipv6(h))):
            raise ConfigError(f"--allowed-host {h!r}: give a host name or address without port or scheme, "
                              "'*.example.com' or '*'")
        out.append(h.strip("[]"))
    return out


def _is_ipv6(h: str) -> bool:
    try:
        return ipaddress.ip_address(h.strip("[]")).version == 6
    except ValueError:
        return False
