"""The spool writer: the reactor appends records to a flat list; the spool thread makes them points,
encodes them once per backend and writes them in one transaction (group commit), then ``store()``
fires: its point is in the spool.  What happens next, per backend, is :mod:`.queue`."""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from twisted.internet import defer
from twisted.python import log
from twisted.python.failure import Failure

from buildbot_stats.delivery.spool import NewSegment, SpoolState, SpoolThread, encode_segment
from buildbot_stats.point import Point, PointProblem, to_ns

#: what ``store()`` records, in the reactor: (backend keys, series, post_data, context, time)
Record = tuple[Sequence[Any], Any, Any, Any, Any]

#: records per spool write (about 10 ms of its thread): deliveries read and release between a burst's writes
MAX_RECORDS_PER_WRITE = 4096

#: points made and encoded at a time, then dropped: a Point living through a whole spool write would
#: reach Python's oldest GC generation, and make the collector walk the master's heap far more often
ENCODE_CHUNK = 256

#: segment size for the points of a backend removed while they waited (see thd_spool_records)
ORPHAN_SEGMENT_POINTS = 5000


def points_phrase(n: int) -> str:
    """``"1 point"``, ``"2 points"``: for log lines."""
    return f"{n} point" if n == 1 else f"{n} points"


@dataclass
class Route:
    """Where the points of one backend go: its spool key, encoder, segment size and spool bounds."""

    spool_key: str
    encoder: Callable[[list[Point]], Any] | None
    batch_size: int
    bounds: tuple[int, int | None] | None = None  # (max points, max bytes); None: unbounded


@dataclass
class SpoolResult:
    """What one spool write did, by spool key (in the reactor afterwards)."""

    states: dict[str, SpoolState] = field(default_factory=dict)
    captured: Counter[str] = field(default_factory=Counter)
    problems: dict[str, list[PointProblem]] = field(default_factory=dict)
    #: rejected by the backend's encoder, or not encoded or written at all (then said in ``errors``)
    dropped: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    #: values that could not become points, by (series as shown, why): one log line per burst
    unstored: Counter[tuple[str, str]] = field(default_factory=Counter)


def _shown(value: Any, text: Callable[[Any], str] = repr, fallback: str = "<{} that cannot be shown>") -> str:
    """``text(value)`` for a log line, even when the value's own repr (or str) raises."""
    try:
        return text(value)
    except Exception:
        return fallback.format(type(value).__name__)


def _failure_text(e: BaseException) -> str:
    return _shown(e, lambda e: f"{type(e).__name__}: {e}", "{}")


def _point(series: Any, post_data: Any, context: Any, t: Any) -> Point:
    """The point of a record: the values as the capture gave them (a plain value is ``value``)."""
    if type(post_data) is not dict:
        post_data = dict(post_data) if isinstance(post_data, dict) else {"value": post_data}
    return Point(
        series if type(series) is str else str(series),
        post_data,
        context if type(context) is dict else dict(context or {}),
        t if type(t) is int and t >= 10**12 else to_ns(t),  # ns already (the clock), else convert
    )


