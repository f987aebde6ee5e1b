"""Where points wait until their backend has accepted them: the spool *is* the backlog.

:class:`SQLiteSpool` keeps them in a file so that a master that is stopped, or
killed, sends them after it starts again; :class:`MemorySpool` keeps them in
an in-memory SQLite database (``spool_path=None``), under the same bounds.
Pending points are not kept in the master's memory besides: a delivery queue
reads them back from the spool a batch at a time.

The file holds *segments*, rows of the table ``buildbot_stats_segments``
(schema 4): each spool write of a queue is one row per ``batch_size`` points,
keyed by the queue (``queue_key``: ``<service name>/<backend name>``, as several
services may share one file) and an increasing id, with the number of points
``n``, their oldest and newest timestamp, an ``encoding`` and the ``data``:

* ``columns-1``: the points themselves, one list per attribute, pickled in one
  call (plain lists, dicts, strings and numbers: lossless for NaN and ±Inf,
  read back by an unpickler that refuses every class and function).  Used for
  backends that take points (``thd_postStatsValues`` / ``thd_postStatsValue``).
* anything else: bytes a backend encoded once with ``thd_encode`` (InfluxDB:
  ``influx-lp/<precision>``, line protocol, one point per line) and gets back
  as they are, for every attempt, with ``thd_post_encoded``.

A segment is deleted once the backend accepted (or dropped) all its points.
After a crash every segment still in the file is sent again, including one the
backend had already accepted: at-least-once delivery, and as a point keeps its
series, tags and timestamp, InfluxDB overwrites the copy it already has.

Bounds (``max_spool_points``, ``max_spool_bytes``) drop the oldest segments not
being written (the last one cut to size).  When the file cannot be written
(disk full, read-only), new segments go to an in-memory table under the same
bounds and move into the file as soon as it can be written again.

All ``thd_*`` methods are blocking and are called from one dedicated thread
(:mod:`buildbot_stats.delivery.spool_thread`).
"""

from __future__ import annotations

import io
import os
import pickle
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Optional, Protocol, runtime_checkable

from buildbot_stats.delivery.spool_lock import SpoolLock
from buildbot_stats.lineprotocol import split_lines
from buildbot_stats.point import Point, is_flat_plain, to_plain
from buildbot_stats.sqlite_wal import SQLITE_MAGIC, connect_wal, existing_sqlite_file, other_tables

__all__ = [
    "APPLICATION_ID",
    "COLUMNS",
    "ForeignSpoolFileError",
    "MemorySpool",
    "NewSegment",
    "SQLiteSpool",
    "Spool",
    "SpoolState",
    "TakenSegment",
    "dump_points",
    "encode_segment",
    "foreign_file_problem",
    "load_points",
    "set_aside",
    "spool_info",
]

_TABLE = "buildbot_stats_segments"
_SCHEMA_VERSION = 4  # 4: n/encoding/data segments (3 and 2 are migrated)
_READABLE_VERSIONS = (2, 3, 4)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS {db}buildbot_stats_segments (
    queue_key TEXT NOT NULL,
    id INTEGER NOT NULL,
    n INTEGER NOT NULL,
    first_ns INTEGER,
    last_ns INTEGER,
    encoding TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (queue_key, id)
)
"""
_QUARANTINE = "buildbot_stats_unreadable"
_QUARANTINE_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {_QUARANTINE} (
    queue_key TEXT NOT NULL,
    id INTEGER NOT NULL,
    encoding TEXT NOT NULL,
    data BLOB NOT NULL,
    error TEXT NOT NULL
)
"""
_COLS = "queue_key, id, n, first_ns, last_ns, encoding, data"

_PICKLE_PROTOCOL = 5  # readable by Python >= 3.8
#: ``PRAGMA application_id`` of a spool file ("bbst"), in the file's header: it marks
#: the file as ours even when the rest of it is damaged.
APPLICATION_ID = 0x62627374


class _PlainPickler(pickle.Pickler):
    # Called only for objects that are not of an exact builtin type (subclasses,
    # datetimes, user objects): the caller then converts the segment to plain values.
    def reducer_override(self, obj: Any) -> Any:
        raise TypeError(f"{type(obj).__name__} is not a plain value")


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"the spool holds plain values only, not {module}.{name}")


