"""InfluxDB 2.x and 3.x storage backends: line protocol over HTTP with a token (docs/backends.rst)."""

from __future__ import annotations

import bisect
import itertools
import re
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from buildbot_stats.arguments import reject_unknown
from buildbot_stats.errors import RefusedWriteError, SplitBatchError
from buildbot_stats.lineprotocol import encode_lines, encoding_precision, split_lines
from buildbot_stats.point import Point, PointProblem
from buildbot_stats.storage_backends.base import DEFAULT_LIVE_INTERVAL, WriteReport, live_interval_checked
from buildbot_stats.storage_backends.influx_common import (
    MOST_SHOWN,
    InfluxBackend,
    blamed,
    check_url,
    header_value,
    read_answer,
    where,
)

__all__ = ["InfluxDB2StorageService", "InfluxDB3StorageService"]

#: the ``precision`` argument -> the line protocol encoder's unit
_PRECISIONS = {"ns": "n", "us": "u", "ms": "ms", "s": "s"}
_UNSENDABLE = "is empty or holds characters an HTTP header cannot carry"


class _InfluxHTTPStorage(InfluxBackend):
    """What the 2.x and 3.x backends share; subclasses say where and how to write."""

    secret_attribute = "token"
    write_path: ClassVar[str]
    _params: Callable[[str], dict[str, str]]
    #: (status, answer, message, lines, points, origins, report) of a 400 or 422 -> the lines to
    #: leave out (none: the others were written), None if the server named none
    _rejected: Callable[..., set[int] | None]

    def _setup(self, url, token, captures, name, names, precision, timeout, verify_ssl, ca_bundle, gzip):
        self.name = name or type(self).__name__
        self.captures = captures
        #: as configured: a string or a renderable (a secret); never logged
        self.url, self.token, self.precision = url, token, precision
        self._token = header_value(token) if isinstance(token, str) else None
        self._secret_pending = self._token is None
        owner = self._owner()
        problems, parts = check_url(owner, url)
        if token and isinstance(token, str) and self._token is None:
            problems.append(f"{owner}: token {_UNSENDABLE}")
        if precision not in _PRECISIONS:
            problems.append(f"{owner}: precision must be one of {sorted(_PRECISIONS)}, not {precision!r}")
        if not self._check(problems, names, timeout, verify_ssl, ca_bundle, gzip) or parts is None:
            return
        self._where = where(parts.scheme, parts.hostname or "", parts.port)
        self._write_url = url.rstrip("/") + self.write_path
        self.timeout = float(timeout)
        self._inited = True

    def _use_secret(self, value: str) -> None:
        self._token = header_value(value)
        self._secret_pending = self._token is None
        if self._secret_pending:
            raise RefusedWriteError(f"{self._owner()}: the token secret {_UNSENDABLE}")

    def _adjust(self, points: list[Point], problems: list[PointProblem]) -> list[Point]:
        """Change points the server would refuse as a whole (InfluxDB 3: tag and field names)."""
        return points

    def thd_postStatsValues(self, points: list[Point]) -> WriteReport:
        """Write a batch in one request (more only when a malformed line must be left out)."""
        problems: list[PointProblem] = []
        points = self._adjust(points, problems)
        lines, origins, encode_problems = encode_lines(points, _PRECISIONS[self.precision])
        report = WriteReport(problems=problems + encode_problems, rejected_points=len(points) - len(lines))
        return self._post_lines(lines, points, origins, report, self.precision)

    def thd_post_encoded(self, data: bytes, encoding: str) -> WriteReport:
        """Write the line protocol a v1 backend of this name left in the spool (a reconfig replaced it)."""
        precision = {unit: name for name, unit in _PRECISIONS.items()}.get(encoding_precision(encoding) or "")
        if precision is None:
            raise ValueError(f"cannot write points encoded as {encoding!r}")
        lines = [line.decode("utf-8") for line in split_lines(data, encoding)]
        # each line's series (its measurement), for the log line of a point the server refuses
        series = [Point(re.split(r"(?<!\\)[ ,]", line, maxsplit=1)[0], {}, {}, 0) for line in lines]
        return self._post_lines(lines, series, list(range(len(lines))), WriteReport(), precision)

    def _post_lines(
        self, lines: list[str], points: list[Point], origins: list[int], report: WriteReport, precision: str
    ) -> WriteReport:
        """POST ``lines``; while the server names bad lines (none written), send the others again: each
        pass leaves out at least one line, so it is bounded."""
        headers = {"Authorization": f"Token {self._token}", "Content-Type": "text/plain; charset=utf-8"}
        params = self._params(precision)
        while lines:
            body = "\n".join(lines).encode("utf-8")
            status, got, content = self._exchange(self._write_url, body, headers, params=params)
            if 200 <= status < 300:
                break
            answer, message = read_answer(content)
            if status not in (400, 422):
                self._fail(status, message, "the token", got)
            message = message or f"HTTP {status}"
            drop = self._rejected(status, answer, message, lines, points, origins, report)
            if drop is None and len(lines) > 1:  # no line named: the queue halves the batch down to it
                raise SplitBatchError(message[:MOST_SHOWN])
            if drop is None:  # the one line left is the bad one: named in the log with its field
                self._blame(0, points, origins, report, message)
                drop = {0}
            if not drop:  # a partial write: the others were stored
                break
            report.rejected_points += len(drop)
            keep = [i for i in range(len(lines)) if i not in drop]
            lines, origins = [lines[i] for i in keep], [origins[i] for i in keep]
        return report

    def _blame(
        self, index: int, points: list[Point], origins: list[int], report: WriteReport, reason: str
    ) -> None:
        """Log the point of line ``index`` as rejected, naming its series and, if known, field."""
        named = blamed(reason)
        column = re.search(r"column '([^']+)'", reason)  # InfluxDB 3
        field = named[1] if named else column.group(1) if column else "*"
        report.problems.append(
            PointProblem(points[origins[index]].series, field, f"{self.product}: {reason[:MOST_SHOWN]}", True)
        )


