"""A report is a list of blocks (headings, text, tables, figures) rendered twice: Markdown with PNG files
beside it, and one self-contained HTML page (CSS inline, images base64-inlined, nothing fetched)."""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Text:
    """A paragraph; ``**bold**`` and ```code``` are understood in both outputs."""

    text: str


@dataclass
class Table:
    columns: list[str]
    rows: list[list[str]]
    caption: str = ""
    align: list[str] = field(default_factory=list)
    """Per column: ``l`` or ``r`` (default: first column left, the rest right)."""
    plain: list[int] = field(default_factory=list)
    """Columns of free text (texts from the data): shown as written, their Markdown characters escaped."""

    def alignment(self) -> list[str]:
        return self.align or ["l"] + ["r"] * (len(self.columns) - 1)


@dataclass
class Figure:
    path: Path
    caption: str


Block = Union[Heading, Text, Table, Figure]


# ---- Markdown --------------------------------------------------------------------------------------

def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def md_escape(text: str) -> str:
    """A data text that Markdown must not format (``*``, ``_``, backticks, brackets, HTML tags...)."""
    return re.sub(r"([\\`*_\[\]<>~&])", r"\\\1", str(text))


def _md_row(cells: list[str], plain: list[int]) -> str:
    return "| " + " | ".join(_md_cell(md_escape(c) if i in plain else c) for i, c in enumerate(cells)) + " |"


def to_markdown(blocks: list[Block]) -> str:
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"{'#' * b.level} {b.text}")
        elif isinstance(b, Text):
            out.append(b.text)
        elif isinstance(b, Table):
            lines = []
            if b.caption:
                lines.append(f"*{b.caption}*\n")
            lines.append("| " + " | ".join(_md_cell(c) for c in b.columns) + " |")
            lines.append("|" + "|".join("---:" if a == "r" else ":---" for a in b.alignment()) + "|")
            lines += [_md_row(row, b.plain) for row in b.rows]
            out.append("\n".join(lines))
        elif isinstance(b, Figure):
            out.append(f"![{b.caption}]({b.path.name})\n\n*{b.caption}*")
    return "\n\n".join(out) + "\n"


# ---- HTML --------------------------------------------------------------------------------------------

CSS = """
body { font: 15px/1.5 -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; max-width: 1200px;
       margin: 2em auto; padding: 0 1.5em; color: #1f2328; }
h1, h2, h3 { line-height: 1.25; } h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .3em; margin-top: 2em; }
table { border-collapse: collapse; margin: .5em 0 1.5em; font-size: 13px; display: block; overflow-x: auto; }
th, td { border: 1px solid #d0d7de; padding: 4px 9px; vertical-align: top; }
th { background: #f6f8fa; } tr:nth-child(even) td { background: #fbfcfd; }
td.r, th.r { text-align: right; white-space: nowrap; } td.l { text-align: left; }
caption { caption-side: top; text-align: left; font-style: italic; padding-bottom: .3em; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-style: italic; color: #57606a; }
code { background: #f6f8fa; padding: .1em .3em; border-radius: 4px; font-size: 90%; }
"""


def _inline(text: str) -> str:
    """Escape, then turn **bold** and `code` into tags."""
    s = html.escape(str(text))
    s = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", s)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", s)


def _image(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def to_html(blocks: list[Block], title: str) -> str:
    body: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            body.append(f"<h{b.level}>{_inline(b.text)}</h{b.level}>")
        elif isinstance(b, Text):
            body.append(f"<p>{_inline(b.text)}</p>")
        elif isinstance(b, Table):
            align = b.alignment()
            rows = ["<tr>" + "".join(f'<th class="{a}">{_inline(c)}</th>' for c, a in zip(b.columns, align)) + "</tr>"]
            rows += ["<tr>" + "".join(f'<td class="{a}">{html.escape(str(c)) if i in b.plain else _inline(c)}</td>'
                                      for i, (c, a) in enumerate(zip(row, align))) + "</tr>" for row in b.rows]
            caption = f"<caption>{_inline(b.caption)}</caption>" if b.caption else ""
            body.append(f"<table>{caption}{''.join(rows)}</table>")
        elif isinstance(b, Figure):
            body.append(f'<figure><img src="{_image(b.path)}" alt="{html.escape(b.caption)}">'
                        f"<figcaption>{_inline(b.caption)}</figcaption></figure>")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")
