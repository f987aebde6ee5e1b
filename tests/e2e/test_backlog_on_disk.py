"""End to end: a backlog of a million points lives on disk, not in the master's RAM; acknowledged means kept.

Real masters (LocalWorkers) and a private influxd.  A step posts values with
``yieldMetricsValues`` while InfluxDB is down; the master's resident memory
(from /proc) must not grow with the backlog, and once InfluxDB is back every
point arrives exactly once, also when the master is SIGKILLed in the middle of
the drain (at least once + the same timestamps: InfluxDB merges, so distinct
points are counted).  A last test SIGKILLs a master while a step posts values
one by one and checks that every value whose Deferred had fired arrived.

``BBSTATS_BACKLOG_POINTS`` changes the size of the backlog (default 1,000,000).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from buildbot_stats.cli.master_process import RealMaster
from tests.e2e.conftest import MakeMaster, spooled, wait_spool_empty, wait_until
from tests.support.influxd import InfluxServer

DB = "bbstats_backlog"
POINTS = int(os.environ.get("BBSTATS_BACKLOG_POINTS", "1000000"))
CHUNK = int(os.environ.get("BBSTATS_BACKLOG_CHUNK", "10000"))
RSS_BOUND_MB = 100  # above the same master, started, with no backlog

HEADER = """
import os

from buildbot.process import buildstep
from buildbot.process.results import SUCCESS

from buildbot_stats import statistics


class PostMany(statistics.StatsStepMixin, buildstep.BuildStep):
    name = 'post-many'

    async def run(self):
        n = @POINTS@
        for start in range(0, n, @CHUNK@):
            await self.yieldMetricsValues('bulk', [{'i': i} for i in range(start, min(n, start + @CHUNK@))])
        return SUCCESS


class PostAcked(statistics.StatsStepMixin, buildstep.BuildStep):
    name = 'post-acked'

    async def run(self):
        # the index of each value whose Deferred fired, flushed at once
        with open(os.path.join(os.environ['ACKED_DIR'], 'acked.txt'), 'a') as f:
            for i in range(1_000_000):
                if self.stopped:  # interrupted (the master stops): end the loop
                    break
                await self.yieldMetricsValue('acked', {'i': i})
                f.write(f'{i}\\n')
                f.flush()
        return SUCCESS
