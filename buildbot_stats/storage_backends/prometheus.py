"""Prometheus backend: points counted into a registry per ``(interface, port)``, served by the reactor.

docs/backends.rst says which metrics, how a build's duration waits for its
result, and why a batch is never counted twice.
"""

from __future__ import annotations

import ipaddress
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

from buildbot import config
from buildbot.process.results import Results
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.python import log
from twisted.web import pages, resource, server
from zope.interface import implementer

from buildbot_stats.arguments import reject_unknown
from buildbot_stats.errors import BackendConfigurationError
from buildbot_stats.point import Point, PointProblem
from buildbot_stats.storage_backends.base import IBackendLifecycle, StatsStorageBase, WriteReport

__all__ = ["DEFAULT_BUCKETS", "PrometheusStorageService"]

#: Histogram buckets (seconds) suited to builds: seconds to hours; ``+Inf`` is added.
DEFAULT_BUCKETS: tuple[float, ...] = (1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)
#: Seconds a build duration waits for the result of the same build.
JOIN_WAIT = 60.0
#: Builds whose duration (or result) may wait for the other half at once.
JOIN_MAX = 10_000

#: The text format every Prometheus 2.x reads (what generate_latest writes by default).
CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
_UNIT_SECONDS = {"seconds": 1.0, "minutes": 60.0, "hours": 3600.0}
_STATES = ("captured", "written", "retried", "dropped")
_SERIES_KINDS = ("build-times", "build-results", "step-times", "test-results")
_ALL = object()  # "every builder" in the per-builder capture tables

Key = tuple[str, int]

# (interface, port) -> the endpoint serving it; shared by the backends of one process
_ENDPOINTS: dict[Key, _Endpoint] = {}
_TABLE_LOCK = threading.Lock()


class _Pages(resource.Resource):
    """``/metrics``, and a root page that says so; anything else is not found."""

    isLeaf = True

    def __init__(self, endpoint: _Endpoint) -> None:
        super().__init__()
        self._endpoint = endpoint

    def render_GET(self, request: Any) -> bytes:
        if request.postpath[:1] == [b"metrics"]:
            body = self._endpoint.exposition()
            request.setHeader(b"Content-Type", CONTENT_TYPE)
            return body
        if any(request.postpath):
            return pages.notFound().render(request)  # type: ignore[call-arg, no-any-return]
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return b"buildbot_stats: metrics are at /metrics\n"


