"""Prometheus backend: counts per ``(interface, port)``, served at /metrics (docs/prometheus.rst)."""

from __future__ import annotations

import bisect
import io
import ipaddress
import itertools
import math
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any, Optional

from buildbot import config
from twisted.internet import defer, threads
from twisted.internet.error import CannotListenError
from twisted.protocols import basic, policies
from twisted.python import failure, log
from twisted.python.threadpool import ThreadPool
from twisted.web import pages, resource, server
from zope.interface import implementer

from buildbot_stats.arguments import reject_unknown
from buildbot_stats.capture.base import REPORT_IN_DIVISORS
from buildbot_stats.capture.live import LiveSnapshot, result_name
from buildbot_stats.errors import BackendConfigurationError
from buildbot_stats.point import Point, PointProblem, is_int
from buildbot_stats.storage_backends.base import BatchBackend, IBackendLifecycle, WriteReport

__all__ = ["DEFAULT_BUCKETS", "DEFAULT_STEP_BUCKETS", "PrometheusStorageService"]

#: Build duration and queue time buckets (seconds): seconds to hours; ``+Inf`` is added.
DEFAULT_BUCKETS: tuple[float, ...] = (1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)
#: Step duration buckets (seconds): a tenth of a second to hours.
DEFAULT_STEP_BUCKETS: tuple[float, ...] = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)
#: ``buildbot_stat`` label sets (series, field) kept; values of more are counted, not kept.
DEFAULT_MAX_STAT_SERIES = 10_000
#: Connections served at once; one more is closed at once.
DEFAULT_MAX_CONNECTIONS = 10
#: Seconds a build's duration (or result) waits for the other half, and how many builds may wait at once.
JOIN_WAIT = 60.0
JOIN_MAX = 10_000
#: Seconds a rendered exposition may be served again.
MAX_AGE = 1.0
#: Seconds a client has to read its answer before its connection is cut.
SEND_TIMEOUT = 60.0

#: The text format every Prometheus 2.x reads.
CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
_STATES = ("captured", "written", "retried", "dropped")
_SERIES_KINDS = ("build-times", "build-results", "step-times", "test-results")
_ALL = object()  # "every builder" in the per-builder capture tables
BUILDS = "buildbot_build_duration_seconds"
QUEUE = "buildbot_build_queue_seconds"
STEPS = "buildbot_step_duration_seconds"
#: histogram -> (help, labels, whether it may have the worker label)
_HISTOGRAMS = {
    BUILDS: ("Build durations by builder and result.", ["builder", "result"], True),
    QUEUE: ("Time build requests waited before their build started.", ["builder"], False),
    STEPS: ("Step durations by builder and step name.", ["builder", "step"], True),
}
C, G = "counter", "gauge"
#: the other metrics: name -> (type, help, labels); docs/prometheus.rst lists them all
_METRICS: dict[str, tuple[str, str, list[str]]] = {
    "buildbot_builds": (C, "Finished builds.", ["builder", "result"]),
    "buildbot_tests": (C, "Test results by outcome (passed, failed).", ["builder", "outcome"]),
    "buildbot_stat": (G, "The last value of each numeric field of other series.", ["series", "field"]),
    "buildbot_stat_dropped": (C, "Values not exported: buildbot_stat had max_stat_series label sets.", []),
    "buildbot_stats_points": (C, "Points of each backend by delivery state.", ["backend", "state"]),
    "buildbot_stats_pending_points": (G, "Points each backend has not yet accepted.", ["backend"]),
    "buildbot_workers_connected": (G, "Workers connected to this master.", []),
    "buildbot_workers_busy": (G, "Connected workers running at least one build.", []),
    "buildbot_build_requests_pending": (G, "Build requests not yet claimed.", ["builder"]),
    "buildbot_build_request_oldest_pending_seconds": (G, "Age of the oldest unclaimed one.", ["builder"]),
    "buildbot_builds_running": (G, "Builds running on this master.", ["builder"]),
    "buildbot_build_longest_running_seconds": (G, "Elapsed time of the longest running.", ["builder"]),
    "buildbot_worker_builds_running": (G, "Builds each worker runs.", ["worker"]),
    "buildbot_worker_builds": (C, "Builds each worker finished, by result.", ["worker", "result"]),
}

