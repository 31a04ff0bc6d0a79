"""SemEval-2017 Task 4A (English tweets): negative/neutral/positive; train/ files train, dev/ validates.

Local layout: ``<data_dir>/semeval2017a/{train,dev}/*.tsv`` with ``id<TAB>label<TAB>text`` lines. Training
data is every file under ``train/`` (sorted by path), validation every file under ``dev/``; the test
split is whatever files ``data.test_files`` names (for example the official gold file), else there is
none. Tweet ids repeat across and within files: the first occurrence wins, and a tweet held out for
validation or test is dropped from the split(s) before it, so no held-out tweet is trained on.

The files carry several layers of escaping, undone here: a trailing tab on some lines, CSV-style quoting
(a text in double quotes, its inner quotes doubled), backslash-escaped quotes, literal ``\\uXXXX``
escapes (surrogate pairs included) and HTML entities (``&amp;``). Official metrics: macro recall
(AvgRec, ``recall_macro``), then F1 averaged over positive and negative (F1-PN, ``f1_pn``), then accuracy.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

from ..config import DataConfig
from ..errors import DataError
from .base import DATASETS, Split, Splits, check_text, label_id, read_text

LABELS = ["negative", "neutral", "positive"]
SUFFIXES = (".tsv", ".txt")
ESCAPES = re.compile(r"(?:\\u[0-9a-fA-F]{4})+")

Tweets = dict[str, tuple[str, int]]  # id -> (text, label id), in first-seen order


def decode_escapes(text: str) -> str:
    r"""Literal ``\uXXXX`` escapes to characters; a run is decoded as UTF-16 so surrogate pairs join."""
    def run(m: re.Match) -> str:
        units = b"".join(int(h, 16).to_bytes(2, "big") for h in re.findall(r"[0-9a-fA-F]{4}", m.group(0)))
        return units.decode("utf-16-be", errors="replace")

    return ESCAPES.sub(run, text)


def unquote(text: str) -> str:
    """Undo CSV quoting: ``"a ""b"" c"`` -> ``a "b" c``, only where the inner quotes are all doubled."""
    if len(text) >= 2 and text[0] == text[-1] == '"' and '"' not in text[1:-1].replace('""', ""):
        return text[1:-1].replace('""', '"')
    return text


def clean_tweet(text: str) -> str:
    text = decode_escapes(unquote(text.strip()).replace('\\"', '"'))
    for _ in range(3):  # some entities are escaped twice or thrice (&amp;amp;)
        text, before = html.unescape(text), text
        if text == before:
            break
    return " ".join(text.split())


def read_tweets(path: Path, tweets: Tweets) -> None:
    """Add the file's tweets to ``tweets`` (ids already there keep their first occurrence)."""
    for n, line in enumerate(read_text(path), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        while len(fields) > 3 and not fields[-1].strip():  # trailing tab(s)
            fields.pop()
        if len(fields) < 3:
            raise DataError("expected id<TAB>label<TAB>text", path, n)
        tweet_id = fields[0].strip()
        if not tweet_id:
            raise DataError("empty tweet id", path, n)
        text = check_text(clean_tweet(" ".join(fields[2:])), path, n)  # a tab inside the text: keep the words
        label = label_id(fields[1].strip().lower(), LABELS, path, n)
        tweets.setdefault(tweet_id, (text, label))


def read_files(paths: list[Path], folder: Path) -> Tweets:
    if not paths:
        raise DataError(f"no {'/'.join(SUFFIXES)} files", folder)
    tweets: Tweets = {}
    for path in paths:
        read_tweets(path, tweets)
    if not tweets:
        raise DataError("no tweets", folder)
    return tweets


def files_under(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DataError("folder not found", folder)
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in SUFFIXES
                  and not p.name.startswith("."))


def to_split(tweets: Tweets, held_out: set[str]) -> Split:
    kept = [v for k, v in tweets.items() if k not in held_out]
    return Split([t for t, _ in kept], [y for _, y in kept])


@DATASETS.register("semeval2017a")
def load_semeval2017a(cfg: DataConfig, root: Path | None) -> Splits:
    if root is None:
        raise DataError("the semeval2017a data set is read from local files: pass --data-dir (or set "
                        "EMOTUNE_DATA_DIR) to a folder holding semeval2017a/train/ and dev/")
    folder = root / "semeval2017a"
    if not folder.is_dir():
        raise DataError("no semeval2017a/ folder in the data directory", folder)
    parts = {"train": read_files(files_under(folder / "train"), folder / "train"),
             "validation": read_files(files_under(folder / "dev"), folder / "dev")}
    if cfg.test_files:
        parts["test"] = read_files([Path(p).expanduser() for p in cfg.test_files], folder)
    splits, held_out = {}, set()
    for split in ("test", "validation", "train"):  # later splits lose the tweets held out by earlier ones
        if split in parts:
            splits[split] = to_split(parts[split], held_out)
            held_out |= set(parts[split])
    return Splits("semeval2017a", list(LABELS), {s: splits[s] for s in ("train", "validation", "test")
                                                 if s in splits})
