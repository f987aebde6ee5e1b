"""The spool's file: telling ours apart, locking it, opening it (migrating older schemas), its codec.

Schema 5: one row per segment (see ``_TABLE_SQL``), whose ``data`` is the points as
:data:`COLUMNS` (msgpack: plain values only, so a spool never runs code) or the bytes
a backend encoded once.  Schemas 2 to 4 pickled the points (``columns-1``): :func:`migrate`
converts them with an unpickler that refuses every class, within the ``LEGACY_MAX_*`` bounds.
"""

from __future__ import annotations

import io
import os
import pickle
import sqlite3
import threading
import time
from typing import Any

import msgpack

from buildbot_stats.point import Point, is_flat_plain, to_plain
from buildbot_stats.sqlite_wal import connect_wal, foreign_sqlite_problem

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no lock
    fcntl = None  # type: ignore[assignment]

SCHEMA_VERSION = 5
#: ``PRAGMA application_id`` of a spool ("bbst"), in the file's header: ours even when damaged
APPLICATION_ID = 0x62627374
TABLE = "buildbot_stats_segments"
WHERE = "WHERE queue_key = ? AND id = ?"  # one segment
QUARANTINE = "buildbot_stats_unreadable"
_TABLE_SQL = (
    f"CREATE TABLE IF NOT EXISTS {TABLE} (queue_key TEXT NOT NULL, id INTEGER NOT NULL, "
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

#: schema n -> the statements that make it schema n + 1, each run if the table it names first exists
_STEPS: dict[int, list[tuple[str, str]]] = {
    2: [(t, f"ALTER TABLE {t} RENAME COLUMN backend TO queue_key") for t in (TABLE, QUARANTINE)],
    3: [  # a row per write (queue_key, id, last_id, ids, points) becomes a row per segment (pickled points)
        (TABLE, f"ALTER TABLE {TABLE} RENAME TO v3"),
        ("v3", _TABLE_SQL),
        ("v3", f"INSERT INTO {TABLE} SELECT queue_key, id, 0, NULL, NULL, 'columns-1', points FROM v3"),
        ("v3", "DROP TABLE v3"),
        # the rows set aside have other columns: kept as they are
        (QUARANTINE, f"ALTER TABLE {QUARANTINE} RENAME TO {QUARANTINE}_v3"),
    ],
    4: [],  # the same table: migrate() packs its pickled points again
}


# -- the codec -------------------------------------------------------------


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


def load_points(data: bytes) -> list[Point]:
    """The points of :func:`dump_points`, reduced to plain values as ``to_plain`` does.

    Bounded by the payload's length: msgpack shares no object, so a payload of n bytes
    holds at most n objects, and no header may announce a longer string or container.
    """
    size = len(data)
    # arrays as tuples: a tuple can be a dict key (made a str by to_plain, as pickle's were)
    series, fields, tags, times = msgpack.unpackb(
        data,
        **dict.fromkeys(("max_str_len", "max_bin_len", "max_array_len", "max_ext_len"), size),
        max_map_len=size // 2,
        ext_hook=_ext,
        strict_map_key=False,
        unicode_errors="surrogatepass",
        use_list=False,
    )
    fields = fields if all(map(_flat, fields)) else [v if _flat(v) else to_plain(v) for v in fields]
    tags = tags if all(map(_flat, tags)) else [v if _flat(v) else to_plain(v) for v in tags]
    return list(map(Point, series, fields, tags, times))


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
    left, todo = LEGACY_MAX_OBJECTS, [*fields, *tags]
    while todo:  # a pickle may use an object many times over, or hold itself
        item, left = todo.pop(), left - 1
        if left < 0:
            raise ValueError(f"a pickled segment of more than {LEGACY_MAX_OBJECTS:,} objects")
        if isinstance(item, dict):
            todo += item.items()
        elif isinstance(item, (list, tuple, set, frozenset)):
            todo += item
    plain = [v if _flat(v) else to_plain(v) for v in (*fields, *tags)]
    return list(map(Point, series, plain[: len(fields)], plain[len(fields) :], times))


# -- the file --------------------------------------------------------------


def migrate(db: sqlite3.Connection, version: int) -> str:
    """Bring a spool of schema 2, 3 or 4 to 5 in the caller's transaction; says what it did, for the log."""
    db.execute("DROP VIEW IF EXISTS buildbot_stats_spool")  # 2 and 3: one row per point, for inspection
    tables = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
    for step in range(version, SCHEMA_VERSION):
        for table, sql in _STEPS[step]:
            if db.execute(tables, (table,)).fetchone():
                db.execute(sql)
    create_tables(db)
    converted = unreadable = 0
    legacy = f"SELECT queue_key, id, data FROM {TABLE} WHERE encoding = ?"
    for key, sid, data in db.execute(legacy, (LEGACY_COLUMNS,)).fetchall():
        try:
            points = load_pickled_points(data)
            packed = dump_points(points)
        except Exception as e:
            quarantine(db, key, sid, LEGACY_COLUMNS, data, e)
            unreadable += 1
            continue
        times = [p.time_ns for p in points]
        sql = f"UPDATE {TABLE} SET n = ?, first_ns = ?, last_ns = ?, encoding = ?, data = ? {WHERE}"
        db.execute(
            sql, (len(points), min(times, default=None), max(times, default=None), COLUMNS, packed, key, sid)
        )
        converted += 1
    bad = f", {unreadable} unreadable moved to the table {QUARANTINE}" if unreadable else ""
    return f"was migrated from schema {version} to {SCHEMA_VERSION} ({converted} segment(s) converted{bad})"


def create_tables(db: sqlite3.Connection) -> None:
    db.execute(_TABLE_SQL)
    db.execute(_QUARANTINE_SQL)


def quarantine(
    db: sqlite3.Connection, key: str, sid: int, encoding: str, data: bytes, error: Exception
) -> None:
    """Move an unreadable segment to the table ``buildbot_stats_unreadable`` (in a transaction)."""
    row = (key, sid, encoding, data, f"{type(error).__name__}: {error}")
    db.execute(f"INSERT INTO {QUARANTINE} VALUES (?,?,?,?,?)", row)
    db.execute(f"DELETE FROM {TABLE} {WHERE}", (key, sid))


class ForeignSpoolFileError(Exception):
    """The spool's path names a file that is not a spool of ours; it is left untouched."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path} is not a buildbot_stats spool: it {problem}; it is left untouched")
        self.path = path
        self.problem = problem


def foreign_file_problem(path: str) -> str | None:
    """Why the file at ``path`` must not be used as a spool (Buildbot's ``state.sqlite``, say), or None.

    Ours: no file, an empty one, one marked with the spool's ``application_id`` (even
    damaged), an empty database, or one holding the spool's table (written before the mark).
    """
    return foreign_sqlite_problem(path, lambda tables: TABLE in tables, APPLICATION_ID)


class SpoolLockedError(RuntimeError):
    """Another process has the spool file open."""


#: lock file -> (descriptor, users): services of one master may share a spool file (their keys differ)
_locks: dict[str, tuple[int, int]] = {}
_locks_guard = threading.Lock()


def lock(path: str) -> str:
    """Lock ``<path>.lock`` for this process (``flock``: the kernel releases it when the process dies).

    Two masters on one file would send, and delete, each other's points.  The
    lock file stays: removing it would let two processes lock two files of one name.
    """
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
    def __init__(self, version: int) -> None:
        super().__init__(f"spool schema version {version}")
        self.version = version


def is_storage_error(e: BaseException) -> bool:
    """An error of the file's storage (disk full, read-only, I/O), not of the data."""
    words = ("full", "readonly", "read-only", "disk i/o", "unable to open", "locked")
    return isinstance(e, sqlite3.OperationalError) and any(w in str(e).lower() for w in words)


def open_spool_file(path: str) -> tuple[sqlite3.Connection, str | None]:
    """Connect to the spool at ``path``: ``(connection, what it found, for the log)``.

    A file damaged past its header, or of a schema this version cannot read, is set
    aside and a new one started.  A storage error (disk full, read-only) is raised.
    """
    empty = os.path.isfile(path) and os.path.getsize(path) == 0
    try:
        db, notice = _connect(path)
    except sqlite3.DatabaseError as e:
        if is_storage_error(e) or (isinstance(e, sqlite3.OperationalError) and not os.path.isfile(path)):
            raise
        if isinstance(e, _SchemaVersionError):
            tag, later = f"schema-{e.version}", " for a later upgrade"
            why = f"has schema version {e.version}, which this version of buildbot_stats cannot read"
        else:
            tag, later, why = "unreadable", "", f"could not be read ({' '.join(str(e).split())})"
        aside = f"{path}.{tag}-{int(time.time())}"  # (a file recognisably ours, or not a database at all)
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.replace(path + suffix, aside + suffix)
        return _connect(path)[
            0
        ], f"the spool {path} {why}; it was moved to {aside}{later} and a new one started"
    if empty:
        notice = (
            f"the spool {path} was an empty file (0 bytes): it held no points "
            "(a master killed before its first spool write, or a truncated copy); a new one started"
        )
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
            create_tables(db)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
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