Key = tuple[str, int]
State = tuple[list[tuple[str, dict[str, int]]], Optional[LiveSnapshot]]  # Python 3.9 evaluates it
Samples = Iterable[tuple[tuple[str, ...], float]]

# (interface, port) -> the endpoint serving it; shared by the backends of one process
_ENDPOINTS: dict[Key, _Endpoint] = {}
_TABLE_LOCK = threading.Lock()


class _Limited(policies.WrappingFactory):
    """At most ``limit`` connections: a public bind cannot use up the master's file descriptors."""

    limit = DEFAULT_MAX_CONNECTIONS

    def buildProtocol(self, addr: Any) -> Any:
        return super().buildProtocol(addr) if len(self.protocols) < self.limit else None


class _Endpoint(resource.Resource):
    """The counts, join tables, listener, render thread and pages of one ``(interface, port)``."""

    isLeaf = True

    def __init__(self, key: Key) -> None:
        super().__init__()
        self.key = key
        self.lock = threading.Lock()  # the counts are written by the delivery threads
        # buildbot_builds: (builder, result) -> builds; buildbot_tests: (builder, outcome) -> tests
        self.counts = {name: Counter[tuple[str, str]]() for name in ("buildbot_builds", "buildbot_tests")}
        self.histograms: dict[str, dict[tuple[str, ...], list[float]]] = {}  # labels -> buckets + [sum]
        self.bounds: dict[str, tuple[float, ...]] = {}
        self.settings: Any = None  # the backend started last, whose arguments apply
        self.stats: dict[tuple[str, str], float] = {}  # buildbot_stat: (series, field) -> last value
        self.stat_dropped = 0
        self.owners: dict[int, Any] = {}  # id(backend) -> its StatsService
        self.port: Any = None
        self.reactor: Any = None
        self.pool = ThreadPool(0, 1, "buildbot_stats Prometheus")
        self.site = server.Site(self, timeout=30)  # a silent or idle connection frees its slot soon
        self.site.noisy = False
        self.site.log = lambda request: None  # type: ignore[method-assign]  # no log line per scrape
        self.factory = _Limited(self.site)
        # (builder, build number) -> (result or None, duration or None, worker, deadline): half a build
        self.waiting: OrderedDict[tuple[str, str], tuple[Any, Any, Any, float]] = OrderedDict()
        self.fresh: tuple[float, bytes] | None = None  # (when its state was read, the exposition)
        self.waiters: list[Any] = []  # the requests waiting for the render in progress

    def configure(self, backend: PrometheusStorageService) -> bool:
        """Take the settings of ``backend`` (the last started); True if the histograms restart."""
        bounds = {BUILDS: backend.buckets, QUEUE: backend.buckets, STEPS: backend.step_buckets}
        with self.lock:
            old, self.settings = self.settings, backend
            self.factory.limit = backend.max_connections
            self.stats = dict(itertools.islice(self.stats.items(), backend.max_stat_series))
            if old is not None and (bounds, backend.worker_label) == (self.bounds, old.worker_label):
                return False
            self.bounds, self.histograms = bounds, {name: {} for name in _HISTOGRAMS}
            return old is not None

    def render_GET(self, request: Any) -> Any:
        if request.postpath[:1] == [b"metrics"]:
            self.answer(request)
            return server.NOT_DONE_YET
        if any(request.postpath):
            return pages.notFound().render(request)  # type: ignore[call-arg]
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return b"buildbot_stats: metrics are at /metrics\n"

    def answer(self, request: Any) -> None:
        """With the copy rendered at most MAX_AGE ago, else the one being rendered, else a new one."""
        cut = self.reactor.callLater(SEND_TIMEOUT, request.channel.transport.abortConnection)  # not read
        request.notifyFinish().addBoth(lambda _: cut.cancel() if cut.active() else None)
        if self.fresh is not None and time.monotonic() - self.fresh[0] <= MAX_AGE:
            return _send(request, self.fresh[1])
        self.waiters.append(request)
        if len(self.waiters) == 1:
            taken, state = time.monotonic(), self.state()
            rendered = threads.deferToThreadPool(self.reactor, self.pool, self.exposition, state)
            rendered.addBoth(self._rendered, taken)

    def _rendered(self, body: bytes | failure.Failure, taken: float) -> None:
        if isinstance(body, bytes):
            self.fresh = (taken, body)
        else:
            log.err(body, "buildbot_stats: cannot render the Prometheus metrics")
        waiters, self.waiters = self.waiters, []
        for request in waiters:
            _send(request, body)

    def state(self) -> State:
        """What the StatsServices say now (read in the reactor): delivery counters, live state."""
        services = list({id(s): s for s in list(self.owners.values())}.values())
        counters: list[tuple[str, dict[str, int]]] = []
        live = None
        for service in services:
            prefix = "" if len(services) == 1 else f"{getattr(service, 'name', '?')}/"
            try:  # a scrape must never fail for this
                counters += [(prefix + k, v) for k, v in getattr(service, "backend_counters", dict)().items()]
                live = live or getattr(service, "live_snapshot", lambda: None)()
            except Exception as e:
                log.msg(f"buildbot_stats: cannot read the StatsService's state: {type(e).__name__}: {e}")
        return counters, live

    def exposition(self, state: State) -> bytes:
        """The exposition of a copy of the counts and of ``state`` (in the endpoint's thread)."""
        with self.lock:
            self.expire(time.monotonic())
            samples: dict[str, Samples] = {
                **{name: list(counts.items()) for name, counts in self.counts.items()},
                "buildbot_stat": list(self.stats.items()),
                "buildbot_stat_dropped": [((), self.stat_dropped)],
            }
            histograms = [
                (n, self.bounds[n], [(k, v[:]) for k, v in h.items()]) for n, h in self.histograms.items()
            ]
            worker_label = self.settings.worker_label
        counters, live = state
        samples["buildbot_stats_points"] = (((b, s), v.get(s, 0)) for b, v in counters for s in _STATES)
        samples["buildbot_stats_pending_points"] = (((b,), v.get("pending", 0)) for b, v in counters)
        if live is not None:
            samples.update(_live_samples(live))
        # written here: prometheus_client's objects per sample made the cycle collector hold the GIL
        out: list[str] = []
        for name, rows in samples.items():
            kind, help, labels = _METRICS[name]
            name += "_total" if kind == C else ""
            out.append(f"# HELP {name} {help}\n# TYPE {name} {kind}\n")
            out.extend(_sample(name, _labels(labels, values), value) for values, value in rows)
        for name, bounds, buckets in histograms:
            help, labels, may_have_worker = _HISTOGRAMS[name]
            labels = labels + ["worker"] * (worker_label and may_have_worker)
            out.append(f"# HELP {name} {help}\n# TYPE {name} histogram\n")
            les = [f'le="{float(b)!r}"' for b in bounds] + ['le="+Inf"']
            for values, row in buckets:
                inner = _labels(labels, values)
                for le, count in zip(les, itertools.accumulate(row[:-1])):
                    out.append(_sample(f"{name}_bucket", f"{inner},{le}" if inner else le, count))
                out.append(_sample(f"{name}_sum", inner, row[-1]) + _sample(f"{name}_count", inner, count))
        return "".join(out).encode()

    @property
    def url(self) -> str:
        interface, port = self.key
        port = port if self.port is None else self.port.getHost().port
        return f"http://{f'[{interface}]' if ':' in interface else interface}:{port}/metrics"

    def listen(self, reactor: Any) -> None:
        interface, port = self.key
        try:
            if self.port is None:
                self.reactor, self.port = reactor, reactor.listenTCP(port, self.factory, interface=interface)
                self.pool.start()
                log.msg(f"buildbot_stats: Prometheus metrics at {self.url}")
        except CannotListenError as e:
            log.msg(
                f"buildbot_stats: cannot serve Prometheus metrics on {interface}:{port} ({e.socketError}); "
                "values are still counted, the next reconfig tries again"
            )

    def stop_listening(self) -> defer.Deferred:
        port, self.port = self.port, None
        if port is None:
            return defer.succeed(None)
        self.pool.stop()
        return defer.maybeDeferred(port.stopListening)

    def set_stat(self, series: str, field: str, value: float) -> None:
        """Keep the last value of a ``buildbot_stat`` label set; past the cap, count it instead."""
        if (series, field) in self.stats or len(self.stats) < self.settings.max_stat_series:
            self.stats[series, field] = value
            return
        self.stat_dropped += 1
        if self.stat_dropped == 1:
            log.msg(
                f"buildbot_stats: buildbot_stat has {len(self.stats)} label sets (max_stat_series): "
                f"{series!r} field {field!r} and later new ones are counted in buildbot_stat_dropped_total"
            )

    def observe(self, name: str, labels: tuple[str, ...], worker: Any, seconds: float) -> None:
        """Observe ``seconds`` under ``labels``, and ``worker`` if the histogram has that label."""
        if self.settings.worker_label and _HISTOGRAMS[name][2]:
            labels += (worker or "unknown",)
        row = self.histograms[name].setdefault(labels, [0.0] * (len(self.bounds[name]) + 2))
        row[bisect.bisect_left(self.bounds[name], seconds)] += 1
        row[-1] += seconds

    def join(self, builder: str, number: str, result: Any, seconds: Any, worker: Any) -> None:
        """Observe a build's duration under its result once both came: the first waits for the other."""
        other = self.waiting.pop((builder, number), None)
        if other is None or (other[0] is None) == (result is None):  # nothing, or the same half again
            self.waiting[builder, number] = (result, seconds, worker, time.monotonic() + JOIN_WAIT)
        elif result is None:  # the result came first, with the build's worker
            self.observe(BUILDS, (builder, other[0]), other[2] or worker, seconds)
        else:
            self.observe(BUILDS, (builder, result), worker or other[2], other[1])

    def expire(self, now: float) -> None:
        """Drop the halves that waited JOIN_WAIT (or too many wait): a duration counts as "unknown"."""
        while self.waiting:
            (builder, _), (result, seconds, worker, deadline) = next(iter(self.waiting.items()))
            if deadline > now and len(self.waiting) <= JOIN_MAX:
                break
            self.waiting.popitem(last=False)
            if result is None:
                self.observe(BUILDS, (builder, "unknown"), worker, seconds)


