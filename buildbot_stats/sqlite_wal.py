"""Opening an SQLite file in WAL mode, shared by the spool and the SQLite backend."""

from __future__ import annotations

import sqlite3
import time

__all__ = ["connect_wal"]


def connect_wal(path: str, timeout: float) -> sqlite3.Connection:
    """Connect in autocommit mode with WAL journaling and ``synchronous=NORMAL``.

    Two processes or threads opening a new file at once race for the switch to
    WAL, which SQLite refuses at once ("database is locked") instead of waiting
    for the busy timeout: it is retried here until ``timeout`` seconds passed.
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
        # NORMAL: a commit survives a crash of the process (not of the OS)
        # without an fsync per commit.
        db.execute("PRAGMA synchronous=NORMAL")
    except BaseException:
        db.close()
        raise
    return db
