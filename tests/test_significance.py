"""Significance between leaderboard rows: the exact McNemar test, the class-stratified paired bootstrap of the
Balanced Robustness difference, t-intervals over seeds, and what the rendered leaderboard and its exports
show for a built pair that differs significantly and one that does not."""
from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from benchmark.report import build_report
from benchmark.report import significance as sig
from benchmark.store import load_results
from test_report import PageTables, column, table
from test_report_fixtures import make_cell

BOARD = "leaderboard-mnist5k-ir10-Linf-eps0.1-balanced"


# ----------------------------------------------------------------------------- McNemar, t, seeds

@pytest.mark.parametrize("b, c, p", [(0, 6, 0.03125), (6, 0, 0.03125), (5, 5, 1.0), (1, 9, 0.021484375),
                                     (9, 1, 0.021484375), (0, 0, 1.0), (0, 1, 1.0), (2, 3, 1.0),
                                     (0, 10, 2 / 1024), (3, 17, 2 * (1 + 20 + 190 + 1140) / 2 ** 20)])
def test_exact_mcnemar_hand_computed(b, c, p):
    assert sig.mcnemar_exact(b, c) == pytest.approx(p, rel=1e-12)


def test_exact_mcnemar_large_counts_stay_finite_and_ordered():
    assert 0 < sig.mcnemar_exact(450, 550) < 0.01 < sig.mcnemar_exact(490, 510) <= 1
    with pytest.raises(ValueError):
        sig.mcnemar_exact(-1, 2)


def _t_cdf_minus_half(q: float, df: int, steps: int = 20000) -> float:
    """∫_0^q of the Student-t density (Simpson's rule)."""
    x = np.linspace(0.0, q, steps + 1)
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    f = np.exp(log_norm - (df + 1) / 2 * np.log1p(x * x / df))
    h = q / steps
    return float(h / 3 * (f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum()))


@pytest.mark.parametrize("df", [1, 2, 3, 4, 9, 19, 30, 31, 45, 100, 1000])
def test_t_quantiles_match_a_numerical_integral(df):
    q = sig.t_quantile_975(df)
    assert _t_cdf_minus_half(q, df) == pytest.approx(0.475, abs=2e-7)


def test_seed_stats_mean_std_n_and_t_interval():
    stats = sig.seed_stats([0.2, 0.4, None, float("nan")])
    assert (stats.mean, stats.n) == (pytest.approx(0.3), 2)
    assert stats.std == pytest.approx(math.sqrt(0.02))
    half = 12.706204736 * math.sqrt(0.02) / math.sqrt(2)
    assert stats.interval == pytest.approx((0.3 - half, 0.3 + half))
    one = sig.seed_stats([0.5])
    assert (one.mean, one.std, one.n, one.interval) == (0.5, None, 1, None)
    assert sig.seed_stats([]).n == 0


# ----------------------------------------------------------------------------- the paired bootstrap

def outcomes(y, correct, ids=None):
    y = np.asarray(y)
    return SimpleNamespace(ids=np.arange(y.size) if ids is None else np.asarray(ids), y=y,
                           correct=np.asarray(correct, dtype=bool))


def built_population(seed: int = 3):
    """Three classes of 400, 120 and 40 test examples; A robust with probability .6/.5/.4, B .5/.45/.2:
    true BR difference (.1 + .05 + .2) / 3."""
    rng = np.random.default_rng(seed)
    sizes, pa, pb = [400, 120, 40], [0.6, 0.5, 0.4], [0.5, 0.45, 0.2]
    y = np.repeat(np.arange(3), sizes)
    a = rng.random(y.size) < np.asarray(pa)[y]
    b = rng.random(y.size) < np.asarray(pb)[y]
    return y, a, b, float(np.mean(np.subtract(pa, pb)))


