"""What the InfluxDB backends (1.x, 2.x, 3.x) share: argument checks, secrets, TLS, HTTP answers.

A secret is rendered in the reactor by ``prepare(master)``: the writing thread sees the plain value.
"""

from __future__ import annotations

import contextlib
import gzip as gzip_module
import json
import os
import re
from collections.abc import Iterator
from typing import Any, ClassVar, NoReturn
from urllib.parse import SplitResult, urlsplit

import requests
from buildbot import config
from buildbot.interfaces import IRenderable
from buildbot.process.properties import Properties
from twisted.internet import defer
from twisted.python import log
from urllib3.exceptions import InvalidHeader
from urllib3.util.retry import Retry
from zope.interface import implementer

from buildbot_stats.errors import BatchTooLargeError, RefusedWriteError, TransientWriteError
from buildbot_stats.point import PointProblem
from buildbot_stats.storage_backends.base import IPreparedWrites, StatsStorageBase, WriteReport

__all__: list[str] = []

#: backends (by where they write) already warned about ``verify_ssl=False``
_WARNED_UNVERIFIED: set[str] = set()

# 'partial write: field type conflict: input field "value" on measurement "b-x"
# is type string, already exists as type float dropped=1' (2.x escapes the quotes)
_FIELD_IN_ERROR = re.compile(
    r'input field \\?"(?P<field>.*?)\\?" on measurement \\?"(?P<series>.*?)\\?" is (?:type|invalid)'
)
_DROPPED = re.compile(r"dropped=(\d+)")
_CERT_REASON = re.compile(r"certificate verify failed: ([^()'\"]+)")


@implementer(IPreparedWrites)
class InfluxBackend(StatsStorageBase):
    """The InfluxDB backends' argument checks, ``prepare``, repr and HTTP error handling."""

    product: ClassVar[str] = "InfluxDB"
    #: the attribute holding the password or token as configured (maybe a secret; never logged)
    secret_attribute: ClassVar[str]
    _inited = False
    _secret_pending = False
    _where = "?"

    def _owner(self) -> str:
        return f"{type(self).__name__} {self.name!r}"

    def _check(self, problems: list[str], timeout: Any, verify_ssl: Any, ca_bundle: Any, gzip: Any) -> bool:
        """Add the shared checks to ``problems``; report each as a ``config.error``; True if none."""
        owner = self._owner()
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            problems.append(f"{owner}: timeout must be a number of seconds > 0, not {timeout!r}")
        if not isinstance(verify_ssl, bool):
            problems.append(f"{owner}: verify_ssl must be True or False, not {verify_ssl!r}")
        if ca_bundle is not None:
            if not isinstance(ca_bundle, (str, os.PathLike)) or not str(ca_bundle):
                problems.append(f"{owner}: ca_bundle must be the path of a PEM file, not {ca_bundle!r}")
            elif not os.path.isfile(ca_bundle) or not os.access(ca_bundle, os.R_OK):
                problems.append(f"{owner}: ca_bundle {os.fspath(ca_bundle)!r} is not a readable file")
        if not isinstance(gzip, bool):
            problems.append(f"{owner}: gzip must be True or False, not {gzip!r}")
        for problem in problems:
            config.error(problem)
        self.timeout, self.verify_ssl, self.ca_bundle, self.gzip = timeout, verify_ssl, ca_bundle, gzip
        #: the ``verify`` argument of requests: False, the CA bundle or True (the system's CAs)
        self._verify = (os.fspath(ca_bundle) if ca_bundle is not None else True) if verify_ssl else False
        return not problems

    def _describe(self) -> str:
        raise NotImplementedError

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

    def _use_secret(self, value: str) -> None:
        raise NotImplementedError

    @contextlib.contextmanager
    def _sending(self, body: bytes, headers: dict[str, str]) -> Iterator[bytes]:
        """The body to send (gzipped if asked) once configured; failures to connect become write errors."""
        if not self._inited:
            raise RefusedWriteError(f"{self._owner()} is not configured")
        if self._secret_pending:
            raise RefusedWriteError(
                f"{self._owner()}: the {self.secret_attribute} secret is not rendered yet"
            )
        if self.gzip:
            body = gzip_module.compress(body, compresslevel=5)
            headers["Content-Encoding"] = "gzip"
        try:
            yield body
        except requests.exceptions.SSLError as e:
            match = _CERT_REASON.search(str(e))
            reason = match.group(1).strip() if match else type(e).__name__
            raise RefusedWriteError(
                f"TLS certificate of {self._where} not verified ({reason}); for a private CA give "
                "ca_bundle='/path/to/ca.pem'"
            ) from None
        except requests.exceptions.RequestException as e:
            raise TransientWriteError(
                f"cannot reach {self.product} at {self._where}: {type(e).__name__}"
            ) from None

    def _fail(self, status: int, message: str, who: str, retry_after: float | None = None) -> NoReturn:
        """Raise the write error for an answer that neither stored the batch nor rejected points."""
        message = message[:500] or f"HTTP {status}"
        error: Exception
        if status in (401, 403):
            error = RefusedWriteError(
                f"{self.product} refused {who} (HTTP {status}): {message} ({self._describe()})"
            )
        elif status == 404:
            error = RefusedWriteError(f"{self.product}: {message} ({self._describe()}, HTTP 404)")
        elif status == 413:
            error = BatchTooLargeError(message)
        else:
            after = f" (Retry-After {retry_after:g}s)" if retry_after is not None else ""
            error = TransientWriteError(
                f"{self.product} answered HTTP {status}: {message}{after}", retry_after
            )
        raise error from None

    def _partial_write(self, message: str, report: WriteReport, most: int | None = None) -> None:
        """Count and log the points a "partial write" answer (the others were stored) lost."""
        series, field = blamed(message) or ("?", "?")
        dropped = _DROPPED.search(message)
        lost = max((int(dropped.group(1)) if dropped else 0) + message.count("unable to parse"), 1)
        report.rejected_points += lost if most is None else min(lost, most)
        report.problems.append(PointProblem(series, field, f"{self.product}: {message}", True))


