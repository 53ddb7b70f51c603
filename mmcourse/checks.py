"""Argument checks shared by every module: whole numbers and probabilities.

Each check returns the value it accepted, so a constructor can write
``self.rank = check_int(rank, "rank")``, and raises a ``ValueError`` that names
the argument and shows what it got. ``bool`` is refused where a number is
expected: ``True`` is an ``int`` to Python, but never a meaningful count.
"""
from __future__ import annotations

import math


def check_int(value, name: str, minimum: int = 1, *, allow_none: bool = False) -> int | None:
    """``value`` if it is an int >= ``minimum`` (or None when ``allow_none``).

    Raises:
        ValueError: "<name> must be a positive int, got ..." (``minimum`` 1), "... a non-negative
            int ..." (``minimum`` 0), or "... an int >= <minimum> ..." otherwise.
    """
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = {1: "a positive int", 0: "a non-negative int"}.get(minimum, f"an int >= {minimum}")
        raise ValueError(f"{name} must be {kind}{' or None' if allow_none else ''}, got {value!r}")
    return value


def check_probability(value, name: str, *, below_one: bool = False) -> float:
    """``value`` as a float in [0, 1] (in [0, 1) when ``below_one``).

    Raises:
        ValueError: "<name> must be a number in [0, 1], got ..." (or "[0, 1)").
    """
    upper_ok = (lambda v: v < 1.0) if below_one else (lambda v: v <= 1.0)
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or not (0.0 <= value and upper_ok(value))):
        raise ValueError(f"{name} must be a number in [0, 1{')' if below_one else ']'}, got {value!r}")
    return float(value)
