"""Embedded SQLite storage, the zero-setup default backend (docs/cli.rst, "The store"; ui/store.py reads it):
a point sent again with the same series, tags and time is merged into its row, as InfluxDB merges fields."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from buildbot import config

from buildbot_stats.arguments import reject_unknown
from buildbot_stats.config_paths import loading_basedir, resolve
from buildbot_stats.errors import RefusedWriteError
from buildbot_stats.point import Point, PointProblem, is_flat_plain, to_json_value
from buildbot_stats.sqlite_wal import connect_wal, foreign_sqlite_problem
from buildbot_stats.storage_backends import base
from buildbot_stats.storage_backends.base import BatchBackend, WriteReport

__all__ = ["SQLiteStorageService"]

FORMAT = "buildbot_stats"
#: series pattern -> age: older points are pruned (docs/live.rst: live points serve weeks, not years)
DEFAULT_RETENTION = {"buildbot-live": "30d"}
#: each write (in the writing thread) prunes at most this many old points per pattern
PRUNE_ROWS = 10_000
_PRUNE = "DELETE FROM points WHERE id IN (SELECT id FROM points WHERE series GLOB ? AND time_ns < ? LIMIT ?)"
_AGE, _UNITS = re.compile(r"(\d+(?:\.\d+)?)([smhdw])"), {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
SCHEMA_VERSION = 1

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS points (
        id INTEGER PRIMARY KEY,
        series TEXT NOT NULL,
        time_ns INTEGER NOT NULL,
        tags TEXT NOT NULL,
        fields TEXT NOT NULL,
        UNIQUE (series, tags, time_ns)
    )""",
    "CREATE INDEX IF NOT EXISTS points_series_time ON points (series, time_ns)",
)

_UPSERT = """
INSERT INTO points (series, time_ns, tags, fields) VALUES (?, ?, ?, ?)
ON CONFLICT (series, tags, time_ns) DO UPDATE SET fields = bbs_merge_fields(points.fields, excluded.fields)
"""


#: one encoder each: ``json.dumps`` with options builds one per call (half the cost of a row)
_ENCODERS = [
    json.JSONEncoder(allow_nan=False, sort_keys=s, separators=(",", ":")).encode for s in (False, True)
]


def _dumps(obj: dict[str, Any], sort_keys: bool = False) -> str:
    # ensure_ascii: lone surrogates in a str survive as \\udxxx escapes
    return _ENCODERS[sort_keys](obj)  # type: ignore[no-any-return]


def _merge_fields(old: str, new: str) -> str:
    return _dumps({**json.loads(old), **json.loads(new)})


def _point_row(point: Point, problems: list[PointProblem]) -> tuple[str, int, str, str] | None:
    series = str(point.series)
    if not series:
        problems.append(PointProblem(series, "*", "empty series name", True))
        return None
    fields = point.fields
    if not isinstance(fields, dict):
        problems.append(PointProblem(series, "value", "fields not a dict; stored as field 'value'", False))
        fields = {"value": fields}
    tags = point.tags if is_flat_plain(point.tags) else to_json_value(dict(point.tags or {}))
    fields = fields if is_flat_plain(fields) else to_json_value(fields)  # (the usual case: as they are)
    return series, int(point.time_ns), _dumps(tags, sort_keys=True), _dumps(fields)


def tables_and_meta(db: sqlite3.Connection) -> tuple[set[str], dict[str, str]]:
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    try:
        meta = (
            {str(k): str(v) for k, v in db.execute("SELECT key, value FROM meta")} if "meta" in tables else {}
        )
    except sqlite3.OperationalError:  # a 'meta' table of some other application
        meta = {}
    return tables, meta


