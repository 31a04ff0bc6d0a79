"""The report's calibration section: for each chosen classification run with test predictions, ECE, Brier
score and NLL before and after its calibration (metrics.json), reliability diagrams (accuracy against mean
confidence per 15 bins, before and after) and the coverage/accuracy curve (answering only texts at or above
a confidence, as ``--min-confidence`` does)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..runs import predictions_file
from ..tasks.calibration import coverage_curve, reliability
from . import plots, tables
from .collect import Entry, task_kind
from .render import Block, Figure, Heading, Table, Text

FIGURES = ("ece", "brier", "nll")


def _confidences(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """'calibrated' (and 'uncalibrated' when the file has it): (confidence, correct) per text."""
    rows = tables.read_predictions(path)
    correct = np.array([r["label"] == r["predicted"] for r in rows], dtype=np.float64)
    out = {"calibrated": (np.array([float(r["confidence"]) for r in rows]), correct)}
    if rows and "confidence_uncalibrated" in rows[0]:  # temperature scaling: the same predictions
        out["uncalibrated"] = (np.array([float(r["confidence_uncalibrated"]) for r in rows]), correct)
    return out


def calibration_section(chosen: dict[str, Entry], out: Path, split: str = "test") -> tuple[list[Block], list[Path]]:
    found = {fam: e for fam, e in chosen.items() if task_kind(e) == "classification"
             and e.value(split, "ece") is not None and (e.path / predictions_file(split)).is_file()}
    if not found:
        return [], []
    rows = []
    for fam, e in found.items():
        cells = [fam]
        for name in FIGURES:
            raw, cal = e.value(split, f"{name}_uncalibrated"), e.value(split, name)
            cells.append(f"{raw:.4f} → {cal:.4f}" if raw is not None else f"{cal:.4f} (no calibration)")
        how = ((e.run.task_state or {}).get("calibration") or {})
        cells.append(f"T = {how['temperature']:.3f}" if how.get("how") == "temperature" else how.get("how", "none"))
        rows.append(cells)
    blocks: list[Block] = [
        Heading("Calibration", 2),
        Text(f"How well the chosen runs' probabilities match how often they are right on the {split} split: "
             "expected calibration error (15 equal-width bins), Brier score and negative log-likelihood, before → "
             "after the calibration each run fitted on its validation split (`train.calibration`)."),
        Table(["family", "ECE", "Brier", "NLL", "calibration"], rows)]
    curves = {fam: _confidences(e.path / predictions_file(split)) for fam, e in found.items()}
    rel = plots.reliability_plot({fam: {k: reliability(*v) for k, v in c.items()} for fam, c in curves.items()},
                                 out / "reliability.png")
    cov = plots.coverage_plot({fam: coverage_curve(*c["calibrated"]) for fam, c in curves.items()},
                              out / "coverage.png")
    blocks += [Figure(rel, f"Reliability diagrams on {split}: accuracy against mean confidence per bin (marker area: "
                           "texts in the bin); the diagonal is perfect calibration."),
               Figure(cov, f"Answering only the most confident {split} texts: accuracy against the share answered "
                           "(the rest abstain, as with --min-confidence).")]
    return blocks, [rel, cov]