def _exact(value: Any) -> Any:
    """``to_plain`` with exact builtin types (what a JSON round trip of it gives)."""
    value = to_plain(value)
    kind = type(value)
    if kind is dict:
        return {k: _exact(v) for k, v in value.items()}
    if kind is list:
        return [_exact(v) for v in value]
    if value is None or kind is bool or kind is int or kind is float or kind is str:
        return value
    if isinstance(value, bool):  # pragma: no cover - bool cannot be subclassed
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return str.__str__(value)  # a str subclass


COLUMNS = _FORMAT = "columns-1"


def dump_points(points: list[Point]) -> bytes:
    """Serialise points for the spool in one call: one list per attribute."""
    columns = (
        _FORMAT,
        [p.series for p in points],
        [p.fields for p in points],
        [p.tags for p in points],
        [p.time_ns for p in points],
    )
    buf = io.BytesIO()
    try:
        _PlainPickler(buf, _PICKLE_PROTOCOL).dump(columns)
    except (TypeError, pickle.PicklingError, RecursionError):
        columns = (
            _FORMAT,
            [str(p.series) for p in points],
            [_exact(p.fields) for p in points],
            [_exact(p.tags) for p in points],
            [int(p.time_ns) for p in points],
        )
        buf = io.BytesIO()
        _PlainPickler(buf, _PICKLE_PROTOCOL).dump(columns)
    return buf.getvalue()


def _flat(values: Any) -> bool:
    return is_flat_plain(values, nan=True)


def load_points(data: bytes) -> list[Point]:
    """The points of :func:`dump_points`, reduced to plain values as ``to_plain`` does."""
    form, series, fields, tags, times = _PlainUnpickler(io.BytesIO(data)).load()
    if form != _FORMAT:
        raise ValueError(f"unknown spool segment format {form!r}")
    # bytes, tuples, sets and non-str keys were written as they were
    if not all(map(_flat, fields)):
        fields = [v if _flat(v) else to_plain(v) for v in fields]
    if not all(map(_flat, tags)):
        tags = [v if _flat(v) else to_plain(v) for v in tags]
    return list(map(Point, series, fields, tags, times))


@dataclass
class NewSegment:
    """Points of one queue to spool, already encoded (in the spool thread)."""

    queue_key: str
    n: int
    first_ns: int | None
    last_ns: int | None
    encoding: str
    data: bytes


# (segment id, number of points, encoding, payload, first_ns, last_ns): the
# payload is a list of Points for COLUMNS, else the encoded bytes; first_ns and
# last_ns are the earliest and latest time of its points (None if unknown)
TakenSegment = tuple[int, int, str, Any, Optional[int], Optional[int]]


@dataclass
class SpoolState:
    """What one spool call did to one queue, and its counts afterwards."""

    pending: int = 0  # points in the spool (taken for a write or not)
    untaken: int = 0  # points in the spool not taken for a write yet
    spooled: int = 0  # points this call wrote to the file (durably)
    kept_in_memory: int = 0  # points this call had to keep in memory (file not writable)
    dropped: int = 0  # points this call dropped to respect the bounds
    quarantined: int = 0  # points this call set aside as unreadable


class _Queue:
    """The spool thread's book-keeping for one queue key."""

    __slots__ = ("points", "bytes", "taken", "cursor", "unreleased")

    def __init__(self, points: int, size: int) -> None:
        self.points = points
        self.bytes = size
        self.taken: dict[int, tuple[int, int]] = {}  # id -> (n, bytes), taken for a write
        self.cursor = -1  # highest id taken
        self.unreleased: set[int] = set()  # released ids whose DELETE failed (retried)


def set_aside(path: str, tag: str) -> str:
    """Move the spool file ``path`` (and its -wal/-shm) to ``<path>.<tag>-<time>``, which is returned.

    The one place where the spool moves a file; called only for a file that is
    recognisably a spool (or not a database at all).
    """
    target = f"{path}.{tag}-{int(time.time())}"
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.replace(path + suffix, target + suffix)
    return target


class _SchemaVersionError(sqlite3.DatabaseError):
    def __init__(self, version: int) -> None:
        super().__init__(f"spool schema version {version}")
        self.version = version


_FULL_OR_READONLY = ("full", "readonly", "read-only", "disk i/o", "unable to open", "locked")


def _is_storage_error(e: BaseException) -> bool:
    """An error of the file's storage (disk full, read-only, I/O), not of the data."""
    return isinstance(e, sqlite3.OperationalError) and any(w in str(e).lower() for w in _FULL_OR_READONLY)


