"""The report's plots (matplotlib, Agg backend: no display needed), written as PNG files."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .collect import Entry, hyper_label, is_percent  # noqa: E402

MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">"]
DPI = 110
plt.rcParams.update({"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 8.5,
                     "axes.grid": True, "grid.alpha": 0.3, "figure.facecolor": "white"})


def _save(fig, path: Path, extra: tuple = ()) -> Path:
    # Legends placed below the axes (and a suptitle, ``extra``) must be named, or the tight box cuts them off.
    legends = [a for ax in fig.axes for a in ax.get_children() if isinstance(a, matplotlib.legend.Legend)]
    fig.savefig(path, dpi=DPI, bbox_inches="tight", bbox_extra_artists=legends + list(extra))
    plt.close(fig)
    return path


def _percent(metric: str) -> bool:
    return is_percent(metric)


def tradeoff_plot(entries: list[Entry], chosen: dict[str, Entry], path: Path, metric: str = "accuracy") -> Path:
    """Validation metric against trainable parameters (log scale) for every run: colour = training runtime,
    marker area = peak memory, marker shape = family; chosen runs ringed and labelled with their test figure."""
    fig, ax = plt.subplots(figsize=(9.5, 5.8))
    families = list(dict.fromkeys(e.family for e in entries))
    runtimes = [e.value("train", "runtime_s") or 0.0 for e in entries]
    minutes = max(runtimes, default=0) >= 300
    colour = np.array(runtimes) / (60 if minutes else 1)
    memory = np.array([e.value("train", "peak_memory_mb") or 0.0 for e in entries])
    top = memory.max() if len(memory) and memory.max() > 0 else 1.0

    def area(mb: float) -> float:
        return 30 + 370 * mb / top

    norm = matplotlib.colors.Normalize(vmin=float(colour.min()), vmax=float(max(colour.max(), colour.min() + 1e-9)))
    scale = 100 if _percent(metric) else 1
    for fi, fam in enumerate(families):
        idx = [i for i, e in enumerate(entries) if e.family == fam]
        ax.scatter([entries[i].value("train", "trainable_params") for i in idx],
                   [scale * entries[i].value("validation", metric) for i in idx],
                   s=[area(memory[i]) for i in idx], c=colour[idx], cmap="viridis", norm=norm,
                   marker=MARKERS[fi % len(MARKERS)], edgecolors="black", linewidths=0.5, alpha=0.85)
    for fam, e in chosen.items():
        ax.scatter([e.value("train", "trainable_params")], [scale * e.value("validation", metric)],
                   s=area(e.value("train", "peak_memory_mb") or 0) * 2.2, facecolors="none", edgecolors="crimson",
                   linewidths=1.6)
    ax.set_xscale("symlog", linthresh=1)  # log scale that still shows zero-shot runs (0 parameters) at 0
    ax.set_xlabel("trainable parameters (log scale; 0 = nothing trained: zero-shot, ensembles)")
    ax.set_ylabel(f"validation {metric}" + (" (%)" if _percent(metric) else ""))
    ax.set_title(f"Validation {metric} against trainable parameters (every finished run)")
    ax.margins(x=0.15, y=0.12)
    lo, hi = ax.get_xlim()
    ax.set_xlim(-0.6 if lo < 0 else lo, max(hi, 10.0))  # no negative counts; a readable span at 0
    bar = fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap="viridis"), ax=ax, pad=0.02)
    bar.set_label(f"training runtime ({'min' if minutes else 's'})")

    def family_label(fam: str) -> str:
        test = chosen[fam].value("test", metric) if fam in chosen else None
        return fam if test is None else f"{fam} (chosen run: test {metric} {scale * test:.2f})"

    shapes = [plt.Line2D([], [], marker=MARKERS[i % len(MARKERS)], linestyle="", color="grey",
                         markeredgecolor="black", markersize=8, label=family_label(f)) for i, f in enumerate(families)]
    shapes.append(plt.Line2D([], [], marker="o", linestyle="", markerfacecolor="none", markeredgecolor="crimson",
                             markersize=11, label="ring: the family's chosen run (best validation)"))
    # Marker sizes in one row under the axis; the families below them (two columns when there are many).
    first = ax.legend(handles=shapes, title="family", loc="upper left", bbox_to_anchor=(0, -0.24), frameon=False,
                      ncol=2 if len(shapes) > 7 else 1, fontsize="small")
    ax.add_artist(first)
    refs = sorted({float(f"{v:.2g}") for v in (top / 4, top / 2, top)})
    sizes = [plt.scatter([], [], s=area(v), color="lightgrey", edgecolors="black", linewidths=0.5, label=f"{v:,.0f} MB")
             for v in refs]
    ax.legend(handles=sizes, title="peak memory (marker area)", loc="upper left", bbox_to_anchor=(0, -0.1),
              frameon=False, ncol=len(sizes), columnspacing=2.5, alignment="left")
    return _save(fig, path)


def curves_plot(entries: list[Entry], keys: list[str], chosen: Entry, path: Path, title: str,
                metric: str = "accuracy", loss: str = "cross-entropy loss") -> Path:
    """Learning curves of a family: validation metric (left) and losses (right) against the training step."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    cmap = plt.get_cmap("tab10" if len(entries) <= 10 else "tab20")
    scale = 100 if _percent(metric) else 1
    val_loss = False
    for i, e in enumerate(entries):
        if not e.history:
            continue
        colour = cmap(i % cmap.N)
        steps = [h["step"] for h in e.history]
        label = hyper_label(e, keys) + (" ★" if e is chosen else "")
        width = 2.2 if e is chosen else 1.2
        # A run chosen on another metric than it evaluated during training (an instruction-tuned run trained on
        # its answers' loss, reported on score) has no curve of it: only its losses are drawn.
        scored = [h for h in e.history if metric in h["validation"]]
        left.plot([h["step"] for h in scored], [scale * h["validation"][metric] for h in scored], marker="o",
                  markersize=3, color=colour, linewidth=width, label=label)
        best = e.value("train", "best_step")
        best_h = next((h for h in scored if h["step"] == best), None)
        if best_h is not None:
            left.scatter([best], [scale * best_h["validation"][metric]], s=70, facecolors="none", edgecolors=colour,
                         linewidths=1.5, zorder=3)
        if all("loss" in h["validation"] for h in e.history):  # a multi-task run has per-task losses only
            right.plot(steps, [h["validation"]["loss"] for h in e.history], color=colour, linewidth=width)
            val_loss = True
        right.plot(steps, [h["train_loss"] for h in e.history], color=colour, linewidth=1, linestyle="--")
    left.set_xlabel("training step")
    left.set_ylabel(f"validation {metric}" + (" (%)" if _percent(metric) else ""))
    left.set_title(f"{title}: validation {metric} (circle: best checkpoint)")
    right.set_xlabel("training step")
    right.set_ylabel(loss)
    only_train = not val_loss and any(e.history for e in entries)  # multi-task runs: no overall validation loss
    right.set_title("training loss" if only_train else "validation loss (solid) and training loss (dashed)")
    left.legend(loc="upper left", bbox_to_anchor=(0, -0.15), ncol=min(3, max(1, len(entries))), frameon=False)
    fig.tight_layout()
    return _save(fig, path)


