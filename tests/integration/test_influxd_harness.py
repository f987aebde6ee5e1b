"""The test harness itself: a private influxd and the fault-injecting proxy."""

from __future__ import annotations

import os
import socket
import time
import unittest
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import influxd
from tests.support.faultproxy import FaultProxy
from tests.support.influxd import (
    InfluxServer,
    fresh_database,
    require_influxd,
    shared_server,
)
from tests.support.ports import free_port

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture(scope="module")
def shared() -> InfluxServer:
    require_influxd()
    return shared_server()


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[InfluxServer]:
    require_influxd()
    with InfluxServer(tmp_path / "influx") as server:
        yield server


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _post(url: str, body: bytes) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method="POST")
    try:
        with _OPENER.open(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.read()


def test_require_influxd_skips_locally_fails_in_ci(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(influxd, "find_influxd", lambda: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(unittest.SkipTest):
        influxd.require_influxd()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(RuntimeError, match="CI requires it"):
        influxd.require_influxd()


def test_write_and_read_back(shared: InfluxServer) -> None:
    db = fresh_database(shared)
    assert db in shared.databases()
    status, body = shared.write_lines(
        db,
        'builds,builder=b1 duration=1.5,result=0i,name="x y" 1000000000\n'
        "builds,builder=b2 duration=2.0,result=2i 2000000000\n",
    )
    assert (status, body) == (204, "")
    assert shared.measurements(db) == ["builds"]
    assert shared.points("builds", db) == [
        {
            "time": 1000000000,
            "builder": "b1",
            "duration": 1.5,
            "result": 0,
            "name": "x y",
        },
        # A whole float comes back as a JSON integer: 2.0 -> 2.
        {"time": 2000000000, "builder": "b2", "duration": 2, "result": 2, "name": None},
    ]
    assert shared.field_keys("builds", db) == {
        "duration": "float",
        "name": "string",
        "result": "integer",
    }
    shared.drop_database(db)
    assert db not in shared.databases()


def test_write_precision_and_missing_database(shared: InfluxServer) -> None:
    db = fresh_database(shared)
    assert shared.write_lines(db, "m v=1i 5", precision="s") == (204, "")
    assert shared.points("m", db) == [{"time": 5_000_000_000, "v": 1}]
    status, body = shared.write_lines("no_such_db_xyz", "m v=1i")
    assert status == 404
    assert "database not found" in body


def test_quoted_measurement_names(shared: InfluxServer) -> None:
    db = fresh_database(shared)
    assert shared.write_lines(db, 'we\\ ird\\,"m v=1i 1') == (204, "")
    assert shared.measurements(db) == ['we ird,"m']
    assert shared.points('we ird,"m', db) == [{"time": 1, "v": 1}]


def test_restart_keeps_data_and_port(own_server: InfluxServer) -> None:
    server = own_server
    port, url = server.port, server.url
    assert url == f"http://127.0.0.1:{port}"
    server.create_database("keep")
    assert server.write_lines("keep", "m v=7i 123") == (204, "")
    first_pid = server.pid

    server.restart()
    assert (server.port, server.url) == (port, url)
    assert server.pid != first_pid
    assert server.points("m", "keep") == [{"time": 123, "v": 7}]

    # The outage pattern: stop, do something, start again.
    server.stop()
    assert _refused(port)
    server.start()
    assert server.port == port
    assert server.points("m", "keep") == [{"time": 123, "v": 7}]


def test_stop_refuses_connections_and_leaves_no_process(tmp_path: Path) -> None:
    require_influxd()
    server = InfluxServer(tmp_path)
    server.start()
    pid, port = server.pid, server.port
    assert pid is not None and server.ping()
    server.stop()
    server.stop()  # idempotent
    assert not server.is_running() and server.pid is None
    assert not _pid_alive(pid)
    assert _refused(port)
    assert not server.ping()
    server.close()  # also fine when stopped


def test_fault_proxy_throttles_then_forwards(shared: InfluxServer) -> None:
    db = fresh_database(shared)
    with FaultProxy(shared.url) as proxy:
        assert proxy.url == f"http://127.0.0.1:{proxy.port}"
        proxy.fail_next(2)
        write_url = f"{proxy.url}/write?db={db}"
        answers = [_post(write_url, b"m v=1i 42") for _ in range(3)]
        assert answers == [
            (503, b'{"error":"request throttled"}'),
            (503, b'{"error":"request throttled"}'),
            (204, b""),
        ]
        seen = proxy.requests
        assert proxy.request_count == 3
        assert [(r.method, r.path, r.body) for r in seen] == [("POST", f"/write?db={db}", b"m v=1i 42")] * 3
        assert [(r.status, r.forwarded) for r in seen] == [
            (503, False),
            (503, False),
            (204, True),
        ]
    assert shared.points("m", db) == [{"time": 42, "v": 1}]
    assert _refused(proxy.port)


def test_fault_proxy_relays_errors_drops_and_custom_faults(
    shared: InfluxServer,
) -> None:
    db = fresh_database(shared)
    with FaultProxy(shared.url) as proxy:
        # Upstream errors are relayed untouched, with their headers.
        status, body = _post(f"{proxy.url}/write?db={db}", b"m v=1i\nm v=")
        assert status == 400 and b"unable to parse" in body
        with _OPENER.open(f"{proxy.url}/ping", timeout=10) as resp:
            assert resp.status == 204
            assert resp.headers["X-Influxdb-Version"]

        proxy.fail_next(1, status=500, body=b"boom", headers={"X-Test": "1"})
        assert _post(f"{proxy.url}/write?db={db}", b"m v=2i") == (500, b"boom")

        proxy.drop_next(1)
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            _post(f"{proxy.url}/write?db={db}", b"m v=3i")
        assert proxy.requests[-1].status is None
        assert proxy.pending_faults == 0

    # Stop and start again: same port, forwarding resumes.
    port = proxy.port
    proxy.start()
    try:
        assert proxy.port == port
        assert _post(f"{proxy.url}/write?db={db}", b"m v=4i 4")[0] == 204
    finally:
        proxy.stop()
    assert {"time": 4, "v": 4} in shared.points("m", db)


def test_fault_proxy_upstream_down_and_delay() -> None:
    dead_port = free_port()  # nothing listens there
    with FaultProxy(f"http://127.0.0.1:{dead_port}", timeout=5) as proxy:
        status, body = _post(f"{proxy.url}/write?db=x", b"m v=1i")
        assert status == 502 and b"upstream failed" in body
        assert proxy.requests[-1].forwarded is False

        proxy.delay_next(1, 0.3)
        proxy.fail_next(1, status=204, body=b"")
        started = time.monotonic()
        assert _post(f"{proxy.url}/write?db=x", b"m v=1i")[0] == 502
        assert time.monotonic() - started >= 0.3
        assert _post(f"{proxy.url}/write?db=x", b"m v=1i") == (204, b"")
        assert proxy.request_count == 3
