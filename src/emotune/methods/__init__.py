"""Fine-tuning methods, one small module each, registered by name."""

from . import dora, full, ia3, loftq, lora, loraplus, pissa, prefix, prompt, qlora, vera  # noqa: F401, I001
from .base import METHODS, Method, apply_method, lr_scales, method_options, option_help, register_method
from ..zeroshot import method as _zero_shot  # noqa: E402,F401,I001  (registers "zero-shot"; after .base)
from .. import ensemble as _ensemble  # noqa: E402,F401,I001  (registers "ensemble")

__all__ = ["METHODS", "Method", "apply_method", "lr_scales", "method_options", "option_help", "register_method"]
