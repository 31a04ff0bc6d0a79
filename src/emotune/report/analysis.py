"""The report's section for `emotune analyze` results: any ``analysis.json`` found in the report's folders
becomes a totals table per run, a per-layer table and the per-layer plots."""

from __future__ import annotations

from pathlib import Path

from ..analyze.core import AnalysisResult, analyze
from ..io import read_json, write_text
from .render import Block, Figure, Heading, Table, Text, to_markdown

ANALYSIS = "analysis.json"


def find_analyses(dirs: list[str | Path]) -> dict[Path, Path]:
    """Every analysis.json at or below the folders, each once, sorted by path -> its folder as the report shows
    it: relative to the folder it was found in, named by that folder's own name (committed reports never show a
    machine's absolute paths)."""
    found: dict[Path, Path] = {}
    for d in map(Path, dirs):
        if d.is_dir():
            for p in d.rglob(ANALYSIS):
                found.setdefault(p.resolve(), Path(d.resolve().name) / p.parent.relative_to(d))
    return dict(sorted(found.items()))


def _num(v, digits: int = 2) -> str:
    return "" if v is None else f"{v:,.{digits}f}"


def analyze_runs(runs: list, out: str | Path, **options) -> AnalysisResult:
    """``emotune.analyze.analyze`` (analysis.json), then analysis.md and its plots beside it."""
    result = analyze(runs, out, **options)
    blocks, result.figures = analysis_blocks(result.data, result.out, level=2)
    write_text(result.markdown, to_markdown([Heading("Intruder dimensions and update ranks", 1), *blocks]))
    return result


def analysis_blocks(data: dict, out: Path, *, level: int = 2, prefix: str = "analysis",
                    source: Path | None = None) -> tuple[list[Block], list[Path]]:
    """Blocks for one analysis; its plots are drawn into ``out`` as ``<prefix>-*.png``."""
    from ..analyze import plots

    out = Path(out)
    k, eps = data["top_k"], data["epsilon"]
    where = f" (from `{source}`)" if source else ""
    blocks: list[Block] = [
        Heading("Intruder dimensions: LoRA vs full fine-tuning", level),
        Text(f"Per run{where}, every linear weight matrix of the encoder that fine-tuning changed (full "
             f"fine-tuning: all of them; LoRA: the adapted ones, merged) is compared with the pretrained one. An "
             f"**intruder dimension** is one of the fine-tuned matrix's top-{k} left singular vectors whose largest "
             f"|cosine| with every left singular vector of the pretrained matrix is below {eps} (Shuttleworth et al. "
             f"2024, arXiv 2410.21228). The **effective rank** of the update ΔW = W − W0 is the exponential of the "
             f"entropy of its normalised singular values (Roy & Vetterli 2007); ‖ΔW‖_F is its Frobenius norm."),
        Table(["run", "method", "matrices changed", "intruder dimensions", "matrices with intruders",
               "mean effective rank of ΔW", "‖ΔW‖_F (all matrices)"],
              [[r["label"], r["method"], f"{r['totals']['matrices']:,}", f"{r['totals']['intruders']:,}",
                f"{r['totals']['matrices_with_intruders']:,}", _num(r["totals"]["mean_effective_rank"]),
                _num(r["totals"]["update_norm"], 4)] for r in data["runs"]],
              caption="Totals per run", align=["l", "l", "r", "r", "r", "r", "r"]),
    ]
    groups, table = plots.per_layer(data)
    if groups:
        blocks.append(Table(["layer", *[r["label"] for r in data["runs"]]],
                            [[g, *[_cell(table[r["label"]].get(g)) for r in data["runs"]]] for g in groups],
                            caption="Per layer: intruder dimensions / mean effective rank of ΔW"))
    figures = []
    if any(r["matrices"] for r in data["runs"]):
        for name, draw, caption in (
                ("intruders", plots.intruders_plot, f"Intruder dimensions per layer (top-{k}, ε = {eps})."),
                ("effective-rank", plots.effective_rank_plot, "Effective rank of ΔW per layer (mean over the "
                                                              "layer's changed matrices)."),
                ("update-norm", plots.update_norm_plot, "Frobenius norm of ΔW per layer.")):
            path = draw(data, out / f"{prefix}-{name}.png")
            figures.append(path)
            blocks.append(Figure(path, caption))
    return blocks, figures


def _cell(row: dict | None) -> str:
    return "" if row is None else f"{row['intruders']} / {row['effective_rank']:.1f}"


def report_section(dirs: list[str | Path], out: Path) -> tuple[list[Block], list[Path]]:
    """The blocks and plots of every analysis found in ``dirs`` (none found: nothing)."""
    blocks: list[Block] = []
    figures: list[Path] = []
    found = find_analyses(dirs)
    for i, (path, shown) in enumerate(found.items()):
        prefix = "analysis" if len(found) == 1 else f"analysis-{i + 1}"
        more, figs = analysis_blocks(read_json(path), out, prefix=prefix, source=shown)
        blocks += more
        figures += figs
    return blocks, figures