@runtime_checkable
class Spool(Protocol):
    """Where the points a backend has not accepted yet wait: the backlog itself.

    Blocking methods, called in submission order from one thread (see
    :class:`~buildbot_stats.delivery.spool_thread.SpoolThread`).  Points are written in
    segments under a queue key, taken a batch at a time for a write, and
    released (deleted) once the backend accepted them.
    """

    #: whether the points survive a restart of the master
    durable: bool
    path: str | None
    #: where a file was moved at open (for the log), if it was
    set_aside: str | None
    #: why the file cannot be written now (new points are kept in memory), if so
    degraded: str | None

    def thd_open(self) -> None: ...

    def thd_write(self, segments: list[NewSegment], bounds: dict[str, tuple[int, int | None]]) -> Any:
        """Append segments (the durable copy), dropping the oldest beyond each queue's bounds."""
        ...

    def thd_take(self, queue_key: str, max_points: int) -> tuple[list[TakenSegment], SpoolState]:
        """Read the next pending segments of a queue, up to ``max_points``, for a write."""
        ...

    def thd_release(self, queue_key: str, segment_ids: Iterable[int]) -> SpoolState:
        """Delete segments whose points all left the queue."""
        ...

    def thd_reset(self, queue_key: str) -> SpoolState:
        """Give back what was taken (a failed write): the next take starts at the oldest segment."""
        ...

    def thd_pending_counts(self) -> dict[str, int]: ...

    def thd_close(self) -> None: ...


