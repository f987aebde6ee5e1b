"""``buildbot-stats backfill`` on Buildbot's fake master: the replayed messages, the selection, the points.

The end-to-end proof (real masters on SQLite and PostgreSQL, real influxd) is
in tests/e2e/test_backfill.py; here the parts run offline: what is produced
for one build and in which order, which builds a selection takes, the points
a StatsService's own captures make from the replay, the state file, and the
one-line errors of the command.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from buildbot.test import fakedb
from buildbot.test.fake import fakemaster
from buildbot.test.reactor import TestReactorMixin
from twisted.internet import defer
from twisted.trial import unittest

from buildbot_stats import cli
from buildbot_stats.capture import (
    CaptureBuildDurationAllBuilders,
    CaptureBuildResultsAllBuilders,
    CaptureDataAllBuilders,
    CaptureProperty,
)
from buildbot_stats.cli.backfill import (
    Backfill,
    BuildSelection,
    ReplayMQ,
    StateFile,
    backend_target,
    parse_date,
    print_dry_run,
)
from buildbot_stats.cli.master_process import make_master_cfg
from buildbot_stats.point import to_ns
from buildbot_stats.stats_service import StatsService
from buildbot_stats.testing import RecordingStorage

UTC = datetime.timezone.utc
T0 = 1_790_000_000  # epoch seconds of the first build's start
MASTER_ID = fakedb.FakeDBConnector.MASTER_ID
KEYS = [
    ("builders", None, "builds", None, "finished"),
    ("builds", None, "finished"),
    ("builds", None, "steps", None, "finished"),
    ("test_result_sets", None, "completed"),
]


def args(**kw: Any) -> argparse.Namespace:
    values = {
        "basedir": ".",
        "since": None,
        "until": None,
        "builders": None,
        "dry_run": False,
        "rate": 1000.0,
        "restart": False,
    }
    values.update(kw)
    return argparse.Namespace(**values)


class ReplayTest(TestReactorMixin, unittest.TestCase):
    """Three builds (two finished on b1, one running on b2) with steps, a test result set and properties."""

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.setup_test_reactor()
        self.master = yield fakemaster.make_master(self, wantMq=True, wantData=True, wantDb=True)
        rows: list[Any] = [
            fakedb.Master(id=MASTER_ID),
            fakedb.Worker(id=1, name="w1"),
            fakedb.Builder(id=1, name="b1"),
            fakedb.Builder(id=2, name="b2"),
        ]
        for buildid, builderid, complete in ((1, 1, True), (2, 1, True), (3, 2, False)):
            start = T0 + buildid * 1000
            rows += [
                fakedb.Buildset(id=buildid, reason="x"),
                fakedb.BuildRequest(id=buildid, buildsetid=buildid, builderid=builderid),
                fakedb.Build(
                    id=buildid,
                    number=buildid,
                    masterid=MASTER_ID,
                    workerid=1,
                    builderid=builderid,
                    buildrequestid=buildid,
                    started_at=start,
                    complete_at=start + 90 if complete else None,
                    results=(buildid - 1) * 2 if complete else None,
                ),
                fakedb.BuildProperty(buildid=buildid, name="tests", value=buildid * 10, source="t"),
                fakedb.Step(id=buildid * 10 + 1, buildid=buildid, number=0, name="compile",
                            started_at=start, complete_at=start + 30, results=0),
                fakedb.Step(id=buildid * 10 + 2, buildid=buildid, number=1, name="test",
                            started_at=start + 30, complete_at=start + 90 if complete else None,
                            results=0 if complete else None),
                fakedb.TestResultSet(id=buildid, builderid=builderid, buildid=buildid,
                                     stepid=buildid * 10 + 2, description="unit", category="pass_fail",
                                     value_unit="boolean", tests_passed=buildid, tests_failed=1, complete=1),
            ]  # fmt: skip
        yield self.master.db.insert_test_data(rows)
        self.out, self.err = io.StringIO(), io.StringIO()

    def tmpdir(self) -> str:
        path = tempfile.mkdtemp(prefix="bbstats-backfill-")
        self.addCleanup(shutil.rmtree, path, True)
        return path

    def backfill(self, **kw: Any) -> Backfill:
        b = Backfill(args(**kw), self.reactor, self.out, self.err)
        b.master = self.master
        b.mq = self.master.mq = ReplayMQ()
        b.selected = BuildSelection(self.master, b.args)
        return b

    @defer.inlineCallbacks
    def test_replay_produces_the_live_messages_in_live_order(self) -> Any:
        b = self.backfill()
        seen: list[tuple[tuple, dict[str, Any]]] = []
        for key in KEYS:
            yield b.mq.startConsuming(lambda k, m: seen.append((k, m)), key)
        yield defer.ensureDeferred(b.replay(2))
        build = yield self.master.data.get(("builds", 2))
        steps = yield self.master.data.get(("builds", 2, "steps"))
        tset = yield self.master.data.get(("test_result_sets", 2))
        assert [k for k, _ in seen] == [
            ("builds", "2", "steps", "21", "finished"),
            ("test_result_sets", "2", "completed"),  # completes while its step runs
            ("builds", "2", "steps", "22", "finished"),
            ("builders", "1", "builds", "2", "finished"),
            ("builds", "2", "finished"),
        ]
        # the data API's own dicts, as the live master puts them in its messages
        assert seen[0][1] == steps[0] and seen[2][1] == steps[1]
        assert seen[1][1] == tset
        assert seen[3][1] == seen[4][1] == build
        assert build["complete_at"] == datetime.datetime.fromtimestamp(T0 + 2090, UTC)
        assert build["properties"] == {}  # captures ask the data API for them, live and here

    @defer.inlineCallbacks
    def test_selection_of_finished_builds(self) -> Any:
        ids = yield defer.ensureDeferred(self.backfill().selected.finished_builds(0))
        assert ids == [1, 2]  # build 3 is still running
        ids = yield defer.ensureDeferred(self.backfill().selected.finished_builds(1))
        assert ids == [2]
        since = datetime.datetime.fromtimestamp(T0 + 2090, UTC)
        ids = yield defer.ensureDeferred(self.backfill(since=since).selected.finished_builds(0))
        assert ids == [2]
        ids = yield defer.ensureDeferred(self.backfill(until=since).selected.finished_builds(0))
        assert ids == [1]
        ids = yield defer.ensureDeferred(self.backfill(builders=["b2"]).selected.finished_builds(0))
        assert ids == []
        with pytest.raises(Exception, match="no builder named 'nope'"):
            yield defer.ensureDeferred(self.backfill(builders=["nope"]).selected.finished_builds(0))

    @defer.inlineCallbacks
    def test_progress_stops_before_a_build_still_running(self) -> Any:
        # build 3 runs while build 4, started later, has finished: a rerun must come back for 3
        yield self.master.db.insert_test_data(
            [
                fakedb.Buildset(id=4, reason="x"),
                fakedb.BuildRequest(id=4, buildsetid=4, builderid=2),
                fakedb.Build(
                    id=4,
                    number=2,
                    masterid=MASTER_ID,
                    workerid=1,
                    builderid=2,
                    buildrequestid=4,
                    started_at=T0 + 4000,
                    complete_at=T0 + 4090,
                    results=0,
                ),
            ]  # fmt: skip
        )
        b = self.backfill()
        ids = yield defer.ensureDeferred(b.selected.finished_builds(0))
        assert (ids, b.selected.first_running) == ([1, 2, 4], 3)
        svc = StatsService(storage_backends=[], name="stats")
        svc.registeredStorageServices = [RecordingStorage()]
        b.services = [svc]
        state = StateFile(os.path.join(self.tmpdir(), "stats-backfill.json"))
        b._checkpoint(state, 4)
        target = backend_target(svc.registeredStorageServices[0])
        assert state.last_done("stats", b.selection, "RecordingStorage", target) == 2

    @defer.inlineCallbacks
    def run_service(self, dry_run: bool) -> Any:
        backend = RecordingStorage(
            captures=[
                CaptureBuildDurationAllBuilders(),
                CaptureBuildResultsAllBuilders(),
                CaptureProperty("b1", "tests"),
                CaptureDataAllBuilders("timings"),  # nothing in the database for it
            ]
        )
        svc = StatsService(storage_backends=[backend], name="stats", spool_path="live-spool.sqlite")
        b = self.backfill(dry_run=dry_run)
        yield defer.ensureDeferred(b.configure_services([svc]))
        for buildid in (yield defer.ensureDeferred(b.selected.finished_builds(0))):
            yield defer.ensureDeferred(b.replay(buildid))
        delivered = yield defer.ensureDeferred(b.wait_delivered())
        assert delivered
        counters = svc.backend_counters()
        yield svc.stopService()
        return b, backend, counters

    @defer.inlineCallbacks
    def test_service_captures_make_the_points_of_the_live_capture(self) -> Any:
        b, backend, counters = yield self.run_service(dry_run=False)
        # (build results carry the worker's name too where the captures add it)
        assert {p.tags.get("worker", "w1") for p in backend.points} == {"w1"}
        got = sorted(
            (
                p.series,
                sorted(p.fields.items()),
                sorted((k, v) for k, v in p.tags.items() if k != "worker"),
                p.time_ns,
            )
            for p in backend.points
        )
        expected = []
        for n, results in ((1, 0), (2, 2)):
            tags = sorted({"builder_name": "b1", "build_number": str(n)}.items())
            t = to_ns(T0 + n * 1000 + 90)
            name = ["success", "warnings", "failure"][results]
            expected += [
                ("b1-build-times", [("duration", 90.0)], tags, t),
                ("b1-build-results", [("result", name), ("results", results)], tags, t),
                ("b1-tests", [("name", "tests"), ("value", n * 10)], tags, t),
            ]
        assert got == sorted(expected)
        assert counters["RecordingStorage"]["written"] == 6
        assert b.tally.builds == {"b1": 2}
        assert b.tally.points == {"b1": 6}
        assert b.tally.per_backend == {"stats/RecordingStorage": 6}
        # the live master's spool file is never opened
        assert not Path("live-spool.sqlite").exists()

    @defer.inlineCallbacks
    def test_dry_run_counts_and_writes_nothing(self) -> Any:
        b, backend, counters = yield self.run_service(dry_run=True)
        assert backend.points == []
        assert counters["RecordingStorage"]["captured"] == 0
        assert b.tally.points == {"b1": 6}
        assert b.tally.per_backend == {"stats/RecordingStorage": 6}
        print_dry_run(b.tally, self.out)
        assert self.out.getvalue().splitlines() == [
            "dry run: 2 builds, 6 points would be written (nothing was written)",
            "  builder  builds  points",
            "  -------  ------  ------",
            "  b1            2       6",
            "  backend stats/RecordingStorage: 6 points",
        ]


# -- the state file ------------------------------------------------------------------


def test_state_file_remembers_per_backend_target_and_selection(tmp_path: Path) -> None:
    path = str(tmp_path / "stats-backfill.json")
    sel = {"since": None, "until": None, "builders": []}
    state = StateFile(path)
    assert state.last_done("svc", sel, "influx", "<influx db='a'>") == 0
    state.record("svc", sel, "influx", "<influx db='a'>", 40)
    state.record("svc", sel, "influx", "<influx db='a'>", 30)  # never backwards
    state.save()
    again = StateFile(path)
    assert again.last_done("svc", sel, "influx", "<influx db='a'>") == 40
    assert again.last_done("svc", sel, "influx", "<influx db='b'>") == 0  # pointed elsewhere: from the start
    assert again.last_done("svc", {**sel, "builders": ["b1"]}, "influx", "<influx db='a'>") == 0
    assert again.last_done("other", sel, "influx", "<influx db='a'>") == 0
    assert json.loads(Path(path).read_text())["version"] == 1


def test_state_file_unreadable_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "stats-backfill.json"
    path.write_text("{not json")
    with pytest.raises(Exception, match="cannot read .*stats-backfill.json.*--restart"):
        StateFile(str(path))


def test_backend_target_has_no_object_address() -> None:
    class Custom:
        pass

    assert backend_target(Custom()).endswith("Custom object>")
    assert "password" not in backend_target(RecordingStorage())


def test_parse_date() -> None:
    assert parse_date("2026-01-02") == datetime.datetime(2026, 1, 2, tzinfo=UTC)
    assert parse_date("2026-01-02T03:04:05+02:00") == datetime.datetime(2026, 1, 2, 1, 4, 5, tzinfo=UTC)
    with pytest.raises(argparse.ArgumentTypeError):
        parse_date("yesterday")


# -- the command's one-line errors (before any reactor runs) --------------------------


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_no_master_cfg(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["backfill", str(tmp_path)], capsys)
    assert (code, out) == (2, "")
    assert err == f"buildbot-stats: error: no master.cfg in {tmp_path}\n"


def test_master_cfg_without_stats_service(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "master.cfg").write_text(make_master_cfg({"b1": "[]"}, pb_port=1))
    code, out, err = run_cli(["backfill", str(tmp_path)], capsys)
    assert (code, out) == (2, "")
    assert (
        err == f"buildbot-stats: error: {tmp_path / 'master.cfg'} configures no buildbot_stats StatsService\n"
    )


def test_master_cfg_with_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = make_master_cfg(
        {"b1": "[]"},
        pb_port=1,
        header="from buildbot_stats import statistics",
        services="c['services'].append(statistics.StatsService(storage_backends=[], batch_size=0))",
    )
    (tmp_path / "master.cfg").write_text(cfg)
    code, out, err = run_cli(["backfill", str(tmp_path)], capsys)
    assert code == 2
    assert err.count("\n") == 1
    assert err.startswith("buildbot-stats: error: master.cfg has errors: ") and "batch_size" in err


@pytest.mark.parametrize("rate", ["0", "-1", "fast", "inf"])
def test_rate_must_be_positive(tmp_path: Path, capsys: pytest.CaptureFixture[str], rate: str) -> None:
    code, _, err = run_cli(["backfill", str(tmp_path), "--rate", rate], capsys)
    assert code == 2
    assert "--rate" in err
