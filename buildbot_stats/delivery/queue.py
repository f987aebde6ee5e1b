"""Getting spooled points to one backend: the spool is the backlog; one write in flight.

One :class:`DeliveryQueue` serves one backend.  Its pending points are not in
memory but in the spool (:class:`Backlog` mirrors the spool's counts).  The
queue takes the oldest segments (up to ``batch_size`` points) from the spool
thread, posts them in one thread call, keeps them for retries and releases them
(the spool deletes them) once the backend accepted them; it reads the next
batch while one is posted.  Memory for delivery is thus two batches per
backend, whatever the backlog.  One write at a time per backend, as Telegraf
does: the order in which points reach the backend is the order they were
spooled in.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any

from twisted.internet import defer, threads
from twisted.python import log
from twisted.python.failure import Failure

from buildbot_stats.burst_log import BurstLog
from buildbot_stats.delivery.spool import COLUMNS, SpoolState, TakenSegment
from buildbot_stats.delivery.spool_thread import SpoolThread
from buildbot_stats.delivery.writer import points_phrase
from buildbot_stats.errors import PartialDeliveryError, RefusedWriteError, SplitBatchError
from buildbot_stats.lineprotocol import split_lines
from buildbot_stats.options import DeliveryPolicy
from buildbot_stats.point import Point, PointProblem
from buildbot_stats.storage_backends.base import (
    IEncodedWrites,
    IPreparedWrites,
    WriteReport,
    post_points,
    provides,
)

__all__ = ["Backlog", "Batch", "Counters", "DeliveryQueue", "State"]


@dataclass
class Counters:
    """What happened to the points of one backend since the master started."""

    captured: int = 0  # handed to the queue by a capture
    spooled: int = 0  # written to the durable spool file
    written: int = 0  # accepted by the backend
    retried: int = 0  # points in batches that had to be sent again
    dropped: int = 0  # lost on purpose: rejected by the backend or pushed out of a full spool
    pending: int = 0  # not yet accepted by the backend

    def add(self, other: Counters) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class Backlog:
    """The counts of one backend's points, and their log lines; the points themselves are in the spool.

    ``pending`` (in the spool) and ``untaken`` (not yet taken for a write)
    mirror the spool as of the last spool call.
    """

    def __init__(self, key: str, spool_key: str, policy: DeliveryPolicy, reactor: Any) -> None:
        self.key = key
        self.spool_key = spool_key
        self.policy = policy
        self.counters = Counters()
        self.pending = 0
        self.untaken = 0
        self.dropped_in_burst = 0  # by the spool's bounds, since the backend last accepted a write
        self.restored = 0  # points found in the spool at start, not yet delivered
        self.failure: str | None = None  # the failure last logged, until a write succeeds
        # a value rejected on every build of a quiet master (one point per write) is one line per burst
        self.problem_log = BurstLog(reactor)

    def update(self, state: SpoolState | None) -> None:
        if state is None:
            return
        self.pending, self.untaken = state.pending, state.untaken
        self.counters.spooled += state.spooled
        if state.dropped:
            self.counters.dropped += state.dropped
            if not self.dropped_in_burst:
                bound = f"{self.policy.max_spool_points} points"
                if self.policy.max_spool_bytes is not None:
                    bound += f" or {self.policy.max_spool_bytes} bytes"
                log.msg(
                    f"buildbot_stats: spool of backend {self.key!r} is full ({bound}): dropping the "
                    "oldest points until the backend accepts writes again"
                )
            self.dropped_in_burst += state.dropped
        if state.quarantined:
            self.counters.dropped += state.quarantined
            log.msg(
                f"buildbot_stats: {points_phrase(state.quarantined)} of backend {self.key!r} could not be "
                "read from the spool; their segments were moved to the table buildbot_stats_unreadable"
            )

    def spooled(self, state: SpoolState, captured: int, problems: list[PointProblem], rejected: int) -> None:
        """A spool write added points of this backend (or dropped some to respect the bounds)."""
        self.counters.captured += captured
        self.counters.dropped += rejected
        if problems:
            self.log_problems(problems)
        self.update(state)

    def found(self, state: SpoolState) -> None:
        """The spool's counts at start: say how many points a previous run left."""
        self.update(state)
        self.restored = state.pending
        if state.pending:
            found = points_phrase(state.pending)
            log.msg(f"buildbot_stats: {found} found in the spool to send to backend {self.key!r}")

    def failed(self, error: Any, what: str, then: str) -> None:
        """Log "``what`` (the error); N points kept``then``", unless that failure was the last one logged."""
        message = f"{type(error).__name__}: {error}"
        if self.failure != message:
            log.msg(f"buildbot_stats: {what} ({message}); {points_phrase(self.pending)} kept{then}")
            self.failure = message

    def dropped(self, sent: int, error: BaseException, series: str | None) -> None:
        """``sent`` points the backend will never take: the one it refused alone, or another kind's."""
        self.counters.dropped += sent
        if series is not None:
            self.log_problems([PointProblem(series, "*", f"refused by the backend: {error}")])
        else:
            log.msg(f"buildbot_stats: {points_phrase(sent)} of backend {self.key!r} were dropped: {error}")

    def stopped(self, durable: bool) -> None:
        if self.pending:
            log.msg(
                f"buildbot_stats: {points_phrase(self.pending)} of backend {self.key!r} "
                + (
                    "stay in the spool and are sent after the next start"
                    if durable
                    else "are lost: there is no spool file (spool_path=None or unusable)"
                )
            )
        self.problem_log.flush()

    def accepted(self, report: WriteReport | None, sent: int) -> None:
        """The backend took ``sent`` points (less those its report says it rejected)."""
        rejected = report.rejected_points if report else 0
        self.counters.written += sent - rejected
        self.counters.dropped += rejected
        if report and report.problems:
            self.log_problems(report.problems)
        if self.restored:
            self.restored = max(0, self.restored - sent)
            if not self.restored:
                log.msg(f"buildbot_stats: the points found in the spool reached backend {self.key!r}")
        if self.failure is not None:
            log.msg(
                f"buildbot_stats: backend {self.key!r} accepts writes again; {points_phrase(self.pending)} "
                f"still pending; counters {replace(self.counters, pending=self.pending).as_dict()}"
            )
            self.failure = None
        if self.dropped_in_burst:
            log.msg(
                f"buildbot_stats: {points_phrase(self.dropped_in_burst)} of backend {self.key!r} "
                "were dropped: spool full"
            )
            self.dropped_in_burst = 0

    def log_problems(self, problems: list[PointProblem]) -> None:
        """One line per series, field and problem (and burst): the values converted or rejected."""
        counts: dict[PointProblem, int] = {}
        for p in problems:
            counts[p] = counts.get(p, 0) + 1
        for p, n in counts.items():
            what = "rejected" if p.rejected else "converted"
            times = f" ({n} values)" if n > 1 else ""
            self.problem_log.failed(
                (what, p.series, p.field, p.reason),
                f"backend {self.key!r} {what} field {p.field!r} of series {p.series!r}: {p.reason}{times}",
            )


