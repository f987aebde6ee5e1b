"""The compiled encoder (``buildbot_stats._lineprotocol``) writes what the Python one writes.

It writes the usual point's line itself and hands every other point to the
Python encoder, so the rules live in one place.  These property tests check,
byte for byte and problem for problem, that the three entry points give the
same output with and without it, for any batch of points.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from buildbot_stats import lineprotocol
from buildbot_stats.point import Point
from tests.unit.test_lineprotocol_fastpath import _plain_names, names, points, values

compiled = lineprotocol.accelerator
needs_compiled = pytest.mark.skipif(
    compiled is None,
    reason="the compiled encoder is not in use "
    "(pip install -e . builds it; BUILDBOT_STATS_PURE_PYTHON leaves it out)",
)

# points of a few shapes, mostly plain, so that most of a batch takes the compiled path
mostly_plain = st.one_of(_plain_names, _plain_names, _plain_names, names)
usual_values = st.one_of(
    st.integers(min_value=-(2**64), max_value=2**64),
    st.integers(min_value=-(2**63) - 1, max_value=-(2**63) + 1),
    st.integers(min_value=2**63 - 1, max_value=2**63),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(alphabet='ab "\\\né\ud800', max_size=6),
    st.text(alphabet='ab "\\\né\ud800', max_size=6),
    st.text(max_size=6),
    values,
)
stamps = st.one_of(
    st.integers(min_value=0, max_value=2**62),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.booleans(),
)


plain_shapes = st.tuples(
    _plain_names,
    st.lists(_plain_names, min_size=1, max_size=3, unique=True),
    st.dictionaries(_plain_names, _plain_names, max_size=3),
)
odd_shapes = st.tuples(
    st.one_of(mostly_plain, st.just("series")),
    st.lists(mostly_plain, min_size=1, max_size=3, unique=True),
    st.dictionaries(mostly_plain, st.one_of(mostly_plain, st.none()), max_size=3),
)


@st.composite
def batches(draw: st.DrawFn) -> list[Point]:
    """Points of a few shapes (mostly usual ones, as a build posts them) and some odd points."""
    shapes = draw(st.lists(st.one_of(plain_shapes, plain_shapes, odd_shapes), min_size=1, max_size=3))
    batch = []
    for _ in range(draw(st.integers(min_value=1, max_value=12))):
        series, keys, tags = draw(st.sampled_from(shapes))
        fields = {key: draw(usual_values) for key in keys}
        batch.append(Point(series, fields, dict(tags), draw(stamps)))
    batch += draw(st.lists(points, max_size=3))
    return draw(st.permutations(batch))


def _both(f, batch, precision):
    """``f`` with the compiled encoder, then without it (problems included)."""
    assert compiled is not None
    with_it = f(batch, precision)
    lineprotocol.accelerator = None
    try:
        without = f(batch, precision)
    finally:
        lineprotocol.accelerator = compiled
    return with_it, without


precisions = st.sampled_from(sorted(lineprotocol.PRECISIONS))


@needs_compiled
@settings(max_examples=400, deadline=None)
@given(batches(), precisions)
def test_body_is_the_same_with_and_without_the_compiled_encoder(batch: list[Point], precision: str) -> None:
    with_it, without = _both(lineprotocol.encode_body, batch, precision)
    assert with_it == without


@needs_compiled
@settings(max_examples=200, deadline=None)
@given(batches(), precisions)
def test_points_and_lines_are_the_same_with_and_without_the_compiled_encoder(
    batch: list[Point], precision: str
) -> None:
    with_it, without = _both(lineprotocol.encode_points, batch, precision)
    assert with_it == without
    with_it, without = _both(lineprotocol.encode_lines, batch, precision)
    assert with_it == without


EDGES = [
    0.5,
    float("nan"),
    float("inf"),
    -float("inf"),
    -0.0,
    1e300,
    2**63 - 1,
    2**63,
    -(2**63),
    -(2**63) - 1,
    2**2000,
    True,
    False,
    "",
    "plain text",
    'a "quote"',
    "a \\ backslash",
    "é",
    "\ud800",
    "line\nbreak",
    "x" * (64 * 1024 - 1),
    "x" * (64 * 1024),
    None,
    b"bytes",
    [1, 2],
]


@needs_compiled
@pytest.mark.parametrize("value", EDGES, ids=lambda v: repr(v)[:20])
@pytest.mark.parametrize("stamp", [0, 1_500_000_000_123_456_789, -1_500_000_000_123_456_789, 2**64, True])
def test_edge_values_are_the_same_with_and_without_the_compiled_encoder(value: object, stamp: object) -> None:
    # the first point makes the shape; the second, of the same shape, is the compiled one's
    tags = {"builder_name": "b1"}
    batch = [Point("s", {"f": 1}, tags, 7), Point("s", {"f": value}, tags, stamp)]  # type: ignore[arg-type]
    for precision in lineprotocol.PRECISIONS:
        for f in (lineprotocol.encode_body, lineprotocol.encode_lines):
            with_it, without = _both(f, batch, precision)
            assert with_it == without


@needs_compiled
def test_the_usual_points_are_written_by_the_compiled_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    encoder_line = lineprotocol._Encoder.line

    def line(self, point, divisor):
        calls.append(point)
        return encoder_line(self, point, divisor)

    monkeypatch.setattr(lineprotocol._Encoder, "line", line)
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
    assert len(calls) <= 1  # the first of its shape, if no batch before made it


def test_the_compiled_encoder_is_built_in_ci() -> None:
    # CI installs the package with a compiler (tox: usedevelop); the benchmarks'
    # figures are the compiled encoder's. Elsewhere it is optional.
    if compiled is None:
        if os.environ.get("CI"):
            pytest.fail("buildbot_stats._lineprotocol is not built: pip install -e . with a C compiler")
        pytest.skip("the compiled encoder is not built (pip install -e . builds it)")
    assert compiled.__name__ == "buildbot_stats._lineprotocol"


def test_the_compiled_encoder_can_be_left_out() -> None:
    code = "from buildbot_stats import lineprotocol; print(lineprotocol.accelerator)"
    env = dict(os.environ, BUILDBOT_STATS_PURE_PYTHON="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "None"