def confusion_plot(chosen: dict[str, Entry], path: Path, split: str = "test") -> Path:
    """Confusion matrices of the chosen runs, rows normalised (share of each true class), counts printed."""
    return confusion_matrices([(f"{fam}\n{split} accuracy {100 * e.value(split, 'accuracy'):.2f}%",
                                e.value(split, "confusion_matrix"), e.run.labels)
                               for fam, e in chosen.items() if e.value(split, "confusion_matrix")], path)


def confusion_matrices(items: list[tuple[str, list, list[str]]], path: Path) -> Path:
    """One panel per (title, confusion matrix, labels): rows normalised (share of each true class), counts
    printed."""
    n = max(1, len(items))
    cols = min(3, n)
    rows = math.ceil(n / cols)
    size = max(3.6, 0.55 * max((len(labels) for _, _, labels in items), default=6) + 1.2)
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols + 1.2, size * rows + 0.4), squeeze=False,
                             layout="constrained")
    image = None
    for k, (ax, (title, matrix, labels)) in enumerate(zip(axes.flat, items)):
        cm = np.array(matrix, dtype=float)
        share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        image = ax.imshow(100 * share, cmap="Blues", vmin=0, vmax=100)
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
        ax.set_yticks(range(len(labels)), labels)
        ax.grid(False)
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=8,
                        color="white" if share[i, j] > 0.6 else "black")
        ax.set_xlabel("predicted label")
        if k % cols == 0:
            ax.set_ylabel("true label")
        ax.set_title(title)
    for ax in list(axes.flat)[len(items):]:
        ax.axis("off")
    if image is not None:
        bar = fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8)
        bar.set_label("% of the true class (numbers: counts)")
    return _save(fig, path)