class SQLiteSpool:
    """A spool in an SQLite file (WAL mode, survives a SIGKILL of the master).

    A file that is not an SQLite database, or a spool damaged past its header,
    is moved aside and a fresh one created; a spool of another schema version
    is moved aside with the version in its name (for a later upgrade); a
    segment that cannot be read is moved to the table
    ``buildbot_stats_unreadable``.  Either way the master starts, and
    :attr:`notice` says what happened, for one log line.
    """

    durable = True

    def __init__(self, path: str) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        #: where a file was moved at open, if it was
        self.set_aside: str | None = None
        #: a sentence for the log about what open found, if anything
        self.notice: str | None = None
        #: why the file cannot be written now (new points are kept in memory), if so
        self.degraded: str | None = None
        self._mem_rows = 0  # rows in mem.buildbot_stats_segments
        self._queues: dict[str, _Queue] = {}
        self._next_id = 1
        self._lock: SpoolLock | None = None

    def __repr__(self) -> str:
        return f"SQLiteSpool({self.path!r})"

    # -- opening ---------------------------------------------------------------

    def thd_open(self) -> None:
        problem = foreign_file_problem(self.path)
        if problem is not None:
            raise ForeignSpoolFileError(self.path, problem)
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        # one process per file (SpoolLockedError): two masters would send and delete each other's points
        self._lock = SpoolLock(self.path)
        self._lock.acquire()
        try:
            self._thd_connect()
        except BaseException:
            self._lock.release()
            self._lock = None
            raise

    def _thd_connect(self) -> None:
        empty = os.path.isfile(self.path) and os.path.getsize(self.path) == 0
        try:
            self._db = self._connect()
        except _SchemaVersionError as e:
            self.set_aside = set_aside(self.path, f"schema-{e.version}")
            self.notice = (
                f"the spool {self.path} has schema version {e.version}, which this version of "
                f"buildbot_stats cannot read (it reads {', '.join(map(str, _READABLE_VERSIONS))}); "
                f"it was moved to {self.set_aside} for a later upgrade and a new one started"
            )
            self._db = self._connect()
        except sqlite3.DatabaseError as e:
            if isinstance(e, sqlite3.OperationalError) and not os.path.isfile(self.path):
                raise
            if _is_storage_error(e):
                raise
            self.set_aside = set_aside(self.path, "unreadable")
            reason = " ".join(str(e).split())  # one log line
            self.notice = (
                f"the spool {self.path} could not be read ({reason}); it was moved to "
                f"{self.set_aside} and a new one started"
            )
            self._db = self._connect()
        if empty and self.notice is None:
            self.notice = (
                f"the spool {self.path} was an empty file (0 bytes): it held no points "
                "(a master killed before its first spool write, or a truncated copy); a new one started"
            )

    def _connect(self) -> sqlite3.Connection:
        db = self._open_db()
        try:
            with db:
                db.execute("BEGIN IMMEDIATE")
                version = db.execute("PRAGMA user_version").fetchone()[0]
                has_tables = db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]
                if has_tables and version not in _READABLE_VERSIONS:
                    raise _SchemaVersionError(version)
                if has_tables and version == 2:
                    _migrate_from_2(db)
                if has_tables and version in (2, 3):
                    _migrate_from_3(db)
                db.execute(_SCHEMA.format(db="main."))
                db.execute(_QUARANTINE_SCHEMA)
                db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
                marked = db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
                if not marked:
                    db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            if not marked and self.durable:
                # into the file's own header (not only the WAL), where foreign_file_problem reads it
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            # damaged past its header: SQLite opens it, reading it fails
            check = db.execute("PRAGMA quick_check(1)").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(f"database disk image is malformed: {check}")
            row = db.execute(f"SELECT MAX(id) FROM main.{_TABLE}").fetchone()
            self._next_id = (row[0] or 0) + 1
            db.execute("ATTACH DATABASE ':memory:' AS mem")
            db.execute(_SCHEMA.format(db="mem."))
        except Exception:
            db.close()
            raise
        return db

    def _open_db(self) -> sqlite3.Connection:
        return connect_wal(self.path, timeout=30)

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError(f"spool {self.path} is not open")
        return self._db

    # -- book-keeping ------------------------------------------------------------

    def _queue(self, queue_key: str) -> _Queue:
        q = self._queues.get(queue_key)
        if q is None:
            points = size = 0
            for table in ("main", "mem"):
                row = (
                    self._conn()
                    .execute(
                        f"SELECT SUM(n), SUM(length(data)) FROM {table}.{_TABLE} WHERE queue_key = ?",
                        (queue_key,),
                    )
                    .fetchone()
                )
                points += row[0] or 0
                size += row[1] or 0
            q = self._queues[queue_key] = _Queue(points, size)
        return q

    def _state(self, queue_key: str, **changes: int) -> SpoolState:
        q = self._queue(queue_key)
        taken = sum(n for n, _ in q.taken.values())
        return SpoolState(pending=q.points, untaken=q.points - taken, **changes)

    def thd_reset(self, queue_key: str) -> SpoolState:
        """A new delivery queue for ``queue_key``: it starts with the oldest segment again."""
        q = self._queue(queue_key)
        q.taken.clear()
        q.cursor = -1
        return self._state(queue_key)

    def thd_pending_counts(self) -> dict[str, int]:
        """Queue key -> pending points, for every queue in the spool."""
        counts: dict[str, int] = {}
        for table in ("main", "mem"):
            rows = self._conn().execute(f"SELECT queue_key, SUM(n) FROM {table}.{_TABLE} GROUP BY queue_key")
            for key, n in rows:
                counts[key] = counts.get(key, 0) + n
        return counts

    # -- writing -----------------------------------------------------------------

    def thd_write(
        self, segments: list[NewSegment], bounds: dict[str, tuple[int, int | None]]
    ) -> dict[str, SpoolState]:
        """Append ``segments`` in one transaction, then apply each queue's ``(max points, max bytes)``."""
        db = self._conn()
        for key in {seg.queue_key for seg in segments}:
            self._queue(key)  # counted before the insert
        rows = []
        for seg in segments:
            rows.append(
                (seg.queue_key, self._next_id, seg.n, seg.first_ns, seg.last_ns, seg.encoding, seg.data)
            )
            self._next_id += 1
        spooled: dict[str, int] = {}
        in_memory: dict[str, int] = {}
        table = "mem"
        if self.degraded is None or self._try_resume(spooled):
            try:
                self._insert(db, "main", rows)
                table = "main"
            except sqlite3.OperationalError as e:
                if not _is_storage_error(e):
                    raise
                self.degraded = f"{type(e).__name__}: {e}"
        if table == "mem":
            self._insert(db, "mem", rows)
            self._mem_rows += len(rows)
        if table == "main":
            for key in {seg.queue_key for seg in segments}:
                if self._queue(key).unreleased:
                    self.thd_release(key, ())
        counted = spooled if table == "main" and self.durable else in_memory
        for seg in segments:
            q = self._queue(seg.queue_key)
            q.points += seg.n
            q.bytes += len(seg.data)
            counted[seg.queue_key] = counted.get(seg.queue_key, 0) + seg.n
        keys = {seg.queue_key for seg in segments} | set(spooled)
        states = {}
        for key in keys:
            dropped = 0
            if key in bounds:
                dropped = self._enforce_bounds(key, *bounds[key])
            states[key] = self._state(
                key, spooled=spooled.get(key, 0), kept_in_memory=in_memory.get(key, 0), dropped=dropped
            )
        return states

    def _insert(self, db: sqlite3.Connection, table: str, rows: list[tuple[Any, ...]]) -> None:
        with db:
            db.execute("BEGIN")
            db.executemany(f"INSERT OR REPLACE INTO {table}.{_TABLE} ({_COLS}) VALUES (?,?,?,?,?,?,?)", rows)

    def _try_resume(self, spooled: dict[str, int]) -> bool:
        """Move the segments kept in memory into the file; True if the file can be written again.

        The points moved are added to ``spooled`` by queue key.
        """
        db = self._conn()
        moved = dict(db.execute(f"SELECT queue_key, SUM(n) FROM mem.{_TABLE} GROUP BY queue_key").fetchall())
        try:
            with db:
                db.execute("BEGIN")
                db.execute(f"INSERT OR REPLACE INTO main.{_TABLE} SELECT * FROM mem.{_TABLE}")
                db.execute(f"DELETE FROM mem.{_TABLE}")
        except sqlite3.OperationalError as e:
            if not _is_storage_error(e):
                raise
            return False
        self._mem_rows = 0
        self.degraded = None
        for key, n in moved.items():
            spooled[key] = spooled.get(key, 0) + n
        return True

    def _enforce_bounds(self, key: str, max_points: int, max_bytes: int | None) -> int:
        q = self._queue(key)
        if q.points <= max_points and (max_bytes is None or q.bytes <= max_bytes):
            return 0
        db = self._conn()
        dropped = 0
        deletes: list[tuple[str, str, int]] = []
        for table in ("main", "mem"):
            rows = db.execute(
                f"SELECT id, n, length(data), encoding FROM {table}.{_TABLE} "
                "WHERE queue_key = ? AND id > ? ORDER BY id",
                (key, q.cursor),
            )
            for sid, n, size, encoding in rows:
                if sid in q.unreleased:
                    continue  # dropped already; its delete failed and is retried
                over_points = q.points - max_points
                over_bytes = q.bytes - max_bytes if max_bytes is not None else 0
                if over_points <= 0 and over_bytes <= 0:
                    break
                if over_points >= n or over_bytes >= size or n == 1:
                    deletes.append((table, key, sid))
                    q.points -= n
                    q.bytes -= size
                    dropped += n
                    continue
                # cut the oldest points off this segment
                cut = max(over_points, 1)
                data = db.execute(
                    f"SELECT data FROM {table}.{_TABLE} WHERE queue_key = ? AND id = ?", (key, sid)
                ).fetchone()[0]
                rest = _drop_first(encoding, data, cut)
                self._execute_storage(
                    db,
                    f"UPDATE {table}.{_TABLE} SET n = ?, data = ? WHERE queue_key = ? AND id = ?",
                    [(n - cut, rest, key, sid)],
                )
                q.points -= cut
                q.bytes -= size - len(rest)
                dropped += cut
                break
            else:
                continue
            break
        for table in ("main", "mem"):
            ids = [(k, s) for t, k, s in deletes if t == table]
            if ids:
                if table == "mem":
                    self._mem_rows -= len(ids)
                sql = f"DELETE FROM {table}.{_TABLE} WHERE queue_key = ? AND id = ?"
                if not self._execute_storage(db, sql, ids):
                    # the disk refuses even a delete: skip them when reading, delete them later
                    q.unreleased.update(sid for _, sid in ids)
        return dropped

    def _execute_storage(self, db: sqlite3.Connection, sql: str, params: list[tuple[Any, ...]]) -> bool:
        """Run one statement in a transaction; False (not an exception) when the disk refuses it."""
        try:
            with db:
                db.execute("BEGIN")
                db.executemany(sql, params)
        except sqlite3.OperationalError as e:
            if not _is_storage_error(e):
                raise
            return False
        return True

    # -- reading -------------------------------------------------------------------

    def thd_take(self, queue_key: str, max_points: int) -> tuple[list[TakenSegment], SpoolState]:
        """The oldest segments of ``queue_key`` not taken yet, up to ``max_points`` (at least one).

        Segments of one encoding only; a segment that cannot be read is moved
        to the quarantine table (counted in the state's ``quarantined``).
        """
        db = self._conn()
        q = self._queue(queue_key)
        taken: list[TakenSegment] = []
        count = 0
        encoding = None
        bad: list[tuple[str, str, int, str, bytes, str]] = []
        tables = ("main", "mem") if self._mem_rows else ("main",)
        for table in tables:
            rows = db.execute(
                f"SELECT id, n, encoding, data, first_ns, last_ns FROM {table}.{_TABLE} "
                "WHERE queue_key = ? AND id > ? ORDER BY id",
                (queue_key, q.cursor),
            )
            for sid, n, enc, data, first_ns, last_ns in rows:
                if sid in q.unreleased:
                    q.cursor = sid  # dropped, its delete still to be retried
                    continue
                if taken and (count + n > max_points or enc != encoding):
                    break
                q.cursor = sid
                if enc == COLUMNS:
                    try:
                        payload: Any = load_points(data)
                    except Exception as e:
                        bad.append((table, queue_key, sid, enc, data, f"{type(e).__name__}: {e}"))
                        continue
                else:
                    payload = bytes(data)
                encoding = enc
                taken.append((sid, n, enc, payload, first_ns, last_ns))
                q.taken[sid] = (n, len(data))
                count += n
            else:
                continue
            break
        quarantined = 0
        if bad:
            quarantined = self._quarantine(q, bad)
        return taken, self._state(queue_key, quarantined=quarantined)

    def _quarantine(self, q: _Queue, bad: list[tuple[str, str, int, str, bytes, str]]) -> int:
        db = self._conn()
        lost = 0
        with db:
            db.execute("BEGIN")
            for table, key, sid, enc, data, error in bad:
                n = db.execute(
                    f"SELECT n FROM {table}.{_TABLE} WHERE queue_key = ? AND id = ?", (key, sid)
                ).fetchone()[0]
                db.execute(f"INSERT INTO {_QUARANTINE} VALUES (?,?,?,?,?)", (key, sid, enc, data, error))
                db.execute(f"DELETE FROM {table}.{_TABLE} WHERE queue_key = ? AND id = ?", (key, sid))
                q.points -= n
                q.bytes -= len(data)
                lost += n
        return lost

    def thd_release(self, queue_key: str, segment_ids: Iterable[int]) -> SpoolState:
        """Remove segments whose points all left the queue (a failed removal is retried next time)."""
        q = self._queue(queue_key)
        ids = set(segment_ids)
        for sid in ids:
            n, size = q.taken.pop(sid, (0, 0))
            q.points -= n
            q.bytes -= size
        todo = ids | q.unreleased
        params = [(queue_key, sid) for sid in sorted(todo)]
        done = True
        for table in ("main", "mem") if self._mem_rows else ("main",):
            done = (
                self._execute_storage(
                    self._conn(), f"DELETE FROM {table}.{_TABLE} WHERE queue_key = ? AND id = ?", params
                )
                and done
            )
        q.unreleased = set() if done else todo
        if self._mem_rows:
            self._mem_rows = self._conn().execute(f"SELECT COUNT(*) FROM mem.{_TABLE}").fetchone()[0]
        return self._state(queue_key)

    def thd_info(self) -> list[dict[str, Any]]:
        """Per queue key: segments, points, bytes, oldest and newest timestamp (ns), encodings."""
        return spool_info(self._conn())

    def thd_close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None


