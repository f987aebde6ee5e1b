"""Prometheus backend: points become metrics served at ``http://interface:port/metrics``.

Prometheus pulls: instead of writing points somewhere, this backend updates
counters, histograms and gauges in a ``prometheus_client`` registry of its own,
and the master's reactor serves that registry as text to whoever scrapes it.

==================================  =========  ===============  ==========================================
metric                              type       labels           from
==================================  =========  ===============  ==========================================
buildbot_build_duration_seconds     histogram  builder, result  ``<builder>-build-times`` field ``duration``
buildbot_builds_total               counter    builder, result  ``<builder>-build-results`` (``result``)
buildbot_build_queue_seconds        histogram  builder          ``<builder>-build-times`` field ``queue-time``
buildbot_step_duration_seconds      histogram  builder, step    ``<builder>-step-times`` field ``duration``
buildbot_tests_total                counter    builder, outcome ``<builder>-test-results`` fields
                                                                ``tests_passed``/``tests_failed``
buildbot_stat                       gauge      series, field    other series: last value of numeric fields
buildbot_stats_points_total         counter    backend, state   the StatsService's delivery counters
buildbot_stats_pending_points       gauge      backend          the StatsService's delivery counters
==================================  =========  ===============  ==========================================

Joining duration and result: the build-times and build-results points of one
build come from two captures and may reach the backend in different batches.
A duration waits (at most :data:`JOIN_WAIT` seconds, at most :data:`JOIN_MAX`
builds) for the result of the same ``builder_name`` + ``build_number`` when
this backend has a build-results capture for that builder; otherwise, or when
the wait runs out, it is observed with ``result="unknown"``.

Durations and queue times are converted to seconds with the ``report_in`` of
this backend's ``CaptureBuildDuration``, ``CaptureStepDuration`` or
``CaptureBuildQueueTime`` for the builder (seconds when unknown, e.g. when the
value comes from a capture of another backend or a custom capture).

One registry and one listener per ``(interface, port)`` in the process: a
``buildbot reconfig`` that creates a new backend object on the same port keeps
the counts and the listening socket; a new port moves the listener (counts then
start from zero on the new port, as for a new target).  Counting happens after
every point of a batch was understood, and nothing after it raises, so a batch
is never counted twice by one process.  Points spooled but not acknowledged
when the master died are delivered again after the restart and counted again by
the new process: Prometheus sees a counter reset and ``increase()`` over the
restart may count those builds twice.
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
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.python import log
from twisted.web import pages, resource, server
from zope.interface import implementer

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


# -- the endpoint: registry, metrics and listener of one (interface, port) -----


class _DeliveryCollector:
    """``buildbot_stats_points_total`` and ``..._pending_points`` read at scrape time."""

    def __init__(self, endpoint: _Endpoint) -> None:
        self._endpoint = endpoint

    def _families(self) -> tuple[CounterMetricFamily, GaugeMetricFamily]:
        return (
            CounterMetricFamily(
                "buildbot_stats_points",
                "Points of each buildbot_stats backend by delivery state, since the master started.",
                labels=["backend", "state"],
            ),
            GaugeMetricFamily(
                "buildbot_stats_pending_points",
                "Points of each buildbot_stats backend not yet accepted by it.",
                labels=["backend"],
            ),
        )

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        points, pending = self._families()
        services = self._endpoint.services()
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


class _MetricsPage(resource.Resource):
    isLeaf = True

    def __init__(self, endpoint: _Endpoint) -> None:
        super().__init__()
        self._endpoint = endpoint

    def render_GET(self, request: Any) -> bytes:
        try:
            body = self._endpoint.exposition()
        except Exception as e:
            log.msg(f"buildbot_stats: Prometheus exposition failed: {type(e).__name__}: {e}")
            request.setResponseCode(500)
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            return b"exposition failed\n"
        request.setHeader(b"Content-Type", CONTENT_TYPE)
        return body


class _RootPage(resource.Resource):
    def getChild(self, path: bytes, request: Any) -> resource.Resource:
        if path == b"":
            return self
        return pages.notFound()

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return b"buildbot_stats: metrics are at /metrics\n"


class _QuietSite(server.Site):
    """A Site that does not write an access log line per scrape into twistd.log."""

    noisy = False

    def log(self, request: Any) -> None:
        pass


class _Endpoint:
    """The registry, metrics, join state and listener of one ``(interface, port)``."""

    def __init__(self, key: Key, buckets: tuple[float, ...]) -> None:
        self.key = key
        self.lock = threading.Lock()
        self.registry = CollectorRegistry()
        self.builds = Counter(
            "buildbot_builds",
            "Finished builds by builder and result.",
            ["builder", "result"],
            registry=self.registry,
        )
        self.tests = Counter(
            "buildbot_tests",
            "Test results reported by builds, by builder and outcome (passed, failed).",
            ["builder", "outcome"],
            registry=self.registry,
        )
        self.stat = Gauge(
            "buildbot_stat",
            "The last value of each numeric field of other captured series.",
            ["series", "field"],
            registry=self.registry,
        )
        self.buckets: tuple[float, ...] = ()
        self._histograms: list[Histogram] = []
        self.set_buckets(buckets)
        self.registry.register(_DeliveryCollector(self))
        # id(backend) -> (backend, service); the service is None until started
        self.owners: dict[int, tuple[Any, Any]] = {}
        self.port: Any = None
        self.site = _QuietSite(self._root())
        self.results: OrderedDict[tuple[str, str], str] = OrderedDict()
        self.waiting: OrderedDict[tuple[str, str], tuple[float, str, float]] = OrderedDict()

    def _root(self) -> resource.Resource:
        root = _RootPage()
        root.putChild(b"metrics", _MetricsPage(self))  # type: ignore[arg-type]
        return root

    def set_buckets(self, buckets: tuple[float, ...]) -> bool:
        """Use ``buckets`` for the histograms; True if they changed (histograms restart)."""
        with self.lock:
            if buckets == self.buckets:
                return False
            for h in self._histograms:
                self.registry.unregister(h)
            self.duration = Histogram(
                "buildbot_build_duration_seconds",
                "Build durations by builder and result.",
                ["builder", "result"],
                buckets=buckets,
                registry=self.registry,
            )
            self.queue = Histogram(
                "buildbot_build_queue_seconds",
                "Time build requests waited before their build started, by builder.",
                ["builder"],
                buckets=buckets,
                registry=self.registry,
            )
            self.steps = Histogram(
                "buildbot_step_duration_seconds",
                "Step durations by builder and step name.",
                ["builder", "step"],
                buckets=buckets,
                registry=self.registry,
            )
            self._histograms = [self.duration, self.queue, self.steps]
            changed = bool(self.buckets)
            self.buckets = buckets
            return changed

    def services(self) -> list[Any]:
        found: dict[int, Any] = {}
        for _, service in list(self.owners.values()):
            if service is not None and hasattr(service, "backend_counters"):
                found.setdefault(id(service), service)
        return list(found.values())

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
        if port is None:
            return defer.succeed(None)
        return defer.maybeDeferred(port.stopListening)

    # -- counting (called with self.lock held) -----------------------------

    def apply(self, ops: list[tuple[Any, ...]], now: float) -> None:
        for op in ops:
            kind = op[0]
            if kind == "result":
                _, builder, number, result = op
                self.builds.labels(builder, result).inc()
                waiting = self.waiting.pop((builder, number), None)
                if waiting is not None:
                    self.duration.labels(builder, result).observe(waiting[2])
                else:
                    self._remember(self.results, (builder, number), result)
            elif kind == "duration":
                _, builder, number, seconds, wait = op
                result = self.results.pop((builder, number), None)
                if result is not None:
                    self.duration.labels(builder, result).observe(seconds)
                elif wait:
                    self._remember(self.waiting, (builder, number), (now + JOIN_WAIT, builder, seconds))
                else:
                    self.duration.labels(builder, "unknown").observe(seconds)
            elif kind == "queue":
                self.queue.labels(op[1]).observe(op[2])
            elif kind == "step":
                self.steps.labels(op[1], op[2]).observe(op[3])
            elif kind == "tests":
                self.tests.labels(op[1], op[2]).inc(op[3])
            elif kind == "stat":
                self.stat.labels(op[1], op[2]).set(op[3])
        self._expire(now)

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
        endpoint = _ENDPOINTS.get(key)
        if endpoint is None:
            endpoint = _ENDPOINTS[key] = _Endpoint(key, buckets)
        return endpoint


# -- turning points into metric operations ------------------------------------


def _number(value: Any) -> float | None:
    """A finite int or float (not a bool) as float, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _series_kind(point: Point) -> tuple[str, str] | None:
    """(builder, kind) for the series this backend turns into named metrics."""
    series = point.series
    tags = point.tags if isinstance(point.tags, dict) else {}
    builder = tags.get("builder_name")
    for kind in _SERIES_KINDS:
        suffix = "-" + kind
        if isinstance(builder, str) and builder and series == builder + suffix:
            return builder, kind
        if builder is None and series.endswith(suffix) and len(series) > len(suffix):
            return series[: -len(suffix)], kind
    return None


