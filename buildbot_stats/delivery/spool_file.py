"""The spool's file: telling ours apart, opening it (older schemas migrated), and the codec of its points.

Schema 5: the table ``buildbot_stats_segments`` holds one row per segment:
``queue_key`` (``<service name>/<backend name>``), an increasing ``id``, ``n``
points, their oldest and newest time ``first_ns``/``last_ns``, an
``encoding`` and the ``data``, which is either

* ``msgpack-columns-1`` (:data:`COLUMNS`): the points, one msgpack array per
  attribute (series, fields, tags, times).  msgpack holds NaN and ±Inf as
  they are; an int beyond its 64 bits is the ext type 1 (big-endian two's
  complement).  Unpacking makes plain values only: a spool never runs code.
* or bytes a backend encoded once (``thd_encode``), kept as they are.

Schemas 2 to 4 (buildbot_stats 0.1.0 and its development versions) pickled
the points (``columns-1``): :func:`migrate` converts them when the file is
opened, in place.  Only it reads a pickle, with an unpickler that refuses
every class and function, within :data:`LEGACY_MAX_BYTES` and
:data:`LEGACY_MAX_OBJECTS`; a segment beyond them, or unreadable, is moved to
the table ``buildbot_stats_unreadable`` like any unreadable segment.
"""

from __future__ import annotations

import io
import os
import pickle
import sqlite3
import time
from typing import Any

import msgpack

from buildbot_stats.point import Point, is_flat_plain, to_plain
from buildbot_stats.sqlite_wal import SQLITE_MAGIC, connect_wal, existing_sqlite_file, other_tables

__all__ = ["APPLICATION_ID", "COLUMNS", "ForeignSpoolFileError", "dump_points", "foreign_file_problem"]
__all__ += ["load_points", "open_spool_file", "quarantine", "set_aside"]

SCHEMA_VERSION = 5
READABLE_VERSIONS = (2, 3, 4, 5)
#: ``PRAGMA application_id`` of a spool ("bbst"), in the file's header: ours even when damaged
APPLICATION_ID = 0x62627374
TABLE = "buildbot_stats_segments"
QUARANTINE = "buildbot_stats_unreadable"
_TABLE_SQL = (
    "CREATE TABLE IF NOT EXISTS {db}.buildbot_stats_segments (queue_key TEXT NOT NULL, id INTEGER NOT NULL, "
    "n INTEGER NOT NULL, first_ns INTEGER, last_ns INTEGER, encoding TEXT NOT NULL, data BLOB NOT NULL, "
    "PRIMARY KEY (queue_key, id))"
)
_QUARANTINE_SQL = (
    f"CREATE TABLE IF NOT EXISTS {QUARANTINE} (queue_key TEXT NOT NULL, id INTEGER NOT NULL, "
    "encoding TEXT NOT NULL, data BLOB NOT NULL, error TEXT NOT NULL)"
)
COLUMNS = "msgpack-columns-1"
LEGACY_COLUMNS = "columns-1"  # pickled, schemas 2 to 4
LEGACY_MAX_BYTES = 64 * 2**20
LEGACY_MAX_OBJECTS = 16 * 2**20  # values and containers; a shared one counts at each use
_BIG_INT = 1  # msgpack ext type: an int beyond 64 bits


