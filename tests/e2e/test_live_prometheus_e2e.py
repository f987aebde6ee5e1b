"""Live state through a real Prometheus (issue 21): a real master, LocalWorkers, held builds.

Three changes make six requests for two workers: two builds run, four requests wait.  A
real Prometheus scrapes the master's endpoint every second; the gauges read back from its
query API say what the master's data API says at that moment.  After a SIGKILL and a
restart with the requests still queued, the first scrape after the data API settles is
right already (the recount at start), and after the release every gauge is 0 again.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import MakeMaster, wait_until
from tests.e2e.live_harness import HeldBuilds
from tests.support.ports import free_port
from tests.support.prometheus import PrometheusServer, require_prometheus

SERVICES = """
from buildbot_stats import statistics
c['services'].append(statistics.StatsService(storage_backends=[
    statistics.PrometheusStorageService(port={port}, name='prom', captures=[
        statistics.CaptureBuildDurationAllBuilders(), statistics.CaptureBuildResultsAllBuilders()]),
]))
"""


@pytest.fixture
def held(make_master: MakeMaster, tmp_path: Path) -> Iterator[tuple[HeldBuilds, PrometheusServer]]:
    require_prometheus()
    port = free_port()
    held = HeldBuilds(make_master, tmp_path, SERVICES.format(port=port))
    with PrometheusServer(tmp_path / "prometheus", targets=[f"127.0.0.1:{port}"]) as prom:
        yield held, prom


def gauges(prom: PrometheusServer) -> dict[str, Any]:
    """The live gauges as Prometheus has them now, in the terms of the probe's data_api report."""

    def by(metric: str, label: str) -> dict[str, int]:
        return {r["metric"][label]: int(r["value"]) for r in prom.query(metric)}

    return {
        "workers_connected": int(prom.query_value("buildbot_workers_connected") or 0),
        "workers_busy": int(prom.query_value("buildbot_workers_busy") or 0),
        "requests_pending": by("buildbot_build_requests_pending", "builder"),
        "builds_running": by("buildbot_builds_running", "builder"),
        "worker_builds_running": by("buildbot_worker_builds_running", "worker"),
    }


_KEYS = ("workers_connected", "workers_busy", "requests_pending", "builds_running", "worker_builds_running")


def agrees(prom: PrometheusServer, report: dict[str, Any]) -> dict[str, Any] | None:
    want = {k: report["data_api"][k] for k in _KEYS}
    got = gauges(prom)
    return got if got == want else None


def samples_after(prom: PrometheusServer, metric: str, since: float) -> dict[str, list[float]]:
    """Per builder, the values Prometheus scraped after ``since`` (oldest first)."""
    data = prom.api("query", query=f"{metric}[2m]")
    return {
        r["metric"]["builder"]: [float(v) for t, v in r["values"] if float(t) > since] for r in data["result"]
    }


def first_scrape_after(prom: PrometheusServer, since: float) -> tuple[dict, dict] | None:
    """Per builder, the pending requests and running builds of the first scrape after ``since``."""
    firsts = []
    for metric in ("buildbot_build_requests_pending", "buildbot_builds_running"):
        samples = samples_after(prom, metric, since)
        if not samples or not all(samples.values()):
            return None
        firsts.append({builder: int(values[0]) for builder, values in samples.items()})
    return firsts[0], firsts[1]


def test_prometheus_gauges_match_the_data_api_while_builds_wait_and_after_a_restart(held):
    held, prom = held
    m = held.master
    m.start()
    prom.wait_for_target_up()
    m.sendchange(3)
    report = held.wait_agreed(pending=4, running=2)
    got = wait_until("Prometheus' gauges saying what the data API says", lambda: agrees(prom, report), 15)
    assert (got["workers_connected"], got["workers_busy"]) == (2, 2)
    assert sum(got["requests_pending"].values()) == 4 and sum(got["builds_running"].values()) == 2
    time.sleep(3)  # the ages grow (a scrape is up to 1 s old, its text up to 1 s older)
    for name, pending in got["requests_pending"].items():
        oldest = prom.query_value(f'buildbot_build_request_oldest_pending_seconds{{builder="{name}"}}')
        assert oldest is not None and (oldest >= 1.0 if pending else oldest == 0.0), (name, oldest)
    longest = prom.query_value("max(buildbot_build_longest_running_seconds)")
    assert longest is not None and longest >= 1.0

    # SIGKILL: two claimed requests and two unfinished builds stay in the database
    m.kill()
    m.start()
    restarted = time.time()
    # the restart finished the two interrupted builds (retry) and queued their requests again;
    # once the data API shows 4 waiting and 2 running, the next scrape says so too
    report = held.wait_agreed(pending=4, running=2, after=restarted, timeout=30)
    settled = report["time"] + 1.0  # a scrape's text may be a copy up to 1 s old
    first = wait_until("a scrape after the restart", lambda: first_scrape_after(prom, settled))
    assert first == (report["data_api"]["requests_pending"], report["data_api"]["builds_running"])
    assert agrees(prom, report)

    held.release()
    done = held.wait_agreed(pending=0, running=0, after=time.time(), timeout=120)
    wait_until("every gauge 0 after the release", lambda: agrees(prom, done), 15)
    m.wait_for_builds(6 + 2)  # six that succeeded, the two the kill interrupted
    successes = wait_until(
        "six successes per worker counted",
        lambda: (v := prom.query_value('sum(buildbot_worker_builds_total{result="success"})')) == 6 and v,
        30,
    )
    assert successes == 6
    assert m.tracebacks() == []