def _line_of(number: Any, original: Any, lines: list[str]) -> int | None:
    """The index in ``lines`` of the server's 1-based line ``number`` (string fields may hold newlines)."""
    exact = [i for i, line in enumerate(lines) if line == original]
    if len(exact) == 1:
        return exact[0]
    ends = list(itertools.accumulate(line.count("\n") + 1 for line in lines))  # where each line ends
    index = bisect.bisect_left(ends, number) if type(number) is int and number > 0 else len(lines)
    return index if index < len(lines) else None


class InfluxDB2StorageService(_InfluxHTTPStorage):
    """Stores statistics in an InfluxDB 2.x bucket (``POST /api/v2/write``, ``Authorization: Token``)."""

    product = "InfluxDB 2"
    write_path = "/api/v2/write"

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
        live_interval: float = DEFAULT_LIVE_INTERVAL,
        **unknown: Any,
    ) -> None:
        reject_unknown(self, unknown)
        self.live_interval = live_interval_checked(self, name, live_interval)
        self.org, self.bucket = org, bucket
        names = {"org": org, "bucket": bucket}
        self._setup(url, token, captures, name, names, precision, timeout, verify_ssl, ca_bundle, gzip)

    def _describe(self) -> str:
        return f"org={self.org!r} bucket={self.bucket!r}"

    def _params(self, precision: str) -> dict[str, str]:
        return {"org": self.org, "bucket": self.bucket, "precision": precision}

    def _rejected(self, status, answer, message, lines, points, origins, report):
        if status == 422:  # some points rejected (type conflict, retention...), the others written
            self._partial_write(message, report, most=len(lines))
            return set()
        # 400: malformed, nothing written; the first bad line is named
        index = _line_of(answer.get("line"), None, lines)
        if index is None:
            return None
        self._blame(index, points, origins, report, message)
        return {index}


class InfluxDB3StorageService(_InfluxHTTPStorage):
    """Stores statistics in an InfluxDB 3 database (``POST /api/v3/write_lp``, token auth); a field named
    like a tag of its series, which InfluxDB 3 refuses, is stored as ``<name>_field`` (converted, logged)."""

    product = "InfluxDB 3"
    write_path = "/api/v3/write_lp"

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
        live_interval: float = DEFAULT_LIVE_INTERVAL,
        **unknown: Any,
    ) -> None:
        reject_unknown(self, unknown)
        self.live_interval = live_interval_checked(self, name, live_interval)
        self.database = database
        #: series -> tag keys seen: InfluxDB 3 keeps the tags of a table, a field may not take their name
        self._tag_keys: dict[str, set[str]] = {}
        names = {"database": database}
        self._setup(url, token, captures, name, names, precision, timeout, verify_ssl, ca_bundle, gzip)

    def _describe(self) -> str:
        return f"database={self.database!r}"

    def _params(self, precision: str) -> dict[str, str]:
        units = {"ns": "nanosecond", "us": "microsecond", "ms": "millisecond", "s": "second"}
        return {"db": self.database, "precision": units[precision], "accept_partial": "true"}

    def _adjust(self, points: list[Point], problems: list[PointProblem]) -> list[Point]:
        adjusted = []
        for point in points:
            series = str(point.series)
            if len(self._tag_keys) > 100_000:
                self._tag_keys.clear()  # bounded; it is only a guard
            known = self._tag_keys.setdefault(series, set())
            known.update(str(k) for k, v in point.tags.items() if v is not None and v != "")
            same = [k for k in point.fields if str(k) in known]
            problems += [
                PointProblem(series, str(k), f"same name as a tag; stored as '{k}_field'", False)
                for k in same
            ]
            fields = {(f"{k}_field" if k in same else k): v for k, v in point.fields.items()}
            adjusted.append(Point(point.series, fields, point.tags, point.time_ns) if same else point)
        return adjusted

    def _rejected(self, status, answer, message, lines, points, origins, report):
        data = answer.get("data")
        entries = data if isinstance(data, list) else [data]
        bad: set[int] = set()
        for entry in (e for e in entries if isinstance(e, dict)):
            index = _line_of(entry.get("line_number"), entry.get("original_line"), lines)
            if index is not None and index not in bad:
                bad.add(index)
                self._blame(index, points, origins, report, str(entry.get("error_message") or message))
        if not bad:
            return None
        if "partial write" in str(answer.get("error", "")):
            report.rejected_points += len(bad)  # accept_partial: the other lines were written
            return set()
        return bad
