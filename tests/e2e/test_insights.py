"""``buildbot-stats insights`` on a real Buildbot database, filled through Buildbot's own DB connector."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from buildbot_stats.cli.master_process import make_master_cfg
from buildbot_stats.insights.flaky import find_flaky
from tests.insights_data import e2e_history
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
SEED = 4


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def master_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    basedir = tmp_path_factory.mktemp("insights") / "master"
    basedir.mkdir()
    (basedir / "master.cfg").write_text(
        make_master_cfg({"linux": "[]", "windows": "[]"}, pb_port=free_port())
    )
    filled = _run("-m", "tests.insights_data", "fill", basedir.as_posix(), str(SEED))
    assert filled.returncode == 0, filled.stderr
    return basedir


def insights(basedir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return _run("-m", "buildbot_stats.cli", "insights", str(basedir), *args)


def test_json_finds_what_was_planted(master_dir: Path) -> None:
    planted = e2e_history(SEED)
    proc = insights(master_dir, "--json", "--since", "all")
    assert proc.returncode == 0, proc.stderr
    data: dict[str, Any] = json.loads(proc.stdout)

    window = data["window"]
    assert window["builds"] == len(planted.builds) > 100
    assert window["builds_without_revision"] == sum(1 for b in planted.builds if not b.revision)
    assert window["test_results"] == len(planted.rows)

    found = {(t["builder"], t["test"]) for t in data["flaky_tests"]}
    assert found <= set(planted.flaky)  # precision: nothing broken, renamed or steady
    assert len(found) >= 0.9 * len(planted.flaky)
    # the database read gives the counts the records planted give
    expected = {
        (t.builder, t.test): (t.passes, t.failures, t.revisions_with_both, t.last_failure_build)
        for t in find_flaky(planted.builds, planted.sets, planted.rows)
    }
    assert {
        (t["builder"], t["test"]): (
            t["passes"],
            t["failures"],
            t["revisions_with_both"],
            t["last_failure_build"],
        )
        for t in data["flaky_tests"]
    } == expected

    regressions = data["regressions"]
    for shift in planted.shifts:
        assert any(
            r["builder"] == shift.builder
            and r["what"] == shift.step
            and abs(r["build_number"] - (shift.index + 1)) <= 3
            and r["direction"] == shift.direction()
            for r in regressions
        ), (shift, regressions)
    revisions = {(b.builder, b.number): b.revision for b in planted.builds}
    for r in regressions:
        assert r["revision"] == revisions[(r["builder"], r["build_number"])]
        assert r["before_seconds"] > 0 and r["after_seconds"] > 0


def test_tables_and_builder_selection(master_dir: Path) -> None:
    proc = insights(master_dir, "--since", "all", "--builder", "linux", "--builder", "nosuch")
    assert proc.returncode == 0, proc.stderr
    assert "Flaky tests:" in proc.stdout and "Slower builds and steps:" in proc.stdout
    assert "windows" not in proc.stdout
    assert "#/builders/1/builds/" in proc.stdout  # links to Buildbot's build pages
    assert " s " in proc.stdout or " min " in proc.stdout  # durations with their unit
    assert "no finished build of builder 'nosuch'" in proc.stderr
    recent = insights(master_dir, "--json")  # the default window, 30 days back from today: none of 2023
    assert json.loads(recent.stdout)["window"]["builds"] == 0


def test_a_master_without_database_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "master.cfg").write_text(make_master_cfg({"b": "[]"}, pb_port=free_port()))
    proc = insights(tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "state.sqlite does not exist" in proc.stderr
    assert not (tmp_path / "state.sqlite").exists()


def test_postgresql_database_gives_the_same_findings(master_dir: Path, tmp_path: Path) -> None:
    from tests.support.postgres import PostgresServer

    with PostgresServer() as server:
        url = server.create_database("bbinsights")
        basedir = tmp_path / "pgmaster"
        basedir.mkdir()
        cfg = make_master_cfg({"linux": "[]", "windows": "[]"}, pb_port=free_port(), db_url=url)
        (basedir / "master.cfg").write_text(cfg)
        filled = _run("-m", "tests.insights_data", "fill", basedir.as_posix(), str(SEED))
        assert filled.returncode == 0, filled.stderr
        on_postgres = insights(basedir, "--json", "--since", "all")
    assert on_postgres.returncode == 0, on_postgres.stderr
    on_sqlite = insights(master_dir, "--json", "--since", "all")
    pg, lite = json.loads(on_postgres.stdout), json.loads(on_sqlite.stdout)
    assert pg == lite and pg["flaky_tests"] and pg["regressions"]
