"""Argument checks shared by the runtime, the exporters and the command lines: a bad number is
refused up front with a ``ValueError`` that names the argument and the value, before any work."""

from __future__ import annotations

import math
import numbers


def integer(name: str, value: object, min: int | None = None, max: int | None = None,
            optional: bool = False) -> int | None:
    """``value`` as an ``int`` in ``[min, max]``; ``None`` passes when ``optional``. Floats
    (``2.5``, also ``2.0``) and bools are refused: they are mistakes, not integers."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer{_range(min, max)}, got {value!r}")
    if (min is not None and value < min) or (max is not None and value > max):
        raise ValueError(f"{name} must be an integer{_range(min, max)}, got {value!r}")
    return int(value)


def number(name: str, value: object, min: float | None = None, max: float | None = None,
           above: float | None = None, optional: bool = False) -> float | None:
    """``value`` as a finite ``float`` with ``min <= value <= max`` and ``value > above``;
    ``None`` passes when ``optional``. NaN and infinities are refused."""
    if value is None and optional:
        return None
    ok = not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)
    ok = ok and (min is None or value >= min) and (max is None or value <= max)
    ok = ok and (above is None or value > above)
    if not ok:
        bounds = " and ".join(b for b in (f"> {above}" if above is not None else "",
                                          _range(min, max).removeprefix(" ")) if b)
        raise ValueError(f"{name} must be a finite number{' ' + bounds if bounds else ''}, got {value!r}")
    return float(value)


def _range(lo: float | None, hi: float | None) -> str:
    if lo is not None and hi is not None:
        return f" in {lo}..{hi}"
    if lo is not None:
        return f" >= {lo}"
    if hi is not None:
        return f" <= {hi}"
    return ""
