"""Fine-tuning methods, one small module each, registered by name. Methods that build their model instead of
training it (zero-shot, ensemble) register from their own packages (see ``emotune/__init__.py``)."""

from . import dora, full, ia3, loftq, lora, loraplus, multilora, pissa, prefix, prompt, qlora, vera  # noqa: F401, I001
from .base import METHODS, Method, apply_method, lr_scales, method_options, option_help, register_method
from .folding import merge_adapter

__all__ = ["METHODS", "Method", "apply_method", "lr_scales", "merge_adapter", "method_options", "option_help",
           "register_method"]
