"""InfluxDB 1.x storage backend (through the ``influxdb`` client library)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from influxdb import InfluxDBClient  # a requirement (buildbot.statistics had it optional)
from twisted.python import log
from zope.interface import implementer

from buildbot_stats.arguments import reject_unknown
from buildbot_stats.errors import RefusedWriteError, SplitBatchError
from buildbot_stats.lineprotocol import (
    PRECISIONS,
    encode_body,
    encoding_precision,
    line_protocol_encoding,
    split_lines,
)
from buildbot_stats.point import Point, is_int
from buildbot_stats.storage_backends import base
from buildbot_stats.storage_backends.base import IEncodedWrites, WriteReport
from buildbot_stats.storage_backends.influx_common import (
    MOST_SHOWN,
    InfluxBackend,
    Session,
    check_url,
    read_answer,
    shown,
    where,
)

__all__ = ["InfluxStorageService"]


@implementer(IEncodedWrites)
class InfluxStorageService(InfluxBackend):
    """Stores statistics in an InfluxDB 1.x database (see docs/backends.rst for the arguments)."""

    secret_attribute = "password"
    secret_required = False

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
        live_interval: float = base.DEFAULT_LIVE_INTERVAL,
        **unknown: Any,
    ) -> None:
        reject_unknown(self, unknown)
        self.name = name or "InfluxStorageService"
        self.live_interval = base.live_interval_checked(self, name, live_interval)
        self.captures = captures
        self.url, self.user, self.db = url, user, db
        #: as configured: a string, None or a renderable (a secret); never logged
        self.password = password
        owner = self._owner()
        problems: list[str] = []
        host, ssl, path = url, False, ""
        if isinstance(url, str) and "://" in url:
            found, parts = check_url(owner, url)
            problems += found
            if parts is not None:
                host, ssl, path = parts.hostname or "", parts.scheme == "https", parts.path.rstrip("/")
        elif not isinstance(url, str) or not url.strip() or any(c in url for c in " /@?#"):
            safe = shown(url) if isinstance(url, str) else url  # no "user:password@", no query
            problems.append(f"{owner}: url must be a host name or an http(s):// URL, not {safe!r}")
        if isinstance(port, str) and port.isdigit():
            port = int(port)  # buildbot.statistics accepted "8086" (its client called int())
        if not is_int(port, 1, 65535):
            problems.append(f"{owner}: port must be an integer from 1 to 65535, not {port!r}")
        if user is not None and not isinstance(user, str):
            problems.append(f"{owner}: user must be a string or None, not a {type(user).__name__}")
        if time_precision not in PRECISIONS:
            problems.append(
                f"{owner}: time_precision must be one of {sorted(PRECISIONS)}, not {time_precision!r}"
            )
        if retention_policy is not None and (not isinstance(retention_policy, str) or not retention_policy):
            problems.append(
                f"{owner}: retention_policy must be a non-empty name or None, not {retention_policy!r}"
            )
        if not self._check(problems, {"db": db}, timeout, verify_ssl, ca_bundle, gzip):
            return
        self._where = where("https" if ssl else "http", host, port)
        self.port, self.time_precision, self.retention_policy = port, time_precision, retention_policy
        self._secret_pending = not (password is None or isinstance(password, str))
        self._password = None if self._secret_pending else password
        self._write_url = f"{self._where}{path}/write"
        #: for the documented per-point API only (batches are written by ``_exchange``)
        self.client = InfluxDBClient(
            f"[{host}]" if ":" in host else host,
            port,
            user,
            self._password,
            db,
            ssl=ssl,
            verify_ssl=self._verify,
            timeout=timeout,
            retries=1,
            path=path,
            session=Session(),
        )
        self._inited = True

    def _describe(self) -> str:
        return f"db={self.db!r} user={self.user!r}"

    def _use_secret(self, value: str) -> None:
        self.client.switch_user(self.user, value)
        self._password, self._secret_pending = value, False

    def thd_postStatsValue(
        self, post_data: dict[str, Any], series_name: str, context: dict[str, Any] | None = None
    ) -> None:
        """Write one point now (the documented per-point API; the service uses batches)."""
        if not self._inited:
            log.err(f"Service {self.name} not initialized")
            return
        data: dict[str, Any] = {"measurement": series_name, "fields": post_data}
        if context:
            data["tags"] = context
        self.client.write_points([data])

    def thd_postStatsValues(self, points: list[Point]) -> WriteReport:
        """Write a batch in one request; raise a classified error on failure."""
        _, body, report = self.thd_encode(points)
        return self._post(body, self.time_precision, report)

    def thd_encode(self, points: list[Point]) -> tuple[str, bytes, WriteReport]:
        """Encode points once, for the spool; the encoding names the precision (a reconfig may change it)."""
        body, problems, skipped = encode_body(points, self.time_precision)
        return line_protocol_encoding(self.time_precision), body, WriteReport(problems, skipped)

    def thd_post_encoded(self, data: bytes, encoding: str) -> WriteReport:
        """Write line protocol made by :meth:`thd_encode` (one point per line)."""
        precision = encoding_precision(encoding)
        if precision is None:
            raise ValueError(f"cannot write points encoded as {encoding!r}")
        return self._post(data, precision, WriteReport())

    def _post(self, data: bytes, precision: str, report: WriteReport) -> WriteReport:
        if not data:
            return report
        params = {"db": self.db, "precision": precision}
        if self.retention_policy:
            params["rp"] = self.retention_policy
        headers = {"Content-Type": "application/octet-stream"}
        auth = (self.user, self._password) if self.user is not None and self._password is not None else None
        status, got, content = self._exchange(self._write_url, data, headers, params=params, auth=auth)
        if status == 204:
            return report
        message = read_answer(content)[1]
        if status == 404:
            raise RefusedWriteError(f"InfluxDB: {message[:MOST_SHOWN]} (database {self.db!r})")
        if status != 400:
            self._fail(status, message, f"user {self.user!r} on database {self.db!r}", got)
        if not message.startswith("partial write") and len(split_lines(data)) > 1:
            # nothing was stored and the bad point is not named: find it by halving
            raise SplitBatchError(message[:MOST_SHOWN])
        self._partial_write(message, report)  # InfluxDB stored the valid points of the body
        return report
