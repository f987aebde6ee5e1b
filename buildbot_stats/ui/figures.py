"""What a store says, in figures a person can read, computed inside SQLite.

Shared by ``buildbot-stats summary`` (text, JSON, HTML report) and the
Statistics page of the web UI; the page asks for a time window
(``since_ns``) and leaves out the data series.

The store is read with a few SQL statements (``GROUP BY``, ``json_each``,
``json_extract``, window functions for the percentiles); Python holds one
small record per build and per series, never the points, so the memory a
summary needs does not grow with the number of points (see
``docs/benchmarks.rst``).

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
  - ``queue_p50``/``queue_p95`` (and ``queue_times``, their count): the same
    over the builds' ``queue-time`` fields (seconds), only when the store has
    one;
  - ``last_build``: the latest build end, from the ``end-time`` field
    (ISO-8601 text or epoch seconds) or else the point's time, as ISO-8601 UTC.

* **Steps** come from the series ``<builder>-step-times``, one point per
  finished step; grouped by builder and ``step_name`` tag: ``count`` of
  points, ``durations`` (points with a numeric ``duration``) and their
  nearest-rank ``duration_p50``/``duration_p95`` and ``duration_max``, in
  seconds.  Sorted slowest first: by p95, then max, then builder and step.

* **Tests** come from the series ``<builder>-test-results``, one point per
  test result set; per builder: ``result_sets``, the sums of the numeric
  ``tests_total``, ``tests_passed`` and ``tests_failed`` fields, and
  ``pass_rate``: the passed share of the total over the sets that have both a
  ``tests_passed`` and a ``tests_total`` (None without such a set or total 0).

* **Data series** are all other series except property series.  A series is
  a property series (written by ``CaptureProperty``) when every one of its
  points has exactly the fields ``name`` and ``value``.  Per data series:
  ``count`` of points, and per field with numeric values (int or finite float;
  bools, text, NaN and ±Inf are skipped) its ``count``, ``min``, ``mean`` and
  ``max``.

A row whose ``series`` is not text, whose ``time_ns`` is not an integer or
whose ``tags`` or ``fields`` are not JSON text makes the store unreadable
(:class:`StoreError`), and so does JSON that SQLite cannot parse (e.g.
nested deeper than its limit).
"""

from __future__ import annotations

import datetime
import json
import math
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from buildbot_stats.capture.live import LIVE_SERIES
from buildbot_stats.point import Point, to_ns
from buildbot_stats.storage_backends.sqlite import _SCHEMA, _UPSERT, _merge_fields, _point_row
from buildbot_stats.ui.formatting import MAX_NS, MIN_NS, format_time
from buildbot_stats.ui.store import StatsStore, StoreError, open_store

__all__ = [
    "BUILD_RESULTS_SUFFIX",
    "BUILD_TIMES_SUFFIX",
    "STEP_TIMES_SUFFIX",
    "TEST_RESULTS_SUFFIX",
    "BuilderSummary",
    "DurationSample",
    "FieldSummary",
    "SeriesSummary",
    "StepSummary",
    "StoreError",
    "Summary",
    "TestSummary",
    "nearest_rank",
    "summarize",
    "summarize_path",
    "summarize_points",
    "summarize_windows",
]

BUILD_TIMES_SUFFIX = "-build-times"
BUILD_RESULTS_SUFFIX = "-build-results"
STEP_TIMES_SUFFIX = "-step-times"
TEST_RESULTS_SUFFIX = "-test-results"
PROPERTY_FIELDS = frozenset({"name", "value"})
#: the duration chart of a builder shows its latest builds, at most this many
CHART_BUILDS = 2000

_KINDS = (
    (BUILD_TIMES_SUFFIX, "build"),
    (BUILD_RESULTS_SUFFIX, "build"),
    (STEP_TIMES_SUFFIX, "step"),
    (TEST_RESULTS_SUFFIX, "test"),
)


@dataclass
class BuilderSummary:
    """Build figures of one builder (the ``queue_*`` fields only count when the store has queue times)."""

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
    queue_times: int = 0
    queue_p50: float | None = None
    queue_p95: float | None = None


