"""Prompt tuning (Lester et al. 2021) through PEFT: trained virtual token embeddings prepended to the
input of a frozen encoder.

The encoder's output is then longer than the attention mask by the virtual tokens; pooling
(models/encoder.py) pools over the text's own positions, so `mean` and `cls` mean what they mean
without prompts (`pooler` reads the first position: a virtual token, as PEFT's own classifiers do).
Mind data.max_length + num_virtual_tokens <= the encoder's maximum positions (512 for MiniLM).
Not mergeable: the prompt is input, not a weight update."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from .base import register_method
from .peft_common import unfreeze_norms, wrap_encoder

INITS = {"vocab": "SAMPLE_VOCAB", "random": "RANDOM", "text": "TEXT"}


@dataclass
class PromptConfig:
    num_virtual_tokens: int = field(default=20, metadata={"help": "Number of trained prompt embeddings."})
    init: str = field(default="vocab", metadata={
        "help": "Initial prompt: `vocab` (embeddings of random vocabulary tokens), `random` or `text` (`init_text`)."})
    init_text: str = field(default="Classify the emotion of this text:", metadata={
        "help": "Text whose token embeddings start the prompt (with init=text; repeated to the prompt's length)."})
    train_norm: bool = field(default=False, metadata={"help": "Also train the encoder's LayerNorms."})

    def __post_init__(self):
        if self.num_virtual_tokens < 1:
            raise ValueError("num_virtual_tokens must be at least 1")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}")


# lr: well above the other methods' as prompt tuning needs (Lester et al. used 0.3 with Adafactor); a starting
# point for AdamW, not yet tuned here.
@register_method("prompt", description="Prompt tuning: trained virtual tokens prepended to the input (PEFT).",
                 config=PromptConfig, lr=1e-2, warmup_ratio=0.06, mergeable=False,
                 family="prompt tuning")
def apply_prompt(model: nn.Module, cfg: PromptConfig) -> nn.Module:
    import peft

    text = {}
    if cfg.init == "text":
        text = {"prompt_tuning_init_text": cfg.init_text,
                "tokenizer_name_or_path": model.encoder.config._name_or_path}
    config = peft.PromptTuningConfig(task_type="FEATURE_EXTRACTION", num_virtual_tokens=cfg.num_virtual_tokens,
                                     prompt_tuning_init=INITS[cfg.init], **text)
    model = wrap_encoder(model, config)
    if cfg.train_norm:
        unfreeze_norms(model)
    return model
