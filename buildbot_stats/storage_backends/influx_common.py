"""What the InfluxDB backends (1.x, 2.x, 3.x) share: argument checks, secrets, TLS, HTTP answers.

Arguments are checked in the constructor so that ``buildbot checkconfig``
shows one line per mistake.  Passwords and tokens may be Buildbot secrets
(``util.Secret("name")``, ``util.Interpolate("%(secret:name)s")``); they are
rendered in the reactor by :func:`render_secret` (the delivery queue calls the
backend's ``prepare(master)`` before its first write and after a refused
one) and only the plain value is handed to the thread that writes.
"""

from __future__ import annotations

import email.utils
import os
import re
import time
from typing import Any
from urllib.parse import SplitResult, urlsplit

from buildbot.interfaces import IRenderable
from buildbot.process.properties import Properties
from twisted.internet import defer
from twisted.python import log

__all__: list[str] = []

#: backends (by where they write) already warned about ``verify_ssl=False``
_WARNED_UNVERIFIED: set[str] = set()


def check_base_url(owner: str, url: Any) -> tuple[list[str], SplitResult | None]:
    """Problems of a ``http(s)://host[:port][/path]`` URL, and its parts when it is fine."""
    if not isinstance(url, str) or not url:
        return [f"{owner}: url must be an http:// or https:// URL, not {url!r}"], None
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        return [f"{owner}: url {_safe_url(url)!r} is not a valid URL ({e})"], None
    if parts.scheme not in ("http", "https"):
        return [f"{owner}: url must start with http:// or https://, not {_safe_url(url)!r}"], None
    if not parts.hostname:
        return [f"{owner}: url {_safe_url(url)!r} names no host"], None
    if port == 0:
        return [f"{owner}: url {_safe_url(url)!r} has port 0"], None
    return [], parts


def check_port(owner: str, port: Any) -> list[str]:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        return [f"{owner}: port must be an integer from 1 to 65535, not {port!r}"]
    return []


def check_timeout(owner: str, timeout: Any) -> list[str]:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        return [f"{owner}: timeout must be a number of seconds > 0, not {timeout!r}"]
    return []


def check_name(owner: str, what: str, value: Any) -> list[str]:
    """A database, bucket or organisation name: a non-empty string."""
    if not isinstance(value, str) or not value:
        return [f"{owner}: {what} must be a non-empty name, not {value!r}"]
    return []


def check_secret(owner: str, what: str, value: Any, required: bool) -> list[str]:
    """A password or token: a string or a renderable such as ``util.Secret`` (never shown)."""
    if value is None and not required:
        return []
    if isinstance(value, str) and (value or not required):
        return []
    if IRenderable.providedBy(value):
        return []
    kind = "an empty string" if value == "" else f"of type {type(value).__name__}"
    return [f"{owner}: {what} must be a string or a secret (util.Secret('name')), not {kind}"]


def check_tls(owner: str, verify_ssl: Any, ca_bundle: Any) -> list[str]:
    found = []
    if not isinstance(verify_ssl, bool):
        found.append(f"{owner}: verify_ssl must be True or False, not {verify_ssl!r}")
    if ca_bundle is not None:
        if not isinstance(ca_bundle, (str, os.PathLike)) or not str(ca_bundle):
            found.append(f"{owner}: ca_bundle must be the path of a PEM file, not {ca_bundle!r}")
        elif not os.path.isfile(ca_bundle) or not os.access(ca_bundle, os.R_OK):
            found.append(f"{owner}: ca_bundle {os.fspath(ca_bundle)!r} is not a readable file")
    return found


def tls_verify(verify_ssl: bool, ca_bundle: Any) -> bool | str:
    """The ``verify`` argument of requests: False, the CA bundle path, or True (system CAs)."""
    if not verify_ssl:
        return False
    return os.fspath(ca_bundle) if ca_bundle is not None else True


def warn_unverified_once(owner: str, where: str, tls: bool, verify_ssl: bool) -> None:
    """One warning per backend and process that certificates are not checked."""
    if tls and not verify_ssl and where not in _WARNED_UNVERIFIED:
        _WARNED_UNVERIFIED.add(where)
        log.msg(
            f"buildbot_stats: WARNING: {owner} does not verify the TLS certificate of {where} "
            "(verify_ssl=False): anyone on the path can read and change what it sends; "
            "prefer ca_bundle='/path/to/ca.pem' for a private CA"
        )


@defer.inlineCallbacks
def render_secret(master: Any, value: Any) -> Any:
    """``value`` rendered through the master's secrets providers (a plain string stays as it is)."""
    if value is None or isinstance(value, str):
        return value
    props = Properties()
    props.master = master
    rendered = yield props.render(value)
    if not isinstance(rendered, str):
        raise TypeError(f"a secret rendered to a {type(rendered).__name__}, not a string")
    return rendered


def _safe_url(url: str) -> str:
    """``url`` without the ``user:password@`` it may carry."""
    return re.sub(r"//[^/@]*@", "//", url)


def safe_where(parts: SplitResult) -> str:
    """``scheme://host:port`` for log lines: never credentials, never the query."""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{host}:{port}"


_CERT_REASON = re.compile(r"certificate verify failed: ([^()'\"]+)")


def tls_failure(where: str, error: BaseException) -> str:
    """One clear line for a certificate that could not be verified."""
    match = _CERT_REASON.search(str(error))
    reason = match.group(1).strip() if match else type(error).__name__
    return (
        f"TLS certificate of {where} not verified ({reason}); for a private CA give "
        "ca_bundle='/path/to/ca.pem'"
    )


def retry_after_seconds(header: str | None, now: float | None = None) -> float | None:
    """Seconds of an HTTP ``Retry-After`` (a number or a date), None if absent or unreadable."""
    if not header:
        return None
    header = header.strip()
    try:
        seconds = float(header)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(header)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return max(0.0, min(seconds, 24 * 3600.0))