@dataclass
class StepSummary:
    """Durations (seconds) of one step of one builder."""

    builder: str
    step: str
    count: int
    durations: int
    duration_p50: float | None
    duration_p95: float | None
    duration_max: float | None


@dataclass
class TestSummary:
    """Test result sets of one builder."""

    __test__ = False  # not a pytest class

    builder: str
    result_sets: int
    tests_total: int | float
    tests_passed: int | float
    tests_failed: int | float
    pass_rate: float | None


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


class DurationSample(NamedTuple):
    """One build's duration and result (a Buildbot code, None if unknown), for the charts.

    A tuple of plain values: the garbage collector stops tracking it, so
    the many a large store gives cost no collection time.
    """

    time_ns: int
    build_number: str
    duration: float
    results: int | None = None


@dataclass
class Summary:
    """The whole summary; ``durations`` (per builder, by time) feeds the charts, not the JSON.

    ``has_queue``, ``has_steps`` and ``has_tests`` say whether the store has
    those series at all: without them the output is what it was before they
    existed.  ``immutable``: the store could only be opened as immutable (see
    :func:`~buildbot_stats.ui.store.open_store`).
    """

    path: str
    points: int
    builders: list[BuilderSummary]
    series: list[SeriesSummary]
    durations: dict[str, list[DurationSample]] = field(default_factory=dict)
    steps: list[StepSummary] = field(default_factory=list)
    tests: list[TestSummary] = field(default_factory=list)
    has_queue: bool = False
    has_steps: bool = False
    has_tests: bool = False
    immutable: bool = False


class _Build:
    __slots__ = (
        "duration",
        "duration_time",
        "end_ns",
        "queue",
        "queue_time",
        "results",
        "results_time",
        "time_ns",
    )

    def __init__(self) -> None:
        self.time_ns: int | None = None
        self.end_ns: int | None = None
        self.duration: float | None = None
        self.duration_time: int | None = None
        self.queue: float | None = None
        self.queue_time: int | None = None
        self.results: Any = None
        self.results_time: int | None = None


_NUMBER = ("integer", "real")


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


def _end_ns(kind: str | None, value: Any) -> int | None:
    try:
        if kind == "text":
            text = value.strip()
            if text.endswith("Z"):
                text = text[:-1] + "+00:00"
            ns = to_ns(datetime.datetime.fromisoformat(text))
        elif kind in _NUMBER and _is_number(value):
            ns = to_ns(value)
        else:
            return None
    except (ValueError, TypeError, OverflowError):
        return None
    return ns if MIN_NS <= ns <= MAX_NS else None


def _tag_text(kind: str | None, value: str | None) -> str | None:
    """A tag read as json_type and JSON text (``->``) as ``str()`` gave it before; None if null or empty.

    JSON text, not ``json_extract``: SQLite 3.40 cuts the text returned by
    ``json_extract`` at a NUL character.
    """
    if kind is None or kind == "null" or value is None:
        return None
    if kind == "true":
        return "True"
    if kind == "false":
        return "False"
    if kind in ("text", "integer", "real"):
        return str(json.loads(value)) or None
    return value  # an object or array: its JSON text


def _name(json_text: str) -> str:
    """A name grouped in SQL as JSON text (see :func:`_name_sql`): the string itself, else the JSON text."""
    if json_text.startswith('"'):
        return str(json.loads(json_text))
    return json_text


# -- the SQL -----------------------------------------------------------------

_TEMP_SERIES = "bbs_summary_series"


def _json_number(column: str, key: str) -> str:
    path = f"'$.\"{key}\"'"  # key is one of ours: no quote in it
    number = f"json_type({column}, {path}) IN ('integer', 'real')"
    return f"CASE WHEN {number} THEN json_extract({column}, {path}) END"


def _name_sql(tag: str, default: str) -> str:
    """The tag as JSON text (decoded by :func:`_name`), or the SQL text ``default`` if it is null or empty."""
    path = f"'$.{tag}'"
    return (
        f"CASE WHEN coalesce(json_type(p.tags, {path}), 'null') = 'null' OR p.tags -> {path} = '\"\"' "
        f"THEN json_quote({default}) ELSE p.tags -> {path} END"
    )


