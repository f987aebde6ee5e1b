"""End to end: a Buildbot cluster (three real masters, PostgreSQL, crossbar) counts every build once.

The masters share one PostgreSQL database and one crossbar router (Buildbot's
WAMP MQ, where every master receives every master's messages); each has one
LocalWorker (the others' workers are declared as plain workers so that the
builders can list them), the same builders and the same StatsService.  Only
the first master has the change source and the scheduler; the builds spread
over the masters (one build at a time per worker).

Each master writes to the same influxd and to a *journal*, a storage backend
written as a user would (``points.jsonl`` in the master's basedir): InfluxDB
merges a point sent twice with the same timestamp, the journal does not, so
it shows which master stored what, and how often.

Servers missing: skipped, or a failure with ``CI=true`` (see tests/support).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from buildbot.process.results import RETRY, SUCCESS

from buildbot_stats.cli.master_process import RealMaster
from tests.e2e.conftest import MakeMaster, spooled, stats_lines, wait_spool_empty
from tests.e2e.test_master_end_to_end import (
    BUILDERS,
    DB,
    HEADER,
    MANY_VALUES,
    N_BUILDS,
    POLL_TIMEOUT,
    SINGLE_VALUES,
    STEPS,
    check_points,
    expected_row_counts,
    influx_rows,
    points_per_build,
    stats_services,
    wait_for_points,
)
from tests.support.crossbar import CrossbarRouter, require_crossbar
from tests.support.influxd import InfluxServer
from tests.support.postgres import PostgresServer, require_postgres

MASTERS = 3
CHANGES = N_BUILDS // len(BUILDERS)

JOURNAL = """
import json, os, threading
from buildbot_stats.storage_backends.base import StatsStorageBase


class Journal(StatsStorageBase):
    '''Appends each point it is given to points.jsonl in the master's basedir.'''

    def __init__(self, captures, name='journal'):
        self.captures = captures
        self.name = name
        self._path = os.path.join(basedir, 'points.jsonl')
        self._lock = threading.Lock()

    def thd_postStatsValue(self, post_data, series_name, context=None):
        raise NotImplementedError('batches only')

    def thd_postStatsValues(self, points):
        with self._lock, open(self._path, 'a') as f:
            for p in points:
                f.write(json.dumps([p.series, p.fields, p.tags, p.time_ns]) + '\\n')
"""

CLUSTER = """
MASTER_INDEX = {index}
c['multiMaster'] = True
c['mq'] = {{'type': 'wamp', 'router_url': {router_url!r}, 'realm': {realm!r}, 'wamp_debug_level': 'error'}}
# this master's LocalWorker; the others' as plain workers, so that the builders can list them
c['workers'] = [
    worker.LocalWorker(name, max_builds=1) if i == MASTER_INDEX else worker.Worker(name, 'not-here')
    for i, name in enumerate(WORKER_NAMES, start=1)
]
if MASTER_INDEX != 1:
    c['change_source'] = []
    c['schedulers'] = []
"""


# --------------------------------------------------------------------------
# fixtures and helpers
# --------------------------------------------------------------------------


@pytest.fixture
def servers(
    influx: InfluxServer, tmp_path: Path
) -> Iterator[tuple[InfluxServer, PostgresServer, CrossbarRouter]]:
    """influxd (with DB), PostgreSQL and crossbar, all private and stopped at teardown."""
    require_postgres()
    require_crossbar()
    influx.create_database(DB)
    with PostgresServer() as pg, CrossbarRouter(tmp_path / "crossbar") as router:
        yield influx, pg, router


@pytest.fixture
def cluster(servers: Any, make_master: MakeMaster) -> list[RealMaster]:
    """MASTERS created (not started) masters sharing the database and the router."""
    return [
        cluster_master(make_master, servers, index, {b: STEPS for b in BUILDERS}, workers=MASTERS)
        for index in range(1, MASTERS + 1)
    ]


def cluster_master(
    make_master: MakeMaster,
    servers: Any,
    index: int,
    builders: dict[str, str],
    workers: int,
    header: str = "",
) -> RealMaster:
    """Master ``index`` of the cluster: the one-master test's services plus the journal, on the shared
    database and router."""
    influx, pg, router = servers
    services = CLUSTER.format(index=index, router_url=router.url, realm=router.realm)
    services += stats_services(influx.port, more_backends="Journal(captures),")
    return make_master(
        builders,
        name=f"master{index}",
        workers=workers,
        header=HEADER + JOURNAL + header,
        services=services,
        db_url=pg.url,
    )


def start_all(masters: list[RealMaster]) -> dict[int, RealMaster]:
    """Start the masters; masterid -> master."""
    for m in masters:
        m.start()
    ids = {}
    for m in masters:
        masterid = m.masterid()
        assert masterid is not None
        ids[masterid] = m
    return ids


def journal(m: RealMaster) -> list[tuple[str, dict[str, Any], dict[str, str], int]]:
    path = m.basedir / "points.jsonl"
    if not path.exists():
        return []
    return [tuple(json.loads(line)) for line in path.read_text().splitlines()]  # type: ignore[misc]


def point_key(series: str, fields: dict[str, Any], tags: dict[str, str]) -> tuple[Any, ...]:
    """What makes a capture's point unique: series, build, field names (and the posted test)."""
    build = (tags.get("builder_name"), tags.get("build_number"))
    return (series, build, tuple(sorted(fields)), fields.get("test"))