def _send(request: Any, body: bytes | failure.Failure) -> None:
    """Send ``body`` (a failure: a 500) in pieces as the client reads them, not a copy per client."""
    if request.channel is None:  # the client went away meanwhile
        return
    if isinstance(body, failure.Failure):
        request.setResponseCode(500)
        body = b""
    request.setHeader(b"Content-Type", CONTENT_TYPE)
    request.setHeader(b"Content-Length", b"%d" % len(body))
    sending = basic.FileSender().beginFileTransfer(io.BytesIO(body), request)
    sending.addCallbacks(lambda _: request.finish(), lambda _: None)  # None: the client left


def _labels(names: list[str], values: Iterable[Any]) -> str:
    """``name="value"`` pairs, the values escaped as the text format wants."""
    escaped = (str(v).replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"") for v in values)
    return ",".join(f'{n}="{v}"' for n, v in zip(names, escaped))


def _sample(name: str, labels: str, value: float) -> str:
    return f"{name}{{{labels}}} {float(value)!r}\n" if labels else f"{name} {float(value)!r}\n"


def _live_samples(live: LiveSnapshot) -> dict[str, Samples]:
    now = live.builders.items()  # builder -> BuilderLive
    return {
        "buildbot_workers_connected": [((), live.workers_connected)],
        "buildbot_workers_busy": [((), live.workers_busy)],
        "buildbot_build_requests_pending": [((b,), n.requests_pending) for b, n in now],
        "buildbot_build_request_oldest_pending_seconds": [((b,), n.oldest_pending_seconds) for b, n in now],
        "buildbot_builds_running": [((b,), n.builds_running) for b, n in now],
        "buildbot_build_longest_running_seconds": [((b,), n.longest_running_seconds) for b, n in now],
        "buildbot_worker_builds_running": [((w,), n) for w, n in live.worker_builds_running.items()],
        "buildbot_worker_builds": live.worker_builds_total.items(),
    }


