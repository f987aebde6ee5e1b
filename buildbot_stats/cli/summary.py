"""What a store says, in figures a person can read: pure functions over points.

Rules:

* **Builders** come from the series ``<builder>-build-times`` and
  ``<builder>-build-results``; a point belongs to the builder named by its
  ``builder_name`` tag (the series name without its suffix if the tag is
  missing), and to the build named by its ``build_number`` tag (its time if
  the tag is missing).  Per builder:

  - ``builds``: distinct builds seen in either series;
  - ``success_rate``: among builds with a ``results`` field, the share whose
    ``results`` is 0 (Buildbot's SUCCESS), as a fraction 0..1 (None without
    any result); ``results_known`` and ``successes`` are the two counts;
  - ``duration_p50``/``duration_p95``/``duration_max``: over the builds'
    ``duration`` fields (finite numbers; the latest point of a build wins), in
    the unit the capture reported (seconds by default).  Percentiles use the
    nearest-rank method: the value of rank ``ceil(p/100 * n)`` in the sorted
    durations, so a percentile is always one of the measured durations;
  - ``last_build``: the latest build end, from the ``end-time`` field
    (ISO-8601 text or epoch seconds) or else the point's time, as ISO-8601 UTC.

* **Data series** are all other series except property series.  A series is
  a property series (written by ``CaptureProperty``) when every one of its
  points has exactly the fields ``name`` and ``value``.  Per data series:
  ``count`` of points, and per field with numeric values (int or finite float;
  bools, text, NaN and ±Inf are skipped) its ``count``, ``min``, ``mean`` and
  ``max``.
"""

from __future__ import annotations

import datetime
import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from buildbot_stats.point import Point, to_ns
from buildbot_stats.storage_backends.sqlite import StatsStore, StoreError, open_store

__all__ = [
    "BUILD_RESULTS_SUFFIX",
    "BUILD_TIMES_SUFFIX",
    "BuilderSummary",
    "DurationSample",
    "FieldSummary",
    "SeriesSummary",
    "StoreError",
    "Summary",
    "builder_rows",
    "format_number",
    "format_rate",
    "format_table",
    "format_time",
    "nearest_rank",
    "series_rows",
    "summarize",
    "summarize_path",
    "summarize_points",
    "to_json",
]

BUILD_TIMES_SUFFIX = "-build-times"
BUILD_RESULTS_SUFFIX = "-build-results"
PROPERTY_FIELDS = frozenset({"name", "value"})


@dataclass
class BuilderSummary:
    """Build figures of one builder."""

    builder: str
    builds: int
    results_known: int
    successes: int
    success_rate: float | None
    durations: int
    duration_p50: float | None
    duration_p95: float | None
    duration_max: float | None
    last_build: str | None


@dataclass
class FieldSummary:
    """Statistics of the numeric values of one field."""

    count: int
    min: float
    mean: float
    max: float


@dataclass
class SeriesSummary:
    """One data series: its number of points and its numeric fields."""

    series: str
    count: int
    fields: dict[str, FieldSummary]


@dataclass
class DurationSample:
    """One build's duration, for the charts."""

    time_ns: int
    build_number: str
    duration: float


@dataclass
class Summary:
    """The whole summary; ``durations`` (per builder, by time) feeds the charts, not the JSON."""

    path: str
    points: int
    builders: list[BuilderSummary]
    series: list[SeriesSummary]
    durations: dict[str, list[DurationSample]] = field(default_factory=dict)


@dataclass
class _Build:
    time_ns: int = 0
    end_ns: int | None = None
    duration: float | None = None
    duration_time: int = -1
    results: Any = None
    results_time: int = -1


def _is_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond the float range
        return False