def check_journals(
    ids: dict[int, RealMaster], builds: list[dict[str, Any]], expect_lost: dict[str, Any] | None = None
) -> None:
    """Each point stored once in the cluster, by the master that ran its build, at the right time.

    ``expect_lost``: a build whose master was killed during it, of which only
    the values posted before are stored.
    """
    by_build = {(b["builder"], str(b["number"])): b for b in builds}
    seen: Counter[tuple[Any, ...]] = Counter()
    for masterid, m in ids.items():
        for series, fields, tags, time_ns in journal(m):
            seen[point_key(series, fields, tags)] += 1
            build = by_build[(tags["builder_name"], tags["build_number"])]
            where = f"{m.basedir.name} stored {series} of another master's build"
            assert build["masterid"] == masterid, where
            if series.endswith("-timings"):
                # stamped when the step posted it: during the build (times in whole seconds)
                assert build["started_at"] * 10**9 <= time_ns <= (build["complete_at"] + 1) * 10**9
            else:
                assert build is not expect_lost, f"the lost build's {series} was captured"
                assert time_ns == build["complete_at"] * 10**9
    assert [k for k, n in seen.items() if n != 1] == [], "stored more than once in the cluster"
    posted = SINGLE_VALUES + MANY_VALUES
    want = sum(posted if b is expect_lost else points_per_build(b["builder"]) for b in builds)
    assert sum(seen.values()) == want


def check_logs(masters: list[RealMaster]) -> None:
    """No traceback of ours, one-line messages, no capture failure.

    ``buildbot stop`` on a WAMP master logs a TransportLost traceback from
    Buildbot's own MQ: not ours, told apart by the package name.
    """
    for m in masters:
        ours = [t for t in m.tracebacks() if "buildbot_stats" in t]
        assert ours == [], f"{m.basedir.name}: {ours}"
        others = [t for t in m.tracebacks() if "TransportLost" not in t and "buildbot_stats" not in t]
        assert others == [], f"{m.basedir.name}: unexpected Buildbot traceback: {others}"
        assert stats_lines(m, "could not handle") == []
        assert stats_lines(m, "failed for build") == []
        noise = [line for line in m.log_messages() if "] buildbot_stats:" in line and "\n" in line]
        assert noise == [], "buildbot_stats log messages must be one line"


def run_builds(masters: list[RealMaster]) -> list[dict[str, Any]]:
    first = masters[0]
    first.sendchange(CHANGES)
    first.wait_for_builds(N_BUILDS, timeout=180)
    builds = first.builds()
    assert len(builds) == N_BUILDS
    return builds


# --------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------


def test_cluster_stores_every_build_once(servers: Any, cluster: list[RealMaster]) -> None:
    influx = servers[0]
    ids = start_all(cluster)
    builds = run_builds(cluster)
    ran_on = Counter(b["masterid"] for b in builds)
    assert set(ran_on) == set(ids), f"builds did not spread over the masters: {ran_on}"

    rows = wait_for_points(influx, builds)
    check_points(rows, builds)  # InfluxDB: every value once, with the build's data and times
    for m in cluster:
        wait_spool_empty(m)
    check_journals(ids, builds)
    for m in cluster:
        m.stop()
    check_logs(cluster)


