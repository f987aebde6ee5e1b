"""A private, throw-away PostgreSQL server for tests (Debian's binaries, standard library only).

Typical use::

    require_postgres()
    with PostgresServer() as pg:          # initdb + pg_ctl start, stopped on exit
        engine = sqlalchemy.create_engine(pg.url)           # database "buildbot"
        other = pg.create_database("backfill")              # another one, its URL

The cluster lives in a temporary directory, listens on a free port of
127.0.0.1 only (no Unix socket), trusts local connections (user ``stats``, no
password) and is deleted on exit.  PostgreSQL refuses to run as root: when
the tests run as root, the server runs as an unprivileged user (``postgres``
if it exists, else ``nobody``) through ``runuser``.

The binaries are looked up on ``$PG_BINDIR``, then the newest
``/usr/lib/postgresql/*/bin``, then ``$PATH``.  When they are missing the
tests are skipped, except when ``CI=true`` where it is an error.  The URL uses
the psycopg 3 driver (``postgresql+psycopg://``), which the ``test`` extra
installs; :func:`require_postgres` checks for it too.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Self

__all__ = ["PostgresServer", "find_pg_bindir", "require_postgres"]

HOST = "127.0.0.1"
SUPERUSER = "stats"
DEFAULT_DB = "buildbot"
_TOOLS = ("initdb", "pg_ctl", "createdb")


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def find_pg_bindir() -> str | None:
    """The directory holding initdb, pg_ctl and createdb, or None."""

    def has_tools(d: str) -> bool:
        return all(os.access(os.path.join(d, t), os.X_OK) for t in _TOOLS)

    candidates = [os.environ.get("PG_BINDIR", "")]
    candidates += sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(d.split("/")[-2] or 0), reverse=True
    )
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(os.path.dirname(initdb))
    for d in candidates:
        if d and has_tools(d):
            return d
    return None


def require_postgres() -> str:
    """Return the PostgreSQL bin directory; skip the test when missing (fail under CI)."""
    bindir = find_pg_bindir()
    problem = None
    if bindir is None:
        problem = "PostgreSQL not found (apt-get install postgresql, or set $PG_BINDIR)"
    else:
        try:
            import psycopg  # noqa: F401  (the driver of the URL)
        except ImportError:
            problem = "psycopg not installed (pip install 'psycopg[binary]', in the test extra)"
    if problem is None:
        assert bindir is not None
        return bindir
    if _in_ci():
        raise RuntimeError(f"{problem}; CI requires it")
    raise unittest.SkipTest(problem)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _unprivileged_user() -> str | None:
    """The user to run the server as when we are root (None when we are not)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise RuntimeError("running as root and no 'postgres' or 'nobody' user to run PostgreSQL as")


_RUNNING: set[PostgresServer] = set()


def _stop_all() -> None:
    for server in list(_RUNNING):
        server.close()


atexit.register(_stop_all)


class PostgresServer:
    """A PostgreSQL cluster in a temporary directory, started by :meth:`start` (or ``with``)."""

    def __init__(self, bindir: str | None = None) -> None:
        self.bindir = bindir or require_postgres()
        self.user = _unprivileged_user()
        self.port: int | None = None
        self.datadir: Path | None = None
        self._tmp: str | None = None

    def __repr__(self) -> str:
        return f"<PostgresServer {HOST}:{self.port} {self.datadir}>"

    # -- URLs ---------------------------------------------------------------

    def url_for(self, database: str) -> str:
        """The SQLAlchemy URL of ``database`` (psycopg 3 driver)."""
        if self.port is None:
            raise RuntimeError("the server is not started")
        return f"postgresql+psycopg://{SUPERUSER}@{HOST}:{self.port}/{database}"

    @property
    def url(self) -> str:
        """The SQLAlchemy URL of the database ``buildbot`` (created at start)."""
        return self.url_for(DEFAULT_DB)

    # -- running commands ------------------------------------------------------

    def _cmd(self, tool: str, *args: str) -> list[str]:
        cmd = [os.path.join(self.bindir, tool), *args]
        if self.user is not None:
            cmd = [shutil.which("runuser") or "/sbin/runuser", "-u", self.user, "--", *cmd]
        return cmd

    def _run(self, tool: str, *args: str, timeout: float = 120) -> str:
        proc = subprocess.run(
            self._cmd(tool, *args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            check=False,
            cwd="/",
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"{tool} {' '.join(args)} failed (rc={proc.returncode}):\n{proc.stdout}\n{self.log_tail()}"
            )
        return proc.stdout

    def log_tail(self, lines: int = 30) -> str:
        if self.datadir is None:
            return ""
        try:
            text = (self.datadir.parent / "postgres.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- life cycle ------------------------------------------------------------

    def start(self, timeout: float = 60) -> Self:
        """initdb, start on a free loopback port and create the database ``buildbot``."""
        if self.port is not None:
            return self
        self._tmp = tempfile.mkdtemp(prefix="bbstats-pg-")
        top = Path(self._tmp)
        self.datadir = top / "data"
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(top, entry.pw_uid, entry.pw_gid)
        self._run(
            "initdb", "-D", str(self.datadir), "-U", SUPERUSER, "-A", "trust", "-E", "UTF8", "--no-sync"
        )
        self.port = _free_port()
        options = f"-c listen_addresses={HOST} -p {self.port} -c unix_socket_directories='' -c fsync=off"
        _RUNNING.add(self)
        self._run(
            "pg_ctl", "-D", str(self.datadir), "-l", str(top / "postgres.log"), "-o", options, "-w",
            "-t", str(int(timeout)), "start", timeout=timeout + 30,
        )  # fmt: skip
        self.create_database(DEFAULT_DB)
        return self

    def create_database(self, name: str) -> str:
        """Create database ``name``; return its SQLAlchemy URL."""
        self._run("createdb", "-h", HOST, "-p", str(self.port), "-U", SUPERUSER, name)
        return self.url_for(name)

    def stop(self, timeout: float = 60) -> None:
        """Stop the server (fast shutdown; SIGKILL if it does not go)."""
        if self.port is None or self.datadir is None:
            return
        try:
            self._run("pg_ctl", "-D", str(self.datadir), "-m", "fast", "-w", "-t", str(int(timeout)), "stop")
        except (RuntimeError, subprocess.TimeoutExpired):
            self._kill()
        self.port = None

    def _kill(self) -> None:
        assert self.datadir is not None
        try:
            pid = int((self.datadir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return
        try:
            os.kill(pid, signal.SIGKILL)  # its backends exit when the postmaster is gone
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.05)

    def close(self) -> None:
        """Stop the server and delete its directory."""
        try:
            self.stop()
        finally:
            _RUNNING.discard(self)
            if self._tmp is not None:
                shutil.rmtree(self._tmp, ignore_errors=True)
                self._tmp = None
                self.datadir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
