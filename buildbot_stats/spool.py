"""Where points wait until their backend has accepted them.

:class:`SQLiteSpool` keeps them in a file so that a master that is stopped, or
killed, sends them after it starts again; :class:`MemorySpool` keeps nothing
(``spool_path=None``).

The file holds *segments*: each spool write of a delivery queue is one row of
the table ``buildbot_stats_segments``, keyed by the queue (``queue_key``:
``<service name>/<backend name>``, as several services may share one file) and
the id of its first point, with
the ids of its points and the points themselves, serialised in one call (a
pickle of plain lists, dicts, strings and numbers: lossless for NaN and ±Inf,
read back by an unpickler that refuses every class and function).  The queue
counts in memory how many points of each segment the backend has not accepted
yet and deletes the row when that count reaches zero.  After a crash, every
point of a segment still in the file is sent again, including those of the
segment that the backend had already accepted: at-least-once delivery, and as
a point keeps its series, tags and timestamp, InfluxDB overwrites the copy it
already has.  Points dropped by ``max_spool_points`` from a segment whose other
points are still pending leave the file with that segment (and are sent again
if the master restarts before then).

A view ``buildbot_stats_spool`` shows one row ``(id, queue_key)`` per point of
the segments, for inspection (``SELECT COUNT(*) FROM buildbot_stats_spool``).

All ``thd_*`` methods are blocking and are called from one dedicated thread
(:mod:`buildbot_stats.spool_thread`); :class:`Spool` is the interface both
spools implement.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import sqlite3
import time
from collections.abc import Iterable
from typing import Any, Protocol, runtime_checkable

from buildbot_stats.point import Point, is_flat_plain, to_plain
from buildbot_stats.spool_lock import SpoolLock
from buildbot_stats.sqlite_wal import SQLITE_MAGIC, connect_wal, existing_sqlite_file, other_tables

__all__ = [
    "ForeignSpoolFileError",
    "MemorySpool",
    "SQLiteSpool",
    "Spool",
    "SpoolSegment",
    "dump_points",
    "foreign_file_problem",
    "load_points",
]

_TABLE = "buildbot_stats_segments"
_VIEW = "buildbot_stats_spool"
_SCHEMA_VERSION = 3  # 3: column backend renamed queue_key (2 is migrated)
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {_TABLE} (
    queue_key TEXT NOT NULL,
    id INTEGER NOT NULL,
    last_id INTEGER NOT NULL,
    ids TEXT NOT NULL,
    points BLOB NOT NULL,
    PRIMARY KEY (queue_key, id)
)
"""
_QUARANTINE = "buildbot_stats_unreadable"
_QUARANTINE_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {_QUARANTINE} (
    queue_key TEXT NOT NULL,
    id INTEGER NOT NULL,
    ids TEXT NOT NULL,
    points BLOB NOT NULL,
    error TEXT NOT NULL
)
"""
_CREATE_VIEW = (
    f"CREATE VIEW IF NOT EXISTS {_VIEW} (id, queue_key) AS "
    f"SELECT j.value, s.queue_key FROM {_TABLE} AS s, json_each(s.ids) AS j"
)
_INSERT = f"INSERT OR REPLACE INTO {_TABLE} (queue_key, id, last_id, ids, points) VALUES (?,?,?,?,?)"
_PICKLE_PROTOCOL = 5  # readable by Python >= 3.8
#: ``PRAGMA application_id`` of a spool file ("bbst"), in the file's header: it marks
#: the file as ours even when the rest of it is damaged.
APPLICATION_ID = 0x62627374

# (first id, ids, points): one spool write of a queue, as written and as found again at start
SpoolSegment = tuple[int, list[int], list[Point]]


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


_FORMAT = "columns-1"


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


@runtime_checkable
class Spool(Protocol):
    """Where a delivery queue keeps the points its backend has not accepted yet.

    Blocking methods, called in submission order from one thread (see
    :class:`~buildbot_stats.spool_thread.SpoolThread`).  Points are grouped in
    segments under a queue key; a segment leaves when all its points were
    accepted (or dropped).
    """

    #: whether the points survive a restart of the master
    durable: bool
    path: str | None
    #: where an unreadable file was moved at open (for the log), if it was
    set_aside: str | None

    def thd_open(self) -> None: ...

    def thd_last_id(self) -> int:
        """The highest point id in the spool (new ids continue after it)."""
        ...

    def thd_read_pending(self, queue_key: str) -> tuple[list[SpoolSegment], int]:
        """The segments of ``queue_key`` in order, and how many unreadable ones were set aside."""
        ...

    def thd_pending_counts(self) -> dict[str, int]:
        """Queue key -> pending points, for every queue in the spool."""
        ...

    def thd_append(self, queue_key: str, segments: list[SpoolSegment]) -> None: ...

    def thd_release(self, queue_key: str, segment_ids: Iterable[int]) -> None:
        """Remove the segments whose points all left the queue."""
        ...

    def thd_close(self) -> None: ...


class MemorySpool:
    """No durability: points live only in the delivery queue's memory."""

    durable = False
    path = None
    set_aside = None

    def thd_open(self) -> None:
        pass

    def thd_last_id(self) -> int:
        return 0

    def thd_read_pending(self, queue_key: str) -> tuple[list[SpoolSegment], int]:
        return [], 0

    def thd_pending_counts(self) -> dict[str, int]:
        return {}

    def thd_append(self, queue_key: str, segments: list[SpoolSegment]) -> None:
        pass

    def thd_release(self, queue_key: str, segment_ids: Iterable[int]) -> None:
        pass

    def thd_close(self) -> None:
        pass


