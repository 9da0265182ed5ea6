"""How many decimals a percentage may print: as many as its test support warrants, no more.

A recall measured on n examples has a binomial standard error of up to 50/√n points (p = ½): 1.6 points
at n = 1,000 and 5 points at n = 100. Printing ``99.00`` for a class of 100 test images claims a precision
a hundred times finer than the data. The rule (documented in README "Reports"):

===========================  ========  ==========================
examples behind the number   decimals  e.g.
===========================  ========  ==========================
fewer than 1,000             0         a CIFAR-10 class (1,000: 1)
1,000 to 99,999              1         CIFAR-10's test split
100,000 or more              2         ImageNet-scale splits
===========================  ========  ==========================

"Examples behind the number" is the smallest count among the cells of a column (one cell's examples,
not pooled over seeds: seeds add training variance, which the ± and the interval show). Bold and
underline compare values at the printed precision, so two numbers that print the same are a tie.
"""
from __future__ import annotations

import math
from typing import Iterable

THRESHOLDS = ((100_000, 2), (1_000, 1))  # (at least this many examples, decimals)


def decimals_for(examples: float | None) -> int:
    """Decimals of a percentage measured on ``examples`` test examples (unknown or 0: 0 decimals)."""
    if examples is None or (isinstance(examples, float) and math.isnan(examples)):
        return 0
    for least, digits in THRESHOLDS:
        if examples >= least:
            return digits
    return 0


def column_decimals(examples: Iterable[float | None]) -> int:
    """Decimals of a column: set by its weakest-supported cell."""
    known = [e for e in examples if e is not None and not (isinstance(e, float) and math.isnan(e)) and e > 0]
    return decimals_for(min(known)) if known else 0


def fmt(value: float | None, digits: int) -> str:
    """A percentage (already in percent) at ``digits`` decimals; — when missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.{digits}f}"
