"""The Prometheus endpoint over real loopback sockets: renders off the reactor, shares a render,
limits its connections and cuts off clients that do not read (issue 22, item 4)."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, protocol, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.trial import unittest

from buildbot_stats.point import Point
from buildbot_stats.storage_backends import prometheus
from buildbot_stats.storage_backends.prometheus import PrometheusStorageService

pytestmark = pytest.mark.unit


class Service:
    """What the backend reads from a StatsService (its reactor is the real one)."""

    name = "StatsService"
    master = type("Master", (), {"reactor": reactor})

    def backend_counters(self) -> dict[str, dict[str, int]]:
        return {}


class Client(protocol.Protocol):
    """A raw connection that records what it receives and when it is closed."""

    def __init__(self, send: bytes = b"", read: bool = True) -> None:
        self.send, self.read, self.data = send, read, b""
        self.lost: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.send)
        if not self.read:
            self.transport.pauseProducing()  # never reads its answer

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any) -> None:
        self.lost.callback(None)


def sleep(seconds: float) -> defer.Deferred:
    return task.deferLater(reactor, seconds, lambda: None)


class ServingTests(unittest.TestCase):
    def setUp(self) -> None:
        prometheus._ENDPOINTS.clear()
        self.backends: list[PrometheusStorageService] = []

    @defer.inlineCallbacks
    def tearDown(self) -> Any:
        for backend in self.backends:
            yield backend.stopBackend()
        prometheus._ENDPOINTS.clear()
        yield sleep(0.05)  # the server side of closed connections goes too

    def start(self, **kwargs: Any) -> prometheus._Endpoint:
        backend = PrometheusStorageService(port=0, captures=[], **kwargs)
        backend.startBackend(Service())
        self.backends.append(backend)
        return backend._get_endpoint()

    def port(self, endpoint: prometheus._Endpoint) -> int:
        return int(endpoint.port.getHost().port)

    @defer.inlineCallbacks
    def get(self, endpoint: prometheus._Endpoint, path: str = "/metrics") -> Any:
        """(status, lower-case headers, body) of an HTTP/1.0 GET (the server closes when done)."""
        client = Client(send=f"GET {path} HTTP/1.0\r\n\r\n".encode())
        yield self.connect(endpoint, client)
        yield client.lost
        head, _, body = client.data.partition(b"\r\n\r\n")
        status, *lines = head.decode().split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in lines)
        return int(status.split()[1]), headers, body

    def connect(self, endpoint: prometheus._Endpoint, client: Client) -> defer.Deferred:
        return connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port(endpoint)), client)

    def count_renders(self, endpoint: prometheus._Endpoint, wait: float = 0.0) -> list[str]:
        """Record the thread of each render; each takes ``wait`` seconds more."""
        threads: list[str] = []
        render = endpoint.exposition

        def counted(state: Any) -> bytes:
            threads.append(threading.current_thread().name)
            time.sleep(wait)
            return render(state)

        endpoint.exposition = counted  # type: ignore[method-assign]
        return threads

    @defer.inlineCallbacks
    def test_metrics_root_and_unknown_pages(self) -> Any:
        endpoint = self.start()
        self.backends[0].thd_postStatsValues(
            [Point("b1-build-results", {"results": 0}, {"builder_name": "b1"})]
        )
        code, headers, body = yield self.get(endpoint)
        self.assertEqual(code, 200)
        self.assertEqual(headers["content-type"], prometheus.CONTENT_TYPE.decode())
        self.assertEqual(headers["content-length"], str(len(body)))
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples
        }
        self.assertEqual(samples[("buildbot_builds_total", (("builder", "b1"), ("result", "success")))], 1)
        code, _, body = yield self.get(endpoint, "/")
        self.assertEqual((code, body), (200, b"buildbot_stats: metrics are at /metrics\n"))
        code, _, _ = yield self.get(endpoint, "/other")
        self.assertEqual(code, 404)

    @defer.inlineCallbacks
    def test_the_render_runs_off_the_reactor(self) -> Any:
        """The render waits for an event only the reactor sets: rendered in the reactor, it never would."""
        endpoint = self.start()
        event = threading.Event()
        render = endpoint.exposition

        def waiting(state: Any) -> bytes:
            assert event.wait(5), "the reactor was blocked while rendering"
            return render(state)

        endpoint.exposition = waiting  # type: ignore[method-assign]
        reactor.callLater(0.05, event.set)
        code, _, body = yield self.get(endpoint)
        self.assertEqual(code, 200)
        self.assertIn(b"buildbot_stats_points", body)

    @defer.inlineCallbacks
    def test_concurrent_scrapes_share_one_render_and_a_fresh_copy_is_served_again(self) -> Any:
        endpoint = self.start()
        threads = self.count_renders(endpoint, wait=0.3)
        answers = yield defer.gatherResults([self.get(endpoint) for _ in range(5)])
        self.assertEqual(len(threads), 1)
        self.assertNotEqual(threads[0], threading.current_thread().name)
        self.assertEqual({body for _, _, body in answers}, {answers[0][2]})
        yield self.get(endpoint)  # less than MAX_AGE later: the same copy
        self.assertEqual(len(threads), 1)
        self.patch(prometheus, "MAX_AGE", 0.0)
        yield self.get(endpoint)
        self.assertEqual(len(threads), 2)

    @defer.inlineCallbacks
    def test_a_failed_render_is_a_500_and_the_next_scrape_renders_again(self) -> Any:
        endpoint = self.start()
        render = endpoint.exposition
        endpoint.exposition = lambda state: 1 / 0  # type: ignore[method-assign, assignment, misc]
        code, _, _ = yield self.get(endpoint)
        self.assertEqual(code, 500)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        endpoint.exposition = render  # type: ignore[method-assign]
        code, _, _ = yield self.get(endpoint)
        self.assertEqual(code, 200)

    @defer.inlineCallbacks
    def test_connections_beyond_the_limit_are_closed_and_the_endpoint_keeps_serving(self) -> Any:
        endpoint = self.start(max_connections=2)
        idle = [Client(), Client()]
        for client in idle:
            yield self.connect(endpoint, client)
        yield sleep(0.05)
        self.assertEqual(len(endpoint.factory.protocols), 2)
        extra = Client(send=b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        yield self.connect(endpoint, extra)
        yield defer.DeferredList([extra.lost]).addTimeout(2, reactor)  # closed at once, no answer
        self.assertEqual(extra.data, b"")
        idle[0].transport.loseConnection()
        yield idle[0].lost
        yield sleep(0.05)
        code, _, _ = yield self.get(endpoint)
        self.assertEqual(code, 200)
        idle[1].transport.loseConnection()
        yield idle[1].lost

    @defer.inlineCallbacks
    def test_a_client_that_does_not_read_is_cut_off_and_holds_no_copy(self) -> Any:
        self.patch(prometheus, "SEND_TIMEOUT", 1.0)
        endpoint = self.start(max_connections=1)
        endpoint.exposition = lambda state: b"# filler line\n" * 1_000_000  # type: ignore[method-assign]
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", self.port(endpoint)))
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            yield sleep(0.5)
            # the answer is sent as the client reads: the transport holds a piece, not 14 MB
            (wrapper,) = endpoint.factory.protocols
            self.assertLess(len(wrapper.transport.dataBuffer) + wrapper.transport._tempDataLen, 1_000_000)
            yield sleep(1.0)
            self.assertEqual(len(endpoint.factory.protocols), 0)  # cut after SEND_TIMEOUT
        finally:
            sock.close()
        endpoint.fresh = None
        endpoint.exposition = lambda state: b"# small\n"  # type: ignore[method-assign]
        code, _, body = yield self.get(endpoint)
        self.assertEqual((code, body), (200, b"# small\n"))
