"""A real Buildbot master serving metrics, scraped by a real Prometheus 2.x.

The counts Prometheus stores are checked against the master's own database
(``state.sqlite``): builds per builder and result, durations per builder, the
median duration, the delivery counters, the opt-in worker label of the build
and step durations and the step buckets; then a ``buildbot reconfig`` on the
same port must keep the counts and the listener.  prometheus missing: skipped,
or a failure with ``CI=true``.
"""

from __future__ import annotations

import math
import os
import signal
import statistics as pystats
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from buildbot.process.results import Results
from prometheus_client.parser import text_string_to_metric_families

from buildbot_stats.cli.master_process import RealMaster, make_master_cfg
from tests.support.ports import free_port
from tests.support.prometheus import PrometheusServer, require_prometheus

pytestmark = pytest.mark.e2e

BUILDERS = ("b1", "b2")
CHANGES = 3
BUCKETS = [0.5, 1, 2, 3, 5, 10]
POLL_TIMEOUT = 30.0

# Builds of different lengths (whole seconds in Buildbot's db), some failing.
HEADER = """
from buildbot.process import buildstep
from buildbot.process.results import FAILURE, SUCCESS
from twisted.internet import reactor, task

from buildbot_stats import statistics


class Work(statistics.StatsStepMixin, buildstep.BuildStep):
    name = 'work'

    async def run(self):
        builder = self.getProperty('buildername')
        number = self.getProperty('buildnumber')
        await self.yieldMetricsValue('timings', {'test': f'{builder}/{number}', 'seconds': number + 0.5})
        await task.deferLater(reactor, 0.6 * number, lambda: None)
        return FAILURE if (builder, number) in {('b2', 2), ('b1', 3)} else SUCCESS
"""

STEPS = "[Work()]"

SERVICES = """
captures = [
    statistics.CaptureBuildDurationAllBuilders(),
    statistics.CaptureBuildResultsAllBuilders(),
    statistics.CaptureDataAllBuilders('timings'),
    statistics.CaptureStepDurationAllBuilders(),
]
c['services'].append(
    statistics.StatsService(
        storage_backends=[
            statistics.PrometheusStorageService(
                port={port}, captures=captures, name='prom', buckets={buckets!r}, worker_label=True
            ),
        ],
        name='StatsService',
    )
)
"""


@pytest.fixture
def master(tmp_path: Path) -> Iterator[tuple[RealMaster, int]]:
    require_prometheus()
    port = free_port()
    cfg = make_master_cfg(
        {b: STEPS for b in BUILDERS},
        pb_port=free_port(),
        header=HEADER,
        services=SERVICES.format(port=port, buckets=BUCKETS),
    )
    m = RealMaster(tmp_path / "master", cfg)
    try:
        m.create()
        yield m, port
    finally:
        m.close()
    assert m.processes() == []


@pytest.fixture
def prom(tmp_path: Path, master: tuple[RealMaster, int]) -> Iterator[PrometheusServer]:
    server = PrometheusServer(tmp_path / "prometheus", targets=[f"127.0.0.1:{master[1]}"])
    try:
        server.start()
        yield server
    finally:
        server.close()


