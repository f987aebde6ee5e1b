"""Where points wait until their backend accepted them: the spool *is* the backlog.

A segment leaves the file only once its backend accepted (or dropped) all its
points: after a crash, what is still there is sent again (at least once).
Bounds drop the oldest segments not taken; while the file cannot be written
(disk full, read-only), new segments wait in the in-memory table ``mem``.
The ``thd_*`` methods block: they run on the spool's own thread (:mod:`.spool_thread`).
"""

from __future__ import annotations

import os
import sqlite3
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from buildbot_stats.delivery.spool_file import (
    COLUMNS,
    TABLE,
    WHERE,
    ForeignSpoolFileError,
    dump_points,
    foreign_file_problem,
    is_storage_error,
    load_points,
    lock,
    open_spool_file,
    quarantine,
    unlock,
)
from buildbot_stats.lineprotocol import split_lines
from buildbot_stats.point import Point

__all__ = ["ForeignSpoolFileError", "NewSegment", "SQLiteSpool", "SpoolState", "TakenSegment"]
__all__ += ["encode_segment"]


@dataclass
class NewSegment:
    """Points of one queue to spool, already encoded (in the spool thread)."""

    queue_key: str
    n: int
    first_ns: int | None
    last_ns: int | None
    encoding: str
    data: bytes


class TakenSegment(NamedTuple):
    """A segment taken for a write: its points (a list for :data:`COLUMNS`) or the encoded bytes."""

    id: int
    n: int
    encoding: str
    payload: Any


@dataclass
class SpoolState:
    """A queue's counts after a spool call, and what the call did to its points."""

    pending: int = 0  # points in the spool (taken for a write or not)
    untaken: int = 0  # points in the spool not taken for a write yet
    spooled: int = 0  # points this call wrote to the file (durably)
    dropped: int = 0  # points this call dropped to respect the bounds
    quarantined: int = 0  # points this call set aside as unreadable


def encode_segment(
    queue_key: str, points: list[Point], encoder: Callable[[list[Point]], Any] | None
) -> tuple[NewSegment | None, Any]:
    """One segment for ``points``, by the backend's ``thd_encode`` if it has one, else as columns.

    Returns the segment (None when no point is left) and the backend's report
    on the points it converted or left out (None for columns).
    """
    times = [p.time_ns for p in points]
    first, last = (min(times), max(times)) if times else (None, None)
    if encoder is None:
        return NewSegment(queue_key, len(points), first, last, COLUMNS, dump_points(points)), None
    encoding, data, report = encoder(points)
    # a backend's own thd_encode that breaks its contract fails here, for its points only
    if not isinstance(encoding, str) or not isinstance(data, (bytes, bytearray)):
        raise TypeError(
            f"thd_encode must return (encoding str, data bytes, report), not "
            f"({type(encoding).__name__}, {type(data).__name__}, ...)"
        )
    rejected = getattr(report, "rejected_points", 0) if report is not None else 0
    if not isinstance(rejected, int) or not isinstance(getattr(report, "problems", []), list):
        raise TypeError("thd_encode must return a WriteReport (or None) as its report")
    n = len(points) - rejected
    if n <= 0 or not data:
        return None, report
    return NewSegment(queue_key, n, first, last, encoding, bytes(data)), report


def _drop_first(encoding: str, data: bytes, count: int) -> bytes:
    """``data`` without its first ``count`` points."""
    if encoding == COLUMNS:
        return dump_points(load_points(data)[count:])
    return b"\n".join(split_lines(bytes(data), encoding)[count:])


@dataclass
class _Queue:
    """The spool's book-keeping for one queue key."""

    points: int = 0
    bytes: int = 0
    taken: dict[int, tuple[int, int]] = field(default_factory=dict)  # id -> (n, bytes), taken for a write
    cursor: int = -1  # highest id taken
    unreleased: set[int] = field(default_factory=set)  # released (or dropped) ids whose DELETE failed


