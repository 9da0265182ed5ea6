"""Intervals over seeds and paired tests between two leaderboard rows (numpy and the standard library only).

Over seeds (training variance): mean ± sample std (ddof = 1) with n and a two-sided 95% Student-t
interval, mean ± t_{0.975, n-1} · std / sqrt(n). With one seed there is no interval from seeds.

Between two rows of one leaderboard (same dataset, IR, threat model and test split), on the *same test
examples* and the *same training seeds* (the seeds both rows have; a seed a row has twice counts once, its
first cell). What is compared is per-example correctness under the worst case (robust to clean input and
every attack of the cell), from each cell's predictions.npz through the results store. Examples are keyed
by their position in the test set (``eval_indices``); only examples that every paired cell covered enter
(an attack run on a class-stratified subset uses the same fixed subset, seed 0, for every method, so the
common set is that subset). Two tests, both on those (seed, example) pairs:

* **exact McNemar** (two-sided): b = pairs robust in row A and not in B, c = the reverse, pooled over the
  paired seeds; p = min(1, 2 · Σ_{k ≤ min(b, c)} C(b + c, k) / 2^(b + c)), p = 1 when b + c = 0.
* **paired class-stratified bootstrap of the Balanced Robustness difference**: BR = mean over classes of
  the per-class recall; its difference A − B (mean over the paired seeds) is recomputed on
  ``N_RESAMPLES`` = 2,000 resamples of the test examples drawn with replacement *within each class*
  (so each class keeps its size and BR, not accuracy, is what is resampled), the same resampled
  examples for every seed (seeds stay paired), generator seed ``BOOTSTRAP_SEED`` = 0; the 95% interval
  is the 2.5th–97.5th percentile. A class's resampled mean is drawn as multinomial counts over its
  distinct per-example differences, which is the same distribution as resampling its examples and
  costs O(classes · resamples) instead of O(examples · resamples).

**Which test drives the rank band:** McNemar. A difference is *significant at 5%* when p < 0.05. It is
exact (no resampling noise, no resample count to choose), it is the standard paired test for two
classifiers on one test set, and it gives a p-value. The bootstrap interval is shown beside it because it
is about the ranking metric itself: McNemar pools the (seed, example) pairs, so on a long-tailed test
split it weighs head classes by their size, while BR weighs classes equally. ``tests_agree`` says whether
the interval excluding 0 and p < 0.05 agree; the page says so where they do not.

Both tests hold the trained models fixed: they cover test-set sampling, not training variance. Training
variance is what the interval over seeds covers, and with one seed nothing does.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import reduce
from typing import Any, Mapping, Sequence

import numpy as np

ALPHA = 0.05
N_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
MCNEMAR = "exact McNemar (two-sided, worst-case per-example correctness)"
BOOTSTRAP = f"paired class-stratified bootstrap of the BR difference, {N_RESAMPLES} resamples, 95% percentile"
Z975 = 1.959963984540054

# two-sided 95% Student-t quantiles t_{0.975, df}, df = 1..30 (checked against a numerical integral in tests)
T975 = (12.706204736, 4.302652730, 3.182446305, 2.776445105, 2.570581836, 2.446911851, 2.364624252,
        2.306004135, 2.262157163, 2.228138852, 2.200985160, 2.178812830, 2.160368656, 2.144786688, 2.131449546,
        2.119905299, 2.109815578, 2.100922040, 2.093024054, 2.085963447, 2.079613845, 2.073873068, 2.068657610,
        2.063898562, 2.059538553, 2.055529439, 2.051830516, 2.048407142, 2.045229642, 2.042272456)


def t_quantile_975(df: int) -> float:
    """t_{0.975, df}: the table up to df 30, above it the Cornish–Fisher expansion in 1/df (error < 1e-6)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(T975):
        return T975[df - 1]
    z = Z975
    return (z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)
            + (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * df ** 3)
            + (79 * z ** 9 + 776 * z ** 7 + 1482 * z ** 5 - 1920 * z ** 3 - 945 * z) / (92160 * df ** 4))


@dataclass(frozen=True)
class SeedStats:
    """Mean, sample std (None with one value), n and the 95% t-interval (None with one value)."""

    mean: float
    std: float | None
    n: int
    interval: tuple[float, float] | None


def seed_stats(values: Sequence[float | None]) -> SeedStats:
    """Over the values that are numbers (None and NaN dropped); n = 0 gives a NaN mean."""
    arr = np.asarray([v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))],
                     dtype=float)
    if not arr.size:
        return SeedStats(math.nan, None, 0, None)
    mean = float(arr.mean())
    if arr.size == 1:
        return SeedStats(mean, None, 1, None)
    std = float(arr.std(ddof=1))
    half = t_quantile_975(arr.size - 1) * std / math.sqrt(arr.size)
    return SeedStats(mean, std, int(arr.size), (mean - half, mean + half))