class SQLiteSpool:
    """A spool in an SQLite file (WAL mode, survives a SIGKILL of the master).

    A file that cannot be read at all (not SQLite, damaged, or of another
    schema) is renamed aside and a fresh one created; a segment that cannot be
    read is moved to the table ``buildbot_stats_unreadable``.  Either way the
    master starts, and the log says what was set aside.
    """

    durable = True

    def __init__(self, path: str) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self.set_aside: str | None = None

    def __repr__(self) -> str:
        return f"SQLiteSpool({self.path!r})"

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
            raise

    def _thd_connect(self) -> None:
        try:
            self._db = self._connect()
        except sqlite3.DatabaseError as e:
            if isinstance(e, sqlite3.OperationalError) and not os.path.isfile(self.path):
                raise
            self.set_aside = f"{self.path}.unreadable-{int(time.time())}"
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(self.path + suffix):
                    os.replace(self.path + suffix, self.set_aside + suffix)
            self._db = self._connect()

    def _connect(self) -> sqlite3.Connection:
        db = connect_wal(self.path, timeout=30)
        try:
            with db:
                db.execute("BEGIN IMMEDIATE")
                version = db.execute("PRAGMA user_version").fetchone()[0]
                has_tables = db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]
                if version == 2 and has_tables:
                    _migrate_from_2(db)
                elif version != _SCHEMA_VERSION and has_tables:
                    raise sqlite3.DatabaseError(f"spool schema {version}, expected {_SCHEMA_VERSION}")
                db.execute(_SCHEMA)
                db.execute(_QUARANTINE_SCHEMA)
                db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
                marked = db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
                if not marked:
                    db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                try:
                    db.execute(_CREATE_VIEW)
                except sqlite3.OperationalError:
                    pass  # an SQLite without json_each: the view is for inspection only
            if not marked:
                # into the file's own header (not only the WAL), where foreign_file_problem reads it
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except Exception:
            db.close()
            raise
        return db

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError(f"spool {self.path} is not open")
        return self._db

    def thd_last_id(self) -> int:
        row = self._conn().execute(f"SELECT MAX(last_id) FROM {_TABLE}").fetchone()
        return row[0] or 0

    def thd_pending_counts(self) -> dict[str, int]:
        rows = self._conn().execute(f"SELECT queue_key, ids FROM {_TABLE}")
        counts: dict[str, int] = {}
        for queue_key, ids in rows:
            counts[queue_key] = counts.get(queue_key, 0) + ids.count(",") + 1
        return counts

    def thd_read_pending(self, queue_key: str) -> tuple[list[SpoolSegment], int]:
        db = self._conn()
        rows = db.execute(
            f"SELECT id, ids, points FROM {_TABLE} WHERE queue_key = ? ORDER BY id", (queue_key,)
        ).fetchall()
        segments: list[SpoolSegment] = []
        bad = []
        for sid, ids, data in rows:
            try:
                segments.append((sid, json.loads(ids), load_points(data)))
            except Exception as e:
                bad.append((queue_key, sid, ids, data, f"{type(e).__name__}: {e}"))
        if bad:
            with db:
                db.execute("BEGIN")
                db.executemany(f"INSERT INTO {_QUARANTINE} VALUES (?,?,?,?,?)", bad)
                db.executemany(
                    f"DELETE FROM {_TABLE} WHERE queue_key = ? AND id = ?", [(b[0], b[1]) for b in bad]
                )
        return segments, len(bad)

    def thd_append(self, queue_key: str, segments: list[SpoolSegment]) -> None:
        db = self._conn()
        with db:
            db.execute("BEGIN")
            for sid, ids, points in segments:
                ids_text = "[" + ",".join(map(str, ids)) + "]"  # a JSON array, for the view
                db.execute(_INSERT, (queue_key, sid, ids[-1], ids_text, dump_points(points)))

    def thd_release(self, queue_key: str, segment_ids: Iterable[int]) -> None:
        db = self._conn()
        with db:
            db.execute("BEGIN")
            db.executemany(
                f"DELETE FROM {_TABLE} WHERE queue_key = ? AND id = ?", [(queue_key, i) for i in segment_ids]
            )

    def thd_close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
            self._lock.release()


def _migrate_from_2(db: sqlite3.Connection) -> None:
    """Schema 2 named the queue key column ``backend``; the data is unchanged."""
    db.execute(f"DROP VIEW IF EXISTS {_VIEW}")
    for table in (_TABLE, _QUARANTINE):
        exists = db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (table,)).fetchone()
        if exists:
            db.execute(f"ALTER TABLE {table} RENAME COLUMN backend TO queue_key")


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
