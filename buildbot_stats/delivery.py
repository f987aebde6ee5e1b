"""Getting points from the capture to one backend: spool, group commit, retries.

One :class:`DeliveryQueue` serves one backend.  A point put into it is
written to the spool (a durable copy) and, independently, sent to the
backend: whenever no write is in flight, everything queued (up to
``batch_size``) goes in one thread call.  Points that arrive during a write
form the next batch, so a quiet master writes each point at once and a busy
one writes large batches.  Spool writes batch the same way: each one writes
the points put since the last one as segments of up to ``batch_size`` points
(see :mod:`buildbot_stats.spool`).  The queue counts the points of each
segment that the backend has not accepted yet, and a segment leaves the spool
once all of its points were accepted (or dropped).
"""

from __future__ import annotations

import random
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from itertools import repeat
from typing import Any, Literal, overload

from twisted.internet import defer, threads
from twisted.python import log
from twisted.python.failure import Failure

from buildbot_stats.errors import BackendConfigurationError, PartialDeliveryError, SplitBatchError
from buildbot_stats.point import Point, PointProblem
from buildbot_stats.storage_backends.base import WriteReport, post_points

__all__ = ["Counters", "DeliveryPolicy", "DeliveryQueue", "SpoolRunner"]


class _Segment:
    """A spooled segment: its row id and how many of its points are still pending."""

    __slots__ = ("id", "remaining")

    def __init__(self, sid: int, remaining: int) -> None:
        self.id = sid
        self.remaining = remaining


def _consume(iterator: Iterable[Any]) -> None:
    deque(iterator, maxlen=0)


def _points(n: int) -> str:
    return f"{n} point" if n == 1 else f"{n} points"


@dataclass
class Counters:
    """What happened to the points of one backend since the master started."""

    captured: int = 0  # handed to the queue by a capture
    spooled: int = 0  # written to the durable spool
    written: int = 0  # accepted by the backend
    retried: int = 0  # points in batches that had to be sent again
    dropped: int = 0  # lost on purpose: rejected by the backend or pushed out of a full spool
    pending: int = 0  # not yet accepted by the backend

    def add(self, other: Counters) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class DeliveryPolicy:
    """How a queue batches and retries (set from the StatsService arguments)."""

    batch_size: int = 5000
    max_spool_points: int = 200_000
    min_retry_delay: float = 0.5
    max_retry_delay: float = 60.0

    def retry_delay(self, attempt: int, config_error: bool = False) -> float:
        """Capped exponential backoff with jitter; a configuration error waits the cap."""
        if config_error:
            return self.max_retry_delay
        delay = min(self.max_retry_delay, self.min_retry_delay * (2 ** min(attempt - 1, 30)))
        return delay * random.uniform(0.5, 1.0)


class SpoolRunner:
    """Runs the blocking spool methods on one dedicated thread, in submission order."""

    def __init__(self, spool: Any, reactor: Any, pool: Any | None) -> None:
        self.spool = spool
        self._reactor = reactor
        self._pool = pool
        self.closed = False

    def run(self, f: Callable[..., Any], *args: Any) -> defer.Deferred:
        if self._pool is None:
            return defer.maybeDeferred(f, *args)
        return threads.deferToThreadPool(self._reactor, self._pool, f, *args)

    def append(self, key: str, segments: list[tuple[int, list[int], list[Point]]]) -> defer.Deferred:
        return self.run(self.spool.thd_append, key, segments)

    def remove(self, key: str, segment_ids: list[int]) -> defer.Deferred:
        if self.closed or not self.spool.durable:
            return defer.succeed(None)
        return self.run(self.spool.thd_remove, key, segment_ids)

    def load(self, key: str) -> defer.Deferred:
        return self.run(self.spool.thd_load, key)


