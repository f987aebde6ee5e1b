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
import gc
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


# -- the measurement ------------------------------------------------------------------------------


class _RestApi:
    """``/api/v2/builders`` on 127.0.0.1 with every builder, as a master answers an admin."""

    def __init__(self, builders: int) -> None:
        import http.server
        import json
        import threading

        body = json.dumps(
            {
                "builders": [{"builderid": i + 1, "name": f"builder-{i:02d}"} for i in range(builders)],
                "meta": {},
            }
        ).encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def measure(path: str, builders: int, warm_runs: int) -> dict[str, float]:
    """Ask the page app in the reactor's thread pool, as Buildbot's WSGIResource does; time it, watch the
    reactor."""
    from twisted.internet import defer, reactor, task
    from twisted.internet.threads import deferToThreadPool

    from buildbot_stats.ui.app import StatsPage

    api = _RestApi(builders)
    page = StatsPage(path, lambda: None)
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/index.html",
        "QUERY_STRING": "",
        "SERVER_PORT": str(api.port),
        "HTTP_SEC_FETCH_DEST": "empty",
    }
    results: dict[str, float] = {}
    worst = [0.0]
    last = [time.monotonic()]

    def tick() -> None:
        now = time.monotonic()
        worst[0] = max(worst[0], now - last[0] - 0.010)
        last[0] = now

    def call() -> defer.Deferred:
        def run() -> tuple[float, int]:
            start = time.monotonic()
            status: list[str] = []
            body = b"".join(page(dict(environ), lambda s, h: status.append(s)))
            assert status == ["200 OK"] and b"bbs-window" in body, body[:500]
            return time.monotonic() - start, len(body)

        return deferToThreadPool(reactor, reactor.getThreadPool(), run)

    @defer.inlineCallbacks
    def scenario() -> defer.Generator:
        yield task.deferLater(reactor, 0.5, lambda: None)
        worst[0] = 0.0
        yield task.deferLater(reactor, 3.0, lambda: None)  # the baseline: the machine's own noise
        results["idle_delay_ms"] = worst[0] * 1000
        worst[0] = 0.0
        results["cold_s"], results["page_bytes"] = yield call()
        results["cold_delay_ms"] = worst[0] * 1000
        worst[0] = 0.0
        renders, cached = [], []
        for _ in range(warm_runs):
            page._pages.clear()  # the figures cached, the page rendered again
            renders.append((yield call())[0])
            cached.append((yield call())[0])  # the same page again: from the page cache
        results["warm_render_s"] = max(renders)
        results["warm_cached_s"] = max(cached)
        results["warm_delay_ms"] = worst[0] * 1000
        # figures older than FRESH_SECONDS: answered from the cache while computed again
        page.cache.fresh = 0.0
        page.cache._entries = {k: v._replace(took=0.0) for k, v in page.cache._entries.items()}
        worst[0] = 0.0
        results["stale_s"] = (yield call())[0]
        page.cache.fresh = 3600.0
        yield task.deferLater(reactor, 0.1, lambda: None)
        while page.cache._computing:
            yield task.deferLater(reactor, 0.1, lambda: None)
        results["refresh_delay_ms"] = worst[0] * 1000

    gc.collect()
    start = time.monotonic()
    gc.collect()
    results["full_gc_ms"] = (time.monotonic() - start) * 1000
    loop = task.LoopingCall(tick)
    loop.start(0.010)
    done = scenario()
    failure: list[object] = []
    done.addErrback(failure.append)
    done.addBoth(lambda _: reactor.stop())
    reactor.run()
    api.close()
    if failure:
        raise RuntimeError(str(failure[0]))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--builders", type=int, default=50)
    parser.add_argument("--warm-runs", type=int, default=5)
    parser.add_argument("--store", help="the store file (written unless --keep finds it there)")
    parser.add_argument("--keep", action="store_true", help="keep the store (and reuse one that is there)")
    args = parser.parse_args(argv)
    tmp = None
    if args.store is None:
        tmp = tempfile.mkdtemp(prefix="bench-ui-")
        args.store = os.path.join(tmp, "stats.sqlite")
    try:
        if not (args.keep and os.path.exists(args.store)):
            start = time.monotonic()
            rows = build_store(args.store, args.points, args.builders, time.time_ns())
            took = time.monotonic() - start
            print(f"store: {rows:,} points on {args.builders} builders, written in {took:.1f} s")
        r = measure(args.store, args.builders, args.warm_runs)
    finally:
        if tmp is not None and not args.keep:
            for name in os.listdir(tmp):
                os.remove(os.path.join(tmp, name))
            os.rmdir(tmp)
    warm = max(r["warm_render_s"], r["warm_cached_s"])
    delay = max(r["cold_delay_ms"], r["warm_delay_ms"], r["refresh_delay_ms"])
    print(f"page size                                    {r['page_bytes'] / 1024:8.0f} KiB")
    print(f"cold: first request (store read, figures)     {r['cold_s']:8.2f} s")
    print(f"warm: figures cached, page rendered           {r['warm_render_s']:8.2f} s   ≤ 1 s")
    print(f"warm: the same page again                     {r['warm_cached_s']:8.3f} s   ≤ 1 s")
    print(f"stale figures: answered while recomputed      {r['stale_s']:8.3f} s")
    print(f"worst reactor delay: idle, before (baseline)  {r['idle_delay_ms']:8.1f} ms")
    print(f"one full garbage collection of this process   {r['full_gc_ms']:8.1f} ms")
    print(f"worst reactor delay: cold                     {r['cold_delay_ms']:8.1f} ms")
    print(f"worst reactor delay: warm                     {r['warm_delay_ms']:8.1f} ms")
    print(
        f"worst reactor delay: background recompute     {r['refresh_delay_ms']:8.1f} ms  ≤ 50 ms (all three)"
    )
    ok = warm <= 1.0 and delay <= 50.0
    print("goals met" if ok else "goal missed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
