"""Argument types of the ``buildbot-stats`` commands: numbers within bounds, one message style."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

__all__ = ["count", "port", "positive_float", "positive_int"]


def _bounded(
    convert: Callable[[str], float], what: str, least: float, most: float, rule: str
) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
        if not (least <= value <= most) or (isinstance(value, float) and not math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"{rule}, not {text}")
        return value

    return parse


positive_int = _bounded(int, "a number", 1, math.inf, "must be at least 1")
count = _bounded(int, "a number", 0, math.inf, "must be 0 or more")
port = _bounded(int, "a port number", 1, 65535, "not a port number (1-65535)")
positive_float = _bounded(float, "a number", math.nextafter(0.0, 1.0), math.inf, "must be a number above 0")
