"""``buildbot-stats demo``: a real master, a few builds, the statistics they left.

The demo creates a master with two LocalWorkers (the second takes one build at
a time and is the only worker of ``integration``, so builds wait in its queue)
and three builders of four steps; the ``run-tests`` step sets properties, posts
values with ``yieldMetricsValue``, records a test result set of its passes and
failures, takes a varying time and sometimes fails; runs the builds; records statistics into an SQLite store
(and an InfluxDB, if asked); and prints the summary.  With ``--ui`` the master
serves its web UI with the Statistics page (:func:`buildbot_stats.statistics.StatsDashboard`)
and keeps running until Ctrl-C.  Every process it starts is stopped on
success, on failure, on Ctrl-C and on SIGTERM.

Problems a person can fix (a busy port, a non-empty directory, an unreachable
InfluxDB, a missing dependency) raise :class:`DemoError` before anything is
started; Ctrl-C and SIGTERM raise :class:`DemoInterrupted` once everything is
stopped.  ``buildbot-stats demo`` prints either as one line.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import signal
import socket
import sqlite3
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import FrameType
from typing import Any, NamedTuple, NoReturn, Optional, TextIO, Union

from buildbot_stats.cli import procfs
from buildbot_stats.cli.master_process import RealMaster, RealMasterError, free_port, make_master_cfg
from buildbot_stats.cli.output import Progress

__all__ = ["DEMO_BUILDERS", "DemoError", "DemoInterrupted", "InfluxTarget", "demo_master_cfg", "run_demo"]

DEMO_BUILDERS = ("unit-tests", "integration", "docs")
STORE_NAME = "stats.sqlite"
CHANGE_AUTH = ("demo-change", "demo-changepw")


class DemoError(Exception):
    """A problem the user can fix; printed as one line."""


class DemoInterrupted(Exception):  # noqa: N818 - like KeyboardInterrupt, not an error
    """Ctrl-C or SIGTERM stopped the demo; every process it started is gone."""

    def __init__(self, signum: int, workdir: Path) -> None:
        self.signum = signum
        super().__init__(
            f"interrupted ({signal.Signals(signum).name}); stopped the demo master, files kept in {workdir}"
        )

    @property
    def exit_code(self) -> int:
        """128 + the signal number, as a shell reports a process killed by it (130 for Ctrl-C)."""
        return 128 + self.signum


class InfluxTarget(NamedTuple):
    """Where ``--influxdb`` points."""

    scheme: str
    host: str
    port: int
    db: str

    @property
    def host_url(self) -> str:
        """``scheme://host``, what InfluxStorageService takes as its url."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}"

    @property
    def base_url(self) -> str:
        return f"{self.host_url}:{self.port}"


