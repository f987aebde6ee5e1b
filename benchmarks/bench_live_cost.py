#!/usr/bin/env python
"""What live state costs a master: its CPU seconds with and without it, under the delivery load.

Run from the repository root (needs ``influxd`` and ``buildbot-worker``)::

    python -m benchmarks.bench_live_cost [--runs 3] [--builds 20] [--values 500] [--live-interval 60]

Each run is one real master of :mod:`benchmarks.bench_delivery` (2 LocalWorkers, 2
builders, ``--builds`` builds posting ``--values`` values each, plus the build durations,
into a private influxd), with ``live_interval=0`` (no live state: no MQ consumer, no
recount) or ``live_interval=--live-interval`` (live state kept from the workers',
requests' and builds' events, recounted at start, and the ``buildbot-live`` series).
The master writes its own ``resource.getrusage(RUSAGE_SELF)`` (user + system CPU
seconds, its LocalWorkers included) as its reactor shuts down.  The runs alternate
(without, with, ...); the figure is the median of ``--runs`` runs of each.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import bench_delivery
from tests.support.influxd import InfluxServer

#: appended to the master.cfg services: the master's own CPU time, written as it stops
_CPU_REPORT = """
import json as _json
import resource as _resource
from twisted.internet import reactor as _reactor


def _write_cpu_seconds():
    usage = _resource.getrusage(_resource.RUSAGE_SELF)
    with open('cpu-seconds.json', 'w') as f:
        _json.dump({'user': usage.ru_utime, 'system': usage.ru_stime}, f)


_reactor.addSystemEventTrigger('before', 'shutdown', _write_cpu_seconds)
"""


def services_src(live_interval: float) -> str:
    """bench_delivery's StatsService with ``live_interval`` on its backend, and the CPU report."""
    src = bench_delivery._SERVICES_SRC.replace(
        "captures=[", f"live_interval={live_interval!r}, captures=[", 1
    )
    if src == bench_delivery._SERVICES_SRC:
        raise RuntimeError("bench_delivery's services changed: cannot set live_interval")
    return src + _CPU_REPORT.replace("{", "{{").replace("}", "}}")


def one_run(workdir: Path, label: str, live_interval: float, args: Any, influx: InfluxServer) -> float:
    """CPU seconds (user + system) of one master running the delivery load."""
    original = bench_delivery._SERVICES_SRC
    bench_delivery._SERVICES_SRC = services_src(live_interval)
    try:
        result = bench_delivery.run_master(
            workdir, label, True, args.values, args.builds, influx, f"bench_{label.replace('-', '_')}", 1
        )
    finally:
        bench_delivery._SERVICES_SRC = original
    if result["stored_points"] < result["expected_points"]:
        raise RuntimeError(f"{label}: {result['stored_points']}/{result['expected_points']} points stored")
    cpu = json.loads((workdir / label / "cpu-seconds.json").read_text())
    return float(cpu["user"] + cpu["system"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--builds", type=int, default=20)
    parser.add_argument("--values", type=int, default=500)
    parser.add_argument("--live-interval", type=float, default=60.0)
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bbstats-live-cost-"))
    influx = InfluxServer(workdir / "influxd")
    seconds: dict[str, list[float]] = {"without": [], "with": []}
    try:
        influx.start()
        for run in range(1, max(1, args.runs) + 1):  # bounded: --runs
            for kind, interval in (("without", 0.0), ("with", args.live_interval)):
                seconds[kind].append(one_run(workdir, f"{kind}-{run}", interval, args, influx))
                print(f"  run {run} {kind} live state: {seconds[kind][-1]:.2f} CPU s", flush=True)
    finally:
        influx.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    without, with_live = statistics.median(seconds["without"]), statistics.median(seconds["with"])
    print(
        f"master CPU seconds, median of {len(seconds['with'])} runs "
        f"({args.builds} builds x {args.values} values):\n"
        f"  without live state: {without:.2f}\n"
        f"  with live state (live_interval={args.live_interval:g}): {with_live:.2f} "
        f"({with_live - without:+.2f} s, {100 * (with_live - without) / without:+.1f} %)"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"runs": seconds, "without": without, "with": with_live}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
