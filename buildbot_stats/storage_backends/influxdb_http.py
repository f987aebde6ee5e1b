"""InfluxDB 2.x and 3.x storage backends: line protocol over HTTP with a token.

Both use the line protocol encoder of the 1.x backend
(:mod:`buildbot_stats.lineprotocol`), the same delivery queue and spool, and
the same error classes:

* 2xx: written.
* 400 with the malformed line named (2.x: nothing was written): that line is
  dropped and logged, the rest sent again.  400 "partial write" (3.x with
  ``accept_partial=true``: the valid lines were written): the lines it names
  are dropped and logged.  422 (2.x: rejected points, the others written):
  the rejected ones are counted and logged.  A 400 that names no line splits
  the batch until the bad point is alone.
* 401/403 (token), 404 (organisation, bucket or database): kept and retried
  every ``max_retry_delay``; the token (maybe a secret) is rendered again
  first, so fixing it needs no restart.
* 413: the batch is split.
* 429/503 and other 5xx, connection failures, timeouts: retried, no sooner
  than the server's ``Retry-After``.
* A certificate that cannot be verified: kept and retried every
  ``max_retry_delay`` with one log line saying to give ``ca_bundle``.

One ``requests`` Session per backend; bodies are gzip-compressed unless
``gzip=False``.
"""

from __future__ import annotations

import gzip as gzip_module
import json
import re
from collections.abc import Sequence
from typing import Any, ClassVar

import requests
from buildbot import config
from twisted.internet import defer
from zope.interface import implementer

from buildbot_stats.errors import (
    BatchTooLargeError,
    RefusedWriteError,
    SplitBatchError,
    TransientWriteError,
)
from buildbot_stats.lineprotocol import encode_lines
from buildbot_stats.point import Point, PointProblem
from buildbot_stats.storage_backends.base import IPreparedWrites, StatsStorageBase, WriteReport
from buildbot_stats.storage_backends.influx_common import (
    check_base_url,
    check_name,
    check_secret,
    check_timeout,
    check_tls,
    render_secret,
    retry_after_seconds,
    safe_where,
    tls_failure,
    tls_verify,
    warn_unverified_once,
)

__all__ = ["InfluxDB2StorageService", "InfluxDB3StorageService"]

#: the ``precision`` argument -> the line protocol encoder's unit
_PRECISIONS = {"ns": "n", "us": "u", "ms": "ms", "s": "s"}
_FIELD_IN_ERROR = re.compile(
    r'input field \\?"(?P<field>.*?)\\?" on measurement \\?"(?P<series>.*?)\\?" is (?:type|invalid)'
)
_DROPPED = re.compile(r"dropped=(\d+)")


