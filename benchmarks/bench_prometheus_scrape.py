#!/usr/bin/env python
"""Prometheus endpoint benchmark: how long the reactor is held while scrapes are answered.

Run from the repository root::

    python -m benchmarks.bench_prometheus_scrape            # all scenarios, about a minute
    python -m benchmarks.bench_prometheus_scrape --only big
    PYTHONPATH=/path/to/other/checkout python benchmarks/bench_prometheus_scrape.py   # the same on other code

In this process a real reactor serves a ``PrometheusStorageService`` on loopback while a
``LoopingCall`` every 5 ms records how late it runs (the reactor's worst delay); the scrapes
come from a client subprocess, so that their reading costs this process nothing.

* ``fleet``: 200 builders and 100 workers, histograms filled (100 builds per builder, 10
  steps each, queue times, test counts) and a live-state snapshot of that size; five scrapes
  two seconds apart.  Goals (issue 21): the reactor blocked at most 10 ms (the CPU time of
  its longest stretch in the endpoint's code; the heartbeat's worst delay is printed too,
  beside the machine's idle noise), each answer within 500 ms.
* ``big``: a step posted 200,000 distinct field names (issue 22); one scrape with the default
  ``max_stat_series`` and one with the cap raised so that all of them are served (~12 MB),
  as the code before the cap served them.
* ``stall``: on that ~12 MB endpoint, 20 clients send a scrape and never read it; for
  ``--hold`` seconds the reactor's delay and this process's memory are recorded, then one
  normal scrape.

Figures are printed; exit status 0 when the ``fleet`` goals are met, 1 otherwise.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import time
from typing import Any

from twisted.internet import defer, task, utils
from twisted.protocols import basic

from buildbot_stats.point import Point
from buildbot_stats.storage_backends import prometheus
from buildbot_stats.storage_backends.prometheus import PrometheusStorageService

try:  # absent from code before issue 21
    from buildbot_stats.capture.live import BuilderLive, LiveSnapshot
except ImportError:  # pragma: no cover
    LiveSnapshot = None  # type: ignore[assignment, misc]

IN_REACTOR: InReactor | None = None
RESULTS = ("success", "success", "success", "warnings", "failure", "exception")
CLIENT = r"""
import json, socket, sys, time, urllib.request
mode, url = sys.argv[1], sys.argv[2]
if mode == "scrape":
    count, gap, out = int(sys.argv[3]), float(sys.argv[4]), []
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    for _ in range(count):
        time.sleep(gap)
        started = time.perf_counter()
        try:
            with opener.open(url, timeout=30) as resp:
                size = len(resp.read())
        except OSError as e:
            size = repr(e)
        out.append([time.perf_counter() - started, size])
    print(json.dumps(out))
else:  # stall: open N connections, send a scrape, never read, close after the hold
    count, hold = int(sys.argv[3]), float(sys.argv[4])
    host, port = url.split("/")[2].split(":")
    socks = []
    for _ in range(count):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect((host, int(port)))
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        socks.append(s)
    time.sleep(hold)
    for s in socks:
        s.close()
    print(json.dumps([]))
