"""Getting points from a capture to one backend: a backlog, group commit, retries.

One :class:`DeliveryQueue` serves one backend.  Its :class:`Backlog` holds
what the backend has not accepted yet and keeps the durable copy in the spool;
the queue itself is the writer: whenever no write is in flight, everything
pending (up to ``batch_size``) goes to the backend in one thread call.  Points
that arrive during a write form the next batch, so a quiet master writes each
point at once and a busy one writes large batches.  Spool writes batch the
same way: each one writes the points added since the last one as segments of
up to ``batch_size`` points (see :mod:`buildbot_stats.spool`); a segment
leaves the spool once all of its points were accepted (or dropped).
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields, replace
from itertools import repeat
from typing import Any, Literal, overload

from twisted.internet import defer, threads
from twisted.python import log
from twisted.python.failure import Failure

from buildbot_stats.errors import PartialDeliveryError, RefusedWriteError, SplitBatchError
from buildbot_stats.options import DeliveryPolicy
from buildbot_stats.point import Point, PointProblem
from buildbot_stats.spool import SpoolSegment
from buildbot_stats.spool_thread import SpoolThread
from buildbot_stats.storage_backends.base import WriteReport, post_points

__all__ = ["Backlog", "Counters", "DeliveryQueue", "points_phrase"]

Item = tuple[int, Point]  # a point and its id (ids order the spool and tell its segments apart)


def points_phrase(n: int) -> str:
    """``"1 point"``, ``"2 points"``: for log lines."""
    return f"{n} point" if n == 1 else f"{n} points"


def _consume(iterator: Iterable[Any]) -> None:
    deque(iterator, maxlen=0)


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


class _SegmentTally:
    """A spooled segment: its id and how many of its points are still pending."""

    __slots__ = ("id", "remaining")

    def __init__(self, sid: int, remaining: int) -> None:
        self.id = sid
        self.remaining = remaining


class Backlog:
    """The points one backend has not accepted yet, in order, with their durable copy in the spool.

    Points are added, taken in batches for a write, put back when the write
    failed, and released once accepted or dropped; a segment of the spool is
    removed when all its points were released.  Beyond ``max_spool_points``
    the oldest waiting points are dropped (counted, one log line per burst).
    """

    def __init__(
        self,
        key: str,
        spool: SpoolThread,
        spool_key: str,
        policy: DeliveryPolicy,
        counters: Counters,
        next_id: Callable[[], int],
    ) -> None:
        self.key = key
        self.spool_key = spool_key
        self.policy = policy
        self.counters = counters
        self._spool = spool
        self._next_id = next_id
        self._waiting: deque[Item] = deque()
        self._in_flight = 0
        self._to_spool: dict[int, Point] = {}  # added, not yet handed to the spool
        self._tally_of: dict[int, _SegmentTally] = {}  # spooled, not yet released
        self._spool_write: defer.Deferred | None = None  # the spool write running, if any
        self._spooled: defer.Deferred | None = None  # fires when _to_spool is spooled
        self._idle_waiters: list[defer.Deferred] = []
        #: points dropped since the backend last accepted a write (for one log line)
        self.dropped_in_burst = 0

    def __len__(self) -> int:
        """Pending points: waiting and in flight."""
        return len(self._waiting) + self._in_flight

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def add(self, points: list[Point], wait: bool) -> defer.Deferred | None:
        """Add ``points``; with ``wait``, a Deferred that fires once they are spooled."""
        waiting = self._waiting
        to_spool = self._to_spool
        next_id = self._next_id
        for point in points:
            pid = next_id()
            waiting.append((pid, point))
            to_spool[pid] = point
        self.counters.captured += len(points)
        if len(self) > self.policy.max_spool_points:
            self._enforce_bound()
        d = None
        if wait:
            d = self._spooled
            if d is None:
                d = self._spooled = defer.Deferred()
        if self._spool_write is None:
            self._write_spool()
        return d

    def restore(self, segments: list[SpoolSegment]) -> int:
        """Put back the segments found in the spool at start-up, ahead of new points."""
        items: list[Item] = []
        for sid, ids, points in segments:
            self._tally_of.update(dict.fromkeys(ids, _SegmentTally(sid, len(ids))))
            items.extend(zip(ids, points))
        self._waiting.extendleft(reversed(items))
        self._enforce_bound()
        return len(items)

    def take(self, n: int) -> list[Item]:
        """The oldest ``n`` waiting points, now in flight."""
        n = min(n, len(self._waiting))
        popleft = self._waiting.popleft
        batch = [popleft() for _ in range(n)]
        self._in_flight += n
        return batch

    def put_back(self, batch: list[Item]) -> None:
        """A batch whose write failed: first in line again."""
        self._in_flight -= len(batch)
        self._waiting.extendleft(reversed(batch))

    def done(self, batch: list[Item]) -> None:
        """A batch that left for good (accepted or dropped)."""
        self._in_flight -= len(batch)
        self._release([pid for pid, _ in batch])

    def _enforce_bound(self) -> None:
        excess = len(self) - self.policy.max_spool_points
        count = min(excess, len(self._waiting))  # points in flight cannot be taken back
        if count <= 0:
            return
        popleft = self._waiting.popleft
        self._release([popleft()[0] for _ in range(count)])
        self.counters.dropped += count
        if not self.dropped_in_burst:
            log.msg(
                f"buildbot_stats: spool of backend {self.key!r} is full "
                f"({self.policy.max_spool_points} points): dropping the oldest points "
                f"until the backend accepts writes again"
            )
        self.dropped_in_burst += count

    def _release(self, ids: list[int]) -> None:
        if not ids:
            return
        if self._to_spool:
            _consume(map(self._to_spool.pop, ids, repeat(None)))
        if not self._tally_of:
            return
        finished = []
        for tally, n in Counter(map(self._tally_of.pop, ids, repeat(None))).items():
            if tally is not None:
                tally.remaining -= n
                if tally.remaining <= 0:
                    finished.append(tally.id)
        if finished:
            self._spool.release(self.spool_key, finished).addErrback(self._log_spool_error)

    # -- the durable copy ----------------------------------------------------

    def _write_spool(self) -> None:
        if not self._to_spool:
            # everything added was spooled, or accepted/dropped before it was
            waiter, self._spooled = self._spooled, None
            idle, self._idle_waiters = self._idle_waiters, []
            if waiter is not None:
                waiter.callback(None)
            for w in idle:
                w.callback(None)
            return
        batch = self._to_spool
        self._to_spool = {}
        waiter, self._spooled = self._spooled, None
        durable = self._spool.durable
        segments: list[SpoolSegment] = []
        if durable:
            ids = list(batch)
            points = list(batch.values())
            size = self.policy.batch_size
            tally_of = self._tally_of
            for start in range(0, len(ids), size):
                seg_ids = ids[start : start + size]
                tally_of.update(dict.fromkeys(seg_ids, _SegmentTally(seg_ids[0], len(seg_ids))))
                segments.append((seg_ids[0], seg_ids, points[start : start + size]))
        count = len(batch)

        def written(result: Any) -> None:
            if not isinstance(result, Failure) and durable:
                self.counters.spooled += count
            self._spool_write = None
            if waiter is not None:
                waiter.callback(None)
            self._write_spool()

        d = self._spool_write = self._spool.append(self.spool_key, segments)
        d.addErrback(self._log_spool_error)
        d.addBoth(written)

    def _log_spool_error(self, failure: Failure) -> None:
        log.msg(
            f"buildbot_stats: could not write the spool for backend {self.key!r} "
            f"({failure.getErrorMessage()}); points stay in memory"
        )

    def wait_spooled(self) -> defer.Deferred:
        """Fires when everything added so far has reached the spool."""
        d: defer.Deferred = defer.Deferred()
        if self._spool_write is None and not self._to_spool:
            d.callback(None)
        else:
            self._idle_waiters.append(d)
        return d


class DeliveryQueue:
    """Writes the backlog of one backend to it, in order, at least once, retrying with backoff.

    A backend with a ``prepare(master)`` method (which may return a Deferred)
    gets it called in the reactor before its first write, and again after a
    write it refused (:class:`RefusedWriteError`): that is where backends
    render secrets, so that a password fixed in the secrets provider is used
    for the next retry without a restart.
    """

    def __init__(
        self,
        key: str,
        backend: Any,
        spool: SpoolThread,
        reactor: Any,
        policy: DeliveryPolicy,
        next_id: Callable[[], int],
        spool_key: str | None = None,
        master: Any = None,
    ) -> None:
        self.key = key
        self.backend = backend
        self.master = master
        self._needs_prepare = True
        self._preparing = False
        self.counters = Counters()
        self.backlog = Backlog(key, spool, spool_key or key, policy, self.counters, next_id)
        self._spool = spool
        self._reactor = reactor
        self._in_flight: list[Item] | None = None
        self._retry_call: Any = None
        self._attempt = 0
        self._batch_limit = policy.batch_size
        self._failure_logged: str | None = None  # the failure last logged, until a write succeeds
        self._stopping = False
        self._drained: defer.Deferred | None = None
        self._restored = 0  # points found in the spool at start, not yet delivered

    def __repr__(self) -> str:
        return f"<DeliveryQueue {self.key!r} pending={self.pending}>"

    @property
    def policy(self) -> DeliveryPolicy:
        return self.backlog.policy

    @policy.setter
    def policy(self, policy: DeliveryPolicy) -> None:
        self.backlog.policy = policy

    def use(self, backend: Any, policy: DeliveryPolicy) -> None:
        """A reconfig replaced the backend (same name) or the policy; pending points stay."""
        if backend is not self.backend:
            self.backend = backend
            self._needs_prepare = True
        self.policy = policy
        self._write_next()

    @property
    def spool_key(self) -> str:
        return self.backlog.spool_key

    @property
    def pending(self) -> int:
        return len(self.backlog)

    def current_counters(self) -> Counters:
        """The counters, with ``pending`` as of now."""
        return replace(self.counters, pending=self.pending)

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
        d = self.backlog.add(points, wait)
        if self._in_flight is None and self._retry_call is None:
            self._write_next()
        return d

    def restore(self, segments: list[SpoolSegment]) -> None:
        """Put back the segments found in the spool at start-up, ahead of new points."""
        found = self.backlog.restore(segments)
        if found:
            self._restored = found
            log.msg(
                f"buildbot_stats: {points_phrase(found)} found in the spool to send to backend {self.key!r}"
            )
        self._write_next()

    def wait_spooled(self) -> defer.Deferred:
        """Fires when everything put so far has reached the spool."""
        return self.backlog.wait_spooled()

    # -- writing -------------------------------------------------------------

    def _write_next(self) -> None:
        if self._stopping and self._drained is None:
            return  # stopped: a late write must not start the next one
        if self._preparing:
            return
        if self._needs_prepare and self._in_flight is None and self._retry_call is None:
            prepare = getattr(self.backend, "prepare", None)
            if prepare is not None:
                self._prepare(prepare)
                return
            self._needs_prepare = False
        if self._in_flight is not None or self._retry_call is not None or not self.backlog.waiting:
            if self._drained is not None and self.pending == 0:
                self._fire_drained()
            return
        batch = self._in_flight = self.backlog.take(self._batch_limit)
        d = threads.deferToThread(post_points, self.backend, [p for _, p in batch])
        d.addCallbacks(self._written, self._write_failed)
        d.addErrback(log.err, "buildbot_stats: internal error in delivery")

    def _prepare(self, prepare: Callable[[Any], Any]) -> None:
        """Call the backend's ``prepare(master)``; on failure keep the points and try again later."""
        self._preparing = True
        backend = self.backend

        def done(result: Any) -> None:
            self._preparing = False
            if backend is not self.backend:
                self._write_next()  # replaced meanwhile: prepare the new one
                return
            if not isinstance(result, Failure):
                self._needs_prepare = False
                self._write_next()
                return
            message = f"{type(result.value).__name__}: {result.getErrorMessage()}"
            if self._failure_logged != message:
                log.msg(
                    f"buildbot_stats: backend {self.key!r} is not ready ({message}); "
                    f"{points_phrase(self.pending)} kept; "
                    f"tried again every {self.policy.max_retry_delay:.0f}s"
                )
                self._failure_logged = message
            if self._stopping:
                self._fire_drained()
                return
            self._retry_call = self._reactor.callLater(self.policy.max_retry_delay, self._retry)

        d = defer.maybeDeferred(prepare, self.master)
        d.addBoth(done)
        d.addErrback(log.err, "buildbot_stats: internal error in delivery")

    def _written(self, report: WriteReport | None) -> None:
        batch = self._in_flight or []
        self._in_flight = None
        self._attempt = 0
        self._batch_limit = self.policy.batch_size
        rejected = report.rejected_points if report else 0
        self.counters.written += len(batch) - rejected
        self.counters.dropped += rejected
        if report and report.problems:
            self._log_problems(report.problems)
        self.backlog.done(batch)
        if self._failure_logged is not None:
            log.msg(
                f"buildbot_stats: backend {self.key!r} accepts writes again; "
                f"{points_phrase(self.pending)} still pending; counters {self.current_counters().as_dict()}"
            )
            self._failure_logged = None
        if self.backlog.dropped_in_burst:
            log.msg(
                f"buildbot_stats: {points_phrase(self.backlog.dropped_in_burst)} of backend {self.key!r} "
                "were dropped: spool full"
            )
            self.backlog.dropped_in_burst = 0
        if self._restored:
            self._restored = max(0, self._restored - len(batch))
            if not self._restored:
                log.msg(f"buildbot_stats: the points found in the spool reached backend {self.key!r}")
        self._write_next()

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
        batch = self._in_flight or []
        self._in_flight = None
        error = failure.value
        if isinstance(error, PartialDeliveryError):
            accepted, batch = batch[: error.delivered], batch[error.delivered :]
            self.counters.written += len(accepted)
            self.backlog.done(accepted)
            error = error.cause
        if isinstance(error, SplitBatchError):
            if len(batch) > 1:
                self.backlog.put_back(batch)
                self._batch_limit = max(1, len(batch) // 2)
            else:
                self.counters.dropped += len(batch)
                self.backlog.done(batch)
                series = batch[0][1].series if batch else "?"
                self._log_problems([PointProblem(series, "*", f"refused by the backend: {error}")])
            self._write_next()
            return
        self.backlog.put_back(batch)
        self._attempt += 1
        self.counters.retried += len(batch)
        needs_fixing = isinstance(error, RefusedWriteError)
        if needs_fixing:
            self._needs_prepare = True  # e.g. render the password again: it may have been fixed
        message = f"{type(error).__name__}: {error}"
        if self._failure_logged != message:
            log.msg(
                f"buildbot_stats: writing {points_phrase(len(batch))} to backend {self.key!r} failed "
                f"({message}); {points_phrase(self.pending)} kept and retried"
                + (f" every {self.policy.max_retry_delay:.0f}s until fixed" if needs_fixing else "")
            )
            self._failure_logged = message
        if self._stopping:
            self._fire_drained()
            return
        delay = self.policy.retry_delay(self._attempt, needs_fixing)
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None and retry_after > delay:
            delay = float(retry_after)  # the server asked for at least that long
        self._retry_call = self._reactor.callLater(delay, self._retry)

    def _retry(self) -> None:
        self._retry_call = None
        self._write_next()

    # -- stopping ----------------------------------------------------------

    def _fire_drained(self) -> None:
        d, self._drained = self._drained, None
        if d is not None:
            d.callback(None)

    @defer.inlineCallbacks
    def _wait_drained(self, timeout: float) -> Any:
        """Wait until the write in flight (and, if started, the drain) ends; True if it did in time."""
        self._drained = defer.Deferred()
        self._write_next()
        if self._drained is None:
            return True
        waiting: defer.Deferred = defer.Deferred()
        self._drained.chainDeferred(waiting)
        waiting.addTimeout(timeout, self._reactor)
        try:
            yield waiting
        except defer.TimeoutError:
            return False
        finally:
            self._drained = None
        return True

    @defer.inlineCallbacks
    def stop(self) -> Any:
        """Deliver what can be delivered within ``flush_timeout`` seconds; the rest stays spooled."""
        self._stopping = True
        timeout = self.policy.flush_timeout
        if self._retry_call is not None:
            self._retry_call.cancel()
            self._retry_call = None
        if self.pending and self._failure_logged is None:
            # one last drain, unless the backend was failing: then do not wait for it
            in_time = yield self._wait_drained(timeout)
            if not in_time:
                log.msg(
                    f"buildbot_stats: backend {self.key!r} did not take all points within "
                    f"{timeout}s at shutdown"
                )
        elif self._in_flight is not None:
            # a write is running in a thread: give it the time, then leave
            yield self._wait_drained(timeout)
        yield self.backlog.wait_spooled()
        if self.pending and self._spool.durable:
            log.msg(
                f"buildbot_stats: {points_phrase(self.pending)} of backend {self.key!r} stay in the spool "
                f"and are sent after the next start"
            )
        elif self.pending:
            log.msg(
                f"buildbot_stats: {points_phrase(self.pending)} of backend {self.key!r} are lost: "
                "there is no spool file (spool_path=None or unusable)"
            )
