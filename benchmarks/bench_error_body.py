#!/usr/bin/env python
"""What a huge error answer and a trickling server cost an InfluxDB backend (issue 22, items 2 and 3).

Run from the repository root::

    python -m benchmarks.bench_error_body               # 200 MB error body, trickle with timeout=1
    python -m benchmarks.bench_error_body --mb 50

A loopback server (``tests/support/misbehaving_http.py``, in this process) answers each write
with HTTP 500 and a body of ``--mb`` MB made while it is sent; each backend (1.x, 2.x, 3) writes
one point to it from a child process of its own, which reports how far its peak resident memory
rose above what it used before the write (``VmHWM`` after ``/proc/self/clear_refs``: Linux).
Then the server trickles a whole 204 answer one byte every 0.5 s and the child reports how long
the write was held with ``timeout=1``. Exit status 1 if a write held more than 4 s or the memory
rose by more than 32 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.support.misbehaving_http import Answer, MisbehavingServer  # noqa: E402


def _kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1))  # type: ignore[union-attr]


def child(api: str, url: str) -> None:
    """One write of one point, as a master's thread would do it: print the figures as JSON."""
    from buildbot_stats.point import Point
    from buildbot_stats.storage_backends.influxdb_client import InfluxStorageService
    from buildbot_stats.storage_backends.influxdb_http import InfluxDB2StorageService, InfluxDB3StorageService

    def backend(**kwargs: object) -> object:
        if api == "v1":
            host, port = url.rsplit(":", 1)
            return InfluxStorageService(host, int(port), "u", "pw", "db", [], "bench", **kwargs)
        if api == "v2":
            return InfluxDB2StorageService(url, "o", "b", "tok", [], "bench", **kwargs)
        return InfluxDB3StorageService(url, "db", "tok", [], "bench", **kwargs)

    point = [Point("m", {"v": 1}, {"t": "x"}, 1)]
    errors = backend()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak is now the current size
    before = _kib("VmRSS")
    message = ""
    try:
        errors.thd_postStatsValues(point)  # type: ignore[attr-defined]
    except Exception as e:
        message = str(e)
    growth = (_kib("VmHWM") - before) / 1024
    sys.stdout.write(json.dumps({"growth_mb": growth, "message_chars": len(message)}) + "\n")
    sys.stdout.flush()
    started = time.monotonic()
    try:
        backend(timeout=1).thd_postStatsValues(point)  # type: ignore[attr-defined]
    except Exception as e:
        message = str(e)
    print(json.dumps({"held_s": time.monotonic() - started, "trickle_error": message}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=200, help="size of the error body in MB")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return 0
    server = MisbehavingServer()
    ok = True
    try:
        for api in ("v1", "v2", "v3"):
            writes = 0

            def answer(request: object) -> Answer:
                nonlocal writes
                writes += 1
                if writes == 1:
                    return Answer(500, {"Content-Type": "text/html"}, streamed=args.mb * 2**20)
                return Answer(204, {"X-Padding": "p" * 70}, trickle=0.5)

            server.answer = answer
            cmd = [sys.executable, "-m", "benchmarks.bench_error_body", "--child", api, server.url]
            out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, check=True)
            memory, trickle = (json.loads(line) for line in out.stdout.splitlines()[-2:])
            print(
                f"{api}: {args.mb} MB error body: peak memory +{memory['growth_mb']:.1f} MB, "
                f"error message {memory['message_chars']} chars; "
                f"a trickling server held the write {trickle['held_s']:.2f}s (timeout=1)"
            )
            ok = ok and memory["growth_mb"] <= 32 and trickle["held_s"] <= 4
    finally:
        server.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
