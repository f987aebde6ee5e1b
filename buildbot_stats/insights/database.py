"""Reading the history the insights need from Buildbot's database, read-only and in short statements.

Buildbot keeps builds, steps, their sourcestamps and properties, and per-test
results (``test_result_sets``, ``test_results``, ``test_names``,
``test_code_paths``) in its database.  This module reads them into the plain
records of :mod:`buildbot_stats.insights.records`, through an engine of its
own opened read-only (SQLite: ``mode=ro``; PostgreSQL: read-only
transactions), so that it can run beside a live master: the test results,
the large table, are read in slices of their primary key, each its own short
statement, so that no read holds a lock for long (in SQLite's rollback
journal mode a reader delays a writer's commit).

Most tests never fail: only the results of tests that failed at least once in
the window (a ``0`` in a boolean ``pass_fail`` set, or a line of a
``fail_only``/``code_issue`` set) are read row by row; the others are counted
by the database.
"""

from __future__ import annotations

import json
import os
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from buildbot.db.model import Model

from buildbot_stats.insights.records import Build, ResultRow, ResultSet, Step

__all__ = ["History", "open_readonly", "read_history"]

#: test results read per statement
SLICE_ROWS = 200_000
#: ids per ``IN (...)`` list
IN_LIST = 500
_FAILED_VALUES = ("0", "false", "False")
_FAILURES_ONLY = ("fail_only", "code_issue")

_T = Model.metadata.tables


@dataclass
class History:
    """What was read: the records, and the counts of what they were read from."""

    builds: list[Build]
    steps: list[Step]
    sets: list[ResultSet]
    #: the results of the tests that failed at least once (the others cannot be flaky)
    rows: list[ResultRow]
    test_results: int  # results in the window's sets
    tests: int  # distinct tests (builder, name, code path) seen


def open_readonly(url: str, basedir: str) -> sa.engine.Engine:
    """An engine on Buildbot's database ``url`` (as in master.cfg) that only reads.

    A relative SQLite path, or one with ``%(basedir)s``, is the master's
    directory's, as Buildbot takes it.
    """
    parsed = sa.engine.make_url(url)
    if parsed.drivername.startswith("sqlite"):
        path = parsed.database or ""
        if path in ("", ":memory:"):
            raise ValueError("an in-memory SQLite database holds no history")
        path = path.replace("%(basedir)s", basedir)
        if not os.path.isabs(path):
            path = os.path.join(basedir, path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} does not exist")
        uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=ro"
        return sa.create_engine(
            "sqlite://", creator=lambda: _sqlite_readonly(uri), poolclass=sa.pool.NullPool
        )
    connect_args: dict[str, Any] = {}
    if parsed.get_backend_name() == "postgresql":
        connect_args["options"] = "-c default_transaction_read_only=on"
    return sa.create_engine(parsed, connect_args=connect_args, poolclass=sa.pool.NullPool)


def _sqlite_readonly(uri: str) -> Any:
    import sqlite3

    conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 5000")
    conn.execute("PRAGMA query_only = 1")
    return conn


def _chunks(ids: Sequence[int], size: int = IN_LIST) -> Iterator[list[int]]:
    for i in range(0, len(ids), size):
        yield list(ids[i : i + size])


def _revision(stamps: list[tuple[str, str | None]], got_revision: str | None) -> str | None:
    """The sourcestamps' revisions (``codebase:revision`` for several), else ``got_revision``."""
    if stamps and all(rev for _, rev in stamps):
        if len(stamps) == 1:
            return stamps[0][1]
        return ",".join(f"{cb}:{rev}" for cb, rev in sorted(stamps, key=lambda s: (s[0], s[1] or "")))
    if not got_revision:
        return None
    try:
        value = json.loads(got_revision)
    except ValueError:
        return got_revision
    if isinstance(value, dict):
        value = ",".join(f"{cb}:{rev}" for cb, rev in sorted(value.items()) if rev)
    return str(value) if value else None


