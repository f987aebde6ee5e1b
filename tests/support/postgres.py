"""A private PostgreSQL server for tests: initdb + pg_ctl in a temporary directory, loopback only.

Minimal harness written for the backfill tests (the ``multimaster`` branch
had not committed its own when this was needed; keep whichever is fuller at
merge time).  PostgreSQL refuses to run as root: as root, the server runs as
the ``postgres`` user (or ``nobody``) in a directory of its own under /tmp.

    server = PostgresServer()
    server.start()
    url = server.create_database("bbmaster")   # SQLAlchemy URL (psycopg 3)
    ...
    server.close()
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import unittest
from pathlib import Path
from typing import Any

__all__ = ["PostgresServer", "find_pg_bin", "require_postgres"]

HOST = "127.0.0.1"
USER = "postgres"  # the database superuser made by initdb


def find_pg_bin() -> str | None:
    """The directory holding initdb/pg_ctl (``$PG_BIN`` first), or None."""
    candidates = [os.environ.get("PG_BIN", "")]
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(os.path.dirname(initdb))
    for directory in candidates:
        if directory and os.access(os.path.join(directory, "initdb"), os.X_OK):
            return directory
    return None


def _driver_available() -> bool:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return False
    return True


def require_postgres() -> str:
    """The PostgreSQL bin directory; skip the test when missing (fail when ``CI`` is true)."""
    path = find_pg_bin()
    problem = None
    if path is None:
        problem = "PostgreSQL server binaries not found (apt-get install postgresql, or set $PG_BIN)"
    elif not _driver_available():
        problem = "the psycopg module is not installed (pip install psycopg)"
    if problem is None:
        assert path is not None
        return path
    if os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}:
        raise RuntimeError(f"{problem}; CI requires it")
    raise unittest.SkipTest(problem)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _run_as() -> tuple[int, int] | None:
    """(uid, gid) to run the server as when we are root, else None."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            continue
        return pw.pw_uid, pw.pw_gid
    raise RuntimeError("running as root and no 'postgres' or 'nobody' user to run PostgreSQL as")


class PostgresServer:
    """One PostgreSQL cluster, trust authentication on 127.0.0.1:<free port>."""

    def __init__(self, bindir: str | None = None) -> None:
        self.bin = bindir or find_pg_bin()
        self.port = 0
        self._ids = _run_as()
        self._dir: str | None = None

    @property
    def datadir(self) -> str:
        assert self._dir is not None
        return os.path.join(self._dir, "data")

    def _cmd(self, name: str, *args: str) -> list[str]:
        assert self.bin is not None
        cmd = [os.path.join(self.bin, name), *args]
        if self._ids is not None:
            uid, gid = self._ids
            cmd = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--", *cmd]
        return cmd

    def _run(self, name: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            self._cmd(name, *args), capture_output=True, text=True, timeout=timeout, cwd=self._dir
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"{name} failed ({proc.returncode}): {proc.stdout}{proc.stderr}{self.log_tail()}"
            )
        return proc

    def start(self, timeout: float = 60) -> PostgresServer:
        """initdb (first time), then start the server and wait until it accepts connections."""
        if self.bin is None:
            raise RuntimeError("PostgreSQL binaries not found")
        if self._dir is None:
            # a directory the server's user can reach (pytest's tmp dirs are root-only)
            self._dir = tempfile.mkdtemp(prefix="bbstats-pg-")
            if self._ids is not None:
                os.chown(self._dir, *self._ids)
            self._run("initdb", "-D", self.datadir, "-U", USER, "-A", "trust", "--no-sync", "-E", "UTF8")
            self.port = _free_port()
        self._run(
            "pg_ctl",
            "-D",
            self.datadir,
            "-l",
            os.path.join(self._dir, "server.log"),
            "-o",
            f"-c listen_addresses={HOST} -p {self.port} -c unix_socket_directories='' -c fsync=off",
            "-w",
            "-t",
            str(int(timeout)),
            "start",
            timeout=timeout + 10,
        )
        return self

    def stop(self) -> None:
        if self._dir is not None and os.path.exists(os.path.join(self.datadir, "postmaster.pid")):
            self._run("pg_ctl", "-D", self.datadir, "-m", "fast", "-w", "stop")

    def close(self) -> None:
        """Stop the server and remove its files."""
        try:
            self.stop()
        finally:
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = None

    def log_tail(self, lines: int = 20) -> str:
        if self._dir is None:
            return ""
        try:
            text = Path(self._dir, "server.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def url(self, database: str) -> str:
        """The SQLAlchemy URL of ``database`` (psycopg 3 driver)."""
        return f"postgresql+psycopg://{USER}@{HOST}:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """CREATE DATABASE ``name``; return its SQLAlchemy URL."""
        self._run("createdb", "-h", HOST, "-p", str(self.port), "-U", USER, name)
        return self.url(name)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()
