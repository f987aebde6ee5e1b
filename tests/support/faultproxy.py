"""A fault-injecting HTTP proxy for tests (standard library only).

The proxy listens on 127.0.0.1 and forwards every request to an upstream base
URL, relaying status, headers and body back.  Faults can be queued to make the
next requests fail without reaching the upstream::

    with FaultProxy(server.url) as proxy:
        proxy.fail_next(2)                # two 503 "request throttled"
        client = make_client(proxy.url)   # ... third request is forwarded
        assert [r.status for r in proxy.requests] == [503, 503, 204]

It serves from its own threads (``ThreadingHTTPServer`` in a daemon thread),
so it can be used from a process running the Twisted reactor: only ``start``
and ``stop`` are called from the caller's thread and both return quickly.
"""

from __future__ import annotations

import collections
import http.client
import json
import socket
import socketserver
import sys
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing import Self

__all__ = ["FaultProxy", "SeenRequest"]

HOST = "127.0.0.1"

THROTTLED_BODY = b'{"error":"request throttled"}'

# Headers that describe one connection, not the message; never relayed.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
        "host",
        "content-length",
    }
)


@dataclass(frozen=True)
class SeenRequest:
    """One request received by the proxy and how it was answered."""

    method: str
    path: str  # path + query string, as sent by the client
    body: bytes
    headers: dict[str, str] = field(repr=False)
    status: int | None  # status answered; None when the connection was dropped
    forwarded: bool  # True when the answer came from the upstream


