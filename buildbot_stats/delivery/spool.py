"""Where points wait until their backend accepted them: the spool *is* the backlog.

A segment leaves the spool only once its backend accepted (or dropped) all its points:
after a crash, what the file still holds is sent again (at least once).  Bounds drop the
oldest segments not taken.  While the file cannot be written (disk full, read-only) or
opened, new segments wait in a table in memory, and move to the file once it can take them.
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
    create_tables,
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

__all__ = ["COLUMNS", "ForeignSpoolFileError", "NewSegment", "SQLiteSpool", "SpoolState", "TakenSegment"]
__all__ += ["encode_segment", "foreign_file_problem"]

#: a row's point count, never more than one point per byte of its data (a crafted count is checked when read)
_N = "MAX(0, MIN(n, length(data)))"
_INSERT = f"INSERT OR REPLACE INTO {TABLE} VALUES (?,?,?,?,?,?,?)"


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

    Returns the segment (None when no point is left) and the backend's report (None for columns).
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


def _check_count(n: int, payload: Any) -> None:
    """A row's point count must be its payload's: a crafted one would skew ``pending`` and the batches."""
    if isinstance(payload, list):
        held = len(payload) == n
    else:  # one point per line (a line protocol string value may hold newlines: then at most)
        lines = payload.count(b"\n") + 1
        held = 0 < n <= lines and (n == lines or b'"' in payload)
    if not held:
        raise ValueError(f"the row counts {n} point(s), which its data does not hold")


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
        self.notices: list[str] = []  # what the spool found, for the log (SpoolThread says them)
        self.degraded: str | None = None  # why new segments are kept in memory, if they are
        self.open_due = False  # True: the next write tries to open the file (SpoolThread's retries)
        self._file: sqlite3.Connection | None = None
        self._mem = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        create_tables(self._mem)
        self._lock: str | None = None
        self._inode = 0  # of the file opened
        self._refiled: dict[str, int] = {}  # points copied from a deleted file: not counted as spooled again
        self._queues: defaultdict[str, _Queue] = defaultdict(_Queue)
        self._next_id = 1

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r})"

    @property
    def durable(self) -> bool:
        return self._file is not None

    def thd_open(self) -> None:
        """Open the file; one that cannot be opened (full disk, another process's) is tried again later."""
        if self.path is None:
            return
        try:
            self._open_file()
        except ForeignSpoolFileError:
            raise  # somebody else's file: a configuration error
        except Exception as e:
            self.degraded = f"it cannot be opened: {type(e).__name__}: {e}"
            self.notices.append(
                f"cannot open the spool {self.path} ({type(e).__name__}: {e}); new points are kept "
                "in memory, and move to the file once it can be opened (tried again, at most a minute apart)"
            )
        self._count_file()

    def _open_file(self) -> None:
        path = str(self.path)
        problem = foreign_file_problem(path)
        if problem is not None:
            raise ForeignSpoolFileError(path, problem)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._lock = lock(path)  # one process per file (SpoolLockedError)
        try:
            self._file, notice = open_spool_file(path)
            self._inode = os.stat(path).st_ino
        except BaseException:
            self._close_file()
            raise
        if notice:
            self.notices.append(notice)

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._lock is not None:
            unlock(self._lock)
            self._lock = None

    def _count_file(self) -> dict[str, int]:
        """Count the file's segments from the id ``_next_id`` on (all, at start): key -> 0, for the states."""
        if self._file is None:
            return {}
        found = {}
        sql = f"SELECT queue_key, SUM({_N}), SUM(length(data)), MAX(id) FROM {TABLE} WHERE id >= ? GROUP BY 1"
        for key, n, size, top in self._file.execute(sql, (self._next_id,)).fetchall():
            q = self._queues[key]
            q.points, q.bytes, found[key] = q.points + n, q.bytes + size, 0
            self._next_id = max(self._next_id, top + 1)
        return found

    def _vanished(self) -> bool:
        """Whether the file was deleted or replaced since it was opened (SQLite would write on into it)."""
        try:
            return os.stat(str(self.path)).st_ino != self._inode
        except FileNotFoundError:
            return True

    def _dbs(self) -> list[sqlite3.Connection]:
        return [self._mem] if self._file is None else [self._file, self._mem]

    def _state(self, queue_key: str, **changes: int) -> SpoolState:
        q = self._queues[queue_key]
        return SpoolState(pending=q.points, untaken=q.points - sum(n for n, _ in q.taken.values()), **changes)

    def _segments(self, queue_key: str, columns: str, after: int) -> Iterator[tuple[Any, ...]]:
        """``(connection, *columns)`` of the segments of a queue after the id ``after``, oldest first."""
        for db in self._dbs():  # the file's are older than those in memory
            sql = f"SELECT {columns} FROM {TABLE} WHERE queue_key = ? AND id > ? ORDER BY id"
            for row in db.execute(sql, (queue_key, after)):
                yield (db, *row)

    def _try(self, db: sqlite3.Connection, *statements: tuple[str, Iterable[Any]]) -> str | None:
        """Run statements in one transaction; the error if the disk refuses them (full, read-only)."""
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
        # (if the disk refuses, they are skipped when reading, and deleted with the next ones)
        if not any([self._try(db, (f"DELETE FROM {TABLE} {WHERE}", params)) for db in self._dbs()]):
            q.unreleased = set()

    def thd_write(
        self, segments: list[NewSegment], bounds: dict[str, tuple[int, int | None]]
    ) -> dict[str, SpoolState]:
        """Append ``segments`` in one transaction, then apply each queue's ``(max points, max bytes)``."""
        rows = [
            (seg.queue_key, self._next_id + i, seg.n, seg.first_ns, seg.last_ns, seg.encoding, seg.data)
            for i, seg in enumerate(segments)
        ]
        self._next_id += len(rows)
        if self._file is not None and self._vanished():  # one stat per commit
            self._refiled = dict(self._file.execute(f"SELECT queue_key, SUM({_N}) FROM {TABLE} GROUP BY 1"))
            self._mem.executemany(_INSERT, self._file.execute(f"SELECT * FROM {TABLE}"))
            self._close_file()  # (before a new file of that name exists: closing deletes "<path>-wal")
            self.degraded, self.open_due = "it was deleted while the master ran", True
            self.notices.append(
                f"the spool {self.path} was deleted or replaced while the master ran: its "
                f"{sum(self._refiled.values())} pending point(s) are kept, in a new file"
            )
        spooled = self._resume() if self.degraded else {}
        if self._file is not None and self.degraded is None:
            self.degraded = self._try(self._file, (_INSERT, rows))
        durable = self._file is not None and self.degraded is None
        if not durable:
            self._mem.executemany(_INSERT, rows)
        for seg in segments:
            q = self._queues[seg.queue_key]
            q.points += seg.n
            q.bytes += len(seg.data)
            if durable:
                spooled[seg.queue_key] = spooled.get(seg.queue_key, 0) + seg.n
        states = {}
        for key in {seg.queue_key for seg in segments} | set(spooled):
            if durable and self._queues[key].unreleased:
                self._release(key, ())
            dropped = self._enforce_bounds(key, *bounds[key]) if key in bounds else 0
            states[key] = self._state(key, spooled=spooled.get(key, 0), dropped=dropped)
        return states

    def _resume(self) -> dict[str, int]:
        """Move the segments kept in memory into the file if it takes them now: points per key.

        A file opened only now (``open_due``) keeps its segments, after those in memory.
        """
        opening = self._file is None
        if opening:
            if not self.open_due:
                return {}
            self.open_due = False
            try:
                self._open_file()
            except Exception:
                return {}
        assert self._file is not None
        statements: list[tuple[str, Iterable[Any]]] = [(_INSERT, self._mem.execute(f"SELECT * FROM {TABLE}"))]
        if opening:  # past the ids in memory (and its own: no key and id is ever two rows on the way)
            top = self._file.execute(f"SELECT MAX(id) FROM {TABLE}").fetchone()[0] or 0
            statements.insert(0, (f"UPDATE {TABLE} SET id = id + ?", [(top + self._next_id,)]))
        moved = dict(self._mem.execute(f"SELECT queue_key, SUM({_N}) FROM {TABLE} GROUP BY 1"))
        if self._try(self._file, *statements):
            if opening:
                self._close_file()
            return {}
        self._mem.execute(f"DELETE FROM {TABLE}")
        self.degraded, refiled, self._refiled = None, self._refiled, {}
        moved = {key: max(0, n - refiled.get(key, 0)) for key, n in moved.items()}
        return {**self._count_file(), **moved}

    def _enforce_bounds(self, key: str, max_points: int, max_bytes: int | None) -> int:
        """Drop the oldest segments not taken (the last one cut) until the queue is within its bounds."""
        q = self._queues[key]
        dropped, doomed = 0, []
        for db, sid, n, size, encoding in self._segments(key, f"id, {_N}, length(data), encoding", q.cursor):
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
            data = db.execute(f"SELECT data FROM {TABLE} {WHERE}", (key, sid)).fetchone()[0]
            rest = _drop_first(encoding, data, cut)
            self._try(db, (f"UPDATE {TABLE} SET n = ?, data = ? {WHERE}", [(n - cut, rest, key, sid)]))
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
        bad: list[tuple[Any, ...]] = []
        count = 0
        segments = self._segments(queue_key, f"id, {_N}, encoding, data", q.cursor) if max_points > 0 else ()
        for db, sid, n, encoding, data in segments:
            if sid not in q.unreleased:  # (one dropped whose delete is still to be retried is skipped)
                if taken and (count + n > max_points or encoding != taken[0].encoding):
                    break
                try:
                    payload = load_points(data) if encoding == COLUMNS else bytes(data)
                    _check_count(n, payload)
                except Exception as e:
                    bad.append((db, sid, n, encoding, data, e))
                else:
                    taken.append(TakenSegment(sid, n, encoding, payload))
                    q.taken[sid] = (n, len(data))
                    count += n
            q.cursor = sid
        for db, sid, n, encoding, data, error in bad:
            with db:
                db.execute("BEGIN")
                quarantine(db, queue_key, sid, encoding, data, error)
            q.points, q.bytes = q.points - n, q.bytes - len(data)
        return taken, self._state(queue_key, quarantined=sum(row[2] for row in bad))

    def thd_pending_counts(self) -> dict[str, int]:
        """Queue key -> pending points, for every queue in the spool."""
        return {key: q.points for key, q in self._queues.items() if q.points}

    def thd_close(self) -> None:
        if self._file is not None and self._vanished():
            self.thd_write([], {})  # what the deleted file held goes to a new one
        self._close_file()