@dataclass
class Batch:
    """Segments taken from the spool for one write, kept (with their encoding) until accepted."""

    ids: list[int]
    encoding: str
    n: int
    points: list[Point] | None  # the points, for a backend that takes points (COLUMNS)
    data: bytes | None  # else the bytes its thd_encode made, one point per line
    offset: int = 0  # the points before it left for good (accepted or dropped)
    lines: list[bytes] | None = None  # ``data`` split into points, once a write sends a part

    @classmethod
    def of(cls, segments: list[TakenSegment]) -> Batch:
        """One batch of the segments the spool gave (all of one encoding, as they were spooled)."""
        ids, counts, encodings, payloads, _first_ns, _last_ns = zip(*segments)
        encoding = encodings[0]
        if encoding == COLUMNS:
            points = [p for payload in payloads for p in payload]
            return cls(list(ids), encoding, len(points), points, None)
        data = payloads[0] if len(payloads) == 1 else b"\n".join(payloads)
        return cls(list(ids), encoding, sum(counts), None, data)

    def series_at(self, i: int) -> str:
        return self.points[i].series if self.points is not None else "?"


class _NotForThisBackendError(Exception):
    """Encoded points that the backend of their queue cannot take (it was replaced by another kind)."""


def thd_post_batch(backend: Any, batch: Batch, offset: int, limit: int) -> WriteReport | None:
    """Post ``limit`` points of ``batch`` from ``offset``: points, or the bytes encoded once.  In a thread."""
    if batch.points is not None:
        return post_points(backend, batch.points[offset : offset + limit])
    if not provides(backend, IEncodedWrites):
        raise _NotForThisBackendError(f"it cannot take points encoded as {batch.encoding!r}")
    if offset == 0 and limit >= batch.n:
        data = batch.data
    else:
        if batch.lines is None:
            batch.lines = split_lines(batch.data or b"", batch.encoding)
        data = b"\n".join(batch.lines[offset : offset + limit])
    return backend.thd_post_encoded(data, batch.encoding)  # type: ignore[no-any-return]