def mcnemar_exact(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value of b and c discordant pairs (a binomial test of b against
    Binomial(b + c, 1/2)). Integer arithmetic, so it is exact up to the final division."""
    b, c = int(b), int(c)
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    n = b + c
    if n == 0:
        return 1.0
    term, tail = 1, 1  # C(n, 0)
    for k in range(min(b, c)):
        term = term * (n - k) // (k + 1)
        tail += term
    return min(1.0, 2 * tail / 2 ** n)


def stratified_bootstrap(diff_sum: np.ndarray, y: np.ndarray, n_seeds: int, n_resamples: int = N_RESAMPLES,
                         seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """Resampled BR differences: ``diff_sum[e]`` is Σ over seeds of (correct_A − correct_B) of example e (an
    integer in [−S, S]); each resample draws every class's examples with replacement within the class and
    returns the mean over classes of the per-class mean difference / n_seeds."""
    rng = np.random.default_rng(seed)
    total = np.zeros(n_resamples)
    classes = np.unique(y)
    for c in classes:
        values, counts = np.unique(diff_sum[y == c], return_counts=True)
        size = int(counts.sum())
        draws = rng.multinomial(size, counts / size, size=n_resamples)  # (resamples, distinct values)
        total += draws @ values.astype(float) / size
    return total / (len(classes) * n_seeds)


@dataclass(frozen=True)
class Comparison:
    """Row A against row B on the same (seed, example) pairs. ``diff`` and its interval are BR(A) − BR(B) as
    fractions; b: pairs A robust and B not, c: the reverse."""

    seeds: tuple
    examples: int  # common test examples per seed
    pairs: int  # (seed, example) pairs = seeds × examples
    classes: int  # classes with at least one common example (the classes BR averages over)
    b: int
    c: int
    p: float  # exact McNemar
    diff: float
    interval: tuple[float, float]  # bootstrap percentile 95%
    n_resamples: int = N_RESAMPLES

    tested = True

    @property
    def significant(self) -> bool:
        """Significant at 5% by McNemar (what the rank band uses; see the module docstring)."""
        return self.p < ALPHA

    @property
    def interval_excludes_zero(self) -> bool:
        return self.interval[0] > 0 or self.interval[1] < 0

    @property
    def tests_agree(self) -> bool:
        return self.significant == self.interval_excludes_zero

    def describe(self) -> str:
        seeds = ", ".join(str(s) for s in self.seeds)
        agree = "" if self.tests_agree else (
            " The two tests disagree: the bootstrap interval " + (
                "excludes" if self.interval_excludes_zero else "includes") + " 0 while McNemar p is "
            + ("below" if self.significant else "at or above") + " 0.05.")
        return (f"exact McNemar p = {format_p(self.p)}: b = {self.b} pairs robust here and not there, c = {self.c} "
                f"the reverse, of n = {self.pairs} (seed, example) pairs ({self.examples} test examples × seed"
                f"{'s' if len(self.seeds) != 1 else ''} {seeds}). BR difference {100 * self.diff:+.2f} points, "
                f"95% class-stratified paired bootstrap interval {100 * self.interval[0]:+.2f} to "
                f"{100 * self.interval[1]:+.2f} ({self.n_resamples} resamples over {self.classes} classes)." + agree)


@dataclass(frozen=True)
class Untested:
    """No paired test was possible; ``reason`` says why."""

    reason: str
    tested = False
    significant = False


def compare(a: Mapping[Any, Any], b: Mapping[Any, Any], n_resamples: int = N_RESAMPLES,
            seed: int = BOOTSTRAP_SEED) -> Comparison | Untested:
    """Row A against row B. ``a`` and ``b`` map a training seed to that cell's worst-case outcomes: an
    object with ``ids`` (test-set positions of the covered examples), ``y`` (their labels) and ``correct``
    (bool, robust under the worst case), as ``ResultStore.worst_case_outcomes`` gives them."""
    seeds = tuple(sorted(set(a) & set(b), key=_seed_order))
    if not seeds:
        return Untested("no training seed in common")
    outcomes = [a[s] for s in seeds] + [b[s] for s in seeds]
    ids = reduce(np.intersect1d, [np.asarray(o.ids) for o in outcomes])
    if not ids.size:
        return Untested("no test example in common")
    labels, correct = [], []
    for o in outcomes:
        order = np.argsort(o.ids, kind="stable")
        pos = order[np.searchsorted(np.asarray(o.ids)[order], ids)]
        labels.append(np.asarray(o.y)[pos])
        correct.append(np.asarray(o.correct, dtype=bool)[pos])
    y = labels[0]
    if any(not np.array_equal(y, other) for other in labels[1:]):
        return Untested("the cells have different labels at the same test positions (not the same test set)")
    s = len(seeds)
    ca, cb = np.stack(correct[:s]), np.stack(correct[s:])  # (seeds, examples)
    n_b, n_c = int((ca & ~cb).sum()), int((~ca & cb).sum())
    diff_sum = (ca.astype(np.int64) - cb).sum(axis=0)
    classes = np.unique(y)
    diff = float(np.mean([diff_sum[y == c].mean() for c in classes]) / s)
    boot = stratified_bootstrap(diff_sum, y, s, n_resamples, seed)
    low, high = np.percentile(boot, [2.5, 97.5])
    return Comparison(seeds, int(ids.size), int(ids.size) * s, int(classes.size), n_b, n_c, mcnemar_exact(n_b, n_c),
                      diff, (float(low), float(high)), n_resamples)


def rank_bands(vs_above: Sequence[Comparison | Untested | None]) -> list[int]:
    """Band number per ranked row: a row shares the band of the row above unless McNemar finds them
    different at 5%; an untested pair starts a new band (a tie is not shown either). Bands chain, so the
    first and last rows of one band may still differ (see the comparison with the leader)."""
    bands = []
    for i, comp in enumerate(vs_above):
        if i == 0:
            bands.append(1)
        elif isinstance(comp, Comparison) and not comp.significant:
            bands.append(bands[-1])
        else:
            bands.append(bands[-1] + 1)
    return bands


def format_p(p: float) -> str:
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def _seed_order(seed) -> tuple:
    return (0, seed, "") if isinstance(seed, (int, float)) and not isinstance(seed, bool) else (1, 0, str(seed))


__all__ = ["ALPHA", "N_RESAMPLES", "BOOTSTRAP_SEED", "MCNEMAR", "BOOTSTRAP", "SeedStats", "seed_stats",
           "t_quantile_975", "mcnemar_exact", "stratified_bootstrap", "Comparison", "Untested", "compare",
           "rank_bands", "format_p"]
