"""InfluxDB 1.x storage backend (through the ``influxdb`` client library)."""

from __future__ import annotations

import gzip as gzip_module
import re
from collections.abc import Sequence
from typing import Any

from buildbot import config
from twisted.internet import defer
from twisted.python import log
from zope.interface import implementer

from buildbot_stats.errors import (
    BatchTooLargeError,
    RefusedWriteError,
    SplitBatchError,
    TransientWriteError,
)
from buildbot_stats.lineprotocol import (
    PRECISIONS,
    encode_body,
    encoding_precision,
    line_protocol_encoding,
    split_lines,
)
from buildbot_stats.point import Point, PointProblem
from buildbot_stats.storage_backends.base import (
    IEncodedWrites,
    IPreparedWrites,
    StatsStorageBase,
    WriteReport,
)
from buildbot_stats.storage_backends.influx_common import (
    check_base_url,
    check_name,
    check_port,
    check_secret,
    check_timeout,
    check_tls,
    render_secret,
    tls_failure,
    tls_verify,
    warn_unverified_once,
)

try:
    import requests
    from influxdb import InfluxDBClient
    from influxdb.exceptions import InfluxDBClientError, InfluxDBServerError
except ImportError:  # pragma: no cover - influxdb is a dependency
    InfluxDBClient = None

__all__ = ["InfluxStorageService"]

# InfluxDB 1.x: 'partial write: field type conflict: input field "value" on
# measurement "b-x" is type string, already exists as type float dropped=1'
# (names are not escaped). Parse errors say "unable to parse" and dropped=0.
_FIELD_IN_ERROR = re.compile(
    r'input field "(?P<field>.*)" on measurement "(?P<series>.*)" is (?:type|invalid)'
)
_DROPPED = re.compile(r"dropped=(\d+)")


