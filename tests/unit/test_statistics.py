"""The master.cfg facade: every capture and backend the docs present is ``statistics.<Name>``."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from buildbot_stats import statistics
from buildbot_stats.storage_backends.base import StatsStorageBase

DOCS = Path(__file__).resolve().parents[2] / "docs"
# a class a user writes in master.cfg: Capture*, *StorageService, StatsService
_DOC_NAME = re.compile(r"\b(Capture[A-Z][A-Za-z]*|[A-Za-z0-9]+StorageService|StatsService)\b")


def documented_names() -> set[str]:
    names: set[str] = set()
    for page in DOCS.glob("*.rst"):
        names.update(_DOC_NAME.findall(page.read_text(encoding="utf-8")))
    return names


def test_docs_name_classes():
    # the walk below would pass vacuously if the pattern found nothing
    assert {
        "StatsService",
        "InfluxStorageService",
        "SQLiteStorageService",
        "CaptureData",
    } <= documented_names()


def test_every_documented_class_is_in_the_facade():
    missing = sorted(name for name in documented_names() if not hasattr(statistics, name))
    assert missing == []


def test_every_public_backend_and_capture_module_name_is_exported():
    from buildbot_stats import capture

    assert set(capture.__all__) <= set(statistics.__all__)
    backends = [name for name in statistics.__all__ if name.endswith("StorageService")]
    assert {"InfluxStorageService", "SQLiteStorageService"} <= set(backends)
    for name in backends:
        assert issubclass(getattr(statistics, name), StatsStorageBase), name


def test_master_side_import_loads_no_tooling():
    code = (
        "import sys, buildbot_stats.statistics; "
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('buildbot_stats'))))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert "buildbot_stats.statistics" in loaded
    assert [m for m in loaded if m.startswith("buildbot_stats.cli")] == []