class MemorySpool(SQLiteSpool):
    """No durability: segments live in an in-memory SQLite database, under the same bounds."""

    durable = False

    def __init__(self) -> None:
        super().__init__(":memory:")
        self.path = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return "MemorySpool()"

    def thd_open(self) -> None:
        self._db = self._connect()

    def _open_db(self) -> sqlite3.Connection:
        return sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)


def spool_info(db: sqlite3.Connection, tables: Iterable[str] = ("main", "mem")) -> list[dict[str, Any]]:
    """What a spool holds, per queue key (for ``buildbot-stats spool``)."""
    found: dict[str, dict[str, Any]] = {}
    for table in tables:
        try:
            rows = db.execute(
                f"SELECT queue_key, COUNT(*), SUM(n), SUM(length(data)), MIN(first_ns), MAX(last_ns), "
                f"GROUP_CONCAT(DISTINCT encoding) FROM {table}.{_TABLE} GROUP BY queue_key ORDER BY queue_key"
            ).fetchall()
        except sqlite3.OperationalError:
            continue
        for key, segments, n, size, first, last, encodings in rows:
            info = found.setdefault(
                key,
                {
                    "queue_key": key,
                    "segments": 0,
                    "points": 0,
                    "bytes": 0,
                    "oldest_ns": None,
                    "newest_ns": None,
                    "encodings": set(),
                },
            )
            info["segments"] += segments
            info["points"] += n or 0
            info["bytes"] += size or 0
            if first is not None:
                info["oldest_ns"] = first if info["oldest_ns"] is None else min(first, info["oldest_ns"])
            if last is not None:
                info["newest_ns"] = last if info["newest_ns"] is None else max(last, info["newest_ns"])
            info["encodings"].update((encodings or "").split(","))
    result = []
    for info in found.values():
        info["encodings"] = sorted(e for e in info["encodings"] if e)
        result.append(info)
    return result


