"""Line protocol cut into its points again: a newline inside a string value does not end a point.

Delivery cuts spooled line protocol into points when a batch must be sent in
parts (a partial write, a batch InfluxDB refuses as a whole) and counts its
points; a string field value keeps its newlines, so splitting at every newline
would cut such a point in two and miscount the batch.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from buildbot_stats.lineprotocol import encode_lines, split_lines
from buildbot_stats.point import Point
from tests.unit.test_lineprotocol_fastpath import points

_with_newlines = st.builds(
    Point,
    series=st.sampled_from(["m", 'm"x', "m\\ y"]),
    fields=st.dictionaries(
        st.sampled_from(["s", "t", 'q"', "a=b"]),
        st.text(alphabet='ab\n"\\ ,=', max_size=8),
        min_size=1,
        max_size=3,
    ),
    tags=st.dictionaries(
        st.sampled_from(["t", 'k"']), st.text(alphabet='ab"\\ ,=\n', max_size=4), max_size=2
    ),
    time_ns=st.integers(min_value=0, max_value=2**62),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(points, _with_newlines), max_size=8))
def test_split_lines_gives_back_each_encoded_point(batch: list[Point]) -> None:
    lines, _, _ = encode_lines(batch)
    data = "\n".join(lines).encode("utf-8")
    assert split_lines(data) == ([line.encode("utf-8") for line in lines] if lines else [b""])


def test_a_string_with_newlines_stays_one_point() -> None:
    batch = [
        Point("m", {"log": 'first line\nsecond "line"\n'}, {"t": 'a"b'}, 1),
        Point("m", {"v": 1}, {}, 2),
    ]
    lines, _, _ = encode_lines(batch)
    data = "\n".join(lines).encode("utf-8")
    assert data.count(b"\n") == 3
    assert split_lines(data) == [line.encode("utf-8") for line in lines]
    # a batch posted from its second point on (after a split): exactly the second one is left
    assert b"\n".join(split_lines(data, "influx-lp/n")[1:]) == lines[1].encode("utf-8")
    # other encodings are one point per line, as their backends promise
    assert split_lines(b'a="b\nc', "my-format") == [b'a="b', b"c"]
