"""The SQLite files of the spool and the SQLite backend: opened in WAL mode, never somebody else's."""

from __future__ import annotations

import os
import sqlite3
import stat
import time
import urllib.parse
from collections.abc import Callable
from contextlib import closing


def connect_wal(path: str, timeout: float) -> sqlite3.Connection:
    """Connect in autocommit mode with WAL journaling and ``synchronous=NORMAL``; the switch to WAL is
    retried for ``timeout`` seconds (two openers racing for it are refused at once, "database is locked")."""
    db = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                db.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        # NORMAL: a commit survives a crash of the process (not of the OS) without an fsync per commit
        db.execute("PRAGMA synchronous=NORMAL")
    except BaseException:
        db.close()
        raise
    return db


def foreign_sqlite_problem(
    path: str, ours: Callable[[set[str]], bool], application_id: int | None = None
) -> str | None:
    """Why the file at ``path`` is somebody else's and must not be written, or None: no file, an empty file
    or database, one whose tables are ``ours``, one whose header carries ``application_id`` (even damaged)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return "is not a regular file"
        with open(path, "rb") as f:
            header = f.read(100)
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    if not header or (application_id is not None and header[68:72] == application_id.to_bytes(4, "big")):
        return None
    if not header.startswith(b"SQLite format 3\x00"):
        return "is not an SQLite file"
    uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=ro"  # (reads the table names only)
    try:
        with closing(sqlite3.connect(uri, uri=True, timeout=5)) as db:
            tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error as e:
        unmarked = " and has no spool mark" if application_id is not None else ""
        return f"is an SQLite file that cannot be read ({e}){unmarked}"
    if not tables or ours(tables):
        return None
    shown = ", ".join(sorted(tables)[:3]) + (", ..." if len(tables) > 3 else "")
    return f"is an SQLite database with other tables ({shown})"
