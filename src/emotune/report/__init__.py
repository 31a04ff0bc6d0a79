"""Comparison reports from run folders: tables (tables.py), plots (plots.py), Markdown/HTML (render.py)."""

from .build import ReportResult, build_report

__all__ = ["ReportResult", "build_report"]
