"""The spool thread's side of a write: records become points, encoded a chunk at a time, in segments.

Points are made and encoded ENCODE_CHUNK at a time (so that none lives
through a whole write), and the chunks of one backend join into segments of
at most its batch size; the points of backends without ``thd_encode`` are
spooled as columns, a segment per batch.
"""

from __future__ import annotations

from buildbot_stats.delivery.spool import COLUMNS, SQLiteSpool, load_points
from buildbot_stats.delivery.writer import ENCODE_CHUNK, Route, thd_spool_records
from buildbot_stats.point import Point
from buildbot_stats.storage_backends.influxdb_client import InfluxStorageService

BASE = 1_700_000_000_000_000_000


def flat(keys, n, start=0):
    out = []
    for i in range(start, start + n):
        out += (keys, "b-m", {"i": i}, {"builder": "b"}, BASE + i)
    return out


def spooled(spool, key):
    """The segments of ``key``, oldest first: (id, n, encoding, points or bytes)."""
    sql = "SELECT id, n, encoding, data FROM buildbot_stats_segments WHERE queue_key = ? ORDER BY id"
    rows = spool._mem.execute(sql, (key,)).fetchall()
    return [(i, n, enc, load_points(data) if enc == COLUMNS else bytes(data)) for i, n, enc, data in rows]


def influx_route(batch_size):
    backend = InfluxStorageService("127.0.0.1", 8086, "u", "p", "db", captures=[], name="influx")
    return Route("svc/influx", backend.thd_encode, batch_size)


def test_chunks_of_one_backend_are_segments_taken_together_up_to_its_batch_size():
    spool = SQLiteSpool(None)
    spool.thd_open()
    n = 2 * ENCODE_CHUNK + 10  # three chunks
    routes = {"influx": influx_route(batch_size=2 * ENCODE_CHUNK + 5)}
    result = thd_spool_records(spool, flat(("influx",), n), routes)
    assert result.errors == [] and result.captured == {"svc/influx": n}
    segments = spooled(spool, "svc/influx")
    assert [s[1] for s in segments] == [ENCODE_CHUNK, ENCODE_CHUNK, 10]
    # two chunks fit in a batch; a chunk is never split, so the third is the next batch
    batch = spool.thd_take("svc/influx", 2 * ENCODE_CHUNK + 5)[0]
    assert (len(batch.ids), batch.n) == (2, 2 * ENCODE_CHUNK)
    lines = b"\n".join(s[3] for s in segments).split(b"\n")
    assert lines == [f"b-m,builder=b i={i}i {BASE + i}".encode() for i in range(n)]


def test_backend_without_encoder_gets_columns_per_batch_and_shares_the_records():
    spool = SQLiteSpool(None)
    spool.thd_open()
    routes = {
        "influx": influx_route(batch_size=5000),
        "plain": Route("svc/plain", None, 300),
    }
    result = thd_spool_records(spool, flat(("influx", "plain"), 700), routes)
    assert result.captured == {"svc/influx": 700, "svc/plain": 700}
    plain = spooled(spool, "svc/plain")
    assert [(s[1], s[2]) for s in plain] == [(300, COLUMNS), (300, COLUMNS), (100, COLUMNS)]
    assert [p for s in plain for p in s[3]] == [
        Point("b-m", {"i": i}, {"builder": "b"}, BASE + i) for i in range(700)
    ]
    assert sum(s[1] for s in spooled(spool, "svc/influx")) == 700


def test_no_segment_is_larger_than_a_small_batch_size():
    spool = SQLiteSpool(None)
    spool.thd_open()
    routes = {"influx": influx_route(batch_size=10)}
    thd_spool_records(spool, flat(("influx",), 25), routes)
    assert [s[1] for s in spooled(spool, "svc/influx")] == [10, 10, 5]


def test_a_bad_record_is_one_error_line_and_the_others_are_kept():
    spool = SQLiteSpool(None)
    spool.thd_open()
    records = flat(("influx",), 3)
    records[4 * 5 - 1 - 10] = object()  # the time of the second record: not a timestamp
    result = thd_spool_records(spool, records, {"influx": influx_route(5000)})
    assert result.errors == [] and list(result.unstored) == [
        ("'b-m'", "TypeError: cannot use object as a timestamp")
    ]
    assert result.captured == {"svc/influx": 2}
    assert spooled(spool, "svc/influx")[0][3].split(b"\n") == [
        f"b-m,builder=b i={i}i {BASE + i}".encode() for i in (0, 2)
    ]


