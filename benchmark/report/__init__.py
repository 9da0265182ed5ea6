"""HTML report of a results folder: leaderboards, per-class tables, figures and exports.

``python -m benchmark.report --results results --out reports`` writes ``reports/index.html``; see
``site.build_report`` for the same from Python.
"""
from .site import build_report

__all__ = ["build_report"]
