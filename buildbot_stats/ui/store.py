"""Reading a store written by :class:`~buildbot_stats.storage_backends.sqlite.SQLiteStorageService`.

Only the CLI and the Statistics page read stores: a master never loads this module.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import quote

from buildbot_stats.point import Point
from buildbot_stats.storage_backends.sqlite import FORMAT, SCHEMA_VERSION, tables_and_meta

__all__ = ["StatsStore", "StoreError", "from_json_value", "open_store"]


class StoreError(Exception):
    """The file is missing, unreadable, not SQLite, or not a buildbot_stats store."""


def from_json_value(value: Any) -> Any:
    """The inverse of :func:`buildbot_stats.point.to_json_value` (after a JSON round trip)."""
    if isinstance(value, dict):
        if len(value) == 1 and "$float" in value:
            return float(value["$float"])
        return {k: from_json_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json_value(v) for v in value]
    return value


class StatsStore:
    """A read-only view of a store; see :func:`open_store`."""

    def __init__(
        self, path: str, db: sqlite3.Connection, meta: dict[str, str], immutable: bool = False
    ) -> None:
        self.path = path
        self.meta = meta
        #: True when the file could only be opened as ``immutable`` (see :func:`open_store`)
        self.immutable = immutable
        self._db = db
        # Python runs signal handlers when SQLite calls back: Ctrl-C then aborts a long
        # statement ("interrupted") at once instead of at its end.
        db.set_progress_handler(lambda: 0, 100_000)

    def __enter__(self) -> StatsStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    def query(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> Iterator[tuple[Any, ...]]:
        """Rows of a read-only SQL statement (temporary tables allowed); errors as :class:`StoreError`."""
        try:
            yield from self._db.execute(sql, params)
        except sqlite3.Error as e:
            if str(e) == "interrupted":  # Ctrl-C, through the progress handler
                raise KeyboardInterrupt from None
            raise StoreError(f"{self.path}: cannot read the store ({e})") from None

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Run one statement to its end (e.g. to fill a temporary table)."""
        for _ in self.query(sql, params):
            pass

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run one statement for each row (e.g. to fill a temporary table)."""
        try:
            self._db.executemany(sql, rows)
        except sqlite3.Error as e:
            raise StoreError(f"{self.path}: cannot read the store ({e})") from None

    def series(self) -> list[str]:
        """The distinct series names, sorted."""
        return [r[0] for r in self.query("SELECT DISTINCT series FROM points ORDER BY series")]

    def count(self) -> int:
        """The number of stored points (rows)."""
        return next(self.query("SELECT COUNT(*) FROM points"))[0]

    def points(self, prefix: str = "", suffix: str = "") -> Iterator[Point]:
        """Points whose series starts with ``prefix`` and ends with ``suffix``, by series then time."""
        sql = "SELECT series, time_ns, tags, fields FROM points WHERE 1"
        if prefix:
            sql += " AND substr(series, 1, length(:prefix)) = :prefix"
        if suffix:
            sql += " AND length(series) >= length(:suffix) AND substr(series, -length(:suffix)) = :suffix"
        for series, time_ns, tags, fields in self.query(
            sql + " ORDER BY series, time_ns, id", {"prefix": prefix, "suffix": suffix}
        ):
            try:
                yield Point(
                    series, from_json_value(json.loads(fields)), from_json_value(json.loads(tags)), time_ns
                )
            except (TypeError, ValueError) as e:
                raise StoreError(f"{self.path}: a point of series {series!r} is corrupt ({e})") from None


def open_store(path: str | os.PathLike[str], busy_timeout: float = 10.0) -> StatsStore:
    """Open a store read-only; raise :class:`StoreError` if it is not one.

    Only a regular file is opened (a FIFO would block).  ``mode=ro`` needs to
    write the ``-shm`` file of a WAL database; when that is refused the file is
    opened ``immutable=1`` (:attr:`StatsStore.immutable`), which does not see
    points a running master has not yet checkpointed.  A store locked by a
    writer is waited for ``busy_timeout`` seconds, then it is a StoreError.
    """
    path = os.fspath(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise StoreError(f"{path}: no such file") from None
    except OSError as e:
        raise StoreError(f"{path}: cannot open: {e.strerror or e}") from None
    if stat.S_ISDIR(mode):
        raise StoreError(f"{path}: is a directory, not a buildbot_stats store")
    if not stat.S_ISREG(mode):
        raise StoreError(f"{path}: not a regular file, not a buildbot_stats store")
    if not os.access(path, os.R_OK):
        raise StoreError(f"{path}: cannot open: permission denied")
    for immutable in (False, True):
        uri = "file:" + quote(os.path.abspath(path)) + ("?immutable=1" if immutable else "?mode=ro")
        try:
            db = sqlite3.connect(
                uri, uri=True, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as e:
            raise StoreError(f"{path}: cannot open: {e}") from None
        try:
            meta = tables_and_meta(db)[1]
            if meta.get("format") == FORMAT:
                db.execute("SELECT series, time_ns, tags, fields FROM points LIMIT 0")
            break
        except sqlite3.Error as e:
            db.close()
            code = getattr(e, "sqlite_errorcode", 0) & 0xFF
            if not immutable and code in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN):
                continue  # the -shm file cannot be created or written
            if str(e) == "file is not a database":
                raise StoreError(f"{path}: not a buildbot_stats store (not an SQLite database)") from None
            raise StoreError(f"{path}: cannot read the store (corrupt or unreadable: {e})") from None
    if meta.get("format") != FORMAT:
        db.close()
        raise StoreError(f"{path}: not a buildbot_stats store (an SQLite database without its meta table)")
    version = meta.get("schema_version", "")
    if not version.isdigit() or int(version) > SCHEMA_VERSION:
        db.close()
        raise StoreError(
            f"{path}: schema version {version!r} is not supported (this buildbot_stats reads "
            f"{SCHEMA_VERSION})"
        )
    return StatsStore(path, db, meta, immutable=immutable)
