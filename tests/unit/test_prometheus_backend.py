"""PrometheusStorageService: points in, exposition text out (parsed back, exact samples)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
from buildbot import config
from buildbot.config.errors import capture_config_errors
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer
from twisted.internet.testing import MemoryReactor

from buildbot_stats import capture, statistics
from buildbot_stats.capture.live import BuilderLive, LiveSnapshot
from buildbot_stats.errors import BackendConfigurationError
from buildbot_stats.point import Point
from buildbot_stats.storage_backends import prometheus
from buildbot_stats.storage_backends.base import StatsStorageBase, start_backends, stop_backends
from buildbot_stats.storage_backends.prometheus import (
    DEFAULT_BUCKETS,
    DEFAULT_MAX_STAT_SERIES,
    DEFAULT_STEP_BUCKETS,
    PrometheusStorageService,
)

from ..fakes import StatsTestCase

pytestmark = pytest.mark.unit

ALL_CAPTURES = [
    capture.CaptureBuildDurationAllBuilders(),
    capture.CaptureBuildResultsAllBuilders(),
]


@pytest.fixture(autouse=True)
def no_endpoints() -> Iterator[None]:
    """Every test starts and ends without endpoints in the module table."""
    prometheus._ENDPOINTS.clear()
    yield
    prometheus._ENDPOINTS.clear()


class FakeMaster:
    def __init__(self) -> None:
        self.reactor = MemoryReactor()


class FakeService:
    """What the backend needs from a StatsService: master.reactor and backend_counters()."""

    name = "StatsService"

    def __init__(self, counters: dict[str, dict[str, int]] | None = None) -> None:
        self.master = FakeMaster()
        self.counters = counters or {}

    def backend_counters(self) -> dict[str, dict[str, int]]:
        return self.counters


class RecordingPort:
    def __init__(self, port: int) -> None:
        self.port = port
        self.stopped = False

    def stopListening(self) -> None:
        self.stopped = True

    def getHost(self) -> Any:
        class Host:
            port = self.port

        return Host()


class PortReactor(MemoryReactor):
    """A MemoryReactor whose ports say whether they were stopped."""

    def __init__(self) -> None:
        super().__init__()
        self.ports: list[RecordingPort] = []

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> RecordingPort:
        super().listenTCP(port, factory, backlog, interface)
        self.ports.append(RecordingPort(port))
        return self.ports[-1]


def tags(builder: str = "b1", number: int = 1, **extra: str) -> dict[str, str]:
    return {"builder_name": builder, "build_number": str(number), **extra}


def duration(builder: str, number: int, seconds: float) -> Point:
    return Point(f"{builder}-build-times", {"duration": seconds}, tags(builder, number))


def result(builder: str, number: int, code: int) -> Point:
    names = ["success", "warnings", "failure", "skipped", "exception", "retry", "cancelled"]
    return Point(f"{builder}-build-results", {"results": code, "result": names[code]}, tags(builder, number))


def samples(backend: PrometheusStorageService) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """sample name + sorted labels -> value, from the text the endpoint serves."""
    endpoint = backend._get_endpoint()
    text = endpoint.exposition(endpoint.state()).decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.endswith("_created"):
                continue
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def value(backend_: PrometheusStorageService, name_: str, /, **labels: str) -> float | None:
    return samples(backend_).get((name_, tuple(sorted(labels.items()))))


def families(backend: PrometheusStorageService) -> dict[str, Any]:
    """name -> metric family, from the text the endpoint serves."""
    endpoint = backend._get_endpoint()
    text = endpoint.exposition(endpoint.state()).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


# -- metrics from points -------------------------------------------------------


def test_builds_durations_and_results_are_exact_samples() -> None:
    b = PrometheusStorageService(port=0, captures=ALL_CAPTURES)
    report = b.thd_postStatsValues(
        [
            duration("b1", 1, 12.0),
            result("b1", 1, 0),
            duration("b1", 2, 400.0),
            result("b1", 2, 2),
            result("b2", 1, 0),
            duration("b2", 1, 0.5),
        ]
    )
    assert report.problems == [] and report.rejected_points == 0
    s = samples(b)
    assert value(b, "buildbot_builds_total", builder="b1", result="success") == 1
    assert value(b, "buildbot_builds_total", builder="b1", result="failure") == 1
    assert value(b, "buildbot_builds_total", builder="b2", result="success") == 1
    assert value(b, "buildbot_build_duration_seconds_count", builder="b1", result="success") == 1
    assert value(b, "buildbot_build_duration_seconds_sum", builder="b1", result="failure") == 400.0
    assert value(b, "buildbot_build_duration_seconds_sum", builder="b2", result="success") == 0.5
    # cumulative buckets of the 12 s build
    le = {
        k[1][1][1]: v
        for k, v in s.items()
        if k[0] == "buildbot_build_duration_seconds_bucket"
        and dict(k[1]) == {"builder": "b1", "result": "success", "le": k[1][1][1]}
    }
    assert le["10.0"] == 0 and le["30.0"] == 1 and le["+Inf"] == 1
    assert ("buildbot_build_duration_seconds_count", (("builder", "b1"), ("result", "unknown"))) not in s


def test_result_and_duration_join_across_batches_in_any_order() -> None:
    b = PrometheusStorageService(port=0, captures=ALL_CAPTURES)
    b.thd_postStatsValues([duration("b1", 1, 3.0)])
    # waiting for its result: not observed yet
    assert value(b, "buildbot_build_duration_seconds_count", builder="b1", result="unknown") is None
    b.thd_postStatsValues([result("b1", 1, 2)])
    b.thd_postStatsValues([result("b1", 2, 0)])
    b.thd_postStatsValues([duration("b1", 2, 4.0)])
    assert value(b, "buildbot_build_duration_seconds_count", builder="b1", result="failure") == 1
    assert value(b, "buildbot_build_duration_seconds_count", builder="b1", result="success") == 1
    assert value(b, "buildbot_build_duration_seconds_count", builder="b1", result="unknown") is None


def test_duration_without_a_result_capture_is_unknown_at_once() -> None:
    b = PrometheusStorageService(port=0, captures=[capture.CaptureBuildDuration("b1")])
    b.thd_postStatsValues([duration("b1", 1, 3.0)])
    assert value(b, "buildbot_build_duration_seconds_count", builder="b1", result="unknown") == 1


def test_a_duration_whose_result_never_comes_is_unknown_after_the_wait(monkeypatch: Any) -> None:
    now = [1000.0]
    monkeypatch.setattr(prometheus.time, "monotonic", lambda: now[0])
    b = PrometheusStorageService(port=0, captures=ALL_CAPTURES)
    b.thd_postStatsValues([duration("b1", 1, 3.0)])
    now[0] += prometheus.JOIN_WAIT - 1
    assert value(b, "buildbot_build_duration_seconds_count", builder="b1", result="unknown") is None
    now[0] += 2  # expired at scrape time, no new point needed
    assert value(b, "buildbot_build_duration_seconds_count", builder="b1", result="unknown") == 1
    # a late result still counts the build, but not the duration twice
    b.thd_postStatsValues([result("b1", 1, 0)])
    assert value(b, "buildbot_builds_total", builder="b1", result="success") == 1
    assert value(b, "buildbot_build_duration_seconds_count", builder="b1", result="success") is None


def test_the_join_tables_are_bounded(monkeypatch: Any) -> None:
    monkeypatch.setattr(prometheus, "JOIN_MAX", 3)
    b = PrometheusStorageService(port=0, captures=ALL_CAPTURES)
    b.thd_postStatsValues([duration("b1", n, 1.0) for n in range(1, 6)])
    endpoint = b._get_endpoint()
    assert len(endpoint.waiting) == 3
    assert value(b, "buildbot_build_duration_seconds_count", builder="b1", result="unknown") == 2
    b.thd_postStatsValues([result("b2", n, 0) for n in range(1, 6)])
    # results wait for their durations in the same table: the oldest halves go, a duration as unknown
    assert sorted(endpoint.waiting) == [("b2", "3"), ("b2", "4"), ("b2", "5")]
    assert value(b, "buildbot_build_duration_seconds_count", builder="b1", result="unknown") == 5


def test_report_in_minutes_is_converted_to_seconds() -> None:
    b = PrometheusStorageService(
        port=0,
        captures=[
            capture.CaptureBuildDuration("b1", report_in="minutes"),
            capture.CaptureBuildDuration("b2"),
        ],
    )
    b.thd_postStatsValues([duration("b1", 1, 2.0), duration("b2", 1, 2.0)])
    assert value(b, "buildbot_build_duration_seconds_sum", builder="b1", result="unknown") == 120.0
    assert value(b, "buildbot_build_duration_seconds_sum", builder="b2", result="unknown") == 2.0


def test_queue_and_step_report_in_are_converted_to_seconds() -> None:
    """The metrics say seconds: a queue time or step duration captured in minutes
    or hours is converted, as build durations are."""
    b = PrometheusStorageService(
        port=0,
        captures=[
            capture.CaptureBuildQueueTime("b1", report_in="minutes"),
            capture.CaptureStepDuration("b1", report_in="hours"),
            capture.CaptureBuildQueueTimeAllBuilders(),
            capture.CaptureStepDurationAllBuilders(),
        ],
    )
    b.thd_postStatsValues(
        [
            Point("b1-build-times", {"queue-time": 2.0}, tags()),
            Point("b1-step-times", {"duration": 0.5, "result": 0}, tags(step_name="compile")),
            Point("b2-build-times", {"queue-time": 2.0}, tags("b2")),
            Point("b2-step-times", {"duration": 0.5, "result": 0}, tags("b2", step_name="compile")),
        ]
    )
    assert value(b, "buildbot_build_queue_seconds_sum", builder="b1") == 120.0
    assert value(b, "buildbot_step_duration_seconds_sum", builder="b1", step="compile") == 1800.0
    assert value(b, "buildbot_build_queue_seconds_sum", builder="b2") == 2.0
    assert value(b, "buildbot_step_duration_seconds_sum", builder="b2", step="compile") == 0.5


def test_queue_steps_tests_and_other_series() -> None:
    b = PrometheusStorageService(port=0, captures=[])
    b.thd_postStatsValues(
        [
            Point("b1-build-times", {"queue-time": 7.0}, tags()),
            Point("b1-build-times", {"start-time": "2026-01-01T00:00:00+00:00"}, tags()),
            Point(
                "b1-step-times",
                {"duration": 2.5, "result": 0},
                tags(step_name="compile", step_number="1", worker="w1"),
            ),
            Point(
                "b1-step-times", {"duration": 0.5, "result": 0}, tags(step_name="compile", step_number="2")
            ),
            Point("b1-test-results", {"tests_passed": 40, "tests_failed": 2}, tags()),
            Point("b1-test-results", {"tests_passed": None, "tests_failed": 1}, tags(number=2)),
            Point("b1-timings", {"test": "t1", "seconds": 3.5}, tags()),
            Point("b1-timings", {"test": "t2", "seconds": 4.5}, tags(number=2)),
            Point("b1-test_count", {"name": "test_count", "value": 12}, tags()),
            Point("b1-flaky", {"name": "flaky", "value": True}, tags()),
            Point("b1-big", {"value": 2**70}, tags()),
        ]
    )
    assert value(b, "buildbot_build_queue_seconds_count", builder="b1") == 1
    assert value(b, "buildbot_build_queue_seconds_sum", builder="b1") == 7.0
    assert value(b, "buildbot_step_duration_seconds_count", builder="b1", step="compile") == 2
    assert value(b, "buildbot_step_duration_seconds_sum", builder="b1", step="compile") == 3.0
    assert value(b, "buildbot_tests_total", builder="b1", outcome="passed") == 40
    assert value(b, "buildbot_tests_total", builder="b1", outcome="failed") == 3
    assert value(b, "buildbot_stat", series="b1-timings", field="seconds") == 4.5  # the last value
    assert value(b, "buildbot_stat", series="b1-test_count", field="value") == 12
    assert value(b, "buildbot_stat", series="b1-flaky", field="value") == 1
    assert value(b, "buildbot_stat", series="b1-big", field="value") == float(2**70)
    # strings are not numbers; known series do not also become buildbot_stat
    names = {(k[0], dict(k[1]).get("series")) for k in samples(b)}
    assert ("buildbot_stat", "b1-build-times") not in names
    assert ("buildbot_stat", "b1-step-times") not in names
    assert value(b, "buildbot_stat", series="b1-timings", field="test") is None


def test_unusable_values_are_reported_not_counted() -> None:
    b = PrometheusStorageService(port=0, captures=[])
    report = b.thd_postStatsValues(
        [
            Point("b1-build-times", {"duration": "slow"}, tags()),
            Point("b1-build-times", {"duration": math.nan}, tags(number=2)),
            Point("b1-build-times", {"duration": -1.0}, tags(number=3)),
            Point("b1-test-results", {"tests_passed": "many"}, tags()),
            Point("b1-step-times", {"duration": None}, tags(step_name="x")),
        ]
    )
    assert [(p.series, p.field) for p in report.problems] == [
        ("b1-build-times", "duration"),
        ("b1-build-times", "duration"),
        ("b1-build-times", "duration"),
        ("b1-test-results", "tests_passed"),
    ]
    assert report.rejected_points == 4
    assert not [k for k in samples(b) if k[0].startswith("buildbot_build_duration")]


def test_counting_never_raises_once_started(monkeypatch: Any) -> None:
    b = PrometheusStorageService(port=0, captures=[])

    def broken(*args: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(b._get_endpoint(), "join", broken)
    report = b.thd_postStatsValues([result("b1", 1, 0), result("b1", 2, 0)])  # raises nothing
    assert [p.reason for p in report.problems] == ["RuntimeError: boom"] * 2


def test_result_label_from_code_or_name() -> None:
    b = PrometheusStorageService(port=0, captures=[])
    b.thd_postStatsValues(
        [
            Point("b1-build-results", {"results": 4}, tags()),
            Point("b1-build-results", {"results": "odd"}, tags(number=2)),
        ]
    )
    assert value(b, "buildbot_builds_total", builder="b1", result="exception") == 1
    assert value(b, "buildbot_builds_total", builder="b1", result="unknown") == 1


@pytest.mark.parametrize(
    "builder",
    ['quote"d', "back\\slash", "new\nline", "unicode-é☃", "a b,c=d", "{curly}", "trailing-build-times"],
)
def test_odd_builder_names_are_escaped(builder: str) -> None:
    b = PrometheusStorageService(port=0, captures=ALL_CAPTURES)
    b.thd_postStatsValues([result(builder, 1, 0), duration(builder, 1, 2.0)])
    assert value(b, "buildbot_builds_total", builder=builder, result="success") == 1
    assert value(b, "buildbot_build_duration_seconds_count", builder=builder, result="success") == 1


def test_per_point_method_counts_too() -> None:
    b = PrometheusStorageService(port=0, captures=[])
    b.thd_postStatsValue({"results": 0, "result": "success"}, "b1-build-results", tags())
    assert value(b, "buildbot_builds_total", builder="b1", result="success") == 1


# -- buckets and arguments -----------------------------------------------------


def test_default_and_custom_buckets() -> None:
    b = PrometheusStorageService(port=0, captures=[])
    b.thd_postStatsValues([duration("b1", 1, 3.0)])
    les = sorted(
        {dict(k[1])["le"] for k in samples(b) if k[0] == "buildbot_build_duration_seconds_bucket"},
        key=float,
    )
    assert les == [str(float(x)) for x in DEFAULT_BUCKETS] + ["+Inf"]

    prometheus._ENDPOINTS.clear()
    c = PrometheusStorageService(port=0, captures=[], buckets=[0.5, 2, 8])
    c.thd_postStatsValues([duration("b1", 1, 3.0)])
    assert value(c, "buildbot_build_duration_seconds_bucket", builder="b1", result="unknown", le="2.0") == 0
    assert value(c, "buildbot_build_duration_seconds_bucket", builder="b1", result="unknown", le="8.0") == 1
    les = {dict(k[1])["le"] for k in samples(c) if k[0] == "buildbot_build_duration_seconds_bucket"}
    assert les == {"0.5", "2.0", "8.0", "+Inf"}
    assert PrometheusStorageService(port=0, buckets=[1, 2, math.inf]).buckets == (1.0, 2.0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"port": "9101"}, "port must be an integer"),
        ({"port": 70000}, "port must be an integer"),
        ({"port": -1}, "port must be an integer"),
        ({"port": True}, "port must be an integer"),
        ({"interface": 127}, "interface must be an IP address"),
        ({"interface": "example.org"}, "interface must be an IP address"),
        ({"interface": ""}, "interface must be an IP address"),
        ({"buckets": []}, "buckets must be"),
        ({"buckets": [5, 1]}, "buckets must be"),
        ({"buckets": [1, 1]}, "buckets must be"),
        ({"buckets": ["1", 2]}, "buckets must be"),
        ({"buckets": [1, math.nan]}, "buckets must be"),
        ({"buckets": "1,2"}, "buckets must be"),
        ({"buckets": [True, 2]}, "buckets must be"),
        ({"step_buckets": []}, "step_buckets must be a non-empty list of increasing numbers of seconds"),
        ({"step_buckets": [2, 1]}, "step_buckets must be"),
        ({"step_buckets": [1, math.inf, 2]}, "step_buckets must be"),
        ({"worker_label": "yes"}, "worker_label must be True or False, not 'yes'"),
        ({"worker_label": None}, "worker_label must be True or False"),
        ({"max_stat_series": 0}, "max_stat_series must be an integer >= 1, not 0"),
        ({"max_stat_series": "10"}, "max_stat_series must be an integer >= 1"),
        ({"max_stat_series": True}, "max_stat_series must be an integer >= 1"),
        ({"max_connections": -1}, "max_connections must be an integer >= 1, not -1"),
        ({"max_connections": 2.5}, "max_connections must be an integer >= 1"),
    ],
)
def test_bad_arguments_are_config_errors(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(config.ConfigErrors) as info:
        PrometheusStorageService(captures=[], **kwargs)
    assert message in str(info.value)


def test_a_capture_with_a_bad_report_in_is_the_captures_error_only() -> None:
    """checkconfig collects errors and goes on: the backend then gets the bad capture
    and must not raise on its unhashable ``report_in``."""
    with capture_config_errors() as errors:
        PrometheusStorageService(
            port=0,
            captures=[
                capture.CaptureBuildDurationAllBuilders(report_in=["hours"]),
                capture.CaptureStepDuration("b1", report_in={}),
            ],
        )
    assert len(errors.errors) == 2
    assert all("`report_in` parameter must be one of" in e for e in errors.errors)


def test_bad_arguments_under_checkconfig_collect_errors_and_never_count() -> None:
    with capture_config_errors() as errors:
        b = PrometheusStorageService(port="x", interface=3, captures=[])
    assert len(errors.errors) == 2
    with pytest.raises(BackendConfigurationError):
        b.thd_postStatsValues([result("b1", 1, 0)])
    b.startBackend(FakeService())  # a no-op, no listener
    assert prometheus._ENDPOINTS == {}


def test_re_exported_for_master_cfg() -> None:
    assert statistics.PrometheusStorageService is PrometheusStorageService
    assert "PrometheusStorageService" in prometheus.__all__
    assert isinstance(PrometheusStorageService(captures=[]), StatsStorageBase)


# -- endpoint, listener and reconfig ---------------------------------------------


def test_reconfig_with_a_new_object_on_the_same_port_keeps_counts_and_listener() -> None:
    service = FakeService()
    reactor = PortReactor()
    service.master.reactor = reactor
    old = PrometheusStorageService(port=9101, captures=ALL_CAPTURES)
    start_backends(service, [old])
    old.thd_postStatsValues([result("b1", 1, 0), duration("b1", 1, 5.0)])

    new = PrometheusStorageService(port=9101, captures=ALL_CAPTURES)
    start_backends(service, [new], [old])  # what StatsService.reconfigService does
    assert [p[:1] + p[3:] for p in reactor.tcpServers] == [(9101, "127.0.0.1")]
    assert not reactor.ports[0].stopped
    new.thd_postStatsValues([result("b1", 2, 0), duration("b1", 2, 6.0)])
    assert new._get_endpoint() is old._get_endpoint()
    assert value(new, "buildbot_builds_total", builder="b1", result="success") == 2
    assert value(new, "buildbot_build_duration_seconds_count", builder="b1", result="success") == 2

    # a port change moves the listener; the old port is closed
    moved = PrometheusStorageService(port=9102, captures=ALL_CAPTURES)
    start_backends(service, [moved], [new])
    assert [p[0] for p in reactor.tcpServers] == [9101, 9102]
    assert reactor.ports[0].stopped and not reactor.ports[1].stopped
    assert list(prometheus._ENDPOINTS) == [("127.0.0.1", 9102)]

    stop_backends([moved])
    assert reactor.ports[1].stopped
    assert prometheus._ENDPOINTS == {}
    # a late write of a stopped backend creates no endpoint; a new start listens again
    new.thd_postStatsValues([result("b1", 3, 0)])
    assert prometheus._ENDPOINTS == {}
    start_backends(service, [moved])
    assert [p[0] for p in reactor.tcpServers] == [9101, 9102, 9102]
    assert value(moved, "buildbot_builds_total", builder="b1", result="success") is None


def test_bucket_change_on_reconfig_restarts_histograms_only() -> None:
    service = FakeService()
    old = PrometheusStorageService(port=9101, captures=ALL_CAPTURES)
    start_backends(service, [old])
    old.thd_postStatsValues([result("b1", 1, 0), duration("b1", 1, 5.0)])
    new = PrometheusStorageService(port=9101, captures=ALL_CAPTURES, buckets=[10, 100])
    start_backends(service, [new], [old])
    assert value(new, "buildbot_builds_total", builder="b1", result="success") == 1
    assert value(new, "buildbot_build_duration_seconds_count", builder="b1", result="success") is None
    new.thd_postStatsValues([result("b1", 2, 0), duration("b1", 2, 5.0)])
    assert (
        value(new, "buildbot_build_duration_seconds_bucket", builder="b1", result="success", le="10.0") == 1
    )
    # the worker label changes the histograms' labels: they restart too
    labelled = PrometheusStorageService(
        port=9101, captures=ALL_CAPTURES, buckets=[10, 100], worker_label=True
    )
    start_backends(service, [labelled], [new])
    assert value(new, "buildbot_builds_total", builder="b1", result="success") == 2
    assert not [k for k in samples(labelled) if k[0].startswith("buildbot_build_duration")]
    labelled.thd_postStatsValues([result("b1", 3, 0), duration("b1", 3, 5.0)])
    assert (
        value(
            labelled,
            "buildbot_build_duration_seconds_count",
            builder="b1",
            result="success",
            worker="unknown",
        )
        == 1
    )


def test_a_port_in_use_is_logged_and_counting_goes_on() -> None:
    from twisted.internet.error import CannotListenError

    class BusyReactor(MemoryReactor):
        def listenTCP(self, *args: Any, **kwargs: Any) -> Any:
            raise CannotListenError("127.0.0.1", 9101, OSError(98, "Address already in use"))

    service = FakeService()
    service.master.reactor = BusyReactor()
    b = PrometheusStorageService(port=9101, captures=[])
    b.startBackend(service)
    b.thd_postStatsValues([result("b1", 1, 0)])
    assert value(b, "buildbot_builds_total", builder="b1", result="success") == 1
    assert b._get_endpoint().port is None


def test_delivery_counters_are_read_at_scrape_time() -> None:
    counters = {
        "PrometheusStorageService": {
            "captured": 3,
            "spooled": 3,
            "written": 2,
            "retried": 0,
            "dropped": 1,
            "pending": 0,
        },
        "influx": {"captured": 5, "spooled": 5, "written": 0, "retried": 10, "dropped": 0, "pending": 5},
    }
    service = FakeService(counters)
    b = PrometheusStorageService(port=0, captures=[])
    b.startBackend(service)
    assert value(b, "buildbot_stats_points_total", backend="PrometheusStorageService", state="captured") == 3
    assert value(b, "buildbot_stats_points_total", backend="PrometheusStorageService", state="written") == 2
    assert value(b, "buildbot_stats_points_total", backend="PrometheusStorageService", state="dropped") == 1
    assert value(b, "buildbot_stats_points_total", backend="influx", state="retried") == 10
    assert value(b, "buildbot_stats_pending_points", backend="influx") == 5
    assert value(b, "buildbot_stats_points_total", backend="influx", state="spooled") is None
    counters["influx"]["written"] = 5
    assert value(b, "buildbot_stats_points_total", backend="influx", state="written") == 5


# -- the hooks, called by a real StatsService on Buildbot's fake master ----------


class HookedBackend(StatsStorageBase):
    def __init__(self, name: str, calls: list[tuple[str, str]]) -> None:
        self.name = name
        self.captures: list[Any] = []
        self.calls = calls

    def thd_postStatsValue(self, post_data: Any, series_name: str, context: Any = None) -> None:
        pass

    def startBackend(self, service: Any) -> None:
        self.calls.append(("start", self.name))

    def stopBackend(self) -> defer.Deferred:
        self.calls.append(("stop", self.name))
        return defer.succeed(None)


class BrokenHooks(HookedBackend):
    def startBackend(self, service: Any) -> None:
        raise RuntimeError("no")


class StatsServiceHookTests(StatsTestCase):
    """trial style: Buildbot's fake master needs its test reactor."""

    @defer.inlineCallbacks
    def test_hooks_on_reconfig_and_stop(self) -> None:
        calls: list[tuple[str, str]] = []
        a, b = HookedBackend("a", calls), HookedBackend("b", calls)
        yield self.stats.reconfigService([a, b], spool_path=None)
        self.assertEqual(calls, [("start", "a"), ("start", "b")])
        calls.clear()
        a2 = HookedBackend("a", calls)
        yield self.stats.reconfigService([a2, b], spool_path=None)
        # the replacement starts before the replaced one stops
        self.assertEqual(calls, [("start", "a"), ("start", "b"), ("stop", "a")])
        self.assertEqual([c[1] for c in calls if c[0] == "stop"], ["a"])
        calls.clear()
        yield self.stats.disownServiceParent()  # stops the service
        self.assertEqual(calls, [("stop", "a"), ("stop", "b")])

    @defer.inlineCallbacks
    def test_a_failing_hook_is_logged_not_raised(self) -> None:
        calls: list[tuple[str, str]] = []
        yield self.stats.reconfigService([BrokenHooks("x", calls)], spool_path=None)
        self.assertEqual(list(self.stats.queues), ["x"])


