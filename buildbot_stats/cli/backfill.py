"""``buildbot-stats backfill``: the statistics of builds that finished before the plugin was there.

The master's ``master.cfg`` is loaded the way ``buildbot checkconfig`` loads
it; its StatsService (with its captures and backends) is configured against a
*replay master*: Buildbot's own :class:`~buildbot.master.BuildMaster`, never
started, whose database connector and data API read the master's database
(read-only: only the data API's getters run) and whose MQ is a private
:class:`ReplayMQ`.  For every finished build in the range, the messages the
live master produced are produced again from the database through Buildbot's
own resource types (so they carry exactly what the data API puts in a live
message): ``test_result_sets/<id>/completed`` and the step's
``builds/<buildid>/steps/<stepid>/finished`` for each step, then the build's
``finished``.  The service's own consumers run its captures, and its own
delivery queues (spool in memory only: the live master's spool is left alone)
write their points to its backends with their batch methods, retries included.

Build captures stamp their points with the build's ``complete_at``, so a point
backfilled again, or backfilled after it was captured live, merges with the
stored one (same series, tags and time) instead of adding a second.  Values
posted with ``yieldMetricsValue`` are not in the database and are not
backfilled.

Progress is saved after each chunk of builds whose points every backend has
accepted, in ``stats-backfill.json`` in the master's directory (the last build
id done, per service and backend), so a run stopped with Ctrl-C continues
where it stopped.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

from buildbot.mq.simple import SimpleMQ
from twisted.internet import defer, task

from buildbot_stats.cli import argtypes
from buildbot_stats.cli.master_db import (
    MasterError,
    database_url,
    load_master_cfg,
    one_line,
    shown_url,
)
from buildbot_stats.cli.output import Progress, Table, table_lines

__all__ = [
    "DEFAULT_RATE",
    "STATE_FILE",
    "BackfillError",
    "ReplayMQ",
    "parse_date",
    "run_backfill",
]

#: builds replayed per second unless ``--rate`` says otherwise: a handful of
#: small queries each, a light load next to a running master
DEFAULT_RATE = 20.0
#: the progress file, in the master's directory
STATE_FILE = "stats-backfill.json"
STATE_VERSION = 1
#: builds replayed between two checkpoints (at most; also every CHECKPOINT_SECONDS)
CHUNK_BUILDS = 200
CHECKPOINT_SECONDS = 2.0
POLL_SECONDS = 0.05
WAIT_NOTICE_SECONDS = 5.0
#: seconds between two progress lines when stderr is not a terminal
PROGRESS_SECONDS = 10.0


#: a problem the user can fix (missing master.cfg, no StatsService, unusable database): one line
BackfillError = MasterError


class BackfillInterrupted(Exception):  # noqa: N818 - not an error: the user asked for it
    """Ctrl-C or SIGTERM; progress up to the last checkpoint is saved."""


def parse_date(text: str) -> datetime.datetime:
    """``YYYY-MM-DD`` or an ISO 8601 date and time; without a zone it is UTC."""
    try:
        value = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a date: {text!r} (use YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS][+HH:MM])"
        ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.timezone.utc)
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``buildbot-stats backfill``."""
    parser.add_argument("basedir", metavar="MASTER_DIR", help="the master's directory (holding master.cfg)")
    parser.add_argument(
        "--since", type=parse_date, metavar="DATE", help="only builds that finished at or after DATE (UTC)"
    )
    parser.add_argument(
        "--until", type=parse_date, metavar="DATE", help="only builds that finished before DATE (UTC)"
    )
    parser.add_argument(
        "--builder",
        action="append",
        metavar="NAME",
        dest="builders",
        help="only builds of this builder (repeat for several)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="count the builds and points per builder, write nothing",
    )
    parser.add_argument(
        "--rate",
        type=argtypes.positive_float,
        default=DEFAULT_RATE,
        metavar="BUILDS_PER_SEC",
        help=f"replay at most this many builds per second (default {DEFAULT_RATE:g})",
    )
    parser.add_argument(
        "--restart",
        action="store_true",
        help=f"ignore the progress saved in MASTER_DIR/{STATE_FILE} and start from the first build",
    )


