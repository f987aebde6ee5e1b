"""A private crossbar WAMP router for tests: Buildbot's multi-master MQ.

Typical use::

    require_crossbar()
    with CrossbarRouter(tmp_path / "crossbar") as router:
        mq = {"type": "wamp", "router_url": router.url, "realm": router.realm}

Crossbar pins many packages, so it lives in a virtualenv of its own, never
in the test environment: ``$CROSSBAR`` (a ``crossbar`` executable) wins, else
``~/.cache/buildbot-stats/crossbar-venv`` is used, and created (``python -m
venv`` + ``pip install crossbar``, a few minutes, once per machine) when
missing.  When it cannot be had, the tests are skipped, except when
``CI=true`` where it is an error.  The router listens on a free port of
127.0.0.1 only, with one realm open to anonymous clients.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.ports import HOST, port_open
from tests.support.process import ServerProcess, unavailable

__all__ = ["CrossbarRouter", "find_crossbar", "require_crossbar", "VENV"]

VENV = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "buildbot-stats" / "crossbar-venv"
_READY = VENV / ".installed"  # written once pip install succeeded
_RUN = "import sys; from crossbar import run; sys.exit(run())"


def find_crossbar() -> list[str] | None:
    """The command prefix that runs crossbar, or None if it is not installed."""
    exe = os.environ.get("CROSSBAR")
    if exe and os.access(exe, os.X_OK):
        return [exe]
    if _READY.is_file() and (VENV / "bin" / "python").exists():
        return [str(VENV / "bin" / "python"), "-c", _RUN]
    return None


def _install(timeout: float = 900) -> None:
    """Create the crossbar virtualenv (once; concurrent callers wait for the first)."""
    VENV.parent.mkdir(parents=True, exist_ok=True)
    with open(VENV.parent / "crossbar-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _READY.is_file():
            return
        shutil.rmtree(VENV, ignore_errors=True)  # a half-made one
        subprocess.run(
            [sys.executable, "-m", "venv", str(VENV)], check=True, timeout=300, capture_output=True
        )
        proc = subprocess.run(
            # crossbar's bjdata is built against NumPy 1.x: with NumPy 2 the router logs an import traceback
            [str(VENV / "bin" / "python"), "-m", "pip", "install", "-q", "crossbar", "numpy<2"],
            timeout=timeout,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"pip install crossbar failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        _READY.write_text("crossbar\n")


def require_crossbar() -> list[str]:
    """The crossbar command, installing it in its venv if needed; skip when impossible (fail under CI)."""
    cmd = find_crossbar()
    if cmd is not None:
        return cmd
    try:
        _install()
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        unavailable(f"crossbar could not be installed in {VENV} ({type(e).__name__}: {str(e)[:300]})")
    cmd = find_crossbar()
    assert cmd is not None
    return cmd


class CrossbarRouter(ServerProcess):
    """A crossbar router with its node directory in ``basedir``; :attr:`url` for Buildbot's ``router_url``."""

    name = "crossbar"
    start_timeout = 90
    own_process_group = True  # its router worker is a child

    def __init__(self, basedir: str | os.PathLike[str], realm: str = "realm1") -> None:
        super().__init__(basedir)
        self.realm = realm

    @property
    def url(self) -> str:
        return f"ws://{HOST}:{self.port}/ws"

    def _command(self) -> list[str]:
        cmd = require_crossbar()
        return [*cmd, "start", "--cbdir", str(self._write_config()), "--loglevel", "warn"]

    def _ready(self) -> bool:
        return port_open(self.port)

    def _write_config(self) -> Path:
        cbdir = self.basedir / ".crossbar"
        cbdir.mkdir(parents=True, exist_ok=True)
        allow = {"call": True, "register": True, "publish": True, "subscribe": True}
        config = {
            "version": 2,
            "controller": {},
            "workers": [
                {
                    "type": "router",
                    "realms": [
                        {
                            "name": self.realm,
                            "roles": [
                                {
                                    "name": "anonymous",
                                    "permissions": [
                                        {
                                            "uri": "",
                                            "match": "prefix",
                                            "allow": allow,
                                            "disclose": {"caller": False, "publisher": False},
                                            "cache": True,
                                        }
                                    ],
                                }
                            ],
                        }
                    ],
                    "transports": [
                        {
                            "type": "web",
                            "endpoint": {"type": "tcp", "interface": HOST, "port": self.port},
                            "paths": {"ws": {"type": "websocket"}},
                        }
                    ],
                }
            ],
        }
        (cbdir / "config.json").write_text(json.dumps(config, indent=2))
        return cbdir