_EMPTY_SQL = "''"


def _builder_sql() -> str:
    return _name_sql("builder_name", "s.prefix")


def _kind_rows(kind: str, join: str, since_ns: int | None = None) -> str:
    since = "" if since_ns is None else f" AND p.time_ns >= {int(since_ns)}"
    rows = f"FROM temp.{_TEMP_SERIES} AS s {join} points AS p ON p.series = s.series"
    return f"{rows} WHERE s.kind = '{kind}'{since}"


def _join(store: StatsStore) -> str:
    """``CROSS JOIN`` (the series table first, the points through their index) if points has an index
    on series, as the writer makes it; else a plain JOIN, which lets SQLite scan the points once."""
    sql = (
        "SELECT count(*) FROM pragma_index_list('points') AS l, pragma_index_info(l.name) AS i "
        "WHERE i.seqno = 0 AND i.name = 'series'"
    )
    return "CROSS JOIN" if next(store.query(sql))[0] else "JOIN"


def _check_rows(store: StatsStore) -> None:
    """Raise :class:`StoreError` for the first row the summary cannot read."""
    for row_id, series, types in store.query(
        "SELECT id, series, typeof(series) || ' ' || typeof(time_ns) || ' ' || typeof(tags) || ' ' "
        "|| typeof(fields) "
        "FROM points WHERE typeof(series) != 'text' OR typeof(time_ns) != 'integer' "
        "OR typeof(tags) != 'text' OR typeof(fields) != 'text' LIMIT 1"
    ):
        kinds = dict(zip(("series", "time_ns", "tags", "fields"), types.split()))
        expected = {"series": "text", "time_ns": "integer", "tags": "text", "fields": "text"}
        column = next(c for c in expected if kinds[c] != expected[c])
        name = series.decode("utf-8", "replace") if isinstance(series, bytes) else series
        which = f"series {name!r}" if isinstance(name, str) else "no series"
        raise StoreError(
            f"{store.path}: not a valid buildbot_stats store: the point with id {row_id} ({which}) has a "
            f"{column} of type {kinds[column]}, not {expected[column]}"
        )


def _classify(store: StatsStore) -> tuple[int, dict[str, int], dict[str, str]]:
    """Points, points per series, and each series' kind, kept in a temporary table for the joins."""
    counts: dict[str, int] = {}
    total = 0
    for series, count in store.query("SELECT series, count(*) FROM points GROUP BY series"):
        counts[series] = count
        total += count
    kinds: dict[str, str] = {}
    rows = []
    for series in counts:
        # the live state's series is shown from the service's snapshot ("Now"), not as values
        kind, prefix = ("live", series) if series == LIVE_SERIES else ("data", series)
        for suffix, name in _KINDS:
            if series.endswith(suffix):
                kind, prefix = name, series[: -len(suffix)]
                break
        kinds[series] = kind
        rows.append((series, kind, prefix))
    store.execute(f"DROP TABLE IF EXISTS temp.{_TEMP_SERIES}")
    store.execute(f"CREATE TEMP TABLE {_TEMP_SERIES} (series TEXT PRIMARY KEY, kind TEXT, prefix TEXT)")
    store.executemany(f"INSERT INTO temp.{_TEMP_SERIES} VALUES (?, ?, ?)", rows)
    return total, counts, kinds


