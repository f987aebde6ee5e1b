#!/usr/bin/env python
"""Builds with the web UI on: what the plugin costs a busy master.

Run from the repository root (needs ``influxd``, ``buildbot-worker`` and
``buildbot-www``)::

    python -m benchmarks.bench_builds_webui [--builders 8] [--builds 10] [--values 2000]

Two real masters, one after the other, each with ``--builders`` builders and as
many LocalWorkers, the web UI on (``c['www']``), run ``--builds`` builds per
builder of a step that awaits ``self.yieldMetricsValue(...)`` ``--values``
times (with the plugin, into a private influxd) or runs the same loop without
posting (without the plugin).  Meanwhile ``/api/v2/builders`` is requested every
100 ms; the report gives the builds' wall time, the API's p95 and max latency
and the master's peak RSS (from /proc) for both.  ``--batch`` posts each build's
values with one ``yieldMetricsValues`` call instead.  ``--store sqlite`` stores
into an SQLite file instead of influxd (which shares the machine's cores with
the master); ``--profile DIR`` samples each master with ``py-spy`` (``--py-spy``
names its executable) and writes its collapsed stacks and a summary of where the
reactor thread spends its time into DIR.  Each run reports the load average
before and after it (the machine may be shared); ``--rounds N`` runs N pairs,
alternating which of the two goes first, and reports the median ratio.
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from buildbot_stats.cli.master_process import RealMaster, make_master_cfg
from tests.support.influxd import InfluxServer
from tests.support.ports import free_port

_HEADER = """
from buildbot.process import buildstep
from buildbot.process.results import SUCCESS
from twisted.internet import defer

{stats_import}

import sys
if {switch}:
    sys.setswitchinterval({switch})

N_VALUES = {values}
WITH_PLUGIN = {with_plugin}
BATCH = {batch}


class PostValues({base}buildstep.BuildStep):
    name = 'post-values'

    async def run(self):
        if WITH_PLUGIN and BATCH:
            await self.yieldMetricsValues('bench', [{{'i': i, 'value': i * 0.5}} for i in range(N_VALUES)])
        else:
            for i in range(N_VALUES):
                if WITH_PLUGIN:
                    await self.yieldMetricsValue('bench', {{'i': i, 'value': i * 0.5}})
                else:
                    await defer.succeed({{'i': i, 'value': i * 0.5}})
        return SUCCESS
"""

_SERVICES = """
c['www'] = {{'port': 'tcp:{www_port}:interface=127.0.0.1', 'plugins': {{}}}}
"""

_STATS = """
c['services'].append(statistics.StatsService(storage_backends=[{backend}], name='stats'))
"""
_CAPTURES = "[statistics.CaptureDataAllBuilders('bench'), statistics.CaptureBuildDurationAllBuilders()]"
_INFLUX = "statistics.InfluxStorageService('127.0.0.1', {port}, 'root', 'root', {db!r}, captures={captures})"
_SQLITE = "statistics.SQLiteStorageService('stats.sqlite', captures={captures})"


def start_profiler(args: argparse.Namespace, pid: int, label: str) -> subprocess.Popen | None:
    """py-spy sampling the master ``pid`` (without pausing it) until stopped, or None."""
    if not args.profile:
        return None
    out = Path(args.profile) / f"{label}.collapsed"
    cmd = [args.py_spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "100"]
    cmd += ["--nonblocking", "--threads", "--output", str(out)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_profiler(proc: subprocess.Popen | None, args: argparse.Namespace, label: str) -> None:
    """Stop py-spy (it writes its file on SIGINT) and summarise the reactor thread's samples."""
    if proc is None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
    path = Path(args.profile) / f"{label}.collapsed"
    if path.is_file():
        (Path(args.profile) / f"{label}.summary.txt").write_text(summarise_profile(path.read_text()))


_LINE_NUMBER = re.compile(r":\d+\)$")


def summarise_profile(collapsed: str, top: int = 40) -> str:
    """Per thread: samples; for the main (reactor) thread, the functions with the most samples
    anywhere on the stack (inclusive) and at the top (exclusive)."""
    threads: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    exclusive: collections.Counter[str] = collections.Counter()
    main = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [_LINE_NUMBER.sub(")", frame) for frame in stack.split(";")]  # per function
        n = int(count)
        threads[frames[0]] += n
        if "MainThread" not in frames[0]:
            continue
        main += n
        for frame in set(frames[1:]):
            inclusive[frame] += n
        exclusive[frames[-1]] += n
    lines = ["samples per thread:"] + [f"  {n:>7} {t}" for t, n in threads.most_common()]
    for title, counter in (("inclusive", inclusive), ("exclusive", exclusive)):
        lines.append(f"main thread, {title} (% of {main} samples):")
        lines += [f"  {100 * n / max(1, main):5.1f} % {f}" for f, n in counter.most_common(top)]
    return "\n".join(lines) + "\n"


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * len(ordered) + 0.5)) - 1)]


