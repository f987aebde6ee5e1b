"""Where points wait until their backend accepted them (at least once): the spool *is* the backlog.  A
segment (a row: ``_TABLE_SQL``) holds msgpack :data:`COLUMNS` (plain values: a spool never runs code)
or a backend's encoded bytes.  Bounds drop the oldest segments not taken; while the file cannot be
written or opened, new ones wait in memory.  ``thd_*`` methods run on :class:`SpoolThread`."""

from __future__ import annotations

import io
import os
import pickle
import queue
import sqlite3
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgpack
from twisted.internet import defer
from twisted.python import failure, log, threadpool

from buildbot_stats.point import Point, is_flat_plain, to_plain
from buildbot_stats.sqlite_wal import connect_wal, foreign_sqlite_problem

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no lock
    fcntl = None  # type: ignore[assignment]

SCHEMA_VERSION = 5
#: ``PRAGMA application_id`` of a spool ("bbst"), in the file's header: ours even when damaged
APPLICATION_ID = 0x62627374
TABLE, QUARANTINE = "buildbot_stats_segments", "buildbot_stats_unreadable"
WHERE = "WHERE queue_key = ? AND id = ?"  # one segment
_TABLE_SQL = (
    f"CREATE TABLE IF NOT EXISTS {TABLE} (queue_key TEXT NOT NULL, id INTEGER NOT NULL, n INTEGER NOT NULL, "
    "first_ns INTEGER, last_ns INTEGER, encoding TEXT NOT NULL, data BLOB NOT NULL, "
    "PRIMARY KEY (queue_key, id))"
)
_QUARANTINE_SQL = (
    f"CREATE TABLE IF NOT EXISTS {QUARANTINE} (queue_key TEXT NOT NULL, id INTEGER NOT NULL, "
    "encoding TEXT NOT NULL, data BLOB NOT NULL, error TEXT NOT NULL)"
)
_INSERT = f"INSERT OR REPLACE INTO {TABLE} VALUES (?,?,?,?,?,?,?)"
#: a row's point count, never above one per byte of its data (the exact count is checked when read)
_N = "MAX(0, MIN(n, length(data)))"
COLUMNS = "msgpack-columns-1"
LEGACY_COLUMNS = "columns-1"  # pickled, schemas 2 to 4: read by migrate() only, within these bounds
LEGACY_MAX_BYTES = 64 * 2**20
LEGACY_MAX_OBJECTS = 16 * 2**20  # values and containers; a shared one counts at each use
_BIG_INT = 1  # msgpack ext type: an int beyond 64 bits
RETRY_FIRST_S, RETRY_MAX_S = 1.0, 60.0  # a file the spool cannot use is tried again after 1 s, 2 s, ... 60 s
Bounds = tuple[int, "int | None"]  # a queue's (max points, max bytes or None)

#: schema n -> the statements that make it schema n + 1, each run if the table it names first exists
_STEPS: dict[int, list[tuple[str, str]]] = {
    2: [(t, f"ALTER TABLE {t} RENAME COLUMN backend TO queue_key") for t in (TABLE, QUARANTINE)],
    3: [  # a row per write (queue_key, id, last_id, ids, points) becomes a row per segment (pickled points)
        (TABLE, f"ALTER TABLE {TABLE} RENAME TO v3"),
        ("v3", _TABLE_SQL),
        ("v3", f"INSERT INTO {TABLE} SELECT queue_key, id, 0, NULL, NULL, 'columns-1', points FROM v3"),
        ("v3", "DROP TABLE v3"),
        (QUARANTINE, f"ALTER TABLE {QUARANTINE} RENAME TO {QUARANTINE}_v3"),  # other columns: kept as is
    ],
    4: [],  # the same table: migrate() packs its pickled points again
}


class NewSegment(NamedTuple):
    """Points of one queue to spool, already encoded (in the spool thread): a row, but for its id."""

    queue_key: str
    n: int
    first_ns: int | None
    last_ns: int | None
    encoding: str
    data: bytes


