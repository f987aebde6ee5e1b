"""The base of the tests' throw-away servers: influxd, Prometheus, PostgreSQL, crossbar.

Each server is one subprocess with its files and its log in ``basedir``.  A
subclass says only what is its own: the command line (after writing its
config), when the server is ready, and which ports it takes.  The base starts
it, waits (bounded) until it is ready, stops it with a signal and SIGKILL
after a timeout, and stops whatever still runs when the test process exits.

A server that is missing skips its tests, except under ``CI=true`` where it is
an error (:func:`unavailable`).
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import threading
import time
import unittest
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, ClassVar, NoReturn

from tests.support.ports import HOST, free_port

if TYPE_CHECKING:
    from typing import Self

__all__ = ["HOST", "ServerProcess", "default_sigint", "find_executable", "in_ci", "unavailable"]


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def unavailable(problem: str) -> NoReturn:
    """Skip the test for want of ``problem``'s server; under ``CI=true`` fail instead."""
    if in_ci():
        raise RuntimeError(f"{problem}; CI requires it")
    raise unittest.SkipTest(problem)


def find_executable(name: str, env_var: str) -> str | None:
    """``$env_var`` when set, else ``name`` on $PATH, in /usr/bin or /usr/local/bin; None if none runs."""
    candidates = [os.environ.get(env_var, ""), shutil.which(name) or ""]
    candidates += [f"/usr/bin/{name}", f"/usr/local/bin/{name}"]
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def default_sigint() -> None:
    """``preexec_fn`` that gives a child the default action of SIGINT (Ctrl-C).

    A background job of a script starts with SIGINT ignored (POSIX) and its
    children inherit that; a test that sends SIGINT as a person's Ctrl-C must
    not depend on how the suite was started.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _pdeathsig_prefix() -> list[str]:
    """Command prefix that stops the server if this (main) thread dies.

    ``PR_SET_PDEATHSIG`` fires when the *thread* that spawned the child exits,
    so it is only used when starting from the main thread.
    """
    if threading.current_thread() is not threading.main_thread():
        return []
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []


# Every running server, stopped by an atexit hook.
_RUNNING: set[ServerProcess] = set()
_RUNNING_LOCK = threading.Lock()


def _close_all_running() -> None:
    with _RUNNING_LOCK:
        servers = list(_RUNNING)
    for server in servers:
        server.close()


atexit.register(_close_all_running)


class _EarlyExitError(Exception):
    """The server exited before it was ready (e.g. a port was taken)."""


class ServerProcess:
    """A server subprocess in ``basedir``; a subclass writes :meth:`_command` and :meth:`_ready`.

    Ports are chosen on the first :meth:`start` and kept for the object's
    life, so ``stop(); ...; start()`` is an outage of the very same server
    (same URL, same data).
    """

    #: names the log file (``<name>.log`` in basedir) and the messages
    name: ClassVar[str] = "server"
    host: ClassVar[str] = HOST
    start_timeout: ClassVar[float] = 30
    stop_signal: ClassVar[signal.Signals] = signal.SIGTERM
    #: the server has children: it runs in a session of its own and stop() signals the whole group
    own_process_group: ClassVar[bool] = False

    def __init__(self, basedir: str | os.PathLike[str]) -> None:
        self.basedir = Path(basedir).resolve()
        self._port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._lock = threading.RLock()

    # -- what a subclass says ----------------------------------------------

    def _choose_ports(self) -> None:
        """Pick the ports of the first start (again after a lost port race)."""
        self._port = free_port()

    def _command(self) -> list[str]:
        """Write the server's config files; return its command line."""
        raise NotImplementedError

    def _ready(self) -> bool:
        """True once the server answers."""
        raise NotImplementedError

    def _env(self) -> dict[str, str] | None:
        """The server's environment (None: this process's)."""
        return None

    # -- state ---------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port clients connect to (fixed after the first start)."""
        if self._port is None:
            raise RuntimeError(f"{type(self).__name__} has not been started yet")
        return self._port

    @property
    def log_path(self) -> Path:
        """The server's stdout and stderr (appended across restarts)."""
        return self.basedir / f"{self.name}.log"

    @property
    def pid(self) -> int | None:
        """PID of the running server, or None."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def is_running(self) -> bool:
        return self.pid is not None

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the log, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<{type(self).__name__} {HOST}:{self._port} {state} {self.basedir}>"

    # -- life cycle ----------------------------------------------------------

    def start(self, timeout: float | None = None) -> Self:
        """Start the server (no-op when it runs) and wait until it is ready."""
        with self._lock:
            if self.is_running():
                return self
            first_start = self._port is None
            for _attempt in range(3 if first_start else 1):
                if first_start:
                    self._choose_ports()
                try:
                    self._launch(self.start_timeout if timeout is None else timeout)
                    return self
                except _EarlyExitError:
                    continue  # on a first start most likely a lost port race: other ports
            raise RuntimeError(f"{self.name} exited during startup:\n{self.log_tail()}")

    def _launch(self, timeout: float) -> None:
        self.basedir.mkdir(parents=True, exist_ok=True)
        command = self._command()
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._log.write(f"--- starting {self.name} on {HOST}:{self.port} ---\n".encode())
        self._log.flush()
        proc = self._proc = subprocess.Popen(
            [*_pdeathsig_prefix(), *command],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self._env(),
            cwd=self.basedir,
            start_new_session=self.own_process_group,
        )
        with _RUNNING_LOCK:
            _RUNNING.add(self)
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                self.stop()
                raise _EarlyExitError()
            if self._ready():
                return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} not ready within {timeout}s:\n{self.log_tail()}")
            time.sleep(0.05)

    def stop(self, timeout: float = 10) -> None:
        """Stop the server: its stop signal, SIGKILL after ``timeout``; wait until gone.  Idempotent."""
        with self._lock:
            proc, self._proc = self._proc, None
            with _RUNNING_LOCK:
                _RUNNING.discard(self)
            if proc is not None:
                self._signal(proc, self.stop_signal)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self._signal(proc, signal.SIGKILL)
                    proc.wait()
                if self.own_process_group:
                    self._wait_for_group(proc)
            if self._log is not None:
                self._log.close()
                self._log = None

    def _signal(self, proc: subprocess.Popen[bytes], signum: signal.Signals) -> None:
        if not self.own_process_group:
            proc.send_signal(signum)  # a no-op once it exited
            return
        try:
            os.killpg(proc.pid, signum)
        except ProcessLookupError:
            pass

    @staticmethod
    def _wait_for_group(proc: subprocess.Popen[bytes]) -> None:
        """The group's other members follow their leader; SIGKILL them after 10 s."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def restart(self, timeout: float | None = None) -> Self:
        """Stop (if running) and start again on the same ports with the same data."""
        with self._lock:
            self.stop()
            return self.start(timeout)

    def close(self) -> None:
        """Stop the server; ``basedir`` is left to its owner."""
        self.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
