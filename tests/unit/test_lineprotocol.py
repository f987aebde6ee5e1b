"""The line protocol encoder (buildbot_stats/lineprotocol.py): types, escaping, conversions."""

from __future__ import annotations

from twisted.trial import unittest

from buildbot_stats.lineprotocol import encode_body, encode_lines
from buildbot_stats.point import Point


class LineProtocolTests(unittest.TestCase):
    def encode(self, *points, precision="n"):
        body, problems, skipped = encode_body(list(points), precision)
        return body.decode("utf-8"), problems, skipped

    def test_types(self):
        body, problems, skipped = self.encode(
            Point("m", {"b": True, "i": 3, "f": 1.5, "s": 'a "q" \\ z', "n": None}, {"t": "v"}, 42)
        )
        self.assertEqual(body, 'm,t=v b=true,i=3i,f=1.5,s="a \\"q\\" \\\\ z" 42')
        self.assertEqual([(p.field, p.rejected) for p in problems], [("n", True)])
        self.assertEqual(skipped, 0)

    def test_escaping_names(self):
        body, _, _ = self.encode(Point("a b,c", {"f k=": 1}, {"t k,": "v =,"}, 1))
        self.assertEqual(body, "a\\ b\\,c,t\\ k\\,=v\\ \\=\\, f\\ k\\==1i 1")

    def test_conversions_and_rejections(self):
        body, problems, skipped = self.encode(
            Point(
                "m", {"big": 2**70, "nan": float("nan"), "inf": float("inf"), "d": {"b": 1, "a": [1]}}, {}, 1
            ),
            Point("only_bad", {"x": float("nan")}, {}, 2),
        )
        self.assertEqual(body, 'm big=1.1805916207174113e+21,d="{\\"a\\": [1], \\"b\\": 1}" 1')
        self.assertEqual(skipped, 1)
        reasons = {(p.series, p.field, p.rejected) for p in problems}
        self.assertEqual(
            reasons,
            {("m", "big", False), ("m", "nan", True), ("m", "inf", True), ("only_bad", "x", True)},
        )

    def test_time_key_renamed_and_empty_tags_dropped(self):
        body, problems, _ = self.encode(Point("m", {"time": 1}, {"time": "x", "empty": "", "none": None}, 5))
        self.assertEqual(body, "m,time_=x time_=1i 5")
        self.assertEqual({p.field for p in problems}, {"time"})

    def test_long_string_cut(self):
        body, problems, _ = self.encode(Point("m", {"s": "é" * 40000}, {}, 1))
        value = body.split('"')[1]
        self.assertLessEqual(len(value.encode()), 65535)
        self.assertTrue(problems and not problems[0].rejected)

    def test_precision(self):
        body, _, _ = self.encode(Point("m", {"v": 1}, {}, 1_700_000_000_123_456_789), precision="ms")
        self.assertEqual(body, "m v=1i 1700000000123")


def test_encode_lines_maps_each_line_to_its_point():
    points = [Point("m", {"v": 1}, {}, 1), Point("m", {"x": None}, {}, 2), Point("m", {"v": 3}, {}, 3)]
    lines, origins, problems = encode_lines(points)
    assert lines == ["m v=1i 1", "m v=3i 3"]
    assert origins == [0, 2]
    assert [(p.field, p.rejected) for p in problems] == [("x", True)]