def test_bootstrap_is_reproducible_and_its_interval_holds_the_true_difference():
    y, a, b, truth = built_population()
    first = sig.compare({0: outcomes(y, a)}, {0: outcomes(y, b)})
    again = sig.compare({0: outcomes(y, a)}, {0: outcomes(y, b)})
    assert first == again
    assert first.interval != sig.compare({0: outcomes(y, a)}, {0: outcomes(y, b)}, seed=1).interval
    low, high = first.interval
    assert low < truth < high
    assert low < first.diff < high and first.interval_excludes_zero
    # the point estimate is the BR difference: mean over classes of the per-class recall difference
    per_class = [a[y == c].mean() - b[y == c].mean() for c in range(3)]
    assert first.diff == pytest.approx(np.mean(per_class))
    assert (first.examples, first.pairs, first.classes, first.n_resamples) == (560, 560, 3, sig.N_RESAMPLES)


def test_bootstrap_is_class_stratified():
    """Differences constant within each class: every stratified resample has the same BR difference (a
    resample across classes would not), and accuracy-weighting would give another number."""
    y = np.repeat([0, 1], [90, 10])
    a = np.ones(100, bool)
    b = y == 1  # B fails class 0 entirely and gets class 1 right: BR difference (1 + 0) / 2
    comp = sig.compare({0: outcomes(y, a)}, {0: outcomes(y, b)})
    assert comp.diff == pytest.approx(0.5) and comp.interval == pytest.approx((0.5, 0.5))
    assert comp.b == 90 and comp.c == 0


def test_multinomial_shortcut_matches_resampling_examples():
    y, a, b, _ = built_population(5)
    diff_sum = a.astype(int) - b
    fast = sig.stratified_bootstrap(diff_sum, y, 1, 4000, seed=0)
    rng = np.random.default_rng(1)
    slow = np.mean([[rng.choice(diff_sum[y == c], (y == c).sum()).mean() for c in range(3)] for _ in range(4000)],
                   axis=1)
    assert fast.mean() == pytest.approx(slow.mean(), abs=0.004)
    assert fast.std() == pytest.approx(slow.std(), rel=0.08)


def test_pairs_are_matched_by_test_position_and_seed():
    y, a, b, _ = built_population()
    order = np.random.default_rng(0).permutation(y.size)
    shuffled = outcomes(y[order], b[order], ids=np.arange(y.size)[order])
    plain = sig.compare({0: outcomes(y, a)}, {0: outcomes(y, b)})
    assert sig.compare({0: outcomes(y, a)}, {0: shuffled}) == plain
    # seeds both rows have, only; each seed's pairs pooled for McNemar
    two = sig.compare({0: outcomes(y, a), 1: outcomes(y, a), 7: outcomes(y, b)}, {0: outcomes(y, b), 1: outcomes(y, b)})
    assert two.seeds == (0, 1) and two.pairs == 2 * y.size and two.b == 2 * plain.b
    assert two.diff == pytest.approx(plain.diff)
    # examples only one side covered are dropped
    part = sig.compare({0: outcomes(y[:300], a[:300])}, {0: outcomes(y, b)})
    assert part.examples == 300
    assert not sig.compare({0: outcomes(y, a)}, {1: outcomes(y, b)}).tested
    relabelled = sig.compare({0: outcomes(y, a)}, {0: outcomes((y + 1) % 3, b)})
    assert not relabelled.tested and "labels" in relabelled.reason


def test_rank_bands_chain_on_non_significant_neighbours():
    same = sig.Comparison((0,), 10, 10, 2, 1, 1, 1.0, 0.0, (-0.1, 0.1))
    differ = sig.Comparison((0,), 10, 10, 2, 9, 0, 0.004, -0.2, (-0.3, -0.1))
    assert sig.rank_bands([None, same, differ, same, sig.Untested("x")]) == [1, 1, 2, 2, 3]


# ----------------------------------------------------------------------------- built cells, rendered

N = 1000
Y = np.repeat(np.arange(10), 100)


def robust_predictions(robust: np.ndarray) -> dict[str, np.ndarray]:
    """Clean correct everywhere; PGD-20 correct exactly on ``robust`` (so the worst case is ``robust``)."""
    wrong = (Y + 1) % 10
    return {"clean": Y.copy(), "pgd20": np.where(robust, Y, wrong)}


