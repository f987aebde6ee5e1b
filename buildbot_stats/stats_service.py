"""The StatsService: registers captures on the MQ and owns the delivery queues."""

from __future__ import annotations

import itertools
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from buildbot import config
from buildbot.util import service
from twisted.internet import defer
from twisted.python import log, threadpool
from twisted.python.failure import Failure

from buildbot_stats.capture import YIELD_DATA, Capture
from buildbot_stats.delivery import Counters, DeliveryPolicy, DeliveryQueue, SpoolRunner
from buildbot_stats.errors import CaptureCallbackError, StorageBackendTypeError
from buildbot_stats.point import Clock, Point, to_ns
from buildbot_stats.spool import MemorySpool, SQLiteSpool
from buildbot_stats.storage_backends.base import is_storage_backend, start_backends, stop_backends

__all__ = ["DEFAULT_SPOOL_PATH", "StatsService"]

DEFAULT_SPOOL_PATH = "stats-spool.sqlite"
_BUILD_CACHE_SIZE = 256


@dataclass(frozen=True)
class ServiceOptions:
    """The delivery arguments of :class:`StatsService`, with their defaults."""

    spool_path: str | None = DEFAULT_SPOOL_PATH
    batch_size: int = 5000
    max_spool_points: int = 200_000
    max_retry_delay: float = 60.0
    flush_timeout: float = 10.0

    @classmethod
    def problems(cls, options: dict[str, Any]) -> list[str]:
        """What is wrong with ``options``, one message each (for ``config.error``)."""
        known = {f.name for f in fields(cls)}
        found = [f"unknown argument {name!r}" for name in options if name not in known]
        opts = cls(**{k: v for k, v in options.items() if k in known})
        if opts.spool_path is not None and not isinstance(opts.spool_path, str):
            found.append("spool_path must be a file path or None")
        for name in ("batch_size", "max_spool_points"):
            count = getattr(opts, name)
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                found.append(f"{name} must be an integer >= 1, not {count!r}")
        for name in ("max_retry_delay", "flush_timeout"):
            seconds = getattr(opts, name)
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:
                found.append(f"{name} must be a number of seconds >= 0, not {seconds!r}")
        return found


def _backend_name(backend: Any) -> str:
    return getattr(backend, "name", None) or type(backend).__name__


def _backend_keys(backends: Sequence[Any]) -> list[str]:
    """A stable key per backend (its name), made unique by a ``#n`` suffix."""
    keys: list[str] = []
    for backend in backends:
        base = _backend_name(backend)
        key, n = base, 1
        while key in keys:
            n += 1
            key = f"{base}#{n}"
        keys.append(key)
    return keys