@implementer(IBackendLifecycle)
class PrometheusStorageService(BatchBackend):
    """Serves the captured statistics as Prometheus metrics; ``port`` 0 takes any free port (see ``url``)."""

    #: the StatsService keeps live state (workers, queue, running builds) for a backend that asks
    wants_live_state = True

    def __init__(
        self,
        port: int = 9101,
        interface: str = "127.0.0.1",
        captures: Sequence[Any] = (),
        name: str | None = None,
        buckets: Sequence[float] | None = None,
        step_buckets: Sequence[float] | None = None,
        worker_label: bool = False,
        max_stat_series: int = DEFAULT_MAX_STAT_SERIES,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        **unknown: Any,
    ) -> None:
        reject_unknown(self, unknown)
        self.name = name or "PrometheusStorageService"
        self.captures = captures
        self.port = port
        self.interface = interface
        self.key: Key = ("127.0.0.1" if interface == "localhost" else interface, port)
        self.worker_label = worker_label
        self.max_stat_series = max_stat_series
        self.max_connections = max_connections
        self._endpoint: _Endpoint | None = None
        checked = DEFAULT_BUCKETS if buckets is None else _checked_buckets(buckets)
        checked_steps = DEFAULT_STEP_BUCKETS if step_buckets is None else _checked_buckets(step_buckets)
        self.buckets, self.step_buckets = checked or DEFAULT_BUCKETS, checked_steps or DEFAULT_STEP_BUCKETS
        ip = "an IP address such as '127.0.0.1', '::1' or '0.0.0.0' (or 'localhost')"
        seconds = "a non-empty list of increasing numbers of seconds"
        problems = [
            f"{self.name}: {arg} must be {want}, not {given!r}"
            for arg, given, ok, want in (
                ("port", port, is_int(port, 0, 65535), "an integer from 1 to 65535 (or 0)"),
                ("interface", interface, isinstance(interface, str) and _valid_interface(interface), ip),
                ("buckets", buckets, checked is not None, seconds),
                ("step_buckets", step_buckets, checked_steps is not None, seconds),
                ("worker_label", worker_label, isinstance(worker_label, bool), "True or False"),
                ("max_stat_series", max_stat_series, is_int(max_stat_series, 1), "an integer >= 1"),
                ("max_connections", max_connections, is_int(max_connections, 1), "an integer >= 1"),
            )
            if not ok
        ]
        for problem in problems:
            config.error(problem)
        self._inited = not problems
        self._results_for = _units_of(captures, "CaptureBuildResults")
        self._duration_units = _units_of(captures, "CaptureBuildDuration")
        self._queue_units = _units_of(captures, "CaptureBuildQueueTime")
        self._step_units = _units_of(captures, "CaptureStepDuration")

    def __repr__(self) -> str:
        return f"<PrometheusStorageService {self.name!r} {self.interface}:{self.port}>"

    @property
    def url(self) -> str:
        """The metrics URL (with the real port once listening on port 0)."""
        return self._get_endpoint().url

    def _get_endpoint(self, now: bool = False) -> _Endpoint:
        """The endpoint of this port (``now``: the one in the table now; an older one may be closed)."""
        if self._endpoint is None or now:
            with _TABLE_LOCK:
                if self.key not in _ENDPOINTS:
                    _ENDPOINTS[self.key] = _Endpoint(self.key)
                    _ENDPOINTS[self.key].configure(self)
                self._endpoint = _ENDPOINTS[self.key]
        return self._endpoint

    def startBackend(self, service: Any) -> None:
        """Attach to the endpoint of this port and make sure it listens (in the reactor)."""
        if not self._inited:
            return
        endpoint = self._get_endpoint(now=True)
        endpoint.owners[id(self)] = service
        if endpoint.configure(self):
            log.msg(f"buildbot_stats: {self.name}: histogram buckets or labels changed; histograms restart")
        endpoint.listen(service.master.reactor)

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
        # self._endpoint is kept: a write in flight counts into it, not into a new endpoint without listener
        return endpoint.stop_listening()

    def thd_postStatsValues(self, points: list[Point]) -> WriteReport:
        """Count a batch.  Raises only before counting anything (a retried batch counts once)."""
        if not self._inited:
            raise BackendConfigurationError(f"{self.name} is not configured")
        endpoint = self._get_endpoint()
        report = WriteReport()
        with endpoint.lock:
            for point in points:
                try:
                    self._count(endpoint, point, report)
                except Exception as e:  # an odd point must not block the others
                    report.problems.append(PointProblem(str(point.series), "*", f"{type(e).__name__}: {e}"))
                    report.rejected_points += 1
            endpoint.expire(time.monotonic())
        return report

    def _count(self, endpoint: _Endpoint, point: Point, report: WriteReport) -> None:
        """Count ``point`` into the metrics of ``endpoint``; its unusable values into ``report``."""
        series = point.series
        fields = point.fields if isinstance(point.fields, dict) else {"value": point.fields}
        tags = point.tags if isinstance(point.tags, dict) else {}
        builder, kind = _series_kind(series, tags)
        if kind is None:
            for name, value in fields.items():
                if isinstance(value, (bool, int, float)):
                    try:
                        endpoint.set_stat(series, str(name), float(value))
                    except OverflowError:
                        report.problems.append(
                            PointProblem(series, str(name), "too large for a float; not exported")
                        )
            return
        number, worker = str(tags.get("build_number", "")), tags.get("worker")

        def seconds(field: str, units: dict[Any, float]) -> float | None:
            value: Any = fields.get(field)
            if is_int(value, 0) or isinstance(value, float) and 0 <= value < math.inf:
                return float(value) * units.get(builder, units.get(_ALL, 1))
            if value is not None:
                report.problems.append(PointProblem(series, field, "not a finite number >= 0; not exported"))
            return None

        usable = True
        if kind == "build-times":
            duration = seconds("duration", self._duration_units)
            queue = seconds("queue-time", self._queue_units)
            if duration is not None and (_ALL in self._results_for or builder in self._results_for):
                endpoint.join(builder, number, None, duration, worker)  # its result comes too
            elif duration is not None:
                endpoint.observe(BUILDS, (builder, "unknown"), worker, duration)
            if queue is not None:
                endpoint.observe(QUEUE, (builder,), None, queue)
            usable = duration is not None or queue is not None or not {"duration", "queue-time"} & set(fields)
        elif kind == "build-results":  # the ``result`` name, else the name of the ``results`` code
            given = fields.get("result")
            result = given if isinstance(given, str) and given else result_name(fields.get("results", -1))
            endpoint.counts["buildbot_builds"][builder, result] += 1
            endpoint.join(builder, number, result, None, worker)
        elif kind == "step-times":
            step, value = tags.get("step_name"), seconds("duration", self._step_units)
            if usable := value is not None:
                endpoint.observe(STEPS, (builder, "unknown" if step is None else str(step)), worker, value)
        else:
            for field, outcome in (("tests_passed", "passed"), ("tests_failed", "failed")):
                count: Any = fields.get(field)
                if is_int(count, 0):
                    endpoint.counts["buildbot_tests"][builder, outcome] += count
                elif count is not None:
                    report.problems.append(PointProblem(series, field, "not an integer >= 0; not exported"))
        if not usable:
            report.rejected_points += 1


