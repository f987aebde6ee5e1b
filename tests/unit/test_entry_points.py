"""Buildbot's plugin entry points: ``from buildbot.plugins import util; util.StatsService``.

The package's metadata is built from setup.py (``setup.py egg_info``, as pip
does before installing) into a temporary directory put first on the path of a
fresh interpreter, so its entry points are the ones Buildbot's plugin loader
sees, whatever the installed copy of the package says.  Every class a
master.cfg configures (the service, the backends, the concrete captures, the
step mixin, the page) must come out of ``buildbot.plugins.util`` as the very
object of ``buildbot_stats.statistics``.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import zope.interface

from buildbot_stats import statistics

ROOT = Path(__file__).resolve().parent.parent.parent
#: the abstract bases and helpers of statistics' names: for subclassing, not for master.cfg
NOT_PLUGINS = {"Capture", "CaptureBuildTimes", "CaptureDataBase", "CapturePropertyBase", "StatsStorageBase"}

LOAD = """
import json, sys
from buildbot.plugins import util
from buildbot_stats import statistics
names = json.loads(sys.argv[1])
print(json.dumps({n: getattr(util, n) is getattr(statistics, n) for n in names}))
"""


def configurable_names() -> list[str]:
    """The names of statistics that a master.cfg instantiates or mixes in."""
    names = ["StatsDashboard"]  # a function returning the page's dict
    for name in statistics.__all__:
        value = getattr(statistics, name)
        if (
            inspect.isclass(value)
            and not issubclass(value, Exception)
            and not isinstance(value, zope.interface.interface.InterfaceClass)
            and name not in NOT_PLUGINS
            and name != "WriteReport"
        ):
            names.append(name)
    return sorted(names)


def load_in_fresh_interpreter(tmp_path: Path, names: list[str]) -> dict[str, bool]:
    proc = subprocess.run(
        [sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    proc = subprocess.run(
        [sys.executable, "-c", LOAD, json.dumps(names)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout))


def test_every_configurable_class_is_a_buildbot_util_plugin(tmp_path: Path) -> None:
    names = configurable_names()
    backends = {"PrometheusStorageService", "SQLiteStorageService", "InfluxStorageService"}
    assert {"StatsService", *backends} <= set(names)
    assert "CaptureBuildDurationAllBuilders" in names and "StatsStepMixin" in names
    assert load_in_fresh_interpreter(tmp_path, names) == {n: True for n in names}


def test_the_statistics_module_still_has_them_all() -> None:
    from buildbot_stats.statistics import StatsService

    assert StatsService is statistics.StatsService
    assert set(configurable_names()) <= set(statistics.__all__)
