"""Comparison reports from run folders: tables (tables.py), plots (plots.py), Markdown/HTML (render.py)."""

from .build import ReportResult, build_report
from .collect import FAMILY_NAMES, register_family

__all__ = ["FAMILY_NAMES", "ReportResult", "build_report", "register_family"]
