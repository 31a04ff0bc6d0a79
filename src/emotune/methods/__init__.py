"""Fine-tuning methods, one small module each, registered by name."""

from . import full, lora  # noqa: F401  (registration)
from .base import METHODS, Method, apply_method, option_help, register_method

__all__ = ["METHODS", "Method", "apply_method", "option_help", "register_method"]
