"""One write in flight per backend, with real threads, while the server fails in every way it can.

Buildbot's test reactor runs thread calls at once; here a child process runs a
``StatsService`` on a real reactor with real threads (the next batch is read
from the spool while one is posted), posting 60,000 values through ``store()``
into a real ``influxd`` behind a fault-injecting proxy.  Meanwhile the test
restarts ``influxd``, then makes the proxy answer 503 and drop connections.
Every value must be stored, none dropped, the counters must add up, the child
must not hang, and there must never have been two writes in flight at once.
(InfluxDB merges a point written twice, so a batch sent twice would not show
here: the unit tests, ``OneWriteInFlightTests``, check that no batch is.)

influxd missing: skipped, or an error with ``CI=true`` (``require_influxd``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.support.faultproxy import FaultProxy
from tests.support.influxd import InfluxServer, require_influxd

N = 60_000
CHUNK = 500
DB = "bbstats_one_in_flight"
ROOT = Path(__file__).resolve().parents[2]


def child(spec: dict[str, Any]) -> None:
    """In the child: store ``N`` values, wait until all are written, print the counters (JSON)."""
    import threading

    from buildbot.util import service
    from twisted.internet import defer, reactor, task

    from buildbot_stats import statistics
    from buildbot_stats.delivery import queue as delivery

    in_flight = [0, 0]  # now, most
    lock = threading.Lock()
    post = delivery.thd_post_batch

    def counting_post(*args: Any) -> Any:
        with lock:
            in_flight[0] += 1
            in_flight[1] = max(in_flight[1], in_flight[0])
        try:
            return post(*args)
        finally:
            with lock:
                in_flight[0] -= 1

    delivery.thd_post_batch = counting_post  # type: ignore[assignment]

    class Consumer:
        def stopConsuming(self) -> None:
            pass

    class MQ:  # the values come through store(), as the captures hand them over
        def startConsuming(self, callback: Any, routingKey: Any) -> Any:
            return defer.succeed(Consumer())

    class Master(service.MasterService):
        def __init__(self) -> None:
            super().__init__()
            self.reactor = reactor
            self.basedir = spec["basedir"]
            self.mq = MQ()

    async def main() -> None:
        capture = statistics.CaptureDataAllBuilders("bench")
        backend = statistics.InfluxStorageService(
            "127.0.0.1", spec["port"], "root", "root", DB, captures=[capture], name="influx"
        )
        master = Master()
        svc = statistics.StatsService(
            storage_backends=[backend], name="stats", batch_size=1000, max_retry_delay=0.5
        )
        await svc.setServiceParent(master)
        await master.startService()
        for start in range(0, N, CHUNK):
            for i in range(start, start + CHUNK):
                svc.store(capture, {"i": i}, "one-in-flight", {"builder_name": "b"})
            await task.deferLater(reactor, 0.005, lambda: None)  # a steady stream, for a while
        queue = svc.queues["influx"]
        deadline = time.monotonic() + 120
        while queue.counters.written + queue.counters.dropped < N and time.monotonic() < deadline:
            await task.deferLater(reactor, 0.05, lambda: None)
        counters = queue.counters.as_dict()
        await master.stopService()
        print(json.dumps({"counters": counters, "most_in_flight": in_flight[1]}), flush=True)

    task.react(lambda _reactor: defer.ensureDeferred(main()))


def test_one_write_in_flight_through_restarts_503s_and_dropped_connections(tmp_path: Path) -> None:
    require_influxd()
    server = InfluxServer(tmp_path / "influxd")
    server.start()
    try:
        server.create_database(DB)
        with FaultProxy(server.url) as proxy:
            spec = {"port": proxy.port, "basedir": str(tmp_path / "master")}
            os.makedirs(spec["basedir"])
            code = f"import json, sys; from {__name__} import child; child(json.loads(sys.argv[1]))"
            path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
            env = dict(os.environ, PYTHONPATH=path)
            proc = subprocess.Popen(
                [sys.executable, "-c", code, json.dumps(spec)],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:

                def outage() -> None:
                    server.stop()
                    time.sleep(1.0)
                    server.start()

                # after so many requests: influxd down for a second, then 503s, then dropped connections
                faults = [
                    (5, outage),
                    (15, lambda: proxy.fail_next(3, status=503)),
                    (25, lambda: proxy.drop_next(2)),
                ]
                deadline = time.monotonic() + 150
                while faults and proc.poll() is None and time.monotonic() < deadline:
                    if proxy.request_count >= faults[0][0]:
                        faults.pop(0)[1]()
                    time.sleep(0.01)
                out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.communicate()
            assert proc.returncode == 0, err[-3000:]
            assert not faults, f"the child ended before every fault was injected: {faults}"
            seen = proxy.requests
        result = json.loads([line for line in out.splitlines() if line.startswith("{")][-1])
        counters = result["counters"]
        assert (counters["written"], counters["dropped"], counters["pending"]) == (N, 0, 0), counters
        assert counters["retried"] > 0
        assert result["most_in_flight"] == 1
        assert any(r.status == 503 and not r.forwarded for r in seen)
        assert any(r.status is None for r in seen)  # the dropped connections
        rows = server.query_checked('SELECT COUNT("i"), SUM("i") FROM "one-in-flight"', DB)
        assert rows[0]["series"][0]["values"][0][1:] == [N, N * (N - 1) // 2]
    finally:
        server.stop()
