"""Models: pretrained transformer encoders with a classification head, and classic models over word vectors
(registered by name in ``MODELS``). Every model maps ``input_ids, attention_mask`` to logits."""

from .classic import MODELS, ClassicClassifier, build_classic, is_classic, register_model
from .encoder import TransformerClassifier, build_transformer, load_pretrained, resolve_model_path
from .vocab import WordTokenizer

__all__ = ["MODELS", "ClassicClassifier", "TransformerClassifier", "WordTokenizer", "build_classic",
           "build_transformer", "is_classic", "load_pretrained", "register_model", "resolve_model_path"]