# -- the backend ---------------------------------------------------------------


@implementer(IBackendLifecycle)
class PrometheusStorageService(StatsStorageBase):
    """Serves the captured statistics as Prometheus metrics (see the module docstring).

    ``port`` is the TCP port (1-65535, or 0 for any free port: handy in tests,
    useless for a Prometheus config), ``interface`` the address to listen on
    (loopback by default; ``"0.0.0.0"`` or ``"::"`` for every interface),
    ``buckets`` the upper bounds in seconds of the histograms' buckets.
    """

    def __init__(
        self,
        port: int = 9101,
        interface: str = "127.0.0.1",
        captures: Sequence[Any] = (),
        name: str | None = None,
        buckets: Sequence[float] | None = None,
    ) -> None:
        self._inited = False
        self.name = name or "PrometheusStorageService"
        self.captures = captures
        self.port = port
        self.interface = interface
        self.buckets: tuple[float, ...] = DEFAULT_BUCKETS
        self._endpoint: _Endpoint | None = None
        ok = True
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            config.error(f"{self.name}: port must be an integer from 1 to 65535 (or 0), not {port!r}")
            ok = False
        if not isinstance(interface, str) or not _valid_interface(interface):
            config.error(
                f"{self.name}: interface must be an IP address such as '127.0.0.1', '::1' or "
                f"'0.0.0.0' (or 'localhost'), not {interface!r}"
            )
            ok = False
        if buckets is not None:
            checked = _checked_buckets(buckets)
            if checked is None:
                config.error(
                    f"{self.name}: buckets must be a non-empty list of increasing numbers of "
                    f"seconds, not {buckets!r}"
                )
                ok = False
            else:
                self.buckets = checked
        self._results_for = _builders_of(captures, "CaptureBuildResults")
        self._duration_units = _units_of(captures, "CaptureBuildDuration")
        self._queue_units = _units_of(captures, "CaptureBuildQueueTime")
        self._step_units = _units_of(captures, "CaptureStepDuration")
        self._inited = ok

    def __repr__(self) -> str:
        return f"<PrometheusStorageService {self.name!r} {self.interface}:{self.port}>"

    @property
    def key(self) -> Key:
        interface = "127.0.0.1" if self.interface == "localhost" else self.interface
        return interface, self.port

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

    # -- the optional lifecycle hooks of IStatsStorage ------------------------

    def startBackend(self, service: Any) -> None:
        """Attach to the endpoint of this port and make sure it listens (in the reactor)."""
        if not self._inited:
            return
        # the endpoint of this port now (the one used before may have been closed)
        endpoint = self._endpoint = _endpoint(self.key, self.buckets)
        endpoint.owners[id(self)] = (self, service)
        if endpoint.set_buckets(self.buckets):
            log.msg(f"buildbot_stats: {self.name}: histogram buckets changed; the histograms restart at 0")
        master = getattr(service, "master", None)
        reactor = getattr(master, "reactor", None)
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
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

    # -- writing ---------------------------------------------------------------

    def thd_postStatsValues(self, points: list[Point]) -> WriteReport:
        """Count a batch.  Raises only before counting anything (a retried batch counts once)."""
        if not self._inited:
            raise BackendConfigurationError(f"{self.name} is not configured")
        endpoint = self._get_endpoint()
        report = WriteReport()
        ops: list[tuple[Any, ...]] = []
        for point in points:
            try:
                self._point_ops(point, ops, report)
            except Exception as e:  # an odd point must not block the others
                report.problems.append(PointProblem(str(point.series), "*", f"{type(e).__name__}: {e}"))
                report.rejected_points += 1
        try:
            with endpoint.lock:
                endpoint.apply(ops, time.monotonic())
        except Exception as e:  # never raise once counting started: a retry would count twice
            log.msg(f"buildbot_stats: {self.name}: counting failed: {type(e).__name__}: {e}")
        return report

    def thd_postStatsValue(
        self, post_data: dict[str, Any], series_name: str, context: dict[str, Any] | None = None
    ) -> None:
        """Count one point."""
        report = self.thd_postStatsValues([Point(series_name, post_data, context or {})])
        for p in report.problems:
            log.msg(f"{self.name}: {p.series} {p.field}: {p.reason}")

    def _point_ops(self, point: Point, ops: list[tuple[Any, ...]], report: WriteReport) -> None:
        fields = point.fields if isinstance(point.fields, dict) else {"value": point.fields}
        found = _series_kind(point)
        if found is None:
            for name, value in fields.items():
                if isinstance(value, (bool, int, float)):
                    try:
                        ops.append(("stat", point.series, str(name), float(value)))
                    except OverflowError:
                        report.problems.append(
                            PointProblem(point.series, str(name), "too large for a float; not exported")
                        )
            return
        builder, kind = found
        number = str(point.tags.get("build_number", "")) if isinstance(point.tags, dict) else ""
        usable = False

        def seconds(field: str, unit: float = 1.0) -> float | None:
            value = _number(fields.get(field))
            if value is None or value < 0:
                if fields.get(field) is not None:
                    report.problems.append(
                        PointProblem(point.series, field, "not a finite number >= 0; not exported")
                    )
                return None
            return value * unit

        if kind == "build-times":
            if "duration" in fields:
                value = seconds("duration", _unit_of(self._duration_units, builder))
                if value is not None:
                    ops.append(("duration", builder, number, value, self._waits_for_result(builder)))
                    usable = True
            if "queue-time" in fields:
                value = seconds("queue-time", _unit_of(self._queue_units, builder))
                if value is not None:
                    ops.append(("queue", builder, value))
                    usable = True
            usable = usable or not ({"duration", "queue-time"} & set(fields))
        elif kind == "build-results":
            ops.append(("result", builder, number, _result_name(fields)))
            usable = True
        elif kind == "step-times":
            step = point.tags.get("step_name") if isinstance(point.tags, dict) else None
            value = seconds("duration", _unit_of(self._step_units, builder))
            if value is not None:
                ops.append(("step", builder, str(step if step is not None else "unknown"), value))
                usable = True
        elif kind == "test-results":
            usable = True
            for field, outcome in (("tests_passed", "passed"), ("tests_failed", "failed")):
                count = fields.get(field)
                if count is None:
                    continue
                if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                    report.problems.append(
                        PointProblem(point.series, field, "not an integer >= 0; not exported")
                    )
                    continue
                ops.append(("tests", builder, outcome, count))
        if not usable:
            report.rejected_points += 1

    def _waits_for_result(self, builder: str) -> bool:
        return _ALL in self._results_for or builder in self._results_for


