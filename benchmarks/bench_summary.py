#!/usr/bin/env python
"""Summary benchmark: ``buildbot-stats summary`` before and after aggregating in SQLite.

Run from the repository root::

    python -m benchmarks.bench_summary                     # 10,010,000 points: about 2 GB, minutes
    python -m benchmarks.bench_summary --points 1000000    # a quicker look
    python -m benchmarks.bench_summary --store /tmp/big.sqlite --keep   # build once, reuse

It builds a store like a busy master's (``--points``, default 10,010,000:
10,000 builds on 20 builders, each with one ``build-times`` row with
``queue-time``, one ``build-results`` row with a ``worker`` tag, 20
``step-times`` points, 2 ``test-results`` points, one property point and 976
points of a data series with two fields), in the real schema, filled with
``executemany`` in large transactions and indexed afterwards.  Then it
summarises it twice, each time in a child process of its own:

* ``before``: the algorithm of the summary before issue 13 (a copy is kept
  below): every point read as a :class:`~buildbot_stats.point.Point` and kept
  in memory;
* ``after``: :func:`buildbot_stats.cli.summary.summarize_path`, as
  ``buildbot-stats summary`` without ``--html`` runs it.

It prints each one's wall time and maximum resident set size (``os.wait4``),
the ratios, and whether both give the same builder and data series figures.
The goals (issue 13 item 5): at most 500 MB and at least 5x faster.  Exit
status 0 when both are met, 1 otherwise.  ``--skip-before`` runs only the new
summary (the old one needs about 1 GB of memory per million points).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from buildbot_stats.cli.summary import (
    BUILD_RESULTS_SUFFIX,
    BUILD_TIMES_SUFFIX,
    PROPERTY_FIELDS,
    BuilderSummary,
    DurationSample,
    FieldSummary,
    SeriesSummary,
    Summary,
    nearest_rank,
    summarize_path,
)
from buildbot_stats.point import Point, to_ns
from buildbot_stats.ui.figures import _is_number as _is_number  # the same value rule, before and after
from buildbot_stats.ui.store import open_store

RSS_GOAL_MB = 500
SPEED_GOAL = 5.0
BUILDERS = 20
STEPS = 20
TEST_SETS = 2
PER_BUILD = 1001  # build-times, build-results, steps, test sets, a property point, data points
DATA_PER_BUILD = PER_BUILD - 2 - STEPS - TEST_SETS - 1

# -- the summary before issue 13 (buildbot_stats/cli/summary.py at 9486994), unchanged ----------


@dataclass
class _Build:
    time_ns: int = 0
    end_ns: int | None = None
    duration: float | None = None
    duration_time: int = -1
    results: Any = None
    results_time: int = -1


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


def summarize_before(path: str) -> Summary:
    """The old ``summarize_path``: every point of the store through Python."""
    with open_store(path) as store:
        return summarize_points(store.points(), path=store.path)


# -- the store ------------------------------------------------------------------------------------


def _iso(ns: float) -> str:
    return datetime.datetime.fromtimestamp(ns / 1e9, datetime.timezone.utc).isoformat()


def build_store(path: str, points: int) -> int:
    """Write a store of ``points`` rows rounded down to whole builds (at least one); return the rows."""
    builds = max(1, points // PER_BUILD)
    if os.path.exists(path):
        os.remove(path)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=OFF")
    db.execute("PRAGMA synchronous=OFF")
    db.execute("PRAGMA cache_size=-200000")
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.executemany("INSERT INTO meta VALUES (?, ?)", [("format", "buildbot_stats"), ("schema_version", "1")])
    # the schema of storage_backends/sqlite.py; its UNIQUE constraint comes as an index afterwards
    db.execute(
        "CREATE TABLE points (id INTEGER PRIMARY KEY, series TEXT NOT NULL, time_ns INTEGER NOT NULL, "
        "tags TEXT NOT NULL, fields TEXT NOT NULL)"
    )
    insert = "INSERT INTO points (series, time_ns, tags, fields) VALUES (?, ?, ?, ?)"
    rnd = random.Random(13)
    base = 1_700_000_000 * 10**9
    rows: list[tuple[str, int, str, str]] = []
    db.execute("BEGIN")
    for b in range(builds):
        builder = f"builder-{b % BUILDERS:02d}"
        number = b // BUILDERS
        worker = f"w{b % 4}"
        end = base + b * 60 * 10**9
        duration = 60 + rnd.random() * 600
        tags = f'{{"build_number":"{number}","builder_name":"{builder}"}}'
        times = (
            f'{{"start-time":"{_iso(end - duration * 1e9)}","end-time":"{_iso(end)}",'
            f'"duration":{duration!r},"queue-time":{rnd.random() * 120!r}}}'
        )
        rows.append((f"{builder}-build-times", end, tags, times))
        results = 0 if rnd.random() < 0.8 else 2
        rows.append(
            (
                f"{builder}-build-results",
                end,
                f'{{"build_number":"{number}","builder_name":"{builder}","worker":"{worker}"}}',
                f'{{"results":{results},"result":"{"success" if results == 0 else "failure"}"}}',
            )
        )
        for s in range(STEPS):
            step_tags = (
                f'{{"build_number":"{number}","builder_name":"{builder}","step_name":"step {s}",'
                f'"step_number":"{s}","worker":"{worker}"}}'
            )
            fields = (
                f'{{"duration":{rnd.random() * (s + 1) * 10!r},"result":{0 if rnd.random() < 0.95 else 2}}}'
            )
            rows.append((f"{builder}-step-times", end - (STEPS - s) * 10**9, step_tags, fields))
        for t in range(TEST_SETS):
            total = 100 + t * 50
            failed = rnd.randrange(3)
            test_tags = (
                f'{{"build_number":"{number}","builder_name":"{builder}","category":"unit",'
                f'"description":"suite {t}","step_name":"test","value_unit":"count","worker":"{worker}"}}'
            )
            fields = f'{{"tests_failed":{failed},"tests_passed":{total - failed},"tests_total":{total}}}'
            rows.append((f"{builder}-test-results", end - t, test_tags, fields))
        rows.append((f"{builder}-branch", end, tags, '{"name":"branch","value":"main"}'))
        series = f"{builder}-test-timings"
        for k in range(DATA_PER_BUILD):
            rows.append((series, end + k, tags, f'{{"seconds":{rnd.random() * 3!r},"suite":"s{k % 50}"}}'))
        if len(rows) >= 500_000:
            db.executemany(insert, rows)
            rows.clear()
    db.executemany(insert, rows)
    db.execute("COMMIT")
    db.execute("CREATE UNIQUE INDEX points_unique ON points (series, tags, time_ns)")
    db.execute("CREATE INDEX points_series_time ON points (series, time_ns)")
    db.execute("PRAGMA journal_mode=WAL")
    count = db.execute("SELECT count(*) FROM points").fetchone()[0]
    db.close()
    return int(count)


# -- the children -----------------------------------------------------------------------------------


def figures(summary: Summary) -> dict[str, Any]:
    """What both must agree on (means to 9 decimals: the old one sums with math.fsum)."""
    return {
        "points": summary.points,
        "builders": [
            [
                b.builder,
                b.builds,
                b.results_known,
                b.successes,
                b.duration_p50,
                b.duration_p95,
                b.duration_max,
                b.last_build,
            ]
            for b in summary.builders
        ],
        "series": [
            [s.series, s.count, {k: [f.count, f.min, round(f.mean, 9), f.max] for k, f in s.fields.items()}]
            for s in summary.series
            # the old summary shows the step and test series as data series too
            if not s.series.endswith(("-step-times", "-test-results"))
        ],
    }


def child(which: str, path: str) -> None:
    started = time.perf_counter()
    summary = summarize_before(path) if which == "before" else summarize_path(path, charts=False)
    elapsed = time.perf_counter() - started
    print(json.dumps({"seconds": elapsed, "figures": figures(summary)}))


def run_child(which: str, path: str) -> tuple[float, float, dict[str, Any]]:
    """(seconds, max RSS in MB, figures) of one summary in a child process of its own."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.bench_summary", "--child", which, path],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"the {which} summary failed with status {proc.returncode}")
    result = json.loads(out)
    return result["seconds"], usage.ru_maxrss / 1024, result["figures"]


