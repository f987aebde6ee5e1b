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

import atexit
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import unittest
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Self

__all__ = ["CrossbarRouter", "find_crossbar", "require_crossbar", "VENV"]

HOST = "127.0.0.1"
VENV = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "buildbot-stats" / "crossbar-venv"
_READY = VENV / ".installed"  # written once pip install succeeded
_RUN = "import sys; from crossbar import run; sys.exit(run())"


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


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
        if _in_ci():
            raise RuntimeError(f"crossbar could not be installed in {VENV}; CI requires it: {e}") from e
        raise unittest.SkipTest(f"crossbar not available ({type(e).__name__}: {str(e)[:300]})") from None
    cmd = find_crossbar()
    assert cmd is not None
    return cmd


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((HOST, port)) == 0


_RUNNING: set[CrossbarRouter] = set()
atexit.register(lambda: [r.stop() for r in list(_RUNNING)])


class CrossbarRouter:
    """A crossbar router with its node directory in ``basedir``; :attr:`url` for Buildbot's ``router_url``."""

    def __init__(self, basedir: str | os.PathLike[str], realm: str = "realm1") -> None:
        self.basedir = Path(basedir).resolve()
        self.realm = realm
        self.port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"<CrossbarRouter {self.url if self.port else 'stopped'} realm={self.realm}>"

    @property
    def url(self) -> str:
        return f"ws://{HOST}:{self.port}/ws"

    @property
    def log_path(self) -> Path:
        return self.basedir / "crossbar.log"

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

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

    def start(self, timeout: float = 90) -> Self:
        """Start the router; returns once its WebSocket port accepts connections."""
        if self._proc is not None:
            return self
        cmd = require_crossbar()
        self.port = _free_port()
        cbdir = self._write_config()
        with open(self.log_path, "ab") as out:
            self._proc = subprocess.Popen(
                [*cmd, "start", "--cbdir", str(cbdir), "--loglevel", "warn"],
                cwd=self.basedir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its router worker is a child: stop the whole group
            )
        _RUNNING.add(self)
        deadline = time.monotonic() + timeout
        while not _port_open(self.port):
            if self._proc.poll() is not None:
                self._proc = None
                raise RuntimeError(f"crossbar exited at start:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"crossbar not listening after {timeout}s:\n{self.log_tail()}")
            time.sleep(0.1)
        return self

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM the router's process group (SIGKILL after ``timeout``) and wait."""
        proc, self._proc = self._proc, None
        _RUNNING.discard(self)
        if proc is None:
            return
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        # the group's other members (the router worker) follow the controller
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