class DeliveryQueue:
    """Delivers the points of one backend, in order, at least once."""

    def __init__(
        self,
        key: str,
        backend: Any,
        spool: SpoolRunner,
        reactor: Any,
        policy: DeliveryPolicy,
        next_id: Callable[[], int],
        spool_key: str | None = None,
    ) -> None:
        self.key = key
        #: the queue's rows in the spool file, which several services may share
        self.spool_key = spool_key or key
        self.backend = backend
        self.policy = policy
        self.counters = Counters()
        self._spool = spool
        self._reactor = reactor
        self._next_id = next_id
        self._items: deque[tuple[int, Point]] = deque()  # waiting for the backend
        self._inflight: list[tuple[int, Point]] | None = None
        self._to_spool: dict[int, Point] = {}  # put, not yet handed to the spool
        self._segment_of: dict[int, _Segment] = {}  # spooled, not yet accepted
        self._spooling = False
        self._spooled: defer.Deferred | None = None  # fires when _to_spool is spooled
        self._spool_idle_waiters: list[defer.Deferred] = []
        self._retry_call: Any = None
        self._attempt = 0
        self._batch_limit = policy.batch_size
        self._failing_since_logged: str | None = None
        self._dropping = 0
        self._stopping = False
        self._drained: defer.Deferred | None = None
        self._restored = 0  # points found in the spool at start, not yet delivered

    def __repr__(self) -> str:
        return f"<DeliveryQueue {self.key!r} pending={self.pending}>"

    @property
    def pending(self) -> int:
        return len(self._items) + len(self._inflight or ())

    # -- putting points in -------------------------------------------------

    @overload
    def put(self, points: list[Point], wait: Literal[False] = False) -> None: ...

    @overload
    def put(self, points: list[Point], wait: Literal[True]) -> defer.Deferred: ...

    def put(self, points: list[Point], wait: bool = False) -> defer.Deferred | None:
        """Queue ``points``; with ``wait``, return a Deferred that fires once they are spooled.

        That Deferred is shared by all points of the same spool write: it fires
        with None, and callbacks added to it must return their argument.
        """
        items = self._items
        to_spool = self._to_spool
        next_id = self._next_id
        for point in points:
            pid = next_id()
            items.append((pid, point))
            to_spool[pid] = point
        self.counters.captured += len(points)
        if len(items) + len(self._inflight or ()) > self.policy.max_spool_points:
            self._enforce_bound()
        d = None
        if wait:
            d = self._spooled
            if d is None:
                d = self._spooled = defer.Deferred()
        if not self._spooling:
            self._kick_spool()
        if self._inflight is None and self._retry_call is None:
            self._kick_delivery()
        return d

    def restore(self, segments: list[tuple[int, list[int], list[Point]]]) -> None:
        """Put back the segments found in the spool at start-up, ahead of new points."""
        items: list[tuple[int, Point]] = []
        for sid, ids, points in segments:
            self._segment_of.update(dict.fromkeys(ids, _Segment(sid, len(ids))))
            items.extend(zip(ids, points))
        self._items.extendleft(reversed(items))
        self._enforce_bound()
        if items:
            self._restored = len(items)
            log.msg(
                f"buildbot_stats: {_points(len(items))} found in the spool to send to backend {self.key!r}"
            )
        self._kick_delivery()

    def _enforce_bound(self) -> None:
        excess = self.pending - self.policy.max_spool_points
        if excess <= 0:
            return
        popleft = self._items.popleft
        count = min(excess, len(self._items))  # points in flight cannot be taken back
        if not count:
            return
        self._release([popleft()[0] for _ in range(count)])
        self.counters.dropped += count
        if not self._dropping:
            log.msg(
                f"buildbot_stats: spool of backend {self.key!r} is full "
                f"({self.policy.max_spool_points} points): dropping the oldest points "
                f"until the backend accepts writes again"
            )
        self._dropping += count

    # -- spooling ----------------------------------------------------------

    def _kick_spool(self) -> None:
        if self._spooling:
            return
        if not self._to_spool:
            # points accepted (or dropped) before they were spooled
            waiter, self._spooled = self._spooled, None
            idle, self._spool_idle_waiters = self._spool_idle_waiters, []
            if waiter is not None:
                waiter.callback(None)
            for w in idle:
                w.callback(None)
            return
        batch = self._to_spool
        self._to_spool = {}
        waiter, self._spooled = self._spooled, None
        self._spooling = True
        durable = self._spool.spool.durable
        segments = []
        if durable:
            ids = list(batch)
            points = list(batch.values())
            size = self.policy.batch_size
            segment_of = self._segment_of
            for start in range(0, len(ids), size):
                seg_ids = ids[start : start + size]
                segment_of.update(dict.fromkeys(seg_ids, _Segment(seg_ids[0], len(seg_ids))))
                segments.append((seg_ids[0], seg_ids, points[start : start + size]))
        d = self._spool.append(self.spool_key, segments)
        count = len(batch)

        def done(result: Any) -> None:
            if not isinstance(result, Failure) and durable:
                self.counters.spooled += count
            self._spooling = False
            if waiter is not None:
                waiter.callback(None)
            self._kick_spool()

        d.addErrback(self._log_spool_error)
        d.addBoth(done)

    def _log_spool_error(self, failure: Failure) -> None:
        log.msg(
            f"buildbot_stats: could not write the spool for backend {self.key!r} "
            f"({failure.getErrorMessage()}); points stay in memory"
        )

    def wait_spooled(self) -> defer.Deferred:
        """Fires when everything put so far has reached the spool."""
        d: defer.Deferred = defer.Deferred()
        if not self._spooling and not self._to_spool:
            d.callback(None)
        else:
            self._spool_idle_waiters.append(d)
        return d

    # -- delivering --------------------------------------------------------

    def _kick_delivery(self) -> None:
        if self._stopping and self._drained is None:
            return  # stopped: a late write must not start the next one
        if self._inflight is not None or self._retry_call is not None or not self._items:
            if self._drained is not None and self.pending == 0:
                self._fire_drained()
            return
        n = min(self._batch_limit, len(self._items))
        batch = [self._items.popleft() for _ in range(n)]
        self._inflight = batch
        backend = self.backend
        d = threads.deferToThread(post_points, backend, [p for _, p in batch])
        d.addCallbacks(self._written, self._write_failed)
        d.addErrback(log.err, "buildbot_stats: internal error in delivery")

    def _ack(self, items: list[tuple[int, Point]]) -> None:
        self._release([pid for pid, _ in items])

    def _release(self, ids: list[int]) -> None:
        """Points that left the queue (accepted or dropped): out of the spool."""
        if not ids:
            return
        if self._to_spool:
            _consume(map(self._to_spool.pop, ids, repeat(None)))
        if not self._segment_of:
            return
        finished = []
        for segment, n in Counter(map(self._segment_of.pop, ids, repeat(None))).items():
            if segment is not None:
                segment.remaining -= n
                if segment.remaining <= 0:
                    finished.append(segment.id)
        if finished:
            self._spool.remove(self.spool_key, finished).addErrback(self._log_spool_error)

    def _written(self, report: WriteReport | None) -> None:
        batch = self._inflight or []
        self._inflight = None
        self._attempt = 0
        self._batch_limit = self.policy.batch_size
        rejected = report.rejected_points if report else 0
        self.counters.written += len(batch) - rejected
        self.counters.dropped += rejected
        if report and report.problems:
            self._log_problems(report.problems)
        self._ack(batch)
        if self._failing_since_logged is not None:
            log.msg(
                f"buildbot_stats: backend {self.key!r} accepts writes again; "
                f"{_points(self.pending)} still pending; counters {self.counters.as_dict()}"
            )
            self._failing_since_logged = None
        if self._dropping:
            log.msg(
                f"buildbot_stats: {_points(self._dropping)} of backend {self.key!r} were dropped: spool full"
            )
            self._dropping = 0
        if self._restored:
            self._restored = max(0, self._restored - len(batch))
            if not self._restored:
                log.msg(f"buildbot_stats: the points found in the spool reached backend {self.key!r}")
        self._kick_delivery()

    def _log_problems(self, problems: list[PointProblem]) -> None:
        counts: dict[PointProblem, int] = {}
        for p in problems:
            counts[p] = counts.get(p, 0) + 1
        for p, n in counts.items():
            what = "rejected" if p.rejected else "converted"
            times = f" ({n} values)" if n > 1 else ""
            log.msg(
                f"buildbot_stats: backend {self.key!r} {what} field {p.field!r} "
                f"of series {p.series!r}: {p.reason}{times}"
            )

    def _write_failed(self, failure: Failure) -> None:
        batch = self._inflight or []
        self._inflight = None
        error = failure.value
        if isinstance(error, PartialDeliveryError):
            done, batch = batch[: error.delivered], batch[error.delivered :]
            self.counters.written += len(done)
            self._ack(done)
            error = error.cause
        if isinstance(error, SplitBatchError):
            if len(batch) > 1:
                self._items.extendleft(reversed(batch))
                self._batch_limit = max(1, len(batch) // 2)
            else:
                self.counters.dropped += len(batch)
                self._ack(batch)
                series = batch[0][1].series if batch else "?"
                self._log_problems([PointProblem(series, "*", f"refused by the backend: {error}")])
            self._kick_delivery()
            return
        self._items.extendleft(reversed(batch))
        self._attempt += 1
        self.counters.retried += len(batch)
        config_error = isinstance(error, BackendConfigurationError)
        message = f"{type(error).__name__}: {error}"
        if self._failing_since_logged != message:
            log.msg(
                f"buildbot_stats: writing {_points(len(batch))} to backend {self.key!r} failed "
                f"({message}); {_points(self.pending)} kept and retried"
                + (f" every {self.policy.max_retry_delay:.0f}s until fixed" if config_error else "")
            )
            self._failing_since_logged = message
        if self._stopping:
            self._fire_drained()
            return
        delay = self.policy.retry_delay(self._attempt, config_error)
        self._retry_call = self._reactor.callLater(delay, self._retry)

    def _retry(self) -> None:
        self._retry_call = None
        self._kick_delivery()

    # -- stopping ----------------------------------------------------------

    def _fire_drained(self) -> None:
        d, self._drained = self._drained, None
        if d is not None:
            d.callback(None)

    @defer.inlineCallbacks
    def stop(self, timeout: float) -> Any:
        """Deliver what can be delivered within ``timeout`` seconds; the rest stays spooled."""
        self._stopping = True
        if self._retry_call is not None:
            self._retry_call.cancel()
            self._retry_call = None
            # one last try, unless the backend was failing: then do not wait for it
        if self.pending and self._failing_since_logged is None:
            self._drained = defer.Deferred()
            self._kick_delivery()
            if self._drained is not None:
                waiting: defer.Deferred = defer.Deferred()
                self._drained.chainDeferred(waiting)
                waiting.addTimeout(timeout, self._reactor)
                try:
                    yield waiting
                except defer.TimeoutError:
                    log.msg(
                        f"buildbot_stats: backend {self.key!r} did not take all points within "
                        f"{timeout}s at shutdown"
                    )
        elif self._inflight is not None:
            # a write is running in a thread: give it the time, then leave
            self._drained = defer.Deferred()
            waiting = defer.Deferred()
            self._drained.chainDeferred(waiting)
            waiting.addTimeout(timeout, self._reactor)
            try:
                yield waiting
            except defer.TimeoutError:
                pass
        self._drained = None
        yield self.wait_spooled()
        if self.pending and self._spool.spool.durable:
            log.msg(
                f"buildbot_stats: {_points(self.pending)} of backend {self.key!r} stay in the spool "
                f"and are sent after the next start"
            )
        elif self.pending:
            log.msg(
                f"buildbot_stats: {_points(self.pending)} of backend {self.key!r} are lost: "
                "there is no spool file (spool_path=None or unusable)"
            )