def test_master_killed_with_points_spooled_delivers_them_after_restart(
    servers: Any, cluster: list[RealMaster]
) -> None:
    influx = servers[0]
    ids = start_all(cluster)
    influx.stop()
    builds = run_builds(cluster)
    victim = cluster[1]
    victim_id = next(i for i, m in ids.items() if m is victim)
    mine = [b for b in builds if b["masterid"] == victim_id]
    assert mine, "no build ran on the master to be killed"
    want = sum(points_per_build(b["builder"]) for b in mine)
    deadline = time.monotonic() + 30
    while spooled(victim) != want:
        assert time.monotonic() < deadline, f"{spooled(victim)} points spooled, expected {want}"
        time.sleep(0.1)

    victim.kill()
    influx.start()
    # the other masters deliver theirs meanwhile, and only theirs
    others = [b for b in builds if b["masterid"] != victim_id]
    wait_for_points(influx, others)
    for m in cluster:
        if m is not victim:
            wait_spool_empty(m)
    assert {k: len(v) for k, v in influx_rows(influx).items()} == expected_row_counts(others)
    assert spooled(victim) == want, "points lost from the killed master's spool"

    victim.start()
    assert stats_lines(victim, f"{want} points found in the spool to send")
    rows = wait_for_points(influx, builds)
    check_points(rows, builds)
    wait_spool_empty(victim)
    check_journals(ids, builds)
    assert cluster[0].builds() == builds, "a build ran again"
    for m in cluster:
        m.stop()
    check_logs(cluster)


HOLD = """
import os


class Hold(buildstep.BuildStep):
    '''Waits while the file 'hold' exists in the master's basedir (at most two minutes).'''

    name = 'hold'

    async def run(self):
        for _ in range(1200):
            if not os.path.exists(os.path.join(basedir, 'hold')):
                break
            await task.deferLater(reactor, 0.1, lambda: None)
        return SUCCESS
"""


def test_master_lost_mid_build(servers: Any, make_master: MakeMaster) -> None:
    """A master SIGKILLed during a build: what the build posted stays, once; its rerun is captured once.

    Buildbot finishes the lost build as RETRY when its master restarts, before
    the StatsService starts: that finish is not captured (docs/multimaster.rst).
    """
    influx = servers[0]
    steps = "[steps.ShellCommand(command=['true']), ReportTimings(), Hold()]"
    masters = [cluster_master(make_master, servers, index, {"b1": steps}, 2, HOLD) for index in (1, 2)]
    for m in masters:
        (m.basedir / "hold").touch()
    ids = start_all(masters)
    masters[0].sendchange(1)
    deadline = time.monotonic() + 60
    while not (running := [b for b in masters[0].builds() if b["complete_at"] is None]):
        assert time.monotonic() < deadline, "the build did not start"
        time.sleep(0.1)
    victim = ids[running[0]["masterid"]]
    survivor = next(m for m in masters if m is not victim)
    # the values the step posted before the hold reach InfluxDB (and leave the spool)
    deadline = time.monotonic() + 60
    while len(influx_rows(influx).get("b1-timings", [])) < SINGLE_VALUES + MANY_VALUES or spooled(victim):
        assert time.monotonic() < deadline, f"posted values not delivered: {influx_rows(influx)}"
        time.sleep(0.1)
    victim.kill()
    for m in masters:
        (m.basedir / "hold").unlink()
    victim.start()
    builds = survivor.wait_for_builds(2, timeout=120)
    assert [(b["number"], b["results"]) for b in builds] == [(1, RETRY), (2, SUCCESS)]
    lost, rerun = builds

    # the rerun: every capture once; the lost build: only its posted values
    deadline = time.monotonic() + POLL_TIMEOUT
    while len(influx_rows(influx).get("b1-build-times", [])) < 1:
        assert time.monotonic() < deadline, f"rerun not captured: {influx_rows(influx)}"
        time.sleep(0.2)
    for m in masters:
        wait_spool_empty(m)
    rows = influx_rows(influx)
    per_build = {name: Counter(r["build_number"] for r in series) for name, series in rows.items()}
    assert per_build == {
        "b1-build-times": {"2": 1},
        "b1-build-results": {"2": 1},
        "b1-workername": {"2": 1},
        "b1-test_count": {"2": 1},
        "b1-test_name": {"2": 1},
        "b1-timings": {"1": SINGLE_VALUES + MANY_VALUES, "2": SINGLE_VALUES + MANY_VALUES},
    }
    (times,) = rows["b1-build-times"]
    assert times["time"] == rerun["complete_at"] * 10**9
    check_journals(ids, [lost, rerun], expect_lost=lost)
    for m in masters:
        m.stop()
    check_logs(masters)
