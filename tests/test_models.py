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
