"""The line-protocol encoder's per-batch caches never change a line, for any point.

``_Encoder.line`` escapes the names that most points of a batch share once per
batch.  This property test checks, offline and in seconds, that a point gives
the same line and the same problems after others of its batch as alone, so the
caches can never drift from the rules.
"""

from __future__ import annotations

import enum
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from buildbot_stats.lineprotocol import _Encoder
from buildbot_stats.point import Point

# names that mostly take the fast path, with the characters that force the general one
_plain_names = st.text(alphabet="abcxyz_-.0123", min_size=1, max_size=8)
_odd_names = st.text(alphabet='ab ,="\\\n\t#é\ud800', min_size=0, max_size=6)
names = st.one_of(
    _plain_names,
    _plain_names,
    _odd_names,
    st.sampled_from(["time", "#x", "a\\"]),
    # equal to the plain "a" but written otherwise (see the classes below)
    st.deferred(lambda: st.sampled_from([_Kind.A, _Shown("a")])),
)
values = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=12),
    st.none(),
    st.binary(max_size=4),
    st.lists(st.integers(), max_size=2),
)
tag_values = st.one_of(names, st.none(), st.integers(), st.just(""))
points = st.builds(
    Point,
    series=st.one_of(names, st.just("")),
    fields=st.dictionaries(names, values, max_size=4),
    tags=st.dictionaries(names, tag_values, max_size=3),
    time_ns=st.integers(min_value=0, max_value=2**62),
)


def _same(a: object, b: object) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def _alone(point: Point, divisor: int) -> tuple[str | None, list[object]]:
    encoder = _Encoder()
    return encoder.line(point, divisor), encoder.problems


@settings(max_examples=400, deadline=None)
@given(st.lists(points, min_size=1, max_size=6), st.sampled_from([1, 1_000, 1_000_000_000]))
def test_a_point_encodes_the_same_in_a_batch_as_alone(batch: list[Point], divisor: int) -> None:
    batch = batch + batch  # the second time, every name the caches can hold is cached
    encoder = _Encoder()
    lines = [encoder.line(p, divisor) for p in batch]
    alone = [_alone(p, divisor) for p in batch]
    assert len(lines) == len(alone)
    assert all(_same(a, b) for a, b in zip(lines, [line for line, _ in alone]))
    assert encoder.problems == [problem for _, problems in alone for problem in problems]


class _Kind(str, enum.Enum):
    """A str enum, as a capture's callback may put in a context: str() is ``_Kind.A``."""

    A = "a"


class _Shown(str):
    """A str subclass whose text (``str()``) differs from its value and needs escaping."""

    def __str__(self) -> str:
        return "shown as, this"


class _Unhashable:
    """A tag value whose hash raises something else than TypeError."""

    def __hash__(self) -> int:
        raise ValueError("no hash")

    def __str__(self) -> str:
        return "u"


def _points_naming(name: object) -> list[Point]:
    """Points using ``name`` as, in turn, series, tag key, tag value and field key."""
    return [
        Point(name, {"f": 1}, {"k": "x"}, 5),  # type: ignore[arg-type]
        Point("s", {"f": 1}, {name: "x"}, 5),  # type: ignore[dict-item]
        Point("s", {"f": 1}, {"k": name}, 5),
        Point("s", {name: 1}, {"k": "x"}, 5),  # type: ignore[dict-item]
    ]


@pytest.mark.parametrize("odd", [_Kind.A, _Shown("a")], ids=["str-enum", "str-subclass"])
def test_a_str_subclass_equal_to_an_earlier_plain_name_is_encoded_by_its_own_text(odd: object) -> None:
    # the plain point before it ("a" == odd) must not lend it its cached prefix or keys
    for plain, point in zip(_points_naming("a"), _points_naming(odd)):
        encoder = _Encoder()
        encoder.line(plain, 1)
        assert encoder.line(point, 1) == _Encoder().line(point, 1)


def test_a_tag_value_whose_hash_fails_is_encoded_all_the_same() -> None:
    point = Point("s", {"f": 1}, {"k": _Unhashable()}, 5)
    assert _Encoder().line(point, 1) == "s,k=u f=1i 5"
