"""What the InfluxDB backends (1.x, 2.x, 3.x) share: argument checks, TLS, the HTTP exchange and secrets,
rendered in the reactor by ``prepare(master)`` so that the writing thread sees the plain value."""

from __future__ import annotations

import contextlib
import gzip as gzip_module
import json
import os
import re
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar, NoReturn
from urllib.parse import SplitResult, urlsplit

import requests
from buildbot import config
from buildbot.interfaces import IRenderable
from buildbot.process.properties import Properties
from twisted.internet import defer
from twisted.python import log
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import HTTPError, InvalidHeader
from urllib3.util.retry import Retry
from zope.interface import implementer

from buildbot_stats.errors import BatchTooLargeError, RefusedWriteError, TransientWriteError
from buildbot_stats.point import PointProblem
from buildbot_stats.storage_backends.base import BatchBackend, IPreparedWrites, WriteReport

#: backends (by where they write) already warned about ``verify_ssl=False``
_WARNED_UNVERIFIED: set[str] = set()

# 'partial write: field type conflict: input field "value" on measurement "b-x"
# is type string, already exists as type float dropped=1' (2.x escapes the quotes)
_FIELD_IN_ERROR = re.compile(
    r'input field \\?"(?P<field>.*?)\\?" on measurement \\?"(?P<series>.*?)\\?" is (?:type|invalid)'
)
_DROPPED = re.compile(r"dropped=(\d+)")
_CERT_REASON = re.compile(r"certificate verify failed: ([^()'\"]+)")
#: of an answer's body at most this much is read, and of a message at most a line is logged
_MOST_READ, MOST_SHOWN = 65536, 300
#: the writing thread -> the connection of its request, whose socket the write's deadline shuts down
_IN_FLIGHT: dict[int, Any] = {}