class BatchReader:
    """The batches of one queue, read from the spool: the one being written and the next, read ahead.

    A batch keeps its segments until the backend accepted all its points; then
    they are released (deleted from the spool).  While the backend fails, the
    batches are given back to the spool, so that its bounds can drop their
    points, and read again for the retry.
    """

    def __init__(self, spool: SpoolThread, backlog: Backlog, ready: Callable[[], None]) -> None:
        self._spool = spool
        self._backlog = backlog
        self._ready = ready  # a read or a release finished: the queue may go on
        self.current: Batch | None = None  # the batch being written (or waiting for a retry)
        self._ahead: Batch | None = None
        self.reading = False
        self._generation = 0  # incremented when the batches are given back
        self.read_failure: Failure | None = None  # the last read failed (the queue waits to retry)

    @property
    def idle(self) -> bool:
        """Nothing taken, nothing being read, nothing left to take."""
        return self.current is None and not self.reading and not self._backlog.untaken

    def next_batch(self) -> Batch | None:
        """The current batch; the one read ahead becomes current when there is none."""
        if self.current is None:
            self.current, self._ahead = self._ahead, None
        return self.current

    def read(self, max_points: int) -> None:
        """Read the next batch (current if there is none, else ahead), unless one is read already."""
        if self.reading or self._ahead is not None or self._backlog.untaken <= 0:
            return
        self.reading = True
        d = self._spool.take(self._backlog.spool_key, max_points)
        d.addCallbacks(self._read, self._failed, callbackArgs=(self._generation,))
        d.addErrback(log.err, "buildbot_stats: internal error in delivery")

    def _read(self, result: tuple[list[TakenSegment], SpoolState], generation: int) -> None:
        self.reading = False
        if generation != self._generation:
            return  # given back meanwhile
        segments, state = result
        self._backlog.update(state)
        if segments:
            if self.current is None:
                self.current = Batch.of(segments)
            else:
                self._ahead = Batch.of(segments)
        else:
            self._backlog.untaken = 0  # nothing to take after all: do not ask again
        self._ready()

    def _failed(self, failure: Failure) -> None:
        self.reading = False
        self.read_failure = failure
        self._ready()

    def advance(self, count: int) -> None:
        """``count`` more points of the current batch left for good (accepted or dropped)."""
        batch = self.current
        if batch is None:
            return
        batch.offset += count
        if batch.offset >= batch.n:
            self.current = None
            d = self._spool.release(self._backlog.spool_key, batch.ids)
            d.addCallbacks(self._released, self._log_error)

    def _released(self, state: SpoolState | None) -> None:
        self._backlog.update(state)
        self._ready()

    def give_back(self) -> None:
        """Return the batches to the spool (the backend fails); they are read again for the retry."""
        self.current = self._ahead = None
        self._generation += 1
        d = self._spool.reset(self._backlog.spool_key)
        d.addCallbacks(self._backlog.update, self._log_error)

    def drop_read_ahead(self) -> None:
        self._ahead = None

    def _log_error(self, failure: Failure) -> None:
        log.msg(f"buildbot_stats: spool error for backend {self._backlog.key!r}: {failure.getErrorMessage()}")


class State(enum.Enum):
    """What a :class:`DeliveryQueue` is doing."""

    IDLE = "idle"  # nothing in flight: it writes, or reads, what is pending (if not held back)
    PREPARING = "preparing"  # the backend's prepare(master) runs
    WRITING = "writing"  # one write in flight (the next batch may be read meanwhile)
    WAITING = "waiting"  # for the retry of a failed write, prepare or spool read
    STOPPED = "stopped"  # for good; a write still in flight is counted when it ends


#: the allowed transitions (stop() gives up on a write or prepare that outlives flush_timeout)
TRANSITIONS: dict[State, frozenset[State]] = {
    State.IDLE: frozenset({State.PREPARING, State.WRITING, State.WAITING, State.STOPPED}),
    State.PREPARING: frozenset({State.IDLE, State.WAITING, State.STOPPED}),
    State.WRITING: frozenset({State.IDLE, State.WAITING, State.STOPPED}),
    State.WAITING: frozenset({State.IDLE}),
    State.STOPPED: frozenset(),
}


