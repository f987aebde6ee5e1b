#!/usr/bin/env python
"""Per-hop micro-benchmark of an awaited value: where the ~100 µs of ``yieldMetricsValue`` go.

Run from the repository root (no server needed)::

    python -m benchmarks.bench_spool_hop [--n 2000] [--rounds 3]

One process, a real reactor and real threads, a ``StatsService`` with Buildbot's own
``SimpleMQ``, a ``CaptureDataAllBuilders`` and a spool file in a temporary directory (its
InfluxDB is a closed port: nothing is sent).  Each round measures, per call awaited one at
a time (µs, median of the rounds), its wall time and its CPU time (all threads: steadier when
the machine is loaded, since a thread's wake-up latency is no CPU):

- ``twisted pool hop``: ``deferToThreadPool`` of a no-op on a one-thread Twisted pool;
- ``spool hop``: ``SpoolThread.call`` of a no-op (the spool's own thread and back);
- ``spool write``: ``SpoolThread.call`` of an empty spool write (a commit of nothing);
- ``awaited value``: ``yieldMetricsValue`` of one value, its point committed to the spool;
- ``batch, per value``: ``yieldMetricsValues`` of 500 values, per value.

Figures from one (noisy) machine: compare rows of one run, before and after a change.
"""

from __future__ import annotations

import argparse
import statistics as stats
import tempfile
import time
from typing import Any

from buildbot.mq.simple import SimpleMQ
from buildbot.util import service
from twisted.internet import defer, reactor, task, threads
from twisted.python import threadpool

from buildbot_stats import statistics
from buildbot_stats.delivery.spool import SQLiteSpool
from tests.support.ports import free_port

BUILD = {"buildid": 1, "builderid": 1, "number": 1, "workerid": 1, "masterid": 1, "buildrequestid": 1}


class _Data:
    """The two lookups a value needs (the builder's name; the build is remembered)."""

    def get(self, path: tuple) -> Any:
        return defer.succeed({"builderid": 1, "name": "bench-1"} if path[0] == "builders" else BUILD)


class BenchMaster(service.MasterService):
    def __init__(self, basedir: str) -> None:
        super().__init__()
        self.reactor, self.basedir, self.data = reactor, basedir, _Data()
        self.mq = SimpleMQ()
        self.mq.setServiceParent(self)


async def _per_call(n: int, call: Any) -> tuple[float, float]:
    """Wall time and CPU time (all threads) per awaited call, µs."""
    t0, cpu0 = time.perf_counter(), time.process_time()
    for i in range(n):
        await call(i)
    return (time.perf_counter() - t0) / n * 1e6, (time.process_time() - cpu0) / n * 1e6


async def run(n: int, rounds: int) -> dict[str, list[tuple[float, float]]]:
    master = BenchMaster(tempfile.mkdtemp(prefix="bbstats-hop-"))
    backend = statistics.InfluxStorageService(
        "127.0.0.1", free_port(), "u", "p", "db", captures=[statistics.CaptureDataAllBuilders("bench")]
    )
    svc = statistics.StatsService(storage_backends=[backend], name="stats")
    await svc.setServiceParent(master)
    await master.startService()
    await svc.yieldMetricsValue("bench", {"value": 0}, 1)  # the first lookups
    pool = threadpool.ThreadPool(minthreads=1, maxthreads=1, name="bench-pool")
    pool.start()
    spool = svc.spool
    batch = [{"value": i * 0.5} for i in range(500)]
    rows: dict[str, Any] = {
        "twisted pool hop": lambda i: threads.deferToThreadPool(reactor, pool, lambda: None),
        "spool hop": lambda i: spool.call(lambda s: None),
        "spool write": lambda i: spool.call(SQLiteSpool.thd_write, [], {}),
        "awaited value": lambda i: svc.yieldMetricsValue("bench", {"value": i * 0.5}, 1),
    }
    found: dict[str, list[tuple[float, float]]] = {name: [] for name in [*rows, "batch, per value"]}
    for _ in range(rounds):
        for name, call in rows.items():
            found[name].append(await _per_call(n, call))
        wall, cpu = await _per_call(max(1, n // 100), lambda i: svc.yieldMetricsValues("bench", batch, 1))
        found["batch, per value"].append((wall / 500, cpu / 500))
        await task.deferLater(reactor, 0.05, lambda: None)
    pool.stop()
    await master.stopService()
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="awaited calls per row and round (default 2000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    args = parser.parse_args(argv)
    found: dict[str, list[tuple[float, float]]] = {}

    async def go(_reactor: Any) -> None:
        found.update(await run(max(1, args.n), max(1, args.rounds)))

    try:
        task.react(lambda r: defer.ensureDeferred(go(r)))
    except SystemExit as e:
        if e.code:
            raise
    print(f"  {'µs per call (median of rounds)':<34} {'wall':>7} {'CPU':>7}   wall of each round")
    for name, values in found.items():
        wall, cpu = stats.median(v[0] for v in values), stats.median(v[1] for v in values)
        print(f"  {name:<34} {wall:7.1f} {cpu:7.1f}   " + " ".join(f"{v[0]:7.1f}" for v in values))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
