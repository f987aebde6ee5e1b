"""A standard-library HTTP(S) server served by a thread, the base of the tests' scripted servers."""

from __future__ import annotations

import socketserver
import ssl
import threading
from typing import Any


class ServedInThread:
    """Serves ``server`` (bound, not yet serving) in a daemon thread until ``close()``."""

    def __init__(self, server: socketserver.TCPServer, tls: tuple[Any, Any] | None = None) -> None:
        """``tls`` = (certificate PEM, private key PEM) serves HTTPS."""
        self._server = server
        self.scheme = "https" if tls else "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(tls[0]), str(tls[1]))
            server.socket = context.wrap_socket(server.socket, server_side=True)
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{self.scheme}://{host}:{port}"

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)