# -- issue 22: the buildbot_stat cap ------------------------------------------------


def test_buildbot_stat_keeps_at_most_max_stat_series_label_sets(monkeypatch: Any) -> None:
    logged: list[str] = []
    monkeypatch.setattr(prometheus.log, "msg", lambda message, **kw: logged.append(message))
    b = PrometheusStorageService(port=0, captures=[], max_stat_series=3)
    b.thd_postStatsValues([Point("b1-timings", {f"t{i}": float(i) for i in range(5)}, tags())])
    b.thd_postStatsValues([Point("b1-timings", {"t0": 10.0, "t9": 9.0}, tags())])
    stat = {dict(k[1])["field"]: v for k, v in samples(b).items() if k[0] == "buildbot_stat"}
    assert stat == {"t0": 10.0, "t1": 1.0, "t2": 2.0}  # the kept ones still change
    assert value(b, "buildbot_stat_dropped_total") == 3
    (line,) = [m for m in logged if "max_stat_series" in m]  # once, naming the first one left out
    assert "'b1-timings' field 't3'" in line and "3 label sets" in line


def test_a_step_posting_200000_field_names_keeps_the_default_cap() -> None:
    b = PrometheusStorageService(port=0, captures=[])
    b.thd_postStatsValues([Point("b1-tests", {f"test_{i:06}": 1.5 for i in range(200_000)}, tags())])
    found = families(b)
    assert len(found["buildbot_stat"].samples) == DEFAULT_MAX_STAT_SERIES == 10_000
    assert found["buildbot_stat_dropped"].samples[0].value == 190_000
    endpoint = b._get_endpoint()
    assert len(endpoint.exposition(endpoint.state())) < 1_000_000  # main served 12.5 MB


