"""Getting points from a capture to one backend: the spool is the backlog; group commit; retries.

Captures hand their results to the service as tuples (:data:`Record`); the
reactor does nothing more with them.  :class:`SpoolWriter` (group commit)
hands everything recorded since the last spool write to the spool thread in
one call: there the records become points, each backend's points are encoded
once (line protocol for InfluxDB, see ``thd_encode``; a compact columnar
record for others) and written as segments in one transaction, and the
Deferreds of the callers fire.  So a Deferred of ``store()`` (and of
``yieldMetricsValue``) fires once its point is in the spool.

One :class:`DeliveryQueue` serves one backend.  Its pending points are not in
memory: they are in the spool, and :class:`Backlog` only mirrors the spool's
counts.  The queue, the writer, takes the oldest segments (up to
``batch_size`` points) from the spool thread, posts them in one thread call,
keeps them for retries and releases them (the spool deletes them) once the
backend accepted them; it reads the next batch while one is being posted.
Memory for delivery is thus a few batches per backend, whatever the backlog.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from twisted.internet import defer, threads
from twisted.python import log
from twisted.python.failure import Failure

from buildbot_stats.burst_log import BurstLog
from buildbot_stats.errors import PartialDeliveryError, RefusedWriteError, SplitBatchError
from buildbot_stats.lineprotocol import split_lines
from buildbot_stats.options import DeliveryPolicy
from buildbot_stats.point import Point, PointProblem, to_ns
from buildbot_stats.spool import COLUMNS, NewSegment, SpoolState, TakenSegment, encode_segment
from buildbot_stats.spool_thread import SpoolThread
from buildbot_stats.storage_backends.base import WriteReport, post_points

__all__ = ["Backlog", "Counters", "DeliveryQueue", "Record", "SpoolWriter", "points_phrase"]

#: what ``store()`` records, in the reactor: (backend keys, series, post_data, context, time)
Record = tuple[Sequence[Any], Any, Any, Any, Any]


def points_phrase(n: int) -> str:
    """``"1 point"``, ``"2 points"``: for log lines."""
    return f"{n} point" if n == 1 else f"{n} points"


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


# -- the spool thread's side of a spool write -----------------------------------------


@dataclass
class Route:
    """Where the points of one backend go: its queue key, encoder and segment size."""

    spool_key: str
    encoder: Callable[[list[Point]], Any] | None
    batch_size: int


@dataclass
class SpoolResult:
    """What one spool write did, by spool key (in the reactor afterwards)."""

    states: dict[str, SpoolState]
    captured: dict[str, int]
    problems: dict[str, list[PointProblem]]
    rejected: dict[str, int]
    errors: list[str]
    lost: dict[str, int]  # points that could not be spooled at all (an unexpected error)


def _point(series: Any, post_data: Any, context: Any, t: Any) -> Point:
    return Point(
        series if type(series) is str else str(series),
        post_data
        if type(post_data) is dict
        else dict(post_data)
        if isinstance(post_data, dict)
        else {"value": post_data},
        context if type(context) is dict else dict(context) if context else {},
        t if type(t) is int and t >= 10**12 else to_ns(t),  # ns already (the clock), else convert
    )


#: At most this many records go to the spool thread in one write (about 10 ms of
#: its time): a master posting faster than that gets several writes in a row,
#: and the deliveries' reads and releases run between them.
MAX_RECORDS_PER_WRITE = 4096

#: Points are made and encoded this many at a time, then dropped: a Point that
#: lives through a whole spool write (tens of thousands of records when the
#: master is busy) reaches Python's oldest GC generation and makes the
#: collector walk the master's whole heap far more often.
ENCODE_CHUNK = 256


def _shown(value: Any) -> str:
    """``repr(value)`` for a log line, even when the value's own repr raises."""
    try:
        return repr(value)
    except Exception:
        return f"<{type(value).__name__} that cannot be shown>"


def _failure_text(e: BaseException) -> str:
    """``"TypeName: message"``, even when the exception's message cannot be made."""
    try:
        return f"{type(e).__name__}: {e}"
    except Exception:
        return type(e).__name__


def _failing_part(point: Point, encoder: Callable[[list[Point]], Any] | None) -> str:
    """``", field 'x'"`` (or a tag) for a point that cannot be encoded, if one part alone fails."""
    for key, value in point.fields.items():
        try:
            encode_segment("", [Point(point.series, {key: value}, {}, point.time_ns)], encoder)
        except Exception:
            return f", field {_shown(key)}"
    for key, value in point.tags.items():
        try:
            encode_segment("", [Point(point.series, {"_": 0}, {key: value}, point.time_ns)], encoder)
        except Exception:
            return f", tag {_shown(key)}"
    return ""