class SQLiteSpool:
    """A spool in an SQLite file (WAL mode: it survives a SIGKILL of the master), or in memory (None)."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.durable = path is not None
        self.notice: str | None = None  # what open found, for the log, if anything
        self.degraded: str | None = None  # why the file cannot be written now, if so
        self._db: sqlite3.Connection | None = None
        self._lock: str | None = None
        self._mem_rows = 0  # segments in the in-memory table
        self._queues: defaultdict[str, _Queue] = defaultdict(_Queue)
        self._next_id = 1

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r})"

    def thd_open(self) -> None:
        if self.path is not None:
            problem = foreign_file_problem(self.path)
            if problem is not None:
                raise ForeignSpoolFileError(self.path, problem)
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            self._lock = lock(self.path)  # one process per file (SpoolLockedError)
        try:
            self._db, self.notice = open_spool_file(self.path)
        except BaseException:
            self.thd_close()
            raise
        self._next_id = (self._db.execute(f"SELECT MAX(id) FROM main.{TABLE}").fetchone()[0] or 0) + 1
        sql = f"SELECT queue_key, SUM(n), SUM(length(data)) FROM main.{TABLE} GROUP BY queue_key"
        self._queues.update((key, _Queue(n, size)) for key, n, size in self._db.execute(sql))

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError(f"spool {self.path} is not open")
        return self._db

    def _tables(self) -> tuple[str, ...]:
        return ("main", "mem") if self._mem_rows else ("main",)

    def _state(self, queue_key: str, **changes: int) -> SpoolState:
        q = self._queues[queue_key]
        return SpoolState(pending=q.points, untaken=q.points - sum(n for n, _ in q.taken.values()), **changes)

    def _segments(self, queue_key: str, columns: str, after: int) -> Iterator[tuple[Any, ...]]:
        """``(table, *columns)`` of the segments of a queue after the id ``after``, oldest first."""
        for table in self._tables():  # while the file is not writable, the newest are in memory
            sql = f"SELECT {columns} FROM {table}.{TABLE} WHERE queue_key = ? AND id > ? ORDER BY id"
            for row in self._conn().execute(sql, (queue_key, after)):
                yield (table, *row)

    def _try(self, *statements: tuple[str, list[tuple[Any, ...]]]) -> str | None:
        """Run statements in one transaction; the error if the disk refuses them (full, read-only)."""
        db = self._conn()
        try:
            with db:
                db.execute("BEGIN")
                for sql, params in statements:
                    db.executemany(sql, params)
        except sqlite3.OperationalError as e:
            if not is_storage_error(e):
                raise
            return f"{type(e).__name__}: {e}"
        return None

    def _release(self, queue_key: str, ids: Iterable[int]) -> None:
        """Delete segments whose points all left the queue, and those the disk refused to delete before."""
        q = self._queues[queue_key]
        for sid in ids:
            n, size = q.taken.pop(sid, (0, 0))
            q.points, q.bytes = q.points - n, q.bytes - size
            q.unreleased.add(sid)
        params = [(queue_key, sid) for sid in sorted(q.unreleased)]
        failed = [self._try((f"DELETE FROM {table}.{TABLE} {WHERE}", params)) for table in self._tables()]
        if self._mem_rows:
            self._mem_rows = self._conn().execute(f"SELECT COUNT(*) FROM mem.{TABLE}").fetchone()[0]
        if not any(failed):  # (else they are skipped when reading, and deleted with the next ones)
            q.unreleased = set()

    def thd_write(
        self, segments: list[NewSegment], bounds: dict[str, tuple[int, int | None]]
    ) -> dict[str, SpoolState]:
        """Append ``segments`` in one transaction, then apply each queue's ``(max points, max bytes)``."""
        keys = {seg.queue_key for seg in segments}
        rows = [
            (seg.queue_key, self._next_id + i, seg.n, seg.first_ns, seg.last_ns, seg.encoding, seg.data)
            for i, seg in enumerate(segments)
        ]
        self._next_id += len(rows)
        spooled = self._resume() if self.degraded else {}
        if self.degraded is None:
            self.degraded = self._try((f"INSERT OR REPLACE INTO main.{TABLE} VALUES (?,?,?,?,?,?,?)", rows))
        if self.degraded is not None:
            self._conn().executemany(f"INSERT OR REPLACE INTO mem.{TABLE} VALUES (?,?,?,?,?,?,?)", rows)
            self._mem_rows += len(rows)
        for seg in segments:
            q = self._queues[seg.queue_key]
            q.points += seg.n
            q.bytes += len(seg.data)
            if self.degraded is None and self.durable:
                spooled[seg.queue_key] = spooled.get(seg.queue_key, 0) + seg.n
        states = {}
        for key in keys | set(spooled):
            if self.degraded is None and self._queues[key].unreleased:
                self._release(key, ())
            dropped = self._enforce_bounds(key, *bounds[key]) if key in bounds else 0
            states[key] = self._state(key, spooled=spooled.get(key, 0), dropped=dropped)
        return states

    def _resume(self) -> dict[str, int]:
        """Move the segments kept in memory into the file if it can be written again: points per key."""
        sql = f"SELECT queue_key, SUM(n) FROM mem.{TABLE} GROUP BY queue_key"
        moved = dict(self._conn().execute(sql).fetchall())
        if self._try(
            (f"INSERT OR REPLACE INTO main.{TABLE} SELECT * FROM mem.{TABLE}", [()]),
            (f"DELETE FROM mem.{TABLE}", [()]),
        ):
            return {}
        self._mem_rows = 0
        self.degraded = None
        return moved

    def _enforce_bounds(self, key: str, max_points: int, max_bytes: int | None) -> int:
        """Drop the oldest segments not taken (the last one cut) until the queue is within its bounds."""
        q = self._queues[key]
        if q.points <= max_points and (max_bytes is None or q.bytes <= max_bytes):
            return 0  # (the usual case: no query)
        dropped, doomed = 0, []
        for table, sid, n, size, encoding in self._segments(key, "id, n, length(data), encoding", q.cursor):
            over_points = q.points - max_points
            over_bytes = q.bytes - max_bytes if max_bytes is not None else 0
            if over_points <= 0 and over_bytes <= 0:
                break
            if sid in q.unreleased:
                continue  # dropped already; its delete failed and is retried
            if over_points >= n or over_bytes >= size or n == 1:
                doomed.append(sid)
                q.points, q.bytes, dropped = q.points - n, q.bytes - size, dropped + n
                continue
            cut = max(over_points, 1)  # cut the oldest points off this segment
            sql = f"SELECT data FROM {table}.{TABLE} {WHERE}"
            rest = _drop_first(encoding, self._conn().execute(sql, (key, sid)).fetchone()[0], cut)
            self._try((f"UPDATE {table}.{TABLE} SET n = ?, data = ? {WHERE}", [(n - cut, rest, key, sid)]))
            q.points, q.bytes, dropped = q.points - cut, q.bytes - size + len(rest), dropped + cut
            break
        if doomed:
            self._release(key, doomed)
        return dropped

    def thd_take(
        self, queue_key: str, max_points: int, release: Iterable[int] = (), rewind: bool = False
    ) -> tuple[list[TakenSegment], SpoolState]:
        """Release the segments ``release`` (their points all left the queue), go back to the oldest if
        ``rewind`` (a failed write gave its batch back), then take the oldest segments not taken, of one
        encoding, up to ``max_points`` (one at least, unless 0): one spool call per batch.

        A segment that cannot be read is moved to the table ``buildbot_stats_unreadable``.
        """
        q = self._queues[queue_key]
        if release:
            self._release(queue_key, release)
        if rewind:
            q.taken.clear()
            q.cursor = -1
        taken: list[TakenSegment] = []
        bad: list[tuple[str, int, int, str, bytes, Exception]] = []
        count = 0
        segments = self._segments(queue_key, "id, n, encoding, data", q.cursor) if max_points > 0 else ()
        for table, sid, n, encoding, data in segments:
            if sid not in q.unreleased:  # (one dropped whose delete is still to be retried is skipped)
                if taken and (count + n > max_points or encoding != taken[0].encoding):
                    break
                try:
                    payload = load_points(data) if encoding == COLUMNS else bytes(data)
                except Exception as e:
                    bad.append((table, sid, n, encoding, data, e))
                else:
                    taken.append(TakenSegment(sid, n, encoding, payload))
                    q.taken[sid] = (n, len(data))
                    count += n
            q.cursor = sid
        if bad:
            with self._conn() as db:
                db.execute("BEGIN")
                for table, sid, n, encoding, data, error in bad:
                    quarantine(db, table, queue_key, sid, encoding, data, error)
                    q.points, q.bytes = q.points - n, q.bytes - len(data)
                    self._mem_rows -= table == "mem"
        return taken, self._state(queue_key, quarantined=sum(n for _, _, n, *_ in bad))

    def thd_pending_counts(self) -> dict[str, int]:
        """Queue key -> pending points, for every queue in the spool."""
        return {key: q.points for key, q in self._queues.items() if q.points}

    def thd_close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._lock is not None:
            unlock(self._lock)
            self._lock = None
