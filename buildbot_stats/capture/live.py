"""Live state: workers, pending build requests and running builds now, as a :class:`LiveSnapshot`, kept
from Buildbot's MQ events (constant work each) and recounted from the data API at start, reconfig and
every ``RECOUNT_PERIOD`` s: a dead master's requests are unclaimed silently."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from types import SimpleNamespace
from typing import Any

from buildbot.data import resultspec
from buildbot.process.results import Results
from twisted.internet import defer, task
from twisted.python.failure import Failure

from buildbot_stats.burst_log import BurstLog
from buildbot_stats.point import is_int, to_ns

LIVE_SERIES = "buildbot-live"
RECOUNT_PERIOD = 60.0
_EVENTS = [("workers", None, None), ("buildrequests", None, None), ("builds", None, "new")]
_EVENTS += [("builds", None, "finished"), ("builders", None, "started"), ("builders", None, "stopped")]


@dataclass(frozen=True)
class BuilderLive:
    """One builder now; every figure is 0 when nothing waits or runs."""

    requests_pending: int = 0
    oldest_pending_seconds: float = 0.0
    builds_running: int = 0
    longest_running_seconds: float = 0.0


@dataclass(frozen=True)
class LiveSnapshot:
    """A copy taken on the reactor, safe to read from any thread."""

    workers_connected: int = 0
    workers_busy: int = 0
    #: every configured builder (zeros when idle); a builder removed by a reconfig is absent
    builders: Mapping[str, BuilderLive] = field(default_factory=dict)
    #: per connected worker name: the builds it runs now
    worker_builds_running: Mapping[str, int] = field(default_factory=dict)
    #: (worker name, result name such as "success") -> builds finished since the master started
    worker_builds_total: Mapping[tuple[str, str], int] = field(default_factory=dict)


def result_name(code: Any) -> str:
    """``success``, ``failure``... (buildbot.process.results), ``unknown`` for anything else."""
    return Results[code] if is_int(code, 0, len(Results) - 1) else "unknown"


def live_points(snapshot: LiveSnapshot) -> list[tuple[dict[str, Any], dict[str, str]]]:
    """The ``buildbot-live`` points of a snapshot, as (fields, tags): the workers, then each builder."""
    workers = {"workers_connected": snapshot.workers_connected, "workers_busy": snapshot.workers_busy}
    return [(workers, {}), *((asdict(b), {"builder_name": n}) for n, b in sorted(snapshot.builders.items()))]


class _State:
    """What the events change; a recount builds a new one (and replays the events it overlapped)."""

    def __init__(self) -> None:
        self.builders: dict[int, str] = {}  # configured on this master: id -> name
        self.pending: dict[int, tuple[int, float]] = {}  # request id -> (builder id, submitted)
        self.running: dict[int, tuple[int, Any, float]] = {}  # build id -> (builder, worker id, started)
        self.connected: set[int] = set()  # worker ids connected to this master
        self.names: dict[int, str] = {}  # worker id -> name (kept: a build may end after its worker left)


class LiveState:
    """Keeps one master's live figures while a backend asks for them (see :meth:`configure`)."""

    def __init__(self, master: Any) -> None:
        self.master = master
        self.state = _State()
        #: (worker name, result name) -> builds of this master finished since the keeper started
        self.totals: Counter[tuple[str, str]] = Counter()
        self._journal: list[tuple[tuple, Any]] | None = None  # events seen while a recount runs
        self._consumers: list[Any] = []
        self._loops: list[task.LoopingCall] = []  # the recount's, then the series' (one per interval)
        self._log = BurstLog(master.reactor)

    @classmethod
    @defer.inlineCallbacks
    def configure(cls, service: Any, keeper: LiveState | None) -> Any:
        """The keeper ``service``'s backends want (None if none does), recounted; the
        ``buildbot-live`` series scheduled for the backends with a ``live_interval``."""
        backends = service.registeredStorageServices
        intervals: dict[float, list[Any]] = {}
        for backend in backends:
            if type(seconds := getattr(backend, "live_interval", 0)) in (int, float) and seconds > 0:
                intervals.setdefault(float(seconds), []).append(backend)
        wanted = intervals or any(getattr(b, "wants_live_state", False) is True for b in backends)
        wanted = wanted and getattr(service.master, "masterid", None) is not None  # not backfill's master
        if keeper is not None and (not wanted or keeper.master is not service.master):
            keeper = yield keeper.stop()  # fires with None
        if not wanted:
            return None
        if keeper is None:
            keeper = cls(service.master)
            for key in _EVENTS:
                keeper._consumers.append((yield service.master.mq.startConsuming(keeper.event, key)))
            keeper._loops = [keeper._every(RECOUNT_PERIOD, keeper.recount)]
        yield keeper.recount()
        for loop in keeper._loops[1:]:
            loop.stop()
        # service.store routes by a capture's parent_svcs: the backends of one interval
        series = [(s, keeper._store, service, SimpleNamespace(parent_svcs=b)) for s, b in intervals.items()]
        keeper._loops[1:] = [keeper._every(*args) for args in series]
        return keeper

    def _every(self, seconds: float, f: Any, *args: Any) -> task.LoopingCall:
        loop = task.LoopingCall(f, *args)
        loop.clock = self.master.reactor
        loop.start(seconds, now=False)
        return loop

    def _store(self, service: Any, route: Any) -> None:
        now = service.clock.now_ns()
        for fields, tags in live_points(self.snapshot()):
            service.store(route, fields, LIVE_SERIES, tags, now).addErrback(self._failed, "store")

    @defer.inlineCallbacks
    def stop(self) -> Any:
        for loop in self._loops:
            loop.stop()
        for consumer in self._consumers:
            yield consumer.stopConsuming()
        self._log.flush()

    def _failed(self, failure: Any, what: str) -> None:
        self._log.failed((what, failure.type), f"live state: {what} failed: {failure.getErrorMessage()}")

    def event(self, key: tuple, msg: Any) -> None:
        if self._journal is not None:
            self._journal.append((key, msg))
        try:
            self._apply(self.state, key, msg)
        except Exception:
            self._failed(Failure(), f"event {key[0]} {key[-1]}")

    def _apply(self, s: _State, key: tuple, msg: Any) -> None:
        own, kind, event = self.master.masterid, key[0], key[-1]
        if kind == "buildrequests":
            if event in ("new", "unclaimed") and not msg["claimed"] and not msg["complete"]:
                s.pending[int(key[1])] = (msg["builderid"], to_ns(msg["submitted_at"]) / 1e9)  # WAMP: numbers
            elif event != "new":  # claimed, complete, cancel
                s.pending.pop(int(key[1]), None)
        elif kind == "builds" and msg.get("masterid", own) == own:
            if event == "new":
                started = to_ns(msg["started_at"]) / 1e9
                s.running[msg["buildid"]] = (msg["builderid"], msg["workerid"], started)
            else:
                s.running.pop(msg["buildid"], None)
                if s is self.state:  # counted once, not again by a replay
                    worker = s.names.get(msg["workerid"], str(msg["workerid"]))
                    self.totals[(worker, result_name(msg.get("results")))] += 1
        elif kind == "workers":
            s.names[msg["workerid"]] = msg["name"]
            here = any(c.get("masterid") == own for c in msg.get("connected_to") or ())
            (s.connected.add if here else s.connected.discard)(msg["workerid"])
        elif kind == "builders" and msg.get("masterid") == own:
            s.builders.pop(msg["builderid"], None)
            if event == "started":
                s.builders[msg["builderid"]] = msg["name"]

    @defer.inlineCallbacks
    def recount(self) -> Any:
        """Rebuild the figures from the data API; events meanwhile are applied again on top."""
        if self._journal is not None:
            return
        self._journal = []
        try:
            s, own, get, where = _State(), self.master.masterid, self.master.data.get, resultspec.Filter
            not_done = where("complete", "eq", [False])
            builders = yield get(("builders",))
            workers = yield get(("workers",))
            requests = yield get(("buildrequests",), filters=[not_done, where("claimed", "eq", [False])])
            builds = yield get(("builds",), filters=[not_done, where("masterid", "eq", [own])])
            s.builders = {b["builderid"]: b["name"] for b in builders if own in (b.get("masterids") or ())}
            found = [(("workers", 0, "recount"), w) for w in workers]
            found += [(("buildrequests", r["buildrequestid"], "new"), r) for r in requests]
            for key, msg in found + [(("builds", 0, "new"), b) for b in builds] + self._journal:
                try:
                    self._apply(s, key, msg)
                except Exception:  # a bad event was said when it arrived
                    pass
            self.state = s
        except Exception as e:
            self._failed(Failure(e), "recount")
        finally:
            self._journal = None

    def snapshot(self) -> LiveSnapshot:
        """The figures now: O(pending requests + running builds + builders + workers)."""
        s, now = self.state, self.master.reactor.seconds()
        per_builder = {bid: [0, now, 0, now] for bid in s.builders}
        for bid, submitted in s.pending.values():
            if (b := per_builder.get(bid)) is not None:
                b[0], b[1] = b[0] + 1, min(b[1], submitted)
        per_worker = dict.fromkeys(s.connected, 0)
        for bid, wid, started in s.running.values():
            if (b := per_builder.get(bid)) is not None:
                b[2], b[3] = b[2] + 1, min(b[3], started)
            if wid in per_worker:
                per_worker[wid] += 1
        return LiveSnapshot(
            workers_connected=len(per_worker),
            workers_busy=sum(1 for n in per_worker.values() if n),
            builders={
                s.builders[bid]: BuilderLive(n, max(now - oldest, 0.0), r, max(now - longest, 0.0))
                for bid, (n, oldest, r, longest) in per_builder.items()
            },
            worker_builds_running={s.names.get(w, str(w)): n for w, n in per_worker.items()},
            worker_builds_total=dict(self.totals),
        )
