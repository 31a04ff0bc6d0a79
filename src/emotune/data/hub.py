"""Data sets from the Hugging Face hub (needs the network and the `datasets` package, 3 or newer).

Data set scripts are never run (``trust_remote_code=False``): a hub data set must be stored as data files
(Parquet, CSV, JSON). A split whose labels are all ``-1`` (hidden test labels, as in GLUE) is treated as
unlabelled and left out (``emotune evaluate --split test`` then says why); a split where only some labels
are ``-1`` or missing is refused.
"""

from __future__ import annotations

import inspect
import math

from ..config import DataConfig
from ..errors import DataError
from .base import Split, Splits

HUB_SPLITS = {"train": ("train",), "validation": ("validation", "valid", "dev"), "test": ("test",)}
UNLABELLED = -1  # the hub's ClassLabel value for "no label"


def _load(datasets, hub_id: str):
    kwargs = {}
    if "trust_remote_code" in inspect.signature(datasets.load_dataset).parameters:
        kwargs["trust_remote_code"] = False  # never run a data set's script (datasets 4 runs none at all)
    return datasets.load_dataset(hub_id, **kwargs)


def _label_text(value: object, where: str) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and not math.isfinite(value):
        raise DataError(f"{where}: label {value!r} is not a class (a missing label?)")
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "nan", "null")):
        raise DataError(f"{where}: empty label")
    if not isinstance(value, (str, int, float)):
        raise DataError(f"{where}: label {value!r} is not a single value")
    return str(value).strip()


def load_hub(hub_id: str, cfg: DataConfig, name: str | None = None) -> Splits:
    try:
        import datasets
    except ImportError:
        raise DataError(f"loading {hub_id!r} from the hub needs `pip install datasets`; "
                        "or pass --data-dir / set EMOTUNE_DATA_DIR to a local copy") from None
    try:
        ds = _load(datasets, hub_id)
    except Exception as e:  # offline, unknown id, gated, a script-based data set...: one clear line
        raise DataError(f"could not load {hub_id!r} from the Hugging Face hub ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}); for local data pass --data-dir "
                        "or set EMOTUNE_DATA_DIR") from None
    if "train" not in ds:
        raise DataError(f"hub data set {hub_id!r} has no train split (it has: {', '.join(ds)})")
    for column in (cfg.text_column, cfg.label_column):
        if column not in ds["train"].column_names:
            raise DataError(f"hub data set {hub_id!r} has no {column!r} column (columns: "
                            f"{', '.join(ds['train'].column_names)}; choose with --text-column/--label-column)")
    feature = ds["train"].features.get(cfg.label_column)
    class_label = feature is not None and hasattr(feature, "names")
    names: list[str] = list(feature.names) if class_label else []
    parts = {}
    for split, candidates in HUB_SPLITS.items():
        found = next((c for c in candidates if c in ds), None)
        if found is not None:
            parts[split] = (found, ds[found])
    if not class_label:  # plain values: the classes are the training split's values, sorted
        names = sorted({_label_text(v, f"{hub_id} (train, row {i})")
                        for i, v in enumerate(parts["train"][1][cfg.label_column])})
    splits, left_out = {}, {}
    for split, (found, part) in parts.items():
        raw = list(part[cfg.label_column])
        if class_label and raw and all(v == UNLABELLED for v in raw) and split != "train":
            left_out[split] = (f"every label of the hub's {found!r} split is -1 (unlabelled: the labels are "
                               "hidden), so it was treated as unlabelled")
            continue
        ids = []
        for i, v in enumerate(raw):
            where = f"{hub_id} ({found}, row {i})"
            if class_label:
                if v is None or v == UNLABELLED:
                    raise DataError(f"{where}: unlabelled example (label {v!r}); a split must be labelled "
                                    "throughout (a split labelled -1 throughout is left out as unlabelled)")
                if not isinstance(v, int) or not 0 <= v < len(names):
                    raise DataError(f"{where}: label {v!r} is not one of the {len(names)} classes")
                ids.append(v)
                continue
            label = _label_text(v, where)
            if label not in names:
                raise DataError(f"{where}: unknown label {label!r}: it occurs in the {split} split but never in "
                                f"the training split (training labels: {', '.join(names)})")
            ids.append(names.index(label))
        texts = []
        for i, t in enumerate(part[cfg.text_column]):
            if not isinstance(t, str) or not t.strip():
                raise DataError(f"{hub_id} ({found}, row {i}): empty text" if isinstance(t, str) or t is None
                                else f"{hub_id} ({found}, row {i}): text is not a string: {t!r}")
            texts.append(t.strip())
        splits[split] = Split(texts, ids)
    return Splits(name or hub_id, names, splits, left_out)