class StatsService(service.BuildbotService):
    """Passes statistics captured on the master on to every storage backend.

    ``storage_backends`` is the list of backends; the other arguments tune
    delivery: ``spool_path`` (relative to the master's basedir; ``None`` keeps
    pending points in memory only), ``batch_size`` (points per write),
    ``max_spool_points`` (per backend, oldest dropped beyond it),
    ``max_retry_delay`` (seconds, the backoff cap) and ``flush_timeout``
    (seconds that ``stopService`` waits for pending writes).
    """

    # Buildbot requires a name; a default spares a traceback in checkconfig
    name = "StatsService"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.consumers: list[Any] = []
        self.registeredStorageServices: list[Any] = []
        self.queues: dict[str, DeliveryQueue] = {}
        self.clock = Clock()
        self._queue_of: dict[int, DeliveryQueue] = {}
        self._policy = DeliveryPolicy()
        self._flush_timeout = 10.0
        self._spool: SpoolRunner | None = None
        self._spool_pool: Any = None
        self._ids: Any = None
        self._builders: dict[Any, dict[str, Any]] = {}
        self._builder_waiters: dict[Any, list[defer.Deferred]] = {}
        self._builds: OrderedDict[Any, dict[str, Any]] = OrderedDict()
        self._retired = Counters()
        self._aliased_in_master = False
        self._orphans_logged: set[str] = set()
        self._unconfigured_logged: set[int] = set()
        self._spool_path: str | None = None

    def checkConfig(self, storage_backends: Sequence[Any] = (), **options: Any) -> None:  # type: ignore[override]
        if not isinstance(storage_backends, (list, tuple)):
            config.error(
                f"StatsService: storage_backends must be a list of storage backends, "
                f"not {type(storage_backends).__name__}"
            )
            return
        for backend in storage_backends:
            if not is_storage_backend(backend):
                raise StorageBackendTypeError(
                    f"StatsService: invalid storage backend {type(backend).__name__!r}: a storage "
                    "backend must subclass StatsStorageBase or provide IStatsStorage"
                )
            captures = getattr(backend, "captures", None)
            if not isinstance(captures, (list, tuple)) or not all(
                isinstance(c, Capture) or hasattr(c, "consume") for c in captures
            ):
                config.error(
                    f"StatsService: captures of backend {getattr(backend, 'name', backend)!r} "
                    "must be a list of Capture objects"
                )
        for message in ServiceOptions.problems(options):
            config.error(f"StatsService: {message}")

    @defer.inlineCallbacks
    def reconfigService(self, storage_backends: Sequence[Any] = (), **options: Any) -> Any:  # type: ignore[override]
        self.checkConfig(storage_backends, **options)
        opts = ServiceOptions(**options)
        log.msg(f"buildbot_stats: configuring StatsService {self.name!r} with backends {storage_backends!r}")
        previous, self.registeredStorageServices = self.registeredStorageServices, list(storage_backends)
        yield start_backends(self, self.registeredStorageServices, previous)
        self._policy = DeliveryPolicy(
            batch_size=opts.batch_size,
            max_spool_points=opts.max_spool_points,
            max_retry_delay=float(opts.max_retry_delay),
            min_retry_delay=min(0.5, float(opts.max_retry_delay)),
        )
        self._flush_timeout = float(opts.flush_timeout)
        if self._spool is None:
            yield self._open_spool(opts.spool_path)
            self._spool_path = opts.spool_path
        elif opts.spool_path != self._spool_path:
            log.msg("buildbot_stats: spool_path changed; the new path is used after a master restart")
        yield self._sync_queues()
        yield self.removeConsumers()
        yield self.registerConsumers()

    # -- spool and queues --------------------------------------------------

    def _spool_file(self, spool_path: str | None) -> str | None:
        if spool_path is None:
            return None
        basedir = getattr(self.master, "basedir", None) if self.master else None
        if basedir is None and not os.path.isabs(spool_path):
            return None
        return os.path.join(basedir or "", os.path.expanduser(spool_path))

    @defer.inlineCallbacks
    def _open_spool(self, spool_path: str | None) -> Any:
        reactor = self.master.reactor if self.master else None
        path = self._spool_file(spool_path)
        if path is None:
            if spool_path is not None:
                log.msg("buildbot_stats: no master basedir; pending points are kept in memory only")
            self._spool = SpoolRunner(MemorySpool(), reactor, None)
            self._ids = itertools.count(1)
            return
        pool = threadpool.ThreadPool(minthreads=1, maxthreads=1, name="buildbot_stats-spool")
        pool.start()
        runner = SpoolRunner(SQLiteSpool(path), reactor, pool)
        try:
            yield runner.run(runner.spool.thd_open)
            max_id = yield runner.run(runner.spool.thd_max_id)
        except Exception as e:
            pool.stop()
            log.msg(
                f"buildbot_stats: cannot open the spool {path} ({type(e).__name__}: {e}); "
                "pending points are kept in memory only"
            )
            self._spool = SpoolRunner(MemorySpool(), reactor, None)
            self._ids = itertools.count(1)
            return
        if runner.spool.set_aside:
            log.msg(
                f"buildbot_stats: the spool {path} could not be read; it was moved to "
                f"{runner.spool.set_aside} and a new one started"
            )
        self._spool_pool = pool
        self._spool = runner
        self._ids = itertools.count(max_id + 1)

    def _next_id(self) -> int:
        return next(self._ids)

    @defer.inlineCallbacks
    def _sync_queues(self) -> Any:
        assert self._spool is not None, "the spool is opened before the queues"
        backends = self.registeredStorageServices
        keys = _backend_keys(backends)
        old = self.queues
        self.queues = {}
        self._queue_of = {}
        for key, backend in zip(keys, backends):
            queue = old.pop(key, None)
            if queue is None:
                spool_key = f"{self.name}/{key}"
                queue = DeliveryQueue(
                    key, backend, self._spool, self.master.reactor, self._policy, self._next_id, spool_key
                )
                try:
                    segments, unreadable = yield self._spool.load(spool_key)
                except Exception as e:
                    # statistics must never keep the master from starting
                    log.msg(f"buildbot_stats: cannot read the spool for backend {key!r}: {e}")
                    segments, unreadable = [], 0
                if unreadable:
                    log.msg(
                        f"buildbot_stats: {unreadable} unreadable spool segment(s) of backend {key!r} "
                        "were moved to the table buildbot_stats_unreadable"
                    )
                queue.restore(segments)
            else:
                queue.backend = backend
                queue.policy = self._policy
            self.queues[key] = queue
            self._queue_of[id(backend)] = queue
        for queue in old.values():
            # A backend removed from the configuration: its points stay spooled
            # and are sent if a backend of that name comes back.
            yield queue.stop(self._flush_timeout)
            self._retired.add(queue.counters)
        yield self._log_orphans()

    @defer.inlineCallbacks
    def _log_orphans(self) -> Any:
        """Say so when the spool holds points of backends this service no longer has."""
        spool = self._spool
        if spool is None:
            return
        try:
            counts = yield spool.run(spool.spool.thd_backends)
        except Exception:
            return
        mine = f"{self.name}/"
        for spool_key, n in sorted(counts.items()):
            key = spool_key[len(mine) :]
            if spool_key.startswith(mine) and key not in self.queues and key not in self._orphans_logged:
                self._orphans_logged.add(key)
                log.msg(
                    f"buildbot_stats: the spool holds {n} point(s) of backend {key!r}, which is not "
                    "configured; they are sent if a backend of that name is configured again"
                )

    def store(
        self, capture: Any, post_data: Any, series_name: str, context: Any, time: Any = None
    ) -> defer.Deferred:
        """Turn one capture result into a point for each of the capture's backends.

        The Deferred fires (with None) once the point is spooled.  It is shared
        by the points of one spool write: a callback added to it must return
        its argument (as ``await``, ``yield`` and ``gatherResults`` do).
        """
        point = Point(
            series_name if type(series_name) is str else str(series_name),
            dict(post_data) if isinstance(post_data, dict) else {"value": post_data},
            dict(context) if context else {},
            self.clock.now_ns() if time is None else to_ns(time),
        )
        backends = capture.parent_svcs
        if len(backends) == 1:
            queue = self._queue_of.get(id(backends[0]))
            if queue is not None:
                return queue.put([point], True)
        return self._put([point], backends)

    def _put(self, points: list[Point], backends: Sequence[Any]) -> defer.Deferred:
        waits = []
        for backend in backends:
            queue = self._queue_of.get(id(backend)) or self._queue_by_name(backend)
            if queue is None:
                if id(backend) not in self._unconfigured_logged:
                    self._unconfigured_logged.add(id(backend))
                    log.msg(
                        f"buildbot_stats: backend {backend!r} is not configured; its points are not stored"
                    )
                self._retired.dropped += len(points)
                continue
            waits.append(queue.put(points, True))
        if len(waits) == 1:
            return waits[0]
        return defer.gatherResults(waits, consumeErrors=True)

    def _queue_by_name(self, backend: Any) -> DeliveryQueue | None:
        """The queue of a backend replaced by a reconfig while its capture was busy.

        A capture that was waiting for data when ``buildbot reconfig`` ran still
        holds the old backend object; its points go to the queue of the same name.
        """
        return self.queues.get(_backend_name(backend))

    @property
    def counters(self) -> dict[str, int]:
        """Counters summed over all backends: captured, spooled, written, retried, dropped, pending."""
        total = Counters()
        total.add(self._retired)
        for queue in self.queues.values():
            queue.counters.pending = queue.pending
            total.add(queue.counters)
        return total.as_dict()

    def backend_counters(self) -> dict[str, dict[str, int]]:
        result = {}
        for key, queue in self.queues.items():
            queue.counters.pending = queue.pending
            result[key] = queue.counters.as_dict()
        return result

    # -- MQ consumers ------------------------------------------------------

    @defer.inlineCallbacks
    def registerConsumers(self) -> Any:
        self.consumers = []
        captures: dict[int, Any] = {}
        owners: dict[int, list[Any]] = {}
        for backend in self.registeredStorageServices:
            for cap in backend.captures:
                captures.setdefault(id(cap), cap)
                owners.setdefault(id(cap), []).append(backend)
        for key, cap in captures.items():
            cap.parent_svcs = owners[key]
            cap.master = self.master
            cap._stats_service = self
            consumer = yield self.master.mq.startConsuming(self._consumer(cap), cap.routingKey)
            self.consumers.append(consumer)

    def _consumer(self, cap: Any) -> Any:
        def consume(routingKey: tuple, msg: dict[str, Any]) -> defer.Deferred:
            d = defer.maybeDeferred(cap.consume, routingKey, msg)
            d.addErrback(self._capture_failed, cap)
            return d

        return consume

    def _capture_failed(self, failure: Any, cap: Any) -> None:
        if failure.check(CaptureCallbackError):
            log.msg(f"buildbot_stats: {failure.getErrorMessage()}")
        else:
            # a bug in a (custom) capture or callback: say where, in one line
            where = ""
            if failure.frames:
                name, filename, lineno = failure.frames[-1][:3]
                where = f" (in {name}, {filename}:{lineno})"
            log.msg(
                f"buildbot_stats: {type(cap).__name__} could not handle a message: "
                f"{failure.type.__name__}: {failure.getErrorMessage()}{where}"
            )

    @defer.inlineCallbacks
    def removeConsumers(self) -> Any:
        for consumer in self.consumers:
            yield consumer.stopConsuming()
        self.consumers = []

    @defer.inlineCallbacks
    def startService(self) -> Any:
        yield super().startService()
        # The spec says steps find the service at master.namedServices[name]; in
        # Buildbot 4 services from c['services'] live under master.service_manager.
        # Make the documented path work too, without shadowing a master service.
        named = getattr(self.master, "namedServices", None)
        if isinstance(named, dict) and self.name not in named:
            named[self.name] = self
            self._aliased_in_master = True

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        named = getattr(self.master, "namedServices", None)
        if self._aliased_in_master and isinstance(named, dict):
            if named.get(self.name) is self:
                del named[self.name]
            self._aliased_in_master = False
        yield super().stopService()
        yield self.removeConsumers()
        for queue in self.queues.values():
            yield queue.stop(self._flush_timeout)
        yield stop_backends(self.registeredStorageServices)
        if self._spool is not None:
            spool = self._spool
            yield spool.run(spool.spool.thd_close)
            spool.closed = True
            self._spool = None
        if self._spool_pool is not None:
            self._spool_pool.stop()
            self._spool_pool = None
        self.queues = {}
        self._queue_of = {}

    # -- data from build steps ---------------------------------------------

    def known_builder_info(self, builderid: Any) -> dict[str, Any] | None:
        """The builder's data if already looked up, else None (no Deferred)."""
        return self._builders.get(builderid)

    def builder_info(self, builderid: Any) -> defer.Deferred:
        """The builder's data (cached: builder ids never change their name).

        Lookups of a builder made while its first query runs wait for that
        query: a step posting many values at once makes one query, not one each.
        """
        info = self._builders.get(builderid)
        if info is not None:
            return defer.succeed(info)
        d: defer.Deferred = defer.Deferred()
        waiters = self._builder_waiters.get(builderid)
        if waiters is not None:
            waiters.append(d)
            return d
        self._builder_waiters[builderid] = [d]

        def done(result: Any) -> None:
            for waiter in self._builder_waiters.pop(builderid, []):
                if isinstance(result, Failure):
                    waiter.errback(result)
                else:
                    if result is not None:
                        self._builders[builderid] = result
                    waiter.callback(result)

        defer.maybeDeferred(self.master.data.get, ("builders", builderid)).addBoth(done)
        return d

    @defer.inlineCallbacks
    def _build_data(self, buildid: Any) -> Any:
        build = self._builds.get(buildid)
        if build is None:
            build = yield self.master.data.get(("builds", buildid))
            if build is None:
                raise CaptureCallbackError(f"yieldMetricsValue: no build with id {buildid!r}")
            self._builds[buildid] = build
            if len(self._builds) > _BUILD_CACHE_SIZE:
                self._builds.popitem(last=False)
        return build

    def yieldMetricsValue(self, data_name: str, post_data: Any, buildid: int) -> defer.Deferred:
        """Post ``post_data`` (a dict of field values) for build ``buildid`` as ``data_name``.

        Captured by :class:`~buildbot_stats.capture.CaptureData` captures of that name.
        """
        build_data = self._builds.get(buildid)
        if build_data is None:
            return self._yield_after_lookup(data_name, post_data, buildid)
        # the usual case, a build posting many values: no generator, no lookup
        try:
            self._produce(data_name, post_data, build_data)
        except Exception:
            return defer.fail()
        return defer.succeed(None)

    def _produce(self, data_name: str, post_data: Any, build_data: dict[str, Any]) -> None:
        """The documented ``stats-yield-data`` message, consumed by CaptureData."""
        self.master.mq.produce(
            YIELD_DATA, {"data_name": data_name, "post_data": post_data, "build_data": build_data}
        )

    @defer.inlineCallbacks
    def _yield_after_lookup(self, data_name: str, post_data: Any, buildid: int) -> Any:
        build_data = yield self._build_data(buildid)
        self._produce(data_name, post_data, build_data)

    @defer.inlineCallbacks
    def yieldMetricsValues(self, data_name: str, post_data_list: Sequence[Any], buildid: int) -> Any:
        """Post many values at once: one build lookup, one message per value."""
        build_data = yield self._build_data(buildid)
        for post_data in post_data_list:
            self._produce(data_name, post_data, build_data)