class _Endpoint:
    """The registry, metrics, join tables and listener of one ``(interface, port)``; also the
    collector of the StatsService's delivery counters, read at scrape time."""

    duration: Histogram
    queue: Histogram
    steps: Histogram

    def __init__(self, key: Key, buckets: tuple[float, ...]) -> None:
        self.key = key
        self.lock = threading.Lock()
        self.registry = r = CollectorRegistry()
        self.builds = Counter(
            "buildbot_builds", "Finished builds by builder and result.", ["builder", "result"], registry=r
        )
        self.tests = Counter(
            "buildbot_tests",
            "Test results reported by builds, by builder and outcome (passed, failed).",
            ["builder", "outcome"],
            registry=r,
        )
        self.stat = Gauge(
            "buildbot_stat",
            "The last value of each numeric field of other captured series.",
            ["series", "field"],
            registry=r,
        )
        self.buckets: tuple[float, ...] = ()
        self.set_buckets(buckets)
        r.register(self)
        # id(backend) -> (backend, service); the service is None until started
        self.owners: dict[int, tuple[Any, Any]] = {}
        self.port: Any = None
        self.site = server.Site(_Pages(self))
        self.site.noisy = False
        self.site.log = lambda request: None  # type: ignore[method-assign]  # no log line per scrape
        self.results: OrderedDict[tuple[str, str], str] = OrderedDict()
        self.waiting: OrderedDict[tuple[str, str], tuple[float, str, float]] = OrderedDict()

    def set_buckets(self, buckets: tuple[float, ...]) -> bool:
        """Use ``buckets`` for the histograms; True if they changed (histograms restart)."""
        with self.lock:
            if buckets == self.buckets:
                return False
            if self.buckets:
                for h in (self.duration, self.queue, self.steps):
                    self.registry.unregister(h)

            def histogram(name: str, help: str, labels: list[str]) -> Histogram:
                return Histogram(name, help, labels, buckets=buckets, registry=self.registry)

            self.duration = histogram(
                "buildbot_build_duration_seconds",
                "Build durations by builder and result.",
                ["builder", "result"],
            )
            self.queue = histogram(
                "buildbot_build_queue_seconds",
                "Time build requests waited before their build started, by builder.",
                ["builder"],
            )
            self.steps = histogram(
                "buildbot_step_duration_seconds",
                "Step durations by builder and step name.",
                ["builder", "step"],
            )
            changed, self.buckets = bool(self.buckets), buckets
            return changed

    def collect(self) -> Iterator[Metric]:
        points = CounterMetricFamily(
            "buildbot_stats_points",
            "Points of each buildbot_stats backend by delivery state, since the master started.",
            labels=["backend", "state"],
        )
        pending = GaugeMetricFamily(
            "buildbot_stats_pending_points",
            "Points of each buildbot_stats backend not yet accepted by it.",
            labels=["backend"],
        )
        services = list(
            {id(s): s for _, s in list(self.owners.values()) if hasattr(s, "backend_counters")}.values()
        )
        for service in services:
            try:
                counters = service.backend_counters()
            except Exception as e:  # a scrape must never fail for this
                log.msg(f"buildbot_stats: cannot read the delivery counters: {type(e).__name__}: {e}")
                continue
            for key, values in counters.items():
                label = key if len(services) == 1 else f"{getattr(service, 'name', '?')}/{key}"
                for state in _STATES:
                    points.add_metric([label, state], values.get(state, 0))
                pending.add_metric([label], values.get("pending", 0))
        yield points
        yield pending

    def exposition(self) -> bytes:
        with self.lock:
            self._expire(time.monotonic())
        return generate_latest(self.registry)

    @property
    def url(self) -> str:
        interface, port = self.key
        if self.port is not None:
            port = self.port.getHost().port
        host = f"[{interface}]" if ":" in interface else interface
        return f"http://{host}:{port}/metrics"

    def listen(self, reactor: Any) -> None:
        if self.port is not None:
            return
        interface, port = self.key
        try:
            self.port = reactor.listenTCP(port, self.site, interface=interface)
        except CannotListenError as e:
            log.msg(
                f"buildbot_stats: cannot serve Prometheus metrics on {interface}:{port} ({e.socketError}); "
                "values are still counted, the next reconfig tries again"
            )
            return
        log.msg(f"buildbot_stats: Prometheus metrics at {self.url}")

    def stop_listening(self) -> defer.Deferred:
        port, self.port = self.port, None
        return defer.succeed(None) if port is None else defer.maybeDeferred(port.stopListening)

    def count_result(self, builder: str, number: str, result: str) -> None:
        """Count a build's result, and the duration of that build if it waits for it."""
        self.builds.labels(builder, result).inc()
        waiting = self.waiting.pop((builder, number), None)
        if waiting is not None:
            self.duration.labels(builder, result).observe(waiting[2])
        else:
            self._remember(self.results, (builder, number), result)

    def count_duration(self, builder: str, number: str, seconds: float, wait: bool, now: float) -> None:
        """Observe a build's duration under its result; it may ``wait`` for the result."""
        result = self.results.pop((builder, number), None)
        if result is not None:
            self.duration.labels(builder, result).observe(seconds)
        elif wait:
            self._remember(self.waiting, (builder, number), (now + JOIN_WAIT, builder, seconds))
        else:
            self.duration.labels(builder, "unknown").observe(seconds)

    def _remember(self, table: OrderedDict, key: tuple[str, str], value: Any) -> None:
        table[key] = value
        table.move_to_end(key)
        while len(table) > JOIN_MAX:
            _, old = table.popitem(last=False)
            if table is self.waiting:
                self.duration.labels(old[1], "unknown").observe(old[2])

    def _expire(self, now: float) -> None:
        while self.waiting:
            key, (deadline, builder, seconds) = next(iter(self.waiting.items()))
            if deadline > now:
                break
            del self.waiting[key]
            self.duration.labels(builder, "unknown").observe(seconds)


def _endpoint(key: Key, buckets: tuple[float, ...]) -> _Endpoint:
    with _TABLE_LOCK:
        if key not in _ENDPOINTS:
            _ENDPOINTS[key] = _Endpoint(key, buckets)
        return _ENDPOINTS[key]