# -- the replay MQ ---------------------------------------------------------------


class ReplayMQ(SimpleMQ):  # type: ignore[misc]
    """Buildbot's simple MQ, remembering what its consumers return so that it can wait for them."""

    def __init__(self) -> None:
        super().__init__()
        self._pending: list[defer.Deferred] = []

    def startConsuming(self, callback: Any, filter: tuple, persistent_name: Any = None) -> defer.Deferred:
        def remembered(routingKey: tuple, data: Any) -> Any:
            d = callback(routingKey, data)
            if isinstance(d, defer.Deferred):
                self._pending.append(d)
            return d

        return super().startConsuming(remembered, filter, persistent_name)

    async def drain(self) -> None:
        """Wait until every consumer called so far is done (consumers log their own errors)."""
        while self._pending:
            pending, self._pending = self._pending, []
            await defer.DeferredList(pending, consumeErrors=True)


# -- config ------------------------------------------------------------------------


def load_master_config(basedir: str) -> tuple[Any, list[Any]]:
    """The master's config and its StatsServices (BackfillError when there are none)."""
    from buildbot_stats.stats_service import StatsService

    master_cfg = load_master_cfg(basedir)
    services = [s for s in master_cfg.services.values() if isinstance(s, StatsService)]
    if not services:
        raise BackfillError(
            f"{os.path.join(basedir, 'master.cfg')} configures no buildbot_stats StatsService"
        )
    return master_cfg, services


# -- state file ----------------------------------------------------------------------


def _selection_key(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "since": args.since.isoformat() if args.since else None,
        "until": args.until.isoformat() if args.until else None,
        "builders": sorted(set(args.builders or ())),
    }