def read_history(engine: sa.engine.Engine, since: int | None = None, builders: Sequence[str] = ()) -> History:
    """The finished builds that completed at or after ``since`` (seconds), of ``builders`` (default all)."""
    builds_t, builders_t = _T["builds"], _T["builders"]
    with engine.connect() as conn:
        names = {int(i): str(n) for i, n in conn.execute(sa.select(builders_t.c.id, builders_t.c.name))}
        wanted = [i for i, n in names.items() if not builders or n in builders]
        where = [builds_t.c.complete_at.isnot(None), builds_t.c.builderid.in_(wanted)]
        if since is not None:
            where.append(builds_t.c.complete_at >= since)
        in_window = sa.and_(*where)
        builds = _read_builds(conn, names, in_window)
        steps_t = _T["steps"]
        steps = [
            Step(int(r[0]), str(r[1]), r[2], r[3], r[4])
            for r in conn.execute(
                sa.select(
                    steps_t.c.buildid,
                    steps_t.c.name,
                    steps_t.c.started_at,
                    steps_t.c.complete_at,
                    steps_t.c.results,
                )
                .select_from(steps_t.join(builds_t, builds_t.c.id == steps_t.c.buildid))
                .where(in_window)
            )
        ]
        sets_t = _T["test_result_sets"]
        sets = [
            ResultSet(int(r[0]), int(r[1]), r[2], str(r[3]), str(r[4]))
            for r in conn.execute(
                sa.select(
                    sets_t.c.id,
                    sets_t.c.buildid,
                    sets_t.c.description,
                    sets_t.c.category,
                    sets_t.c.value_unit,
                )
                .select_from(sets_t.join(builds_t, builds_t.c.id == sets_t.c.buildid))
                .where(in_window)
            )
        ]
        rows, count, tests = _read_results(conn, sets, wanted)
    return History(builds, steps, sets, rows, count, tests)


def _read_builds(conn: Any, names: dict[int, str], in_window: Any) -> list[Build]:
    b, br, bss, ss, bp = (
        _T["builds"],
        _T["buildrequests"],
        _T["buildset_sourcestamps"],
        _T["sourcestamps"],
        _T["build_properties"],
    )
    stamps: dict[int, list[tuple[str, str | None]]] = {}
    for buildid, codebase, revision in conn.execute(
        sa.select(b.c.id, ss.c.codebase, ss.c.revision)
        .select_from(
            b.join(br, br.c.id == b.c.buildrequestid)
            .join(bss, bss.c.buildsetid == br.c.buildsetid)
            .join(ss, ss.c.id == bss.c.sourcestampid)
        )
        .where(in_window)
    ):
        stamps.setdefault(int(buildid), []).append((str(codebase or ""), revision))
    got = {
        int(buildid): value
        for buildid, value in conn.execute(
            sa.select(bp.c.buildid, bp.c.value)
            .select_from(bp.join(b, b.c.id == bp.c.buildid))
            .where(in_window, bp.c.name == "got_revision")
        )
    }
    return [
        Build(
            int(i),
            int(bid),
            names[int(bid)],
            int(num),
            int(start),
            end,
            res,
            _revision(stamps.get(int(i), []), got.get(int(i))),
        )
        for i, bid, num, start, end, res in conn.execute(
            sa.select(b.c.id, b.c.builderid, b.c.number, b.c.started_at, b.c.complete_at, b.c.results)
            .where(in_window)
            .order_by(b.c.id)
        )
    ]


