"""A scripted HTTP server on a loopback address, for the misbehaviour of what sits in front of InfluxDB.

It answers every request with what ``server.answer(request)`` returns (204 by default): a
redirect to a login page, an answer trickled one byte at a time, or an error whose body of
any size is generated while it is sent (never held in memory). It records each request and
how many body bytes it sent before the client went away::

    server = MisbehavingServer()
    server.answer = lambda req: Answer(302, {"Location": "/login"}) if req.method == "POST" else Answer()
"""

from __future__ import annotations

import socketserver
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.support.http_server import ServedInThread

__all__ = ["Answer", "MisbehavingServer", "SeenRequest"]

_CHUNK = b"E" * 65536


@dataclass
class Answer:
    status: int = 204
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    #: a body of this many bytes ("EEE..."), made chunk by chunk as it is sent
    streamed: int = 0
    #: send the whole answer one byte every ``trickle`` seconds
    trickle: float = 0.0


@dataclass
class SeenRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    #: body bytes sent before the answer ended or the client went away
    sent: int = 0
    finished_at: float = 0.0


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def do_GET(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        seen = SeenRequest(
            self.command,
            self.path,
            {k.lower(): v for k, v in self.headers.items()},
            self.rfile.read(length) if length else b"",
        )
        self.server.owner._record(seen)
        answer = self.server.owner.answer(seen)
        try:
            self._send(answer, seen)
        except OSError:  # the client went away (as it should, from a huge or endless answer)
            self.close_connection = True
        seen.finished_at = time.monotonic()

    do_POST = do_GET

    def _send(self, answer: Answer, seen: SeenRequest) -> None:
        length = answer.streamed or len(answer.body)
        head = f"HTTP/1.1 {answer.status} Scripted\r\n"
        for name, value in {**answer.headers, "Content-Length": str(length)}.items():
            head += f"{name}: {value}\r\n"
        raw = head.encode("latin-1") + b"\r\n"
        if answer.trickle:
            for byte in raw + answer.body:  # bounded by the answer's length
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                if self.server.owner.closing.wait(answer.trickle):
                    return
            return
        self.wfile.write(raw)
        if not answer.streamed:
            self.wfile.write(answer.body)
            seen.sent = len(answer.body)
            return
        while seen.sent < answer.streamed:  # bounded by the answer's length
            chunk = _CHUNK[: answer.streamed - seen.sent]
            self.wfile.write(chunk)
            seen.sent += len(chunk)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    owner: MisbehavingServer

    def server_bind(self) -> None:
        """Bind without HTTPServer's reverse DNS lookup."""
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


class MisbehavingServer(ServedInThread):
    """Serves on ``host`` (loopback; 127.0.0.2 is "another host") at a free port until ``close()``."""

    def __init__(self, host: str = "127.0.0.1", tls: tuple[Any, Any] | None = None) -> None:
        """``tls`` = (certificate PEM, private key PEM) serves HTTPS."""
        self.answer: Callable[[SeenRequest], Answer] = lambda request: Answer()
        self.requests: list[SeenRequest] = []
        self.closing = threading.Event()
        self._lock = threading.Lock()
        server = _Server((host, 0), _Handler)
        server.owner = self
        super().__init__(server, tls)

    def _record(self, seen: SeenRequest) -> None:
        with self._lock:
            self.requests.append(seen)

    def close(self) -> None:
        self.closing.set()
        super().close()
