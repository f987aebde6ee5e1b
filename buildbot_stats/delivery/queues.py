"""The delivery queues of one StatsService: one per backend, kept across reconfigs.

A queue is keyed by its backend's name (else its class name; ``#2``... if not
unique): a backend that keeps its key keeps its queue and pending points; a
removed key's points stay spooled until a backend of that name comes back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet import defer
from twisted.python import log

from buildbot_stats.burst_log import BurstLog
from buildbot_stats.delivery.queue import Counters, DeliveryQueue
from buildbot_stats.delivery.spool import SpoolThread, SQLiteSpool
from buildbot_stats.delivery.writer import Route, SpoolResult, SpoolWriter, points_phrase
from buildbot_stats.options import DeliveryPolicy
from buildbot_stats.storage_backends.base import IEncodedWrites, provides, warn_deprecated_attributes

__all__ = ["QueueSet", "backend_keys", "backend_name"]


def backend_name(backend: Any) -> str:
    return getattr(backend, "name", None) or type(backend).__name__


def backend_keys(backends: Sequence[Any]) -> list[str]:
    """A stable key per backend (its name), made unique by a ``#n`` suffix."""
    keys: list[str] = []
    for backend in backends:
        base = backend_name(backend)
        key, n = base, 1
        while key in keys:
            n += 1
            key = f"{base}#{n}"
        keys.append(key)
    return keys


