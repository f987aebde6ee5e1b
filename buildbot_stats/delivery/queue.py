"""Getting spooled points to one backend: the spool is the backlog; batches; retries.

The points arrive in the spool through :mod:`spool_writer` (group commit).
One :class:`DeliveryQueue` serves one backend.  Its pending points are not in
memory: they are in the spool, and :class:`Backlog` only mirrors the spool's
counts.  The queue, the writer, takes the oldest segments (up to
``batch_size`` points) from the spool thread, posts them in one thread call,
keeps them for retries and releases them (the spool deletes them) once the
backend accepted them; it reads the next batch while one is being posted.
Memory for delivery is thus a few batches per backend, whatever the backlog.

A backend whose ``concurrent_writes`` is 2 (InfluxDB 1.x: its server parses
two writes at once) gets the batch read ahead posted beside the one in
flight, when its points are all later (at the precision they were encoded
with) than that one's: two points that share series, tags and time then
cannot be in both, so the order in which the two writes land cannot change
what the server keeps.  Results are applied in order, as if the writes had
been one after the other; on any failure the queue writes one at a time
again until a write succeeds.
"""

from __future__ import annotations

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
from buildbot_stats.lineprotocol import PRECISIONS, encoding_precision, split_lines
from buildbot_stats.options import DeliveryPolicy
from buildbot_stats.point import Point, PointProblem
from buildbot_stats.storage_backends.base import WriteReport, post_points

__all__ = ["Backlog", "Counters", "DeliveryQueue"]


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


# -- one backend's queue -----------------------------------------------------------


class Backlog:
    """The points one backend has not accepted yet: counts only, the points are in the spool.

    It mirrors the spool's counts (``pending``: in the spool; ``untaken``: not
    yet taken for a write) as of the last spool call, and counts points
    dropped by the bounds (one log line per burst).
    """

    def __init__(self, key: str, spool_key: str, policy: DeliveryPolicy, counters: Counters) -> None:
        self.key = key
        self.spool_key = spool_key
        self.policy = policy
        self.counters = counters
        self.pending = 0
        self.untaken = 0
        #: points dropped since the backend last accepted a write (for one log line)
        self.dropped_in_burst = 0

    def __len__(self) -> int:
        return self.pending

    def update(self, state: SpoolState) -> None:
        self.pending = state.pending
        self.untaken = state.untaken
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


class _Batch:
    """Segments taken from the spool for one write, kept (with their encoding) until accepted."""

    __slots__ = ("ids", "n", "encoding", "points", "data", "lines", "offset", "first_ns", "last_ns")

    def __init__(self, segments: list[TakenSegment]) -> None:
        self.ids = [s[0] for s in segments]
        self.encoding = segments[0][2]
        firsts = [s[4] for s in segments]
        lasts = [s[5] for s in segments]
        self.first_ns = None if None in firsts else min(firsts)  # type: ignore[type-var]
        self.last_ns = None if None in lasts else max(lasts)  # type: ignore[type-var]
        self.points: list[Point] | None = None
        self.data: bytes | None = None
        self.lines: list[bytes] | None = None
        if self.encoding == COLUMNS:
            self.points = [p for s in segments for p in s[3]]
            self.n = len(self.points)
        else:
            parts = [s[3] for s in segments]
            self.data = parts[0] if len(parts) == 1 else b"\n".join(parts)
            self.n = sum(s[1] for s in segments)
        self.offset = 0  # points before it were accepted (or dropped)

    def series_at(self, i: int) -> str:
        if self.points is not None:
            return self.points[i].series
        return "?"

    def after(self, other: _Batch) -> bool:
        """True when every point of this batch is later than every point of ``other``.

        At the precision of the encoded line protocol: then no point of one
        can have the series, tags and time of a point of the other.
        """
        encoding = self.encoding
        if self.points is not None or other.encoding != encoding:
            return False
        precision = encoding_precision(encoding)
        if precision is None or self.first_ns is None or other.last_ns is None:
            return False
        divisor = PRECISIONS[precision]
        return self.first_ns // divisor > other.last_ns // divisor


class _NotForThisBackendError(Exception):
    """Encoded points that the backend of their queue cannot take (it was replaced by another kind)."""


def thd_post_batch(backend: Any, batch: _Batch, offset: int, limit: int) -> WriteReport | None:
    """Post ``limit`` points of ``batch`` from ``offset``: points, or the bytes encoded once.

    Runs in a thread.
    """
    if batch.points is not None:
        return post_points(backend, batch.points[offset : offset + limit])
    post = getattr(backend, "thd_post_encoded", None)
    if post is None:
        raise _NotForThisBackendError(f"it cannot take points encoded as {batch.encoding!r}")
    if offset == 0 and limit >= batch.n:
        data = batch.data
    else:
        if batch.lines is None:
            batch.lines = split_lines(batch.data or b"", batch.encoding)
        data = b"\n".join(batch.lines[offset : offset + limit])
    return post(data, batch.encoding)