@implementer(IPreparedWrites)
class _InfluxHTTPStorage(StatsStorageBase):
    """What the 2.x and 3.x backends share; subclasses say where and how to write."""

    product: ClassVar[str] = "InfluxDB"
    token: Any

    def _setup(
        self,
        url: str,
        token: Any,
        captures: Sequence[Any],
        name: str | None,
        names: dict[str, Any],
        precision: str,
        timeout: float,
        verify_ssl: bool,
        ca_bundle: str | None,
        gzip: bool,
    ) -> bool:
        """Check and keep the arguments; False (after one ``config.error`` per problem) if wrong."""
        cls = type(self).__name__
        self.name = name or cls
        self.captures = captures
        self._ready = False
        owner = f"{cls} {self.name!r}"
        problems, parts = check_base_url(owner, url)
        for what, value in names.items():
            problems += check_name(owner, what, value)
        problems += check_secret(owner, "token", token, required=True)
        if precision not in _PRECISIONS:
            problems.append(f"{owner}: precision must be one of {sorted(_PRECISIONS)}, not {precision!r}")
        problems += check_timeout(owner, timeout)
        problems += check_tls(owner, verify_ssl, ca_bundle)
        if not isinstance(gzip, bool):
            problems.append(f"{owner}: gzip must be True or False, not {gzip!r}")
        if problems or parts is None:
            for problem in problems:
                config.error(problem)
            return False
        self.url = url
        self._base = url.rstrip("/")
        self._where = safe_where(parts)
        self._tls = parts.scheme == "https"
        #: as configured: a string or a renderable (a secret); never logged
        self.token = token
        self._token: str | None = token if isinstance(token, str) else None
        self.precision = precision
        self.timeout = float(timeout)
        self.verify_ssl = verify_ssl
        self.ca_bundle = ca_bundle
        self.gzip = gzip
        self._session = requests.Session()
        # given with each request: a Session's own ``verify`` loses to $REQUESTS_CA_BUNDLE
        self._verify = tls_verify(verify_ssl, ca_bundle)
        self._ready = True
        return True

    def _describe(self) -> str:
        return ""

    def __repr__(self) -> str:
        # never the token
        return f"<{type(self).__name__} {self.name!r} {getattr(self, '_where', '?')} {self._describe()}>"

    @defer.inlineCallbacks
    def prepare(self, master: Any) -> Any:
        """Render the token (a secret) in the reactor; called by the delivery queue before writes."""
        if not self._ready:
            return
        warn_unverified_once(f"{type(self).__name__} {self.name!r}", self._where, self._tls, self.verify_ssl)
        if isinstance(self.token, str):
            return
        self._token = yield render_secret(master, self.token)

    # -- writing (in a thread) -------------------------------------------------

    def thd_postStatsValue(
        self, post_data: dict[str, Any], series_name: str, context: dict[str, Any] | None = None
    ) -> None:
        """Write one point now, stamped with the current time (the documented per-point API)."""
        import time

        self.thd_postStatsValues([Point(series_name, dict(post_data), dict(context or {}), time.time_ns())])

    def _adjust(self, points: list[Point], problems: list[PointProblem]) -> list[Point]:
        """Change points the server would refuse as a whole (InfluxDB 3: tag and field names)."""
        return points

    def thd_postStatsValues(self, points: list[Point]) -> WriteReport:
        """Write a batch in one request (more only when a malformed line must be left out)."""
        if not self._ready:
            raise RefusedWriteError(f"{type(self).__name__} {self.name!r} is not configured")
        if self._token is None:
            raise RefusedWriteError("the token secret is not rendered yet")
        problems: list[PointProblem] = []
        points = self._adjust(points, problems)
        lines, origins, encode_problems = encode_lines(points, _PRECISIONS[self.precision])
        report = WriteReport(problems=problems + encode_problems, rejected_points=len(points) - len(lines))
        # each pass either succeeds or leaves out at least one line: bounded
        while lines:
            drop, written = self._post(lines, points, origins, report)
            if written or not drop:
                break
            report.rejected_points += len(drop)
            keep = [i for i in range(len(lines)) if i not in drop]
            lines = [lines[i] for i in keep]
            origins = [origins[i] for i in keep]
        return report

    def _post(
        self, lines: list[str], points: list[Point], origins: list[int], report: WriteReport
    ) -> tuple[set[int], bool]:
        """POST ``lines``; return (indexes of lines to leave out and resend without, the rest written).

        ``({}, True)``: all written.  Raises a classified error otherwise.
        """
        body = "\n".join(lines).encode("utf-8")
        headers = {"Authorization": f"Token {self._token}", "Content-Type": "text/plain; charset=utf-8"}
        if self.gzip:
            body = gzip_module.compress(body, compresslevel=5)
            headers["Content-Encoding"] = "gzip"
        try:
            response = self._session.post(
                self._write_url(),
                params=self._params(),
                data=body,
                headers=headers,
                timeout=self.timeout,
                verify=self._verify,
            )
        except requests.exceptions.SSLError as e:
            raise RefusedWriteError(tls_failure(self._where, e)) from None
        except requests.exceptions.RequestException as e:
            raise TransientWriteError(
                f"cannot reach {self.product} at {self._where}: {type(e).__name__}"
            ) from None
        status = response.status_code
        if 200 <= status < 300:
            return set(), True
        text = response.text.strip()
        try:
            answer = json.loads(text) if text.startswith("{") else {}
        except ValueError:
            answer = {}
        if not isinstance(answer, dict):
            answer = {}
        message = str(answer.get("message") or answer.get("error") or text)[:500] or f"HTTP {status}"
        if status in (400, 422):
            return self._rejected(status, answer, message, lines, points, origins, report)
        if status in (401, 403):
            raise RefusedWriteError(
                f"{self.product} refused the token (HTTP {status}): {message} ({self._describe()})"
            )
        if status == 404:
            raise RefusedWriteError(f"{self.product}: {message} ({self._describe()}, HTTP 404)")
        if status == 413:
            raise BatchTooLargeError(message)
        retry_after = retry_after_seconds(response.headers.get("Retry-After"))
        raise TransientWriteError(
            f"{self.product} answered HTTP {status}: {message}"
            + (f" (Retry-After {retry_after:g}s)" if retry_after is not None else ""),
            retry_after=retry_after,
        )

    def _rejected(
        self,
        status: int,
        answer: dict[str, Any],
        message: str,
        lines: list[str],
        points: list[Point],
        origins: list[int],
        report: WriteReport,
    ) -> tuple[set[int], bool]:
        raise NotImplementedError

    def _blame(
        self, index: int, points: list[Point], origins: list[int], report: WriteReport, reason: str
    ) -> None:
        """Log the point of line ``index`` as rejected, naming its series and, if known, field."""
        point = points[origins[index]]
        match = _FIELD_IN_ERROR.search(reason)
        field = match.group("field") if match else "*"
        if field == "*":
            named = re.search(r"column '([^']+)'", reason)  # InfluxDB 3
            field = named.group(1) if named else "*"
        report.problems.append(PointProblem(point.series, field, f"{self.product}: {reason}", True))

    def _write_url(self) -> str:
        raise NotImplementedError

    def _params(self) -> dict[str, str]:
        raise NotImplementedError


