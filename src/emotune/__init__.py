"""emotune: train, compare and serve emotion and sentiment classifiers."""

import logging
import warnings

from .version import __version__  # noqa: F401

# Deprecation chatter from dependencies says nothing to an emotune user.
warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
# bitsandbytes (imported by PEFT) warns on every start that an optional hub-downloaded CPU kernel is missing;
# emotune never downloads it and its QLoRA uses the built-in path.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

# Methods that build their model instead of training it register from their own packages: the method
# registry never imports its users.
from .workflows import ensemble as _ensemble  # noqa: E402,F401,I001
from .api import Predictor, evaluate, list_runs, predict, train  # noqa: E402
from .config import DataConfig, ModelConfig, RunConfig, TrainConfig  # noqa: E402
from .zeroshot import method as _zero_shot  # noqa: E402,F401,I001

__all__ = ["DataConfig", "ModelConfig", "Predictor", "RunConfig", "TrainConfig", "evaluate", "list_runs",
           "predict", "train"]
