#!/usr/bin/env python
"""Delivery benchmark: buildbot_stats against buildbot.statistics and raw InfluxDB.

Run from the repository root (needs ``influxd`` and ``buildbot-worker``)::

    python -m benchmarks.bench_delivery [--builds 20] [--values 500] [--points 200000]
                                        [--warmup 1] [--quick] [--json FILE] [--keep]
                                        [--only masters|ours] [--serial]

One run starts ONE private ``influxd`` on 127.0.0.1 and measures, in order:

1. Three real Buildbot masters (2 LocalWorkers, 2 builders; one change makes
   one build on each, and the two run at the same time; with ``--serial``
   one worker runs one build at a time), each running
   ``--warmup`` unmeasured changes and then ``--builds`` builds of a step that
   awaits ``self.yieldMetricsValue(...)`` ``--values`` times and times that
   loop with ``time.perf_counter`` (also the time Python's garbage collector
   took, for the JSON output):

   a. buildbot_stats, ``--values`` values per build;
   b. buildbot_stats, 0 values per build (the baseline);
   c. Buildbot's own ``buildbot.statistics``, ``--values`` values per build.

   Build-time overhead per value = (mean step time with values - mean step
   time with 0 values) / values.  Every run also captures the build duration,
   a point that only exists once the build has finished: the latency is the
   time from the end of the last build's posting step (just before the build
   ends, so the figure errs high) until InfluxDB answers with every point
   (polled every 10 ms).

2. Pipeline throughput: ``--points`` points pushed in-process (a child
   process with a real reactor and real threads) through
   ``StatsService.store`` -> DeliveryQueue -> SQLite spool ->
   InfluxStorageService into the same influxd, next to raw ingest of the same
   points as pre-built line protocol, POSTed in batches of 5000 with one
   keep-alive HTTP connection (measured before and after the pipeline; the
   faster one counts).  The goal is evaluated on this end-to-end figure.  The
   InfluxDB 1.x backend writes two batches at once when it can: raw ingest
   over two connections at once is measured too, and the ratio to it shown
   for information.

3. Backlog drain: a first service (InfluxDB unreachable: a closed port)
   spools ``--points`` points and stops; a fresh service on the same spool
   starts and sends them to influxd: points / time from its start (reading
   the spool included) until all are written, shown beside the end-to-end
   figure and compared with the same raw ingest.

Every wait is bounded; masters, influxd and the child are stopped on errors,
Ctrl-C and SIGTERM.  Exit status 0 when every goal is met, 1 otherwise.
Figures from one (noisy) machine: compare the ratios, not the absolute values.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from buildbot_stats.cli.master_process import RealMaster, make_master_cfg
from tests.support.influxd import InfluxServer
from tests.support.ports import free_port

OVERHEAD_GOAL_US = 30.0  # issue 8: "no worse than today (about 30 µs per value)"
LATENCY_GOAL_S = 2.0
THROUGHPUT_GOAL = 0.5
RSS_GOAL_MB = 100.0
REACTOR_DELAY_GOAL_S = 0.05
RAW_BATCH = 5000
BUILDERS = ("bench-1", "bench-2")

# -- the masters ----------------------------------------------------------------

_STEP_SRC = """
import gc
import time

from buildbot.process import buildstep
from buildbot.process.results import SUCCESS

{import_stats}

N_VALUES = {values}
BATCH = {batch}
GC_SECONDS = [0.0, None]  # time spent in Python's garbage collector (for the JSON output)


def _gc_timer(phase, info):
    if phase == 'start':
        GC_SECONDS[1] = time.perf_counter()
    elif GC_SECONDS[1] is not None:
        GC_SECONDS[0] += time.perf_counter() - GC_SECONDS[1]
        GC_SECONDS[1] = None


gc.callbacks.append(_gc_timer)


class PostValues(StepBase, buildstep.BuildStep):
    name = 'post-values'

    async def run(self):
        gc0 = GC_SECONDS[0]
        t0 = time.perf_counter()
        if BATCH:
            await self.yieldMetricsValues('bench', [{{'i': i, 'value': i * 0.5}} for i in range(N_VALUES)])
        else:
            for i in range(N_VALUES):
                await self.yieldMetricsValue('bench', {{'i': i, 'value': i * 0.5}})
        elapsed = time.perf_counter() - t0
        self.setProperty('bench_post_seconds', elapsed, 'bench')
        self.setProperty('bench_post_end', time.time(), 'bench')
        self.setProperty('bench_gc_seconds', GC_SECONDS[0] - gc0, 'bench')
        return SUCCESS
"""

_IMPORT_OURS = """
from buildbot_stats import statistics

StepBase = statistics.StatsStepMixin
"""

_IMPORT_OLD = """
from buildbot import statistics