def test_a_lower_cap_on_reconfig_keeps_the_first_label_sets() -> None:
    service = FakeService()
    old = PrometheusStorageService(port=9101, captures=[])
    start_backends(service, [old])
    old.thd_postStatsValues([Point("b1-timings", {f"t{i}": float(i) for i in range(5)}, tags())])
    new = PrometheusStorageService(port=9101, captures=[], max_stat_series=2)
    start_backends(service, [new], [old])
    stat = {dict(k[1])["field"] for k in samples(new) if k[0] == "buildbot_stat"}
    assert stat == {"t0", "t1"}


# -- issue 21: step buckets, the worker label, live state ----------------------------


def test_step_durations_have_their_own_buckets() -> None:
    assert DEFAULT_STEP_BUCKETS[0] < 1 and DEFAULT_STEP_BUCKETS[-1] >= 3600
    assert DEFAULT_STEP_BUCKETS != DEFAULT_BUCKETS
    step = Point("b1-step-times", {"duration": 0.3}, tags(step_name="compile"))
    b = PrometheusStorageService(port=0, captures=[])
    b.thd_postStatsValues([step, duration("b1", 1, 0.3)])
    les = sorted(
        {dict(k[1])["le"] for k in samples(b) if k[0] == "buildbot_step_duration_seconds_bucket"}, key=float
    )
    assert les == [str(float(x)) for x in DEFAULT_STEP_BUCKETS] + ["+Inf"]
    assert value(b, "buildbot_step_duration_seconds_bucket", builder="b1", step="compile", le="0.1") == 0
    assert value(b, "buildbot_step_duration_seconds_bucket", builder="b1", step="compile", le="0.5") == 1
    assert value(b, "buildbot_build_duration_seconds_bucket", builder="b1", result="unknown", le="1.0") == 1

    prometheus._ENDPOINTS.clear()
    c = PrometheusStorageService(port=0, captures=[], step_buckets=[1, 10, math.inf])
    c.thd_postStatsValues([step, duration("b1", 1, 0.3)])
    les = {dict(k[1])["le"] for k in samples(c) if k[0] == "buildbot_step_duration_seconds_bucket"}
    assert les == {"1.0", "10.0", "+Inf"}
    les = {dict(k[1])["le"] for k in samples(c) if k[0] == "buildbot_build_duration_seconds_bucket"}
    assert les == {str(float(x)) for x in DEFAULT_BUCKETS} | {"+Inf"}


