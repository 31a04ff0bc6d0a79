"""Corpus-scale prediction that streams: a text file (or standard input) is read lazily in chunks of lines,
each chunk is predicted with a ``Predictor`` and appended to a JSON-lines file, which is flushed and synced
after every chunk. Memory stays that of one chunk whatever the corpus size.

- **Resumable.** An existing output file is continued: a partial last line (a kill mid-write) is cut off,
  its complete lines are counted and that many of this shard's input texts are skipped.
- **Sharded.** ``shard=(i, n)`` predicts only the input lines whose 0-based number ``% n == i``, so processes or
  machines split a corpus; their outputs merged and sorted by ``line`` are the unsharded output.
- Blank lines are not predicted; every record keeps the 0-based ``line`` of its text in the input file.
"""

from __future__ import annotations

import json
import os
import sys
import time
from contextlib import closing
from itertools import islice
from pathlib import Path
from typing import IO, Callable, Iterator

import torch

from ..data.base import open_bytes
from ..errors import ConfigError, DataError
from ..progress import console
from ..train.metrics import peak_memory_mb
from .format import check_min_confidence
from .predictor import Predictor

STDIN = "-"
CHUNK = 4096


def parse_shard(spec: str) -> tuple[int, int]:
    """``"i/N"`` (0-based ``i`` below ``N``) as ``(i, N)``; anything else is a one-line ConfigError."""
    index, sep, count = spec.strip().partition("/")
    try:
        shard = (int(index), int(count)) if sep else None
    except ValueError:
        shard = None
    if shard is None:
        raise ConfigError(f"--shard takes i/N with whole numbers, e.g. 0/2 (got {spec!r})")
    check_shard(shard)
    return shard


def check_shard(shard: tuple[int, int]) -> None:
    i, n = shard
    if n < 1 or not 0 <= i < n:
        raise ConfigError(f"shard {i}/{n}: need N >= 1 and 0 <= i < N (0-based), e.g. 0/2 and 1/2")


def _open_input(path: str | Path) -> tuple[IO[bytes], bool]:
    """The input as bytes (lines are split on \\n only, as ``data.base.split_lines`` does) and whether to close it."""
    if str(path) == STDIN:
        return sys.stdin.buffer, False
    return open_bytes(path), True


def shard_lines(path: str | Path, shard: tuple[int, int] = (0, 1)) -> Iterator[tuple[int, str]]:
    """(0-based line number, text) of the shard's non-blank lines, read lazily (``"-"``: standard input)."""
    i, n = shard
    f, close = _open_input(path)
    try:
        for number, raw in enumerate(f):
            if number % n != i:
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"bytes that are not UTF-8 at byte {e.start} of the line", path, number + 1) from None
            if number == 0:
                text = text.removeprefix("\ufeff")  # a BOM is not part of the first text
            text = text.removesuffix("\n").removesuffix("\r")
            if text.strip():
                yield number, text
    finally:
        if close:
            f.close()


def _resume_point(out: Path) -> tuple[int, int | None]:
    """The output file's complete lines and its last record's ``line``; a partial last line is truncated away
    first (what a kill mid-write leaves), so appending continues on a line boundary."""
    if out.is_dir():
        raise DataError("expected a file to write predictions to, found a folder", out)
    if not out.exists():
        return 0, None
    size, count, last_newline = out.stat().st_size, 0, -1
    with open(out, "rb") as f:
        offset = 0
        while block := f.read(1 << 20):
            count += block.count(b"\n")
            if (pos := block.rfind(b"\n")) >= 0:
                last_newline = offset + pos
            offset += len(block)
    if last_newline + 1 != size:
        with open(out, "r+b") as f:
            f.truncate(last_newline + 1)
            f.flush()
            os.fsync(f.fileno())
    if not count:
        return 0, None
    with open(out, "rb") as f:  # the last complete line: read backwards from its end
        start = max(0, last_newline - (1 << 16))
        f.seek(start)
        tail = f.read(last_newline - start).rsplit(b"\n", 1)[-1]
    try:
        return count, int(json.loads(tail)["line"])
    except (ValueError, KeyError, TypeError):
        raise DataError("its last line is not a prediction record with a \"line\"; not an output of "
                        "emotune predict --out? (remove it or pick another --out)", out, count) from None