class _NoText:
    """A value that cannot be made text (or pickled): a bug in whatever posted it."""

    def __str__(self) -> str:
        raise ValueError("no text")

    def __reduce__(self):
        raise ValueError("no pickle")


def test_a_value_no_backend_can_encode_costs_only_its_point_with_one_line_per_backend():
    spool = SQLiteSpool(None)
    spool.thd_open()
    routes = {"influx": influx_route(batch_size=5000), "plain": Route("svc/plain", None, 5000)}
    n = ENCODE_CHUNK + 10  # two chunks for influx, one for plain
    records = flat(("influx", "plain"), n)
    bad = {3, ENCODE_CHUNK + 5}  # one in each influx chunk
    for i in bad:
        records[5 * i + 2] = {"i": _NoText()}
    result = thd_spool_records(spool, records, routes)
    assert result.captured == {"svc/influx": n, "svc/plain": n}
    assert result.dropped == {"svc/influx": 2, "svc/plain": 2}
    assert len(result.errors) == 2  # one line per backend, naming the series and the field
    for line in result.errors:
        assert "2 points" in line and "series 'b-m'" in line and "field 'i'" in line and "no text" in line
    kept = [i for i in range(n) if i not in bad]
    influx = spooled(spool, "svc/influx")
    assert b"\n".join(s[3] for s in influx).split(b"\n") == [
        f"b-m,builder=b i={i}i {BASE + i}".encode() for i in kept
    ]
    assert [p.fields["i"] for s in spooled(spool, "svc/plain") for p in s[3]] == kept


def test_an_encoder_that_always_fails_loses_its_points_in_one_line_that_blames_no_value():
    spool = SQLiteSpool(None)
    spool.thd_open()
    calls = []

    def broken(points):
        calls.append(len(points))
        raise RuntimeError("encoder not ready")

    routes = {"influx": Route("svc/influx", broken, 5000)}
    n = 2 * ENCODE_CHUNK
    result = thd_spool_records(spool, flat(("influx",), n), routes)
    assert result.dropped == {"svc/influx": n}
    assert result.errors == [
        f"dropped {n} points of backend 'svc/influx' that could not be encoded "
        "(RuntimeError: encoder not ready)"
    ]
    assert len(calls) == 4  # each chunk, then one plain point: not each point on its own


class _Unprintable:
    """Neither str() nor repr() works: whatever posted it is broken, the other points are not."""

    def __str__(self) -> str:
        raise ValueError("no text")

    def __repr__(self) -> str:
        raise ValueError("no repr")


def test_a_series_name_that_cannot_even_be_shown_costs_only_its_own_record():
    spool = SQLiteSpool(None)
    spool.thd_open()
    records = flat(("influx",), 3)
    records[5 + 1] = _Unprintable()  # the series of the second record
    result = thd_spool_records(spool, records, {"influx": influx_route(5000)})
    assert result.errors == [] and len(result.unstored) == 1
    assert "_Unprintable" in next(iter(result.unstored))[0]
    assert result.captured == {"svc/influx": 2}
    assert spooled(spool, "svc/influx")[0][3].split(b"\n") == [
        f"b-m,builder=b i={i}i {BASE + i}".encode() for i in (0, 2)
    ]


def test_a_thd_encode_breaking_its_contract_costs_only_its_own_backends_points():
    # a backend's own thd_encode returning text instead of bytes: its points are dropped
    # (counted, one line naming the backend), the other backend's are spooled
    spool = SQLiteSpool(None)
    spool.thd_open()

    def text_encoder(points):
        return "mine/1", "\n".join(p.series for p in points), None

    routes = {"mine": Route("svc/mine", text_encoder, 5000), "influx": influx_route(5000)}
    result = thd_spool_records(spool, flat(("mine", "influx"), 300), routes)
    assert result.dropped == {"svc/mine": 300}
    assert len(result.errors) == 1 and "backend 'svc/mine'" in result.errors[0]
    assert "thd_encode must return" in result.errors[0]
    assert spooled(spool, "svc/mine") == []
    assert sum(s[1] for s in spooled(spool, "svc/influx")) == 300