def test_the_worker_label_is_off_by_default_and_opt_in(monkeypatch: Any) -> None:
    now = [1000.0]
    monkeypatch.setattr(prometheus.time, "monotonic", lambda: now[0])
    points = [
        duration("b1", 1, 12.0),  # a duration has no worker tag without extra_tags ...
        Point("b1-build-results", {"results": 0}, tags(worker="w1")),  # ... its result has
        Point("b1-build-times", {"duration": 3.0}, tags(number=2, worker="w3")),  # no result comes
        Point("b1-step-times", {"duration": 2.0}, tags(step_name="compile", worker="w2")),
        Point("b1-step-times", {"duration": 2.0}, tags(step_name="compile")),
        Point("b1-build-times", {"queue-time": 3.0}, tags(worker="w1")),
    ]
    off = PrometheusStorageService(port=0, captures=ALL_CAPTURES)
    off.thd_postStatsValues(points)
    now[0] += prometheus.JOIN_WAIT + 1
    assert not [k for k in samples(off) if "worker" in dict(k[1])]
    assert value(off, "buildbot_build_duration_seconds_count", builder="b1", result="success") == 1

    prometheus._ENDPOINTS.clear()
    on = PrometheusStorageService(port=0, captures=ALL_CAPTURES, worker_label=True)
    on.thd_postStatsValues(points)
    now[0] += prometheus.JOIN_WAIT + 1
    assert (
        value(on, "buildbot_build_duration_seconds_count", builder="b1", result="success", worker="w1") == 1
    )
    assert (
        value(on, "buildbot_build_duration_seconds_count", builder="b1", result="unknown", worker="w3") == 1
    )
    assert value(on, "buildbot_step_duration_seconds_count", builder="b1", step="compile", worker="w2") == 1
    assert (
        value(on, "buildbot_step_duration_seconds_count", builder="b1", step="compile", worker="unknown") == 1
    )
    assert value(on, "buildbot_build_queue_seconds_count", builder="b1") == 1  # never per worker
    assert value(on, "buildbot_builds_total", builder="b1", result="success") == 1


