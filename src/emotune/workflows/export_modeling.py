"""A Transformers model class for emotune classifiers that no stock class reproduces exactly.

``emotune export --merged`` copies this file into the exported folder as ``modeling_emotune.py`` and names
it in ``config.json``'s ``auto_map``: ``AutoModelForSequenceClassification.from_pretrained(DIR,
trust_remote_code=True)`` then builds it. It must stay standalone (imports only torch and transformers).

The model is emotune's classifier: any Transformers encoder (its config is stored under ``encoder``) ->
pooling (``mean``: masked average of the token vectors; ``cls``: the first token's vector; ``pooler``: the
encoder's own pooler output) -> dropout -> ``classifier`` (a linear layer), or for a multi-task model one
linear head per task (``heads``, config ``heads``: [{name, num_labels}]), the logits being the heads' logits
side by side (``config.emotune["tasks"]`` gives each task's columns and type). The config has its own
``model_type``, so loading without ``trust_remote_code=True`` fails loudly instead of silently building a
stock class with a different pooling.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

POOLINGS = ("mean", "cls", "pooler")


class EmotuneClassifierConfig(PretrainedConfig):
    model_type = "emotune-classifier"

    def __init__(self, encoder: dict | None = None, pooling: str = "mean", classifier_dropout: float = 0.1,
                 heads: list[dict] | None = None, **kwargs):
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, not {pooling!r}")
        self.encoder = dict(encoder or {})
        self.heads = [dict(h) for h in heads] if heads else None
        self.pooling = pooling
        self.classifier_dropout = classifier_dropout
        super().__init__(**kwargs)

    def encoder_config(self) -> PretrainedConfig:
        options = dict(self.encoder)
        return AutoConfig.for_model(options.pop("model_type"), **options)


class EmotuneForSequenceClassification(PreTrainedModel):
    """encoder -> pooling -> dropout -> classifier, as emotune's ``TransformerClassifier``."""

    config_class = EmotuneClassifierConfig
    base_model_prefix = "encoder"

    def __init__(self, config: EmotuneClassifierConfig):
        super().__init__(config)
        encoder_config = config.encoder_config()
        self.encoder = AutoModel.from_config(encoder_config)
        if config.pooling != "pooler" and getattr(self.encoder, "pooler", None) is not None:
            self.encoder.pooler = None  # unused by mean/cls pooling (and not in the saved weights)
        self.pooling = config.pooling
        self.dropout = nn.Dropout(config.classifier_dropout)
        if config.heads:  # multi-task: a head per task, outputs side by side in this order
            self.classifier = None
            self.heads = nn.ModuleDict({h["name"]: nn.Linear(encoder_config.hidden_size, h["num_labels"])
                                        for h in config.heads})
        else:
            self.classifier = nn.Linear(encoder_config.hidden_size, config.num_labels)
            self.heads = None
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        own = [self.classifier] if self.heads is None else list(self.heads.values())
        if isinstance(module, nn.Linear) and any(module is m for m in own):  # the encoder initialises itself
            nn.init.normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, **kwargs) -> SequenceClassifierOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, return_dict=True, **kwargs)
        hidden = out.last_hidden_state
        if self.pooling == "pooler":
            pooled = out.pooler_output
        elif self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        pooled = self.dropout(pooled)
        if self.heads is None:
            logits = self.classifier(pooled)
        else:
            logits = torch.cat([head(pooled) for head in self.heads.values()], -1)
        loss = None
        if labels is not None and self.heads is None:  # a multi-task loss needs each task's rows: not here
            if self.config.problem_type == "regression":
                loss = nn.functional.mse_loss(logits, labels.to(logits.dtype))
            elif self.config.problem_type == "multi_label_classification":
                loss = nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
            else:
                loss = nn.functional.cross_entropy(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states,
                                        attentions=out.attentions)
