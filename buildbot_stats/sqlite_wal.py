"""SQLite files shared by the spool and the SQLite backend: opening in WAL mode, and telling ours apart."""

from __future__ import annotations

import os
import sqlite3
import stat
import time
import urllib.parse

__all__ = ["SQLITE_MAGIC", "connect_wal", "existing_sqlite_file", "other_tables"]


def connect_wal(path: str, timeout: float) -> sqlite3.Connection:
    """Connect in autocommit mode with WAL journaling and ``synchronous=NORMAL``.

    The switch to WAL is retried for ``timeout`` seconds: when two openers race
    for it SQLite refuses at once ("database is locked"), not after the busy timeout.
    """
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


SQLITE_MAGIC = b"SQLite format 3\x00"


def existing_sqlite_file(path: str) -> tuple[str | None, bytes, set[str]]:
    """What is at ``path``, for deciding whether a file is ours before touching it.

    Returns ``(problem, header, tables)``: ``problem`` says why the file is not
    a usable SQLite file (not regular, not SQLite, unreadable), else None;
    ``header`` holds its first 100 bytes and ``tables`` its table names, read
    read-only.  A missing or empty file is ``(None, b"", set())``.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None, b"", set()
    except OSError as e:
        return f"cannot be read ({e.strerror})", b"", set()
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file", b"", set()
    if st.st_size == 0:
        return None, b"", set()
    try:
        with open(path, "rb") as f:
            header = f.read(100)
    except OSError as e:
        return f"cannot be read ({e.strerror})", b"", set()
    if not header.startswith(SQLITE_MAGIC):
        return "is not an SQLite file", header, set()
    try:
        uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=ro"
        db = sqlite3.connect(uri, uri=True, timeout=5)
        try:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            db.close()
    except sqlite3.Error as e:
        return f"is an SQLite file that cannot be read ({e})", header, set()
    return None, header, tables


def other_tables(tables: set[str]) -> str:
    """A short description of somebody else's database, for an error message."""
    shown = ", ".join(sorted(tables)[:3]) + (", ..." if len(tables) > 3 else "")
    return f"is an SQLite database with other tables ({shown})"