@dataclass(frozen=True)
class _Fault:
    kind: str  # "status", "drop" or "delay"
    status: int = 503
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    delay: float = 0.0


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], proxy: FaultProxy) -> None:
        self.proxy = proxy
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        """Bind without HTTPServer's reverse DNS lookup (getfqdn), which can hang."""
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = HOST, int(self.server_address[1])

    def handle_error(self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any) -> None:
        """Stay quiet about connections cut by the client or by :meth:`stop`."""
        exc = sys.exc_info()[1]
        if self.proxy._stopping.is_set() or isinstance(exc, ConnectionError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like a real InfluxDB
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Idle keep-alive connections end after the proxy timeout.
        self.connection.settimeout(self.server.proxy.timeout)
        self.server.proxy._track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.proxy._untrack(self.connection)

    def log_message(self, format: str, *args: object) -> None:
        """Silence the default stderr access log."""

    def do_GET(self) -> None:
        self._handle()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_GET

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _handle(self) -> None:
        proxy = self.server.proxy
        body = self._read_body()
        headers = dict(self.headers.items())
        fault = proxy._pop_fault()

        def record(status: int | None, forwarded: bool) -> None:
            proxy._record(SeenRequest(self.command, self.path, body, headers, status, forwarded))

        if fault is not None and fault.kind == "delay":
            if proxy._stopping.wait(fault.delay):
                fault = _Fault("drop")
            else:
                fault = None
        if fault is not None and fault.kind == "drop":
            record(None, False)
            self.close_connection = True
            return
        if fault is not None:
            record(fault.status, False)
            self._reply(fault.status, list(fault.headers), fault.body)
            return
        try:
            status, reason, resp_headers, resp_body = proxy._forward(self.command, self.path, body, headers)
        except (OSError, http.client.HTTPException) as err:
            record(502, False)
            error = {"error": f"fault proxy: upstream failed: {err!r}"}
            self._reply(502, [("Content-Type", "application/json")], json.dumps(error).encode())
            return
        record(status, True)
        self._reply(status, resp_headers, resp_body, reason)

    def _reply(
        self,
        status: int,
        headers: list[tuple[str, str]],
        body: bytes,
        reason: str | None = None,
    ) -> None:
        self.send_response_only(status, reason)
        for name, value in headers:
            if name.lower() not in _HOP_BY_HOP:
                self.send_header(name, value)
        has_body = status >= 200 and status not in (204, 304)
        if self.command == "HEAD":
            length = {k.lower(): v for k, v in headers}.get("content-length")
            if length is not None and has_body:
                self.send_header("Content-Length", length)
        elif has_body:
            self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD" and has_body:
            self.wfile.write(body)
        self.wfile.flush()


class FaultProxy:
    """A threaded HTTP proxy on 127.0.0.1 that can inject failures.

    :param upstream: base URL to forward to, e.g. ``http://127.0.0.1:8086``.
    :param port: port to listen on; 0 picks a free one (kept across restarts).
    :param timeout: upstream and idle-connection timeout, in seconds.
    :param max_recorded: keep at most this many :attr:`requests`.
    """

    host = HOST

    def __init__(
        self,
        upstream: str,
        port: int = 0,
        timeout: float = 30.0,
        max_recorded: int = 10_000,
    ) -> None:
        parts = urllib.parse.urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream must be an http:// URL, got {upstream!r}")
        self.upstream = upstream
        self._up_host = parts.hostname
        self._up_port = parts.port or 80
        self._up_prefix = parts.path.rstrip("/")
        self.timeout = timeout
        self._port = port
        self._lock = threading.Lock()
        self._faults: collections.deque[_Fault] = collections.deque()
        self._seen: collections.deque[SeenRequest] = collections.deque(maxlen=max_recorded)
        self._count = 0
        self._connections: set[socket.socket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # -- lifecycle ---------------------------------------------------------

    @property
    def port(self) -> int:
        """The listening port (fixed after the first start)."""
        if not self._port:
            raise RuntimeError("FaultProxy has not been started yet")
        return self._port

    @property
    def url(self) -> str:
        """Base URL of the proxy, e.g. ``http://127.0.0.1:41234``."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> FaultProxy:
        """Start listening (no-op when already running)."""
        with self._lock:
            if self._server is not None:
                return self
            self._stopping.clear()
            server = _Server((HOST, self._port), self)
            self._port = int(server.server_address[1])
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"FaultProxy:{self._port}",
                daemon=True,
            )
            self._server, self._thread = server, thread
        thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop listening and close open connections.  Idempotent.

        The port is kept, so a later :meth:`start` listens on the same URL.
        """
        with self._lock:
            server, thread = self._server, self._thread
            self._server = self._thread = None
            connections = list(self._connections)
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if thread is not None:
            thread.join(timeout)

    close = stop

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self._server is not None else "stopped"
        return f"<FaultProxy {self._port} -> {self.upstream} {state}>"

    # -- fault control -------------------------------------------------------

    def fail_next(
        self,
        n: int = 1,
        status: int = 503,
        body: bytes = THROTTLED_BODY,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer the next ``n`` requests with ``status``/``body`` without forwarding."""
        if headers is None:
            headers = {"Content-Type": "application/json"}
        fault = _Fault("status", status, body, tuple(headers.items()))
        self._queue(n, fault)

    def drop_next(self, n: int = 1) -> None:
        """Close the connection of the next ``n`` requests without any answer."""
        self._queue(n, _Fault("drop"))

    def delay_next(self, n: int, seconds: float) -> None:
        """Hold the next ``n`` requests for ``seconds`` before forwarding them."""
        self._queue(n, _Fault("delay", delay=seconds))

    def clear_faults(self) -> None:
        """Forget every queued fault."""
        with self._lock:
            self._faults.clear()

    @property
    def pending_faults(self) -> int:
        """Number of queued faults not yet consumed."""
        with self._lock:
            return len(self._faults)

    # -- observation ---------------------------------------------------------

    @property
    def requests(self) -> list[SeenRequest]:
        """A snapshot of the requests seen, oldest first (at most ``max_recorded``)."""
        with self._lock:
            return list(self._seen)

    @property
    def request_count(self) -> int:
        """Total number of requests seen since creation or :meth:`reset`."""
        with self._lock:
            return self._count

    def reset(self) -> None:
        """Forget queued faults and recorded requests."""
        with self._lock:
            self._faults.clear()
            self._seen.clear()
            self._count = 0

    # -- internals (called from handler threads) -----------------------------

    def _queue(self, n: int, fault: _Fault) -> None:
        if n < 0:
            raise ValueError("n must be >= 0")
        with self._lock:
            self._faults.extend([fault] * n)

    def _pop_fault(self) -> _Fault | None:
        with self._lock:
            return self._faults.popleft() if self._faults else None

    def _record(self, seen: SeenRequest) -> None:
        with self._lock:
            self._seen.append(seen)
            self._count += 1

    def _track(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.add(conn)

    def _untrack(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.discard(conn)

    def _forward(
        self, method: str, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, str, list[tuple[str, str]], bytes]:
        """Send one request upstream; return ``(status, reason, headers, body)``."""
        out_headers = {k: v for k, v in headers.items() if k.lower() not in _HOP_BY_HOP}
        conn = http.client.HTTPConnection(self._up_host, self._up_port, timeout=self.timeout)
        try:
            conn.request(method, self._up_prefix + path, body=body or None, headers=out_headers)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, resp.reason, resp.getheaders(), data
        finally:
            conn.close()
