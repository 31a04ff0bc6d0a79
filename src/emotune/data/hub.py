"""Data sets from the Hugging Face hub (needs the network and the `datasets` package)."""

from __future__ import annotations

from ..config import DataConfig
from ..errors import DataError
from .base import Split, Splits

HUB_SPLITS = {"train": ("train",), "validation": ("validation", "valid", "dev"), "test": ("test",)}


def load_hub(hub_id: str, cfg: DataConfig, name: str | None = None) -> Splits:
    try:
        import datasets
    except ImportError:
        raise DataError(f"loading {hub_id!r} from the hub needs `pip install datasets`; "
                        "or pass --data-dir / set EMOTUNE_DATA_DIR to a local copy") from None
    try:
        ds = datasets.load_dataset(hub_id)
    except Exception as e:  # offline, unknown id, gated...: one clear line
        raise DataError(f"could not load {hub_id!r} from the Hugging Face hub ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}); for local data pass --data-dir "
                        "or set EMOTUNE_DATA_DIR") from None
    train = ds["train"]
    feature = train.features.get(cfg.label_column)
    if feature is not None and hasattr(feature, "names"):
        names = list(feature.names)
        to_id = int
    else:
        names = sorted({str(v) for v in train[cfg.label_column]})
        to_id = lambda v: names.index(str(v))  # noqa: E731
    splits = {}
    for split, candidates in HUB_SPLITS.items():
        for c in candidates:
            if c in ds:
                part = ds[c]
                splits[split] = Split([str(t) for t in part[cfg.text_column]],
                                      [to_id(v) for v in part[cfg.label_column]])
                break
    return Splits(name or hub_id, names, splits)
