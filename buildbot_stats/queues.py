"""The delivery queues of one StatsService: one per backend, kept across reconfigs.

A queue is keyed by its backend's name (``name=``, else the class name, made
unique with ``#2``, ``#3``...).  On reconfig, a backend whose key is still
configured keeps its queue (and its pending points); a new key gets a new
queue loaded from the spool; a removed key's queue is stopped and its points
stay spooled until a backend of that name comes back.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from twisted.internet import defer
from twisted.python import log

from buildbot_stats.delivery import Counters, DeliveryQueue
from buildbot_stats.options import DeliveryPolicy
from buildbot_stats.point import Point
from buildbot_stats.spool_thread import SpoolThread

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
    """Routes points to the queue of each backend and keeps the queues in step with the config."""

    def __init__(
        self, service_name: str, spool: SpoolThread, first_id: int, reactor: Any, master: Any = None
    ) -> None:
        self.service_name = service_name
        self.master = master  # handed to backends' prepare(master), e.g. to render secrets
        self.spool = spool
        self.reactor = reactor
        self.queues: dict[str, DeliveryQueue] = {}
        self._by_backend: dict[int, DeliveryQueue] = {}
        self._ids = itertools.count(first_id + 1)
        self._retired = Counters()  # counters of queues removed by a reconfig
        self._orphans_logged: set[str] = set()
        self._unconfigured_logged: set[int] = set()

    def _next_id(self) -> int:
        return next(self._ids)

    @defer.inlineCallbacks
    def configure(self, backends: Sequence[Any], policy: DeliveryPolicy) -> Any:
        """Make the queues match ``backends``, keeping pending points of backends that stay."""
        old = self.queues
        self.queues = {}
        self._by_backend = {}
        for key, backend in zip(backend_keys(backends), backends):
            queue = old.pop(key, None)
            if queue is None:
                queue = yield self._new_queue(key, backend, policy)
            else:
                queue.use(backend, policy)
            self.queues[key] = queue
            self._by_backend[id(backend)] = queue
        for queue in old.values():
            yield queue.stop()
            self._retired.add(queue.counters)
        yield self._log_orphans()

    @defer.inlineCallbacks
    def _new_queue(self, key: str, backend: Any, policy: DeliveryPolicy) -> Any:
        spool_key = f"{self.service_name}/{key}"
        queue = DeliveryQueue(
            key, backend, self.spool, self.reactor, policy, self._next_id, spool_key, master=self.master
        )
        try:
            segments, unreadable = yield self.spool.read_pending(spool_key)
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
        return queue

    @defer.inlineCallbacks
    def _log_orphans(self) -> Any:
        """Say so when the spool holds points of backends this service no longer has."""
        try:
            counts = yield self.spool.pending_counts()
        except Exception:
            return
        mine = f"{self.service_name}/"
        for spool_key, n in sorted(counts.items()):
            key = spool_key[len(mine) :]
            if spool_key.startswith(mine) and key not in self.queues and key not in self._orphans_logged:
                self._orphans_logged.add(key)
                log.msg(
                    f"buildbot_stats: the spool holds {n} point(s) of backend {key!r}, which is not "
                    "configured; they are sent if a backend of that name is configured again"
                )

    def put(self, points: list[Point], backends: Sequence[Any]) -> defer.Deferred:
        """Queue ``points`` for each of ``backends``; fires once they are spooled."""
        if len(backends) == 1:
            queue = self._by_backend.get(id(backends[0]))
            if queue is not None:
                return queue.put(points, True)
        waits = []
        for backend in backends:
            queue = self._by_backend.get(id(backend)) or self._queue_by_name(backend)
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
        return self.queues.get(backend_name(backend))

    def totals(self) -> dict[str, int]:
        """Counters summed over all backends, removed ones included."""
        total = Counters()
        total.add(self._retired)
        for queue in self.queues.values():
            total.add(queue.current_counters())
        return total.as_dict()

    def per_backend(self) -> dict[str, dict[str, int]]:
        return {key: queue.current_counters().as_dict() for key, queue in self.queues.items()}

    @defer.inlineCallbacks
    def stop(self) -> Any:
        """Stop every queue (each flushes within its policy's ``flush_timeout``)."""
        for queue in self.queues.values():
            yield queue.stop()
        self.queues = {}
        self._by_backend = {}