def nearest_rank(sorted_values: list[float], p: int) -> float | None:
    """The ``p``-th percentile (0 < p <= 100) of sorted values by the nearest-rank method."""
    if not sorted_values:
        return None
    rank = max(1, -(-p * len(sorted_values) // 100))
    return sorted_values[rank - 1]


def _end_ns(value: Any) -> int | None:
    try:
        if isinstance(value, str):
            text = value.strip()
            if text.endswith("Z"):
                text = text[:-1] + "+00:00"
            return to_ns(datetime.datetime.fromisoformat(text))
        if _is_number(value):
            return to_ns(value)
    except (ValueError, TypeError, OverflowError):
        pass
    return None


def format_time(ns: int | None) -> str | None:
    """Nanoseconds since the epoch as ISO-8601 UTC to the second (``2024-05-01T12:00:00Z``)."""
    if ns is None:
        return None
    moment = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc) + datetime.timedelta(
        seconds=ns // 1_000_000_000
    )
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _builder_of(point: Point, suffix: str) -> str:
    name = point.tags.get("builder_name")
    return str(name) if name not in (None, "") else point.series[: -len(suffix)]


def _add_build_point(builds: dict[str, dict[str, _Build]], point: Point, suffix: str) -> None:
    number = point.tags.get("build_number")
    key = str(number) if number not in (None, "") else f"@{point.time_ns}"
    build = builds.setdefault(_builder_of(point, suffix), {}).setdefault(key, _Build())
    build.time_ns = max(build.time_ns, point.time_ns)
    end = _end_ns(point.fields.get("end-time"))
    if end is not None:
        build.end_ns = end if build.end_ns is None else max(build.end_ns, end)
    duration: Any = point.fields.get("duration")
    if _is_number(duration) and point.time_ns >= build.duration_time:
        build.duration, build.duration_time = float(duration), point.time_ns
    if "results" in point.fields and point.time_ns >= build.results_time:
        build.results, build.results_time = point.fields["results"], point.time_ns


def _builder_summary(name: str, builds: dict[str, _Build]) -> tuple[BuilderSummary, list[DurationSample]]:
    known = [b.results for b in builds.values() if b.results_time >= 0]
    successes = sum(1 for r in known if _is_number(r) and r == 0)
    samples = [
        DurationSample(b.duration_time, key, b.duration)
        for key, b in builds.items()
        if b.duration is not None
    ]
    samples.sort(key=lambda s: (s.time_ns, s.build_number))
    durations = sorted(s.duration for s in samples)
    last = max((b.end_ns if b.end_ns is not None else b.time_ns for b in builds.values()), default=None)
    summary = BuilderSummary(
        builder=name,
        builds=len(builds),
        results_known=len(known),
        successes=successes,
        success_rate=successes / len(known) if known else None,
        durations=len(durations),
        duration_p50=nearest_rank(durations, 50),
        duration_p95=nearest_rank(durations, 95),
        duration_max=durations[-1] if durations else None,
        last_build=format_time(last),
    )
    return summary, samples


def _series_summary(series: str, points: list[Point]) -> SeriesSummary:
    values: dict[str, list[Any]] = {}
    for point in points:
        for key, value in point.fields.items():
            if _is_number(value):
                values.setdefault(key, []).append(value)
    fields = {
        key: FieldSummary(len(vs), min(vs), math.fsum(vs) / len(vs), max(vs))
        for key, vs in sorted(values.items())
    }
    return SeriesSummary(series, len(points), fields)


def summarize_points(points: Iterable[Point], path: str = "") -> Summary:
    """Summarise points (any order) by the rules of this module."""
    builds: dict[str, dict[str, _Build]] = {}
    other: dict[str, list[Point]] = {}
    total = 0
    for point in points:
        total += 1
        if not isinstance(point.fields, dict):
            point = Point(point.series, {"value": point.fields}, point.tags, point.time_ns)
        if not isinstance(point.tags, dict):
            point = Point(point.series, point.fields, {}, point.time_ns)
        for suffix in (BUILD_TIMES_SUFFIX, BUILD_RESULTS_SUFFIX):
            if point.series.endswith(suffix):
                _add_build_point(builds, point, suffix)
                break
        else:
            other.setdefault(point.series, []).append(point)
    builders, durations = [], {}
    for name in sorted(builds):
        builder, durations[name] = _builder_summary(name, builds[name])
        builders.append(builder)
    series = [
        _series_summary(name, pts)
        for name, pts in sorted(other.items())
        if not all(set(p.fields) == PROPERTY_FIELDS for p in pts)
    ]
    return Summary(path, total, builders, series, durations)


def summarize(store: StatsStore) -> Summary:
    """Summarise a store opened with :func:`~buildbot_stats.storage_backends.sqlite.open_store`."""
    return summarize_points(store.points(), path=store.path)


def summarize_path(path: str) -> Summary:
    """Open the store at ``path`` read-only and summarise it; raise :class:`StoreError` if it is not one."""
    with open_store(path) as store:
        return summarize(store)


# -- output ------------------------------------------------------------------


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
    """A success rate (0..1) as a percentage with one decimal."""
    return "-" if rate is None else f"{rate * 100:.1f}%"


BUILDER_HEADERS = ["builder", "builds", "results", "success", "dur p50", "dur p95", "dur max", "last build"]
SERIES_HEADERS = ["series", "points", "field", "n", "min", "mean", "max"]


def builder_rows(summary: Summary) -> list[list[str]]:
    """The builders table, as text cells (also used by the HTML report)."""
    return [
        [
            b.builder,
            str(b.builds),
            str(b.results_known),
            format_rate(b.success_rate),
            format_number(b.duration_p50),
            format_number(b.duration_p95),
            format_number(b.duration_max),
            b.last_build or "-",
        ]
        for b in summary.builders
    ]


def series_rows(summary: Summary) -> list[list[str]]:
    """The data series table, one row per numeric field (a row with '-' if none)."""
    rows = []
    for s in summary.series:
        if not s.fields:
            rows.append([s.series, str(s.count), "-", "0", "-", "-", "-"])
        for name, f in s.fields.items():
            rows.append(
                [
                    s.series,
                    str(s.count),
                    name,
                    str(f.count),
                    format_number(f.min),
                    format_number(f.mean),
                    format_number(f.max),
                ]
            )
    return rows


def _aligned(headers: list[str], rows: list[list[str]], left: set[int]) -> list[str]:
    """Columns whose index is in ``left`` are left-aligned text, the others right-aligned."""
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        parts = [c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "  ".join(parts).rstrip()

    return [line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def format_table(summary: Summary) -> str:
    """The summary as aligned text tables."""
    out = [f"Store: {summary.path} ({summary.points} points)", "", "Builders"]
    if summary.builders:
        out += _aligned(BUILDER_HEADERS, builder_rows(summary), left={0})
    else:
        out.append("(no build data)")
    out += ["", "Data series"]
    if summary.series:
        out += _aligned(SERIES_HEADERS, series_rows(summary), left={0, 2})
    else:
        out.append("(no data series)")
    return "\n".join(out) + "\n"


def to_json(summary: Summary) -> str:
    """The summary as JSON (without the chart samples); success_rate is a fraction 0..1."""
    data = {
        "store": summary.path,
        "points": summary.points,
        "builders": [asdict(b) for b in summary.builders],
        "series": [asdict(s) for s in summary.series],
    }
    return json.dumps(data, indent=2, allow_nan=False)