""".replace("@POINTS@", str(POINTS)).replace("@CHUNK@", str(CHUNK))

SERVICES = """
c['services'].append(
    statistics.StatsService(
        storage_backends=[
            statistics.InfluxStorageService(
                '127.0.0.1', {port}, 'user', 'pw', {db!r},
                [statistics.CaptureDataAllBuilders('bulk'), statistics.CaptureDataAllBuilders('acked')],
            ),
        ],
        name='StatsService',
        max_retry_delay=1,
    )
)
"""


@pytest.fixture
def influx(influx: InfluxServer) -> InfluxServer:
    influx.create_database(DB)
    return influx


@pytest.fixture
def make_master(make_master: MakeMaster, influx: InfluxServer, tmp_path: Path) -> Callable[[str], RealMaster]:
    """The master of builder b1 running ``steps``, writing to influx."""
    return lambda steps: make_master(
        {"b1": steps},
        workers=1,
        header=HEADER,
        services=SERVICES.format(port=influx.port, db=DB),
        env={"ACKED_DIR": str(tmp_path)},
    )


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def stored(influx: InfluxServer, series: str) -> tuple[int, int]:
    """(distinct points, sum of their i) in ``series``.

    While the first writes of a drain land, InfluxDB 1.6 may already list the
    series and answer null for both (seen with two writes at once): none yet.
    """
    result = influx.query(f'SELECT COUNT(i), SUM(i) FROM "{series}"', DB)
    for res in result.get("results", []):
        for s in res.get("series", []):
            row = s["values"][0]
            return int(row[1] or 0), int(row[2] or 0)
    return 0, 0


def no_tracebacks(m: RealMaster) -> None:
    assert m.tracebacks() == []
    assert "Unhandled Error" not in m.log_text()


def spool_backlog(influx: InfluxServer, make_master: Any) -> tuple[RealMaster, float, float]:
    """A master posts POINTS values while InfluxDB is down; returns it, its idle RSS and its peak RSS."""
    m = make_master("[PostMany()]")
    influx.stop()
    m.start()
    time.sleep(2)  # settled: the same master with no backlog
    pid = m.pid()
    assert pid is not None
    idle = rss_mb(pid)
    peak = idle
    m.sendchange(1)
    deadline = time.monotonic() + 900
    while spooled(m) < POINTS or not m.builds() or m.builds()[-1].get("complete_at") is None:
        assert time.monotonic() < deadline, f"{spooled(m)} points spooled"
        peak = max(peak, rss_mb(pid))
        if os.environ.get("BBSTATS_BACKLOG_TRACE"):
            print(f"spooled {spooled(m):>9,}  RSS {rss_mb(pid):.0f} MB", flush=True)
        time.sleep(0.25)
    time.sleep(1)
    peak = max(peak, rss_mb(pid))
    assert spooled(m) == POINTS
    return m, idle, peak


def test_million_point_backlog_stays_on_disk_and_arrives_exactly_once(
    influx: InfluxServer, make_master: Any
) -> None:
    m, idle, peak = spool_backlog(influx, make_master)
    print(f"master RSS: idle {idle:.0f} MB, peak with {POINTS:,} pending {peak:.0f} MB")
    assert peak - idle <= RSS_BOUND_MB, f"RSS grew by {peak - idle:.0f} MB with {POINTS:,} points pending"
    influx.start()
    pid = m.pid()
    assert pid is not None
    drain_peak = peak
    deadline = time.monotonic() + 900
    while stored(influx, "b1-bulk")[0] < POINTS:
        assert time.monotonic() < deadline, f"{stored(influx, 'b1-bulk')} stored"
        drain_peak = max(drain_peak, rss_mb(pid))
        time.sleep(0.5)
    print(f"master RSS peak during the drain {drain_peak:.0f} MB")
    assert drain_peak - idle <= RSS_BOUND_MB
    assert stored(influx, "b1-bulk") == (POINTS, POINTS * (POINTS - 1) // 2)
    wait_spool_empty(m, 60)
    m.stop()
    no_tracebacks(m)


def test_sigkill_in_the_middle_of_the_drain_loses_nothing(influx: InfluxServer, make_master: Any) -> None:
    m, _, _ = spool_backlog(influx, make_master)
    influx.start()
    wait_until("the drain to start", lambda: stored(influx, "b1-bulk")[0] > 0, 300, step=0.05)
    m.kill()
    count = stored(influx, "b1-bulk")[0]
    assert 0 < count < POINTS, "the drain had finished before the kill: nothing was tested"
    m.start()
    wait_until("every point", lambda: stored(influx, "b1-bulk")[0] >= POINTS, 900, step=0.5)
    assert stored(influx, "b1-bulk") == (POINTS, POINTS * (POINTS - 1) // 2)
    wait_spool_empty(m, 60)
    m.stop()
    no_tracebacks(m)


def test_every_value_whose_deferred_fired_survives_a_sigkill(
    influx: InfluxServer, make_master: Any, tmp_path: Path
) -> None:
    m = make_master("[PostAcked()]")
    influx.stop()
    m.start()
    m.sendchange(1)
    acked_file = tmp_path / "acked.txt"

    def acked() -> list[int]:
        if not acked_file.exists():
            return []
        return [int(line) for line in acked_file.read_text().splitlines() if line.strip()]

    wait_until("3000 acknowledged values", lambda: len(acked()) >= 3000, 300, step=0.05)
    m.kill()
    # lines are written whole before the kill lands (a torn last line is not acknowledged)
    done = [int(x) for x in acked_file.read_text().split("\n")[:-1] if x]
    assert done == list(range(len(done)))
    influx.start()
    m.start()
    wait_until("the acknowledged values", lambda: stored(influx, "b1-acked")[0] >= len(done), 300, step=0.5)
    result = influx.query('SELECT i FROM "b1-acked"', DB)
    values = {row[1] for res in result["results"] for s in res.get("series", []) for row in s["values"]}
    missing = sorted(set(done) - values)
    print(f"{len(done)} values acknowledged before the SIGKILL, all stored")
    assert missing == [], f"{len(missing)} acknowledged values lost, e.g. {missing[:10]}"
    m.stop()
    no_tracebacks(m)