def _drop_first(encoding: str, data: bytes, count: int) -> bytes:
    """``data`` without its first ``count`` points."""
    if encoding == COLUMNS:
        return dump_points(load_points(data)[count:])
    return b"\n".join(split_lines(bytes(data), encoding)[count:])


def _migrate_from_2(db: sqlite3.Connection) -> None:
    """Schema 2 named the queue key column ``backend``; the data is unchanged."""
    db.execute("DROP VIEW IF EXISTS buildbot_stats_spool")
    for table in (_TABLE, _QUARANTINE):
        exists = db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (table,)).fetchone()
        if exists:
            db.execute(f"ALTER TABLE {table} RENAME COLUMN backend TO queue_key")


def _migrate_from_3(db: sqlite3.Connection) -> None:
    """Schema 3 kept the ids of a segment's points (a JSON array) and a pickle of the points."""
    db.execute("DROP VIEW IF EXISTS buildbot_stats_spool")
    exists = db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (_TABLE,)).fetchone()
    if exists:
        db.execute(f"ALTER TABLE {_TABLE} RENAME TO buildbot_stats_segments_v3")
        db.execute(_SCHEMA.format(db="main."))
        rows = db.execute("SELECT queue_key, id, ids, points FROM buildbot_stats_segments_v3")
        db.executemany(
            f"INSERT INTO {_TABLE} ({_COLS}) VALUES (?,?,?,NULL,NULL,?,?)",
            ((key, sid, ids.count(",") + 1, COLUMNS, data) for key, sid, ids, data in rows),
        )
        db.execute("DROP TABLE buildbot_stats_segments_v3")
    exists = db.execute(
        "SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (_QUARANTINE,)
    ).fetchone()
    if exists:
        db.execute(f"ALTER TABLE {_QUARANTINE} RENAME TO buildbot_stats_unreadable_v3")


