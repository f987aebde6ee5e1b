"""Live state as the data API says it, next to ``StatsService.live_snapshot()``: for the tests.

:func:`data_api_figures` reads workers, build requests and builds through a master's data
API (the fake master's in unit tests, a real one's in e2e tests); :func:`snapshot_figures`
puts a :class:`~buildbot_stats.capture.live.LiveSnapshot` in the same terms.  In a real
master, :class:`LiveProbe` (a service of master.cfg) writes both to a JSON file every
``period`` seconds, read at one moment on the master's reactor, so a test can compare them.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from buildbot.data.resultspec import Filter
from buildbot.util import service
from twisted.internet import defer, task


@defer.inlineCallbacks
def data_api_figures(master: Any) -> Any:
    """Workers connected to ``master`` and busy, requests pending and builds running per
    builder configured on it, and the builds each connected worker runs (ages aside)."""
    get, own, not_done = master.data.get, master.masterid, Filter("complete", "eq", [False])
    builders = yield get(("builders",))
    workers = yield get(("workers",))
    requests = yield get(("buildrequests",), filters=[not_done])
    builds = yield get(("builds",), filters=[not_done])
    names = {b["builderid"]: b["name"] for b in builders if own in b["masterids"]}
    connected = {
        w["workerid"]: w["name"] for w in workers if own in [c["masterid"] for c in w["connected_to"]]
    }
    running = [b for b in builds if b["masterid"] == own]
    per_worker = {name: sum(1 for b in running if b["workerid"] == wid) for wid, name in connected.items()}
    return {
        "workers_connected": len(connected),
        "workers_busy": sum(1 for n in per_worker.values() if n),
        "worker_builds_running": per_worker,
        "requests_pending": {
            name: sum(1 for r in requests if r["builderid"] == bid and not r["claimed"])
            for bid, name in names.items()
        },
        "builds_running": {
            name: sum(1 for b in running if b["builderid"] == bid) for bid, name in names.items()
        },
    }


def snapshot_figures(snap: Any) -> dict[str, Any]:
    """A LiveSnapshot in the terms of :func:`data_api_figures`."""
    return {
        "workers_connected": snap.workers_connected,
        "workers_busy": snap.workers_busy,
        "worker_builds_running": dict(snap.worker_builds_running),
        "requests_pending": {name: b.requests_pending for name, b in snap.builders.items()},
        "builds_running": {name: b.builds_running for name, b in snap.builders.items()},
    }


class LiveProbe(service.BuildbotService):
    """Writes ``{"time", "data_api", "snapshot", "ages", "totals"}`` to ``path`` every ``period`` s."""

    name = "LiveProbe"

    def checkConfig(self, path: str, stats_name: str = "StatsService", period: float = 0.25) -> None:  # type: ignore[override]
        pass

    def reconfigService(self, path: str, stats_name: str = "StatsService", period: float = 0.25) -> Any:  # type: ignore[override]
        self.path, self.stats_name = path, stats_name
        if getattr(self, "_loop", None) is None:
            self._loop = task.LoopingCall(self._probe)
            self._loop.clock = self.master.reactor
            self._loop.start(period, now=False).addErrback(lambda f: f.printTraceback())
        return defer.succeed(None)

    def stopService(self) -> Any:
        if getattr(self, "_loop", None) is not None and self._loop.running:
            self._loop.stop()
        return super().stopService()

    @defer.inlineCallbacks
    def _probe(self) -> Any:
        figures = yield data_api_figures(self.master)
        stats = self.master.namedServices.get(self.stats_name)
        snap = stats.live_snapshot() if stats is not None else None  # the same reactor turn
        report = {"time": time.time(), "data_api": figures, "snapshot": None}
        if snap is not None:
            report["snapshot"] = snapshot_figures(snap)
            report["ages"] = {
                name: [b.oldest_pending_seconds, b.longest_running_seconds]
                for name, b in snap.builders.items()
            }
            report["totals"] = [[w, r, n] for (w, r), n in snap.worker_builds_total.items()]
        tmp = f"{self.path}.tmp"
        with open(tmp, "w") as f:
            json.dump(report, f)
        os.replace(tmp, self.path)
