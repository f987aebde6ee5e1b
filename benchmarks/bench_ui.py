#!/usr/bin/env python
"""Statistics page benchmark: page time on a large store, and the reactor's worst delay while it renders.

Run from the repository root (buildbot-www and buildbot-wsgi-dashboards are not needed:
the WSGI app is called as Buildbot's ``WSGIResource`` calls it, in the reactor's
thread pool)::

    python -m benchmarks.bench_ui                        # 1,000,000 points, 50 builders: about a minute
    python -m benchmarks.bench_ui --points 100000        # a quicker look
    python -m benchmarks.bench_ui --store /tmp/ui.sqlite --keep   # build once, reuse

It writes a store like a busy master's last day (``--points``, default
1,000,000, in builds of 100 points: one ``build-times`` row with ``queue-time``,
one ``build-results`` row, 20 ``step-times`` points, 2 ``test-results`` points
and 76 points of a data series, on ``--builders`` builders, default 50, their
ends spread evenly over the last 24 hours), in the real schema.  Then, in this
process, with a real reactor whose ``LoopingCall`` every 10 ms records how
late it runs, it asks the page app (the figures of all four windows, the
access check answered by a stub of Buildbot's REST API on loopback):

* ``cold``: the first request (the store read, the figures computed);
* ``warm``: five more requests (the figures cached), the worst of them.

Goals (issue 19): warm at most 1 s, worst reactor delay at most 50 ms.  Exit
status 0 when both are met, 1 otherwise.
"""

from __future__ import annotations

import argparse
import datetime
import os
import random
import sqlite3
import sys
import tempfile
import time

STEPS = 20
TEST_SETS = 2
PER_BUILD = 100  # build-times, build-results, steps, test sets, data points
DATA_PER_BUILD = PER_BUILD - 2 - STEPS - TEST_SETS
DAY_NS = 24 * 3600 * 10**9


def _iso(ns: float) -> str:
    return datetime.datetime.fromtimestamp(ns / 1e9, datetime.timezone.utc).isoformat()


def build_store(path: str, points: int, builders: int, now_ns: int) -> int:
    """Write a store of ``points`` rows (whole builds) ending at ``now_ns``; return the rows."""
    builds = max(1, points // PER_BUILD)
    if os.path.exists(path):
        os.remove(path)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=OFF")
    db.execute("PRAGMA synchronous=OFF")
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.executemany("INSERT INTO meta VALUES (?, ?)", [("format", "buildbot_stats"), ("schema_version", "1")])
    db.execute(
        "CREATE TABLE points (id INTEGER PRIMARY KEY, series TEXT NOT NULL, time_ns INTEGER NOT NULL, "
        "tags TEXT NOT NULL, fields TEXT NOT NULL)"
    )
    insert = "INSERT INTO points (series, time_ns, tags, fields) VALUES (?, ?, ?, ?)"
    rnd = random.Random(19)
    start = now_ns - DAY_NS
    rows: list[tuple[str, int, str, str]] = []
    db.execute("BEGIN")
    for b in range(builds):
        builder = f"builder-{b % builders:02d}"
        number = b // builders
        end = start + (b + 1) * DAY_NS // builds
        duration = 60 + rnd.random() * 600
        tags = f'{{"build_number":"{number}","builder_name":"{builder}"}}'
        times = (
            f'{{"start-time":"{_iso(end - duration * 1e9)}","end-time":"{_iso(end)}",'
            f'"duration":{duration!r},"queue-time":{rnd.random() * 120!r}}}'
        )
        rows.append((f"{builder}-build-times", end, tags, times))
        results = 0 if rnd.random() < 0.8 else 2
        rows.append((f"{builder}-build-results", end, tags, f'{{"results":{results}}}'))
        for s in range(STEPS):
            step_tags = f'{{"build_number":"{number}","builder_name":"{builder}","step_name":"step {s}"}}'
            fields = f'{{"duration":{rnd.random() * (s + 1) * 10!r}}}'
            rows.append((f"{builder}-step-times", end - (STEPS - s) * 10**9, step_tags, fields))
        for t in range(TEST_SETS):
            total = 100 + t * 50
            failed = rnd.randrange(3)
            fields = f'{{"tests_failed":{failed},"tests_passed":{total - failed},"tests_total":{total}}}'
            rows.append((f"{builder}-test-results", end - t, tags, fields))
        for k in range(DATA_PER_BUILD):
            rows.append((f"{builder}-timings", end + k, tags, f'{{"seconds":{rnd.random() * 3!r}}}'))
        if len(rows) >= 200_000:
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