def encode_segment(
    queue_key: str, points: list[Point], encoder: Callable[[list[Point]], Any] | None
) -> tuple[NewSegment | None, Any]:
    """One segment for ``points``: by the backend's ``thd_encode`` if it has one, else as columns.

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


class ForeignSpoolFileError(Exception):
    """The spool's path names a file that is not a spool of ours; it is left untouched."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path} is not a buildbot_stats spool: it {problem}; it is left untouched")
        self.path = path
        self.problem = problem


def foreign_file_problem(path: str) -> str | None:
    """Why the file at ``path`` must not be used as a spool, or None if it may be.

    The spool creates, opens, or (when it is damaged) renames aside only a file
    it recognises as its own: no file yet, an empty file, an SQLite file whose
    header carries the spool's ``application_id`` (readable or not), an empty
    SQLite database, or one holding the spool's table (a spool written before
    the mark).  Anything else -- Buildbot's ``state.sqlite``, ``master.cfg``, a
    damaged file without the mark -- is somebody else's and is never touched.
    Reads at most the header and, read-only, the table names.
    """
    problem, header, tables = existing_sqlite_file(path)
    if problem is not None:
        if len(header) >= 72 and int.from_bytes(header[68:72], "big") == APPLICATION_ID:
            return None  # ours, damaged: it may be set aside
        return problem + (" and has no spool mark" if header.startswith(SQLITE_MAGIC) else "")
    if len(header) >= 72 and int.from_bytes(header[68:72], "big") == APPLICATION_ID:
        return None
    if not tables or _TABLE in tables:
        return None
    return other_tables(tables)