def built_results(root: Path, seeds=(0, 1)) -> dict:
    """Three methods: 'strong' robust on 60% of every class; 'twin' differs from it on 5 examples per seed
    (b = 3, c = 2: not significant); 'weak' robust on a third of strong's examples (c = 0, b = 400 per seed:
    significant)."""
    rng = np.random.default_rng(0)
    counts = {}
    for seed in seeds:
        strong = np.zeros(N, bool)
        for c in range(10):
            strong[rng.choice(np.flatnonzero(Y == c), 60, replace=False)] = True
        twin = strong.copy()
        twin[rng.choice(np.flatnonzero(strong), 3, replace=False)] = False
        twin[rng.choice(np.flatnonzero(~strong), 2, replace=False)] = True
        weak = strong.copy()
        for c in range(10):
            weak[np.flatnonzero(strong & (Y == c))[:40]] = False
        for name, robust in (("strong", strong), ("twin", twin), ("weak", weak)):
            make_cell(root, name, 10, seed, predictions=robust_predictions(robust))
        counts[seed] = (strong, twin, weak)
    return counts


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("sig")
    counts = built_results(root / "results")
    index = build_report(root / "results", root / "reports")
    return {"html": index.read_text(), "out": root / "reports", "counts": counts, "store": load_results(
        root / "results")}


def test_leaderboard_bands_tie_the_twin_and_separate_the_weak(built):
    tab = table(built["html"], BOARD)
    method = column(tab, "Method")
    rows = {r[method]["attrs"]["data-sort"]: r for r in tab["rows"]}
    assert [r[method]["attrs"]["data-sort"] for r in tab["rows"]] == ["strong", "twin", "weak"]
    assert [r[column(tab, "Band")]["text"] for r in tab["rows"]] == ["1", "1 ≈", "2"]
    twin_p = rows["twin"][column(tab, "p vs above")]
    assert twin_p["text"] == f"{sig.mcnemar_exact(6, 4):.4f} ≈ n.s. (n 2000)"  # b = 2 + 2, c = 3 + 3 over the 2 seeds
    weak_p = rows["weak"][column(tab, "p vs above")]
    assert "n.s." not in weak_p["text"] and float(weak_p["attrs"]["data-sort"]) < 1e-100
    assert "n.s." not in rows["weak"][column(tab, "p vs leader")]["text"]
    # Δ BR with its bootstrap interval: the twin's contains 0, the weak one's excludes it
    twin_diff = rows["twin"][column(tab, "Δ BR vs above")]
    low, high = (float(v) for v in twin_diff["text"].split("[")[1].rstrip("]").split(","))
    assert low < 0 < high and twin_diff["text"].startswith("-0.10 ")
    weak_diff = rows["weak"][column(tab, "Δ BR vs leader")]
    assert weak_diff["text"].startswith("-40.00 [") and "McNemar p = <0.0001" in weak_diff["attrs"]["title"]
    assert rows["strong"][column(tab, "p vs above")]["text"] == "—"


def test_leaderboard_shows_intervals_over_seeds_and_the_legend(built):
    tab = table(built["html"], BOARD)
    strong, weak = tab["rows"][0], tab["rows"][2]  # 60% and 20% of every class in both seeds: std 0
    # 1,000 test examples per cell: one decimal (benchmark/report/precision.py), the interval too
    assert strong[column(tab, "Worst case")]["text"] == "60.0 ± 0.0"
    assert strong[column(tab, "Worst case 95% CI")]["text"] == "60.0–60.0"
    assert weak[column(tab, "Worst case 95% CI")]["text"] == "20.0–20.0"
    twin = [100 * c[1].mean() for c in built["counts"].values()]
    stats = sig.seed_stats(twin)
    assert tab["rows"][1][column(tab, "Worst case 95% CI")]["text"] == \
        f"{stats.interval[0]:.1f}–{stats.interval[1]:.1f}"
    section = built["html"].split(f'id="{BOARD}"')[1].split("<h3>")[0]
    assert "Band: a row shares the band of the row above" in section and "exact two-sided McNemar" in section
    assert "Student-t interval over training seeds" in section and "test-set sampling" in section