class _SegmentMaker:
    """The segments of one backend in one spool write: its points encoded a chunk (a segment) at a time."""

    def __init__(self, route: Route, result: SpoolResult, segments: list[NewSegment]) -> None:
        self.key, self.route, self.result, self.segments = route.spool_key, route, result, segments
        self.points: list[Point] = []  # made, not encoded yet
        self.chunk = min(ENCODE_CHUNK, route.batch_size) if route.encoder is not None else route.batch_size
        self.failed = 0  # points dropped because they could not be encoded
        self.failure: str | None = None  # the first of them, for the log line

    def encode(self) -> None:
        points, self.points = self.points, []
        self.result.captured[self.key] += len(points)
        try:
            self._add(*encode_segment(self.key, points, self.route.encoder))
        except Exception as e:  # drop only the points that fail on their own (a value whose str() raises)
            failures, where = [(p, e) for p in points], ""
            plain = Point(points[0].series, {"_": 0}, {}, points[0].time_ns)
            if self._error(plain) is None:  # else the encoder fails for any point: blame none
                failures = [(p, error) for p in points if (error := self._error(p)) is not None]
                good = [p for p in points if self._error(p) is None]
                try:
                    if good:
                        self._add(*encode_segment(self.key, good, self.route.encoder))
                except Exception as together:  # each encodes alone but not together: drop them all
                    failures += [(p, together) for p in good]
                if failures:
                    where = f"series {_shown(failures[0][0].series)}{self._failing_part(failures[0][0])}: "
            if failures and self.failure is None:
                self.failure = where + _failure_text(failures[0][1])
            self.failed += len(failures)

    def _error(self, point: Point) -> Exception | None:
        try:
            encode_segment("", [point], self.route.encoder)
        except Exception as e:
            return e
        return None

    def _failing_part(self, point: Point) -> str:
        """``", field 'x'"`` (or a tag) for a point that cannot be encoded, if one part alone fails."""
        parts = [
            ("field", k, Point(point.series, {k: v}, {}, point.time_ns)) for k, v in point.fields.items()
        ]
        parts += [
            ("tag", k, Point(point.series, {"_": 0}, {k: v}, point.time_ns)) for k, v in point.tags.items()
        ]
        return next((f", {kind} {_shown(key)}" for kind, key, alone in parts if self._error(alone)), "")

    def _add(self, segment: NewSegment | None, report: Any) -> None:
        if getattr(report, "problems", None):  # (a WriteReport or None; a backend's own may lack a part)
            self.result.problems.setdefault(self.key, []).extend(report.problems)
        if getattr(report, "rejected_points", 0):
            self.result.dropped[self.key] += report.rejected_points
        if segment is not None:
            self.segments.append(segment)

    def finish(self) -> None:
        if self.points:
            self.encode()
        if self.failed:
            dropped = f"dropped {points_phrase(self.failed)} of backend {self.key!r}"
            self.result.errors.append(f"{dropped} that could not be encoded ({self.failure})")
            self.result.dropped[self.key] += self.failed


def thd_spool_records(
    spool: Any, records: list[Any], routes: dict[str, Route], orphan_prefix: str = ""
) -> SpoolResult:
    """Make points of ``records``, encode them once per backend, write them in one transaction; points
    of a backend removed while they waited go under ``orphan_prefix + key``, as columns."""
    result = SpoolResult()
    segments: list[NewSegment] = []
    makers: dict[str, _SegmentMaker] = {}
    items = iter(records)
    for keys, series, post_data, context, t in zip(items, items, items, items, items):
        try:
            point = _point(series, post_data, context, t)
        except Exception as e:
            result.unstored[_shown(series), _failure_text(e)] += 1
            continue
        for key in keys:
            maker = makers.get(key)
            if maker is None:
                route = routes.get(key) or Route(f"{orphan_prefix}{key}", None, ORPHAN_SEGMENT_POINTS)
                maker = makers[key] = _SegmentMaker(route, result, segments)
            maker.points.append(point)
            if len(maker.points) >= maker.chunk:
                maker.encode()
    for maker in makers.values():
        maker.finish()
    bounds = {r.spool_key: r.bounds for r in routes.values() if r.bounds is not None}
    degraded = spool.degraded
    try:
        result.states = spool.thd_write(segments, bounds)
    except Exception as e:
        result.errors.append(f"the spool could not be written: {type(e).__name__}: {e}")
        for seg in segments:
            result.dropped[seg.queue_key] += seg.n
    if spool.degraded != degraded:  # said once, when the file turns unwritable (or writable again)
        result.errors.append(
            f"cannot write the spool {spool.path} ({spool.degraded}); new points are kept in memory, "
            "within the same bounds, until it can be written again"
            if spool.degraded is not None
            else f"the spool {spool.path} can be written again; the points kept in memory moved to it"
        )
    return result