def _builds(store: StatsStore, join: str) -> tuple[dict[str, dict[str, _Build]], bool]:
    """Per builder and build, its figures; and whether any build has a queue time."""
    builds: dict[str, dict[str, _Build]] = {}
    has_queue = False
    sql = (
        "SELECT p.time_ns, s.prefix, "
        "json_type(p.tags, '$.builder_name'), p.tags -> '$.builder_name', "
        "json_type(p.tags, '$.build_number'), p.tags -> '$.build_number', "
        """json_type(p.fields, '$."end-time"'), json_extract(p.fields, '$."end-time"'), """
        "json_type(p.fields, '$.duration'), json_extract(p.fields, '$.duration'), "
        "json_type(p.fields, '$.results'), json_extract(p.fields, '$.results'), "
        """json_type(p.fields, '$."queue-time"'), json_extract(p.fields, '$."queue-time"') """
        + _kind_rows("build", join)
        + " ORDER BY p.series, p.time_ns, p.id"
    )
    for t, prefix, bt, bv, nt, nv, et, ev, dt, dv, rt, rv, qt, qv in store.query(sql):
        builder = _tag_text(bt, bv) or prefix
        key = _tag_text(nt, nv) or f"@{t}"
        build = builds.setdefault(builder, {}).get(key)
        if build is None:
            build = builds[builder][key] = _Build()
        build.time_ns = t if build.time_ns is None else max(build.time_ns, t)
        if et is not None:
            end = _end_ns(et, ev)
            if end is not None:
                build.end_ns = end if build.end_ns is None else max(build.end_ns, end)
        if dt in _NUMBER and _is_number(dv) and (build.duration_time is None or t >= build.duration_time):
            build.duration, build.duration_time = float(dv), t
        if qt in _NUMBER and _is_number(qv) and (build.queue_time is None or t >= build.queue_time):
            build.queue, build.queue_time = float(qv), t
            has_queue = True
        if rt is not None and (build.results_time is None or t >= build.results_time):
            build.results = (
                rv if rt in _NUMBER else (True if rt == "true" else False if rt == "false" else rv)
            )
            build.results_time = t
    return builds, has_queue


def _builder_summary(
    name: str, builds: dict[str, _Build], chart_builds: int = CHART_BUILDS
) -> tuple[BuilderSummary, list[DurationSample]]:
    known = [b.results for b in builds.values() if b.results_time is not None]
    successes = sum(1 for r in known if _is_number(r) and r == 0)
    samples = [
        DurationSample(
            b.duration_time,
            key,
            b.duration,
            b.results if isinstance(b.results, int) and not isinstance(b.results, bool) else None,
        )
        for key, b in builds.items()
        if b.duration is not None and b.duration_time is not None
    ]
    samples.sort(key=lambda s: (s.time_ns, s.build_number))
    durations = sorted(s.duration for s in samples)
    queues = sorted(b.queue for b in builds.values() if b.queue is not None)
    ends = [b.end_ns if b.end_ns is not None else b.time_ns for b in builds.values()]
    last = max((e for e in ends if e is not None), default=None)
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
        queue_times=len(queues),
        queue_p50=nearest_rank(queues, 50),
        queue_p95=nearest_rank(queues, 95),
    )
    return summary, samples[-chart_builds:]


_TEMP_STEPS = "bbs_summary_steps"


def _step_rows(store: StatsStore, join: str) -> None:
    """Each step point's builder, step and duration, read from its JSON once, in a temporary table
    (the windows of the web page each read it again)."""
    store.execute(f"DROP TABLE IF EXISTS temp.{_TEMP_STEPS}")
    store.execute(f"CREATE TEMP TABLE {_TEMP_STEPS} (builder TEXT, step TEXT, time_ns INTEGER, v)")
    store.execute(
        f"INSERT INTO temp.{_TEMP_STEPS} SELECT {_builder_sql()}, {_name_sql('step_name', _EMPTY_SQL)}, "
        f"p.time_ns, {_json_number('p.fields', 'duration')} " + _kind_rows("step", join)
    )


