"""A small InfluxDB 2.x / 3.x write endpoint on loopback, for tests (no such server is packaged here).

It implements the documented write behaviour, not the databases:

* ``POST /api/v2/write?org=&bucket=&precision=ns|us|ms|s`` with
  ``Authorization: Token T``: 204; 400 ``{"code": "invalid", "message": ...,
  "line": N}`` for malformed line protocol (nothing written); 422
  ``{"code": "unprocessable entity", "message": "... partial write: field type
  conflict: input field "f" on measurement "m" is type ..., already exists as
  type ... dropped=N"}`` (the other points written); 401 bad token; 404
  unknown org/bucket.
* ``POST /api/v3/write_lp?db=&precision=auto|nanosecond|...&accept_partial=true``
  with ``Authorization: Token T`` or ``Bearer T``: 204; 400 ``{"error":
  "partial write of line protocol occurred", "data": [{"original_line",
  "line_number", "error_message"}]}`` (the valid lines written) or, with
  ``accept_partial=false``, ``"parsing failed for write_lp endpoint"``
  (nothing written); a tag and a field of the same name, a new tag on an
  existing table and a field type conflict are refused per line; 404 unknown
  database.
* Both: ``Content-Encoding: gzip`` bodies; 413 beyond ``max_body_size``;
  scripted answers (``fail_next``) such as 429/503 with ``Retry-After``.

What it accepted is kept as points ``(table, tags, fields, time_ns)`` so tests
read back exactly what was stored.
"""

from __future__ import annotations

import gzip
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.support.http_server import ServedInThread

_V2_PRECISION = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000}
_V3_PRECISION = {
    "nanosecond": 1,
    "microsecond": 1_000,
    "millisecond": 1_000_000,
    "second": 1_000_000_000,
    "ns": 1,
    "us": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
}


class LineError(ValueError):
    pass


@dataclass
class StoredPoint:
    table: str
    tags: dict[str, str]
    fields: dict[str, Any]
    time_ns: int


@dataclass
class Request:
    """One write request as received (for assertions on headers and parameters)."""

    path: str
    params: dict[str, str]
    headers: dict[str, str]
    body: bytes
    status: int = 0


def _split_unescaped(text: str, sep: str) -> list[str]:
    parts, current, i = [], [], 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            current.append(text[i : i + 2])
            i += 2
            continue
        if c == sep:
            parts.append("".join(current))
            current = []
        else:
            current.append(c)
        i += 1
    parts.append("".join(current))
    return parts


def _unescape(text: str) -> str:
    return re.sub(r"\\([,= \\\"])", r"\1", text)


def _field_value(raw: str) -> Any:
    if raw.startswith('"'):
        if len(raw) < 2 or not raw.endswith('"'):
            raise LineError(f"unterminated string {raw!r}")
        return re.sub(r'\\(["\\])', r"\1", raw[1:-1])
    if raw in ("t", "T", "true", "True", "TRUE"):
        return True
    if raw in ("f", "F", "false", "False", "FALSE"):
        return False
    if raw.endswith("i"):
        return int(raw[:-1])
    if raw.endswith("u"):
        return int(raw[:-1])
    value = float(raw)
    if value != value or value in (float("inf"), float("-inf")):
        raise LineError("invalid float")
    return value


def _sections(line: str) -> tuple[str, str, str | None]:
    """measurement+tags, fields, timestamp (spaces inside quoted strings kept)."""
    out: list[str] = []
    current: list[str] = []
    quoted = False
    i = 0
    while i < len(line):
        c = line[i]
        if c == "\\" and i + 1 < len(line):
            current.append(line[i : i + 2])
            i += 2
            continue
        if c == '"' and len(out) == 1:
            quoted = not quoted
        if c == " " and not quoted:
            out.append("".join(current))
            current = []
        else:
            current.append(c)
        i += 1
    out.append("".join(current))
    if quoted or len(out) not in (2, 3):
        raise LineError(f"unable to parse {line!r}: expected measurement, fields and timestamp")
    return out[0], out[1], out[2] if len(out) == 3 else None


def _split_fields(text: str) -> list[str]:
    parts, current, quoted, i = [], [], False, 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            current.append(text[i : i + 2])
            i += 2
            continue
        if c == '"':
            quoted = not quoted
        if c == "," and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(c)
        i += 1
    parts.append("".join(current))
    return parts