def _read_results(
    conn: Any, sets: list[ResultSet], builderids: list[int]
) -> tuple[list[ResultRow], int, int]:
    """The rows of the tests that failed at least once in ``sets``; the count of results and of tests."""
    tr = _T["test_results"]
    if not sets:
        return [], 0, 0
    by_id = {s.setid: s for s in sets}
    first_set = min(by_id)
    failures_only = sorted(s.setid for s in sets if s.category in _FAILURES_ONLY)
    pass_fail = {s.setid for s in sets if s.category == "pass_fail" and s.value_unit == "boolean"}
    low, high = conn.execute(
        sa.select(sa.func.min(tr.c.id), sa.func.max(tr.c.id)).where(tr.c.test_result_setid >= first_set)
    ).one()
    if low is None:
        return [], 0, 0
    slices = [(start, start + SLICE_ROWS - 1) for start in range(int(low), int(high) + 1, SLICE_ROWS)]
    in_sets = [tr.c.test_result_setid >= first_set, tr.c.builderid.in_(builderids)]
    count = 0
    tests: set[tuple[int, Any, Any]] = set()
    failed: set[tuple[Any, Any]] = set()
    failing = sa.or_(tr.c.value.in_(_FAILED_VALUES), tr.c.test_result_setid.in_(failures_only))
    for start, end in slices:
        in_slice = [tr.c.id.between(start, end), *in_sets]
        for setid, n in conn.execute(
            sa.select(tr.c.test_result_setid, sa.func.count())
            .where(*in_slice)
            .group_by(tr.c.test_result_setid)
        ):
            if setid in by_id:
                count += int(n)
        tests.update(
            conn.execute(
                sa.select(tr.c.builderid, tr.c.test_nameid, tr.c.test_code_pathid).where(*in_slice).distinct()
            ).all()
        )
        for setid, nameid, pathid, value in conn.execute(
            sa.select(tr.c.test_result_setid, tr.c.test_nameid, tr.c.test_code_pathid, tr.c.value).where(
                *in_slice, failing
            )
        ):
            if setid in by_id and (
                (setid in pass_fail and value in _FAILED_VALUES) or by_id[setid].category in _FAILURES_ONLY
            ):
                failed.add((nameid, pathid))
    rows: list[ResultRow] = []
    if failed:
        names = _texts(conn, _T["test_names"], "name", sorted({n for n, _ in failed if n is not None}))
        paths = _texts(conn, _T["test_code_paths"], "path", sorted({p for _, p in failed if p is not None}))
        # the same name may have two ids (two masters adding it at once): every id of a failing name
        names = _ids_of(conn, _T["test_names"], "name", sorted(set(names.values())), builderids)
        paths = _ids_of(conn, _T["test_code_paths"], "path", sorted(set(paths.values())), builderids)
        failing_tests = {(names.get(n, ""), paths.get(p, "")) for n, p in failed}
        groups = [tr.c.test_nameid.in_(group) for group in _chunks(sorted(names))]
        if any(n is None for n, _ in failed):
            groups.append(tr.c.test_nameid.is_(None))
        columns = (tr.c.test_result_setid, tr.c.test_nameid, tr.c.test_code_pathid, tr.c.value)
        for start, end in slices:
            for group in groups:
                for setid, nameid, pathid, value in conn.execute(
                    sa.select(*columns).where(tr.c.id.between(start, end), *in_sets, group)
                ):
                    if pathid is not None and pathid not in paths:
                        continue  # a code path no failing test has: another test of the same name
                    test = (names.get(nameid, ""), paths.get(pathid, ""))
                    if setid in by_id and test in failing_tests:
                        rows.append(ResultRow(setid, *test, value))
    return rows, count, len(tests)


def _ids_of(
    conn: Any, table: sa.Table, column: str, texts: list[str], builderids: list[int]
) -> dict[Any, str]:
    """Every id (of the builders) of each of ``texts``."""
    found: dict[Any, str] = {}
    for i in range(0, len(texts), IN_LIST):
        group = texts[i : i + IN_LIST]
        query = sa.select(table.c.id, table.c[column]).where(
            table.c[column].in_(group), table.c.builderid.in_(builderids)
        )
        for row_id, text in conn.execute(query):
            found[row_id] = str(text)
    return found


def _texts(conn: Any, table: sa.Table, column: str, ids: list[int]) -> dict[Any, str]:
    found: dict[Any, str] = {}
    for group in _chunks(ids):
        for i, text in conn.execute(sa.select(table.c.id, table.c[column]).where(table.c.id.in_(group))):
            found[i] = str(text)
    return found