def _steps(store: StatsStore, since_ns: int | None = None) -> list[StepSummary]:
    """Per builder and step (from :func:`_step_rows`): nearest-rank percentiles by window functions
    (SQLite sorts, on disk if need be)."""
    since = "" if since_ns is None else f" WHERE time_ns >= {int(since_ns)}"
    source = f"SELECT builder, step, v FROM temp.{_TEMP_STEPS}{since}"
    sql = f"""
        SELECT builder, step, max(n_all), max(n_v),
            max(CASE WHEN v IS NOT NULL AND rn - (n_all - n_v) = max(1, (50 * n_v + 99) / 100) THEN v END),
            max(CASE WHEN v IS NOT NULL AND rn - (n_all - n_v) = max(1, (95 * n_v + 99) / 100) THEN v END),
            max(v)
        FROM (
            SELECT builder, step, v,
                row_number() OVER (PARTITION BY builder, step ORDER BY v) AS rn,
                count(*) OVER (PARTITION BY builder, step) AS n_all,
                count(v) OVER (PARTITION BY builder, step) AS n_v
            FROM ({source})
        )
        GROUP BY builder, step
    """
    steps = [
        StepSummary(_name(b), _name(s), n, nv, p50, p95, mx) for b, s, n, nv, p50, p95, mx in store.query(sql)
    ]
    steps.sort(
        key=lambda s: (
            s.duration_p95 is None,
            -(s.duration_p95 or 0.0),
            -(s.duration_max or 0.0),
            s.builder,
            s.step,
        )
    )
    return steps


def _tests(store: StatsStore, join: str, since_ns: int | None = None) -> list[TestSummary]:
    total, passed, failed = (
        _json_number("p.fields", "tests_total"),
        _json_number("p.fields", "tests_passed"),
        _json_number("p.fields", "tests_failed"),
    )
    sql = f"""
        SELECT builder, count(*), COALESCE(sum(total), 0), COALESCE(sum(passed), 0), COALESCE(sum(failed), 0),
            sum(CASE WHEN passed IS NOT NULL AND total IS NOT NULL THEN passed END),
            sum(CASE WHEN passed IS NOT NULL AND total IS NOT NULL THEN total END)
        FROM (SELECT {_builder_sql()} AS builder, {total} AS total, {passed} AS passed, {failed} AS failed
              {_kind_rows("test", join, since_ns)})
        GROUP BY builder ORDER BY builder
    """
    tests = []
    for builder, sets, tot, ok, bad, rate_ok, rate_total in store.query(sql):
        rate = rate_ok / rate_total if rate_total else None
        tests.append(TestSummary(_name(builder), sets, tot, ok, bad, rate))
    tests.sort(key=lambda t: t.builder)
    return tests


def _data_series(
    store: StatsStore, counts: dict[str, int], kinds: dict[str, str], join: str
) -> list[SeriesSummary]:
    """Per data series and numeric field: count, min, max and sum, in one pass.

    Each numeric field value is folded into a small temporary table keyed by
    (series, field) with an upsert: a ``GROUP BY series, key`` would sort
    every value of the store first.  Top-level fields that are not an object
    count as one field ``value``, as the writer stores them.
    """
    store.execute("DROP TABLE IF EXISTS temp.bbs_summary_fields")
    store.execute(
        "CREATE TEMP TABLE bbs_summary_fields (series TEXT, key TEXT, n INTEGER, mn, mx, sm REAL, "
        "PRIMARY KEY (series, key))"
    )
    store.execute(
        f"""
        INSERT INTO temp.bbs_summary_fields
        SELECT p.series, COALESCE(j.key, 'value'), 1, j.value, j.value, j.value
        FROM temp.{_TEMP_SERIES} AS s {join} points AS p ON p.series = s.series, json_each(p.fields) AS j
        WHERE s.kind = 'data' AND j.type IN ('integer', 'real') AND (j.key IS NULL OR typeof(j.key) = 'text')
        ON CONFLICT (series, key) DO UPDATE SET
            n = n + 1, mn = min(mn, excluded.mn), mx = max(mx, excluded.mx), sm = sm + excluded.sm
        """
    )
    found: dict[str, dict[str, FieldSummary]] = {}
    for series, key, n, mn, mx, sm in store.query(
        "SELECT series, key, n, mn, mx, sm FROM temp.bbs_summary_fields ORDER BY series, key"
    ):
        if _is_number(mn) and _is_number(mx) and _is_number(sm):
            found.setdefault(series, {})[key] = FieldSummary(n, mn, sm / n, mx)
    result = []
    for series in sorted(s for s, kind in kinds.items() if kind == "data"):
        fields = found.get(series, {})
        if set(fields) <= PROPERTY_FIELDS and _is_property_series(store, series):
            continue
        result.append(SeriesSummary(series, counts[series], fields))
    return result