def _grid(n: int, size: float = 3.6, cols: int = 3):
    cols = min(cols, max(1, n))
    rows = math.ceil(max(1, n) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols + 0.6, size * rows + 0.4), squeeze=False,
                             layout="constrained")  # keeps the suptitle clear of the panels' titles
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    return fig, list(axes.flat)[:n]


def scatter_plot(values: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str) -> Path:
    """Regression: predicted against gold value, one panel per target, the diagonal = a perfect prediction."""
    fig, axes = _grid(len(values))
    for ax, (target, (gold, pred)) in zip(axes, values.items()):
        ax.scatter(gold, pred, s=10, alpha=0.5, edgecolors="none")
        lo, hi = float(min(gold.min(), pred.min())), float(max(gold.max(), pred.max()))
        ax.plot([lo, hi], [lo, hi], color="crimson", linewidth=1, linestyle="--")
        r = np.corrcoef(gold, pred)[0, 1] if np.ptp(gold) > 0 and np.ptp(pred) > 0 else 0.0
        ax.set_title(f"{target} (r = {r:.3f}, n = {len(gold)})")
        ax.set_xlabel(f"gold {target}")
        ax.set_ylabel(f"predicted {target}")
    return _save(fig, path, (fig.suptitle(title),))


def error_plot(values: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str) -> Path:
    """Regression: histogram of predicted − gold per target (a bias shows as a shifted peak)."""
    fig, axes = _grid(len(values))
    for ax, (target, (gold, pred)) in zip(axes, values.items()):
        err = pred - gold
        ax.hist(err, bins=min(30, max(5, len(err) // 5)), color="tab:blue", alpha=0.8)
        ax.axvline(0, color="crimson", linewidth=1, linestyle="--")
        ax.set_title(f"{target} (mean {err.mean():+.3f}, MAE {np.abs(err).mean():.3f})")
        ax.set_xlabel(f"predicted − gold {target}")
        ax.set_ylabel("texts")
    return _save(fig, path, (fig.suptitle(title),))


def label_f1_plot(per_split: dict[str, dict[str, float]], path: Path, title: str) -> Path:
    """Multi-label: each label's F1 (%) as bars, one bar per split (validation, test), labels in the run's order."""
    labels = list(next(iter(per_split.values())))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(labels) * len(per_split) + 2), 4.2))
    width = 0.8 / len(per_split)
    x = np.arange(len(labels))
    for i, (split, f1) in enumerate(per_split.items()):
        ax.bar(x + (i - (len(per_split) - 1) / 2) * width, [100 * f1.get(n, 0.0) for n in labels], width,
               label=split)
    ax.set_xticks(x, labels, rotation=45 if len(labels) > 8 else 0, ha="right" if len(labels) > 8 else "center")
    ax.set_ylim(0, 100)
    ax.set_ylabel("F1 (%)")
    ax.set_title(title)
    ax.legend(loc="upper right")
    fig.tight_layout()
    return _save(fig, path)


def reliability_plot(curves: dict[str, dict[str, list[tuple[float, float, int]]]], path: Path) -> Path:
    """One panel per family: (mean confidence, accuracy, count) per bin, before and after calibration."""
    fig, axes = _grid(len(curves))
    for ax, (fam, by) in zip(axes, curves.items()):
        ax.plot([0, 1], [0, 1], color="grey", linewidth=1, linestyle="--")
        for (name, points), color in zip(sorted(by.items(), reverse=True), ("tab:orange", "tab:blue")):
            if points:
                conf, acc, n = (np.array(x) for x in zip(*points))
                ax.plot(conf, acc, color=color, linewidth=1)
                ax.scatter(conf, acc, s=8 + 200 * n / n.sum(), color=color, alpha=0.7, label=name)
        ax.set_title(fam)
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1.02)
        ax.legend(loc="upper left")
    return _save(fig, path)


def coverage_plot(curves: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], path: Path) -> Path:
    """Accuracy of the answered texts against the share answered, one line per family."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for fam, (coverage, accuracy, _) in curves.items():
        ax.plot(100 * coverage, 100 * accuracy, label=fam)
    ax.set_xlabel("texts answered (%), most confident first")
    ax.set_ylabel("accuracy of the answered (%)")
    ax.legend(loc="lower left")
    return _save(fig, path)