def wait_for(what: str, check: Any, timeout: float = POLL_TIMEOUT) -> Any:
    """Poll ``check()`` (bounded) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not reached after {timeout}s")
        time.sleep(0.25)


def by_labels(result: list[dict[str, Any]], *names: str) -> dict[tuple[str, ...], float]:
    return {tuple(r["metric"].get(n, "") for n in names): r["value"] for r in result}


def bucket_index(seconds: float) -> int:
    """The index of the histogram bucket holding ``seconds`` (len(BUCKETS) for +Inf)."""
    for i, upper in enumerate(BUCKETS):
        if seconds <= upper:
            return i
    return len(BUCKETS)


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert resp.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def reconfig(m: RealMaster, cfg: str, timeout: float = 60) -> None:
    """What ``buildbot reconfig`` does: new master.cfg, SIGHUP, wait for the log line."""
    (m.basedir / "master.cfg").write_text(cfg)
    before = m.log_text().count("configuration update complete")
    pid = m.pid()
    assert pid is not None
    os.kill(pid, signal.SIGHUP)
    wait_for("reconfig", lambda: m.log_text().count("configuration update complete") > before, timeout)
    assert "reconfig aborted" not in m.log_text()


def check_against_db(prom: PrometheusServer, builds: list[dict[str, Any]]) -> None:
    want = Counter((b["builder"], Results[b["results"]]) for b in builds)
    # Prometheus scrapes every second: wait for the scrape that saw the last build
    wait_for(
        "all builds in Prometheus",
        lambda: (
            prom.query_value("sum(buildbot_builds_total)") == len(builds)
            and prom.query_value("sum(buildbot_build_duration_seconds_count)") == len(builds)
        ),
    )
    totals = by_labels(prom.query("buildbot_builds_total"), "builder", "result")
    assert totals == {k: float(n) for k, n in want.items()}
    # every duration met its build's result (no "unknown") and its worker
    counts = by_labels(prom.query("buildbot_build_duration_seconds_count"), "builder", "result", "worker")
    per_worker = Counter((b["builder"], Results[b["results"]], b["worker"]) for b in builds)
    assert counts == {k: float(n) for k, n in per_worker.items()}
    # one step "work" per build (besides Buildbot's own), on the build's worker, in the step buckets
    wait_for(
        "all steps in Prometheus",
        lambda: prom.query_value('sum(buildbot_step_duration_seconds_count{step="work"})') == len(builds),
    )
    query = 'buildbot_step_duration_seconds_count{step="work"}'
    steps = by_labels(prom.query(query), "builder", "step", "worker")
    per_step = Counter((b["builder"], "work", b["worker"]) for b in builds)
    assert steps == {k: float(n) for k, n in per_step.items()}
    assert prom.query('buildbot_step_duration_seconds_bucket{le="0.1"}')

    for name in BUILDERS:
        durations = [b["complete_at"] - b["started_at"] for b in builds if b["builder"] == name]
        per_builder = prom.query_value(f'sum(buildbot_build_duration_seconds_count{{builder="{name}"}})')
        assert per_builder == len(durations)
        total = prom.query_value(f'sum(buildbot_build_duration_seconds_sum{{builder="{name}"}})')
        assert total == pytest.approx(sum(durations))
        median = prom.query_value(
            "histogram_quantile(0.5, sum by (le) "
            f'(buildbot_build_duration_seconds_bucket{{builder="{name}"}}))'
        )
        assert median is not None and math.isfinite(median)
        true_median = pystats.median(durations)
        assert abs(bucket_index(median) - bucket_index(true_median)) <= 1, (median, durations)


def test_prometheus_scrapes_what_the_master_built(
    master: tuple[RealMaster, int], prom: PrometheusServer
) -> None:
    m, port = master
    rc, out = m.checkconfig()
    assert rc == 0, out
    m.start()
    assert f"buildbot_stats: Prometheus metrics at http://127.0.0.1:{port}/metrics" in m.log_text()
    prom.wait_for_target_up()

    m.sendchange(CHANGES)
    m.wait_for_builds(CHANGES * len(BUILDERS))
    builds = m.builds()
    assert sorted(Results[b["results"]] for b in builds).count("failure") == 2
    check_against_db(prom, builds)

    # the endpoint itself, parsed with prometheus_client's parser
    # duration, result and one posted value per build, and each step's duration
    points = 3 * len(builds) + m._query("SELECT COUNT(*) AS n FROM steps")[0]["n"]
    s = wait_for(
        "delivery counters",
        lambda: (
            found
            if (found := scrape(port)).get(
                ("buildbot_stats_points_total", (("backend", "prom"), ("state", "written")))
            )
            == points
            else None
        ),
    )
    assert s[("buildbot_stats_points_total", (("backend", "prom"), ("state", "captured")))] == points
    assert s[("buildbot_stats_points_total", (("backend", "prom"), ("state", "dropped")))] == 0
    assert s[("buildbot_stats_pending_points", (("backend", "prom"),))] == 0
    for b in builds:
        key = ("buildbot_builds_total", (("builder", b["builder"]), ("result", Results[b["results"]])))
        assert s[key] >= 1
    last = {v for k, v in s.items() if k[0] == "buildbot_stat" and dict(k[1])["series"] == "b1-timings"}
    assert len(last) == 1 and last <= {n + 0.5 for n in range(1, CHANGES + 1)}

    # buildbot reconfig: a new backend object on the same port keeps counts and listener
    cfg = m.master_cfg.replace("name='prom',", "name='prom', interface='127.0.0.1',")
    assert cfg != m.master_cfg
    reconfig(m, cfg)
    assert m.log_text().count("buildbot_stats: configuring StatsService") == 2
    assert "cannot serve Prometheus metrics" not in m.log_text()
    prom.wait_for_target_up()
    m.sendchange(1)
    m.wait_for_builds(len(builds) + len(BUILDERS))
    builds = m.builds()
    check_against_db(prom, builds)

    m.stop()
    assert m.tracebacks() == []
    assert m.warnings() == []
    assert "Address already in use" not in m.log_text()
    # the listener closed with the master
    with pytest.raises(OSError):
        scrape(port)


def test_missing_prometheus_skips_or_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    import unittest

    from tests.support import prometheus as support

    monkeypatch.setattr(support, "find_prometheus", lambda: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(unittest.SkipTest, match="apt-get install prometheus"):
        support.require_prometheus()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(RuntimeError, match="CI requires it"):
        support.require_prometheus()


def test_checkconfig_reports_bad_prometheus_arguments(tmp_path: Path) -> None:
    services = """
c['services'].append(statistics.StatsService(
    storage_backends=[statistics.PrometheusStorageService(
        port='9101', interface='example.org', captures=[], buckets=[10, 1])],
    name='StatsService'))
"""
    cfg = make_master_cfg({"b1": STEPS}, pb_port=free_port(), header=HEADER, services=services)
    m = RealMaster(tmp_path / "master", cfg)
    try:
        m.create()
        rc, out = m.checkconfig()
    finally:
        m.close()
    assert rc != 0, out
    assert "PrometheusStorageService: port must be an integer from 1 to 65535 (or 0), not '9101'" in out
    assert "interface must be an IP address" in out
    assert "buckets must be a non-empty list of increasing numbers" in out
    assert "Traceback" not in out