def _series_kind(series: str, tags: dict[str, Any]) -> tuple[str, str | None]:
    """(builder, kind) for the series this backend turns into named metrics, else (series, None)."""
    for kind in _SERIES_KINDS:
        name = series[: -len(kind) - 1]
        if series.endswith("-" + kind) and name and tags.get("builder_name") in (None, name):
            return name, kind
    return series, None


def _valid_interface(interface: str) -> bool:
    try:
        return interface == "localhost" or bool(ipaddress.ip_address(interface))
    except ValueError:
        return False


def _checked_buckets(buckets: Any) -> tuple[float, ...] | None:
    """Increasing seconds as floats (a last ``+Inf`` is dropped: it is added anyway), else None."""
    values = list(buckets) if isinstance(buckets, Sequence) and not isinstance(buckets, (str, bytes)) else []
    if values and values[-1] == math.inf:
        values.pop()
    finite = all(is_int(b, -(2**53), 2**53) or isinstance(b, float) and math.isfinite(b) for b in values)
    increasing = finite and all(a < b for a, b in zip(values, values[1:]))
    return tuple(float(b) for b in values) if values and increasing else None


def _units_of(captures: Any, class_name: str) -> dict[Any, float]:
    """builder (``_ALL``: every one) -> seconds per unit of the ``report_in`` of ``class_name`` captures."""
    units: dict[Any, float] = {}
    for cap in captures if isinstance(captures, (list, tuple)) else ():
        if any(c.__name__ == class_name for c in type(cap).__mro__):
            name, report_in = getattr(cap, "builder_name", None), getattr(cap, "report_in", "seconds")
            # a wrong report_in is the capture's config error; never raise here too
            units[_ALL if name is None else str(name)] = REPORT_IN_DIVISORS.get(str(report_in), 1)
    return units
