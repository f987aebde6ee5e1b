"""A private, throw-away PostgreSQL server for tests (Debian's binaries, standard library only).

Typical use::

    require_postgres()
    with PostgresServer() as pg:          # initdb + postgres, stopped on exit
        engine = sqlalchemy.create_engine(pg.url)           # database "buildbot"
        other = pg.create_database("backfill")              # another one, its URL

The cluster lives in a temporary directory, listens on a free port of
127.0.0.1 only (no Unix socket), trusts local connections (user ``stats``, no
password) and is deleted on exit.  PostgreSQL refuses to run as root: when
the tests run as root, the server runs as an unprivileged user (``postgres``
if it exists, else ``nobody``) through ``setpriv``.

The binaries are looked up on ``$PG_BINDIR``, then the newest
``/usr/lib/postgresql/*/bin``, then ``$PATH``.  When they are missing the
tests are skipped, except when ``CI=true`` where it is an error.  The URL uses
the psycopg 3 driver (``postgresql+psycopg://``), which the ``test`` extra
installs; :func:`require_postgres` checks for it too.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from typing import TYPE_CHECKING

from tests.support.ports import HOST
from tests.support.process import ServerProcess, unavailable

if TYPE_CHECKING:
    from typing import Self

__all__ = ["PostgresServer", "find_pg_bindir", "require_postgres"]

SUPERUSER = "stats"
DEFAULT_DB = "buildbot"
_TOOLS = ("initdb", "postgres", "createdb")


def find_pg_bindir() -> str | None:
    """The directory holding initdb, postgres and createdb, or None."""

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
    if bindir is None:
        unavailable("PostgreSQL not found (apt-get install postgresql, or set $PG_BINDIR)")
    try:
        import psycopg  # noqa: F401  (the driver of the URL)
    except ImportError:
        unavailable("psycopg not installed (pip install 'psycopg[binary]', in the test extra)")
    return bindir


def _unprivileged_user() -> pwd.struct_passwd | None:
    """The user to run PostgreSQL as when we are root (None when we are not)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("running as root and no 'postgres' or 'nobody' user to run PostgreSQL as")


class PostgresServer(ServerProcess):
    """A PostgreSQL cluster in a temporary directory, started by :meth:`start` (or ``with``)."""

    name = "postgres"
    start_timeout = 60
    stop_signal = signal.SIGINT  # "fast" shutdown: SIGTERM would wait until every client left

    def __init__(self, bindir: str | None = None) -> None:
        self.bindir = bindir or require_postgres()
        super().__init__(tempfile.mkdtemp(prefix="bbstats-pg-"))
        self.datadir = self.basedir / "data"
        self.user = _unprivileged_user()
        if self.user is not None:
            os.chown(self.basedir, self.user.pw_uid, self.user.pw_gid)

    # -- URLs ---------------------------------------------------------------

    def url_for(self, database: str) -> str:
        """The SQLAlchemy URL of ``database`` (psycopg 3 driver)."""
        return f"postgresql+psycopg://{SUPERUSER}@{HOST}:{self.port}/{database}"

    @property
    def url(self) -> str:
        """The SQLAlchemy URL of the database ``buildbot`` (created at start)."""
        return self.url_for(DEFAULT_DB)

    # -- running commands ------------------------------------------------------

    def _cmd(self, tool: str, *args: str) -> list[str]:
        cmd = [os.path.join(self.bindir, tool), *args]
        if self.user is not None:  # setpriv execs the tool: the server's signals reach it
            ids = [f"--reuid={self.user.pw_uid}", f"--regid={self.user.pw_gid}", "--clear-groups"]
            cmd = ["setpriv", *ids, "--", *cmd]
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

    def _initialized(self) -> bool:
        return (self.datadir / "PG_VERSION").exists()

    def _command(self) -> list[str]:
        if not self._initialized():
            self._run(
                "initdb", "-D", str(self.datadir), "-U", SUPERUSER, "-A", "trust", "-E", "UTF8", "--no-sync"
            )
        (self.datadir / "postmaster.pid").unlink(missing_ok=True)  # a killed server's
        return self._cmd(
            "postgres", "-D", str(self.datadir), "-p", str(self.port), "-c", f"listen_addresses={HOST}",
            "-c", "unix_socket_directories=", "-c", "fsync=off",
        )  # fmt: skip

    def _ready(self) -> bool:
        """The server's status line in postmaster.pid says ``ready`` (what ``pg_ctl -w`` waits for)."""
        try:
            lines = (self.datadir / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        return len(lines) > 7 and lines[7].strip() == "ready"

    # -- life cycle ------------------------------------------------------------

    def start(self, timeout: float | None = None) -> Self:
        """initdb (once), start on a free loopback port, create the database ``buildbot`` (once)."""
        fresh = not self._initialized()
        super().start(timeout)
        if fresh:
            self.create_database(DEFAULT_DB)
        return self

    def create_database(self, name: str) -> str:
        """Create database ``name``; return its SQLAlchemy URL."""
        self._run("createdb", "-h", HOST, "-p", str(self.port), "-U", SUPERUSER, name)
        return self.url_for(name)

    def close(self) -> None:
        """Stop the server and delete its directory."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.basedir, ignore_errors=True)
