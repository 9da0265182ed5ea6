"""Numbers as profiles write them: plain, a fraction ("8/255") or relative to ε ("eps/4", "0.5*eps").

Kept apart from the config so attacks (``AttackSpec.from_profile``) can read a profile's numbers without
importing the config; it imports nothing of the project but its error type.
"""
from __future__ import annotations

import re
from fractions import Fraction
from typing import Any

from .errors import UsageError


def parse_number(value: Any, eps: float | None = None, what: str = "value") -> float:
    """A float from a number, a fraction string ("8/255") or an ε-relative string ("eps/4", "0.5*eps")."""
    if isinstance(value, bool):
        raise UsageError(f"{what}: expected a number, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).replace(" ", "")
    match = re.fullmatch(r"(?:([0-9.]+)\*)?eps(?:/([0-9.]+))?", text)
    if match:
        if eps is None:
            raise UsageError(f"{what}: {value!r} is relative to eps, which is not defined here")
        numerator, denominator = float(match.group(1) or 1), float(match.group(2) or 1)
        if denominator == 0:
            raise UsageError(f"{what}: {value!r} divides by zero")
        return eps * numerator / denominator
    try:
        return float(Fraction(text))
    except (ValueError, ZeroDivisionError):
        raise UsageError(f"{what}: cannot read {value!r} as a number (examples: 0.1, 8/255, eps/4)") from None
