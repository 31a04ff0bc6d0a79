"""Serving over HTTP: the FastAPI app and its page, micro-batching, and the glue `emotune serve` runs. The
models it serves come from ``emotune.inference`` (engines: one base shared by many adapters)."""

__all__ = ["BatchConfig", "Limits", "create_app"]


def __getattr__(name: str):  # imported on first use: FastAPI only loads for serving
    if name in ("BatchConfig", "Limits", "create_app"):
        from . import app

        return getattr(app, name)
    raise AttributeError(name)
