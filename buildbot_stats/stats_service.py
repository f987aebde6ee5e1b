"""The StatsService: registers captures on the MQ and hands their points to the delivery queues.

Its camelCase names are those of ``buildbot.statistics``'s StatsService, kept for compatibility.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from buildbot import config
from buildbot.util import service
from twisted.internet import defer, task
from twisted.python import log

from buildbot_stats.capture.base import YIELD_DATA
from buildbot_stats.capture.consumers import CaptureConsumers
from buildbot_stats.capture.live import LiveSnapshot, LiveState
from buildbot_stats.capture.lookups import BuildLookups
from buildbot_stats.config_checks import check_service_config
from buildbot_stats.delivery.queue import Counters, QueueSet
from buildbot_stats.delivery.spool import ForeignSpoolFileError, open_spool
from buildbot_stats.errors import CaptureCallbackError
from buildbot_stats.options import DEFAULT_SPOOL_PATH, ServiceOptions
from buildbot_stats.point import Clock
from buildbot_stats.storage_backends.base import start_backends, stop_backends

__all__ = ["DEFAULT_SPOOL_PATH", "StatsService"]

#: values produced per reactor turn by yieldMetricsValues: a long list does not hold the reactor
YIELD_CHUNK = 250


class StatsService(service.BuildbotService):
    """Passes statistics captured on the master to every backend (options: docs/configuration.rst)."""

    # Buildbot requires a name; a default spares a traceback in checkconfig
    name = "StatsService"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: the arguments master.cfg gave (``name`` aside): ``buildbot_stats backfill`` configures with them
        self.config_arguments = (args, {k: v for k, v in kwargs.items() if k != "name"})
        #: MQ consumers of the captures (spec name)
        self.consumers: list[Any] = []
        #: the configured backends (spec name)
        self.registeredStorageServices: list[Any] = []
        self.clock = Clock()
        self.lookups: BuildLookups | None = None
        self._queues: QueueSet | None = None
        self._spool_path: str | None = None
        self._aliased_in_master = False
        #: tags the property, build-time and data captures add (``extra_tags``)
        self.extra_tags: tuple[str, ...] = ()
        self._capture_consumers: CaptureConsumers | None = None
        #: fires once the values of the yieldMetricsValues call producing in turns are all produced
        self._producing: defer.Deferred | None = None
        self._live: LiveState | None = None  # kept only while a backend asks for live state

    def checkConfig(self, storage_backends: Sequence[Any] = (), **options: Any) -> None:  # type: ignore[override]
        # every master.cfg mistake is one config.error line (see config_checks.py)
        check_service_config(storage_backends, options)

    @defer.inlineCallbacks
    def reconfigService(self, storage_backends: Sequence[Any] = (), **options: Any) -> Any:  # type: ignore[override]
        self.checkConfig(storage_backends, **options)
        opts = ServiceOptions(**options)
        log.msg(f"buildbot_stats: configuring StatsService {self.name!r} with backends {storage_backends!r}")
        self.extra_tags = tuple(opts.extra_tags)
        previous, self.registeredStorageServices = self.registeredStorageServices, list(storage_backends)
        # backends with an endpoint of their own (Prometheus) start before queues may deliver
        yield start_backends(self, self.registeredStorageServices, previous)
        if self.lookups is None or self.lookups.master is not self.master:
            self.lookups = BuildLookups(self.master)
        first = self._queues is None
        if self._queues is None:
            basedir = getattr(self.master, "basedir", None) if self.master else None
            try:
                spool = yield open_spool(opts.spool_path, basedir, self.master.reactor)
            except ForeignSpoolFileError as e:
                # checkConfig says so already when it knows the basedir; this is the backstop
                raise config.ConfigErrors(
                    [f"StatsService: spool_path {opts.spool_path!r}: {e} (choose another spool_path)"]
                ) from None
            self._queues = QueueSet(self.name, spool, self.master.reactor, self.master)
            self._spool_path = opts.spool_path
        elif opts.spool_path != self._spool_path:
            log.msg("buildbot_stats: spool_path changed; the new path is used after a master restart")
        try:
            yield self._queues.configure(self.registeredStorageServices, opts.policy())
            yield self.removeConsumers()
            yield self.registerConsumers()
            self._live = yield LiveState.configure(self, self._live)
        except Exception:
            if first:
                # a failed start: stopService may never be called, and the spool's
                # thread would keep the master process alive
                yield self._shut_down()
            raise

    def store(
        self, capture: Any, post_data: Any, series_name: str, context: Any, time: Any = None
    ) -> defer.Deferred:
        """Hand one capture result to the capture's backends; the Deferred fires once it is spooled.

        The Deferred is shared by the points of one spool write: a callback added to it must
        return its argument (as ``await``, ``yield`` and ``gatherResults`` do).
        """
        queues = self._queues
        if queues is None:
            return defer.fail(RuntimeError(f"StatsService {self.name!r} is not running"))
        stamp = self.clock.now_ns() if time is None else time
        return queues.writer.add((queues.route_keys(capture), series_name, post_data, context, stamp))

    def wait_spooled(self) -> defer.Deferred:
        """Fires once every value stored so far is in the spool."""
        return self._queues.writer.waiter() if self._queues is not None else defer.succeed(None)

    @property
    def queues(self) -> dict[str, Any]:
        """The delivery queue of each backend, by backend key."""
        return self._queues.queues if self._queues is not None else {}

    @property
    def spool(self) -> Any:
        """The spool (a :class:`~buildbot_stats.delivery.spool.SpoolThread`), None when stopped."""
        return self._queues.spool if self._queues is not None else None

    @property
    def counters(self) -> dict[str, int]:
        """Counters summed over all backends: captured, spooled, written, retried, dropped, pending."""
        return self._queues.totals() if self._queues is not None else Counters().as_dict()

    def backend_counters(self) -> dict[str, dict[str, int]]:
        """The counters of each backend, by backend key."""
        return self._queues.per_backend() if self._queues is not None else {}

    def live_snapshot(self) -> LiveSnapshot | None:
        """Workers, pending requests and running builds now; None unless a backend asks (docs/live.rst)."""
        return self._live.snapshot() if self._live is not None else None

    @defer.inlineCallbacks
    def registerConsumers(self) -> Any:
        if self._capture_consumers is None or self._capture_consumers.service.master is not self.master:
            self._capture_consumers = CaptureConsumers(self)
        self.consumers = yield self._capture_consumers.start(self.registeredStorageServices)

    @defer.inlineCallbacks
    def removeConsumers(self) -> Any:
        consumers, self.consumers = self.consumers, []
        for consumer in consumers:
            yield consumer.stopConsuming()

    @defer.inlineCallbacks
    def startService(self) -> Any:
        yield super().startService()
        # the spec's master.namedServices[name] (Buildbot 4 keeps them in service_manager), never shadowing
        named = getattr(self.master, "namedServices", None)
        if isinstance(named, dict) and self.name not in named:
            named[self.name] = self
            self._aliased_in_master = True

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        named = getattr(self.master, "namedServices", None)
        if self._aliased_in_master and isinstance(named, dict) and named.get(self.name) is self:
            del named[self.name]
        self._aliased_in_master = False
        yield super().stopService()
        yield self._shut_down()

    @defer.inlineCallbacks
    def _shut_down(self) -> Any:
        """Every way out of the service: no consumer, no queue, the spool and its thread closed."""
        try:
            self._live = yield self._live and self._live.stop()  # (fires with None)
            yield self.removeConsumers()
        finally:
            if self._capture_consumers is not None:
                self._capture_consumers.log.flush()
            queues, self._queues = self._queues, None
            try:
                if queues is not None:
                    yield queues.stop()
                yield stop_backends(self.registeredStorageServices)
            finally:
                if queues is not None:
                    yield queues.spool.close()

    def yieldMetricsValue(self, data_name: str, post_data: Any, buildid: int) -> defer.Deferred:
        """Post ``post_data`` for build ``buildid`` as ``data_name``; fires once its points are spooled."""
        return self.yieldMetricsValues(data_name, (post_data,), buildid)

    def yieldMetricsValues(
        self, data_name: str, post_data_list: Sequence[Any], buildid: int
    ) -> defer.Deferred:
        """Post many values: one build lookup, ``YIELD_CHUNK`` messages per reactor turn, one Deferred."""
        if not isinstance(post_data_list, (list, tuple)):
            post_data_list = list(post_data_list)  # e.g. a generator: counted and cut in chunks
        build_data = self.lookups.builds.known(buildid) if self.lookups is not None else None
        if build_data is None or self._producing is not None or len(post_data_list) > YIELD_CHUNK:
            return self._produce_in_turns(data_name, post_data_list, buildid, build_data)
        try:  # the usual case, a known build posting a few values: no generator
            return self._produce_chunk(data_name, post_data_list, build_data)
        except Exception:
            return defer.fail()

    @defer.inlineCallbacks
    def _produce_in_turns(self, data_name: str, values: Sequence[Any], buildid: int, build_data: Any) -> Any:
        """Look the build up if need be, then produce ``values`` a chunk per reactor turn, after the
        call producing before it (in order)."""
        if build_data is None:
            if self.lookups is None:
                raise RuntimeError(f"StatsService {self.name!r} is not configured")
            build_data = yield self.lookups.builds.get(buildid)
            if build_data is None:
                raise CaptureCallbackError(f"yieldMetricsValue: no build with id {buildid!r}")
        produced: defer.Deferred = defer.Deferred()
        previous, self._producing = self._producing, produced
        kept = []
        try:
            if previous is not None:
                yield previous
            for start in range(0, len(values), YIELD_CHUNK):
                if start or previous is not None:
                    yield task.deferLater(self.master.reactor, 0, lambda: None)
                kept.append(self._produce_chunk(data_name, values[start : start + YIELD_CHUNK], build_data))
        finally:
            if self._producing is produced:
                self._producing = None
            produced.callback(None)
        yield defer.gatherResults(kept, consumeErrors=True)

    def _produce_chunk(self, data_name: str, values: Sequence[Any], build_data: Any) -> defer.Deferred:
        """One ``stats-yield-data`` message per value; fires once their points (lookups too) are spooled."""
        queues, consumers = self._queues, self._capture_consumers
        waits: list[defer.Deferred] = []
        if consumers is not None:
            consumers.waits = waits
        before = queues.writer.recorded if queues is not None else 0
        produce = self.master.mq.produce
        try:
            for post_data in values:
                produce(
                    YIELD_DATA, {"data_name": data_name, "post_data": post_data, "build_data": build_data}
                )
        finally:
            if consumers is not None:
                consumers.waits = None
        if queues is not None and queues.writer.recorded != before:
            waits.append(queues.writer.waiter())
        if len(waits) <= 1:
            return waits[0] if waits else defer.succeed(None)
        return defer.gatherResults(waits, consumeErrors=True).addCallback(lambda _: None)