class DeliveryQueue:
    """Writes the spooled points of one backend to it, in order, at least once, retrying with backoff.

    A backend with ``prepare(master)`` (:class:`IPreparedWrites`) gets it called
    in the reactor before its first write, and again after a write it refused
    (:class:`RefusedWriteError`): that is where backends render secrets, so
    that a password fixed in the secrets provider is used without a restart.
    """

    def __init__(
        self,
        key: str,
        backend: Any,
        spool: SpoolThread,
        reactor: Any,
        policy: DeliveryPolicy,
        spool_key: str,
        master: Any,
    ) -> None:
        self.key, self.spool_key = key, spool_key
        self.backend = backend
        self.master = master
        self.state = State.IDLE
        self.backlog = Backlog(key, spool_key, policy, reactor)
        self.counters = self.backlog.counters
        self._spool = spool
        self._reactor = reactor
        self._reader = BatchReader(spool, self.backlog, self._write_next)
        self._prepared: Any = None  # the backend object whose prepare() succeeded
        self._retry_call: Any = None  # the delayed call of the retry (WAITING)
        self._attempt = 0  # failed writes in a row
        self._batch_limit = policy.batch_size  # halved while the backend asks for smaller batches
        self._stopping = False
        self._drained: defer.Deferred | None = None  # stop() waits: fires once nothing is left to do
        #: set by the queue set: true while the spool writer holds delivery back (see SpoolWriter)
        self.hold: Callable[[], bool] | None = None

    def __repr__(self) -> str:
        return f"<DeliveryQueue {self.key!r} {self.state.value} pending={self.pending}>"

    def _to(self, state: State) -> None:
        assert state in TRANSITIONS[self.state], f"{self.state} -> {state}"
        self.state = state

    @property
    def policy(self) -> DeliveryPolicy:
        return self.backlog.policy

    @property
    def pending(self) -> int:
        return self.backlog.pending

    def current_counters(self) -> Counters:
        """The counters, with ``pending`` as of now."""
        return replace(self.counters, pending=self.pending)

    def use(self, backend: Any, policy: DeliveryPolicy) -> None:
        """A reconfig replaced the backend (same name) or the policy; pending points stay."""
        self.backend = backend
        self.backlog.policy = policy
        self._write_next()

    def spooled(
        self, state: SpoolState, captured: int, problems: list[PointProblem], rejected: int, send: bool = True
    ) -> None:
        """A spool write added points of this queue; ``send``: send them now (else at :meth:`send`).

        A whole batch waiting is sent at once: a burst is sent while it is still being spooled.
        """
        self.backlog.spooled(state, captured, problems, rejected)
        if send or self.backlog.untaken >= self.policy.batch_size:
            self._write_next()

    def send(self) -> None:
        """Send what is pending, unless a write runs or waits for its retry."""
        self._write_next()

    @defer.inlineCallbacks
    def start(self) -> Any:
        """Start with the oldest segment in the spool (points found at start-up go first)."""
        self.backlog.found((yield self._spool.reset(self.spool_key)))
        self._write_next()

    def _write_next(self) -> None:
        """In IDLE: prepare the backend, or write the next batch, or read it; else nothing."""
        if self.state is not State.IDLE:
            return
        failure, self._reader.read_failure = self._reader.read_failure, None
        if failure is not None:
            why = failure.getErrorMessage()
            log.msg(f"buildbot_stats: could not read the spool for backend {self.key!r} ({why}); retrying")
            self._wait(self.policy.max_retry_delay)
            return
        if self._prepared is not self.backend:
            if provides(self.backend, IPreparedWrites):
                self._prepare()
                return
            self._prepared = self.backend
        batch = self._reader.next_batch()
        if batch is None:
            if self.backlog.untaken > 0 and not self._held():
                self._reader.read(self.policy.batch_size)
            elif self._drained is not None and not self._reader.reading:
                self._fire_drained()
            return
        self._to(State.WRITING)
        limit = min(self._batch_limit, batch.n - batch.offset)
        d = threads.deferToThread(thd_post_batch, self.backend, batch, batch.offset, limit)
        d.addCallbacks(self._written, self._write_failed, callbackArgs=(limit,), errbackArgs=(limit,))
        d.addErrback(log.err, "buildbot_stats: internal error in delivery")
        if self.state is State.WRITING:  # (a write may end at once: Buildbot's test reactor)
            self._reader.read(self.policy.batch_size)  # the next batch, while this one is written

    def _held(self) -> bool:
        """Whether the spool writer holds delivery back (less than a batch waits; it calls :meth:`send`)."""
        if self.hold is None or self._stopping:  # stopping: send what can be sent now
            return False
        return self.hold() and self.backlog.untaken < self.policy.batch_size

    def _prepare(self) -> None:
        """Call the backend's ``prepare(master)``; on failure keep the points and try again later."""
        self._to(State.PREPARING)
        d = defer.maybeDeferred(self.backend.prepare, self.master)
        d.addBoth(self._prepared_or_not, self.backend)
        d.addErrback(log.err, "buildbot_stats: internal error in delivery")

    def _prepared_or_not(self, result: Any, backend: Any) -> None:
        if self.state is State.STOPPED:
            return
        if backend is self.backend and isinstance(result, Failure):
            delay = self.policy.max_retry_delay
            self.backlog.failed(
                result.value, f"backend {self.key!r} is not ready", f"; tried again every {delay:.0f}s"
            )
            self._failed(delay)
            return
        if backend is self.backend:
            self._prepared = backend
        self._to(State.IDLE)  # prepared, or replaced meanwhile (then the new one is prepared)
        self._write_next()

    def _written(self, report: WriteReport | None, sent: int) -> None:
        self.backlog.accepted(report, sent)
        self._reader.advance(sent)
        if self.state is State.STOPPED:
            return
        self._attempt = 0
        self._batch_limit = self.policy.batch_size
        self._to(State.IDLE)
        self._write_next()

    def _write_failed(self, failure: Failure, sent: int) -> None:
        batch = self._reader.current
        error = failure.value
        if isinstance(error, PartialDeliveryError):
            self.counters.written += error.delivered
            self._reader.advance(error.delivered)
            sent -= error.delivered
            error = error.cause
        if self.state is State.STOPPED:
            self.counters.retried += sent  # (they stay in the spool)
            return
        if isinstance(error, (SplitBatchError, _NotForThisBackendError)):
            if isinstance(error, SplitBatchError) and sent > 1:
                self._batch_limit = max(1, sent // 2)  # then the halves, and so on
            else:  # one point refused alone is the bad one; points of another kind of backend
                series = (
                    batch.series_at(batch.offset) if isinstance(error, SplitBatchError) and batch else None
                )
                self.backlog.dropped(sent, error, series)
                self._reader.advance(sent)
            self._to(State.IDLE)
            self._write_next()
            return
        self._attempt += 1
        self.counters.retried += sent
        if batch is not None and batch.offset == 0:
            # return the batches to the spool while the backend fails, so the bounds can drop them
            # (not one written in part: it would be read, and written, whole again)
            self._reader.give_back()
        refused = isinstance(error, RefusedWriteError)
        if refused:
            self._prepared = None  # e.g. render the password again: it may have been fixed
        until_fixed = f" every {self.policy.max_retry_delay:.0f}s until fixed" if refused else ""
        what = f"writing {points_phrase(sent)} to backend {self.key!r} failed"
        self.backlog.failed(error, what, f" and retried{until_fixed}")
        retry_after = getattr(error, "retry_after", None)  # a TransientWriteError's (Retry-After)
        self._failed(max(self.policy.retry_delay(self._attempt, refused), float(retry_after or 0)))

    def _failed(self, delay: float) -> None:
        """A write or prepare failed: retry after ``delay`` seconds, or, when stopping, give up."""
        if self._stopping:
            self._to(State.IDLE)
            self._fire_drained()
        else:
            self._wait(delay)

    def _wait(self, delay: float) -> None:
        self._to(State.WAITING)
        self._retry_call = self._reactor.callLater(delay, self._retry)

    def _retry(self) -> None:
        self._retry_call = None
        self._to(State.IDLE)
        self._write_next()

    def _fire_drained(self) -> None:
        d, self._drained = self._drained, None
        if d is not None:
            d.callback(None)

    @defer.inlineCallbacks
    def _wait_drained(self, timeout: float) -> Any:
        """Wait until the write in flight (and, if started, the drain) ends; True if it did in time."""
        drained = self._drained = defer.Deferred()
        self._write_next()
        if self._drained is not None and self.state is State.IDLE and self._reader.idle:
            self._fire_drained()
        try:
            yield drained.addTimeout(timeout, self._reactor)
        except defer.TimeoutError:
            return False
        finally:
            self._drained = None
        return True

    @defer.inlineCallbacks
    def stop(self) -> Any:
        """Deliver what can be delivered within ``flush_timeout`` seconds; the rest stays spooled."""
        if self._stopping:
            return
        self._stopping = True
        timeout = self.policy.flush_timeout
        if self._retry_call is not None:
            self._retry_call.cancel()
            self._retry_call = None
            self._to(State.IDLE)
        if self.pending and self.backlog.failure is None:
            # one last drain, unless the backend was failing: then do not wait for it
            if not (yield self._wait_drained(timeout)):
                late = f"did not take all points within {timeout}s at shutdown"
                log.msg(f"buildbot_stats: backend {self.key!r} {late}")
        elif self.state is not State.IDLE:
            yield self._wait_drained(timeout)  # a write (or prepare) runs: give it the time, then leave
        self._to(State.STOPPED)
        self._reader.drop_read_ahead()
        self.backlog.stopped(self._spool.durable)