class _SegmentMaker:
    """The segments of one backend in one spool write: points encoded a chunk at a time.

    Encoded data is one point per line, so the chunks of a segment are joined
    with newlines; points for backends without ``thd_encode`` (columns) are
    kept up to a segment.
    """

    def __init__(self, key: str, route: Route, result: SpoolResult, segments: list[NewSegment]) -> None:
        self.key = key
        self.route = route
        self.result = result
        self.segments = segments
        self.points: list[Point] = []  # made, not encoded yet
        self.parts: list[bytes] = []  # encoded chunks of the segment being made
        self.encoding: str | None = None
        self.n = 0
        self.first: int | None = None
        self.last: int | None = None
        self.chunk = min(ENCODE_CHUNK, route.batch_size) if route.encoder is not None else route.batch_size
        self.added = 0  # points handed to it (the backend's ``captured``)
        self.failed = 0  # points dropped because they could not be encoded
        self.failure: str | None = None  # the first of them, for the log line

    def finish(self) -> None:
        if self.points:
            self._encode()
        self._close_segment()
        if self.failed:
            self.result.errors.append(
                f"dropped {points_phrase(self.failed)} of backend {self.key!r} that could not be "
                f"encoded ({self.failure})"
            )
            self.result.lost[self.key] = self.result.lost.get(self.key, 0) + self.failed

    def _encode(self) -> None:
        points, self.points = self.points, []
        self.added += len(points)
        try:
            segment, report = encode_segment(self.key, points, self.route.encoder)
        except Exception as e:
            self._encode_apart(points, e)
            return
        self._add(segment, report)

    def _encode_apart(self, points: list[Point], error: Exception) -> None:
        """A chunk failed to encode: drop only the points that fail on their own.

        A value whose ``str()`` or pickling raises (a bug in what posted it)
        must not cost the other points of its chunk; the first failure, with
        its series and field, is said once for the write (see :meth:`finish`).
        An encoder that fails even for a plain point fails the chunk, as is.
        """
        encoder = self.route.encoder
        probe = points[0]
        try:
            encode_segment(self.key, [Point(probe.series, {"_": 0}, {}, probe.time_ns)], encoder)
        except Exception:
            self.failed += len(points)
            if self.failure is None:
                self.failure = _failure_text(error)
            return
        good = []
        for point in points:
            try:
                encode_segment(self.key, [point], encoder)
            except Exception as e:
                self.failed += 1
                if self.failure is None:
                    self.failure = (
                        f"series {_shown(point.series)}{_failing_part(point, encoder)}: {_failure_text(e)}"
                    )
                continue
            good.append(point)
        if not good:
            return
        try:
            segment, report = encode_segment(self.key, good, encoder)
        except Exception as e:  # each encodes alone but not together: drop them all
            self.failed += len(good)
            if self.failure is None:
                self.failure = f"series {_shown(good[0].series)}: {_failure_text(e)}"
            return
        self._add(segment, report)

    def _add(self, segment: NewSegment | None, report: Any) -> None:
        result = self.result
        if report is not None:
            if report.problems:
                result.problems.setdefault(self.key, []).extend(report.problems)
            if report.rejected_points:
                result.rejected[self.key] = result.rejected.get(self.key, 0) + report.rejected_points
        if segment is None:
            return
        if segment.encoding == COLUMNS:
            self.segments.append(segment)
            return
        if self.encoding is not None and (
            segment.encoding != self.encoding or self.n + segment.n > self.route.batch_size
        ):
            self._close_segment()
        self.encoding = segment.encoding
        self.parts.append(segment.data)
        self.n += segment.n
        first, last = segment.first_ns, segment.last_ns  # a segment made of points has both
        self.first = first if self.first is None or first is None else min(self.first, first)
        self.last = last if self.last is None or last is None else max(self.last, last)

    def _close_segment(self) -> None:
        if self.parts and self.encoding is not None:
            data = self.parts[0] if len(self.parts) == 1 else b"\n".join(self.parts)
            self.segments.append(NewSegment(self.key, self.n, self.first, self.last, self.encoding, data))
        self.parts, self.encoding, self.n, self.first, self.last = [], None, 0, None, None


