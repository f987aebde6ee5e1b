"""Planted histories for the insights: builds, steps and test results with known flaky tests and shifts.

:func:`planted_history` builds one in code from a seed: revisions built once
or several times, flaky tests that fail on a given share of their runs,
tests broken from one revision until a later fix, tests renamed half-way,
builds without a revision, step durations with 10 % noise, single slow
builds (three times as long) and planted lasting shifts.  What was planted
is returned beside the records, so a test compares what the analysis finds
with it.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Any

from buildbot_stats.insights.records import Build, ResultRow, ResultSet, Step

START = 1_700_000_000
STEPS = {"checkout": 8.0, "compile": 120.0, "test": 240.0, "upload": 30.0}


@dataclass
class PlantedShift:
    builder: str
    step: str
    index: int  # the first build (0-based, in the builder's order) after the shift
    ratio: float  # after = before * ratio

    def direction(self) -> str:
        return "slower" if self.ratio > 1 else "faster"


@dataclass
class Planted:
    builds: list[Build] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    sets: list[ResultSet] = field(default_factory=list)
    rows: list[ResultRow] = field(default_factory=list)
    flaky: dict[tuple[str, str], float] = field(default_factory=dict)  # (builder, test) -> failure rate
    broken: set[tuple[str, str]] = field(default_factory=set)
    renamed: set[tuple[str, str]] = field(default_factory=set)
    shifts: list[PlantedShift] = field(default_factory=list)
    #: build number (per builder) -> index in that builder's order
    numbers: dict[str, list[int]] = field(default_factory=dict)


def planted_history(
    seed: int,
    *,
    builders: tuple[str, ...] = ("linux", "windows"),
    revisions: int = 120,
    rebuilt: float = 0.3,
    tests: int = 40,
    flaky: int = 6,
    min_rate: float = 0.1,
    max_rate: float = 0.4,
    broken: int = 3,
    renamed: int = 2,
    no_revision: float = 0.05,
    shifts: int = 2,
    noise: float = 0.1,
    fail_only_flaky: int = 1,
    spikes: float = 0.02,
) -> Planted:
    """A history of ``revisions`` revisions per builder; ``rebuilt`` of them built two or three times."""
    rng = random.Random(seed)
    planted = Planted()
    buildid = setid = 0
    for b_index, builder in enumerate(builders):
        names = [f"tests.test_{i:03d}" for i in range(tests)]
        flaky_names = rng.sample(names, flaky)
        rest = [n for n in names if n not in flaky_names]
        broken_names = rng.sample(rest, broken)
        rest = [n for n in rest if n not in broken_names]
        renamed_names = rng.sample(rest, renamed)
        rates = {n: rng.uniform(min_rate, max_rate) for n in flaky_names}
        lint_flaky = {f"lint.check_{i}": rng.uniform(min_rate, max_rate) for i in range(fail_only_flaky)}
        for n, r in {**rates, **lint_flaky}.items():
            planted.flaky[(builder, n)] = r
        planted.broken.update((builder, n) for n in broken_names)
        planted.renamed.update((builder, n) for n in renamed_names)
        broken_span = {n: sorted(rng.sample(range(revisions), 2)) for n in broken_names}
        rename_at = {n: rng.randrange(revisions) for n in renamed_names}
        runs = [r for r in range(revisions) for _ in range(1 + (rng.random() < rebuilt) * rng.choice((1, 2)))]
        n_builds = len(runs)
        builder_shifts = []
        for k in range(shifts):
            step = rng.choice(["compile", "test"])
            # apart from each other and from the ends, so each has a window on both sides
            index = (k + 1) * n_builds // (shifts + 1) + rng.randrange(-5, 6)
            ratio = rng.choice([rng.uniform(1.3, 2.0), rng.uniform(0.45, 0.7)])
            builder_shifts.append(PlantedShift(builder, step, index, ratio))
        planted.shifts.extend(builder_shifts)
        base = {s: d * (1 + 0.2 * b_index) for s, d in STEPS.items()}
        numbers: list[int] = []
        t = START
        for index, revision in enumerate(runs):
            buildid += 1
            number = index + 1
            numbers.append(number)
            rev = None if rng.random() < no_revision else hashlib.sha1(str(revision).encode()).hexdigest()
            clock = t
            step_rows = []
            for step, seconds in base.items():
                for s in builder_shifts:
                    if s.step == step and index >= s.index:
                        seconds *= s.ratio
                took = max(1, round(rng.gauss(seconds, noise * seconds)))
                if rng.random() < spikes:  # a single slow build: noise, not a shift
                    took *= 3
                step_rows.append(Step(buildid, step, clock, clock + took, 0))
                clock += took
            planted.steps.extend(step_rows)
            failed = False
            setid += 1
            unit = ResultSet(setid, buildid, "unit tests", "pass_fail", "boolean")
            planted.sets.append(unit)
            for name in names:
                shown = name
                if name in rename_at and revision >= rename_at[name]:
                    shown = name.replace("test_", "renamed_test_")
                if name in rates:
                    passed = rng.random() >= rates[name]
                elif name in broken_span:
                    lo, hi = broken_span[name]
                    passed = not lo <= revision < hi
                else:
                    passed = True
                failed |= not passed
                planted.rows.append(ResultRow(setid, shown, "tests/test_all.py", "1" if passed else "0"))
            setid += 1
            lint = ResultSet(setid, buildid, "lint", "fail_only", "message")
            planted.sets.append(lint)
            for name, rate in lint_flaky.items():
                if rng.random() < rate:
                    planted.rows.append(ResultRow(setid, name, "", "line too long"))
            planted.builds.append(
                Build(buildid, b_index + 1, builder, number, t, clock + 2, 2 if failed else 0, rev)
            )
            t = clock + rng.randrange(60, 600)
        planted.numbers[builder] = numbers
    return planted


# -- a real Buildbot database, filled through Buildbot's own DB connector ----------------


class ClockedReactor:
    """The real reactor, but ``seconds()`` is the planted history's clock (Buildbot stamps rows with it)."""

    def __init__(self, reactor: Any, now: int) -> None:
        self._reactor = reactor
        self.now = now

    def seconds(self) -> float:
        return float(self.now)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)