def _report(results: dict[str, Any]) -> bool:
    print()
    print(
        f"buildbot-stats summary of {results['points']:,} points ({results['store_bytes'] / 1e9:.2f} GB), "
        f"{results['cpus']} CPUs, Python {results['python']}, SQLite {results['sqlite']}"
    )
    print(f"  {'implementation':<16} {'time s':>9} {'max RSS MB':>11}")
    for which in ("before", "after"):
        if which in results:
            r = results[which]
            print(f"  {which:<16} {r['seconds']:>9.1f} {r['max_rss_mb']:>11.0f}")
    after = results["after"]
    ok = bool(after["max_rss_mb"] <= RSS_GOAL_MB)
    print(
        f"  max RSS after {after['max_rss_mb']:.0f} MB (goal <= {RSS_GOAL_MB} MB): "
        f"{'met' if ok else 'MISSED'}"
    )
    if "before" in results:
        speed, memory, same = results["speedup"], results["memory_ratio"], results["same_figures"]
        print(
            f"  speed-up {speed:.1f}x (goal >= {SPEED_GOAL:g}x): {'met' if speed >= SPEED_GOAL else 'MISSED'}"
        )
        print(f"  memory {memory:.1f}x less")
        print(f"  same builder and data series figures: {'yes' if same else 'NO'}")
        ok = ok and speed >= SPEED_GOAL and same
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="buildbot-stats summary before and after issue 13")
    parser.add_argument(
        "--points", type=int, default=10_010_000, help="rows in the store (default 10,010,000)"
    )
    parser.add_argument(
        "--store", help="the store's path (default: a temporary file); reused if it has the rows"
    )
    parser.add_argument("--keep", action="store_true", help="keep the store")
    parser.add_argument("--skip-before", action="store_true", help="do not run the old summary")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON to FILE")
    parser.add_argument("--child", nargs=2, metavar=("WHICH", "PATH"), help=argparse.SUPPRESS)
    parser.add_argument("--build", nargs=2, metavar=("PATH", "POINTS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0
    if args.build:
        build_store(args.build[0], int(args.build[1]))
        return 0
    workdir = None
    path = args.store
    if path is None:
        workdir = tempfile.mkdtemp(prefix="bbstats-bench-summary-")
        path = os.path.join(workdir, "stats.sqlite")
    expected = max(1, args.points // PER_BUILD) * PER_BUILD
    try:
        try:
            with open_store(path) as existing:
                reuse = existing.count() == expected
        except Exception:
            reuse = False
        if reuse:
            rows = expected
            print(f"reusing {path} ({rows:,} points)", flush=True)
        else:
            print(f"building {path} with {expected:,} points ...", flush=True)
            started = time.perf_counter()
            # in a child: a parent grown by building would lend its size to the children's max RSS
            subprocess.run(
                [sys.executable, "-m", "benchmarks.bench_summary", "--build", path, str(args.points)],
                check=True,
            )
            rows = expected
            print(f"  built in {time.perf_counter() - started:.0f} s", flush=True)
        results: dict[str, Any] = {
            "points": rows,
            "store_bytes": os.path.getsize(path),
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
            "cpus": os.cpu_count(),
        }
        found = {}
        for which in ("after",) if args.skip_before else ("before", "after"):
            print(f"summary {which} ...", flush=True)
            seconds, rss, found[which] = run_child(which, path)
            results[which] = {"seconds": seconds, "max_rss_mb": rss}
        if "before" in results:
            results["speedup"] = results["before"]["seconds"] / results["after"]["seconds"]
            results["memory_ratio"] = results["before"]["max_rss_mb"] / results["after"]["max_rss_mb"]
            results["same_figures"] = found["before"] == found["after"]
        ok = _report(results)
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(results, f, indent=2)
        return 0 if ok else 1
    finally:
        if workdir is not None and not args.keep:
            for name in os.listdir(workdir):
                os.remove(os.path.join(workdir, name))
            os.rmdir(workdir)
        elif args.keep or args.store:
            print(f"store kept: {path}")


if __name__ == "__main__":
    sys.exit(main())
