"""Records beside every number: the harness commit, peak memory, and the grid summary."""
from __future__ import annotations

import re

from benchmark.provenance import harness_commit, peak_rss_mb
from benchmark.console import format_grid_summary


def test_harness_commit_names_this_checkouts_commit():
    assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?|unknown \(not a git checkout\)", harness_commit())


def test_peak_rss_is_a_positive_number_of_megabytes():
    assert 10 < peak_rss_mb() < 64 * 1024


def _metrics(method, ir, clean, worst, flags):
    return {"config": {"method": method}, "data": {"imbalance_ratio": ir}, "seeds": {"training": 0},
            "evaluation": {"attacks": {"clean": {"balanced": clean}, "worst_case": {"balanced": worst}}},
            "audit": {"flags": flags}}


def test_grid_summary_has_one_row_per_cell_with_worst_case_balanced_robustness():
    text = format_grid_summary([_metrics("at", 10.0, 0.937, 0.851, []),
                                _metrics("taet.authors", 50.0, 0.5, 0.25, ["pgd20 above fgsm"])])
    rows = text.splitlines()
    assert rows[1].split() == ["at", "10", "0", "93.7", "85.1", "-"]
    assert rows[2].split() == ["taet.authors", "50", "0", "50.0", "25.0", "1"]
