"""The NRC Emotion Lexicon (EmoLex; Mohammad & Turney 2013) as shipped by the ``nrclex`` package: word -> its
emotions (anger, anticipation, disgust, fear, joy, sadness, surprise, trust) and polarities (negative,
positive). Its terms allow research use only. Only the package's data file is read (its code needs TextBlob)."""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from importlib import resources

from ..errors import ConfigError

EMOTIONS = ("anger", "anticipation", "disgust", "fear", "joy", "sadness", "surprise", "trust")
POLARITIES = ("negative", "positive")


@lru_cache(maxsize=1)
def _raw() -> bytes:
    try:
        return (resources.files("nrclex") / "data" / "nrc_en.json").read_bytes()
    except (ModuleNotFoundError, FileNotFoundError):
        raise ConfigError("the NRC Emotion Lexicon needs the package nrclex>=4.1 (pip install 'nrclex>=4.1')") from None


@lru_cache(maxsize=1)
def nrc_lexicon() -> dict[str, list[str]]:
    """word -> its NRC categories (lower-case words)."""
    return json.loads(_raw())


def nrc_sha256() -> str:
    """The sha256 of the lexicon file (``nrc_en.json``): which version of the lexicon features come from."""
    return hashlib.sha256(_raw()).hexdigest()


SUFFIXES = ("ness", "ing", "ed", "es", "ly", "s")


def categories(word: str) -> list[str]:
    """A lower-case word's NRC categories; a word the list lacks borrows those of its form without a common
    suffix or with `ness` (the shipped list has `sadness` but not `sad`); [] when none is listed."""
    lexicon = nrc_lexicon()
    if word in lexicon:
        return lexicon[word]
    for suffix in SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3 and word[:-len(suffix)] in lexicon:
            return lexicon[word[:-len(suffix)]]
    return lexicon.get(word + "ness", [])
