"""``buildbot-stats demo --ui``: the demo master serves its Statistics page until Ctrl-C."""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

for _module in ("buildbot_www", "buildbot_wsgi_dashboards"):
    if importlib.util.find_spec(_module) is None:
        if os.environ.get("CI") == "true":  # CI installs .[test], which brings them
            raise RuntimeError(f"{_module} is required on CI (pip install '.[ui]')")
        pytest.skip(f"needs {_module} (pip install '.[ui]')", allow_module_level=True)

REPO = Path(__file__).resolve().parents[2]
URL = re.compile(r"^the Statistics page: (http://127\.0\.0\.1:(\d+)/#/stats)  \(Ctrl-C stops the demo\)$")


def test_demo_ui_prints_the_page_url_and_serves_it_until_ctrl_c(tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    demo = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "buildbot_stats.cli",
            "demo",
            "--ui",
            "--builds",
            "3",
            "--dir",
            str(tmp_path / "d"),
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    try:
        deadline = time.monotonic() + 180
        match = None
        while match is None and time.monotonic() < deadline:
            line = demo.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
            match = URL.match(line.rstrip("\n"))
        assert match, "".join(lines)
        page = f"http://127.0.0.1:{match.group(2)}/plugins/wsgi_dashboards/stats/index.html"
        request = urllib.request.Request(page, headers={"Accept": "application/json, text/plain, */*"})
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(request, timeout=60) as response:
            body = response.read().decode("utf-8")
        every_build = body.split('data-window="all"', 1)[1].split("</section>", 1)[0]
        builds = dict(re.findall(r'data-builder="([^"]+)" data-builds="(\d+)"', every_build))
        assert builds == {"docs": "1", "integration": "1", "unit-tests": "1"}, body[:2000]
        with opener.open(match.group(1).replace("#/stats", ""), timeout=60) as response:
            assert response.status == 200  # Buildbot's UI itself
        demo.send_signal(signal.SIGINT)
        out, _ = demo.communicate(timeout=120)
        lines.append(out)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    text = "".join(lines)
    assert demo.returncode == 0, text
    assert "stopping the demo master ..." in text
    assert "\nBuilders\n" in text  # the summary, printed once the master stopped