@implementer(IEncodedWrites, IPreparedWrites)
class InfluxStorageService(StatsStorageBase):
    """Stores statistics in an InfluxDB 1.x database.

    ``url`` is the host name or address (a full ``http(s)://host`` URL works
    too), ``port`` its HTTP port.  Points are written in batches as line
    protocol with nanosecond timestamps unless ``time_precision`` says
    otherwise ('n', 'u', 'ms' or 's').  ``password`` may be a Buildbot secret
    (``util.Secret("influxdb-password")``).  ``https`` URLs verify the
    server's certificate, against ``ca_bundle`` (a PEM file) when given;
    ``verify_ssl=False`` turns that off (logged as a warning).
    """

    def __init__(
        self,
        url: str,
        port: int,
        user: str | None,
        password: Any,
        db: str,
        captures: Sequence[Any],
        name: str | None = "InfluxStorageService",
        *,
        time_precision: str = "n",
        timeout: float = 10.0,
        retention_policy: str | None = None,
        verify_ssl: bool = True,
        ca_bundle: str | None = None,
        gzip: bool = False,
    ) -> None:
        self._inited = False
        self.name = name or "InfluxStorageService"
        self.captures = captures
        if InfluxDBClient is None:
            config.error("Python client for InfluxDB not installed.")
            return
        owner = f"InfluxStorageService {self.name!r}"
        problems: list[str] = []
        host, ssl, path = url, False, ""
        if isinstance(url, str) and "://" in url:
            found, parts = check_base_url(owner, url)
            problems += found
            if parts is not None:
                host, ssl, path = parts.hostname or "", parts.scheme == "https", parts.path.rstrip("/")
        elif not isinstance(url, str) or not url.strip() or any(c in url for c in " /@?#"):
            problems.append(f"{owner}: url must be a host name or an http(s):// URL, not {url!r}")
        if isinstance(port, str) and port.isdigit():
            port = int(port)  # buildbot.statistics accepted "8086" (its client called int())
        problems += check_port(owner, port)
        if user is not None and not isinstance(user, str):
            problems.append(f"{owner}: user must be a string or None, not a {type(user).__name__}")
        problems += check_secret(owner, "password", password, required=False)
        problems += check_name(owner, "db", db)
        if time_precision not in PRECISIONS:
            problems.append(
                f"{owner}: time_precision must be one of {sorted(PRECISIONS)}, not {time_precision!r}"
            )
        problems += check_timeout(owner, timeout)
        if retention_policy is not None and (not isinstance(retention_policy, str) or not retention_policy):
            problems.append(
                f"{owner}: retention_policy must be a non-empty name or None, not {retention_policy!r}"
            )
        problems += check_tls(owner, verify_ssl, ca_bundle)
        if not isinstance(gzip, bool):
            problems.append(f"{owner}: gzip must be True or False, not {gzip!r}")
        if problems:
            for problem in problems:
                config.error(problem)
            return
        if ":" in host:
            host = f"[{host}]"  # an IPv6 address in the client's URL
        self.url = url
        # for logs and errors: never the user:password@ a URL may carry
        self._where = f"{'https://' if ssl else ''}{host}:{port}"
        self.port = port
        self.user = user
        #: as configured: a string, None or a renderable (a secret); never logged
        self.password = password
        self.db = db
        self.time_precision = time_precision
        self.retention_policy = retention_policy
        self.verify_ssl = verify_ssl
        self.ca_bundle = ca_bundle
        self.gzip = gzip
        self._tls = ssl
        self._secret_pending = not (password is None or isinstance(password, str))
        self.client = InfluxDBClient(
            host,
            port,
            user,
            None if self._secret_pending else password,
            db,
            ssl=ssl,
            verify_ssl=tls_verify(verify_ssl, ca_bundle),
            timeout=timeout,
            retries=1,
            path=path,
        )
        self._inited = True

    def __repr__(self) -> str:
        # never the password
        where = getattr(self, "_where", "?")
        db, user = getattr(self, "db", None), getattr(self, "user", None)
        return f"<InfluxStorageService {self.name!r} {where} db={db!r} user={user!r}>"

    @defer.inlineCallbacks
    def prepare(self, master: Any) -> Any:
        """Render the password (a secret) in the reactor; called by the delivery queue."""
        if not self._inited:
            return
        warn_unverified_once(f"InfluxStorageService {self.name!r}", self._where, self._tls, self.verify_ssl)
        if self.password is None or isinstance(self.password, str):
            return
        password = yield render_secret(master, self.password)
        self.client.switch_user(self.user, password)
        self._secret_pending = False

    def thd_postStatsValue(
        self, post_data: dict[str, Any], series_name: str, context: dict[str, Any] | None = None
    ) -> None:
        """Write one point now (the documented per-point API; the service uses batches)."""
        if not self._inited:
            log.err(f"Service {self.name} not initialized")
            return
        if self._secret_pending:
            log.msg(f"buildbot_stats: InfluxStorageService {self.name!r}: password secret not rendered yet")
            return
        data: dict[str, Any] = {"measurement": series_name, "fields": post_data}
        if context:
            data["tags"] = context
        self.client.write_points([data])

    def thd_postStatsValues(self, points: list[Point]) -> WriteReport:
        """Write a batch in one request; raise a classified error on failure."""
        body, problems, skipped = encode_body(points, self.time_precision)
        report = WriteReport(problems=problems, rejected_points=skipped)
        if body:
            self._post_body(body, self.time_precision, report, len(points) - skipped)
        return report

    def thd_encode(self, points: list[Point]) -> tuple[str, bytes, WriteReport]:
        """Encode points once, for the spool: ``(encoding, line protocol, report)``.

        The delivery queue keeps these bytes for every attempt and hands them
        to :meth:`thd_post_encoded`; the encoding names the precision, so a
        reconfig that changes it does not misread points already spooled.
        The bytes carry no credentials.
        """
        body, problems, skipped = encode_body(points, self.time_precision)
        return line_protocol_encoding(self.time_precision), body, WriteReport(problems, skipped)

    def thd_post_encoded(self, data: bytes, encoding: str) -> WriteReport:
        """Write line protocol made by :meth:`thd_encode` (one point per line)."""
        precision = encoding_precision(encoding)
        if precision is None:
            raise ValueError(f"cannot write points encoded as {encoding!r}")
        report = WriteReport()
        if data:
            self._post_body(data, precision, report, None)
        return report

    def _post_body(self, data: bytes, precision: str, report: WriteReport, sent: int | None) -> None:
        """POST line protocol; ``sent`` is its number of points (None: counted if an error needs it)."""
        if not self._inited:
            raise RefusedWriteError(f"InfluxStorageService {self.name!r} is not configured")
        if self._secret_pending:
            raise RefusedWriteError(
                f"InfluxStorageService {self.name!r}: the password secret is not rendered yet"
            )
        params = {"db": self.db, "precision": precision}
        if self.retention_policy:
            params["rp"] = self.retention_policy
        headers = {"Content-Type": "application/octet-stream"}
        if self.gzip:
            data = gzip_module.compress(data, compresslevel=5)
            headers["Content-Encoding"] = "gzip"
        try:
            self.client.request(
                "write", "POST", params=params, data=data, expected_response_code=204, headers=headers
            )
        except InfluxDBServerError as e:
            raise TransientWriteError(f"InfluxDB server error: {_text(e.args[0] if e.args else e)}") from None
        except InfluxDBClientError as e:
            self._classify_client_error(e, report, len(split_lines(data)) if sent is None else sent)
        except requests.exceptions.SSLError as e:
            raise RefusedWriteError(tls_failure(self._where, e)) from None
        except requests.exceptions.RequestException as e:
            raise TransientWriteError(f"cannot reach InfluxDB at {self._where}: {type(e).__name__}") from None

    def _classify_client_error(self, e: Any, report: WriteReport, sent: int) -> None:
        message = _text(e.content)
        if e.code == 400:
            if not message.startswith("partial write") and sent > 1:
                # nothing was stored and the bad point is not named: find it by halving
                raise SplitBatchError(message) from None
            # InfluxDB stored the valid points of the body; only these are lost.
            match = _FIELD_IN_ERROR.search(message)
            series, field = (match.group("series"), match.group("field")) if match else ("?", "?")
            dropped = _DROPPED.search(message)
            lost = (int(dropped.group(1)) if dropped else 0) + message.count("unable to parse")
            report.rejected_points += max(lost, 1)
            report.problems.append(PointProblem(series, field, f"InfluxDB: {message}", True))
            return
        if e.code in (401, 403):
            raise RefusedWriteError(
                f"InfluxDB refused user {self.user!r} on database {self.db!r} (HTTP {e.code}): {message}"
            ) from None
        if e.code == 404:
            raise RefusedWriteError(f"InfluxDB: {message} (database {self.db!r})") from None
        if e.code == 413:
            raise BatchTooLargeError(message) from None
        raise TransientWriteError(f"InfluxDB answered HTTP {e.code}: {message}") from None


def _text(content: Any) -> str:
    if isinstance(content, bytes):
        content = content.decode("utf-8", errors="replace")
    content = str(content).strip()
    if content.startswith("{"):
        try:
            import json

            content = json.loads(content).get("error", content)
        except ValueError:
            pass
    return content