# Python put at the top of the demo's master.cfg (see make_master_cfg): its steps,
# captures and backends
_HEADER = """\
import random

from twisted.internet import task

from buildbot_stats import statistics

FAIL_RATE = {'unit-tests': 0.1, 'integration': 0.3, 'docs': 0.05}


class RunTests(statistics.StatsStepMixin, steps.BuildStep):
    \"\"\"Pretends to run a test suite: takes time, reports figures, sometimes fails.\"\"\"

    name = 'run-tests'

    async def run(self):
        builder = self.getProperty('buildername')
        number = self.getProperty('buildnumber')
        rng = random.Random('%s-%s' % (builder, number))
        await task.deferLater(self.master.reactor, rng.uniform(0.2, 1.5), lambda: None)
        tests = rng.randint(40, 200)
        failed = rng.randint(1, 5) if rng.random() < FAIL_RATE.get(builder, 0.1) else 0
        self.setProperty('tests_run', tests, 'demo')
        self.setProperty('tests_failed', failed, 'demo')
        # Buildbot's own test results: one set, a result per test (1 passed, 0 failed)
        setid = await self.addTestResultSet('demo suite', 'pass_fail', 'boolean')
        for i in range(tests):
            self.addTestResult(setid, '0' if i < failed else '1', test_name='test_%d' % i)
        await self.yieldMetricsValues(
            'test-timings',
            [{'suite': 'suite-%d' % i, 'seconds': round(rng.uniform(0.05, 2.0), 3)} for i in range(5)],
        )
        await self.yieldMetricsValue(
            'coverage', {'lines': round(rng.uniform(70, 95), 1), 'branches': round(rng.uniform(50, 85), 1)}
        )
        return util.FAILURE if failed else util.SUCCESS


class Pause(steps.BuildStep):
    \"\"\"A short step (checkout, compile, upload) that only takes time.\"\"\"

    def __init__(self, seconds, **kwargs):
        super().__init__(**kwargs)
        self.seconds = seconds

    async def run(self):
        await task.deferLater(self.master.reactor, self.seconds, lambda: None)
        return util.SUCCESS


captures = [
    statistics.CaptureBuildStartTimeAllBuilders(),
    statistics.CaptureBuildEndTimeAllBuilders(),
    statistics.CaptureBuildDurationAllBuilders(),
    statistics.CaptureBuildResultsAllBuilders(),
    statistics.CapturePropertyAllBuilders('tests_.*', regex=True),
    statistics.CaptureDataAllBuilders('test-timings'),
    statistics.CaptureDataAllBuilders('coverage'),
    statistics.CaptureStepDurationAllBuilders(),
    statistics.CaptureBuildQueueTimeAllBuilders(),
    statistics.CaptureTestResultsAllBuilders(),
]
"""
_COMPILE_SECONDS = {"unit-tests": 0.3, "integration": 1.0, "docs": 0.2}
_STEPS = """\
[
    Pause(0.1, name='checkout'), Pause({compile}, name='compile'), RunTests(),
    Pause(0.1, name='upload'),
]"""
# demo-worker-2 runs one build at a time and is the only worker of 'integration':
# its builds wait in the queue (see the queue-time field)
_WORKERS: dict[str, dict[str, Any]] = {"demo-worker-1": {}, "demo-worker-2": {"max_builds": 1}}
_BUILDER_WORKERS = {"integration": ["demo-worker-2"]}


def demo_master_cfg(
    pb_port: int, store: str, influx: InfluxTarget | None = None, www_port: int | None = None
) -> str:
    """The demo's master.cfg text; with ``www_port``, the web UI and its Statistics page on 127.0.0.1."""
    backends = [f"statistics.SQLiteStorageService({store!r}, captures)"]
    if influx is not None:
        backends.append(
            f"statistics.InfluxStorageService({influx.host_url!r}, "
            f"{influx.port}, 'demo', 'demo', {influx.db!r}, captures, name='InfluxDB')"
        )
    services = (
        "c['services'].append(statistics.StatsService(\n"
        f"    storage_backends=[{', '.join(backends)}], name='StatsService'))"
    )
    if www_port is not None:
        services += (
            f"\nc['buildbotURL'] = 'http://127.0.0.1:{int(www_port)}/'\n"
            f"c['www'] = {{'port': 'tcp:{int(www_port)}:interface=127.0.0.1', "
            "'plugins': {'wsgi_dashboards': [statistics.StatsDashboard()]}}"
        )
    return make_master_cfg(
        {name: _STEPS.format(compile=_COMPILE_SECONDS[name]) for name in DEMO_BUILDERS},
        pb_port=pb_port,
        workers=_WORKERS,
        builder_workers=_BUILDER_WORKERS,
        scheduler="branch-per-builder",
        header=_HEADER,
        services=services,
        change_auth=CHANGE_AUTH,
        title="stats demo",
    )


# -- checks before anything starts ---------------------------------------------


def _module_missing(name: str) -> bool:
    """True if ``name`` cannot be imported (also when ``sys.modules`` blocks it with None)."""
    try:
        return importlib.util.find_spec(name) is None
    except (ImportError, ValueError):  # a parent package missing, or a module without __spec__
        return True


