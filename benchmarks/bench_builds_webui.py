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
values with one ``yieldMetricsValues`` call instead.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
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
    workdir: Path, label: str, with_plugin: bool, args: argparse.Namespace, influx: InfluxServer
) -> dict[str, Any]:
    names = [f"b{i}" for i in range(1, args.builders + 1)]
    www_port = free_port()
    services = _SERVICES.format(www_port=www_port)
    if with_plugin:
        influx.create_database(f"bench_{label}")
        services += _STATS.format(port=influx.port, db=f"bench_{label}")
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
    try:
        m.create()
        m.start()
        pid = m.pid()
        assert pid is not None
        time.sleep(1)
        rss_idle = _rss_mb(pid)
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
        m.stop()
    finally:
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
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--builders", type=int, default=8)
    parser.add_argument("--builds", type=int, default=10, help="builds per builder")
    parser.add_argument("--values", type=int, default=2000, help="values posted per build")
    parser.add_argument("--batch", action="store_true", help="post with one yieldMetricsValues per build")
    parser.add_argument(
        "--switch-interval", type=float, default=0, help="sys.setswitchinterval in the masters (0: default)"
    )
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bbstats-webui-"))
    influx = InfluxServer(workdir / "influxd")
    try:
        influx.start()
        results = {
            "with": run(workdir, "with-plugin", True, args, influx),
            "without": run(workdir, "without-plugin", False, args, influx),
            "load_average": os.getloadavg(),
        }
    finally:
        influx.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(
        f"{args.builders} builders x {args.builds} builds x {args.values} values "
        f"({'yieldMetricsValues' if args.batch else 'awaited yieldMetricsValue loop'}), web UI on"
    )
    print(
        f"{'':<16}{'builds':>8}{'wall s':>9}{'build s':>9}{'API p95 ms':>12}{'API max ms':>12}{'RSS MB':>14}"
    )
    for key in ("with", "without"):
        r = results[key]
        print(
            f"{key + ' plugin':<16}{r['builds_done']:>4}/{r['builds_expected']:<3}{r['wall_seconds']:>9.1f}"
            f"{r['build_seconds_mean']:>9.1f}{r['api_p95_ms']:>12.1f}{r['api_max_ms']:>12.1f}"
            f"{r['rss_idle_mb']:>6.0f}->{r['rss_peak_mb']:<6.0f}"
        )
    load = results["load_average"]
    print(f"machine load (1/5/15 min): {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
