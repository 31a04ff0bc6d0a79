"""Emotion (CARER, Saravia et al. 2018): six emotions of English tweets, 16k/2k/2k.

Local layout: ``<data_dir>/emotion/{train,val,test}.txt`` with ``text;label`` lines.
Without a local folder it loads ``dair-ai/emotion`` from the Hugging Face hub.
"""

from __future__ import annotations

from pathlib import Path

from ..config import DataConfig
from ..errors import DataError
from .base import DATASETS, Split, Splits, check_text, label_id, read_text

# The hub's numbering, so local and hub runs share label ids.
LABELS = ["sadness", "joy", "love", "anger", "fear", "surprise"]
FILES = {"train": "train.txt", "validation": "val.txt", "test": "test.txt"}
HUB_ID = "dair-ai/emotion"


def read_semicolon_file(path: Path, names: list[str]) -> Split:
    texts, labels = [], []
    for n, line in enumerate(read_text(path), start=1):
        if not line.strip():
            continue
        text, sep, label = line.rpartition(";")
        if not sep:
            raise DataError("no ';' separating text and label", path, n)
        texts.append(check_text(text, path, n))
        if not label.strip():
            raise DataError("empty label after the last ';'", path, n)
        labels.append(label_id(label.strip(), names, path, n))
    if not texts:
        raise DataError("no examples", path)
    return Split(texts, labels)


@DATASETS.register("emotion")
def load_emotion(cfg: DataConfig, root: Path | None) -> Splits:
    if root is None:
        from .hub import load_hub

        return load_hub(HUB_ID, cfg, name="emotion")
    folder = root / "emotion"
    if not folder.is_dir():
        raise DataError("no emotion/ folder in the data directory", folder)
    return Splits("emotion", list(LABELS),
                  {split: read_semicolon_file(folder / f, LABELS) for split, f in FILES.items()})