class StepBase:
    # buildbot.statistics has no step mixin; in 4.3 its service lives here
    def yieldMetricsValue(self, data_name, post_data):
        svc = self.master.service_manager.namedServices['stats']
        return svc.yieldMetricsValue(data_name, post_data, self.build.buildid)
"""

_SERVICES_SRC = """
c['services'].append(statistics.StatsService(
    storage_backends=[
        statistics.InfluxStorageService(
            '127.0.0.1', {port}, 'root', 'root', {db!r},
            captures=[
                statistics.CaptureDataAllBuilders('bench'),
                statistics.CaptureBuildDurationAllBuilders(),
            ],
        ),
    ],
    name='stats',
))
"""

_COUNT_QUERY = 'SELECT count("value") FROM /-bench$/; SELECT count("duration") FROM /-build-times$/'


def stored_points(influx: InfluxServer, db: str) -> int:
    """Points of a master run stored so far (bench values plus build durations)."""
    result = influx.query(_COUNT_QUERY, db)
    total = 0
    for res in result.get("results", []):
        for series in res.get("series", []):
            total += sum(int(row[1] or 0) for row in series.get("values", []))  # null: none yet
    return total


def run_master(
    workdir: Path,
    label: str,
    ours: bool,
    values: int,
    builds: int,
    influx: InfluxServer,
    db: str,
    warmup: int = 1,
    batch: bool = False,
    serial: bool = False,
) -> dict[str, Any]:
    """One master: ``warmup`` changes (not measured), then ``builds`` builds of ``values`` values.

    ``batch``: the step posts its values in one ``yieldMetricsValues`` call
    instead of awaiting ``yieldMetricsValue`` once per value.  ``serial``: one worker
    that runs one build at a time (no build's step waits for the other's).
    """
    influx.create_database(db)
    header = _STEP_SRC.format(
        import_stats=_IMPORT_OURS if ours else _IMPORT_OLD, values=values, batch=bool(batch)
    )
    cfg = make_master_cfg(
        {name: "[PostValues()]" for name in BUILDERS},
        pb_port=free_port(),
        workers={"local-worker-1": {"max_builds": 1}} if serial else 2,
        header=header,
        services=_SERVICES_SRC.format(port=influx.port, db=db),
    )
    warm_builds = warmup * len(BUILDERS)
    total = warm_builds + builds
    expected = total * (values + 1)  # the values and one build duration per build
    build_timeout = 120 + total * values * 0.05
    master = RealMaster(workdir / label, cfg)
    try:
        master.create()
        master.start()
        print(f"  {label}: {warm_builds} warm-up + {builds} builds x {values} values ...", flush=True)
        if warmup:
            master.sendchange(warmup)
            master.wait_for_builds(warm_builds, timeout=build_timeout)
        warm_ids = {b["buildid"] for b in master.builds()}
        t_send = time.time()
        master.sendchange(builds // len(BUILDERS))
        build_deadline = time.monotonic() + build_timeout
        settle_deadline = None
        t_builds = t_points = None
        stored = 0
        while True:  # bounded by build_deadline, then settle_deadline
            now = time.time()
            if t_builds is None:
                done = [b for b in master.builds() if b["complete_at"] is not None]
                if len(done) >= total:
                    t_builds = now
                    settle_deadline = time.monotonic() + 60
                elif not master.is_running():
                    raise RuntimeError(f"master {label} died:\n{master.log_tail()}")
                elif time.monotonic() > build_deadline:
                    raise TimeoutError(f"{label}: {len(done)}/{total} builds done:\n{master.log_tail()}")
            stored = stored_points(influx, db)
            if t_builds is not None and stored >= expected:
                t_points = now
                break
            if settle_deadline is not None and time.monotonic() > settle_deadline:
                break  # report what was stored
            time.sleep(0.05 if t_builds is None else 0.01)
        measured = [
            b for b in master.builds() if b["complete_at"] is not None and b["buildid"] not in warm_ids
        ]
        props = [master.build_properties(b["buildid"]) for b in measured]
        step_seconds = [p["bench_post_seconds"] for p in props if "bench_post_seconds" in p]
        gc_seconds = [p.get("bench_gc_seconds", 0.0) for p in props if "bench_post_seconds" in p]
        last_post_end = max(p["bench_post_end"] for p in props if "bench_post_end" in p)
        tracebacks = len(master.tracebacks())
        master.stop()
    finally:
        master.close()
    if len(step_seconds) != builds:
        raise RuntimeError(f"{label}: step times of {len(step_seconds)}/{builds} builds found")
    return {
        "label": label,
        "builds": builds,
        "warmup_builds": warm_builds,
        "values_per_build": values,
        "step_seconds": step_seconds,
        "step_seconds_mean": sum(step_seconds) / len(step_seconds),
        "step_seconds_median": sorted(step_seconds)[len(step_seconds) // 2],
        "step_gc_seconds": gc_seconds,
        "builds_wall_seconds": t_builds - t_send,
        "expected_points": expected,
        "stored_points": stored,
        "latency_seconds": None if t_points is None else t_points - last_post_end,
        "latency_from_polled_build_end_seconds": None if t_points is None else t_points - t_builds,
        "tracebacks": tracebacks,
    }


# -- pipeline throughput and raw ingest -----------------------------------------


def bench_items(n: int, values: int) -> list[tuple[str, dict[str, Any], dict[str, str]]]:
    """``n`` (series, fields, tags) like the masters post: ``values`` per build, 2 builders."""
    items = []
    for idx in range(n):
        build, i = divmod(idx, values)
        builder = BUILDERS[build % len(BUILDERS)]
        items.append(
            (
                f"{builder}-bench",
                {"i": i, "value": i * 0.5},
                {"builder_name": builder, "build_number": str(build // len(BUILDERS) + 1)},
            )
        )
    return items


def raw_bodies(n: int, values: int) -> list[bytes]:
    """The same points as pre-built line protocol, in batches of RAW_BATCH."""
    from buildbot_stats.lineprotocol import encode_body
    from buildbot_stats.point import Point

    base = time.time_ns()
    points = [Point(s, f, t, base + k) for k, (s, f, t) in enumerate(bench_items(n, values))]
    return [encode_body(points[i : i + RAW_BATCH])[0] for i in range(0, n, RAW_BATCH)]


def _post_bodies(influx: InfluxServer, db: str, bodies: list[bytes], errors: list[str]) -> None:
    """POST ``bodies`` one after the other on one keep-alive connection."""
    conn = http.client.HTTPConnection(influx.host, influx.port, timeout=60)
    try:
        for body in bodies:
            conn.request(
                "POST",
                f"/write?db={db}&precision=n",
                body=body,
                headers={"Content-Type": "application/octet-stream"},
            )
            resp = conn.getresponse()
            answer = resp.read()
            if resp.status != 204:
                errors.append(f"raw write answered {resp.status}: {answer[:200]!r}")
                return
    finally:
        conn.close()


def raw_ingest(
    influx: InfluxServer, db: str, bodies: list[bytes], n: int, connections: int = 1
) -> dict[str, Any]:
    """The points as pre-built line protocol, over ``connections`` connections at once."""
    influx.create_database(db)
    errors: list[str] = []
    t0 = time.perf_counter()
    if connections == 1:
        _post_bodies(influx, db, bodies, errors)
    else:
        posters = [
            threading.Thread(target=_post_bodies, args=(influx, db, bodies[i::connections], errors))
            for i in range(connections)
        ]
        for poster in posters:
            poster.start()
        for poster in posters:
            poster.join(timeout=300)
    elapsed = time.perf_counter() - t0
    if errors:
        raise RuntimeError(errors[0])
    stored = _count_values(influx, db)
    return {"points": n, "seconds": elapsed, "points_per_second": n / elapsed, "stored": stored}


def _count_values(influx: InfluxServer, db: str) -> int:
    result = influx.query('SELECT count("value") FROM /-bench$/', db)
    return sum(
        int(row[1] or 0)
        for res in result.get("results", [])
        for series in res.get("series", [])
        for row in series.get("values", [])
    )


def run_pipeline(
    influx: InfluxServer, db: str, n: int, values: int, workdir: Path, drain: bool = False
) -> dict[str, Any]:
    """Run the pipeline (or the backlog drain) in a child process (its own reactor); return its figures."""
    influx.create_database(db)
    spec = {
        "port": influx.port,
        "db": db,
        "points": n,
        "chunk": values,
        "basedir": str(workdir / ("drain" if drain else "pipeline")),
        "drain": drain,
        "closed_port": free_port(),
    }
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--pipeline-child", json.dumps(spec)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"pipeline child failed (rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    result: dict[str, Any] = json.loads(lines[-1])
    result["stored"] = _count_values(influx, db)
    return result


def _rss_mb() -> float:
    """This process's resident set size, from /proc (MB)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def pipeline_child(spec: dict[str, Any]) -> None:
    """In the child: StatsService.store -> queue -> SQLite spool -> InfluxDB, real reactor."""
    from buildbot.util import service
    from twisted.internet import defer, reactor, task

    class Lateness:
        """A LoopingCall every 10 ms; its worst delay is how long the reactor was kept busy."""

        def __init__(self) -> None:
            self.worst = 0.0
            self.rss_max = 0.0
            self._expected = 0.0
            self._call = task.LoopingCall(self._tick)

        def _tick(self) -> None:
            now = time.perf_counter()
            if self._expected:
                self.worst = max(self.worst, now - self._expected)
            self._expected = now + 0.01
            self.rss_max = max(self.rss_max, _rss_mb())

        def start(self) -> None:
            self._call.start(0.01)

        def stop(self) -> None:
            if self._call.running:
                self._call.stop()

    from buildbot_stats import statistics

    n, chunk = int(spec["points"]), int(spec["chunk"])

    class _Consumer:
        def stopConsuming(self) -> None:
            pass

    class _MQ:
        def startConsuming(self, callback: Any, routingKey: Any) -> Any:
            return defer.succeed(_Consumer())

    class BenchMaster(service.MasterService):
        def __init__(self, basedir: str) -> None:
            super().__init__()
            self.reactor = reactor
            self.basedir = basedir
            self.mq = _MQ()

    async def drain() -> None:
        """Backlog drain: a first service spools the points (InfluxDB unreachable), a second sends them."""
        os.makedirs(spec["basedir"], exist_ok=True)
        capture = statistics.CaptureDataAllBuilders("bench")
        down = statistics.InfluxStorageService(
            "127.0.0.1", spec["closed_port"], "root", "root", spec["db"], captures=[capture], name="influx"
        )
        master = BenchMaster(spec["basedir"])
        svc = statistics.StatsService(storage_backends=[down], name="stats", flush_timeout=0)
        await svc.setServiceParent(master)
        await master.startService()
        await task.deferLater(reactor, 0.2, lambda: None)
        rss_idle = _rss_mb()
        items = bench_items(n, chunk)
        spool_cpu0 = time.process_time()
        spool_t0 = time.perf_counter()
        for start in range(0, n, chunk):
            for series, fields, tags in items[start : start + chunk]:
                svc.store(capture, fields, series, tags)
            await task.deferLater(reactor, 0, lambda: None)
        await svc.wait_spooled()
        spool_seconds = time.perf_counter() - spool_t0
        spool_cpu = time.process_time() - spool_cpu0
        del items
        import gc

        gc.collect()
        await task.deferLater(reactor, 0.2, lambda: None)
        rss_pending = _rss_mb()
        spooled = svc.queues["influx"].counters.spooled
        pending = svc.queues["influx"].pending
        await master.stopService()
        spool_file = os.path.join(spec["basedir"], "stats-spool.sqlite")
        spool_bytes = sum(
            os.path.getsize(spool_file + sfx) for sfx in ("", "-wal") if os.path.exists(spool_file + sfx)
        )

        capture = statistics.CaptureDataAllBuilders("bench")
        up = statistics.InfluxStorageService(
            "127.0.0.1", spec["port"], "root", "root", spec["db"], captures=[capture], name="influx"
        )
        master = BenchMaster(spec["basedir"])
        svc = statistics.StatsService(storage_backends=[up], name="stats")
        lateness = Lateness()
        lateness.start()
        cpu0 = time.process_time()
        reactor_cpu0 = time.thread_time()
        t0 = time.perf_counter()
        await svc.setServiceParent(master)
        await master.startService()
        t_started = time.perf_counter()
        queue = svc.queues["influx"]
        deadline = t0 + 600
        while queue.counters.written + queue.counters.dropped < n and time.perf_counter() < deadline:
            await task.deferLater(reactor, 0.005, lambda: None)
        t_written = time.perf_counter()
        cpu = time.process_time() - cpu0
        reactor_cpu = time.thread_time() - reactor_cpu0
        lateness.stop()
        counters = queue.counters.as_dict()
        await master.stopService()
        elapsed = t_written - t0
        print(
            json.dumps(
                {
                    "points": n,
                    "spooled_first": spooled,
                    "pending_first": pending,
                    "spool_seconds": spool_seconds,
                    "spool_cpu_us_per_point": spool_cpu / n * 1e6,
                    "spool_bytes": spool_bytes,
                    "spool_bytes_per_point": spool_bytes / max(1, n),
                    "rss_idle_mb": rss_idle,
                    "rss_pending_mb": rss_pending,
                    "rss_max_during_drain_mb": lateness.rss_max,
                    "worst_reactor_delay_seconds": lateness.worst,
                    "seconds": elapsed,
                    "points_per_second": counters["written"] / elapsed,
                    "cpu_us_per_point": cpu / n * 1e6,
                    "reactor_cpu_us_per_point": reactor_cpu / n * 1e6,
                    "started_after_seconds": t_started - t0,
                    "counters": counters,
                }
            ),
            flush=True,
        )

    async def main() -> None:
        os.makedirs(spec["basedir"], exist_ok=True)
        master = BenchMaster(spec["basedir"])
        capture = statistics.CaptureDataAllBuilders("bench")
        backend = statistics.InfluxStorageService(
            "127.0.0.1", spec["port"], "root", "root", spec["db"], captures=[capture], name="influx"
        )
        svc = statistics.StatsService(storage_backends=[backend], name="stats")
        await svc.setServiceParent(master)
        await master.startService()
        queue = svc.queues["influx"]
        items = bench_items(n, chunk)
        store = svc.store
        feed = 0.0
        cpu0 = time.process_time()
        reactor_cpu0 = time.thread_time()
        t0 = time.perf_counter()
        for start in range(0, n, chunk):
            f0 = time.perf_counter()
            for series, fields, tags in items[start : start + chunk]:
                store(capture, fields, series, tags)
            feed += time.perf_counter() - f0
            await task.deferLater(reactor, 0, lambda: None)
        t_fed = time.perf_counter()
        deadline = t_fed + 240
        while queue.counters.written + queue.counters.dropped < n and time.perf_counter() < deadline:
            await task.deferLater(reactor, 0.005, lambda: None)
        t_written = time.perf_counter()
        cpu = time.process_time() - cpu0
        reactor_cpu = time.thread_time() - reactor_cpu0
        counters = queue.counters.as_dict()
        await master.stopService()
        t_stopped = time.perf_counter()
        elapsed = t_written - t0
        print(
            json.dumps(
                {
                    "points": n,
                    "seconds": elapsed,
                    "points_per_second": counters["written"] / elapsed,
                    "feed_seconds": feed,
                    "feed_us_per_point": feed / n * 1e6,
                    "cpu_us_per_point": cpu / n * 1e6,
                    "reactor_cpu_us_per_point": reactor_cpu / n * 1e6,
                    "fed_after_seconds": t_fed - t0,
                    "stop_seconds": t_stopped - t_written,
                    "counters": counters,
                }
            ),
            flush=True,
        )

    task.react(lambda _reactor: defer.ensureDeferred(drain() if spec.get("drain") else main()))


