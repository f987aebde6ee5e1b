"""Test tiers: each test is marked by the folder it lives in.

- ``tests/unit``: offline, Buildbot's fakes, seconds (``pytest -m unit``);
- ``tests/integration``: real servers (influxd, Prometheus, PostgreSQL...);
- ``tests/e2e``: real Buildbot masters, the demo, Chromium.

A test may carry a tier marker of its own (e.g. a Chromium check beside
offline tests); then the folder's is not added.
"""

from __future__ import annotations

from pathlib import Path

import pytest

TIERS = ("unit", "integration", "e2e")
_HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if any(item.get_closest_marker(tier) for tier in TIERS):
            continue
        try:
            folder = Path(str(item.fspath)).relative_to(_HERE).parts[0]
        except ValueError:
            continue
        if folder in TIERS:
            item.add_marker(getattr(pytest.mark, folder))


# -- the stores of the summary, report and command-line tests (tests/summary_data.py) --


@pytest.fixture
def store(tmp_path):
    """An SQLite store holding ``make_points()``: the figures the tests compute by hand."""
    from tests.summary_data import make_points, write_store

    return write_store(tmp_path / "stats.sqlite", make_points())


@pytest.fixture
def full_store(tmp_path):
    """An SQLite store with steps, queue times and test results too (``make_full_points()``)."""
    from tests.summary_data import make_full_points, write_store

    return write_store(tmp_path / "full.sqlite", make_full_points())
