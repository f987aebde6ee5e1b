"""Buildbot 4.3.0's own ``buildbot/test/unit/test_stats_service.py``, run against buildbot_stats.

The file ships in Buildbot's sdist, not in its wheel.  The sdist is downloaded
with pip (PyPI, so this is not a ``unit`` test) into
``~/.cache/buildbot-stats/`` once and checked against its SHA-256; only that
one file is extracted, into a temporary directory, with ``buildbot.statistics``
in its imports replaced by ``buildbot_stats``, and run with pytest in a
subprocess.  Nothing of Buildbot's is kept in this repository.

Every test must pass except the three that build ``InfluxStorageService(...,
"fake_port", ...)``: a port that is not a number is a ``config.error`` here, on
purpose (docs/compat.rst).  Without network the test is skipped, or fails under
``CI=true``.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SDIST = "buildbot-4.3.0.tar.gz"
SDIST_SHA256 = "cbf46a15004bb1229712285e4f2b98163a169868ea00783e5e0d7cf8d5e8d962"
MEMBER = "buildbot-4.3.0/buildbot/test/unit/test_stats_service.py"
#: the tests that give ``port="fake_port"``, refused on purpose
REFUSED = {
    "TestInfluxDB.test_influx_storage_service_fake_install",
    "TestInfluxDB.test_influx_storage_service_post_value",
    "TestInfluxDB.test_influx_service_not_inited",
}


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def cached_sdist() -> Path:
    """Buildbot 4.3.0's sdist, downloaded once with pip and checked against its hash."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "buildbot-stats"
    path = cache / SDIST
    if not path.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "buildbot==4.3.0"]
            cmd += ["--no-binary", ":all:", "--no-deps", "-d", tmp]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            except subprocess.TimeoutExpired:
                _unavailable("pip download of Buildbot's sdist timed out")
            if proc.returncode != 0 or not (Path(tmp) / SDIST).is_file():
                _unavailable(f"pip could not download Buildbot's sdist:\n{proc.stderr[-2000:]}")
            os.replace(Path(tmp) / SDIST, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        path.unlink()
        pytest.fail(f"{SDIST} has SHA-256 {digest}, not {SDIST_SHA256}: removed from the cache")
    return path


def pointed_at_this_package(source: str) -> str:
    """The test's source with ``buildbot.statistics`` replaced by ``buildbot_stats`` in its imports."""
    out = re.sub(r"^(from|import) buildbot\.statistics\b", r"\1 buildbot_stats", source, flags=re.M)
    if "buildbot.statistics" in out:
        raise AssertionError("buildbot.statistics left outside the imports: the rewrite needs a look")
    return out


def test_buildbot_own_stats_service_tests_pass_except_the_refused_port(tmp_path):
    with tarfile.open(cached_sdist()) as tar:
        member = tar.extractfile(MEMBER)
        assert member is not None
        source = member.read().decode("utf-8")
    test_file = tmp_path / "test_stats_service.py"
    test_file.write_text(pointed_at_this_package(source))
    report = tmp_path / "report.xml"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}"]
    cmd += ["--rootdir", str(tmp_path), str(test_file)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert report.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    outcomes: dict[str, tuple[str, str]] = {}
    for case in ET.parse(report).iter("testcase"):
        name = f"{case.get('classname', '').rsplit('.', 1)[-1]}.{case.get('name')}"
        bad = [c for c in case if c.tag in ("failure", "error", "skipped")]
        outcomes[name] = (bad[0].tag, bad[0].get("message", "")) if bad else ("passed", "")
    assert len(outcomes) == 31, proc.stdout[-3000:]  # the tests of the file, none lost
    not_passed = {name: outcome for name, outcome in outcomes.items() if outcome[0] != "passed"}
    assert set(not_passed) == REFUSED, f"{not_passed}\n{proc.stdout[-5000:]}"
    for kind, message in not_passed.values():
        assert kind == "failure" and "ConfigErrors" in message and "'fake_port'" in message, message
