"""Points to InfluxDB line protocol, with one rule (docs/values.rst) for every awkward value: stored,
converted and logged, or rejected; a point with no field left is rejected alone, never its batch."""

from __future__ import annotations

import json
import math
import re
from typing import Any

from buildbot_stats.point import Point, PointProblem, to_plain

MAX_STRING_BYTES = 64 * 1024 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
PRECISIONS = {"n": 1, "u": 1_000, "ms": 1_000_000, "s": 1_000_000_000}

_MEASUREMENT_ESCAPES = str.maketrans({",": r"\,", " ": r"\ "})
_KEY_ESCAPES = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ "})
_STRING_ESCAPES = str.maketrans({'"': r"\"", "\\": "\\\\"})
# Applied before escaping, so that the spaces they become are escaped too.
_NAME_SPACES = str.maketrans({"\n": " ", "\r": " ", "\t": " "})
_ESCAPING_BACKSLASH = re.compile(r'\\(?=[,= "]|\Z)')
_SURROGATE = re.compile("[\ud800-\udfff]")


class _Encoder:
    def __init__(self) -> None:
        self.problems: list[PointProblem] = []
        # escaped prefixes and field keys (see line()); per batch on purpose: kept
        # longer, such a cache pinned the memory of a burst of values (600 MB measured)
        self._prefixes: dict[Any, Any] = {}
        self._keys: dict[Any, Any] = {}

    def _problem(self, series: str, field: str, reason: str, rejected: bool) -> None:
        self.problems.append(PointProblem(series, field, reason, rejected))

    def text(self, series: str, field: str, value: str) -> str:
        """``value`` as valid Unicode (UTF-8 cannot encode a lone surrogate)."""
        if not value.isascii() and _SURROGATE.search(value):
            self._problem(series, field, "lone surrogate replaced by U+FFFD", False)
            value = _SURROGATE.sub("\ufffd", value)
        return value

    def name(self, series: str, field: str, value: str, table: dict[int, str]) -> str:
        value = self.text(series, field, value)
        if "\n" in value or "\r" in value or "\t" in value:
            self._problem(series, field, "newline or tab in a name replaced by a space", False)
            value = value.translate(_NAME_SPACES)
        value, fixed = _ESCAPING_BACKSLASH.subn("/", value) if "\\" in value else (value, 0)
        if fixed:
            self._problem(series, field, "backslash before an escaped character replaced by '/'", False)
        return value.translate(table)

    def key(self, series: str, key: Any) -> str:
        key = str(key)
        if key == "time":
            self._problem(series, key, "'time' is reserved; stored as 'time_'", False)
            key = "time_"
        return self.name(series, key, key, _KEY_ESCAPES)

    def field_value(self, series: str, key: str, value: Any) -> str | None:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int):
            if INT64_MIN <= value <= INT64_MAX:
                return f"{value}i"
            try:
                value = float(value)
            except OverflowError:
                self._problem(series, key, "integer too large even for a float cannot be stored", True)
                return None
            self._problem(series, key, "integer beyond 64 bits stored as a float", False)
        if isinstance(value, float):
            if math.isfinite(value):
                return repr(value)
            self._problem(series, key, f"{value} cannot be stored", True)
            return None
        if value is None:
            self._problem(series, key, "None cannot be stored", True)
            return None
        if isinstance(value, (dict, list, tuple, set, frozenset)):
            text = json.dumps(to_plain(value), sort_keys=True, ensure_ascii=False, default=str)
        else:
            text = to_plain(value)
        text = self.text(series, key, text)
        raw = text.encode("utf-8")
        if len(raw) > MAX_STRING_BYTES:
            self._problem(series, key, f"string of {len(raw)} bytes cut to {MAX_STRING_BYTES}", False)
            text = raw[:MAX_STRING_BYTES].decode("utf-8", errors="ignore")
        return '"' + text.translate(_STRING_ESCAPES) + '"'

    def prefix(self, series: str, tags: dict[Any, Any]) -> str | None:
        """The escaped measurement and tags of a line; None for an empty series name."""
        if not series:
            self._problem(series, "*", "empty series name", True)
            return None
        measurement = self.name(series, "*", series, _MEASUREMENT_ESCAPES)
        if measurement.startswith("#"):
            self._problem(series, "*", "a series name cannot start with '#'; stored with '_'", False)
            measurement = "_" + measurement[1:]
        escaped: dict[str, str] = {}  # tag key -> value
        for tag_key in sorted(tags, key=str):
            text = "" if tags[tag_key] is None else str(to_plain(tags[tag_key]))
            if not text or not str(tag_key):
                continue
            key = self.key(series, tag_key)
            if key in escaped:
                self._problem(series, str(tag_key), "same name as another tag after conversion", True)
                continue
            escaped[key] = self.name(series, str(tag_key), text, _KEY_ESCAPES)
        return ",".join([measurement, *(f"{key}={value}" for key, value in escaped.items())])

    def _escaped(self, cache: dict[Any, str], cache_key: Any, make: Any, *args: Any) -> Any:
        """``make(*args)``, kept in ``cache`` under ``cache_key`` (None: not kept) if it had no problem."""
        start = len(self.problems)
        value = make(*args)
        if cache_key is not None and len(self.problems) == start:
            cache[cache_key] = value
        return value

    def line(self, point: Point, divisor: int) -> str | None:
        """One line, or None when the point has no field left.  Most points of a batch share series,
        tags and field keys: names of exact ``str`` (a subclass may convert) are escaped once if they can."""
        series, tags = str(point.series), point.tags
        shape: tuple | None = (series, *tags.items())
        if type(point.series) is not str:
            shape = None
        for k, v in tags.items():
            if type(k) is not str or type(v) is not str:
                shape = None
                break
        prefix = self._prefixes.get(shape) or self._escaped(self._prefixes, shape, self.prefix, series, tags)
        if prefix is None:
            return None
        fields = []
        keys = set()
        for field_key, value in point.fields.items():
            name = field_key if type(field_key) is str else str(field_key)
            if not name:
                self._problem(series, "", "empty field name", True)
                continue
            kind = type(value)
            if kind is int and INT64_MIN <= value <= INT64_MAX:
                encoded: str | None = f"{value}i"
            elif kind is float and value - value == 0.0:  # finite
                encoded = repr(value)
            elif (encoded := self.field_value(series, name, value)) is None:
                continue
            plain = field_key if type(field_key) is str else None
            key = self._keys.get(plain) or self._escaped(self._keys, plain, self.key, series, field_key)
            if key in keys:
                self._problem(series, name, "same name as another field after conversion", True)
                continue
            keys.add(key)
            fields.append(f"{key}={encoded}")
        if not fields:
            return None
        return f"{prefix} {','.join(fields)} {point.time_ns // divisor}"