@dataclass
class Batch:
    """Segments taken for one write, of one encoding, kept until all their points left the queue."""

    ids: list[int]
    encoding: str
    n: int
    payload: Any  # the points (a list) for :data:`COLUMNS`, else the encoded bytes, one point per line
    offset: int = 0  # the points before it left for good (accepted or dropped)


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
    """A segment (None if no point is left) by the backend's ``thd_encode``, and its report; or columns."""
    times = [p.time_ns for p in points]
    first, last = (min(times), max(times)) if times else (None, None)
    if encoder is None:
        return NewSegment(queue_key, len(points), first, last, COLUMNS, dump_points(points)), None
    encoding, data, report = encoder(points)
    n = len(points) - getattr(report, "rejected_points", 0)  # (a report None: 0)
    ok = type(encoding) is str and isinstance(data, (bytes, bytearray)) and type(n) is int
    if not ok or not isinstance(getattr(report, "problems", []), list):  # a backend's own, broken
        raise TypeError("thd_encode must return (encoding str, data bytes, a WriteReport or None)")
    return (NewSegment(queue_key, n, first, last, encoding, bytes(data)) if n > 0 and data else None), report


def _big_int(value: Any) -> Any:
    if not isinstance(value, int):
        raise TypeError(f"{type(value).__name__} is not a plain value")
    return msgpack.ExtType(_BIG_INT, value.to_bytes((value.bit_length() + 8) // 8, "big", signed=True))


def _pack(columns: list[Any]) -> bytes:
    try:
        return msgpack.packb(columns, default=_big_int)
    except UnicodeEncodeError:  # a lone surrogate (from os.fsdecode, say): kept as it is
        return msgpack.packb(columns, default=_big_int, unicode_errors="surrogatepass")


def _ext(code: int, data: bytes) -> Any:
    if code != _BIG_INT:
        raise ValueError(f"unknown msgpack ext type {code} in a spool segment")
    return int.from_bytes(data, "big", signed=True)


def dump_points(points: list[Point]) -> bytes:
    """The points as :data:`COLUMNS`: one list per attribute, packed in one call."""
    series, times = [p.series for p in points], [p.time_ns for p in points]
    fields, tags = [p.fields for p in points], [p.tags for p in points]
    try:
        return _pack([series, fields, tags, times])
    except (TypeError, ValueError):  # a value msgpack cannot hold (a set, a datetime): plain values
        plain = [list(map(str, series)), list(map(to_plain, fields)), list(map(to_plain, tags))]
        return _pack([*plain, list(map(int, times))])


def _plain(values: Any) -> list[Any]:
    flat = [is_flat_plain(v, nan=True) for v in values]
    return list(values) if all(flat) else [v if f else to_plain(v) for v, f in zip(values, flat)]


def load_points(data: bytes) -> list[Point]:
    """The points of :func:`dump_points`, as plain values; bounded by the data (msgpack shares no object)."""
    # arrays as tuples: a tuple can be a dict key (made a str by to_plain, as pickle's were)
    options = {"ext_hook": _ext, "strict_map_key": False, "unicode_errors": "surrogatepass"}
    series, fields, tags, times = msgpack.unpackb(data, use_list=False, **options)
    return list(map(Point, series, _plain(fields), _plain(tags), times))


def _check_count(n: int, payload: Any) -> None:
    """A row's point count must be its payload's: a crafted one would skew ``pending`` and the batches."""
    if isinstance(payload, list):
        held = len(payload) == n
    else:  # one point per line (a line protocol string value may hold newlines: then at most)
        lines = payload.count(b"\n") + 1
        held = 0 < n <= lines and (n == lines or b'"' in payload)
    if not held:
        raise ValueError(f"the row counts {n} point(s), which its data does not hold")


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"the spool holds plain values only, not {module}.{name}")


def load_pickled_points(data: bytes) -> list[Point]:
    """The points of a ``columns-1`` segment of schema 2 to 4, within the bounds (for :func:`migrate`)."""
    if len(data) > LEGACY_MAX_BYTES:
        raise ValueError(f"a pickled segment of {len(data):,} bytes (more than {LEGACY_MAX_BYTES:,})")
    form, series, fields, tags, times = _PlainUnpickler(io.BytesIO(data)).load()
    if form != LEGACY_COLUMNS or {type(s) for s in series} - {str} or {type(t) for t in times} - {int}:
        raise ValueError("not a spool segment of the format columns-1")
    # a pickle may use an object many times over, or hold itself: a few bytes must not expand
    # into millions of objects (64 per byte is far more than an old spool's shared tags reach)
    limit = min(LEGACY_MAX_OBJECTS, 64 * len(data))
    left, todo = limit, [*fields, *tags]
    while todo:
        item, left = todo.pop(), left - 1
        if left < 0:
            raise ValueError(f"a pickled segment of more than {limit:,} objects")
        if isinstance(item, (dict, list, tuple, set, frozenset)):
            todo += item.items() if isinstance(item, dict) else item
    return list(map(Point, series, _plain(fields), _plain(tags), times))


def migrate(db: sqlite3.Connection, version: int) -> str:
    """Bring a spool of schema 2, 3 or 4 to 5 in the caller's transaction; says what it did, for the log."""
    db.execute("DROP VIEW IF EXISTS buildbot_stats_spool")  # 2 and 3: one row per point, for inspection
    exists = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
    for step in range(version, SCHEMA_VERSION):
        for table, sql in _STEPS[step]:
            if db.execute(exists, (table,)).fetchone():
                db.execute(sql)
    _create_tables(db)
    converted = unreadable = 0
    legacy = f"SELECT queue_key, id, data FROM {TABLE} WHERE encoding = ?"
    for key, sid, data in db.execute(legacy, (LEGACY_COLUMNS,)).fetchall():
        try:
            points = load_pickled_points(data)
            times, packed = [p.time_ns for p in points], dump_points(points)
        except Exception as e:
            unreadable += _quarantine(db, key, sid, LEGACY_COLUMNS, data, e)
            continue
        row = (len(points), min(times, default=None), max(times, default=None), COLUMNS, packed, key, sid)
        db.execute(
            f"UPDATE {TABLE} SET n = ?, first_ns = ?, last_ns = ?, encoding = ?, data = ? {WHERE}", row
        )
        converted += 1
    bad = f", {unreadable} unreadable moved to the table {QUARANTINE}" if unreadable else ""
    return f"was migrated from schema {version} to {SCHEMA_VERSION} ({converted} segment(s) converted{bad})"


def _create_tables(db: sqlite3.Connection) -> sqlite3.Connection:
    db.execute(_TABLE_SQL)
    db.execute(_QUARANTINE_SQL)
    return db


def _quarantine(db: sqlite3.Connection, key: str, sid: int, encoding: str, data: bytes, e: Exception) -> int:
    """Move an unreadable segment to the table ``buildbot_stats_unreadable`` (in a transaction)."""
    error = f"{type(e).__name__}: {e}"
    db.execute(f"INSERT INTO {QUARANTINE} VALUES (?,?,?,?,?)", (key, sid, encoding, data, error))
    db.execute(f"DELETE FROM {TABLE} {WHERE}", (key, sid))
    return 1


class ForeignSpoolFileError(Exception):
    """The spool's path names a file that is not a spool of ours (it is left untouched)."""


def foreign_file_problem(path: str) -> str | None:
    """Why ``path`` is not a spool (Buildbot's ``state.sqlite``, say), or None (ours, empty or absent)."""
    return foreign_sqlite_problem(path, lambda tables: TABLE in tables, APPLICATION_ID)


class SpoolLockedError(RuntimeError):
    """Another process has the spool file open."""


#: lock file -> (descriptor, users): services of one master may share a spool file (their keys differ)
_locks: dict[str, tuple[int, int]] = {}
_locks_guard = threading.Lock()


def lock(path: str) -> str:
    """Lock ``<path>.lock`` (``flock``: the kernel releases it when the process dies): two masters on one
    file would send, and delete, each other's points.  The lock file stays (else two could lock two files)."""
    lock_path = os.path.realpath(path) + ".lock"
    with _locks_guard:
        fd, users = _locks.get(lock_path, (-1, 0))
        if users == 0 and fcntl is not None:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
            except OSError as e:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
                os.close(fd)
                if not isinstance(e, BlockingIOError):
                    raise  # (a full disk, say)
                pid = f" (pid {holder})" if holder.isdigit() else ""
                raise SpoolLockedError(
                    f"{path} is in use by another process{pid}: each master needs a spool file of its own "
                    "(spool_path is relative to the master's basedir)"
                ) from None
        _locks[lock_path] = (fd, users + 1)
    return lock_path


def unlock(lock_path: str) -> None:
    with _locks_guard:
        fd, users = _locks.pop(lock_path)
        if users > 1:
            _locks[lock_path] = (fd, users - 1)
        elif fd >= 0:
            os.close(fd)  # closing the last descriptor releases the flock


class _SchemaVersionError(sqlite3.DatabaseError):
    """The spool's schema version (its argument) is not one this version can read."""


def is_storage_error(e: BaseException) -> bool:
    """An error of the file's storage (disk full, read-only, I/O), not of the data."""
    words = ("full", "readonly", "read-only", "disk i/o", "unable to open", "locked")
    return isinstance(e, sqlite3.OperationalError) and any(w in str(e).lower() for w in words)


def open_spool_file(path: str) -> tuple[sqlite3.Connection, str | None]:
    """``(connection, notice for the log)``; a file damaged past its header or unreadable is set aside."""
    empty = os.path.isfile(path) and os.path.getsize(path) == 0
    try:
        db, notice = _connect(path)
    except sqlite3.DatabaseError as e:
        if is_storage_error(e) or (isinstance(e, sqlite3.OperationalError) and not os.path.isfile(path)):
            raise
        if isinstance(e, _SchemaVersionError):
            tag, later = f"schema-{e.args[0]}", " for a later upgrade"
            why = f"has schema version {e.args[0]}, which this version of buildbot_stats cannot read"
        else:
            tag, later, why = "unreadable", "", f"could not be read ({' '.join(str(e).split())})"
        aside = f"{path}.{tag}-{int(time.time())}"  # (a file recognisably ours, or not a database at all)
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.replace(path + suffix, aside + suffix)
        notice = f"the spool {path} {why}; it was moved to {aside}{later} and a new one started"
        return _connect(path)[0], notice
    if empty:
        why = "(a master killed before its first spool write, or a truncated copy)"
        notice = f"the spool {path} was an empty file (0 bytes): it held no points {why}; a new one started"
    return db, notice


def _connect(path: str) -> tuple[sqlite3.Connection, str | None]:
    db, notice = connect_wal(path, timeout=30), None
    try:
        with db:
            db.execute("BEGIN IMMEDIATE")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]:
                if version not in (*_STEPS, SCHEMA_VERSION):
                    raise _SchemaVersionError(version)
                if version != SCHEMA_VERSION:
                    notice = f"the spool {path} {migrate(db, version)}"
            _create_tables(db).execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            marked = db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
            db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        if not marked:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the mark into the file's own header
        check = db.execute("PRAGMA quick_check(1)").fetchone()[0]  # damaged past its header?
        if check != "ok":
            raise sqlite3.DatabaseError(f"database disk image is malformed: {check}")
    except BaseException:
        db.close()
        raise
    return db, notice


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
        self._mem = _create_tables(sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False))
        self._lock: str | None = None
        self._inode = 0  # of the file opened
        self._refiled: dict[str, int] = {}  # points copied from a deleted file: not counted as spooled again
        self._queues: defaultdict[str, _Queue] = defaultdict(_Queue)
        self._next_id = 1

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
            self.degraded = why = f"{type(e).__name__}: {e}"
            self.notices.append(
                f"cannot open the spool {self.path} ({why}); new points are kept in memory, and move to the "
                "file once it can be opened (tried again, at most a minute apart)"
            )
        self._count_file()

    def _open_file(self) -> None:
        path = str(self.path)
        problem = foreign_file_problem(path)
        if problem is not None:
            raise ForeignSpoolFileError(
                f"{path} is not a buildbot_stats spool: it {problem}; it is left untouched"
            )
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._lock = lock(path)  # one process per file (SpoolLockedError)
        try:
            self._file, notice = open_spool_file(path)
            self._inode = os.stat(path).st_ino
        except BaseException:
            self._close_file()
            raise
        self.notices += [notice] if notice else []

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._lock is not None:
            unlock(self._lock)
            self._lock = None

    def _count_file(self) -> dict[str, int]:
        """Count the file's segments from the id ``_next_id`` on (all, at start): key -> 0, for the states."""
        found: dict[str, int] = {}
        sql = f"SELECT queue_key, SUM({_N}), SUM(length(data)), MAX(id) FROM {TABLE} WHERE id >= ? GROUP BY 1"
        for key, n, size, top in self._file.execute(sql, (self._next_id,)).fetchall() if self._file else ():
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

    def thd_write(self, segments: list[NewSegment], bounds: dict[str, Bounds]) -> dict[str, SpoolState]:
        """Append ``segments`` in one transaction, then apply each queue's ``(max points, max bytes)``."""
        rows = [(s.queue_key, i, *s[1:]) for i, s in enumerate(segments, self._next_id)]
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
            q.points, q.bytes = q.points + seg.n, q.bytes + len(seg.data)
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
        """Move the segments kept in memory into the file (opened now if ``open_due``): points per key."""
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
        if opening and self._next_id > 1:  # its ids after ours, and its own (no key and id is two rows)
            top = self._file.execute(f"SELECT MAX(id) FROM {TABLE}").fetchone()[0] or 0
            statements.insert(0, (f"UPDATE {TABLE} SET id = id + ?", [(top + self._next_id,)]))
        moved = dict(self._mem.execute(f"SELECT queue_key, SUM({_N}) FROM {TABLE} GROUP BY 1"))
        if self._try(self._file, *statements):
            if opening:
                self._close_file()
            return {}
        self._mem.execute(f"DELETE FROM {TABLE}")
        self.degraded, refiled, self._refiled = None, self._refiled, {}
        return {**self._count_file(), **{key: max(0, n - refiled.get(key, 0)) for key, n in moved.items()}}

    def _enforce_bounds(self, key: str, max_points: int, max_bytes: int | None) -> int:
        """Drop the oldest segments not taken until the queue is within its bounds (whole segments: at
        most one segment's points more than the bounds ask)."""
        q, dropped, doomed = self._queues[key], 0, []
        segments = self._segments(key, f"id, {_N}, length(data)", q.cursor)
        # (within its bounds, the usual case, a queue needs no query)
        while q.points > max_points or (max_bytes is not None and q.bytes > max_bytes):
            _, sid, n, size = next(segments, (None, None, 0, 0))
            if sid is None:
                break  # (only segments taken for a write are left)
            if sid not in q.unreleased:  # (else dropped already; its delete failed and is retried)
                doomed.append(sid)
                q.points, q.bytes, dropped = q.points - n, q.bytes - size, dropped + n
        if doomed:
            self._release(key, doomed)
        return dropped

    def thd_take(
        self, queue_key: str, max_points: int, release: Iterable[int] = (), rewind: bool = False
    ) -> tuple[Batch | None, SpoolState]:
        """Release ``release`` (all their points left), go back to the oldest if ``rewind``, then take the
        oldest segments not taken, of one encoding, up to ``max_points`` (one at least, unless 0)."""
        q = self._queues[queue_key]
        if release:
            self._release(queue_key, release)
        if rewind:
            q.taken, q.cursor = {}, -1
        batch: Batch | None = None
        got: list[Any] = []  # the payload of each segment taken
        bad: list[tuple[Any, ...]] = []
        segments = self._segments(queue_key, f"id, {_N}, encoding, data", q.cursor) if max_points else ()
        for db, sid, n, encoding, data in segments:
            if sid not in q.unreleased:  # (one dropped whose delete is still to be retried is skipped)
                if batch and (batch.n + n > max_points or encoding != batch.encoding):
                    break
                try:
                    payload = load_points(data) if encoding == COLUMNS else bytes(data)
                    _check_count(n, payload)
                except Exception as e:
                    bad.append((db, sid, n, encoding, data, e))
                else:
                    batch = batch or Batch([], encoding, 0, None)
                    batch.ids.append(sid)
                    batch.n += n
                    got.append(payload)
                    q.taken[sid] = (n, len(data))
            q.cursor = sid
        if batch is not None:
            batch.payload = [p for ps in got for p in ps] if batch.encoding == COLUMNS else b"\n".join(got)
        for db, sid, n, encoding, data, error in bad:
            with db:
                db.execute("BEGIN")
                _quarantine(db, queue_key, sid, encoding, data, error)
            q.points, q.bytes = q.points - n, q.bytes - len(data)
        return batch, self._state(queue_key, quarantined=sum(row[2] for row in bad))

    def thd_pending_counts(self) -> dict[str, int]:
        """Queue key -> pending points, for every queue in the spool."""
        return {key: q.points for key, q in self._queues.items() if q.points}

    def thd_close(self) -> None:
        if self._file is not None and self._vanished():
            self.thd_write([], {})  # what the deleted file held goes to a new one
        self._close_file()


