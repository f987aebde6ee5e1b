"""The edge values of the line protocol, byte for byte: what InfluxDB receives for each awkward value.

Each value is encoded as the first point of its shape (the general path) and
as a later point of a shape already seen (the fast path of ``_Encoder.line``);
both must give the documented line and problem (docs/values.rst).
"""

from __future__ import annotations

import pytest

from buildbot_stats import lineprotocol
from buildbot_stats.point import Point

CUT = "x" * (64 * 1024 - 1)

# value -> (the field as written, or None when the point is rejected; the problem's reason, or None)
EDGES = [
    (0.5, "f=0.5", None),
    (float("nan"), None, "nan cannot be stored"),
    (float("inf"), None, "inf cannot be stored"),
    (-float("inf"), None, "-inf cannot be stored"),
    (-0.0, "f=-0.0", None),
    (1e300, "f=1e+300", None),
    (2**63 - 1, "f=9223372036854775807i", None),
    (2**63, "f=9.223372036854776e+18", "integer beyond 64 bits stored as a float"),
    (-(2**63), "f=-9223372036854775808i", None),
    (-(2**63) - 1, "f=-9.223372036854776e+18", "integer beyond 64 bits stored as a float"),
    (2**2000, None, "integer too large even for a float cannot be stored"),
    (True, "f=true", None),
    (False, "f=false", None),
    ("", 'f=""', None),
    ("plain text", 'f="plain text"', None),
    ('a "quote"', r'f="a \"quote\""', None),
    ("a \\ backslash", r'f="a \\ backslash"', None),
    ("é", 'f="é"', None),
    ("\ud800", 'f="\ufffd"', "lone surrogate replaced by U+FFFD"),
    ("line\nbreak", 'f="line\nbreak"', None),
    (CUT, f'f="{CUT}"', None),
    (CUT + "x", f'f="{CUT}"', "string of 65536 bytes cut to 65535"),
    (None, None, "None cannot be stored"),
    (b"bytes", 'f="bytes"', None),
    ([1, 2], 'f="[1, 2]"', None),
]


@pytest.mark.parametrize(("value", "field", "reason"), EDGES, ids=lambda v: repr(v)[:20])
def test_edge_value_is_written_as_documented(value: object, field: str | None, reason: str | None) -> None:
    tags = {"builder_name": "b1"}
    stamp = 1_500_000_000_123_456_789
    for batch in (
        [Point("s", {"f": value}, tags, stamp)],  # the first of its shape
        [Point("s", {"f": 1}, tags, 7), Point("s", {"f": value}, tags, stamp)],  # a later one
    ):
        body, problems, skipped = lineprotocol.encode_body(batch, "n")
        lines = ["s,builder_name=b1 f=1i 7"] if len(batch) == 2 else []
        if field is not None:
            lines.append(f"s,builder_name=b1 {field} {stamp}")
        assert body == "\n".join(lines).encode()
        assert skipped == (field is None)
        assert [(p.series, p.field, p.reason, p.rejected) for p in problems] == (
            [("s", "f", reason, field is None)] if reason else []
        )
        lines, origins, _ = lineprotocol.encode_lines(batch, "n")
        assert "\n".join(lines).encode() == body
        assert origins == list(range(len(batch) - skipped))


@pytest.mark.parametrize(
    ("stamp", "written"),
    [
        (0, {"n": 0, "u": 0, "ms": 0, "s": 0}),
        (
            1_500_000_000_123_456_789,
            {
                "n": 1_500_000_000_123_456_789,
                "u": 1_500_000_000_123_456,
                "ms": 1_500_000_000_123,
                "s": 1_500_000_000,
            },
        ),
        (  # before 1970: rounded down, as integer division does
            -1_500_000_000_123_456_789,
            {
                "n": -1_500_000_000_123_456_789,
                "u": -1_500_000_000_123_457,
                "ms": -1_500_000_000_124,
                "s": -1_500_000_001,
            },
        ),
        (2**64, {"n": 2**64, "u": 2**64 // 1000, "ms": 2**64 // 10**6, "s": 2**64 // 10**9}),
        (True, {"n": 1, "u": 0, "ms": 0, "s": 0}),
    ],
)
def test_timestamps_at_each_precision(stamp: int, written: dict[str, int]) -> None:
    for precision, expected in written.items():
        body, _, _ = lineprotocol.encode_body(
            [Point("s", {"f": 1}, {"builder_name": "b1"}, stamp)], precision
        )
        assert body == f"s,builder_name=b1 f=1i {expected}".encode()


def test_the_usual_points() -> None:
    tags = {"builder_name": "b1", "build_number": "7"}
    batch = [
        Point("b1-bench", {"i": i, "value": i * 0.5, "ok": True, "s": "x"}, tags, 10**18 + i)
        for i in range(50)
    ]
    body, problems, skipped = lineprotocol.encode_body(batch, "ms")
    assert body.split(b"\n")[:2] == [
        b'b1-bench,build_number=7,builder_name=b1 i=0i,value=0.0,ok=true,s="x" 1000000000000',
        b'b1-bench,build_number=7,builder_name=b1 i=1i,value=0.5,ok=true,s="x" 1000000000000',
    ]
    assert (problems, skipped) == ([], 0)
    lines, _, _ = lineprotocol.encode_lines(batch, "ms")
    assert "\n".join(lines).encode() == body