def predict_file(predictor: Predictor | Callable[[], Predictor], path: str | Path, out: str | Path,
                 shard: tuple[int, int] = (0, 1), chunk: int = CHUNK, min_confidence: float | None = None,
                 progress: bool = True, on_chunk: Callable[[int], None] | None = None) -> dict:
    """Predict every non-blank line of ``path`` (``"-"``: standard input) in this ``shard`` into the JSON-lines
    file ``out``: per text the record ``Predictor.predict`` returns plus ``"line"`` (0-based, in the input file).

    ``predictor``: a Predictor, or a function making one (called only when there is something to predict, so a
    finished output never loads the model). ``on_chunk(texts_so_far)`` runs after each chunk is written.
    Returns ``{texts, seconds, texts_per_s, skipped, peak_rss_mb, complete}``: ``texts`` predicted now,
    ``skipped`` already in ``out``; ``complete`` is True when there was nothing left to predict."""
    check_shard(shard)
    if chunk < 1:
        raise ConfigError(f"chunk must be at least 1 line, got {chunk}")
    check_min_confidence(min_confidence)
    out = Path(out)
    done, last_line = _resume_point(out)
    with closing(shard_lines(path, shard)) as lines:  # closes the input on an error too
        return _stream(predictor, lines, path, out, done, last_line, shard, chunk, min_confidence, progress,
                       on_chunk)


def _stream(predictor: Predictor | Callable[[], Predictor], lines: Iterator[tuple[int, str]], path: str | Path,
            out: Path, done: int, last_line: int | None, shard: tuple[int, int], chunk: int,
            min_confidence: float | None, progress: bool, on_chunk: Callable[[int], None] | None) -> dict:
    seen, last_seen = 0, None
    for seen, (last_seen, _) in enumerate(islice(lines, done), 1):  # the texts already predicted
        pass
    # The skipped texts must end where the output does: else ``out`` belongs to another input or shard.
    if seen < done:
        raise DataError(f"holds {done:,} predictions but shard {shard[0]}/{shard[1]} of {path} has only {seen:,} "
                        "texts: another input or --shard? (remove it or pick another --out)", out)
    if done and last_seen != last_line:
        raise DataError(f"its last record is line {last_line} but shard {shard[0]}/{shard[1]}'s text {done:,} of "
                        f"{path} is line {last_seen}: another input or --shard? (remove it or pick another --out)",
                        out)
    start = time.perf_counter()
    texts = 0
    model: Predictor | None = predictor if isinstance(predictor, Predictor) else None
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "ab") as f:
        while batch := _take(lines, chunk):
            if model is None:
                model = predictor()  # type: ignore[operator]
                start = time.perf_counter()  # the rate counts prediction, not loading the model
            rows = model.predict([t for _, t in batch], min_confidence)
            f.write(b"".join(json.dumps({"line": n, **row}, ensure_ascii=False).encode("utf-8") + b"\n"
                             for (n, _), row in zip(batch, rows)))
            f.flush()
            os.fsync(f.fileno())  # a kill after this point never loses the chunk
            texts += len(batch)
            seconds = time.perf_counter() - start
            if progress:
                console.print(f"predict: {done + texts:,} texts in {out.name} (line {batch[-1][0]:,} of the input) "
                              f"· {texts / max(seconds, 1e-9):,.0f} texts/s", markup=False, highlight=False,
                              soft_wrap=True)
            if on_chunk is not None:
                on_chunk(texts)
    seconds = time.perf_counter() - start if texts else 0.0
    return {"texts": texts, "seconds": seconds, "texts_per_s": texts / seconds if seconds > 0 else 0.0,
            "skipped": done, "peak_rss_mb": peak_memory_mb(torch.device("cpu")), "complete": texts == 0}


def _take(lines: Iterator[tuple[int, str]], n: int) -> list[tuple[int, str]]:
    return list(islice(lines, n))
