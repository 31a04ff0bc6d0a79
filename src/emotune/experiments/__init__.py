"""Experiments: grids of runs from YAML (grid.py) and Optuna hyper-parameter searches (tune.py)."""

from .grid import Cell, Grid, GridInterrupted, plan, run_grid
from .tune import SearchSpace, TuneResult, tune

__all__ = ["Cell", "Grid", "GridInterrupted", "SearchSpace", "TuneResult", "plan", "run_grid", "tune"]