async def fill_master_db(basedir: str, planted: Planted, reactor: Any) -> None:
    """Write ``planted`` into the database of the master in ``basedir`` (created and upgraded here).

    Every row is made by Buildbot's DB connector API, as a master makes them:
    builders, buildsets with sourcestamps (a third of the revisions only as a
    ``got_revision`` property instead), builds, steps, test result sets and
    their results.
    """
    from buildbot.config.master import FileLoader
    from buildbot.master import BuildMaster

    clock = ClockedReactor(reactor, START)
    master = BuildMaster(basedir, reactor=clock)
    master.config = FileLoader(basedir, "master.cfg").loadConfig()
    db = master.db
    await db.setup(check_version=False, verbose=False)
    await db.model.upgrade()
    try:
        masterid = await db.masters.findMasterId("insights-e2e")
        workerid = await db.workers.findWorkerId("worker1")
        builderids = {b.builder: b.builderid for b in planted.builds}
        for name in sorted(builderids, key=builderids.__getitem__):
            assert await db.builders.findBuilderId(name) == builderids[name]
        steps_of: dict[int, list[Step]] = {}
        for s in planted.steps:
            steps_of.setdefault(s.buildid, []).append(s)
        sets_of: dict[int, list[ResultSet]] = {}
        for rs in planted.sets:
            sets_of.setdefault(rs.buildid, []).append(rs)
        rows_of: dict[int, list[ResultRow]] = {}
        for row in planted.rows:
            rows_of.setdefault(row.setid, []).append(row)
        for build in planted.builds:
            clock.now = build.started_at
            in_stamp = build.revision if build.revision and int(build.revision, 16) % 3 else None
            bsid, brids = await db.buildsets.addBuildset(
                sourcestamps=[
                    {
                        "branch": "main",
                        "revision": in_stamp,
                        "repository": "https://example.invalid/repo.git",
                        "codebase": "",
                        "project": "demo",
                    }
                ],
                reason="planted",
                properties={},
                builderids=[build.builderid],
                waited_for=False,
            )
            buildid, number = await db.builds.addBuild(
                build.builderid, brids[build.builderid], workerid, masterid, "building"
            )
            assert (buildid, number) == (build.buildid, build.number)
            if build.revision and not in_stamp:
                await db.builds.setBuildProperty(buildid, "got_revision", build.revision, "Git")
            first_step = None
            for step in steps_of.get(build.buildid, []):
                stepid, _, _ = await db.steps.addStep(buildid, step.name, "running")
                first_step = first_step or stepid
                await db.steps.startStep(stepid, step.started_at, True)
                clock.now = step.complete_at
                await db.steps.finishStep(stepid, step.results, False)
            for rs in sets_of.get(build.buildid, []):
                setid = await db.test_result_sets.addTestResultSet(
                    build.builderid, buildid, first_step, rs.description, rs.category, rs.value_unit
                )
                assert setid == rs.setid
                values = [
                    {"test_name": r.name, "test_code_path": r.path or None, "value": r.value}
                    if r.path
                    else {"test_name": r.name, "value": r.value}
                    for r in rows_of.get(rs.setid, [])
                ]
                if values:
                    await db.test_results.addTestResults(build.builderid, setid, values)
                await db.test_result_sets.completeTestResultSet(setid)
            clock.now = build.complete_at
            await db.builds.finishBuild(buildid, build.results)
            await db.buildsets.completeBuildset(bsid, build.results)
    finally:
        await db.pool.stop()


def e2e_history(seed: int) -> Planted:
    """The history the end-to-end test writes: two builders, about 150 builds, 1,800 test results."""
    return planted_history(seed, revisions=60, tests=12, flaky=3, broken=2, renamed=1)


def _main(argv: list[str]) -> None:
    """``python -m tests.insights_data fill MASTER_DIR SEED``: fill a master's database."""
    from twisted.internet import defer, task

    _, basedir, seed = argv

    def run(reactor: Any) -> Any:
        planted = e2e_history(int(seed))
        return defer.ensureDeferred(fill_master_db(basedir, planted, reactor))

    task.react(run)


