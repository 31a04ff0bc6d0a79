"""A lean inference forward for BERT-architecture encoders (MiniLM, BERT): the same weights and the same
mathematics as ``TransformerClassifier`` over Transformers' ``BertModel``, with less work per batch:

- query, key and value are one linear layer (one matrix product; in int8 one activation quantization);
- attention is two batched products and a softmax with an additive padding mask (faster than the
  fused CPU kernel for sentence-length inputs);
- with ``pooler``/``cls`` pooling the last layer computes only the first token's output (its keys and
  values still come from every token): exact, and a sixth less work on a 6-layer encoder;
- no dropout, no output bookkeeping, nothing but the forward;
- lexicon features (``model.lexicon``) come from the model's own ``LexiconFeatures`` module (no weights,
  untouched by int8/bf16) and are appended to the pooled vector before the head, as the model does.

``int8`` is PyTorch's dynamic quantization of these linear layers; ``bf16`` stores them in bfloat16.
"""

from __future__ import annotations

import torch
from torch import nn

from ..models.lexicon import with_features


def supports(model: nn.Module) -> bool:
    """True for a TransformerClassifier whose encoder is a plain (unwrapped) BertModel with absolute positions."""
    enc = getattr(model, "encoder", None)
    if enc is None or type(enc).__name__ != "BertModel":
        return False
    cfg = enc.config
    return (getattr(cfg, "position_embedding_type", "absolute") == "absolute"
            and cfg.hidden_act in ("gelu", "relu", "gelu_new", "gelu_pytorch_tanh")
            and not getattr(cfg, "is_decoder", False)
            and getattr(model, "pooling", None) in ("mean", "cls", "pooler"))


# in place: the activation's input is a fresh tensor nothing else holds
_ACTS = {"gelu": torch.ops.aten.gelu_, "relu": torch.relu_,
         "gelu_new": lambda x: torch.ops.aten.gelu_(x, approximate="tanh"),
         "gelu_pytorch_tanh": lambda x: torch.ops.aten.gelu_(x, approximate="tanh")}


class _Layer(nn.Module):
    def __init__(self, layer: nn.Module):
        super().__init__()
        att = layer.attention
        q, k, v = att.self.query, att.self.key, att.self.value
        self.qkv = nn.Linear(q.in_features, q.out_features * 3)
        with torch.no_grad():
            self.qkv.weight.copy_(torch.cat([q.weight, k.weight, v.weight]))
            self.qkv.bias.copy_(torch.cat([q.bias, k.bias, v.bias]))
        self.out = att.output.dense
        self.norm1 = att.output.LayerNorm
        self.up = layer.intermediate.dense
        self.down = layer.output.dense
        self.norm2 = layer.output.LayerNorm


class FastBertClassifier(nn.Module):
    """encoder -> pooling -> head, inference only, from a TransformerClassifier over a BertModel."""

    def __init__(self, model: nn.Module):
        super().__init__()
        enc = model.encoder
        cfg = enc.config
        emb = enc.embeddings
        self.word, self.position = emb.word_embeddings, emb.position_embeddings
        self.token_type = emb.token_type_embeddings
        self.emb_norm = emb.LayerNorm
        self.layers = nn.ModuleList(_Layer(layer) for layer in enc.encoder.layer)
        self.heads = cfg.num_attention_heads
        self.act = _ACTS[cfg.hidden_act]
        self.pooling = model.pooling
        self.pooler = enc.pooler.dense if model.pooling == "pooler" else None
        self.head = model.head
        self.lexicon = getattr(model, "lexicon", None)  # model.lexicon: features appended before the head
        self.eval()

    def int8_names(self) -> set[str]:
        """The linear layers dynamic int8 quantization replaces (all but the classification head)."""
        return {n for n, m in self.named_modules() if isinstance(m, nn.Linear) and n != "head"}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        b, t = input_ids.shape
        x = self.word(input_ids) + self.position.weight[:t] + self.token_type.weight[0]
        x = self.emb_norm(x)
        h = x.shape[-1]
        nh, hd = self.heads, h // self.heads
        # additive mask: 0 for tokens, a large negative number for padding
        bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        scale = hd ** -0.5
        first_only = self.pooling in ("pooler", "cls")
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            qkv = layer.qkv(x).view(b, t, 3, nh, hd)
            q, k, v = qkv.unbind(2)
            if first_only and i == last:
                q, x = q[:, :1], x[:, :1]
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # b, nh, t, hd
            scores = torch.baddbmm(bias.expand(b, nh, q.shape[2], t).reshape(b * nh, q.shape[2], t),
                                   q.reshape(b * nh, -1, hd), k.reshape(b * nh, t, hd).transpose(1, 2),
                                   alpha=scale)
            ctx = torch.bmm(scores.softmax(-1).to(v.dtype), v.reshape(b * nh, t, hd))
            ctx = ctx.view(b, nh, -1, hd).transpose(1, 2).reshape(b, -1, h)
            x = layer.norm1(layer.out(ctx) + x)
            x = layer.norm2(layer.down(self.act(layer.up(x))) + x)
        if self.pooling == "pooler":
            pooled = torch.tanh(self.pooler(x[:, 0]))
        elif self.pooling == "cls":
            pooled = x[:, 0]
        else:
            m = attention_mask.unsqueeze(-1).to(x.dtype)
            pooled = (x * m).sum(1) / m.sum(1).clamp(min=1)
        return self.head(with_features(pooled, self.lexicon, input_ids, attention_mask))
