"""Per-layer plots of an analysis (matplotlib, Agg backend): intruder dimensions, effective rank of the
update and its norm, one series per run."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

DPI = 110


def group(matrix: dict) -> str:
    """The x-axis group of a matrix: its layer index, or the first part of its name outside numbered layers."""
    return str(matrix["layer"]) if matrix["layer"] is not None else matrix["name"].split(".")[0]


def per_layer(data: dict) -> tuple[list[str], dict[str, dict[str, dict]]]:
    """(groups in order, run label -> group -> {intruders, effective_rank, update_norm}): intruders summed
    over the group's matrices, effective rank averaged, norms combined (root of the sum of squares)."""
    groups: list[str] = []
    table: dict[str, dict[str, dict]] = {}
    for run in data["runs"]:
        rows: dict[str, list[dict]] = {}
        for m in run["matrices"]:
            rows.setdefault(group(m), []).append(m)
        table[run["label"]] = {g: {"intruders": sum(m["intruders"] for m in ms),
                                   "effective_rank": float(np.mean([m["effective_rank"] for m in ms])),
                                   "update_norm": float(np.sqrt(sum(m["update_norm"] ** 2 for m in ms))),
                                   "matrices": len(ms)} for g, ms in rows.items()}
        groups += [g for g in rows if g not in groups]
    numbered = sorted((g for g in groups if g.isdigit()), key=int)
    return numbered + [g for g in groups if not g.isdigit()], table


def _legend_label(run: dict) -> str:
    return f"{run['label']} ({run['method']})"


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def intruders_plot(data: dict, path: Path) -> Path:
    """Grouped bars: intruder dimensions per layer, one bar per run."""
    groups, table = per_layer(data)
    runs = data["runs"]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(groups) + 3), 4.2))
    width = 0.8 / max(1, len(runs))
    x = np.arange(len(groups))
    for i, run in enumerate(runs):
        values = [table[run["label"]].get(g, {}).get("intruders", 0) for g in groups]
        ax.bar(x + (i - (len(runs) - 1) / 2) * width, values, width, label=_legend_label(run))
    ax.set_xticks(x, [f"layer {g}" if g.isdigit() else g for g in groups])
    ax.set_xlabel("encoder layer")
    ax.set_ylabel("intruder dimensions (count per layer)")
    ax.set_title(f"Intruder dimensions per layer, summed over its changed matrices\n(top-{data['top_k']} left "
                 f"singular vectors of W with |cos| < {data['epsilon']} to every one of W0)")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.legend(loc="upper left", bbox_to_anchor=(0, -0.14), frameon=False)
    return _save(fig, path)


def _line_plot(data: dict, path: Path, key: str, ylabel: str, title: str) -> Path:
    groups, table = per_layer(data)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(groups) + 3), 4.2))
    x = np.arange(len(groups))
    for run in data["runs"]:
        rows = table[run["label"]]
        xs = [i for i, g in enumerate(groups) if g in rows]
        ax.plot(xs, [rows[groups[i]][key] for i in xs], marker="o", label=_legend_label(run))
    ax.set_xticks(x, [f"layer {g}" if g.isdigit() else g for g in groups])
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("encoder layer")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(0, -0.14), frameon=False)
    return _save(fig, path)


def effective_rank_plot(data: dict, path: Path) -> Path:
    return _line_plot(data, path, "effective_rank",
                      "effective rank of ΔW = W − W0\n(mean over the layer's matrices, log scale)",
                      "Effective rank of the update per layer (Roy & Vetterli entropy rank)")


def update_norm_plot(data: dict, path: Path) -> Path:
    return _line_plot(data, path, "update_norm", "‖ΔW‖_F over the layer's matrices\n(weight units, log scale)",
                      "Size of the update per layer (Frobenius norm)")