def test_exports_carry_test_p_interval_and_n(built):
    tables = built["out"] / "tables"
    frame = pd.read_csv(tables / f"{BOARD}.csv").set_index("Method")
    head = "Paired tests (worst case) "
    assert frame.loc["twin", head + "p vs above"] == pytest.approx(sig.mcnemar_exact(6, 4))
    assert frame.loc["twin", head + "p vs above test"].startswith("exact McNemar")
    assert frame.loc["twin", head + "p vs above n"] == 2000
    assert (frame.loc["twin", head + "p vs above b"], frame.loc["twin", head + "p vs above c"]) == (4, 6)
    assert not frame.loc["twin", head + "p vs above significant 5%"]
    assert frame.loc["weak", head + "p vs above significant 5%"]
    twin = frame.loc["twin"]
    assert twin[head + "Δ BR vs above ci95 low"] < 0 < twin[head + "Δ BR vs above ci95 high"]
    assert frame.loc["weak", head + "Δ BR vs leader ci95 high"] < 0
    assert "bootstrap" in frame.loc["weak", head + "Δ BR vs leader interval"]
    assert frame.loc["strong", "Balanced Robustness (%) Worst case 95% CI n seeds"] == 2
    markdown = (tables / f"{BOARD}.md").read_text()
    assert "≈ n.s. (n 2000)" in markdown and "exact two-sided McNemar" in markdown
    assert "p vs above" in markdown and "[" in markdown
    latex = (tables / f"{BOARD}.tex").read_text()
    assert r"$\approx$ n.s. (n 2000)" in latex and "McNemar" in latex


def test_one_seed_says_only_test_set_sampling_is_covered(tmp_path):
    built_results(tmp_path / "results", seeds=(0,))
    html = build_report(tmp_path / "results", tmp_path / "reports").read_text()
    tab = table(html, BOARD)
    assert [r[column(tab, "Band")]["text"] for r in tab["rows"]] == ["1", "1 ≈", "2"]
    assert {r[column(tab, "Worst case 95% CI")]["text"] for r in tab["rows"]} == {"—"}
    assert "One training seed per row: the paired tests cover test-set sampling only, not training variance" in html
    assert tab["rows"][1][column(tab, "p vs above")]["text"].endswith("(n 1000)")


def test_cells_without_predictions_are_not_tested_and_say_why(tmp_path):
    make_cell(tmp_path / "results", "at", 10, 0)
    make_cell(tmp_path / "results", "taet", 10, 0, write_predictions=False)
    html = build_report(tmp_path / "results", tmp_path / "reports").read_text()
    tab = table(html, BOARD)
    assert tab["rows"][1][column(tab, "p vs above")]["text"] == "no test"
    assert "No paired test: no per-example predictions" in html and "no predictions.npz" in html
    assert [r[column(tab, "Band")]["text"] for r in tab["rows"]] == ["1", "2"]


def test_store_reads_worst_case_outcomes_lazily_and_checks_them(tmp_path):
    cell = make_cell(tmp_path / "results", "at", 10, 0, subset_attack=True)
    store = load_results(tmp_path / "results")
    assert store._outcomes == {}  # nothing read until asked
    out = store.worst_case_outcomes(cell.name)
    worst = store.metrics[cell.name]["evaluation"]["attacks"]["worst_case"]
    assert out.ids.size == worst["examples"] == 100  # the AutoAttack subset: -1 elsewhere is dropped
    assert np.bincount(out.y[out.correct], minlength=10).tolist() == worst["per_class_correct"]
    # predictions that do not match metrics.json are refused, with the reason
    with np.load(cell / "predictions.npz") as z:
        arrays = dict(z)
    arrays["pred_pgd20"] = np.where(arrays["pred_pgd20"] == arrays["y"], (arrays["y"] + 1) % 10, arrays["pred_pgd20"])
    np.savez(cell / "predictions.npz", **arrays)
    fresh = load_results(tmp_path / "results")
    assert fresh.worst_case_outcomes(cell.name) is None
    assert "does not match metrics.json" in fresh.outcome_problems[cell.name]
    (cell / "predictions.npz").write_bytes(b"not a zip")
    broken = load_results(tmp_path / "results")
    assert broken.worst_case_outcomes(cell.name) is None and "unreadable" in broken.outcome_problems[cell.name]
    json.loads((cell / "metrics.json").read_text())  # metrics untouched