class QueueSet:
    """Routes records to the queue of each backend and keeps the queues in step with the config."""

    def __init__(self, service_name: str, spool: SpoolThread, reactor: Any, master: Any = None) -> None:
        self.service_name = service_name
        self.master = master  # handed to backends' prepare(master), e.g. to render secrets
        self.spool = spool
        self.reactor = reactor
        self.queues: dict[str, DeliveryQueue] = {}
        self.writer = SpoolWriter(spool, self._spooled, self._send, orphan_prefix=f"{service_name}/")
        self._retired = Counters()  # counters of queues removed by a reconfig
        self._orphans_logged: set[str] = set()
        #: values that could not become points (a custom capture's bad time, say): one line per burst
        self._unstored_log = BurstLog(reactor)
        self._key_by_backend: dict[int, str] = {}
        #: the same for the backends of the previous config: its captures may still
        #: store (one busy when the master reconfigured), holding those objects
        self._previous_key_by_backend: dict[int, str] = {}
        #: id(capture) -> (its parent_svcs, their number, their queue keys)
        self._capture_keys: dict[int, tuple[list[Any], int, tuple[str, ...]]] = {}

    @defer.inlineCallbacks
    def configure(self, backends: Sequence[Any], policy: DeliveryPolicy) -> Any:
        """Make the queues match ``backends``, keeping pending points of backends that stay."""
        old = self.queues
        self.queues = {}
        routes: dict[str, Route] = {}
        key_by_backend: dict[int, str] = {}
        new_queues = []
        for key, backend in zip(backend_keys(backends), backends):
            warn_deprecated_attributes(backend)
            queue = old.pop(key, None)
            if queue is None:
                spool_key = f"{self.service_name}/{key}"
                queue = DeliveryQueue(key, backend, self.spool, self.reactor, policy, spool_key, self.master)
                new_queues.append(queue)
            else:
                queue.use(backend, policy)
            self.queues[key] = queue
            queue.hold = self.writer.holding
            encode = backend.thd_encode if provides(backend, IEncodedWrites) else None
            bounds = (policy.max_spool_points, policy.max_spool_bytes)
            routes[key] = Route(queue.spool_key, encode, policy.batch_size, bounds)
            key_by_backend[id(backend)] = key
        # spool writes made from now on use the new routes; a capture still holding a
        # replaced backend object finds its queue by the backend's key (see route_keys)
        self.writer.routes = routes
        self._previous_key_by_backend, self._key_by_backend = self._key_by_backend, key_by_backend
        self._capture_keys = {}
        for queue in old.values():
            yield queue.stop()
            self._retired.add(queue.counters)
        for queue in new_queues:
            try:
                yield queue.start()
            except Exception as e:
                # statistics must never keep the master from starting
                log.msg(f"buildbot_stats: cannot read the spool for backend {queue.key!r}: {e}")
        yield self._log_orphans()

    @defer.inlineCallbacks
    def _log_orphans(self) -> Any:
        """Say so when the spool holds points of backends this service no longer has."""
        try:
            counts = yield self.spool.call(SQLiteSpool.thd_pending_counts)
        except Exception:
            return
        for spool_key, n in sorted(counts.items()):
            key = self._new_orphan(spool_key)
            if key is not None:
                log.msg(
                    f"buildbot_stats: the spool holds {n} point(s) of backend {key!r}, which is not "
                    "configured; they are sent if a backend of that name is configured again"
                )

    def route_keys(self, capture: Any) -> tuple[str, ...]:
        """The queue keys of the backends ``capture`` belongs to (what its records name).

        Worked out once per capture and config; a capture whose ``parent_svcs``
        changed since (or holding a replaced backend) is worked out again.
        """
        svcs = capture.parent_svcs
        hit = self._capture_keys.get(id(capture))
        if hit is not None and hit[0] is svcs and hit[1] == len(svcs):
            return hit[2]
        current, previous = self._key_by_backend, self._previous_key_by_backend
        # an old backend object: its queue is the one of its key (unnamed backends of
        # one class are "Name", "Name#2"), else the one of its name
        keys = tuple(current.get(id(b)) or previous.get(id(b)) or backend_name(b) for b in svcs)
        self._capture_keys[id(capture)] = (svcs, len(svcs), keys)
        return keys

    def _spooled(self, result: SpoolResult) -> None:
        """A spool write is done: say what went wrong, and tell each queue what it did."""
        for message in result.errors:
            log.msg(f"buildbot_stats: {message}")
        for (series, why), n in result.unstored.items():
            for _ in range(n):
                self._unstored_log.failed((series, why), f"a value of series {series} was not stored: {why}")
        for spool_key in set(result.states) | set(result.captured) | set(result.dropped):
            queue = self.queues.get(spool_key.removeprefix(f"{self.service_name}/"))
            if queue is not None:
                queue.spooled(result, send=False)  # (the writer says when to send: see SpoolWriter)
                continue
            captured = result.captured.get(spool_key, 0)
            self._retired.captured += captured
            self._retired.dropped += result.dropped.get(spool_key, 0)
            key = self._new_orphan(spool_key) if captured else None
            if key is not None:
                log.msg(
                    f"buildbot_stats: backend {key!r} is no longer configured: its points that were on their "
                    f"way to the spool ({points_phrase(captured)} so far) are kept there, and sent if a "
                    "backend of that name is configured again"
                )

    def _new_orphan(self, spool_key: str) -> str | None:
        """The backend key of ``spool_key`` if it is one of this service's, not configured, not said yet."""
        mine = f"{self.service_name}/"
        key = spool_key[len(mine) :]
        if not spool_key.startswith(mine) or key in self.queues or key in self._orphans_logged:
            return None
        self._orphans_logged.add(key)
        return key

    def _send(self) -> None:
        """The spool writer is done for now: every queue sends what it has."""
        for queue in list(self.queues.values()):
            queue.send()

    def totals(self) -> dict[str, int]:
        """Counters summed over all backends, removed ones included."""
        total = Counters()
        total.add(self._retired)
        for queue in self.queues.values():
            total.add(queue.report.current())
        return total.as_dict()

    def per_backend(self) -> dict[str, dict[str, int]]:
        return {key: queue.report.current().as_dict() for key, queue in self.queues.items()}

    def wait_spooled(self) -> defer.Deferred:
        """Fires once everything recorded so far is spooled."""
        return self.writer.waiter()

    @defer.inlineCallbacks
    def stop(self) -> Any:
        """Spool what was recorded, then stop every queue (each within its ``flush_timeout``)."""
        yield self.writer.waiter()
        self._unstored_log.flush()
        for queue in self.queues.values():
            yield queue.stop()
        self.queues = {}