# -- helpers -------------------------------------------------------------------


def _valid_interface(interface: str) -> bool:
    if interface == "localhost":
        return True
    try:
        ipaddress.ip_address(interface)
    except ValueError:
        return False
    return True


def _checked_buckets(buckets: Any) -> tuple[float, ...] | None:
    if isinstance(buckets, (str, bytes)) or not isinstance(buckets, Sequence):
        return None
    values = []
    for b in buckets:
        if isinstance(b, bool) or not isinstance(b, (int, float)) or math.isnan(b):
            return None
        values.append(float(b))
    if values and values[-1] == math.inf:
        values.pop()  # the library adds +Inf itself
    if not values or any(math.isinf(v) for v in values):
        return None
    if any(a >= b for a, b in zip(values, values[1:])):
        return None
    return tuple(values)


def _builders_of(captures: Any, class_name: str) -> set[Any]:
    """The builders covered by captures of ``class_name`` (or a subclass); ``_ALL`` for all."""
    found: set[Any] = set()
    for cap in captures if isinstance(captures, (list, tuple)) else ():
        if any(c.__name__ == class_name for c in type(cap).__mro__):
            name = getattr(cap, "_builder_name", None)
            found.add(_ALL if name is None else str(name))
    return found


def _units_of(captures: Any, class_name: str) -> dict[Any, float]:
    """builder (or ``_ALL``) -> seconds per unit of the ``report_in`` of captures of ``class_name``."""
    units: dict[Any, float] = {}
    for cap in captures if isinstance(captures, (list, tuple)) else ():
        if any(c.__name__ == class_name for c in type(cap).__mro__):
            name = getattr(cap, "_builder_name", None)
            report_in = getattr(cap, "report_in", "seconds")
            # a wrong report_in is the capture's config error; never raise here too
            unit = _UNIT_SECONDS.get(report_in, 1.0) if isinstance(report_in, str) else 1.0
            units[_ALL if name is None else str(name)] = unit
    return units


def _unit_of(units: dict[Any, float], builder: str) -> float:
    """Seconds per unit of ``builder``'s values (its own capture's, else an AllBuilders one's)."""
    return units.get(builder, units.get(_ALL, 1.0))


_RESULT_NAMES = ("success", "warnings", "failure", "skipped", "exception", "retry", "cancelled")


def _result_name(fields: dict[str, Any]) -> str:
    """The result label: the ``result`` name, else the name of the ``results`` code, else unknown."""
    name = fields.get("result")
    if isinstance(name, str) and name:
        return name
    code = fields.get("results")
    if isinstance(code, int) and not isinstance(code, bool) and 0 <= code < len(_RESULT_NAMES):
        return _RESULT_NAMES[code]
    return "unknown"