def _check_dependencies(influx: bool, ui: bool = False) -> None:
    needed = [("buildbot", "buildbot"), ("buildbot_worker", "buildbot-worker")]
    if influx:
        needed.append(("influxdb", "influxdb"))
    if ui:
        needed += [("buildbot_www", "buildbot-www"), ("buildbot_wsgi_dashboards", "buildbot-wsgi-dashboards")]
    missing = [dist for module, dist in needed if _module_missing(module)]
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        names = " and ".join(missing)
        command = "pip install " + " ".join(missing)
        raise DemoError(f"the demo needs {names}, which {verb} not installed: {command}")


def _check_port(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            raise DemoError(
                f"port {port} on 127.0.0.1 is busy ({e.strerror}); pick another with --port"
            ) from None


def _check_dir(workdir: Path) -> None:
    if not workdir.exists():
        return
    if not workdir.is_dir():
        raise DemoError(f"--dir {workdir} exists and is not a directory")
    try:
        empty = next(workdir.iterdir(), None) is None
    except OSError as e:
        raise DemoError(f"--dir {workdir} cannot be read ({e.strerror or e})") from None
    if not empty:
        raise DemoError(f"--dir {workdir} exists and is not empty; pass an empty or new directory")


def parse_influx_url(url: str) -> InfluxTarget:
    """``http://host:port/db`` -> InfluxTarget (port 8086 and db ``buildbot_stats_demo`` by default)."""
    parts = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    try:
        port = parts.port or 8086
    except ValueError:
        port = 0
    if parts.scheme not in ("http", "https") or not parts.hostname or not port:
        raise DemoError(f"--influxdb takes a URL like http://127.0.0.1:8086/dbname, not {url!r}")
    db = parts.path.strip("/") or "buildbot_stats_demo"
    return InfluxTarget(parts.scheme, parts.hostname, port, db)


# urllib must not send loopback requests through an HTTP proxy from the environment
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _influx_query(influx: InfluxTarget, query: str, db: str | None = None) -> list[dict[str, Any]]:
    """POST one InfluxQL query; return its ``results``.  Raises DemoError if unreachable or refused."""
    params = {"q": query, **({"db": db} if db else {})}
    try:
        with _OPENER.open(
            f"{influx.base_url}/query", data=urllib.parse.urlencode(params).encode(), timeout=5
        ) as response:
            body = json.loads(response.read() or b"{}")
    except (OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise DemoError(f"cannot reach InfluxDB at {influx.base_url} ({reason})") from None
    results: list[dict[str, Any]] = body.get("results", [])
    errors = [str(r["error"]) for r in results if "error" in r]
    if "error" in body or errors:
        raise DemoError(f"InfluxDB at {influx.base_url} refused {query!r}: {body.get('error') or errors[0]}")
    return results


def _create_influx_db(influx: InfluxTarget) -> None:
    db = influx.db.replace("\\", "\\\\").replace('"', '\\"')
    _influx_query(influx, f'CREATE DATABASE "{db}"')


# -- progress ------------------------------------------------------------------


def _stored_builds(store: Path) -> int:
    """Builds whose result reached the store (0 while the file does not exist yet)."""
    if not store.exists():
        return 0
    try:
        conn = sqlite3.connect(f"{store.as_uri()}?mode=ro", uri=True, timeout=5)
        try:
            row = conn.execute("SELECT COUNT(*) FROM points WHERE series LIKE '%-build-results'").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return 0
    return int(row[0])


def _influx_builds(influx: InfluxTarget) -> int:
    """Builds whose result reached InfluxDB (0 while it cannot tell)."""
    try:
        results = _influx_query(influx, 'SELECT count("results") FROM /-build-results$/', influx.db)
    except DemoError:
        return 0
    return sum(
        int(values[1])
        for result in results
        for series in result.get("series", [])
        for values in series.get("values", [])
    )


def _wait(what: str, count: Callable[[], int], target: int, timeout: float) -> None:
    """Poll ``count()`` until it reaches ``target``; a DemoError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while count() < target:
        if time.monotonic() > deadline:
            raise DemoError(f"{what}: not all {target} builds arrived within {timeout:.0f}s")
        time.sleep(0.2)


# -- signals and processes -----------------------------------------------------


class _Terminated(BaseException):
    """SIGTERM arrived (raised from the signal handler, like KeyboardInterrupt for SIGINT)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum: int, frame: FrameType | None) -> NoReturn:
    raise _Terminated(signum)


_Handler = Union[Callable[[int, Optional[FrameType]], Any], int, signal.Handlers, None]


@contextlib.contextmanager
def _signal_handlers(handlers: Mapping[signal.Signals, _Handler]) -> Iterator[None]:
    """Install ``handlers`` for the duration (only possible in the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, handler) for signum, handler in handlers.items()}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            if handler is not None:  # None: a handler not set from Python, which cannot be put back
                signal.signal(signum, handler)


def _leftover_processes(workdir: Path, basedir: Path) -> list[int]:
    """This interpreter's processes (not this one) left by a master start cut short.

    The master daemon runs in ``basedir``; ``buildbot start`` (and its forked
    child, before it changes directory) runs in ``workdir`` with ``basedir`` as
    an argument.  A person's shell or editor in the directory is never matched.
    """
    python = os.path.realpath(sys.executable)
    found = []
    for pid in procfs.pids():
        try:
            if os.path.realpath(f"/proc/{pid}/exe") != python:
                continue
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:  # gone, a zombie, or not ours to look at
            continue
        cwd = procfs.cwd(pid)
        if cwd is None:
            continue
        if cwd.is_relative_to(basedir) or (cwd.is_relative_to(workdir) and os.fsencode(basedir) in argv):
            found.append(pid)
    return found


def _kill_leftovers(workdir: Path, basedir: Path, timeout: float = 10.0) -> None:
    """SIGKILL what a master start cut short by Ctrl-C left behind (RealMaster.close did the rest)."""
    deadline = time.monotonic() + timeout
    while (pids := _leftover_processes(workdir, basedir)) and time.monotonic() < deadline:
        procfs.kill_all(pids, timeout=0.05)


# -- the demo ------------------------------------------------------------------


def _builds_per_builder(builds: int) -> list[int]:
    per_builder = [builds // len(DEMO_BUILDERS)] * len(DEMO_BUILDERS)
    for i in range(builds % len(DEMO_BUILDERS)):
        per_builder[i] += 1
    return per_builder


def _run_builds(
    master: RealMaster,
    builds: int,
    store: Path,
    influx: InfluxTarget | None,
    progress: Progress,
    keep_running: bool = False,
) -> None:
    """Start the master, run the builds, wait until their statistics are stored, stop it (unless
    ``keep_running``)."""
    log = master.basedir / "twistd.log"
    master.create()
    master.start()
    progress.say(f"master running (pid {master.pid()}, PB port {master.pb_port}); sending {builds} changes")
    for name, n in zip(DEMO_BUILDERS, _builds_per_builder(builds)):
        if n:
            master.sendchange(n, branch=name)
    deadline = time.monotonic() + 60 + 10 * builds
    while True:
        done = sum(1 for b in master.builds() if b["complete_at"] is not None)
        progress.update(done)
        if done >= builds:
            break
        if not master.is_running():
            raise DemoError(f"the master stopped unexpectedly; see {log}")
        if time.monotonic() > deadline:
            raise DemoError(f"builds did not finish in time; see {log}")
        time.sleep(0.2)
    progress.finish()
    _wait(f"statistics in {store} (see {log})", lambda: _stored_builds(store), builds, 30)
    if influx is not None:
        _wait(f"statistics in InfluxDB (see {log})", lambda: _influx_builds(influx), builds, 60)
    if not keep_running:
        master.stop()


def _serve_ui(master: RealMaster, www_port: int, out: TextIO) -> None:
    """Keep the master and its web UI running until Ctrl-C, SIGTERM or the master's end."""
    out.write(f"\nthe Statistics page: http://127.0.0.1:{www_port}/#/stats  (Ctrl-C stops the demo)\n")
    out.flush()
    try:
        while master.is_running():
            time.sleep(0.5)
    except (KeyboardInterrupt, _Terminated):  # the way to end a demo with --ui: not an interruption
        pass
    out.write("stopping the demo master ...\n")


def _master_failed(error: RealMasterError, master: RealMaster, port: int) -> DemoError:
    """One line for a failed master command, naming the cause when the log tells it."""
    log_text = master.log_text()
    if "CannotListenError" in log_text or "Address already in use" in log_text:
        return DemoError(f"port {port} on 127.0.0.1 is busy; pick another with --port")
    first = str(error).splitlines()[0].rstrip(":")
    return DemoError(f"the demo master failed: {first}; see {master.basedir / 'twistd.log'}")


def run_demo(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """Run the demo; return the exit code.

    :raises DemoError: a problem the user can fix (nothing is left running).
    :raises DemoInterrupted: Ctrl-C or SIGTERM (nothing is left running).
    """
    builds = int(args.builds)
    if builds < 1:
        raise DemoError("--builds must be at least 1")
    influx = parse_influx_url(args.influxdb) if getattr(args, "influxdb", None) else None
    ui = bool(getattr(args, "ui", False))
    _check_dependencies(influx is not None, ui)
    port = getattr(args, "port", None) or free_port()
    www_port = free_port() if ui else None
    _check_port(port)
    workdir = Path(args.dir).absolute() if args.dir else None
    if workdir is not None:
        _check_dir(workdir)
    if influx is not None:
        _create_influx_db(influx)

    if workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix="buildbot-stats-demo-"))
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DemoError(f"cannot create --dir {workdir} ({e.strerror or e})") from None
    workdir = workdir.resolve()
    basedir = workdir / "master"
    store = workdir / STORE_NAME
    master = RealMaster(basedir, demo_master_cfg(port, str(store), influx, www_port), change_auth=CHANGE_AUTH)
    progress = Progress(builds, out)
    progress.say(f"buildbot-stats demo: {builds} builds on a real master in {basedir}")
    ignore = {signal.SIGINT: signal.SIG_IGN, signal.SIGTERM: signal.SIG_IGN}
    with _signal_handlers({signal.SIGTERM: _raise_terminated}):
        try:
            _run_builds(master, builds, store, influx, progress, keep_running=www_port is not None)
            if www_port is not None:
                progress.finish()
                _serve_ui(master, www_port, out)
        except RealMasterError as e:
            raise _master_failed(e, master, port) from None
        except (KeyboardInterrupt, _Terminated) as e:
            progress.finish()
            progress.say("interrupted: stopping the demo master ...")
            signum = e.signum if isinstance(e, _Terminated) else signal.SIGINT
            raise DemoInterrupted(signum, workdir) from None
        finally:
            progress.finish()  # a DemoError's line goes below the progress line
            with _signal_handlers(ignore):  # a second Ctrl-C must not cut the clean-up short
                master.close()
                _kill_leftovers(workdir, basedir)

    from buildbot_stats.cli.summary import StoreError, format_table, summarize_path

    try:
        table = format_table(summarize_path(str(store)))
    except StoreError as e:
        raise DemoError(f"cannot summarise the statistics: {e}") from None
    out.write("\n" + table + "\n")
    out.write(f"statistics: {store}\nmaster:     {basedir}\n")
    if influx is not None:
        out.write(f"InfluxDB:   {influx.base_url} database {influx.db}\n")
    out.write(f"next: buildbot-stats summary {store} --html report.html\n")
    return 0