@implementer(IBackendLifecycle)
class PrometheusStorageService(StatsStorageBase):
    """Serves the captured statistics as Prometheus metrics; ``port`` 0 takes any free port (see ``url``)."""

    def __init__(
        self,
        port: int = 9101,
        interface: str = "127.0.0.1",
        captures: Sequence[Any] = (),
        name: str | None = None,
        buckets: Sequence[float] | None = None,
        **unknown: Any,
    ) -> None:
        reject_unknown(self, unknown)
        self.name = name or "PrometheusStorageService"
        self.captures = captures
        self.port = port
        self.interface = interface
        self._endpoint: _Endpoint | None = None
        problems = []
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            problems.append(f"port must be an integer from 1 to 65535 (or 0), not {port!r}")
        if not isinstance(interface, str) or not _valid_interface(interface):
            problems.append(
                "interface must be an IP address such as '127.0.0.1', '::1' or '0.0.0.0' (or 'localhost'), "
                f"not {interface!r}"
            )
        checked = DEFAULT_BUCKETS if buckets is None else _checked_buckets(buckets)
        if checked is None:
            problems.append(
                f"buckets must be a non-empty list of increasing numbers of seconds, not {buckets!r}"
            )
        for problem in problems:
            config.error(f"{self.name}: {problem}")
        self.buckets: tuple[float, ...] = checked or DEFAULT_BUCKETS
        self._inited = not problems
        self._results_for = _units_of(captures, "CaptureBuildResults")
        self._duration_units = _units_of(captures, "CaptureBuildDuration")
        self._queue_units = _units_of(captures, "CaptureBuildQueueTime")
        self._step_units = _units_of(captures, "CaptureStepDuration")

    def __repr__(self) -> str:
        return f"<PrometheusStorageService {self.name!r} {self.interface}:{self.port}>"

    @property
    def key(self) -> Key:
        return ("127.0.0.1" if self.interface == "localhost" else self.interface), self.port

    @property
    def url(self) -> str:
        """The metrics URL (with the real port once listening on port 0)."""
        return self._get_endpoint().url

    @property
    def registry(self) -> CollectorRegistry:
        """The ``prometheus_client`` registry behind the endpoint (shared per port)."""
        return self._get_endpoint().registry

    def _get_endpoint(self) -> _Endpoint:
        if self._endpoint is None:
            self._endpoint = _endpoint(self.key, self.buckets)
        return self._endpoint

    def startBackend(self, service: Any) -> None:
        """Attach to the endpoint of this port and make sure it listens (in the reactor)."""
        if not self._inited:
            return
        # the endpoint of this port now (the one used before may have been closed)
        endpoint = self._endpoint = _endpoint(self.key, self.buckets)
        endpoint.owners[id(self)] = (self, service)
        if endpoint.set_buckets(self.buckets):
            log.msg(f"buildbot_stats: {self.name}: histogram buckets changed; the histograms restart at 0")
        reactor = getattr(getattr(service, "master", None), "reactor", None)
        if reactor is None:
            from twisted.internet import reactor
        endpoint.listen(reactor)

    def stopBackend(self) -> defer.Deferred:
        """Detach; the last backend of a port stops its listener and forgets its counts."""
        endpoint = self._endpoint
        if endpoint is None:
            return defer.succeed(None)
        endpoint.owners.pop(id(self), None)
        if endpoint.owners:
            return defer.succeed(None)
        with _TABLE_LOCK:
            if _ENDPOINTS.get(endpoint.key) is endpoint:
                del _ENDPOINTS[endpoint.key]
        # self._endpoint is kept: a write still in flight counts into it and
        # does not bring back a table entry without a listener
        return endpoint.stop_listening()

    def thd_postStatsValues(self, points: list[Point]) -> WriteReport:
        """Count a batch.  Raises only before counting anything (a retried batch counts once)."""
        if not self._inited:
            raise BackendConfigurationError(f"{self.name} is not configured")
        endpoint = self._get_endpoint()
        report = WriteReport()
        now = time.monotonic()
        with endpoint.lock:
            for point in points:
                try:
                    self._count(endpoint, point, report, now)
                except Exception as e:  # an odd point must not block the others
                    report.problems.append(PointProblem(str(point.series), "*", f"{type(e).__name__}: {e}"))
                    report.rejected_points += 1
            endpoint._expire(now)
        return report

    def thd_postStatsValue(
        self, post_data: dict[str, Any], series_name: str, context: dict[str, Any] | None = None
    ) -> None:
        """Count one point."""
        for p in self.thd_postStatsValues([Point(series_name, post_data, context or {})]).problems:
            log.msg(f"{self.name}: {p.series} {p.field}: {p.reason}")

    def _count(self, endpoint: _Endpoint, point: Point, report: WriteReport, now: float) -> None:
        """Count ``point`` into the metrics of ``endpoint``; its unusable values into ``report``."""
        series = point.series
        fields = point.fields if isinstance(point.fields, dict) else {"value": point.fields}
        tags = point.tags if isinstance(point.tags, dict) else {}
        found = _series_kind(series, tags)
        if found is None:
            for name, value in fields.items():
                if isinstance(value, (bool, int, float)):
                    try:
                        endpoint.stat.labels(series, str(name)).set(float(value))
                    except OverflowError:
                        report.problems.append(
                            PointProblem(series, str(name), "too large for a float; not exported")
                        )
            return
        builder, kind = found
        number = str(tags.get("build_number", ""))

        def seconds(field: str, units: dict[Any, float]) -> float | None:
            value = _number(fields.get(field))
            if value is None or value < 0:
                if fields.get(field) is not None:
                    report.problems.append(
                        PointProblem(series, field, "not a finite number >= 0; not exported")
                    )
                return None
            return value * units.get(builder, units.get(_ALL, 1.0))

        usable = True
        if kind == "build-times":
            duration, queue = (
                seconds("duration", self._duration_units),
                seconds("queue-time", self._queue_units),
            )
            if duration is not None:
                waits = _ALL in self._results_for or builder in self._results_for
                endpoint.count_duration(builder, number, duration, waits, now)
            if queue is not None:
                endpoint.queue.labels(builder).observe(queue)
            usable = duration is not None or queue is not None or not {"duration", "queue-time"} & set(fields)
        elif kind == "build-results":
            endpoint.count_result(builder, number, _result_name(fields))
        elif kind == "step-times":
            step = tags.get("step_name")
            value = seconds("duration", self._step_units)
            usable = value is not None
            if value is not None:
                endpoint.steps.labels(builder, "unknown" if step is None else str(step)).observe(value)
        else:
            for field, outcome in (("tests_passed", "passed"), ("tests_failed", "failed")):
                count = fields.get(field)
                if isinstance(count, int) and not isinstance(count, bool) and count >= 0:
                    endpoint.tests.labels(builder, outcome).inc(count)
                elif count is not None:
                    report.problems.append(PointProblem(series, field, "not an integer >= 0; not exported"))
        if not usable:
            report.rejected_points += 1