def parse_line(line: str, divisor: int, now_ns: int = 0) -> StoredPoint:
    """One line of line protocol (enough of it for what buildbot_stats writes)."""
    head, fields_text, stamp = _sections(line)
    head_parts = _split_unescaped(head, ",")
    table = _unescape(head_parts[0])
    if not table:
        raise LineError("missing measurement")
    tags = {}
    for part in head_parts[1:]:
        kv = _split_unescaped(part, "=")
        if len(kv) != 2 or not kv[0] or not kv[1]:
            raise LineError(f"invalid tag {part!r}")
        tags[_unescape(kv[0])] = _unescape(kv[1])
    fields: dict[str, Any] = {}
    for part in _split_fields(fields_text):
        key, sep, raw = part.partition("=")
        # the key may hold an escaped '='
        while key.endswith("\\") and sep:
            more, sep, raw = raw.partition("=")
            key = f"{key}={more}"
        if not sep or not key or not raw:
            raise LineError(f"invalid field {part!r}")
        try:
            fields[_unescape(key)] = _field_value(raw)
        except ValueError as e:
            raise LineError(f"invalid field value {raw!r}: {e}") from None
    try:
        time_ns = int(stamp) * divisor if stamp is not None else now_ns
    except ValueError:
        raise LineError(f"invalid timestamp {stamp!r}") from None
    return StoredPoint(table, tags, fields, time_ns)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    return "string"


def _lines(body: str) -> list[tuple[int, str]]:
    """(1-based number of the line's first physical line, line) of non-empty, non-comment lines.

    A newline inside a quoted string field value does not end the line (as in InfluxDB).
    """
    out: list[tuple[int, str]] = []
    current: list[str] = []
    start = number = 1
    section, quoted, i = 0, False, 0
    while i < len(body):
        c = body[i]
        if c == "\\" and i + 1 < len(body) and body[i + 1] != "\n":
            current.append(body[i : i + 2])
            i += 2
            continue
        if c == "\n":
            number += 1
            if not quoted:
                out.append((start, "".join(current)))
                current, section, start = [], 0, number
                i += 1
                continue
        elif c == '"' and section == 1:
            quoted = not quoted
        elif c == " " and not quoted:
            section += 1
        current.append(c)
        i += 1
    out.append((start, "".join(current)))
    return [(n, line) for n, line in out if line.strip() and not line.startswith("#")]