def _line_of(number: Any, original: Any, lines: list[str]) -> int | None:
    """The index in ``lines`` of the server's 1-based line ``number`` (string fields may hold newlines)."""
    if isinstance(original, str) and original:
        exact = [i for i, line in enumerate(lines) if line == original]
        if len(exact) == 1:
            return exact[0]
    if isinstance(number, bool) or not isinstance(number, int) or number < 1:
        return None
    first = 1
    for index, line in enumerate(lines):
        last = first + line.count("\n")
        if first <= number <= last:
            return index
        first = last + 1
    return None


class InfluxDB2StorageService(_InfluxHTTPStorage):
    """Stores statistics in an InfluxDB 2.x bucket (``POST /api/v2/write``, ``Authorization: Token``).

    ``url`` is the server's base URL (``https://influx.example:8086``); ``token``
    an API token with write access to ``bucket`` of ``org``, maybe a Buildbot
    secret (``util.Secret("influxdb-token")``).
    """

    product = "InfluxDB 2"

    def __init__(
        self,
        url: str,
        org: str,
        bucket: str,
        token: Any,
        captures: Sequence[Any],
        name: str | None = None,
        *,
        precision: str = "ns",
        timeout: float = 10.0,
        verify_ssl: bool = True,
        ca_bundle: str | None = None,
        gzip: bool = True,
    ) -> None:
        self.org = org
        self.bucket = bucket
        self._setup(
            url,
            token,
            captures,
            name,
            {"org": org, "bucket": bucket},
            precision,
            timeout,
            verify_ssl,
            ca_bundle,
            gzip,
        )

    def _describe(self) -> str:
        return f"org={self.org!r} bucket={self.bucket!r}"

    def _write_url(self) -> str:
        return f"{self._base}/api/v2/write"

    def _params(self) -> dict[str, str]:
        return {"org": self.org, "bucket": self.bucket, "precision": self.precision}

    def _rejected(self, status, answer, message, lines, points, origins, report):  # type: ignore[no-untyped-def]
        if status == 422:
            # some points rejected (type conflict, retention...), the others written
            dropped = _DROPPED.search(message)
            count = int(dropped.group(1)) if dropped else 1
            report.rejected_points += min(count, len(lines))
            match = _FIELD_IN_ERROR.search(message)
            series, field = (match.group("series"), match.group("field")) if match else ("?", "?")
            report.problems.append(PointProblem(series, field, f"{self.product}: {message}", True))
            return set(), True
        # 400: malformed, nothing written; the first bad line is named
        index = _line_of(answer.get("line"), None, lines)
        if index is None:
            if len(lines) > 1:
                raise SplitBatchError(message)
            index = 0
        self._blame(index, points, origins, report, message)
        return {index}, False