"""


class Service:
    """What the backend reads from a StatsService: the reactor, counters, a live snapshot."""

    name = "StatsService"

    def __init__(self, reactor: Any, live: Any = None) -> None:
        self.master = type("Master", (), {"reactor": reactor})
        self.live = live

    def backend_counters(self) -> dict[str, dict[str, int]]:
        return {"prom": {"captured": 10, "written": 10, "retried": 0, "dropped": 0, "pending": 0}}

    def live_snapshot(self) -> Any:
        return self.live


class Heartbeat:
    """A 5 ms LoopingCall: how late it ran since ``reset`` (worst, 99th percentile), the largest RSS."""

    def __init__(self) -> None:
        self.late: list[float] = []
        self.rss = 0
        self.last = time.perf_counter()
        self.loop = task.LoopingCall(self._beat)
        self.loop.start(0.005)

    def _beat(self) -> None:
        now = time.perf_counter()
        self.late.append(now - self.last - 0.005)
        self.last = now
        self.rss = max(self.rss, rss_mb())

    def reset(self) -> None:
        self.late, self.rss, self.last = [], rss_mb(), time.perf_counter()

    @property
    def worst(self) -> float:
        return max(self.late, default=0.0)

    def figures(self) -> str:
        p99 = sorted(self.late)[int(len(self.late) * 0.99)] if self.late else 0.0
        worst = f"worst reactor delay {self.worst * 1000:.1f} ms (99th percentile {p99 * 1000:.1f} ms)"
        if IN_REACTOR is None:
            return worst
        return f"{worst}, in the endpoint's code at most {IN_REACTOR.take() * 1000:.1f} ms CPU"


class InReactor:
    """The longest single stretch of CPU time the reactor's thread spent in the endpoint's own code
    (page, answer, each piece sent): what a scrape blocks the reactor for, whatever else the machine
    runs (the heartbeat's figures also count the waits for a CPU and for the GIL)."""

    def __init__(self) -> None:
        self.longest = self.taken = 0.0
        for owner, name in (
            (getattr(prometheus, "_Endpoint", None), "render_GET"),  # this code
            (getattr(prometheus, "_Endpoint", None), "_rendered"),
            (getattr(prometheus, "_Pages", None), "render_GET"),  # the code before
            (basic.FileSender, "resumeProducing"),
        ):
            if owner is not None and hasattr(owner, name):
                setattr(owner, name, self._timed(getattr(owner, name)))

    def _timed(self, function: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.thread_time()
            try:
                return function(*args, **kwargs)
            finally:
                self.longest = max(self.longest, time.thread_time() - started)

        return timed

    def take(self) -> float:
        self.taken, self.longest = self.longest, 0.0
        return self.taken


def rss_mb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) // 1024 for line in f if line.startswith("VmRSS"))


def backend(**kwargs: Any) -> PrometheusStorageService:
    """A backend on any free port; keywords this code does not know are left out."""
    known = inspect.signature(PrometheusStorageService).parameters
    return PrometheusStorageService(port=0, name="prom", **{k: v for k, v in kwargs.items() if k in known})


def fleet_points(builders: int, workers: int, builds: int) -> list[Point]:
    points = []
    for b in range(builders):
        name = f"builder-{b:03}"
        for n in range(builds):
            tags = {"builder_name": name, "build_number": str(n), "worker": f"worker-{(b + n) % workers:03}"}
            points.append(Point(f"{name}-build-times", {"duration": 30.0 + n, "queue-time": n % 7}, tags))
            points.append(Point(f"{name}-build-results", {"result": RESULTS[n % len(RESULTS)]}, tags))
            points.append(Point(f"{name}-test-results", {"tests_passed": 100, "tests_failed": n % 3}, tags))
            for s in range(10):
                points.append(
                    Point(f"{name}-step-times", {"duration": 0.2 * s * n}, {**tags, "step_name": f"s{s}"})
                )
    return points


def fleet_live(builders: int, workers: int) -> Any:
    if LiveSnapshot is None:
        return None
    return LiveSnapshot(
        workers_connected=workers,
        workers_busy=workers // 2,
        builders={f"builder-{b:03}": BuilderLive(b % 4, 12.5 * b, b % 3, 60.0 * b) for b in range(builders)},
        worker_builds_running={f"worker-{w:03}": w % 3 for w in range(workers)},
        worker_builds_total={(f"worker-{w:03}", r): w + 1 for w in range(workers) for r in set(RESULTS)},
    )


@defer.inlineCallbacks
def scrapes(reactor: Any, beat: Heartbeat, url: str, count: int, gap: float) -> Any:
    beat.reset()
    out = yield utils.getProcessOutput(
        sys.executable, ["-c", CLIENT, "scrape", url, str(count), str(gap)], env=os.environ
    )
    return json.loads(out), beat.worst * 1000, beat.figures(), beat.rss


@defer.inlineCallbacks
def serve(reactor: Any, b: PrometheusStorageService, live: Any = None) -> Any:
    b.startBackend(Service(reactor, live))
    yield task.deferLater(reactor, 0.1, lambda: None)
    return b.url


def report(what: str, answers: list, figures: str, rss: int) -> None:
    times = sorted(t for t, _ in answers)
    sizes = {s for _, s in answers}
    print(
        f"{what}: answers {', '.join(f'{t * 1000:.0f}' for t in times)} ms; body {sizes}; "
        f"{figures}; RSS up to {rss} MB"
    )


@defer.inlineCallbacks
def main(reactor: Any, options: argparse.Namespace) -> Any:
    global IN_REACTOR
    IN_REACTOR = InReactor()
    beat = Heartbeat()
    ok = True
    print(f"code: {prometheus.__file__}")
    beat.reset()
    yield task.deferLater(reactor, options.hold, lambda: None)
    print(f"idle, {options.hold:.0f} s (the machine's noise): {beat.figures()}")
    if options.only in (None, "fleet"):
        b = backend(captures=[])
        b.thd_postStatsValues(fleet_points(200, 100, 100))
        url = yield serve(reactor, b, fleet_live(200, 100))
        answers, delay, figures, rss = yield scrapes(reactor, beat, url, 5, 2.0)
        report("fleet (200 builders, 100 workers)", answers, figures, rss)
        ok = IN_REACTOR.taken <= 0.010 and max(t for t, _ in answers) <= 0.5
        print(
            f"  goals (endpoint's code <= 10 ms in the reactor, answers <= 500 ms): {'met' if ok else 'NO'}"
        )
        yield b.stopBackend()
    fields = {f"test_{i:06}": 1.5 for i in range(200_000)}
    if options.only in (None, "big"):
        for what, kwargs in (("big, default cap", {}), ("big, cap 250,000", {"max_stat_series": 250_000})):
            b = backend(captures=[], **kwargs)
            b.thd_postStatsValues([Point("b1-tests", fields, {"builder_name": "b1"})])
            url = yield serve(reactor, b)
            answers, delay, figures, rss = yield scrapes(reactor, beat, url, 1, 0.5)
            report(what, answers, figures, rss)
            yield b.stopBackend()
    if options.only in (None, "stall"):
        b = backend(captures=[], max_stat_series=250_000)
        b.thd_postStatsValues([Point("b1-tests", fields, {"builder_name": "b1"})])
        url = yield serve(reactor, b)
        beat.reset()
        before = rss_mb()
        args = ["-c", CLIENT, "stall", url, "20", str(options.hold)]
        yield utils.getProcessOutput(sys.executable, args, env=os.environ)
        print(
            f"stall (20 clients never reading a ~12 MB answer, {options.hold:.0f} s): {beat.figures()}; "
            f"RSS {before} MB before, up to {beat.rss} MB"
        )
        answers, delay, figures, rss = yield scrapes(reactor, beat, url, 1, 0.5)
        report("  then one scrape", answers, figures, rss)
        yield b.stopBackend()
    beat.loop.stop()
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=("fleet", "big", "stall"))
    parser.add_argument("--hold", type=float, default=10.0, help="seconds idle, and the stalled clients stay")
    options = parser.parse_args()
    task.react(main, [options])
