"""Models: pretrained transformer encoders with a classification head (classic models join the
same registry). Every model maps ``input_ids, attention_mask`` to logits."""

from .encoder import TransformerClassifier, build_transformer, resolve_model_path

__all__ = ["TransformerClassifier", "build_transformer", "resolve_model_path"]