# -- report -----------------------------------------------------------------------


def _mark(ok: bool) -> str:
    return "✓" if ok else "✗"


def _wall(seconds: float) -> str:
    return f"{seconds * 1e6:,.0f} µs" if seconds > 0 else "0 (in the noise)"


def report(results: dict[str, Any]) -> str:
    ours, base, old = results["ours"], results["ours_zero"], results["old"]
    batch = results["ours_batch"]
    raw, pipe, drain = results["raw"], results["pipeline"], results["drain"]
    values = ours["values_per_build"]
    ov_ours = (ours["step_seconds_mean"] - base["step_seconds_mean"]) / values
    ov_old = (old["step_seconds_mean"] - base["step_seconds_mean"]) / values
    ov_batch = (batch["step_seconds_mean"] - base["step_seconds_mean"]) / values
    med_ours = (ours["step_seconds_median"] - base["step_seconds_median"]) / values
    wall_ours = (ours["builds_wall_seconds"] - base["builds_wall_seconds"]) / (values * ours["builds"])
    wall_old = (old["builds_wall_seconds"] - base["builds_wall_seconds"]) / (values * old["builds"])
    raw_pps = raw["points_per_second"]
    ratio = pipe["points_per_second"] / raw_pps
    raw_two = results["raw_two"]["points_per_second"]
    ratio_two = pipe["points_per_second"] / raw_two
    drain_ratio = drain["points_per_second"] / raw_pps
    latency = ours["latency_seconds"]
    rss_growth = max(drain["rss_pending_mb"], drain["rss_max_during_drain_mb"]) - drain["rss_idle_mb"]
    delay = drain["worst_reactor_delay_seconds"]
    results["figures"] = {
        "overhead_per_value_batch_us": ov_batch * 1e6,
        "rss_idle_mb": drain["rss_idle_mb"],
        "rss_pending_mb": drain["rss_pending_mb"],
        "rss_growth_mb": rss_growth,
        "worst_reactor_delay_seconds": delay,
        "overhead_per_value_us": ov_ours * 1e6,
        "overhead_per_value_old_us": ov_old * 1e6,
        "overhead_ratio_old_to_ours": ov_old / ov_ours if ov_ours > 0 else None,
        "overhead_per_value_median_us": med_ours * 1e6,
        "wall_overhead_per_value_us": wall_ours * 1e6,
        "wall_overhead_per_value_old_us": wall_old * 1e6,
        "latency_seconds": latency,
        "pipeline_points_per_second": pipe["points_per_second"],
        "raw_points_per_second": raw_pps,
        "pipeline_to_raw": ratio,
        "raw_two_connections_points_per_second": raw_two,
        "pipeline_to_raw_two_connections": ratio_two,
        "drain_points_per_second": drain["points_per_second"],
        "drain_to_raw": drain_ratio,
    }
    # The awaited loop waits for the spool once per value (acknowledged means kept): its
    # cost is a thread round trip, reported but not held to the goal, which issue 13
    # sets for the batch form only.
    goals = {
        "latency": latency is not None and latency <= LATENCY_GOAL_S,
        "overhead_batch": ov_batch * 1e6 <= OVERHEAD_GOAL_US,
        "throughput": ratio >= THROUGHPUT_GOAL,
        "drain_throughput": drain_ratio >= THROUGHPUT_GOAL,
        "rss": rss_growth <= RSS_GOAL_MB,
        "reactor_delay": delay <= REACTOR_DELAY_GOAL_S,
        "complete": ours["stored_points"] == ours["expected_points"]
        and pipe["stored"] == pipe["points"]
        and drain["stored"] == drain["points"]
        and base["stored_points"] == base["expected_points"]
        and batch["stored_points"] == batch["expected_points"],
    }
    results["goals_met"] = goals

    def lat(run: dict[str, Any]) -> str:
        return "-" if run["latency_seconds"] is None else f"{run['latency_seconds']:.2f}"

    out = []
    env = results["environment"]
    out.append(
        f"buildbot-stats delivery benchmark: {ours['builds']} builds per master (after "
        f"{ours['warmup_builds']} warm-up builds), {values} values per build, {len(BUILDERS)} builders, "
        f"2 LocalWorkers, {env['cpus']} CPUs, Python {env['python']}, InfluxDB {env['influxdb']}"
    )
    out.append("")
    out.append(
        "real masters                   step ms: mean  median  builds wall s  points stored"
        "  latency s  tracebacks"
    )
    for run, name in (
        (ours, f"buildbot_stats, {values} values"),
        (batch, "same, one yieldMetricsValues"),
        (base, "buildbot_stats, 0 values"),
        (old, f"buildbot.statistics, {values} v."),
    ):
        out.append(
            f"  {name:<28} {run['step_seconds_mean'] * 1e3:>14.2f} {run['step_seconds_median'] * 1e3:>7.2f}"
            f"  {run['builds_wall_seconds']:>13.1f}"
            f"  {run['stored_points']:>6}/{run['expected_points']:<6}  {lat(run):>9}  {run['tracebacks']:>10}"
        )
    out.append("")
    out.append(f"{'figure':<52} {'measured':>16}  {'goal':<16}")
    rows = [
        (
            "build-time overhead per value, buildbot_stats",
            f"{ov_ours * 1e6:.1f} µs",
            "(info: a spool round trip per awaited value)",
        ),
        (
            "same, all values in one yieldMetricsValues",
            f"{ov_batch * 1e6:.1f} µs",
            f"≤ {OVERHEAD_GOAL_US:.0f} µs  {_mark(goals['overhead_batch'])}",
        ),
        ("build-time overhead per value, buildbot.statistics", f"{ov_old * 1e6:,.0f} µs", "(anchor ~5.9 ms)"),
        (
            "  ratio buildbot.statistics / buildbot_stats",
            f"{ov_old / ov_ours:,.0f} x" if ov_ours > 0 else "inf",
            "",
        ),
        ("  same from the median step times, buildbot_stats", f"{med_ours * 1e6:.1f} µs", "(info)"),
        ("all builds' wall time per value, buildbot_stats", _wall(wall_ours), "(coarse: ±1 s)"),
        ("all builds' wall time per value, buildbot.statistics", _wall(wall_old), "(as the anchor)"),
        (
            "last build end -> last point stored",
            f"{lat(ours)} s",
            f"≤ {LATENCY_GOAL_S:.0f} s     {_mark(goals['latency'])}",
        ),
        (
            f"pipeline throughput, end to end ({pipe['points']:,} points)",
            f"{pipe['points_per_second']:,.0f} pts/s",
            "",
        ),
        (
            f"backlog drain ({drain['points']:,} spooled points)",
            f"{drain['points_per_second']:,.0f} pts/s",
            "",
        ),
        (f"raw InfluxDB ingest (batches of {RAW_BATCH})", f"{raw_pps:,.0f} pts/s", ""),
        (
            "  ratio pipeline end to end / raw",
            f"{ratio * 100:.0f} %",
            f"≥ {THROUGHPUT_GOAL * 100:.0f} %     {_mark(goals['throughput'])}",
        ),
        (
            "  same against raw ingest on 2 connections at once",
            f"{ratio_two * 100:.0f} %",
            f"(info: raw {raw_two:,.0f} pts/s)",
        ),
        (
            "  ratio backlog drain / raw",
            f"{drain_ratio * 100:.0f} %",
            f"≥ {THROUGHPUT_GOAL * 100:.0f} %     {_mark(goals['drain_throughput'])}",
        ),
        (
            f"master RSS, idle -> {drain['points']:,} pending",
            f"{drain['rss_idle_mb']:.0f} -> {drain['rss_pending_mb']:.0f} MB",
            "",
        ),
        (
            "  RSS growth (pending, or peak during the drain)",
            f"{rss_growth:.0f} MB",
            f"≤ {RSS_GOAL_MB:.0f} MB    {_mark(goals['rss'])}",
        ),
        (
            "worst reactor delay during the drain (10 ms timer)",
            f"{delay * 1e3:.1f} ms",
            f"≤ {REACTOR_DELAY_GOAL_S * 1e3:.0f} ms     {_mark(goals['reactor_delay'])}",
        ),
        (
            "every point stored (masters, pipeline, drain)",
            "yes" if goals["complete"] else "NO",
            _mark(goals["complete"]),
        ),
    ]
    for name, value, goal in rows:
        out.append(f"  {name:<50} {value:>16}  {goal}")
    out.append("")
    out.append(
        f"pipeline: {pipe['cpu_us_per_point']:.1f} µs of CPU per point (all threads), "
        f"{pipe['reactor_cpu_us_per_point']:.1f} µs of it in the reactor thread; store() loop "
        f"{pipe['feed_us_per_point']:.1f} µs of wall time per point; "
        f"all fed after {pipe['fed_after_seconds']:.2f} s, all written after {pipe['seconds']:.2f} s; "
        f"raw runs: " + ", ".join(f"{r['points_per_second']:,.0f}" for r in results["raw_runs"]) + " pts/s"
    )
    out.append(
        f"spooling the backlog: {drain['spool_cpu_us_per_point']:.1f} µs of CPU per point, "
        f"{drain['spool_bytes_per_point']:.0f} bytes of spool file per point"
    )
    out.append(
        f"backlog drain: {drain['cpu_us_per_point']:.1f} µs of CPU per point "
        f"({drain['reactor_cpu_us_per_point']:.1f} in the reactor); "
        f"{drain['spooled_first']:,} points spooled by a first service that could not reach InfluxDB; "
        f"a second one started in {drain['started_after_seconds']:.2f} s (reading the spool) "
        f"and had written all after {drain['seconds']:.2f} s"
    )
    load = env.get("load_average")
    if load:
        out.append(f"machine load (1/5/15 min) at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    return "\n".join(line.rstrip() for line in out)


def report_masters(results: dict[str, Any]) -> str:
    """The real masters' part of :func:`report` alone (``--only masters``)."""
    ours, base, old, batch = results["ours"], results["ours_zero"], results.get("old"), results["ours_batch"]
    values = ours["values_per_build"]

    def per_value(run: dict[str, Any], key: str = "step_seconds_mean") -> float:
        return (run[key] - base[key]) / values * 1e6

    runs = [r for r in (ours, batch, base, old) if r is not None]
    ov_ours, ov_batch = per_value(ours), per_value(batch)
    ov_old = per_value(old) if old is not None else float("nan")
    goals = {  # the awaited loop is reported, not held to the goal (see report())
        "overhead_batch": ov_batch <= OVERHEAD_GOAL_US,
        "complete": all(r["stored_points"] == r["expected_points"] for r in runs),
    }
    results["goals_met"] = goals
    results["figures"] = {
        "overhead_per_value_us": ov_ours,
        "overhead_per_value_batch_us": ov_batch,
        "overhead_per_value_old_us": ov_old,
        "overhead_per_value_median_us": per_value(ours, "step_seconds_median"),
        "overhead_per_value_batch_median_us": per_value(batch, "step_seconds_median"),
    }
    serial = ", one build at a time" if results["environment"].get("serial") else ""
    out = [f"real masters only: {ours['builds']} builds per master{serial}, {values} values per build"]
    for run, name in (
        (ours, "buildbot_stats, awaited loop"),
        (batch, "buildbot_stats, yieldMetricsValues"),
        (base, "buildbot_stats, 0 values"),
        (old, "buildbot.statistics"),
    ):
        if run is None:
            continue
        gc_ms = sum(run["step_gc_seconds"]) / max(1, len(run["step_gc_seconds"])) * 1e3
        out.append(
            f"  {name:<36} step ms mean {run['step_seconds_mean'] * 1e3:9.2f}  median "
            f"{run['step_seconds_median'] * 1e3:9.2f}  gc ms {gc_ms:6.2f}  "
            f"points {run['stored_points']}/{run['expected_points']}  tracebacks {run['tracebacks']}"
        )
    for name, value, mark in (
        ("awaited loop", ov_ours, "(info: a spool round trip per awaited value)"),
        ("yieldMetricsValues", ov_batch, _mark(goals["overhead_batch"])),
        ("buildbot.statistics", ov_old, ""),
    ):
        if old is None and name == "buildbot.statistics":
            continue
        out.append(f"  overhead per value, {name:<20} {value:9.1f} µs  {mark}")
    return "\n".join(out)


# -- main -------------------------------------------------------------------------


def _write_json(where: str, results: dict[str, Any]) -> None:
    text = json.dumps(results, indent=2, sort_keys=True)
    if where == "-":
        print(text)
    else:
        Path(where).write_text(text + "\n")


def _show(results: dict[str, Any], text: str, json_path: str | None) -> int:
    """Print the report (and write the JSON); the exit status: 0 when every goal is met."""
    print()
    print(text)
    print(f"\ntotal run time {results['total_seconds']:.0f} s")
    if json_path:
        _write_json(json_path, results)
    return 0 if all(results["goals_met"].values()) else 1


def _influx_version() -> str:
    try:
        out = subprocess.run(["influxd", "version"], capture_output=True, text=True, timeout=10).stdout
        return out.split()[1] if out.split()[1:] else "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def _on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--builds", type=int, default=None, help="builds per master run (default 20)")
    parser.add_argument(
        "--values", type=int, default=500, help="yieldMetricsValue calls per build (default 500)"
    )
    parser.add_argument("--points", type=int, default=None, help="points for the pipeline (default 200000)")
    parser.add_argument(
        "--drain-points", type=int, default=None, help="points of the backlog drain (default 1000000)"
    )
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured changes first (default 1)")
    parser.add_argument("--quick", action="store_true", help="6 builds, 50000 pipeline points")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON ('-' for stdout)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument(
        "--only",
        choices=("masters", "ours"),
        help="run only this part: 'masters' (the build-time overhead per value, no pipeline or drain), "
        "'ours' (the same without buildbot.statistics)",
    )
    parser.add_argument("--serial", action="store_true", help="masters run one build at a time")
    parser.add_argument("--pipeline-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.pipeline_child:
        pipeline_child(json.loads(args.pipeline_child))
        return 0
    builds = args.builds if args.builds is not None else (6 if args.quick else 20)
    builds = max(len(BUILDERS), builds + builds % len(BUILDERS))  # one build per builder per change
    points = args.points if args.points is not None else (50_000 if args.quick else 200_000)
    drain_points = args.drain_points
    if drain_points is None:
        drain_points = 100_000 if args.quick else 1_000_000
    values = max(1, args.values)

    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in the background
    workdir = Path(tempfile.mkdtemp(prefix="bbstats-bench-"))
    influx = InfluxServer(workdir / "influxd")
    t_start = time.monotonic()
    try:
        influx.start()
        results: dict[str, Any] = {
            "environment": {
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
                "influxdb": _influx_version(),
                "builds": builds,
                "values": values,
                "serial": args.serial,
            }
        }
        print(f"influxd on {influx.url}; work dir {workdir}", flush=True)
        print("real masters:", flush=True)
        warm, serial = max(0, args.warmup), args.serial
        results["ours"] = run_master(
            workdir, "ours-values", True, values, builds, influx, "bench_ours", warm, serial=serial
        )
        results["ours_batch"] = run_master(
            workdir, "ours-batch", True, values, builds, influx, "bench_batch", warm, True, serial
        )
        results["ours_zero"] = run_master(
            workdir, "ours-zero", True, 0, builds, influx, "bench_zero", warm, serial=serial
        )
        if args.only != "ours":
            results["old"] = run_master(
                workdir,
                "buildbot-statistics",
                False,
                values,
                builds,
                influx,
                "bench_old",
                warm,
                serial=serial,
            )
        if args.only in ("masters", "ours"):
            results["total_seconds"] = time.monotonic() - t_start
            return _show(results, report_masters(results), args.json)
        print(f"pipeline and raw ingest, {points:,} points ...", flush=True)
        bodies = raw_bodies(points, values)
        raw_runs = [raw_ingest(influx, "bench_raw_1", bodies, points)]
        results["pipeline"] = run_pipeline(influx, "bench_pipeline", points, values, workdir)
        print(f"backlog drain, {drain_points:,} points ...", flush=True)
        results["drain"] = run_pipeline(influx, "bench_drain", drain_points, values, workdir, drain=True)
        raw_runs.append(raw_ingest(influx, "bench_raw_2", bodies, points))
        results["raw_runs"] = raw_runs
        results["raw"] = max(raw_runs, key=lambda r: r["points_per_second"])
        # the InfluxDB 1.x backend writes two batches at once: raw ingest that way too (info)
        results["raw_two"] = raw_ingest(influx, "bench_raw_two", bodies, points, connections=2)
        results["total_seconds"] = time.monotonic() - t_start
        results["environment"]["load_average"] = os.getloadavg()
        return _show(results, report(results), args.json)
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        influx.stop()
        if args.keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