def _number(value: Any) -> float | None:
    """A finite int or float (not a bool) as float, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _series_kind(series: str, tags: dict[str, Any]) -> tuple[str, str] | None:
    """(builder, kind) for the series this backend turns into named metrics."""
    builder = tags.get("builder_name")
    for kind in _SERIES_KINDS:
        name = series[: -len(kind) - 1] if series.endswith("-" + kind) else ""
        if name and (builder is None or builder == name):
            return name, kind
    return None


def _valid_interface(interface: str) -> bool:
    try:
        return interface == "localhost" or bool(ipaddress.ip_address(interface))
    except ValueError:
        return False


def _checked_buckets(buckets: Any) -> tuple[float, ...] | None:
    if isinstance(buckets, (str, bytes)) or not isinstance(buckets, Sequence):
        return None
    if any(isinstance(b, bool) or not isinstance(b, (int, float)) or math.isnan(b) for b in buckets):
        return None
    values = [float(b) for b in buckets]
    if values and values[-1] == math.inf:
        values.pop()  # the library adds +Inf itself
    if not values or any(math.isinf(v) for v in values) or any(a >= b for a, b in zip(values, values[1:])):
        return None
    return tuple(values)


def _units_of(captures: Any, class_name: str) -> dict[Any, float]:
    """builder (``_ALL``: every one) -> seconds per unit of the ``report_in`` of ``class_name`` captures."""
    units: dict[Any, float] = {}
    for cap in captures if isinstance(captures, (list, tuple)) else ():
        if any(c.__name__ == class_name for c in type(cap).__mro__):
            name = getattr(cap, "_builder_name", None)
            report_in = getattr(cap, "report_in", "seconds")
            # a wrong report_in is the capture's config error; never raise here too
            units[_ALL if name is None else str(name)] = (
                _UNIT_SECONDS.get(report_in, 1.0) if isinstance(report_in, str) else 1.0
            )
    return units


def _result_name(fields: dict[str, Any]) -> str:
    """The result label: the ``result`` name, else the name of the ``results`` code, else unknown."""
    name, code = fields.get("result"), fields.get("results")
    if isinstance(name, str) and name:
        return name
    if isinstance(code, int) and not isinstance(code, bool) and 0 <= code < len(Results):
        return Results[code]
    return "unknown"
