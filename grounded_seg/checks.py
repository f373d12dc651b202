"""Argument checks at the public boundary, in one place: ``TypeError``/``ValueError`` that say
what was expected and what came, before any model loads."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def check_threshold(name: str, value: Any) -> float:
    """``value`` as a float in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected a number in [0, 1], got {type(value).__name__}")
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float (10**400)
        raise ValueError(
            f"{name}: expected a number in [0, 1], got an integer too large for a float"
        ) from None
    if not math.isfinite(number) or not 0.0 <= number <= 1.0:
        raise ValueError(f"{name}: expected a number in [0, 1], got {number}")
    return number


def check_limit(name: str, value: Any) -> int | None:
    """``None`` (no limit) or an int >= 1 (``max_detections``, ``max_pixels``)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an int >= 1 or None, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name}: expected an int >= 1 or None, got {value}")
    return int(value)


def check_count(name: str, value: Any, low: int = 1) -> int:
    """An int >= ``low`` (``batch_size``, ``workers``)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an int >= {low}, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name}: expected an int >= {low}, got {value}")
    return int(value)


def check_nms_threshold(value: Any) -> float | None:
    """``None`` (no NMS) or an IoU in (0, 1]."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"nms_threshold: expected an IoU in (0, 1] or None, got {value!r}")
    if not 0.0 < float(value) <= 1.0:
        raise ValueError(f"nms_threshold: expected an IoU in (0, 1] or None, got {value}")
    return float(value)