class BatchReader:
    """The batches of one queue, read from the spool: the one being written and the next, read ahead.

    A batch keeps its segments (and their encoding) until the backend accepted
    all its points; then they are released (deleted from the spool).  While the
    backend fails, the batches are given back to the spool, so that its bounds
    can drop their points, and read again for the retry.
    """

    def __init__(
        self,
        spool: SpoolThread,
        backlog: Backlog,
        ready: Callable[[], None],
        read_failed: Callable[[Failure], None],
    ) -> None:
        self._spool = spool
        self._backlog = backlog
        self._ready = ready  # a read or a release finished: the writer may go on
        self._read_failed = read_failed
        #: the batch being written (or waiting for a retry)
        self.current: _Batch | None = None
        self._ahead: _Batch | None = None
        #: a read from the spool is running
        self.reading = False
        self._generation = 0  # incremented when the batches are given back

    @property
    def idle(self) -> bool:
        """Nothing taken, nothing being read, nothing left to take."""
        return self.current is None and not self.reading and not self._backlog.untaken

    def promote(self) -> bool:
        """Make the batch read ahead the current one if there is none; True if there is one now."""
        if self.current is None and self._ahead is not None:
            self.current, self._ahead = self._ahead, None
        return self.current is not None

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
            batch = _Batch(segments)
            if self.current is None:
                self.current = batch
            else:
                self._ahead = batch
        elif self._backlog.untaken > 0:
            self._backlog.untaken = 0  # nothing to take after all: do not ask again
        self._ready()

    def _failed(self, failure: Failure) -> None:
        self.reading = False
        self._read_failed(failure)

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
        self._update(state)
        self._ready()

    def give_back(self) -> None:
        """Return the batches to the spool (the backend fails); they are read again for the retry."""
        self.current = self._ahead = None
        self._generation += 1
        d = self._spool.reset(self._backlog.spool_key)
        d.addCallbacks(self._backlog.update, self._log_error)

    def drop_read_ahead(self) -> None:
        self._ahead = None

    @property
    def whole(self) -> bool:
        """No point of the batch read ahead was delivered (a write beside the current one may begin it)."""
        return self._ahead is None or self._ahead.offset == 0

    @property
    def ahead(self) -> _Batch | None:
        """The batch read ahead, if any."""
        return self._ahead

    def release_ahead(self, batch: _Batch) -> None:
        """The batch read ahead was accepted (written beside the current one, which failed): release it.

        The writer is told nothing when that is done: it is handling the failure.
        """
        if self._ahead is batch:
            self._ahead = None
        d = self._spool.release(self._backlog.spool_key, batch.ids)
        d.addCallbacks(self._update, self._log_error)

    def _update(self, state: SpoolState | None) -> None:
        if state is not None:
            self._backlog.update(state)

    def _log_error(self, failure: Failure) -> None:
        log.msg(f"buildbot_stats: spool error for backend {self._backlog.key!r}: {failure.getErrorMessage()}")


_RUNNING = object()


class _Flight:
    """The batch read ahead, written beside the current one (see the module's docstring)."""

    __slots__ = ("batch", "result", "adopted")

    def __init__(self, batch: _Batch) -> None:
        self.batch = batch
        self.result: Any = _RUNNING  # then its WriteReport (or None), or a Failure
        #: it became the current write (the one before it succeeded) while it ran
        self.adopted = False