def blamed(message: str) -> tuple[str, str] | None:
    """The ``(series, field)`` an InfluxDB error message names, if it does."""
    match = _FIELD_IN_ERROR.search(message)
    return (match.group("series"), match.group("field")) if match else None


def check_url(owner: str, url: Any) -> tuple[list[str], SplitResult | None]:
    """Problems of a ``http(s)://host[:port][/path]`` URL, and its parts when it is fine."""
    if not isinstance(url, str) or not url:
        return [f"{owner}: url must be an http:// or https:// URL, not {url!r}"], None
    safe = re.sub(r"//[^/@]*@", "//", url)  # never the user:password@ it may carry
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
    return [], parts


def check_name(owner: str, what: str, value: Any) -> list[str]:
    """A database, bucket or organisation name: a non-empty string."""
    if not isinstance(value, str) or not value:
        return [f"{owner}: {what} must be a non-empty name, not {value!r}"]
    return []


def check_secret(owner: str, what: str, value: Any, required: bool) -> list[str]:
    """A password or token: a string or a renderable such as ``util.Secret`` (never shown)."""
    if (value is None and not required) or (isinstance(value, str) and (value or not required)):
        return []
    if IRenderable.providedBy(value):
        return []
    kind = "an empty string" if value == "" else f"of type {type(value).__name__}"
    return [f"{owner}: {what} must be a string or a secret (util.Secret('name')), not {kind}"]


def where(scheme: str, host: str, port: int | None) -> str:
    """``scheme://host:port`` for log lines: never credentials, never the query."""
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}:{port or (443 if scheme == 'https' else 80)}"


def read_answer(content: Any) -> tuple[dict[str, Any], str]:
    """The JSON object of an error answer (``{}`` if none) and its message."""
    text = (content.decode("utf-8", "replace") if isinstance(content, bytes) else str(content)).strip()
    try:
        answer = json.loads(text) if text.startswith("{") else {}
    except ValueError:
        answer = {}
    if not isinstance(answer, dict):
        answer = {}
    return answer, str(answer.get("message") or answer.get("error") or text)


def retry_after_seconds(header: str | None) -> float | None:
    """Seconds of an HTTP ``Retry-After`` (a number or a date; 6 hours at most), None if unreadable."""
    try:
        return min(Retry().parse_retry_after(header), 6 * 3600.0) if header else None
    except InvalidHeader:
        return None
