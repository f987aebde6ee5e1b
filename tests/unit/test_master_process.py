"""Offline checks of the real-master driver (buildbot_stats/cli/master_process.py)."""

from __future__ import annotations

import os
from pathlib import Path

import buildbot_stats
from buildbot_stats.cli.master_process import RealMaster, make_master_cfg


def test_master_pythonpath_imports_this_package_and_shadows_nothing(tmp_path: Path) -> None:
    """The master's PYTHONPATH starts with the directory *holding* buildbot_stats.

    Putting the package directory itself there would make its modules importable
    at top level, ``statistics.py`` shadowing the standard library's ``statistics``
    inside the master, and would not make this checkout's package win.
    """
    cfg = make_master_cfg({"b1": "[steps.ShellCommand(command=['true'])]"}, pb_port=1)
    master = RealMaster(tmp_path / "master", cfg, env={"PYTHONPATH": ""})
    first = Path(master.env["PYTHONPATH"].split(os.pathsep)[0])
    package = Path(buildbot_stats.__file__).resolve().parent
    assert first / "buildbot_stats" == package
    assert not (first / "statistics.py").exists()