if __name__ == "__main__":
    import sys

    _main(sys.argv[1:])


def write_sqlite(path: str, planted: Planted, *, now: int | None = None) -> None:
    """Write ``planted`` into a new SQLite file in Buildbot's schema, fast (``executemany``).

    For the benchmark and the page's tests, where Buildbot's DB connector
    would take minutes; the end-to-end test uses the connector instead.  With
    ``now``, the history is moved to end an hour before it.
    """
    import sqlite3

    import sqlalchemy as sa
    from buildbot.db.model import Model

    shift = 0
    if now is not None:
        shift = now - 3600 - max(b.complete_at or b.started_at for b in planted.builds)
    engine = sa.create_engine(f"sqlite:///{path}")
    Model.metadata.create_all(engine)
    engine.dispose()
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(
            "INSERT INTO masters (id, name, name_hash, active, last_active) VALUES (1, 'm', 'h', 0, 0)"
        )
        builders = sorted({(b.builderid, b.builder) for b in planted.builds})
        conn.executemany(
            "INSERT INTO builders (id, name, name_hash) VALUES (?, ?, ?)",
            [(i, name, hashlib.sha1(name.encode()).hexdigest()) for i, name in builders],
        )
        revisions = sorted({b.revision for b in planted.builds if b.revision})
        stamp = {rev: i for i, rev in enumerate(revisions, start=1)}
        conn.executemany(
            "INSERT INTO sourcestamps (id, ss_hash, revision, repository, codebase, project, created_at)"
            " VALUES (?, ?, ?, '', '', '', 0)",
            [(i, rev, rev) for rev, i in stamp.items()],
        )
        conn.executemany(
            "INSERT INTO buildsets (id, submitted_at, complete, results) VALUES (?, 0, 1, 0)",
            [(b.buildid,) for b in planted.builds],
        )
        conn.executemany(
            "INSERT INTO buildset_sourcestamps (buildsetid, sourcestampid) VALUES (?, ?)",
            [(b.buildid, stamp[b.revision]) for b in planted.builds if b.revision],
        )
        conn.executemany(
            "INSERT INTO buildrequests (id, buildsetid, builderid, priority, complete, results, submitted_at)"
            " VALUES (?, ?, ?, 0, 1, 0, 0)",
            [(b.buildid, b.buildid, b.builderid) for b in planted.builds],
        )
        conn.executemany(
            "INSERT INTO builds (id, number, builderid, buildrequestid, masterid, started_at, complete_at,"
            " locks_duration_s, state_string, results) VALUES (?, ?, ?, ?, 1, ?, ?, 0, '', ?)",
            [
                (
                    b.buildid,
                    b.number,
                    b.builderid,
                    b.buildid,
                    b.started_at + shift,
                    (b.complete_at or 0) + shift,
                    b.results,
                )
                for b in planted.builds
            ],
        )
        conn.executemany(
            "INSERT INTO steps (number, name, buildid, started_at, complete_at, state_string, results,"
            " urls_json) VALUES (?, ?, ?, ?, ?, '', ?, '[]')",
            [
                (k, s.name, s.buildid, (s.started_at or 0) + shift, (s.complete_at or 0) + shift, s.results)
                for k, s in enumerate(planted.steps)
            ],
        )
        builder_of = {b.buildid: b.builderid for b in planted.builds}
        first_step = {}
        for k, s in enumerate(planted.steps, start=1):
            first_step.setdefault(s.buildid, k)
        conn.executemany(
            "INSERT INTO test_result_sets (id, builderid, buildid, stepid, description, category, value_unit,"
            " complete) VALUES (?, ?, ?, ?, ?, ?, ?, 1)",
            [
                (
                    rs.setid,
                    builder_of[rs.buildid],
                    rs.buildid,
                    first_step[rs.buildid],
                    rs.description,
                    rs.category,
                    rs.value_unit,
                )
                for rs in planted.sets
            ],
        )
        set_builder = {rs.setid: builder_of[rs.buildid] for rs in planted.sets}
        names: dict[tuple[int, str], int] = {}
        paths: dict[tuple[int, str], int] = {}

        def rows() -> Any:
            for r in planted.rows:
                builderid = set_builder[r.setid]
                nameid = names.setdefault((builderid, r.name), len(names) + 1)
                pathid = paths.setdefault((builderid, r.path), len(paths) + 1) if r.path else None
                yield builderid, r.setid, nameid, pathid, r.value

        conn.executemany(
            "INSERT INTO test_results (builderid, test_result_setid, test_nameid, test_code_pathid, value)"
            " VALUES (?, ?, ?, ?, ?)",
            rows(),
        )
        conn.executemany(
            "INSERT INTO test_names (id, builderid, name) VALUES (?, ?, ?)",
            [(i, b, n) for (b, n), i in names.items()],
        )
        conn.executemany(
            "INSERT INTO test_code_paths (id, builderid, path) VALUES (?, ?, ?)",
            [(i, b, p) for (b, p), i in paths.items()],
        )
    conn.close()