class SQLiteStorageService(BatchBackend):
    """Stores statistics in an SQLite file (``path`` relative to the master's basedir) made with its directory
    on the first write; the connection is opened in the writing thread and shared under a lock."""

    def __init__(
        self,
        path: str,
        captures: Sequence[Any],
        name: str | None = None,
        *,
        busy_timeout: float = 10.0,
        live_interval: float = base.DEFAULT_LIVE_INTERVAL,
        retention: Mapping[str, str | float] = DEFAULT_RETENTION,
        **unknown: Any,
    ) -> None:
        reject_unknown(self, unknown)
        self.live_interval = base.live_interval_checked(self, name, live_interval)
        self.name = name or "SQLiteStorageService"
        #: (series pattern, seconds): a point older than any pattern its series matches is pruned
        self.retention = _ages(self.name, retention)
        self.captures = captures
        self.busy_timeout = busy_timeout
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self.path = os.fspath(path) if isinstance(path, os.PathLike) else path
        self._inited = isinstance(self.path, str) and self.path != ""
        if not self._inited:
            config.error(f"{self.name}: path must be a non-empty string, not {path!r}")
            return
        full = resolve(path, loading_basedir())  # somebody else's file is never written
        problem = full and foreign_sqlite_problem(full, lambda tables: {"meta", "points"} <= tables)
        if problem:
            config.error(
                f"{self.name}: {full} is not a buildbot_stats store: it {problem}; choose another path"
            )

    def __repr__(self) -> str:
        return f"<SQLiteStorageService {self.name!r} {self.path!r}>"

    def _connect(self) -> sqlite3.Connection:
        if self._db is not None:
            return self._db
        db = None
        try:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            db = connect_wal(self.path, self.busy_timeout)
            db.create_function("bbs_merge_fields", 2, _merge_fields, deterministic=True)
            with db:
                db.execute("BEGIN IMMEDIATE")
                tables, meta = tables_and_meta(db)
                version = meta.get("schema_version")
                if tables and meta.get("format") != FORMAT:
                    raise RefusedWriteError(f"{self.name}: {self.path} is not a buildbot_stats store")
                if tables and version != str(SCHEMA_VERSION):  # a newer buildbot_stats wrote it
                    raise RefusedWriteError(f"{self.name}: {self.path} has schema version {version!r}")
                for statement in _SCHEMA:
                    db.execute(statement)
                db.executemany(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)",
                    [("format", FORMAT), ("schema_version", str(SCHEMA_VERSION))],
                )
        except BaseException as e:
            if db is not None:
                db.close()
            if isinstance(e, (OSError, sqlite3.Error)):  # e.g. "file is not a database"
                raise RefusedWriteError(f"{self.name}: {self.path} is not usable: {e}") from None
            raise
        self._db = db
        return db

    def thd_postStatsValues(self, points: list[Point]) -> WriteReport:
        """Store a batch in one transaction; return what was converted or rejected."""
        if not self._inited:
            raise RefusedWriteError(f"{self.name} is not configured")
        report = WriteReport()
        rows = [row for row in (_point_row(p, report.problems) for p in points) if row is not None]
        report.rejected_points = len(points) - len(rows)
        if rows:
            with self._lock:
                db = self._connect()
                with db:
                    db.execute("BEGIN IMMEDIATE")
                    db.executemany(_UPSERT, rows)
                    for pattern, seconds in self.retention:  # an index seek when there is nothing to do
                        db.execute(_PRUNE, (pattern, time.time_ns() - int(seconds * 1e9), PRUNE_ROWS))
        return report

    def close(self) -> None:
        """Close the connection (a later write opens it again)."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


def _ages(owner: str, retention: Any) -> list[tuple[str, float]]:
    """``{series pattern: age}`` (``"30d"``, ``"12h"``, ``"90m"``, ``"2w"``, seconds): (pattern, seconds)."""
    ages: list[tuple[str, float]] = []
    for pattern, age in retention.items() if isinstance(retention, Mapping) else [(None, None)]:
        match = _AGE.fullmatch(age) if isinstance(age, str) else None
        seconds: Any = float(match[1]) * _UNITS[match[2]] if match else age
        if isinstance(pattern, str) and pattern and type(seconds) in (int, float) and 0 < seconds < 1e10:
            ages.append((pattern, float(seconds)))
        else:
            message = "retention must map series patterns (as in GLOB) to ages such as '30d' or seconds"
            config.error(f"{owner}: {message}, not {retention!r}")
    return ages