@implementer(IPreparedWrites)
class InfluxBackend(BatchBackend):
    """The InfluxDB backends' argument checks, ``prepare``, repr and HTTP error handling."""

    product: ClassVar[str] = "InfluxDB"
    #: the attribute holding the password or token as configured (maybe a secret; never logged)
    secret_attribute: ClassVar[str]
    secret_required: ClassVar[bool] = True
    #: each backend's: where it writes within the server ("db='stats' user='bob'"), the rendered secret's use
    _describe: Callable[[], str]
    _use_secret: Callable[[str], None]
    _inited = False
    _secret_pending = False
    _where = "?"

    def _owner(self) -> str:
        return f"{type(self).__name__} {self.name!r}"

    def _check(self, problems: list[str], names: dict, timeout, verify_ssl, ca_bundle, gzip) -> bool:
        """Shared checks (``names``: database, bucket, org) into ``problems``, config.error; True if none."""
        owner = self._owner()
        for what, value in names.items():
            if not isinstance(value, str) or not value:
                problems.append(f"{owner}: {what} must be a non-empty name, not {value!r}")
        secret = getattr(self, self.secret_attribute)  # a string or a renderable such as util.Secret
        if not (isinstance(secret, str) and secret or IRenderable.providedBy(secret)):
            if self.secret_required or secret not in (None, ""):
                kind = "an empty string" if secret == "" else f"of type {type(secret).__name__}"
                secret_is = f"{self.secret_attribute} must be a string or a secret (util.Secret('name'))"
                problems.append(f"{owner}: {secret_is}, not {kind}")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            problems.append(f"{owner}: timeout must be a number of seconds > 0, not {timeout!r}")
        for what, value in (("verify_ssl", verify_ssl), ("gzip", gzip)):
            if not isinstance(value, bool):
                problems.append(f"{owner}: {what} must be True or False, not {value!r}")
        if ca_bundle is not None:
            if not isinstance(ca_bundle, (str, os.PathLike)) or not str(ca_bundle):
                problems.append(f"{owner}: ca_bundle must be the path of a PEM file, not {ca_bundle!r}")
            elif not os.path.isfile(ca_bundle) or not os.access(ca_bundle, os.R_OK):
                problems.append(f"{owner}: ca_bundle {os.fspath(ca_bundle)!r} is not a readable file")
        for problem in problems:
            config.error(problem)
        self.timeout, self.verify_ssl, self.ca_bundle, self.gzip = timeout, verify_ssl, ca_bundle, gzip
        #: the ``verify`` argument of requests: False, the CA bundle or True (the system's CAs)
        self._verify = (os.fspath(ca_bundle) if ca_bundle is not None else True) if verify_ssl else False
        self._session = Session()
        return not problems

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {self._where} {self._describe()}>"

    @defer.inlineCallbacks
    def prepare(self, master: Any) -> Any:
        """Render the password or token (a secret) in the reactor; called by the delivery queue."""
        if not self._inited:
            return
        if self._where.startswith("https") and not self.verify_ssl and self._where not in _WARNED_UNVERIFIED:
            _WARNED_UNVERIFIED.add(self._where)
            log.msg(
                f"buildbot_stats: WARNING: {self._owner()} does not verify the TLS certificate of "
                f"{self._where} (verify_ssl=False): anyone on the path can read and change what it "
                "sends; prefer ca_bundle='/path/to/ca.pem' for a private CA"
            )
        secret = getattr(self, self.secret_attribute)
        if secret is None or isinstance(secret, str):
            return
        props = Properties()
        props.master = master
        rendered = yield props.render(secret)
        if not isinstance(rendered, str):
            raise TypeError(f"a secret rendered to a {type(rendered).__name__}, not a string")
        self._use_secret(rendered)

    def _exchange(self, url: str, body: bytes, headers: dict, **kwargs: Any) -> tuple[int, Any, bytes]:
        """POST ``body``: the answer's status, headers and first 64 KiB, or a write error. No redirect is
        followed (a login page is no write); at three ``timeout`` (each bounds one read) the socket is shut
        down: a server trickling its answer cannot hold the thread."""
        if self._secret_pending:
            raise RefusedWriteError(f"{self._owner()}: {self.secret_attribute} secret not rendered yet")
        if self.gzip:
            body = gzip_module.compress(body, compresslevel=5)
            headers["Content-Encoding"] = "gzip"
        limit, thread, start = 3 * self.timeout, threading.get_ident(), time.monotonic()
        deadline = threading.Timer(limit, _shut_down, (thread,))
        deadline.start()
        # verify given with each request: a Session's own loses to $REQUESTS_CA_BUNDLE
        kwargs.update(data=body, headers=headers, timeout=self.timeout, verify=self._verify, stream=True)
        try:
            with self._session.post(url, **kwargs) as answer:
                return answer.status_code, answer.headers, answer.raw.read(_MOST_READ, decode_content=True)
        except (requests.exceptions.RequestException, HTTPError) as e:
            if time.monotonic() - start >= limit:
                raise TransientWriteError(f"no answer from {self._where} within {limit:g}s") from None
            if isinstance(e, requests.exceptions.SSLError):
                match = _CERT_REASON.search(str(e))
                reason = match.group(1).strip() if match else type(e).__name__
                raise RefusedWriteError(
                    f"TLS certificate of {self._where} not verified ({reason}); for a private CA give "
                    "ca_bundle='/path/to/ca.pem'"
                ) from None
            raise TransientWriteError(
                f"cannot reach {self.product} at {self._where}: {type(e).__name__}"
            ) from None
        finally:
            deadline.cancel()
            _IN_FLIGHT.pop(thread, None)

    def _fail(self, status: int, message: str, who: str, headers: Any) -> NoReturn:
        """Raise the write error for an answer that neither stored the batch nor rejected points."""
        message = message[:MOST_SHOWN] or f"HTTP {status}"
        if 300 <= status < 400:  # e.g. to a proxy's login page: whatever it answers, nothing is written
            to = shown(headers.get("Location") or "?")
            raise RefusedWriteError(f"{self._where} redirects (HTTP {status}) to {to}: not followed")
        if status in (401, 403):
            raise RefusedWriteError(f"{self.product} refused {who} (HTTP {status}): {message}")
        if status == 404:
            raise RefusedWriteError(f"{self.product}: {message} ({self._describe()}, HTTP 404)")
        if status == 413:
            raise BatchTooLargeError(message)
        retry_after = retry_after_seconds(headers.get("Retry-After"))
        after = f" (Retry-After {retry_after:g}s)" if retry_after is not None else ""
        raise TransientWriteError(f"{self.product} answered HTTP {status}: {message}{after}", retry_after)

    def _partial_write(self, message: str, report: WriteReport, most: int | None = None) -> None:
        """Count and log the points a "partial write" answer (the others were stored) lost."""
        series, field = blamed(message) or ("?", "?")
        dropped = _DROPPED.search(message)
        lost = max((int(dropped.group(1)) if dropped else 0) + message.count("unable to parse"), 1)
        report.rejected_points += lost if most is None else min(lost, most)
        report.problems.append(PointProblem(series, field, f"{self.product}: {message[:MOST_SHOWN]}", True))