class InfluxDB3StorageService(_InfluxHTTPStorage):
    """Stores statistics in an InfluxDB 3 database (``POST /api/v3/write_lp``, token auth).

    InfluxDB 3 refuses a line whose tag and field share a name: such a field
    is stored as ``<name>_field`` (converted, logged); the series of the
    captures never do this (their tags are ``builder_name`` and
    ``build_number``), but values posted with ``yieldMetricsValue`` may.
    """

    product = "InfluxDB 3"

    def __init__(
        self,
        url: str,
        database: str,
        token: Any,
        captures: Sequence[Any],
        name: str | None = None,
        *,
        precision: str = "ns",
        timeout: float = 10.0,
        verify_ssl: bool = True,
        ca_bundle: str | None = None,
        gzip: bool = True,
    ) -> None:
        self.database = database
        #: series -> tag keys seen: InfluxDB 3 keeps the tags of a table, a field may not take their name
        self._tag_keys: dict[str, set[str]] = {}
        self._setup(
            url,
            token,
            captures,
            name,
            {"database": database},
            precision,
            timeout,
            verify_ssl,
            ca_bundle,
            gzip,
        )

    def _describe(self) -> str:
        return f"database={self.database!r}"

    def _write_url(self) -> str:
        return f"{self._base}/api/v3/write_lp"

    def _params(self) -> dict[str, str]:
        units = {"ns": "nanosecond", "us": "microsecond", "ms": "millisecond", "s": "second"}
        return {"db": self.database, "precision": units[self.precision], "accept_partial": "true"}

    def _adjust(self, points: list[Point], problems: list[PointProblem]) -> list[Point]:
        adjusted = points
        for index, point in enumerate(points):
            series = point.series if isinstance(point.series, str) else str(point.series)
            known = self._tag_keys.get(series)
            if known is None:
                if len(self._tag_keys) > 100_000:
                    self._tag_keys.clear()  # bounded; it is only a guard
                known = self._tag_keys[series] = set()
            known.update(str(k) for k, v in point.tags.items() if v is not None and v != "")
            clashes = [k for k in point.fields if str(k) in known]
            if not clashes:
                continue
            fields = {}
            for key, value in point.fields.items():
                if str(key) in known:
                    new = f"{key}_field"
                    problems.append(
                        PointProblem(series, str(key), f"same name as a tag; stored as {new!r}", False)
                    )
                    fields[new] = value
                else:
                    fields[key] = value
            if adjusted is points:
                adjusted = list(points)
            adjusted[index] = Point(point.series, fields, point.tags, point.time_ns)
        return adjusted

    def _rejected(self, status, answer, message, lines, points, origins, report):  # type: ignore[no-untyped-def]
        data = answer.get("data")
        entries = data if isinstance(data, list) else [data] if isinstance(data, dict) else []
        bad: set[int] = set()
        for entry in entries:
            if not isinstance(entry, dict):
                continue
            index = _line_of(entry.get("line_number"), entry.get("original_line"), lines)
            if index is not None and index not in bad:
                bad.add(index)
                self._blame(index, points, origins, report, str(entry.get("error_message") or message))
        if not bad:
            if len(lines) > 1:
                raise SplitBatchError(message)
            self._blame(0, points, origins, report, message)
            return {0}, False
        if "partial write" in str(answer.get("error", "")):
            # accept_partial: the other lines were written
            report.rejected_points += len(bad)
            return set(), True
        return bad, False
