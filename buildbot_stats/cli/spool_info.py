"""``buildbot-stats spool PATH``: what a spool file holds, per backend.

Opens the file read-only (a running master may be writing it: WAL mode lets
both happen) and never changes it, not even to migrate an older schema.
"""

from __future__ import annotations

import json
import os
import sqlite3
from typing import Any

from buildbot_stats.cli.output import Table, format_time, table_lines, visible

__all__ = ["NotASpoolError", "format_table", "read_spool_info"]

_TIME = "%Y-%m-%d %H:%M:%S"


class NotASpoolError(Exception):
    """The file is missing, not SQLite, or has no spool table."""


def read_spool_info(path: str) -> dict[str, Any]:
    """``{"path", "schema", "backends": [...]}`` for the spool at ``path``."""
    if not os.path.isfile(path):
        raise NotASpoolError(f"{path}: no such file")
    if os.path.getsize(path) == 0:
        raise NotASpoolError(f"{path}: an empty file (0 bytes), not a spool")
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as e:
        raise NotASpoolError(f"{path}: cannot open it: {e}") from None
    try:
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        except sqlite3.DatabaseError as e:
            raise NotASpoolError(f"{path}: not a buildbot_stats spool ({e})") from None
        if "buildbot_stats_segments" not in tables:
            raise NotASpoolError(f"{path}: not a buildbot_stats spool (no table buildbot_stats_segments)")
        if version not in (2, 3, 4, 5):
            raise NotASpoolError(f"{path}: a spool of schema {version}, which this version cannot read")
        if version in (4, 5):  # the same table; 4 pickled the points, 5 packs them with msgpack
            backends = spool_info(db)
        else:  # 2 and 3 (migrated when a master opens them): one row per write, no times
            key = "backend" if version == 2 else "queue_key"
            rows = db.execute(
                f"SELECT {key}, COUNT(*), SUM(LENGTH(ids) - LENGTH(REPLACE(ids, ',', '')) + 1), "
                f"SUM(LENGTH(points)) FROM buildbot_stats_segments GROUP BY {key} ORDER BY {key}"
            ).fetchall()
            backends = [
                {"queue_key": k, "segments": s, "points": n, "bytes": b, "oldest_ns": None, "newest_ns": None}
                for k, s, n, b in rows
            ]
        quarantined = 0
        if "buildbot_stats_unreadable" in tables:
            quarantined = db.execute("SELECT COUNT(*) FROM buildbot_stats_unreadable").fetchone()[0]
    except sqlite3.DatabaseError as e:
        raise NotASpoolError(f"{path}: cannot read it ({e})") from None
    finally:
        db.close()
    return {"path": path, "schema": version, "backends": backends, "unreadable_segments": quarantined}


def spool_info(db: sqlite3.Connection) -> list[dict[str, Any]]:
    """What a spool of schema 4 or 5 holds, per queue key."""
    sql = (
        "SELECT queue_key, COUNT(*), SUM(n), SUM(length(data)), MIN(first_ns), MAX(last_ns), "
        "GROUP_CONCAT(DISTINCT encoding) FROM buildbot_stats_segments GROUP BY queue_key ORDER BY queue_key"
    )
    names = ("queue_key", "segments", "points", "bytes", "oldest_ns", "newest_ns", "encodings")
    found = [dict(zip(names, row)) for row in db.execute(sql)]
    for info in found:
        info["encodings"] = sorted(set(info["encodings"].split(",")))
    return found


def format_table(info: dict[str, Any]) -> str:
    """Aligned text: one line per backend."""
    lines = [f"spool {visible(info['path'])} (schema {info['schema']})"]
    rows = [
        [
            b["queue_key"],
            f"{b['points']:,}",
            format_time(b["oldest_ns"], _TIME) or "-",
            format_time(b["newest_ns"], _TIME) or "-",
            f"{b['bytes']:,}",
        ]
        for b in info["backends"]
    ]
    if rows:
        lines += table_lines(
            Table(["backend", "pending points", "oldest (UTC)", "newest (UTC)", "bytes"], rows)
        )
    else:
        lines.append("no pending points")
    if info.get("unreadable_segments"):
        lines.append(
            f"{info['unreadable_segments']} unreadable segment(s) in table buildbot_stats_unreadable"
        )
    return "\n".join(lines) + "\n"


def to_json(info: dict[str, Any]) -> str:
    return json.dumps(info, indent=2, sort_keys=True)