def run(
    workdir: Path,
    label: str,
    with_plugin: bool,
    args: argparse.Namespace,
    influx: InfluxServer | None,
) -> dict[str, Any]:
    names = [f"b{i}" for i in range(1, args.builders + 1)]
    www_port = free_port()
    services = _SERVICES.format(www_port=www_port)
    if with_plugin:
        if influx is None:
            backend = _SQLITE.format(captures=_CAPTURES)
        else:
            influx.create_database(f"bench_{label}")
            backend = _INFLUX.format(port=influx.port, db=f"bench_{label}", captures=_CAPTURES)
        services += _STATS.format(backend=backend)
    header = _HEADER.format(
        stats_import="from buildbot_stats import statistics" if with_plugin else "",
        base="statistics.StatsStepMixin, " if with_plugin else "",
        values=args.values,
        with_plugin=with_plugin,
        batch=args.batch,
        switch=args.switch_interval,
    )
    cfg = make_master_cfg(
        {n: "[PostValues()]" for n in names},
        pb_port=free_port(),
        workers=args.builders,
        header=header,
        services=services,
    )
    m = RealMaster(workdir / label, cfg)
    latencies: list[float] = []
    rss_peak = 0.0
    load_before = os.getloadavg()
    profiler = None
    try:
        m.create()
        m.start()
        pid = m.pid()
        assert pid is not None
        time.sleep(1)
        rss_idle = _rss_mb(pid)
        profiler = start_profiler(args, pid, label)
        total = args.builders * args.builds
        print(f"  {label}: {total} builds x {args.values} values ...", flush=True)
        t0 = time.monotonic()
        m.sendchange(args.builds)
        conn = http.client.HTTPConnection("127.0.0.1", www_port, timeout=30)
        deadline = t0 + args.timeout
        done = 0
        last_poll = 0.0
        while time.monotonic() < deadline:
            q0 = time.perf_counter()
            try:
                conn.request("GET", "/api/v2/builders")
                resp = conn.getresponse()
                resp.read()
                latencies.append(time.perf_counter() - q0)
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", www_port, timeout=30)
            rss_peak = max(rss_peak, _rss_mb(pid))
            now = time.monotonic()
            if now - last_poll > 1.0:
                last_poll = now
                done = len([b for b in m.builds() if b["complete_at"] is not None])
                if done >= total:
                    break
            time.sleep(max(0.0, 0.1 - (time.perf_counter() - q0)))
        wall = time.monotonic() - t0
        conn.close()
        builds = [b for b in m.builds() if b["complete_at"] is not None]
        durations = [b["complete_at"] - b["started_at"] for b in builds]
        tracebacks = len(m.tracebacks())
        stop_profiler(profiler, args, label)
        profiler = None
        m.stop()
    finally:
        if profiler is not None:
            profiler.kill()
            profiler.wait(timeout=10)
        m.close()
    return {
        "label": label,
        "builds_done": len(builds),
        "builds_expected": args.builders * args.builds,
        "wall_seconds": wall,
        "build_seconds_mean": sum(durations) / max(1, len(durations)),
        "api_requests": len(latencies),
        "api_p95_ms": _pct(latencies, 95) * 1e3,
        "api_max_ms": max(latencies, default=float("nan")) * 1e3,
        "rss_idle_mb": rss_idle,
        "rss_peak_mb": rss_peak,
        "tracebacks": tracebacks,
        "load_before": load_before,
        "load_after": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--builders", type=int, default=8)
    parser.add_argument("--builds", type=int, default=10, help="builds per builder")
    parser.add_argument("--values", type=int, default=2000, help="values posted per build")
    parser.add_argument(
        "--batch",
        action="store_true",
        help="post with one yieldMetricsValues per build",
    )
    parser.add_argument(
        "--switch-interval",
        type=float,
        default=0,
        help="sys.setswitchinterval in the masters (0: default)",
    )
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument(
        "--store",
        choices=("influxdb", "sqlite"),
        default="influxdb",
        help="the plugin's store",
    )
    parser.add_argument("--profile", metavar="DIR", help="sample each master with py-spy into DIR")
    parser.add_argument("--py-spy", default="py-spy", help="the py-spy executable (for --profile)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="with/without pairs, alternating which runs first (load drifts)",
    )
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bbstats-webui-"))
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    influx = InfluxServer(workdir / "influxd") if args.store == "influxdb" else None
    try:
        if influx is not None:
            influx.start()
        rounds = []
        for i in range(args.rounds):  # bounded: --rounds pairs of runs
            pair = {}
            for with_plugin in (True, False) if i % 2 == 0 else (False, True):
                key = "with" if with_plugin else "without"
                label = f"{key}-plugin" + (f"-{i + 1}" if args.rounds > 1 else "")
                pair[key] = run(workdir, label, with_plugin, args, influx)
            rounds.append(pair)
    finally:
        if influx is not None:
            influx.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(
        f"{args.builders} builders x {args.builds} builds x {args.values} values "
        f"({'yieldMetricsValues' if args.batch else 'awaited yieldMetricsValue loop'}), web UI on, "
        f"store {args.store}"
    )
    print(
        f"{'':<16}{'builds':>8}{'wall s':>9}{'build s':>9}{'API p95 ms':>12}{'API max ms':>12}{'RSS MB':>14}"
        f"{'load before/after':>20}"
    )
    ratios = []
    for pair in rounds:
        for key in ("with", "without"):
            r = pair[key]
            print(
                f"{key + ' plugin':<16}{r['builds_done']:>4}/{r['builds_expected']:<3}"
                f"{r['wall_seconds']:>9.1f}"
                f"{r['build_seconds_mean']:>9.1f}{r['api_p95_ms']:>12.1f}{r['api_max_ms']:>12.1f}"
                f"{r['rss_idle_mb']:>6.0f}->{r['rss_peak_mb']:<6.0f}"
                f"{r['load_before'][0]:>10.2f} / {r['load_after'][0]:.2f}"
            )
        ratios.append(pair["with"]["api_p95_ms"] / pair["without"]["api_p95_ms"])
        print(f"API p95 with / without the plugin: {ratios[-1]:.2f}x (goal: at most 1.5x)")
    median = statistics.median(ratios)
    if len(ratios) > 1:
        print(f"median of {len(ratios)} rounds: {median:.2f}x (goal: at most 1.5x)")
    results = {
        **rounds[0],
        "rounds": rounds,
        "p95_ratio_median": median,
        "load_average": os.getloadavg(),
    }
    load = results["load_average"]
    print(f"machine load (1/5/15 min): {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
