"""Shared fixtures: a tiny random BERT (built from a config, never downloaded), small data folders,
and the path of the real data sets in ../shared/data."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The tests (and the emotune processes they start) run this checkout's code, whichever checkout the editable
# install points at.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))

from emotune.config import RunConfig  # noqa: E402
EMOTIONS = ["sadness", "joy", "love", "anger", "fear", "surprise"]
WORDS = {"sadness": "sad lonely crying miserable gloomy", "joy": "happy glad joyful cheerful delighted",
         "love": "loving tender romantic adore caring", "anger": "angry furious mad annoyed irritated",
         "fear": "scared afraid nervous anxious terrified", "surprise": "surprised amazed shocked stunned astonished"}


def shared_data() -> Path:
    """The real data sets: $EMOTUNE_DATA_DIR or ../shared/data beside the repository."""
    root = Path(os.environ.get("EMOTUNE_DATA_DIR", REPO.parent / "shared" / "data"))
    if not (root / "emotion").is_dir():
        if os.environ.get("CI"):
            raise RuntimeError(f"real data sets not found at {root}")
        pytest.skip(f"real data sets not found at {root}")
    return root


@pytest.fixture(scope="session")
def real_data() -> Path:
    return shared_data()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A 2-layer BERT with hidden size 32 and random weights, with the MiniLM tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from emotune.models import resolve_model_path

    folder = tmp_path_factory.mktemp("tiny-bert")
    tok = AutoTokenizer.from_pretrained(resolve_model_path("minilm"))
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128)
    BertModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def write_emotion_folder(root: Path, n_train: int = 120, n_eval: int = 36, seed: int = 0) -> Path:
    """An emotion/ folder of synthetic `text;label` lines whose words give the label away."""
    rng = random.Random(seed)
    folder = root / "emotion"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train.txt", n_train), ("val.txt", n_eval), ("test.txt", n_eval)):
        lines = []
        for i in range(n):
            label = EMOTIONS[i % len(EMOTIONS)]
            word = rng.choice(WORDS[label].split())
            lines.append(f"i feel {word} {'today' if rng.random() < .5 else 'right now'};{label}")
        (folder / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


@pytest.fixture()
def toy_data(tmp_path) -> Path:
    return write_emotion_folder(tmp_path / "data")


def tiny_config(model: str, data_dir: Path, method: str = "lora", **train) -> RunConfig:
    cfg = RunConfig()
    cfg.data.data_dir = str(data_dir)
    cfg.model.name = model
    cfg.method = {"name": method}
    cfg.train.batch_size = 8
    cfg.train.eval_every = 5
    cfg.train.max_epochs = 2
    cfg.train.precision = "fp32"
    cfg.train.lr = 5e-3
    cfg.train.patience = None
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg


# ---- a tiny causal LM -----------------------------------------------------------------------
CHAT = ("{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant> {% endif %}")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> str:
    """A 2-layer Llama with random weights and the MiniLM tokenizer (plus a small chat template)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from emotune.models import resolve_model_path

    folder = tmp_path_factory.mktemp("tiny-llama")
    tok = AutoTokenizer.from_pretrained(resolve_model_path("minilm"))
    tok.chat_template = CHAT
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      pad_token_id=tok.pad_token_id, initializer_range=0.2)  # peaked attention: positions matter
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)
