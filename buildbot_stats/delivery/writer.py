"""The spool writer: what captures record becomes points, encoded once and spooled (group commit).

Captures hand their results to the service as records (:data:`Record`); the
reactor does nothing more with them than append them to one flat list.
:class:`SpoolWriter` hands everything recorded since the last spool write (at
most :data:`MAX_RECORDS_PER_WRITE` records) to the spool thread in one call:
there :func:`thd_spool_records` makes the records points, encodes each
backend's points once, :data:`ENCODE_CHUNK` at a time (line protocol for
InfluxDB, see ``thd_encode``; a compact columnar record for others) and writes
them as segments in one transaction; then the Deferreds of the callers fire.
So a Deferred of ``store()`` (and of ``yieldMetricsValue``) fires once its
point is in the spool.  What happens next, per backend, is :mod:`delivery`.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.python import log
from twisted.python.failure import Failure

from buildbot_stats.delivery.spool import COLUMNS, NewSegment, SpoolState, encode_segment
from buildbot_stats.delivery.spool_thread import SpoolThread
from buildbot_stats.point import Point, PointProblem, to_ns

__all__ = [
    "ENCODE_CHUNK",
    "MAX_RECORDS_PER_WRITE",
    "Record",
    "Route",
    "SpoolResult",
    "SpoolWriter",
    "points_phrase",
    "thd_spool_records",
]

#: what ``store()`` records, in the reactor: (backend keys, series, post_data, context, time)
Record = tuple[Sequence[Any], Any, Any, Any, Any]


def points_phrase(n: int) -> str:
    """``"1 point"``, ``"2 points"``: for log lines."""
    return f"{n} point" if n == 1 else f"{n} points"


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
    #: values that could not become points, by (series as shown, why): one log line per burst
    unstored: dict[tuple[str, str], int] = field(default_factory=dict)


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

#: segment size for the points of a backend removed while they waited (see thd_spool_records)
ORPHAN_SEGMENT_POINTS = 5000


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
        if report is not None:  # (a WriteReport; a backend's own may leave either part out)
            problems = getattr(report, "problems", None)
            if problems:
                result.problems.setdefault(self.key, []).extend(problems)
            rejected = getattr(report, "rejected_points", 0)
            if rejected:
                result.rejected[self.key] = result.rejected.get(self.key, 0) + rejected
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
        first, last = segment.first_ns, segment.last_ns  # a segment made of points has both
        if not self.parts:
            self.first, self.last = first, last
        else:
            # an unknown time stays unknown: delivery compares segments' times (_Batch.after)
            self.first = None if self.first is None or first is None else min(self.first, first)
            self.last = None if self.last is None or last is None else max(self.last, last)
        self.parts.append(segment.data)
        self.n += segment.n

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
    orphan_prefix: str | None = None,
) -> SpoolResult:
    """Make points of ``records``, encode them once per backend, write them in one transaction.

    Runs on the spool thread: the reactor only appended the records, flat
    (see :class:`SpoolWriter`; a record's first item names its backends by
    queue key).  Points for a backend that a reconfig removed while they
    waited are spooled under ``orphan_prefix + key`` (as columns), like the
    points such a backend left in the spool: sent if it is configured again.
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
                why = (_shown(series), _failure_text(e))
                result.unstored[why] = result.unstored.get(why, 0) + 1
                continue
        for key in keys:
            maker = makers.get(key)
            if maker is None:
                route = routes.get(key)
                if route is None:
                    if orphan_prefix is None:
                        continue
                    route = Route(f"{orphan_prefix}{key}", None, ORPHAN_SEGMENT_POINTS)
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
        #: spool-key prefix of the points of backends no longer configured (see thd_spool_records)
        self.orphan_prefix: str | None = None
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
        d = self.spool.call(thd_spool_records, records, self.routes, self.bounds, self.orphan_prefix)
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
