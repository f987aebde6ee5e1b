"""The example alerting rules of ``buildbot-stats alert-rules``, checked by Prometheus' own ``promtool``.

``promtool check rules`` parses them as Prometheus loads them; ``promtool test
rules`` runs tests/data/buildbot-stats-alerts.test.yml, which feeds each alert
series that make it fire (and a neighbour that must not), and checks the moment
it fires, its labels and its annotations.  promtool comes with the Debian
prometheus package; missing, the tests are skipped, or fail with ``CI=true``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from buildbot_stats.cli import main
from tests.support.process import find_executable, unavailable

TEST_FILE = Path(__file__).parent.parent / "data" / "buildbot-stats-alerts.test.yml"
ALERTS = {"BuildbotBuildRunningTooLong", "BuildbotBuildRequestPendingTooLong", "BuildbotNoWorkerConnected"}


def promtool() -> str:
    path = find_executable("promtool", "PROMTOOL")
    if path is None:
        unavailable("promtool not found (apt-get install prometheus, or set $PROMTOOL)")
    return path


@pytest.fixture
def rules(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """What ``buildbot-stats alert-rules`` prints, in a file beside a copy of the unit-test file."""
    assert main(["alert-rules"]) == 0
    path = tmp_path / "buildbot-stats-alerts.yml"
    path.write_text(capsys.readouterr().out)
    shutil.copy(TEST_FILE, tmp_path)
    return path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=60)


def test_promtool_checks_the_rules(rules: Path) -> None:
    proc = run("check", "rules", str(rules))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 3 rules found" in proc.stdout
    assert set(re.findall(r"alert: (\w+)", rules.read_text())) == ALERTS


def test_promtool_unit_tests_fire_each_alert_when_and_only_when_expected(rules: Path) -> None:
    tests = rules.parent / TEST_FILE.name
    assert set(re.findall(r"alertname: (\w+)", tests.read_text())) == ALERTS
    proc = run("test", "rules", str(tests))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_a_changed_threshold_fails_the_unit_tests(rules: Path) -> None:
    """The unit tests can fail: 30 minutes made 40 must make the pending alert fire later than tested."""
    text = rules.read_text()
    assert "> 30 * 60" in text
    rules.write_text(text.replace("> 30 * 60", "> 40 * 60"))
    proc = run("test", "rules", str(rules.parent / TEST_FILE.name))
    assert proc.returncode != 0
    assert "BuildbotBuildRequestPendingTooLong" in proc.stdout + proc.stderr
