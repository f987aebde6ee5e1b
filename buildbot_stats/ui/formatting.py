"""How a name, a number, a rate and a time are shown to people: one place for the CLI and the web page.

A name read from a store or a database never reaches a terminal or a page with
its control or bidi characters; numbers and times look the same in every output.
"""

from __future__ import annotations

import datetime
import unicodedata
from typing import Any

from buildbot_stats.point import to_ns

__all__ = ["MAX_NS", "MIN_NS", "format_number", "format_rate", "format_time", "visible"]

# Unicode bidi controls reorder the text around them on a terminal (and in HTML)
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def visible(text: str, limit: int | None = None) -> str:
    """``text`` safe to print: control characters, bidi controls, line separators and lone
    surrogates as ``\\xNN``/``\\uNNNN`` escapes (no terminal escape sequence gets through);
    cut to ``limit`` characters with an ellipsis."""
    if text.isprintable() and not _BIDI.intersection(text):
        out = text
    else:
        parts = []
        for ch in text:
            if (ch.isprintable() or unicodedata.category(ch) == "Zs") and ch not in _BIDI:
                parts.append(ch)
            else:
                code = ord(ch)
                parts.append(
                    f"\\x{code:02x}"
                    if code < 0x100
                    else f"\\u{code:04x}"
                    if code < 0x10000
                    else f"\\U{code:08x}"
                )
        out = "".join(parts)
    if limit is not None and len(out) > limit:
        out = out[: limit - 1] + "\u2026"
    return out


def format_number(value: Any) -> str:
    """A number for people: ints as is, floats to 3 decimals without trailing zeros; None as '-'."""
    if value is None:
        return "-"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if value != 0 and abs(value) < 0.001:
            return f"{value:.3g}"
        text = f"{value:.3f}".rstrip("0").rstrip(".")
        return "0" if text == "-0" else text
    return str(value)


def format_rate(rate: float | None) -> str:
    """A rate (0..1) as a percentage with one decimal; None as '-'."""
    return "-" if rate is None else f"{rate * 100:.1f}%"


#: the times (ns since the epoch) that datetime can show: the years 1..9999
MIN_NS = to_ns(datetime.datetime(1, 1, 2, tzinfo=datetime.timezone.utc))
MAX_NS = to_ns(datetime.datetime(9999, 12, 30, tzinfo=datetime.timezone.utc))
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def format_time(ns: int | None, pattern: str = "%Y-%m-%dT%H:%M:%SZ") -> str | None:
    """Nanoseconds since the epoch as UTC text (ISO-8601 to the second by default).

    None for None and for times outside the years 1..9999.
    """
    if ns is None or not MIN_NS <= ns <= MAX_NS:
        return None
    return (_EPOCH + datetime.timedelta(seconds=ns // 1_000_000_000)).strftime(pattern)