def blamed(message: str) -> tuple[str, str] | None:
    """The ``(series, field)`` an InfluxDB error message names, if it does."""
    match = _FIELD_IN_ERROR.search(message)
    return (match.group("series"), match.group("field")) if match else None


def check_url(owner: str, url: Any) -> tuple[list[str], SplitResult | None]:
    """Problems of a ``http(s)://host[:port][/path]`` URL, and its parts when it is fine."""
    if not isinstance(url, str) or not url:
        return [f"{owner}: url must be an http:// or https:// URL, not {url!r}"], None
    safe = shown(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        return [f"{owner}: url {safe!r} is not a valid URL ({e})"], None
    if parts.scheme not in ("http", "https"):
        return [f"{owner}: url must start with http:// or https://, not {safe!r}"], None
    if not parts.hostname:
        return [f"{owner}: url {safe!r} names no host"], None
    if port == 0:
        return [f"{owner}: url {safe!r} has port 0"], None
    if parts.query or parts.fragment:
        return [f"{owner}: url {safe!r} must have no query or fragment (give secrets as arguments)"], None
    return [], parts


def shown(url: str) -> str:
    """``url`` as it may be shown: without the ``user:password@`` and the query (``?token=``) it may carry."""
    head, sep, rest = url.partition("//") if "//" in url else ("", "", url)
    host, slash, path = rest.partition("/")
    return re.split(r"[?#]", head + sep + host.rpartition("@")[2] + slash + path, maxsplit=1)[0]


def header_value(value: str) -> str | None:
    """A token without surrounding whitespace (a file's newline); None if empty or not printable ASCII."""
    value = value.strip()
    return value if re.fullmatch(r"[ -~]+", value) else None


def where(scheme: str, host: str, port: int | None) -> str:
    """``scheme://host:port`` for log lines: never credentials, never the query."""
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}:{port or (443 if scheme == 'https' else 80)}"


def read_answer(content: bytes) -> tuple[dict[str, Any], str]:
    """The JSON object of an error answer (``{}`` if none) and its message."""
    text = content.decode("utf-8", "replace").strip()
    with contextlib.suppress(ValueError):
        answer = json.loads(text)
        if isinstance(answer, dict):
            return answer, str(answer.get("message") or answer.get("error") or text)
    return {}, text


def retry_after_seconds(header: str | None) -> float | None:
    """Seconds of an HTTP ``Retry-After`` (a number or a date; 6 hours at most), None if unreadable."""
    try:
        return min(Retry().parse_retry_after(header), 6 * 3600.0) if header else None
    except InvalidHeader:
        return None


class Session(requests.Session):
    """Follows no redirect (nor reads its body); a write's deadline can shut the socket of its request."""

    def __init__(self) -> None:
        super().__init__()
        self.mount("http://", _WatchedAdapter())
        self.mount("https://", _WatchedAdapter())

    def get_redirect_target(self, resp: Any) -> None:
        return None


class _WatchedAdapter(requests.adapters.HTTPAdapter):
    def get_connection_with_tls_context(self, *args: Any, **kwargs: Any) -> Any:
        pool: Any = super().get_connection_with_tls_context(*args, **kwargs)
        pool.ConnectionCls = _WATCHED.get(pool.ConnectionCls, pool.ConnectionCls)
        return pool


def _request(self: Any, *args: Any, **kwargs: Any) -> None:
    _IN_FLIGHT[threading.get_ident()] = self  # the connection _shut_down finds
    HTTPConnection.request(self, *args, **kwargs)


_WATCHED = {c: type(c.__name__, (c,), {"request": _request}) for c in (HTTPConnection, HTTPSConnection)}


def _shut_down(thread: int) -> None:
    """A write's deadline: shut the socket of ``thread``'s request down, ending any read on it."""
    with contextlib.suppress(OSError, KeyError, TypeError):  # (no request or no socket yet)
        socket.socket.shutdown(_IN_FLIGHT[thread].sock, socket.SHUT_RDWR)