class DeliveryQueue:
    """Writes the spooled points of one backend to it, in order, at least once, retrying with backoff.

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
        spool_key: str | None = None,
        master: Any = None,
    ) -> None:
        self.key = key
        self.backend = backend
        self.master = master
        self._needs_prepare = True
        self._preparing = False
        self.counters = Counters()
        self.backlog = Backlog(key, spool_key or key, policy, self.counters)
        self._spool = spool
        self._reactor = reactor
        self._reader = BatchReader(spool, self.backlog, self._write_next, self._read_failed)
        self._posting: tuple[int, int] | None = None  # (offset, limit) of the write in flight
        self._second: _Flight | None = None  # the batch ahead, written beside it
        self._head_failure: Failure | None = None  # the current write failed: waits for the second
        self._retry_call: Any = None
        self._attempt = 0
        self._batch_limit = policy.batch_size
        self._failure_logged: str | None = None  # the failure last logged, until a write succeeds
        self._stopping = False
        self._drained: defer.Deferred | None = None
        self._restored = 0  # points found in the spool at start, not yet delivered
        #: set by the queue set: true while the spool writer holds delivery back (see SpoolWriter)
        self.hold: Callable[[], bool] | None = None
        # a value rejected on every build of a quiet master (one point per write)
        # is one line per burst, not one per write
        self._problem_log = BurstLog(reactor)

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
        return self.backlog.pending

    def current_counters(self) -> Counters:
        """The counters, with ``pending`` as of now."""
        return replace(self.counters, pending=self.pending)

    # -- points coming in (from the spool writer) ---------------------------------

    def spooled(
        self, state: SpoolState, captured: int, problems: list[PointProblem], rejected: int, send: bool = True
    ) -> None:
        """A spool write added points of this queue (or dropped some to respect the bounds).

        ``send``: start sending them now (else at the next :meth:`send`, unless a
        batch is waiting already: a burst is sent while it is still being spooled).
        """
        self.counters.captured += captured
        self.counters.dropped += rejected
        if problems:
            self._log_problems(problems)
        self.backlog.update(state)
        if send or self.backlog.untaken >= self.policy.batch_size:
            self._write_next()

    def send(self) -> None:
        """Send what is pending, unless a write runs or waits for its retry."""
        self._write_next()

    def _held(self) -> bool:
        """Whether the spool writer holds delivery back (less than a batch waits; it calls :meth:`send`)."""
        hold = self.hold
        if hold is None or self._stopping:  # stopping: send what can be sent now
            return False
        return hold() and self.backlog.untaken < self.policy.batch_size

    @defer.inlineCallbacks
    def start(self) -> Any:
        """Start with the oldest segment in the spool (points found at start-up go first)."""
        state = yield self._spool.reset(self.spool_key)
        self.backlog.update(state)
        found = state.pending
        if found:
            self._restored = found
            log.msg(
                f"buildbot_stats: {points_phrase(found)} found in the spool to send to backend {self.key!r}"
            )
        self._write_next()

    # -- writing -------------------------------------------------------------

    def _write_next(self) -> None:
        if self._stopping and self._drained is None:
            return  # stopped: a late write must not start the next one
        if self._posting is not None:
            if self._reader.ahead is not None:
                self._post_second()
            elif self._concurrent() and self.backlog.untaken >= self.policy.batch_size:
                self._read()  # a whole batch came while one is written: read it to write beside it
            return
        if self._retry_call is not None or self._preparing:
            return
        if self._needs_prepare:
            prepare = getattr(self.backend, "prepare", None)
            if prepare is not None:
                self._prepare(prepare)
                return
            self._needs_prepare = False
        if not self._reader.promote():
            if self.backlog.untaken > 0:
                if not self._held():
                    self._read()
            elif self._drained is not None and not self._reader.reading:
                self._fire_drained()
            return
        second = self._second
        if second is not None and self._reader.current is second.batch:
            # the one before it succeeded: the batch written beside it is the current write
            self._second = None
            self._posting = (0, second.batch.n)
            if second.result is _RUNNING:
                second.adopted = True
            else:
                self._finish(second.result)
                return
        else:
            self._post()
        if self._posting is not None:
            self._read()  # read the next batch while this one is written

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

    def _read(self) -> None:
        if self._retry_call is None:  # not while waiting to retry
            self._reader.read(self.policy.batch_size)

    def _read_failed(self, failure: Failure) -> None:
        log.msg(
            f"buildbot_stats: could not read the spool for backend {self.key!r} "
            f"({failure.getErrorMessage()}); retrying"
        )
        self._retry_call = self._reactor.callLater(self.policy.max_retry_delay, self._retry)

    def _post(self) -> None:
        batch = self._reader.current
        assert batch is not None
        offset, limit = batch.offset, min(self._batch_limit, batch.n - batch.offset)
        self._posting = (offset, limit)
        d = threads.deferToThread(thd_post_batch, self.backend, batch, offset, limit)
        d.addCallbacks(self._written, self._write_failed)
        d.addErrback(log.err, "buildbot_stats: internal error in delivery")

    def _concurrent(self) -> bool:
        """Whether a second write may start now (the backend takes two; no failure since the last success).

        Not before the backend's ``prepare``: a reconfig may have replaced it while a write runs.
        """
        if self._second is not None or self._stopping or self._attempt or self._failure_logged is not None:
            return False
        if self._needs_prepare or self._preparing:
            return False
        return getattr(self.backend, "concurrent_writes", 1) >= 2

    def _post_second(self) -> None:
        """Write the batch read ahead beside the current write, if the backend and the batches allow."""
        if not self._concurrent():
            return
        current, ahead = self._reader.current, self._reader.ahead
        if current is None or ahead is None or self._posting != (0, current.n):
            return
        if ahead.offset or ahead.n > self._batch_limit or not ahead.after(current):
            # (begun by an earlier write beside: it goes on from there, after the current one)
            return
        flight = self._second = _Flight(ahead)
        d = threads.deferToThread(thd_post_batch, self.backend, ahead, 0, ahead.n)
        d.addBoth(self._second_done, flight)
        d.addErrback(log.err, "buildbot_stats: internal error in delivery")

    def _second_done(self, result: Any, flight: _Flight) -> None:
        flight.result = result
        if flight.adopted:  # it is the current write now
            self._finish(result)
            return
        failure, self._head_failure = self._head_failure, None
        if failure is not None:  # the write before it failed and waited for this one
            self._write_failed(failure)

    def _finish(self, result: Any) -> None:
        if isinstance(result, Failure):
            self._write_failed(result)
        else:
            self._written(result)

    def _settle_second(self) -> None:
        """The current write failed and the one beside it ended: keep what it delivered."""
        second, self._second = self._second, None
        assert second is not None
        batch, result = second.batch, second.result
        if isinstance(result, Failure):
            error = result.value
            delivered = min(error.delivered, batch.n) if isinstance(error, PartialDeliveryError) else 0
            if delivered < batch.n:
                # written again after the current batch: from where it stopped, or whole
                self.counters.written += delivered
                self.counters.retried += batch.n - delivered
                batch.offset = delivered
                return
            result = None
        self._count_written(result, batch.n)
        self._reader.release_ahead(batch)

    def _count_written(self, report: WriteReport | None, sent: int) -> None:
        rejected = report.rejected_points if report else 0
        self.counters.written += sent - rejected
        self.counters.dropped += rejected
        if report and report.problems:
            self._log_problems(report.problems)
        if self._restored:
            self._restored = max(0, self._restored - sent)
            if not self._restored:
                log.msg(f"buildbot_stats: the points found in the spool reached backend {self.key!r}")

    def _written(self, report: WriteReport | None) -> None:
        _, sent = self._posting or (0, 0)
        self._posting = None
        self._attempt = 0
        self._batch_limit = self.policy.batch_size
        self._count_written(report, sent)
        self._reader.advance(sent)
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
        self._write_next()

    def _log_problems(self, problems: list[PointProblem]) -> None:
        counts: dict[PointProblem, int] = {}
        for p in problems:
            counts[p] = counts.get(p, 0) + 1
        for p, n in counts.items():
            what = "rejected" if p.rejected else "converted"
            times = f" ({n} values)" if n > 1 else ""
            self._problem_log.failed(
                (what, p.series, p.field, p.reason),
                f"backend {self.key!r} {what} field {p.field!r} of series {p.series!r}: {p.reason}{times}",
            )

    def _write_failed(self, failure: Failure) -> None:
        if self._second is not None:
            if self._second.result is _RUNNING:
                self._head_failure = failure  # handled once the write beside it ended
                return
            self._settle_second()
        offset, sent = self._posting or (0, 0)
        self._posting = None
        batch = self._reader.current
        error = failure.value
        if isinstance(error, PartialDeliveryError):
            self.counters.written += error.delivered
            self._reader.advance(error.delivered)
            sent -= error.delivered
            error = error.cause
        if isinstance(error, _NotForThisBackendError):
            self.counters.dropped += sent
            log.msg(f"buildbot_stats: {points_phrase(sent)} of backend {self.key!r} were dropped: {error}")
            self._reader.advance(sent)
            self._write_next()
            return
        if isinstance(error, SplitBatchError):
            if sent > 1:
                self._batch_limit = max(1, sent // 2)
            else:
                self.counters.dropped += sent
                series = batch.series_at(batch.offset) if batch is not None else "?"
                self._reader.advance(sent)
                self._log_problems([PointProblem(series, "*", f"refused by the backend: {error}")])
            self._write_next()
            return
        self._attempt += 1
        self.counters.retried += sent
        if batch is not None and batch.offset == 0 and self._reader.whole:
            # return the batches to the spool while the backend fails, so the bounds can drop them
            # (not one written in part: it would be read, and written, whole again)
            self._reader.give_back()
        needs_fixing = isinstance(error, RefusedWriteError)
        if needs_fixing:
            self._needs_prepare = True  # e.g. render the password again: it may have been fixed
        message = f"{type(error).__name__}: {error}"
        if self._failure_logged != message:
            log.msg(
                f"buildbot_stats: writing {points_phrase(sent)} to backend {self.key!r} failed "
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
        if self._posting is None and self._second is None and self._reader.idle:
            # (a write beside the one before may still run: it ends the drain when applied)
            self._fire_drained()
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
        elif self._posting is not None or self._second is not None:
            # a write is running in a thread: give it the time, then leave
            yield self._wait_drained(timeout)
        self._reader.drop_read_ahead()
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
        self._problem_log.flush()