def encode_lines(
    points: list[Point], precision: str = "n"
) -> tuple[list[str], list[int], list[PointProblem]]:
    """Return (one line per encodable point, the index in ``points`` of each line, problems)."""
    encoder = _Encoder()
    divisor = PRECISIONS[precision]
    lines, origins = [], []
    for index, point in enumerate(points):
        line = encoder.line(point, divisor)
        if line is not None:
            lines.append(line)
            origins.append(index)
    return lines, origins, encoder.problems


def encode_body(points: list[Point], precision: str = "n") -> tuple[bytes, list[PointProblem], int]:
    """Return (line protocol body as UTF-8, problems, number of points left out): what a backend posts."""
    lines, _, problems = encode_lines(points, precision)
    return "\n".join(lines).encode("utf-8"), problems, len(points) - len(lines)


#: the name (``thd_encode``) of this module's line protocol, then its timestamp precision
_ENCODING = "influx-lp/"


def line_protocol_encoding(precision: str) -> str:
    """The name of this module's line protocol with ``precision`` timestamps, as spooled."""
    return _ENCODING + precision


def encoding_precision(encoding: str) -> str | None:
    """The timestamp precision of a :func:`line_protocol_encoding`; None for another encoding."""
    precision = encoding[len(_ENCODING) :] if encoding.startswith(_ENCODING) else None
    return precision if precision in PRECISIONS else None


def split_lines(data: bytes, encoding: str = _ENCODING) -> list[bytes]:
    """The points of encoded data, one per line; in our line protocol a newline
    inside a string field value does not end a point."""
    if not encoding.startswith(_ENCODING) or b'"' not in data:
        return data.split(b"\n")
    lines, start = [], 0
    while True:
        end = data.find(b"\n", _POINT.match(data, start).end())  # type: ignore[union-attr]
        if end < 0:
            lines.append(data[start:])
            return lines
        lines.append(data[start:end])
        start = end + 1


# a field: its key (which escapes "=") and its value, a string (which escapes '"') or a plain one
_FIELD = rb'(?:[^=\n\\]|\\.)*=(?:"(?:[^"\\]|\\.)*"|[^,\n ]*)'
# a point up to its timestamp: series and tags (up to an unescaped space), then the fields
_POINT = re.compile(rb"(?:[^ \n\\]|\\.)*(?: %s(?:,%s)*)?" % (_FIELD, _FIELD))
