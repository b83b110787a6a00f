"""Checks for constructor arguments: one line naming the argument, the allowed range and the value given."""

from __future__ import annotations

import math
import numbers
from typing import Any

__all__ = ["check_bool", "check_positive_int", "check_real"]


def check_real(owner: str, name: str, value: Any, *, low: float = -math.inf, high: float = math.inf,
               low_open: bool = False, high_open: bool = False) -> float:
    """Return ``value`` as a float if it is a finite real number within the given range, else raise.

    Parameters
    ----------
    owner : str
        Who checks (``"Adam"``, ``"mlp"``), the start of the message.
    name : str
        The argument's name as the caller wrote it.
    value : object
        What the caller passed.
    low, high : float
        Bounds of the allowed interval; closed unless ``low_open`` / ``high_open``.

    Raises
    ------
    ValueError
        ``"Adam: eps must be a finite number >= 0, got -1"``, ``"Dropout: p must be a number in [0, 1), got 1"``.
    """
    allowed = _describe(low, high, low_open, high_open)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{owner}: {name} must be {allowed}, got {value!r}")
    number = float(value)
    inside = (low < number if low_open else low <= number) and (number < high if high_open else number <= high)
    if not math.isfinite(number) or not inside:
        raise ValueError(f"{owner}: {name} must be {allowed}, got {value!r}")
    return number


def check_positive_int(owner: str, name: str, value: Any) -> int:
    """Return ``value`` as an int if it is an integer >= 1 (not a bool or a float), else raise ValueError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{owner}: {name} must be a positive integer, got {value!r}")
    return int(value)


def check_bool(owner: str, name: str, value: Any) -> bool:
    """Return ``value`` if it is True or False, else raise ValueError (``"no"`` or ``0.5`` are not flags)."""
    if not isinstance(value, bool):
        raise ValueError(f"{owner}: {name} must be True or False, got {value!r}")
    return value


def _describe(low: float, high: float, low_open: bool, high_open: bool) -> str:
    if high == math.inf:
        if low == 0 and low_open:
            return "a positive finite number"
        return "a finite number" if low == -math.inf else f"a finite number {'>' if low_open else '>='} {_format(low)}"
    left, right = "(" if low_open else "[", ")" if high_open else "]"
    return f"a number in {left}{_format(low)}, {_format(high)}{right}"


def _format(bound: float) -> str:
    if math.isinf(bound):
        return "inf" if bound > 0 else "-inf"
    return f"{bound:g}"