@dataclass
class Endpoint:
    """The server state: tokens, where writes may go, what was stored, what to answer next."""

    api: str  # "v2" or "v3"
    token: str = "test-token"
    orgs_buckets: set[tuple[str, str]] = field(default_factory=lambda: {("org", "bucket")})
    databases: set[str] = field(default_factory=lambda: {"stats"})
    max_body_size: int = 25_000_000
    points: list[StoredPoint] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    #: (status, headers, body) answered to the next write requests, first first
    scripted: list[tuple[int, dict[str, str], bytes]] = field(default_factory=list)
    #: table -> field -> type; table -> tag keys (v3 keeps them from the first write)
    field_types: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)
    table_tags: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fail_next(self, status: int, body: dict[str, Any] | None = None, **headers: str) -> None:
        self.scripted.append(
            (status, {k.replace("_", "-"): v for k, v in headers.items()}, _json(body or {}))
        )

    def stored(self, table: str | None = None) -> list[StoredPoint]:
        with self.lock:
            return [p for p in self.points if table is None or p.table == table]

    def tables(self) -> set[str]:
        with self.lock:
            return {p.table for p in self.points}

    # -- the write -------------------------------------------------------------

    def handle(
        self, path: str, params: dict[str, str], headers: dict[str, str], raw: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        request = Request(path, params, headers, raw)
        with self.lock:
            self.requests.append(request)
            status, out_headers, body = self._handle(path, params, headers, raw)
            request.status = status
            return status, out_headers, body

    def _handle(
        self, path: str, params: dict[str, str], headers: dict[str, str], raw: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        want = "/api/v2/write" if self.api == "v2" else "/api/v3/write_lp"
        if path != want:
            return 404, {}, _json({"code": "not found", "message": f"path {path} not found"})
        if self.scripted:
            return self.scripted.pop(0)
        auth = headers.get("authorization", "")
        scheme, _, given = auth.partition(" ")
        schemes = ("Token",) if self.api == "v2" else ("Token", "Bearer")
        if scheme not in schemes or given != self.token:
            return 401, {}, _json({"code": "unauthorized", "message": "unauthorized access"})
        if len(raw) > self.max_body_size:
            return 413, {}, _json({"code": "request too large", "message": "request body too large"})
        if headers.get("content-encoding", "").lower() == "gzip":
            try:
                raw = gzip.decompress(raw)
            except OSError:
                return 400, {}, _json({"code": "invalid", "message": "gzip: invalid header"})
            if len(raw) > self.max_body_size:
                return 413, {}, _json({"code": "request too large", "message": "request body too large"})
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return 400, {}, _json({"code": "invalid", "message": "body is not UTF-8"})
        if self.api == "v2":
            return self._v2(params, text)
        return self._v3(params, text)

    def _v2(self, params: dict[str, str], text: str) -> tuple[int, dict[str, str], bytes]:
        org, bucket = params.get("org", ""), params.get("bucket", "")
        if (org, bucket) not in self.orgs_buckets:
            return 404, {}, _json({"code": "not found", "message": f'bucket "{bucket}" not found'})
        divisor = _V2_PRECISION.get(params.get("precision", "ns"))
        if divisor is None:
            return 400, {}, _json({"code": "invalid", "message": "invalid precision"})
        parsed = []
        for number, line in _lines(text):
            try:
                parsed.append(parse_line(line, divisor))
            except LineError as e:
                # nothing is written; the first malformed line is named
                return (
                    400,
                    {},
                    _json({"code": "invalid", "message": f"unable to parse '{line}': {e}", "line": number}),
                )
        key_space = ("v2", bucket)
        dropped = []
        for point in parsed:
            conflict = self._type_conflict(key_space, point)
            if conflict:
                dropped.append(conflict)
            else:
                self._store(key_space, point)
        if dropped:
            message = (
                f"failure writing points to database: partial write: {dropped[0]} dropped={len(dropped)}"
            )
            return 422, {}, _json({"code": "unprocessable entity", "message": message})
        return 204, {}, b""

    def _v3(self, params: dict[str, str], text: str) -> tuple[int, dict[str, str], bytes]:
        db = params.get("db", "")
        if db not in self.databases:
            return 404, {}, _json({"error": f"database not found: {db}"})
        precision = params.get("precision", "auto")
        divisor = _V3_PRECISION.get(precision, 1) if precision != "auto" else None
        accept_partial = params.get("accept_partial", "true") != "false"
        key_space = ("v3", db)
        errors, good = [], []
        for number, line in _lines(text):
            try:
                point = parse_line(line, divisor or 1)
                if divisor is None:
                    point.time_ns = _auto_ns(point.time_ns)
                problem = self._v3_problem(key_space, point)
                if problem:
                    raise LineError(problem)
                good.append(point)
            except (LineError, ValueError) as e:
                errors.append({"original_line": line, "line_number": number, "error_message": str(e)})
        if errors and not accept_partial:
            return 400, {}, _json({"error": "parsing failed for write_lp endpoint", "data": errors[0]})
        for point in good:
            self._store(key_space, point)
        if errors:
            return 400, {}, _json({"error": "partial write of line protocol occurred", "data": errors})
        return 204, {}, b""

    def _type_conflict(self, key_space: tuple[str, str], point: StoredPoint) -> str | None:
        types = self.field_types.get((key_space[1], point.table), {})
        for name, value in point.fields.items():
            have = types.get(name)
            if have is not None and have != _kind(value):
                return (
                    f'field type conflict: input field "{name}" on measurement "{point.table}" is type '
                    f"{_kind(value)}, already exists as type {have}"
                )
        return None

    def _v3_problem(self, key_space: tuple[str, str], point: StoredPoint) -> str | None:
        same = set(point.tags) & set(point.fields)
        if same:
            return f"invalid column '{sorted(same)[0]}': a tag and a field cannot share a name"
        table = (key_space[1], point.table)
        tags = self.table_tags.get(table)
        if tags is not None and not set(point.tags) <= tags:
            new = sorted(set(point.tags) - tags)[0]
            return f"invalid column '{new}': table '{point.table}' has no tag '{new}'"
        if tags is not None and set(point.fields) & tags:
            return f"invalid column '{sorted(set(point.fields) & tags)[0]}': it is a tag of '{point.table}'"
        conflict = self._type_conflict(key_space, point)
        if conflict:
            name = re.search(r'input field "([^"]*)"', conflict)
            return f"invalid column type for column '{name.group(1) if name else '?'}': {conflict}"
        return None

    def _store(self, key_space: tuple[str, str], point: StoredPoint) -> None:
        table = (key_space[1], point.table)
        types = self.field_types.setdefault(table, {})
        for name, value in point.fields.items():
            types.setdefault(name, _kind(value))
        self.table_tags.setdefault(table, set(point.tags))
        # same table, tags and time: the fields are merged, as InfluxDB does
        for stored in self.points:
            if (stored.table, stored.tags, stored.time_ns) == (point.table, point.tags, point.time_ns):
                stored.fields.update(point.fields)
                return
        self.points.append(point)


def _auto_ns(value: int) -> int:
    if value < 5e9:
        return value * 1_000_000_000
    if value < 5e12:
        return value * 1_000_000
    if value < 5e15:
        return value * 1_000
    return value


def _json(obj: Any) -> bytes:
    return json.dumps(obj).encode()


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        parts = urlsplit(self.path)
        params = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, out_headers, body = self.server.endpoint.handle(parts.path, params, headers, raw)
        self.send_response(status)
        for k, v in out_headers.items():
            self.send_header(k, v)
        if body:
            self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    endpoint: Endpoint


class EndpointServer(ServedInThread):
    """The endpoint served by a thread on ``127.0.0.1:<free port>``; ``close()`` stops it."""

    def __init__(self, endpoint: Endpoint, tls: tuple[Any, Any] | None = None) -> None:
        """``tls`` = (certificate PEM, private key PEM) serves HTTPS."""
        self.endpoint = endpoint
        server = _Server(("127.0.0.1", 0), _Handler)
        server.endpoint = endpoint
        super().__init__(server, tls)