class StateFile:
    """``stats-backfill.json``: per service and selection, each backend's target and last build id done.

    A backend is known by its key (its name) and its ``repr`` (which names
    where it writes, never a password): pointing a backend elsewhere starts
    that backend over.  Each selection (``--since``/``--until``/``--builder``)
    has its own progress.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.data: dict[str, Any] = {"version": STATE_VERSION, "services": {}}
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            raise BackfillError(f"cannot read {path}: {e} (remove it or use --restart)") from None
        if (
            isinstance(data, dict)
            and data.get("version") == STATE_VERSION
            and isinstance(data.get("services"), dict)
        ):
            self.data = data

    @staticmethod
    def _selection(selection: dict[str, Any]) -> str:
        return json.dumps(selection, sort_keys=True)

    def last_done(self, service: str, selection: dict[str, Any], backend: str, target: str) -> int:
        """The last build id done for this backend (0: none)."""
        runs = self.data["services"].get(service)
        done = runs.get(self._selection(selection), {}).get(backend) if isinstance(runs, dict) else None
        if not isinstance(done, dict) or done.get("target") != target:
            return 0
        return int(done.get("last_buildid", 0))

    def record(
        self, service: str, selection: dict[str, Any], backend: str, target: str, last_buildid: int
    ) -> None:
        before = self.last_done(service, selection, backend, target)
        runs = self.data["services"].setdefault(service, {})
        backends = runs.setdefault(self._selection(selection), {})
        backends[backend] = {"target": target, "last_buildid": max(before, last_buildid)}

    def save(self) -> None:
        tmp = f"{self.path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.data, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, self.path)


def backend_target(backend: Any) -> str:
    """What identifies where a backend writes: its repr, without an object address."""
    return re.sub(r" at 0x[0-9a-fA-F]+>$", ">", repr(backend))


# -- the replay ----------------------------------------------------------------------


@dataclass
class _Tally:
    builds: dict[str, int] = field(default_factory=dict)  # builder -> builds
    points: dict[str, int] = field(default_factory=dict)  # builder -> points (all backends)
    per_backend: dict[str, int] = field(default_factory=dict)  # "service/backend" -> points


class BuildSelection:
    """The builds a run replays: those of the selected builders and dates, finished, oldest first."""

    def __init__(self, master: Any, args: argparse.Namespace) -> None:
        self.master = master
        self.args = args
        self._builder_names: dict[int, str] = {}
        #: the lowest id of a build in the selection that had not finished when the builds were listed
        self.first_running: int | None = None

    async def builder_ids(self) -> list[int] | None:
        names = self.args.builders
        if not names:
            return None
        builders = await self.master.data.get(("builders",))
        by_name = {b["name"]: b["builderid"] for b in builders}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise BackfillError(f"no builder named {', '.join(map(repr, missing))} in the database")
        return sorted(by_name[n] for n in names)

    async def finished_builds(self, after: int) -> list[int]:
        """Ids of the finished builds in the selection, after build id ``after``, oldest first."""
        import sqlalchemy as sa

        builderids = await self.builder_ids()
        builds = self.master.db.model.builds
        q = sa.select(builds.c.id).where(builds.c.complete_at.isnot(None), builds.c.id > after)
        if self.args.since is not None:
            q = q.where(builds.c.complete_at >= int(self.args.since.timestamp()))
        if self.args.until is not None:
            q = q.where(builds.c.complete_at < int(self.args.until.timestamp()))
        if builderids is not None:
            q = q.where(builds.c.builderid.in_(builderids))
        q = q.order_by(builds.c.id)
        # a build still running has a lower id than builds finished after it
        running = sa.select(sa.func.min(builds.c.id)).where(
            builds.c.complete_at.is_(None), builds.c.id > after
        )
        if builderids is not None:
            running = running.where(builds.c.builderid.in_(builderids))

        def thd(conn: Any) -> tuple[list[int], int | None]:
            first_running = conn.execute(running).scalar()
            return [int(row[0]) for row in conn.execute(q)], first_running

        ids, first_running = await self.master.db.pool.do(thd)
        self.first_running = None if first_running is None else int(first_running)
        return ids

    async def builder_name(self, builderid: int) -> str:
        name = self._builder_names.get(builderid)
        if name is None:
            info = await self.master.data.get(("builders", builderid))
            name = info["name"] if info else str(builderid)
            self._builder_names[builderid] = name
        return name


def written_counts(services: list[Any]) -> dict[str, int]:
    """Points each backend has written so far, by ``service/backend``."""
    return {
        f"{svc.name}/{key}": counters["written"]
        for svc in services
        for key, counters in svc.backend_counters().items()
    }


def print_dry_run(tally: _Tally, out: IO[str]) -> None:
    builds = sum(tally.builds.values())
    points = sum(tally.points.values())
    out.write(f"dry run: {builds} builds, {points} points would be written (nothing was written)\n")
    rows = [[name, str(n), str(tally.points.get(name, 0))] for name, n in sorted(tally.builds.items())]
    for line in table_lines(Table(["builder", "builds", "points"], rows)):
        out.write(f"  {line}\n")
    for key in sorted(tally.per_backend):
        out.write(f"  backend {key}: {tally.per_backend[key]} points\n")


def print_done(done: int, written: dict[str, int], services: list[Any], out: IO[str]) -> None:
    total = sum(written.values())
    per = ", ".join(f"{k} {v}" for k, v in sorted(written.items()))
    out.write(f"backfilled {done} builds: {total} points written ({per})\n")
    for svc in services:
        for key, counters in sorted(svc.backend_counters().items()):
            if counters["dropped"]:
                out.write(f"  backend {svc.name}/{key}: {counters['dropped']} points rejected (see above)\n")


class Backfill:
    """One run: opens the database, configures the services, replays, checkpoints."""

    selected: BuildSelection  # set by open_database

    def __init__(self, args: argparse.Namespace, reactor: Any, out: IO[str], err: IO[str]) -> None:
        self.args = args
        self.reactor = reactor
        self.out = out
        self.err = err
        self.basedir = os.path.abspath(args.basedir)
        self.selection = _selection_key(args)
        self.stop_requested = 0
        self.master: Any = None
        self.mq: Any = None
        self.services: list[Any] = []
        self.tally = _Tally()
        self._current_builder = "?"
        self.progress: Progress | None = None
        #: while the database is opened its errors are logged by Buildbot too: one line is enough
        self.quiet_errors = False
        self.url = ""

    # -- setting up --------------------------------------------------------------

    async def open_database(self, master_cfg: Any) -> None:
        from buildbot.db import exceptions as db_exceptions
        from buildbot.master import BuildMaster

        # never started: no master row, no masterid (so a cluster's master filter
        # takes every build as local), its MQ replaced below, only the data API's getters used
        master = BuildMaster(self.basedir, reactor=self.reactor)
        master.config = master_cfg
        url = self.url = await database_url(master, master_cfg, self.basedir)
        shown = shown_url(url)
        self.quiet_errors = True
        try:
            await master.db.setup(check_version=True, verbose=False)
        except db_exceptions.DatabaseNotReadyError:
            raise BackfillError(
                f"the database {shown} is not a current Buildbot database (run buildbot upgrade-master)"
            ) from None
        except Exception as e:
            raise BackfillError(f"cannot open the database {shown}: {one_line(e, url)}") from None
        finally:
            self.quiet_errors = False
        self.mq = ReplayMQ()
        master.mq = self.mq  # the data API's events go to the replay MQ, nowhere else
        self.master = master
        self.selected = BuildSelection(master, self.args)

    async def configure_services(self, services: list[Any]) -> None:
        """Each StatsService configured as in master.cfg, but with its spool in memory."""
        for svc in services:
            await svc.setServiceParent(self.master)
            args, kwargs = svc.config_arguments
            kwargs = {**kwargs, "spool_path": None}  # never the live master's spool file
            await svc.reconfigService(*args, **kwargs)
            svc.configured = True  # so that starting it does not configure it again from master.cfg
            await svc.startService()
            original_store = svc.store

            def store(
                capture: Any,
                post_data: Any,
                series_name: str,
                context: Any,
                time: Any = None,
                _svc: Any = svc,
                _store: Callable[..., Any] = original_store,
            ) -> Any:
                self._count(_svc, capture)
                if self.args.dry_run:
                    return defer.succeed(None)
                return _store(capture, post_data, series_name, context, time)

            svc.store = store  # counts per builder and backend, then the service's own store
            self.services.append(svc)

    def _count(self, svc: Any, capture: Any) -> None:
        keys = svc._queues.route_keys(capture)  # the queue keys its records name, cached per capture
        builder = self._current_builder
        self.tally.points[builder] = self.tally.points.get(builder, 0) + len(keys)
        for key in keys:
            spool_key = f"{svc.name}/{key}"
            self.tally.per_backend[spool_key] = self.tally.per_backend.get(spool_key, 0) + 1

    def backends(self, svc: Any) -> list[tuple[str, str]]:
        """(key, target) of each backend of ``svc``."""
        from buildbot_stats.delivery.queue import backend_keys

        backends = svc.registeredStorageServices
        return list(zip(backend_keys(backends), map(backend_target, backends)))

    # -- replaying one build -------------------------------------------------------------

    async def replay(self, buildid: int) -> None:
        """Produce the build's finishing messages as the live master did, and wait for the captures."""
        data = self.master.data
        build = await data.get(("builds", buildid))
        if build is None:  # deleted meanwhile
            return
        builder = await self.selected.builder_name(build["builderid"])
        self._current_builder = builder
        steps = await data.get(("builds", buildid, "steps")) or []
        sets = await data.get(("builds", buildid, "test_result_sets")) or []
        sets_of_step: dict[Any, list[dict[str, Any]]] = {}
        for s in sorted(sets, key=lambda s: s["test_result_setid"]):
            sets_of_step.setdefault(s.get("stepid"), []).append(s)
        rtypes = data.rtypes
        for step in sorted(steps, key=lambda s: (s["number"], s["stepid"])):
            # live: a step's result sets complete while it runs, before it finishes
            for s in sets_of_step.pop(step["stepid"], []):
                if s.get("complete"):
                    rtypes.test_result_set.produceEvent(s, "completed")
            if step.get("complete_at") is not None:
                rtypes.step.produceEvent(step, "finished")
        for rest in sets_of_step.values():
            for s in rest:
                if s.get("complete"):
                    rtypes.test_result_set.produceEvent(s, "completed")
        rtypes.build.produceEvent(build, "finished")
        await self.mq.drain()
        self.tally.builds[builder] = self.tally.builds.get(builder, 0) + 1
        self._current_builder = "?"

    # -- checkpoints ---------------------------------------------------------------------

    async def wait_delivered(self) -> bool:
        """Wait until every backend has accepted what was queued; False when told to stop twice."""
        started = time.monotonic()
        noticed = False
        while True:
            pending = {
                f"{svc.name}/{key}": counters["pending"]
                for svc in self.services
                for key, counters in svc.backend_counters().items()
                if counters["pending"]
            }
            if not pending:
                return True
            if self.stop_requested > 1:
                return False
            if not noticed and time.monotonic() - started > WAIT_NOTICE_SECONDS:
                noticed = True
                waiting = ", ".join(f"{k} ({n} points)" for k, n in sorted(pending.items()))
                self._say(f"waiting for {waiting} to accept the points (retrying; Ctrl-C twice to give up)")
            await task.deferLater(self.reactor, POLL_SECONDS, lambda: None)

    def _say(self, text: str) -> None:
        if self.progress is not None:
            self.progress.say(text)
        else:
            self.err.write(text + "\n")
            self.err.flush()

    # -- the run -------------------------------------------------------------------------

    async def run(self, master_cfg: Any, services: list[Any], state: StateFile) -> int:
        os.chdir(self.basedir)  # backends' relative paths are relative to it, as in the master
        await self.open_database(master_cfg)
        try:
            await self.configure_services(services)
            if self.args.restart or self.args.dry_run:
                after = 0
            else:
                after = min(
                    (
                        state.last_done(svc.name, self.selection, key, target)
                        for svc in self.services
                        for key, target in self.backends(svc)
                    ),
                    default=0,
                )
            buildids = await self.selected.finished_builds(after)
            if after and not self.args.dry_run:
                self.err.write(f"continuing after build id {after} ({STATE_FILE}; --restart starts over)\n")
            written_before = written_counts(self.services)
            label = "dry run" if self.args.dry_run else "backfill"
            self.progress = Progress(len(buildids), self.err, label, every=PROGRESS_SECONDS)
            interval = 1.0 / self.args.rate
            start = time.monotonic()
            last_checkpoint = start
            since_checkpoint = 0
            done = skipped = 0
            last_done_id = after
            for buildid in buildids:
                if self.stop_requested:
                    break
                try:
                    await self.replay(buildid)
                except (OSError, OverflowError, ValueError) as e:  # e.g. complete_at = 2**63-1
                    self._say(f"buildbot-stats: skipping build id {buildid}: Buildbot cannot read it ({e})")
                    skipped += 1
                done += 1
                since_checkpoint += 1
                last_done_id = buildid
                now = time.monotonic()
                if not self.args.dry_run and (
                    since_checkpoint >= CHUNK_BUILDS or now - last_checkpoint >= CHECKPOINT_SECONDS
                ):
                    if await self.wait_delivered():
                        self._checkpoint(state, last_done_id)
                    since_checkpoint = 0
                    last_checkpoint = time.monotonic()
                # bounded rate: never ahead of start + done / rate
                ahead = start + done * interval - time.monotonic()
                if ahead > 0 and not self.stop_requested:
                    await task.deferLater(self.reactor, ahead, lambda: None)
                self.progress.update(done)
            if not self.args.dry_run and (await self.wait_delivered()):
                self._checkpoint(state, last_done_id)
            self.progress.finish()
            if self.args.dry_run:
                print_dry_run(self.tally, self.out)
                return 0
            written = {k: v - written_before.get(k, 0) for k, v in written_counts(self.services).items()}
            print_done(done - skipped, written, self.services, self.out)
            if self.stop_requested:
                raise BackfillInterrupted(
                    f"interrupted after {done} of {len(buildids)} builds; "
                    "run the same command again to continue"
                )
            return 0
        finally:
            await self.close()

    def _checkpoint(self, state: StateFile, last_done_id: int) -> None:
        first_running = self.selected.first_running
        if first_running is not None:
            # a rerun must not skip a build that was running: it continues before it
            last_done_id = min(last_done_id, first_running - 1)
        for svc in self.services:
            for key, target in self.backends(svc):
                state.record(svc.name, self.selection, key, target, last_done_id)
        try:
            state.save()
        except OSError as e:
            raise BackfillError(f"cannot write {state.path}: {e.strerror or e}") from None

    async def close(self) -> None:
        for svc in self.services:
            try:
                await svc.stopService()
            except Exception as e:  # pragma: no cover - say it, do not hide the run's result
                self.err.write(f"buildbot-stats: stopping {svc.name}: {e}\n")
        if self.master is not None and getattr(self.master.db, "pool", None) is not None:
            await self.master.db.pool.stop()