class LiveService(FakeService):
    """A StatsService whose live state is a hand-built snapshot (None: live state is off)."""

    def __init__(self, snapshot: LiveSnapshot | None) -> None:
        super().__init__()
        self.snapshot = snapshot

    def live_snapshot(self) -> LiveSnapshot | None:
        return self.snapshot


def test_live_state_is_read_at_each_scrape_with_exactly_these_metrics() -> None:
    assert PrometheusStorageService.wants_live_state is True
    service = LiveService(
        LiveSnapshot(
            workers_connected=3,
            workers_busy=2,
            builders={"b1": BuilderLive(2, 30.5, 1, 12.25), 'odd "b"': BuilderLive()},
            worker_builds_running={"w1": 1, "w2": 2},
            worker_builds_total={("w1", "success"): 4, ("w1", "failure"): 1, ("w2", "success"): 2},
        )
    )
    b = PrometheusStorageService(port=0, captures=[])
    b.startBackend(service)
    found = families(b)
    per_builder = {"b1": (2, 30.5, 1, 12.25), 'odd "b"': (0, 0.0, 0, 0.0)}
    expected = {
        "buildbot_workers_connected": ("gauge", {(): 3}),
        "buildbot_workers_busy": ("gauge", {(): 2}),
        "buildbot_worker_builds_running": ("gauge", {(("worker", "w1"),): 1, (("worker", "w2"),): 2}),
        "buildbot_worker_builds": (
            "counter",
            {
                (("result", "success"), ("worker", "w1")): 4,
                (("result", "failure"), ("worker", "w1")): 1,
                (("result", "success"), ("worker", "w2")): 2,
            },
        ),
    }
    for i, name in enumerate(
        [
            "buildbot_build_requests_pending",
            "buildbot_build_request_oldest_pending_seconds",
            "buildbot_builds_running",
            "buildbot_build_longest_running_seconds",
        ]
    ):
        expected[name] = ("gauge", {(("builder", k),): v[i] for k, v in per_builder.items()})
    for name, (kind, want) in expected.items():
        assert found[name].type == kind, name
        assert {tuple(sorted(s.labels.items())): s.value for s in found[name].samples} == want, name
    assert [s.name for s in found["buildbot_worker_builds"].samples][0] == "buildbot_worker_builds_total"

    service.snapshot = LiveSnapshot()  # nothing connected, nothing waits: zeros, no builders
    found = families(b)
    assert found["buildbot_workers_connected"].samples[0].value == 0
    assert found["buildbot_build_requests_pending"].samples == []
    service.snapshot = None  # live state off: no live metrics at all
    assert not set(expected) & set(families(b))
