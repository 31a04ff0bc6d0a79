from pathlib import Path

import pytest
import torch

from emotune.config import ModelConfig
from emotune.errors import ConfigError
from emotune.models import build_transformer


@pytest.mark.parametrize("pooling", ["mean", "cls", "pooler"])
def test_poolings_give_logits_and_ignore_padding(tiny_model, pooling):
    model, tok = build_transformer(ModelConfig(name=tiny_model, pooling=pooling), 3)
    model.eval()
    assert (model.encoder.pooler is not None) == (pooling == "pooler")
    ids = tok(["i feel fine"])["input_ids"][0]
    one = model(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))
    padded = torch.tensor([ids + [0] * 5])
    mask = torch.tensor([[1] * len(ids) + [0] * 5])
    assert one.shape == (1, 3)
    assert torch.allclose(one, model(padded, mask), atol=1e-5)  # padding changes nothing


def test_unknown_pooling_and_missing_model():
    with pytest.raises(ConfigError, match="unknown pooling"):
        from emotune.models.encoder import TransformerClassifier

        TransformerClassifier(torch.nn.Identity(), 4, 2, pooling="max")
    with pytest.raises(ConfigError, match="cannot load model"):
        build_transformer(ModelConfig(name="/no/such/model/folder"), 2)


def test_tokenizer_truncates_at_the_position_embeddings(tiny_model):
    # the tiny BERT holds 128 positions; a config asking for 1,000 tokens must not index past them
    model, tok = build_transformer(ModelConfig(name=tiny_model), 2)
    model.eval()
    assert tok.model_max_length <= 128
    long_text = "happy " * 600
    ids = tok([long_text, "i feel fine"], truncation=True, max_length=1000)["input_ids"]
    assert len(ids[0]) == 128 and len(ids[1]) < 10
    with torch.no_grad():
        out = model(torch.tensor([ids[0]]), torch.ones(1, len(ids[0]), dtype=torch.long))
    assert out.shape == (1, 2) and torch.isfinite(out).all()
    assert len(tok([long_text], truncation=True, max_length=16)["input_ids"][0]) == 16  # smaller asks stay
    import pickle

    again = pickle.loads(pickle.dumps(tok))  # still capped after a round trip
    assert len(again([long_text], truncation=True, max_length=1000)["input_ids"][0]) == 128


def test_a_long_text_and_a_big_max_length_train_and_predict(tiny_model, toy_data, tmp_path):
    from emotune import api
    from emotune.inference.predictor import Predictor

    from .conftest import tiny_config

    cfg = tiny_config(tiny_model, toy_data, "full", max_steps=2)
    cfg.data.max_length = 4096
    api.train(cfg, tmp_path / "run", progress=False)
    out = Predictor(tmp_path / "run").predict(["i feel happy " * 400])
    assert out[0]["label"]


def pickled_only_model(folder):
    """A tiny BERT folder whose weights are a pickled pytorch_model.bin (no safetensors)."""
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=32)
    model = BertModel(cfg)
    model.save_pretrained(folder, safe_serialization=False)  # Transformers 5 writes safetensors anyway
    for f in folder.glob("*.safetensors"):
        f.unlink()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    return folder


def test_pickled_weights_are_refused_in_one_line(tiny_model, tmp_path):
    import shutil

    from transformers import AutoModel

    from emotune.models import load_pretrained

    folder = pickled_only_model(tmp_path / "bin-only")
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (Path(tiny_model) / f).is_file():
            shutil.copy(Path(tiny_model) / f, folder / f)
    with pytest.raises(ConfigError, match="safetensors only") as e:
        load_pretrained(AutoModel, str(folder))
    assert "\n" not in str(e.value) and "pytorch_model.bin" in str(e.value)
    with pytest.raises(ConfigError, match="safetensors only") as e:
        build_transformer(ModelConfig(name=str(folder)), 2)
    assert "\n" not in str(e.value)
    assert load_pretrained(AutoModel, tiny_model) is not None  # safetensors folders load as before