def _log_observer(backfill: Backfill) -> Callable[[dict[str, Any]], None]:
    """Show the plugin's own log lines (capture and delivery problems) on stderr."""
    from twisted.python import log

    def observe(event: dict[str, Any]) -> None:
        why = event.get("why")
        if event.get("isError") and (backfill.quiet_errors or str(why).endswith(" on DB")):
            return  # reported as one BackfillError line instead (a DB error is raised after this)
        if event.get("isError"):
            failure = event.get("failure")
            text = f"{why}: " if why else ""
            text += failure.getErrorMessage() if failure is not None else log.textFromEventDict(event) or ""
            backfill._say(f"buildbot-stats: error: {text}")
            return
        text = log.textFromEventDict(event) or ""
        if text.startswith("buildbot_stats:") and "configuring StatsService" not in text:
            backfill._say(text)

    return observe


def run_backfill(args: argparse.Namespace, out: IO[str] = sys.stdout, err: IO[str] = sys.stderr) -> int:
    """Run the backfill in a reactor of its own; return the exit code (BackfillError raised for 2)."""
    basedir = os.path.abspath(args.basedir)
    master_cfg, services = load_master_config(basedir)  # before the reactor: mistakes cost no reactor
    state = StateFile(os.path.join(basedir, STATE_FILE))

    from twisted.internet import reactor as global_reactor

    reactor: Any = global_reactor
    backfill = Backfill(args, reactor, out, err)
    outcome: dict[str, Any] = {}
    observer = _log_observer(backfill)

    def on_signal(signum: int, frame: Any) -> None:
        backfill.stop_requested += 1
        reactor.callFromThread(lambda: None)  # wake the reactor
        if backfill.stop_requested == 1:
            backfill._say("stopping after this build (Ctrl-C again to stop without waiting for the backends)")

    def go() -> None:
        d = defer.ensureDeferred(backfill.run(master_cfg, services, state))

        def done(result: Any) -> None:
            outcome["result"] = result
            reactor.stop()

        d.addBoth(done)

    old_int = signal.signal(signal.SIGINT, on_signal)
    old_term = signal.signal(signal.SIGTERM, on_signal)
    # our observer only: Twisted would print the errors it buffered to stderr at exit
    from twisted.logger import LegacyLogObserverWrapper, globalLogBeginner

    legacy: Any = observer
    wrapped: Any = LegacyLogObserverWrapper(legacy)
    globalLogBeginner.beginLoggingTo([wrapped], redirectStandardIO=False)
    try:
        reactor.callWhenRunning(go)
        reactor.run(installSignalHandlers=False)
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)
    result = outcome.get("result")
    from twisted.python.failure import Failure

    if isinstance(result, Failure):
        import sqlalchemy as sa

        if isinstance(result.value, sa.exc.DBAPIError):  # e.g. a missing table: one line, not a traceback
            raise BackfillError(f"cannot read the database: {one_line(result.value, backfill.url)}")
        result.raiseException()
    return int(result or 0)
