"""The unit of data that flows from a capture to a storage backend, and its value conversions."""

from __future__ import annotations

import datetime
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Point:
    """One statistic: ``fields`` (a capture's ``post_data``) of ``series`` at ``time_ns`` (ns since the
    epoch), described by ``tags`` (its ``context``); as given, each backend applies its own rules."""

    series: str
    fields: dict[str, Any]
    tags: dict[str, Any] = field(default_factory=dict)
    time_ns: int = 0


@dataclass(frozen=True)
class PointProblem:
    """A value that a backend converted or rejected, reported back for one log line."""

    series: str
    field: str
    reason: str
    rejected: bool = True


_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
_FLAT_KINDS = frozenset({str, int, bool, float, type(None)})


def as_datetime(value: Any) -> Any:
    """A Buildbot time as a datetime (None stays None): the WAMP MQ's epoch seconds become
    the UTC datetime the simple MQ would have given."""
    if value is None or isinstance(value, datetime.datetime):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.datetime.fromtimestamp(value, tz=datetime.timezone.utc)
    raise TypeError(f"cannot use {type(value).__name__} {value!r} as a time")


def is_int(value: Any, low: int, high: float = math.inf) -> bool:
    """An int (a bool is none) from ``low`` to ``high``: the check of every integer option and count."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def to_ns(value: Any) -> int:
    """Convert a timestamp (datetime, epoch seconds, or ns int) to integer nanoseconds."""
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.timezone.utc)
        return (value - _EPOCH) // datetime.timedelta(microseconds=1) * 1000
    if isinstance(value, bool):
        raise TypeError("a bool is not a timestamp")
    if isinstance(value, int):
        # Buildbot's epoch seconds are far below 10**12, nanosecond stamps far above
        return value if abs(value) >= 10**12 else value * 1_000_000_000
    if isinstance(value, float):
        return int(round(value * 1_000_000_000))
    raise TypeError(f"cannot use {type(value).__name__} as a timestamp")


class Clock:
    """Strictly increasing nanosecond timestamps: two values of one series posted in the same
    nanosecond would otherwise share series, tags and time, and InfluxDB would keep one."""

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()

    def now_ns(self) -> int:
        with self._lock:
            self._last = max(time.time_ns(), self._last + 1)
            return self._last


def to_plain(value: Any) -> Any:
    """Reduce a value to None, bool, int, float, str, list or dict (for the spool): bytes decoded as
    UTF-8 (replacing errors), datetimes as ISO-8601, tuples and sets as lists, anything else ``str()``."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_plain(v) for v in value]
    return str(value)


def to_json_value(value: Any) -> Any:
    """``to_plain``, with NaN and ±Inf as ``{"$float": ...}`` so JSON can hold them."""
    value = to_plain(value)
    if isinstance(value, float) and not math.isfinite(value):
        return {"$float": str(value)}  # JSON has no NaN or Infinity: 'nan', 'inf', '-inf'
    if isinstance(value, dict):
        return {k: to_json_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_json_value(v) for v in value]
    return value


def is_flat_plain(values: Any, nan: bool = False) -> bool:
    """True for a dict of str keys to str, int, bool, None or floats (finite unless ``nan``)."""
    if type(values) is not dict:
        return False
    for key, value in values.items():
        kind = type(value)
        if type(key) is not str or kind not in _FLAT_KINDS:
            return False
        if kind is float and not nan and not math.isfinite(value):
            return False
    return True