def _is_property_series(store: StatsStore, series: str) -> bool:
    """Whether every point of ``series`` has exactly the fields ``name`` and ``value``.

    The scan stops at the first point that has not."""
    sql = """
        SELECT EXISTS (SELECT 1 FROM points AS p WHERE p.series = ? AND NOT (
            json_type(p.fields) = 'object' AND json_type(p.fields, '$.name') IS NOT NULL
            AND json_type(p.fields, '$.value') IS NOT NULL
            AND (SELECT count(*) FROM json_each(p.fields)) = 2))
    """
    return not next(store.query(sql, (series,)))[0]


def summarize(store: StatsStore, charts: bool = True) -> Summary:
    """Summarise a store opened with :func:`~buildbot_stats.ui.store.open_store`.

    ``charts`` false leaves out the per-build samples of the HTML charts.
    """
    _check_rows(store)
    total, counts, kinds = _classify(store)
    join = _join(store)
    builds, has_queue = _builds(store, join)
    builders, durations = [], {}
    for name in sorted(builds):
        builder, samples = _builder_summary(name, builds[name])
        builders.append(builder)
        if charts:
            durations[name] = samples
    del builds
    has_steps = "step" in kinds.values()
    has_tests = "test" in kinds.values()
    if has_steps:
        _step_rows(store, join)
    return Summary(
        path=store.path,
        points=total,
        builders=builders,
        series=_data_series(store, counts, kinds, join),
        durations=durations,
        steps=_steps(store) if has_steps else [],
        tests=_tests(store, join) if has_tests else [],
        has_queue=has_queue,
        has_steps=has_steps,
        has_tests=has_tests,
        immutable=store.immutable,
    )


def summarize_windows(store: StatsStore, windows: Mapping[str, int | None]) -> dict[str, Summary]:
    """The figures of the builds, steps and tests since each window's start (ns; None: all), by window name.

    The store is read once for the builds (a build is in a window when its
    latest point is) and once per window for the steps and the tests; no data
    series.  ``durations`` holds every build of a builder in the window.
    """
    _check_rows(store)
    total, _, kinds = _classify(store)
    join = _join(store)
    builds, has_queue = _builds(store, join)
    has_steps = "step" in kinds.values()
    has_tests = "test" in kinds.values()
    if has_steps:
        _step_rows(store, join)
    result = {}
    for window, since_ns in windows.items():
        builders, durations = [], {}
        for name in sorted(builds):
            inside = {
                key: b
                for key, b in builds[name].items()
                if since_ns is None or (b.time_ns is not None and b.time_ns >= since_ns)
            }
            if inside:
                builder, durations[name] = _builder_summary(name, inside, chart_builds=len(inside))
                builders.append(builder)
        result[window] = Summary(
            path=store.path,
            points=total,
            builders=builders,
            series=[],
            durations=durations,
            steps=_steps(store, since_ns) if has_steps else [],
            tests=_tests(store, join, since_ns) if has_tests else [],
            has_queue=has_queue,
            has_steps=has_steps,
            has_tests=has_tests,
            immutable=store.immutable,
        )
    return result


def summarize_points(points: Iterable[Point], path: str = "") -> Summary:
    """Summarise points (any order) by the rules of this module, through an in-memory store."""
    db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    db.create_function("bbs_merge_fields", 2, _merge_fields, deterministic=True)
    for statement in _SCHEMA:
        db.execute(statement)
    rows = []
    for point in points:
        if not isinstance(point.tags, dict):
            point = Point(point.series, point.fields, {}, point.time_ns)
        row = _point_row(point, [])
        if row is not None:
            rows.append(row)
    with db:
        db.executemany(_UPSERT, rows)
    with StatsStore(path, db, {}) as store:
        return summarize(store)


def summarize_path(path: str, charts: bool = True) -> Summary:
    """Open the store at ``path`` read-only and summarise it; raise :class:`StoreError` if it is not one."""
    with open_store(path) as store:
        return summarize(store, charts=charts)