class _Write(NamedTuple):
    """Records for one spool write (flat: five items each) and the Deferred of their callers."""

    records: list[Any]
    done: defer.Deferred


class SpoolWriter:
    """Group commit: what is recorded while a spool write runs is the next write.  ``deliver`` gets each
    result (counters); ``start_delivery`` runs once no write follows: values awaited one by one are then
    not read back and posted each on its own (a stream that never pauses: see ``DeliveryQueue._held``)."""

    def __init__(
        self,
        spool: SpoolThread,
        deliver: Callable[[SpoolResult], None],
        start_delivery: Callable[[], None] = lambda: None,
        orphan_prefix: str = "",
    ) -> None:
        self.spool, self._deliver, self._start_delivery = spool, deliver, start_delivery
        self._orphan_prefix = orphan_prefix  # (see thd_spool_records)
        self.routes: dict[str, Route] = {}  # by queue key (what a record names its backends by)
        self._waiting: deque[_Write] = deque()  # recorded, not written yet, oldest first
        self._writing: _Write | None = None
        self._looping = False  # in _write's loop: a write that finishes at once does not recurse
        self.recorded = 0  # incremented by every record (a caller can tell whether its call recorded any)
        spool.retry = self.retry

    def retry(self) -> None:
        """A spool write (of nothing, or of what waits): the spool tries its file again (see SpoolThread)."""
        self._waiting.append(_Write([], defer.Deferred()))  # (what is recorded next joins it)
        self._write()

    def _append(self, record: Record) -> _Write:
        waiting = self._waiting
        if not waiting or len(waiting[-1].records) >= MAX_RECORDS_PER_WRITE * 5:
            waiting.append(_Write([], defer.Deferred()))
        write = waiting[-1]
        write.records.extend(record)
        self.recorded += 1
        return write

    def add(self, record: Record) -> defer.Deferred:
        """Record one capture result; the Deferred fires (with None) once it is spooled.  It is shared
        by the records of one spool write: callbacks added to it must return their argument."""
        done = self._append(record).done
        self._write()
        return done

    def add_many(self, records: list[Record]) -> defer.Deferred:
        """Record several results (one spool write, if none runs); fires once all are spooled."""
        for record in records:
            self._append(record)
        self._write()
        return self.waiter()

    def waiter(self) -> defer.Deferred:
        """A Deferred of its own that fires once everything recorded so far is spooled."""
        d: defer.Deferred = defer.Deferred()
        last = self._waiting[-1] if self._waiting else self._writing
        if last is None:
            d.callback(None)
        else:
            last.done.chainDeferred(d)  # (``done`` fires with None, and so goes on with None)
        return d

    def _write(self) -> None:
        # a loop: a write that finishes at once (Buildbot's test reactor) must not nest the next call
        if self._looping:
            return
        self._looping = True
        try:
            while self._writing is None and self._waiting:
                write = self._writing = self._waiting.popleft()
                d = self.spool.call(thd_spool_records, write.records, self.routes, self._orphan_prefix)
                d.addBoth(self._written, write)
        finally:
            self._looping = False

    def _written(self, result: SpoolResult | Failure, write: _Write) -> None:
        if isinstance(result, Failure):
            log.msg(f"buildbot_stats: could not write the spool: {result.getErrorMessage()}")
        else:
            try:
                self._deliver(result)
            except Exception:
                log.err(None, "buildbot_stats: internal error after a spool write")
        # callers resume while this write still counts as running: what they all post next is one write
        write.done.callback(None)
        self._writing = None
        self._write()
        self._maybe_start_delivery()

    def holding(self) -> bool:
        """True while delivery is held back: a call of ``start_delivery`` follows."""
        return self._writing is not None

    def _maybe_start_delivery(self) -> None:
        """Let the queues send, unless the next spool write already runs."""
        if self._writing is not None:
            return
        try:
            self._start_delivery()
        except Exception:
            log.err(None, "buildbot_stats: internal error after a spool write")