class SpoolThread:
    """A spool and the one thread that runs its ``thd_*`` methods, in the order they are called."""

    def __init__(self, spool: SQLiteSpool, reactor: Any) -> None:
        self.spool, self.path = spool, spool.path
        #: what a retry runs: a spool write of nothing (the spool writer sets its own, to hear the result)
        self.retry: Callable[[], Any] = lambda: self.call(SQLiteSpool.thd_write, [], {})
        self._retry_call: Any = None
        self._retry_delay = RETRY_FIRST_S
        self._reactor = reactor
        self._closing = False
        # a queue and a thread of its own: a lighter hand-off than a Twisted pool (two per awaited value)
        self._calls: queue.SimpleQueue | None = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, args=(self._calls,), name="buildbot_stats-spool")
        # Buildbot's test reactor runs thread calls at once (its ThreadPool stand-in): so does the spool then
        self._inline = threadpool.ThreadPool.__module__ != threadpool.__name__
        if not self._inline:
            self._thread.start()
        # not a daemon thread (it would keep a process whose start failed alive): stopped with the reactor
        reactor.addSystemEventTrigger("during", "shutdown", self._stop_thread)

    @property
    def running(self) -> bool:
        return self._calls is not None

    def call(self, f: Callable[..., Any], *args: Any) -> defer.Deferred:
        """Run ``f(spool, *args)`` on the spool's thread: a ``thd_*`` method of its class, say."""
        if self._calls is None:
            return defer.fail(RuntimeError(f"the thread of the spool {self.path} was stopped"))
        if self._inline:
            return defer.maybeDeferred(f, self.spool, *args).addBoth(self._after)
        d: defer.Deferred = defer.Deferred()
        self._calls.put((d, f, args))
        return d.addBoth(self._after)

    def _run(self, calls: queue.SimpleQueue) -> None:
        for d, f, args in iter(calls.get, None):
            try:
                result = f(self.spool, *args)
            except BaseException:
                result = failure.Failure()
            self._reactor.callFromThread(d.callback, result)  # (a Failure: its errbacks)

    def _after(self, result: Any) -> Any:
        """Say what the spool found; try it again later while it keeps new points in memory."""
        while self.spool.notices:
            log.msg(f"buildbot_stats: {self.spool.notices.pop(0)}")
        if self.spool.degraded is None:
            self._retry_delay = RETRY_FIRST_S
        elif self._retry_call is None and self._calls is not None and not self._closing:
            self._retry_call = self._reactor.callLater(self._retry_delay, self._retry)
            self._retry_delay = min(2 * self._retry_delay, RETRY_MAX_S)
        return result

    def _retry(self) -> None:
        self._retry_call, self.spool.open_due = None, True
        self.retry()

    def close(self) -> defer.Deferred:
        """Close the spool, then stop its thread (also when closing fails)."""
        if self._closing or self._calls is None:  # (closed once)
            return defer.succeed(None)
        self._closing = True
        return self.call(SQLiteSpool.thd_close).addBoth(self._stop_thread)

    def _stop_thread(self, result: Any = None) -> Any:
        """Stop the thread (waiting for the call it runs); later calls fail instead of hanging."""
        calls, self._calls = self._calls, None
        if self._retry_call is not None and self._retry_call.active():
            self._retry_call.cancel()
        if calls is not None and not self._inline:
            calls.put(None)
            self._thread.join()
        return result


def spool_file(spool_path: str | None, basedir: str | None) -> str | None:
    """The spool's file for ``spool_path`` (relative to the master's basedir), or None for memory."""
    if spool_path is None or (basedir is None and not os.path.isabs(spool_path)):
        return None
    return os.path.join(basedir or "", os.path.expanduser(spool_path))


@defer.inlineCallbacks
def open_spool(spool_path: str | None, basedir: str | None, reactor: Any) -> Any:
    """Open the spool for ``spool_path`` (a file that is not a spool is refused): a :class:`SpoolThread`."""
    path = spool_file(spool_path, basedir)
    if path is None and spool_path is not None:
        log.msg("buildbot_stats: no master basedir; pending points are kept in memory only")
    spool = SpoolThread(SQLiteSpool(path), reactor)
    try:
        yield spool.call(SQLiteSpool.thd_open)
    except BaseException:
        yield spool.close()
        raise
    return spool
