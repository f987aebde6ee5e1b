"""Where points wait until their backend has accepted them.

A spool maps ``(backend key, point id)`` to a point.  :class:`SQLiteSpool`
keeps them in a file so that a master that is stopped, or killed, sends them
after it starts again; :class:`MemorySpool` keeps nothing (``spool_path=None``).

All ``thd_*`` methods are blocking and are called from one dedicated thread.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable

from buildbot_stats.point import Point, point_from_json, point_to_json

__all__ = ["MemorySpool", "SQLiteSpool"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS buildbot_stats_spool (
    id INTEGER PRIMARY KEY,
    backend TEXT NOT NULL,
    point TEXT NOT NULL
)
"""


_INSERT = "INSERT OR REPLACE INTO buildbot_stats_spool (id, backend, point) VALUES "
_ROWS_PER_INSERT = 300  # 900 parameters: below the 999 of older SQLite builds


def _runs(ids: Iterable[int]) -> list[list[int]]:
    """``[1, 2, 3, 7, 8]`` -> ``[[1, 3], [7, 8]]``."""
    runs: list[list[int]] = []
    for i in sorted(set(ids)):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return runs


class MemorySpool:
    """No durability: points live only in the delivery queue's memory."""

    durable = False
    path = None

    def thd_open(self) -> None:
        pass

    def thd_max_id(self) -> int:
        return 0

    def thd_load(self, backend: str) -> list[tuple[int, Point]]:
        return []

    def thd_append(self, backend: str, items: list[tuple[int, Point]]) -> None:
        pass

    def thd_remove(self, ids: Iterable[int]) -> None:
        pass

    def thd_close(self) -> None:
        pass


class SQLiteSpool:
    """A spool in an SQLite file (WAL mode, survives a SIGKILL of the master)."""

    durable = True

    def __init__(self, path: str) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None

    def __repr__(self) -> str:
        return f"SQLiteSpool({self.path!r})"

    def thd_open(self) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            # NORMAL: a commit survives a crash of the process (not of the OS)
            # without an fsync per commit.
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(_SCHEMA)
            db.execute(
                "CREATE INDEX IF NOT EXISTS buildbot_stats_spool_backend "
                "ON buildbot_stats_spool (backend, id)"
            )
        except Exception:
            db.close()
            raise
        self._db = db

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError(f"spool {self.path} is not open")
        return self._db

    def thd_max_id(self) -> int:
        row = self._conn().execute("SELECT MAX(id) FROM buildbot_stats_spool").fetchone()
        return row[0] or 0

    def thd_load(self, backend: str) -> list[tuple[int, Point]]:
        rows = self._conn().execute(
            "SELECT id, point FROM buildbot_stats_spool WHERE backend = ? ORDER BY id", (backend,)
        )
        return [(pid, point_from_json(text)) for pid, text in rows]

    def thd_append(self, backend: str, items: list[tuple[int, Point]]) -> None:
        rows = [(pid, backend, point_to_json(point)) for pid, point in items]
        db = self._conn()
        with db:
            db.execute("BEGIN")
            # Many rows per statement: sqlite3 lets go of the GIL for every
            # statement step, and getting it back from a busy reactor is slow.
            for start in range(0, len(rows), _ROWS_PER_INSERT):
                chunk = rows[start : start + _ROWS_PER_INSERT]
                db.execute(_INSERT + ",".join(["(?,?,?)"] * len(chunk)), [v for row in chunk for v in row])

    def thd_remove(self, ids: Iterable[int]) -> None:
        db = self._conn()
        with db:
            db.execute("BEGIN")
            # acknowledged ids come in runs: one statement per run of consecutive ids
            db.executemany("DELETE FROM buildbot_stats_spool WHERE id BETWEEN ? AND ?", _runs(ids))

    def thd_close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