def thd_spool_records(
    spool: Any,
    records: list[Any],
    routes: dict[str, Route],
    bounds: dict[str, tuple[int, int | None]],
) -> SpoolResult:
    """Make points of ``records``, encode them once per backend, write them in one transaction.

    Runs on the spool thread: the reactor only appended the records, flat
    (see :class:`SpoolWriter`; a record's first item names its backends by
    queue key).
    """
    result = SpoolResult({}, {}, {}, {}, [], {})
    segments: list[NewSegment] = []
    makers: dict[str, _SegmentMaker] = {}
    captured = result.captured
    items = iter(records)
    for keys, series, post_data, context, t in zip(items, items, items, items, items):
        if type(series) is str and type(post_data) is dict and type(context) is dict and type(t) is int:
            point = Point(series, post_data, context, t if t >= 10**12 else to_ns(t))
        else:
            try:
                point = _point(series, post_data, context, t)
            except Exception as e:
                result.errors.append(f"a value of series {_shown(series)} was not stored: {_failure_text(e)}")
                continue
        for key in keys:
            maker = makers.get(key)
            if maker is None:
                route = routes.get(key)
                if route is None:
                    continue
                maker = makers[key] = _SegmentMaker(route.spool_key, route, result, segments)
            # (SegmentMaker.add, inlined: this runs once per point and backend)
            waiting = maker.points
            waiting.append(point)
            if len(waiting) >= maker.chunk:
                maker._encode()
    for maker in makers.values():
        maker.finish()
        captured[maker.key] = captured.get(maker.key, 0) + maker.added
    try:
        result.states.update(spool.thd_write(segments, bounds))
    except Exception as e:
        result.errors.append(f"the spool could not be written: {type(e).__name__}: {e}")
        for seg in segments:
            result.lost[seg.queue_key] = result.lost.get(seg.queue_key, 0) + seg.n
    return result


#: the longest a spool writer kept busy by a stream of values holds back delivery (seconds)
DELIVERY_HOLD_S = 0.1


