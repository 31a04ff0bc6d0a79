"""Serving: runs loaded by name (LoRA runs sharing one base), micro-batching, the HTTP app and its page,
and a lean BERT forward for fast inference (``fast``)."""

__all__ = ["BatchConfig", "Limits", "ModelRegistry", "create_app"]


def __getattr__(name: str):  # imported on first use: the predictor needs `fast` without FastAPI
    if name in ("BatchConfig", "Limits", "create_app"):
        from . import app

        return getattr(app, name)
    if name == "ModelRegistry":
        from .models import ModelRegistry

        return ModelRegistry
    raise AttributeError(name)