def _pack_default(value: Any) -> Any:
    if isinstance(value, int):
        return msgpack.ExtType(_BIG_INT, value.to_bytes((value.bit_length() + 8) // 8, "big", signed=True))
    raise TypeError(f"{type(value).__name__} is not a plain value")


def _ext(code: int, data: bytes) -> Any:
    if code != _BIG_INT:
        raise ValueError(f"unknown msgpack ext type {code} in a spool segment")
    return int.from_bytes(data, "big", signed=True)


def _pack(columns: list[Any]) -> bytes:
    try:
        return msgpack.packb(columns, default=_pack_default)
    except UnicodeEncodeError:  # a lone surrogate (from os.fsdecode, say): kept as it is
        return msgpack.packb(columns, default=_pack_default, unicode_errors="surrogatepass")


def dump_points(points: list[Point]) -> bytes:
    """The points as :data:`COLUMNS`: one list per attribute, packed in one call."""
    series, times = [p.series for p in points], [p.time_ns for p in points]
    fields, tags = [p.fields for p in points], [p.tags for p in points]
    try:
        return _pack([series, fields, tags, times])
    except (TypeError, ValueError):  # a value msgpack cannot hold (a set, a datetime): plain values
        plain = [list(map(str, series)), list(map(to_plain, fields)), list(map(to_plain, tags))]
        return _pack([*plain, list(map(int, times))])


def _flat(values: Any) -> bool:
    return is_flat_plain(values, nan=True)


def _to_points(series: list[Any], fields: list[Any], tags: list[Any], times: list[Any]) -> list[Point]:
    # bytes, tuples and non-str keys were written as they were: reduced here as to_plain does
    if not all(map(_flat, fields)):
        fields = [v if _flat(v) else to_plain(v) for v in fields]
    if not all(map(_flat, tags)):
        tags = [v if _flat(v) else to_plain(v) for v in tags]
    return list(map(Point, series, fields, tags, times))


def load_points(data: bytes) -> list[Point]:
    """The points of :func:`dump_points`, reduced to plain values as ``to_plain`` does."""
    # arrays as tuples: a tuple can be a dict key (made a str by to_plain, as pickle's were)
    series, fields, tags, times = msgpack.unpackb(
        data, ext_hook=_ext, strict_map_key=False, unicode_errors="surrogatepass", use_list=False
    )
    return _to_points(series, fields, tags, times)


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"the spool holds plain values only, not {module}.{name}")


def load_pickled_points(data: bytes) -> list[Point]:
    """The points of a ``columns-1`` segment of schema 2 to 4, within the bounds (for :func:`migrate`)."""
    if len(data) > LEGACY_MAX_BYTES:
        raise ValueError(f"a pickled segment of {len(data):,} bytes (more than {LEGACY_MAX_BYTES:,})")
    form, series, fields, tags, times = _PlainUnpickler(io.BytesIO(data)).load()
    if (
        form != LEGACY_COLUMNS
        or not all(type(s) is str for s in series)
        or not all(type(t) is int for t in times)
    ):
        raise ValueError("not a spool segment of the format columns-1")
    left, plain = LEGACY_MAX_OBJECTS, []
    for value in (*fields, *tags):
        if _flat(value):  # the usual point: no container inside
            left -= 1 + 2 * len(value)
            plain.append(value)
            continue
        todo = [value]
        while todo and left >= 0:  # a pickle may use an object many times over, or hold itself
            item = todo.pop()
            left -= 1
            if isinstance(item, dict):
                todo.extend(item.items())
            elif isinstance(item, (list, tuple, set, frozenset)):
                todo.extend(item)
        if left < 0:
            raise ValueError(f"a pickled segment of more than {LEGACY_MAX_OBJECTS:,} objects")
        plain.append(to_plain(value))
    return list(map(Point, series, plain[: len(fields)], plain[len(fields) :], times))


def _has(db: sqlite3.Connection, table: str) -> bool:
    return (
        db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()
        is not None
    )


def migrate(db: sqlite3.Connection, version: int) -> str:
    """Bring a spool of schema 2, 3 or 4 to 5 in the caller's transaction; says what it did, for the log."""
    db.execute("DROP VIEW IF EXISTS buildbot_stats_spool")  # 2 and 3: one row per point, for inspection
    if version == 2:  # the queue key column was named backend
        for table in (TABLE, QUARANTINE):
            if _has(db, table):
                db.execute(f"ALTER TABLE {table} RENAME COLUMN backend TO queue_key")
    if version in (2, 3) and _has(db, TABLE):  # (queue_key, id, last_id, ids, points)
        db.execute(f"ALTER TABLE {TABLE} RENAME TO buildbot_stats_segments_v3")
        db.execute(_TABLE_SQL.format(db="main"))
        db.execute(
            f"INSERT INTO {TABLE} SELECT queue_key, id, 0, NULL, NULL, ?, points FROM {TABLE}_v3",
            (LEGACY_COLUMNS,),
        )
        db.execute(f"DROP TABLE {TABLE}_v3")
    if version in (2, 3) and _has(db, QUARANTINE):  # its rows have other columns: kept as they are
        db.execute(f"ALTER TABLE {QUARANTINE} RENAME TO {QUARANTINE}_v3")
    db.execute(_TABLE_SQL.format(db="main"))
    db.execute(_QUARANTINE_SQL)
    converted, unreadable, where = 0, 0, "WHERE queue_key = ? AND id = ?"
    for key, sid in db.execute(
        f"SELECT queue_key, id FROM {TABLE} WHERE encoding = ?", (LEGACY_COLUMNS,)
    ).fetchall():
        (data,) = db.execute(f"SELECT data FROM {TABLE} {where}", (key, sid)).fetchone()
        try:
            points = load_pickled_points(data)
            times = [p.time_ns for p in points]
            row = (
                len(points),
                min(times, default=None),
                max(times, default=None),
                COLUMNS,
                dump_points(points),
            )
        except Exception as e:
            quarantine(db, "main", key, sid, LEGACY_COLUMNS, data, e)
            unreadable += 1
            continue
        db.execute(
            f"UPDATE {TABLE} SET n = ?, first_ns = ?, last_ns = ?, encoding = ?, data = ? {where}",
            (*row, key, sid),
        )
        converted += 1
    bad = f", {unreadable} unreadable moved to the table {QUARANTINE}" if unreadable else ""
    return f"was migrated from schema {version} to {SCHEMA_VERSION} ({converted} segment(s) converted{bad})"


def quarantine(
    db: sqlite3.Connection, table: str, key: str, sid: int, encoding: str, data: bytes, error: Exception
) -> None:
    """Move an unreadable segment to the table ``buildbot_stats_unreadable`` (in a transaction)."""
    db.execute(
        f"INSERT INTO {QUARANTINE} VALUES (?,?,?,?,?)",
        (key, sid, encoding, data, f"{type(error).__name__}: {error}"),
    )
    db.execute(f"DELETE FROM {table}.{TABLE} WHERE queue_key = ? AND id = ?", (key, sid))


class ForeignSpoolFileError(Exception):
    """The spool's path names a file that is not a spool of ours; it is left untouched."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path} is not a buildbot_stats spool: it {problem}; it is left untouched")
        self.path = path
        self.problem = problem


def foreign_file_problem(path: str) -> str | None:
    """Why the file at ``path`` must not be used as a spool, or None if it may be.

    Ours: no file yet, an empty file, an SQLite file whose header carries the
    spool's ``application_id`` (readable or not), an empty SQLite database, or
    one holding the spool's table (a spool written before the mark).  Anything
    else -- Buildbot's ``state.sqlite``, ``master.cfg``, a damaged file without
    the mark -- is somebody else's and never touched.  Reads at most the header
    and, read-only, the table names.
    """
    problem, header, tables = existing_sqlite_file(path)
    if len(header) >= 72 and int.from_bytes(header[68:72], "big") == APPLICATION_ID:
        return None  # ours (if damaged, it may be set aside)
    if problem is not None:
        return problem + (" and has no spool mark" if header.startswith(SQLITE_MAGIC) else "")
    return None if not tables or TABLE in tables else other_tables(tables)


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


def is_storage_error(e: BaseException) -> bool:
    """An error of the file's storage (disk full, read-only, I/O), not of the data."""
    words = ("full", "readonly", "read-only", "disk i/o", "unable to open", "locked")
    return isinstance(e, sqlite3.OperationalError) and any(w in str(e).lower() for w in words)


def open_spool_file(path: str | None) -> tuple[sqlite3.Connection, str | None, str | None]:
    """Connect to the spool at ``path`` (None: in memory): ``(connection, notice for the log, set aside to)``.

    An empty file, a schema to migrate, and a file set aside (damaged past its
    header, or of a schema this version cannot read) are each a notice; a
    storage error (disk full, read-only) is raised.
    """
    empty = path is not None and os.path.isfile(path) and os.path.getsize(path) == 0
    try:
        db, notice = _connect(path)
    except sqlite3.DatabaseError as e:
        if (
            path is None
            or is_storage_error(e)
            or (isinstance(e, sqlite3.OperationalError) and not os.path.isfile(path))
        ):
            raise
        if isinstance(e, _SchemaVersionError):
            tag, later = f"schema-{e.version}", " for a later upgrade"
            why = f"has schema version {e.version}, which this version of buildbot_stats cannot read"
        else:
            tag, later, why = "unreadable", "", f"could not be read ({' '.join(str(e).split())})"
        aside = set_aside(path, tag)
        return (
            _connect(path)[0],
            f"the spool {path} {why}; it was moved to {aside}{later} and a new one started",
            aside,
        )
    if empty:
        notice = (
            f"the spool {path} was an empty file (0 bytes): it held no points "
            "(a master killed before its first spool write, or a truncated copy); a new one started"
        )
    return db, notice, None


def _connect(path: str | None) -> tuple[sqlite3.Connection, str | None]:
    if path is None:
        db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    else:
        db = connect_wal(path, timeout=30)
    notice = None
    try:
        with db:
            db.execute("BEGIN IMMEDIATE")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]:
                if version not in READABLE_VERSIONS:
                    raise _SchemaVersionError(version)
                if version != SCHEMA_VERSION:
                    notice = f"the spool {path} {migrate(db, version)}"
            db.execute(_TABLE_SQL.format(db="main"))
            db.execute(_QUARANTINE_SQL)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            marked = db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
            db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        if not marked and path is not None:
            # the mark goes into the file's own header, where foreign_file_problem reads it
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        check = db.execute("PRAGMA quick_check(1)").fetchone()[0]  # damaged past its header?
        if check != "ok":
            raise sqlite3.DatabaseError(f"database disk image is malformed: {check}")
        # the segments kept in memory while the file cannot be written
        db.execute("ATTACH DATABASE ':memory:' AS mem")
        db.execute(_TABLE_SQL.format(db="mem"))
    except BaseException:
        db.close()
        raise
    return db, notice