class SpoolWriter:
    """Group commit of the spool: everything recorded while a spool write runs is the next write.

    A quiet master spools each value at once; a busy one writes everything
    posted meanwhile, by all callers, in one transaction.

    After a spool write, ``deliver`` gets its result at once (counters), but the
    queues are told to send (``start_delivery``) only once no spool write
    follows right away, or every :data:`DELIVERY_HOLD_S` seconds of a stream of
    writes: a build awaiting its values one by one then does not have each of
    them read back from the spool and posted on its own, in threads competing
    with it for the GIL.
    """

    def __init__(
        self,
        spool: SpoolThread,
        deliver: Callable[[SpoolResult], None],
        start_delivery: Callable[[], None] | None = None,
    ) -> None:
        self.spool = spool
        self._deliver = deliver
        self._start_delivery = start_delivery
        self._held_since: float | None = None  # delivery held back since (``clock()``)
        self.clock: Callable[[], float] = time.monotonic
        #: the records since the last write, flat (5 items each): waiting records
        #: then leave no object per point to Python's garbage collector, which would
        #: otherwise move thousands of them to its oldest generation on a busy master
        #: and walk the whole heap more often
        self.records: list[Any] = []
        #: earlier record lists that reached a write's size, oldest first
        self._full: deque[list[Any]] = deque()
        self._waiter: defer.Deferred | None = None  # fires when ``records`` are spooled
        self._writing = False
        self._looping = False  # in _write's loop: a write that finishes at once does not recurse
        #: waiters for the write under way (nothing else was waiting when they came)
        self._idle: list[defer.Deferred] = []
        #: by queue key (what a record names its backends by)
        self.routes: dict[str, Route] = {}
        self.bounds: dict[str, tuple[int, int | None]] = {}
        #: incremented by every record (so a caller can tell whether its call recorded any)
        self.recorded = 0

    def add(self, record: Record) -> defer.Deferred:
        """Record one capture result; the Deferred fires once it is spooled.

        The Deferred is shared by the records of one spool write: it fires with
        None, and callbacks added to it must return their argument.
        """
        records = self.records
        records += record
        if len(records) >= MAX_RECORDS_PER_WRITE * 5:  # five items per record
            self._full.append(records)
            self.records = []
        self.recorded += 1
        d = self._waiter
        if d is None:
            d = self._waiter = defer.Deferred()
        if not self._writing:
            self._write()
        return d

    def add_many(self, records: list[Record]) -> defer.Deferred:
        """Record several results for one spool write (if none runs); fires once all are spooled."""
        if not records:
            return self.waiter()
        for record in records[:-1]:
            current = self.records
            current += record
            if len(current) >= MAX_RECORDS_PER_WRITE * 5:
                self._full.append(current)
                self.records = []
        self.recorded += len(records) - 1
        self.add(records[-1])
        return self.waiter()

    def waiter(self) -> defer.Deferred:
        """A Deferred of its own that fires once everything recorded so far is spooled."""
        d: defer.Deferred = defer.Deferred()
        if self._waiter is not None:

            def fire(result: Any) -> Any:
                d.callback(None)
                return result

            self._waiter.addBoth(fire)
        elif self._writing:
            # nothing waits to be written (else there would be a _waiter): all that
            # was recorded is in the write under way, or written
            self._idle.append(d)
        else:
            d.callback(None)
        return d

    def _write(self) -> None:
        # Writes follow each other in this loop when one finishes at once (Buildbot's
        # test reactor runs thread calls at once; a stopped spool thread fails at
        # once): a burst of many writes must not nest one call per write.
        looping, self._looping = self._looping, True
        try:
            while self._write_one():
                pass
        finally:
            self._looping = looping

    def _write_one(self) -> bool:
        """Start the next write; True when it finished at once and more is waiting."""
        if self._full:
            # A long write would hold the spool thread, and with it the delivery's
            # reads and releases: what was recorded after the first
            # MAX_RECORDS_PER_WRITE is the next write, and the callers' Deferred
            # fires with the last of them.
            records = self._full.popleft()
            waiter = None
            if not self._full and not self.records:
                waiter, self._waiter = self._waiter, None
        else:
            records, self.records = self.records, []
            waiter, self._waiter = self._waiter, None
        if not records:
            idle, self._idle = self._idle, []
            for w in idle:
                w.callback(None)
            if waiter is not None:
                waiter.callback(None)
            return False
        self._writing = True
        d = self.spool.call(thd_spool_records, records, self.routes, self.bounds)
        finished_at_once = False

        def done(result: Any) -> None:
            nonlocal finished_at_once
            if isinstance(result, Failure):
                log.msg(f"buildbot_stats: could not write the spool: {result.getErrorMessage()}")
            else:
                try:
                    self._deliver(result)
                except Exception:
                    log.err(None, "buildbot_stats: internal error after a spool write")
            # Callers resume while this write still counts as running, so that what
            # they all post next is one write, not one write for the first of them.
            # The waiters that came while it ran (see waiter()) were waiting for it.
            idle, self._idle = self._idle, []
            if waiter is not None:
                waiter.callback(None)
            for w in idle:
                w.callback(None)
            self._writing = False
            if self._looping:
                finished_at_once = True  # the loop in _write goes on
            elif self.records or self._full or self._idle:
                self._write()
            self._maybe_start_delivery()

        d.addBoth(done)
        return finished_at_once and bool(self.records or self._full or self._idle)

    def holding(self) -> bool:
        """True while delivery is held back: a call of ``start_delivery`` follows."""
        return self._held_since is not None

    def _maybe_start_delivery(self) -> None:
        """Let the queues send, unless the next spool write already runs (for a while at most)."""
        start = self._start_delivery
        if start is None:
            return
        if self._writing:
            now = self.clock()
            if self._held_since is None:
                self._held_since = now
                return
            if now - self._held_since < DELIVERY_HOLD_S:
                return
        self._held_since = None
        try:
            start()
        except Exception:
            log.err(None, "buildbot_stats: internal error after a spool write")

    def wait_spooled(self) -> defer.Deferred:
        """Fires when everything recorded so far has been spooled."""
        return self.waiter()


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

    __slots__ = ("ids", "n", "encoding", "points", "data", "lines", "offset")

    def __init__(self, segments: list[TakenSegment]) -> None:
        self.ids = [s[0] for s in segments]
        self.encoding = segments[0][2]
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
        if state is not None:
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
        if self._posting is not None or self._retry_call is not None or self._preparing:
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

    def _written(self, report: WriteReport | None) -> None:
        _, sent = self._posting or (0, 0)
        self._posting = None
        self._attempt = 0
        self._batch_limit = self.policy.batch_size
        rejected = report.rejected_points if report else 0
        self.counters.written += sent - rejected
        self.counters.dropped += rejected
        if report and report.problems:
            self._log_problems(report.problems)
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
        if self._restored:
            self._restored = max(0, self._restored - sent)
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
            self._problem_log.failed(
                (what, p.series, p.field, p.reason),
                f"backend {self.key!r} {what} field {p.field!r} of series {p.series!r}: {p.reason}{times}",
            )

    def _write_failed(self, failure: Failure) -> None:
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
        if batch is not None and batch.offset == 0:
            # return the batches to the spool while the backend fails, so the bounds can drop them
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
        if self._posting is None and self._reader.idle:
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
        elif self._posting is not None:
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
