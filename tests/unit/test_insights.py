"""The insights' analyses on histories planted in code: flaky tests and lasting duration shifts."""

from __future__ import annotations

import random

import pytest

from buildbot_stats.insights import analyse
from buildbot_stats.insights.changepoints import ShiftRule, find_regressions, find_shifts
from buildbot_stats.insights.database import History, _revision
from buildbot_stats.insights.flaky import find_flaky
from buildbot_stats.insights.records import Build, ResultRow, ResultSet, Step
from tests.insights_data import planted_history


class Hand:
    """A small history written by hand: builds of one builder, each with one set of results."""

    def __init__(self) -> None:
        self.builds: list[Build] = []
        self.sets: list[ResultSet] = []
        self.rows: list[ResultRow] = []

    def build(
        self,
        revision: str | None,
        results: dict[str, str],
        category: str = "pass_fail",
        unit: str = "boolean",
        description: str = "unit tests",
        builder: str = "linux",
    ) -> int:
        n = len(self.builds) + 1
        self.builds.append(Build(n, 1, builder, n, 1000 * n, 1000 * n + 60, 0, revision))
        self.sets.append(ResultSet(n, n, description, category, unit))
        self.rows.extend(ResultRow(n, name, "t.py", value) for name, value in results.items())
        return n

    def flaky(self) -> dict[str, tuple[int, int, int, int]]:
        return {
            t.test: (t.passes, t.failures, t.revisions_with_both, t.last_failure_build)
            for t in find_flaky(self.builds, self.sets, self.rows)
        }


# -- flaky tests -------------------------------------------------------------------


def test_a_test_that_passed_and_failed_for_one_revision_is_flaky() -> None:
    h = Hand()
    h.build("r1", {"a": "1", "b": "1"})
    h.build("r1", {"a": "0", "b": "1"})  # a rebuild of r1: a failed this time
    h.build("r2", {"a": "1", "b": "1"})
    assert h.flaky() == {"a": (2, 1, 1, 2)}


def test_broken_then_fixed_is_not_flaky() -> None:
    h = Hand()
    h.build("r1", {"a": "1"})
    for rev in ("r2", "r2", "r3", "r4", "r4"):  # broken at r2, every build fails, rebuilds too
        h.build(rev, {"a": "0"})
    h.build("r5", {"a": "1"})  # fixed
    h.build("r5", {"a": "1"})
    assert h.flaky() == {}


def test_builds_without_revision_are_never_paired() -> None:
    h = Hand()
    h.build(None, {"a": "1"})
    h.build(None, {"a": "0"})
    h.build("", {"a": "0"})
    assert h.flaky() == {}
    window = analyse(History(h.builds, [], h.sets, h.rows, 3, 1)).window
    assert window["builds"] == 3 and window["builds_without_revision"] == 3


def test_a_renamed_test_is_another_test() -> None:
    h = Hand()
    h.build("r1", {"old_name": "0"})
    h.build("r2", {"old_name": "0"})
    h.build("r2", {"new_name": "1"})  # renamed, and fixed, in a rebuild of r2: not one test
    h.build("r3", {"new_name": "1"})
    assert h.flaky() == {}


def test_name_and_code_path_make_the_test() -> None:
    h = Hand()
    h.build("r1", {})
    h.rows += [ResultRow(1, "test_x", "a.py", "1"), ResultRow(1, "test_x", "b.py", "0")]
    assert h.flaky() == {}  # one passed, another failed: two tests, neither flaky
    h.build("r1", {})
    h.rows += [ResultRow(2, "test_x", "a.py", "0")]
    assert [(t.test, t.path) for t in find_flaky(h.builds, h.sets, h.rows)] == [("test_x", "a.py")]


def test_a_failures_only_set_means_the_absent_tests_passed() -> None:
    h = Hand()
    h.build("r1", {"E501 x.py:3": "line too long"}, category="fail_only", unit="message", description="lint")
    h.build("r1", {}, category="fail_only", unit="message", description="lint")  # nothing listed: it passed
    h.build("r2", {"E501 x.py:3": "line too long"}, category="code_issue", unit="message", description="lint")
    assert h.flaky() == {"E501 x.py:3": (1, 2, 1, 3)}


def test_absent_from_a_failures_only_set_of_another_description_is_no_pass() -> None:
    h = Hand()
    h.build("r1", {"check": "bad"}, category="fail_only", unit="message", description="lint")
    h.build("r1", {}, category="fail_only", unit="message", description="docs")
    assert h.flaky() == {}


def test_pass_only_sets_and_other_kinds() -> None:
    h = Hand()
    h.build("r1", {"a": "ok"}, category="pass_only", unit="message")
    h.build("r1", {"a": "0"})
    h.build("r2", {"a": "0"}, category="pass_fail", unit="integer")  # not a boolean: no pass or fail
    h.build("r2", {"a": "1"})
    h.build("r3", {"a": "123"}, category="performance", unit="seconds")
    h.build("r3", {"a": "0"})
    assert h.flaky() == {"a": (2, 2, 1, 6)}


@pytest.mark.parametrize("rate", [0.1, 0.25, 0.5])
def test_flaky_tests_at_several_failure_rates_are_found(rate: float) -> None:
    rng = random.Random(int(rate * 100))
    h = Hand()
    for revision in range(80):
        for _ in range(2 if revision % 4 == 0 else 1):  # a quarter of the revisions built twice
            h.build(f"r{revision}", {"flaky": "0" if rng.random() < rate else "1", "steady": "1"})
    (found,) = find_flaky(h.builds, h.sets, h.rows)
    assert found.test == "flaky"
    assert found.failures == sum(1 for r in h.rows if r.name == "flaky" and r.value == "0")
    assert found.passes + found.failures == len(h.builds)


def test_revisions_of_several_codebases_go_together() -> None:
    assert _revision([("app", "a1"), ("lib", "b2")], None) == "app:a1,lib:b2"
    assert _revision([("", "abc")], None) == "abc"
    assert _revision([("", None)], '"def"') == "def"  # the sourcestamp's is empty: got_revision
    assert _revision([("app", "a1"), ("lib", None)], '{"lib": "b2", "app": "a1"}') == "app:a1,lib:b2"
    assert _revision([("", None)], None) is None


def _precision_recall(seed: int, **kw: object) -> tuple[float, float]:
    p = planted_history(seed, **kw)  # type: ignore[arg-type]
    found = {(t.builder, t.test) for t in find_flaky(p.builds, p.sets, p.rows)}
    hits = len(found & set(p.flaky))
    return (hits / len(found) if found else 1.0), hits / len(p.flaky)


@pytest.mark.parametrize("seed", range(6))
def test_goal_flaky_precision_and_recall_on_unseen_histories(seed: int) -> None:
    # each flaky test fails on at least 10 % of its runs; a quarter of the revisions built more than once
    precision, recall = _precision_recall(
        seed, revisions=100, rebuilt=0.25, min_rate=0.1, max_rate=0.3, flaky=8
    )
    assert precision >= 0.9 and recall >= 0.9


# -- duration shifts -------------------------------------------------------------------


def _noisy(rng: random.Random, levels: list[tuple[int, float]], noise: float = 0.1) -> list[int]:
    """``levels``: (builds, median seconds) one after the other, with Gaussian noise of ``noise``."""
    return [max(1, round(rng.gauss(m, noise * m))) for count, m in levels for _ in range(count)]


@pytest.mark.parametrize(
    "before, after",
    [(100, 130), (100, 200), (300, 150), (40, 60), (1200, 1600), (60, 30)],
)
@pytest.mark.parametrize("seed", range(5))
def test_shifts_of_several_sizes_under_noise_are_found_where_they_start(
    before: float, after: float, seed: int
) -> None:
    rng = random.Random(seed)
    at = rng.randrange(50, 110)
    values = _noisy(rng, [(at, before), (160 - at, after)])
    (shift,) = find_shifts(values)
    assert abs(shift.index - at) <= 3
    assert (shift.after > shift.before) == (after > before)
    assert shift.before == pytest.approx(before, rel=0.15) and shift.after == pytest.approx(after, rel=0.15)


@pytest.mark.parametrize("seed", range(20))
def test_a_stationary_series_with_ten_percent_noise_has_no_finding(seed: int) -> None:
    rng = random.Random(seed)
    assert find_shifts(_noisy(rng, [(300, rng.choice([20, 90, 600]))])) == []


def test_single_slow_builds_are_noise() -> None:
    rng = random.Random(7)
    values = _noisy(rng, [(120, 100)])
    for i in (20, 50, 51, 90):
        values[i] = 400
    assert find_shifts(values) == []


def test_shifts_below_the_thresholds_are_not_reported() -> None:
    rng = random.Random(3)
    assert find_shifts(_noisy(rng, [(60, 100), (60, 112)], noise=0.02)) == []  # 12 %: too small
    assert find_shifts(_noisy(rng, [(60, 10), (60, 14)], noise=0.02)) == []  # 40 %, but 4 s
    assert len(find_shifts(_noisy(rng, [(60, 10), (60, 14)], noise=0.02), ShiftRule(min_seconds=2))) == 1


def test_a_shift_must_last() -> None:
    rng = random.Random(5)
    values = _noisy(rng, [(60, 100), (4, 200), (60, 100)])  # four slow builds, then back
    assert find_shifts(values) == []


def test_neighbouring_clusters_never_share_a_split() -> None:
    # two clusters (builds 11 and 18) whose best splits were both build 14: the median of nothing
    values = [
        48,
        49,
        48,
        62,
        64,
        48,
        48,
        49,
        47,
        53,
        51,
        58,
        47,
        50,
        58,
        56,
        57,
        52,
        58,
        51,
        60,
        57,
        59,
        58,
        57,
    ]
    assert find_shifts(values) == []


def test_a_spurious_split_soon_after_a_real_shift_does_not_move_it() -> None:
    # 40 s -> 23 s at build 8; a weak split at build 15 made the real one too short to last
    values = [43, 36, 33, 41, 37, 42, 45, 42, 23, 20, 22, 23, 24, 26, 24, 25, 26, 21]
    values += [22, 25, 27, 30, 25, 26, 26, 24, 22, 24, 26, 28, 26, 26, 21, 22, 23]
    assert [s.index for s in find_shifts(values)] == [8]


def test_an_analysis_defect_is_one_line_from_the_command(tmp_path, monkeypatch, capsys) -> None:
    from buildbot_stats.cli import insights as cli_insights
    from buildbot_stats.cli import main
    from buildbot_stats.cli.master_process import make_master_cfg
    from tests.insights_data import write_sqlite

    write_sqlite(str(tmp_path / "state.sqlite"), planted_history(1, revisions=10))
    (tmp_path / "master.cfg").write_text(make_master_cfg({"linux": "[]"}, pb_port=0))

    def broken(history, rule):
        raise ValueError("no median for empty data")

    monkeypatch.setattr(cli_insights, "analyse", broken)
    assert main(["insights", str(tmp_path), "--since", "all"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "analysis" in err and "no median for empty data" in err


def test_regressions_per_builder_and_step_name_their_first_build_and_revision() -> None:
    rng = random.Random(11)
    builds, steps = [], []
    for n in range(1, 81):
        compile_s = rng.gauss(100 if n < 41 else 160, 5)
        test_s = rng.gauss(50, 3)
        start = 10_000 * n
        builds.append(Build(n, 7, "linux", n, start, start + round(compile_s + test_s), 0, f"rev{n}"))
        steps.append(Step(n, "compile", start, start + round(compile_s), 0))
        steps.append(Step(n, "build", start + round(compile_s), start + round(compile_s + test_s), 0))
    found = {(r.what, r.build_number, r.revision, r.direction) for r in find_regressions(builds, steps)}
    assert found == {("compile", 41, "rev41", "slower"), ("build", 41, "rev41", "slower")}
    # the whole build's series and the step named "build" are not mixed: the step did not change
    (whole,) = [r for r in find_regressions(builds, steps) if r.what == "build"]
    assert whole.before_seconds > 140


def test_skipped_and_cancelled_builds_are_not_durations() -> None:
    builds = [Build(n, 1, "b", n, 0, 100, 0, None) for n in range(1, 41)]
    builds += [Build(n, 1, "b", n, 0, 3, 6, None) for n in range(41, 81)]  # cancelled at once
    assert find_regressions(builds, []) == []


@pytest.mark.parametrize("seed", range(6))
def test_goal_planted_shifts_found_within_three_builds_and_nothing_on_stationary(seed: int) -> None:
    p = planted_history(
        seed, shifts=3, tests=2, flaky=0, broken=0, renamed=0, fail_only_flaky=0, revisions=150
    )
    found = find_regressions(p.builds, p.steps)
    for s in p.shifts:
        before = 0  # the planted level before: the step's own base, times the earlier shifts
        assert any(
            r.builder == s.builder
            and r.what == s.step
            and abs(r.build_number - (s.index + 1)) <= 3
            and r.direction == s.direction()
            for r in found
        ), (s, found, before)
    q = planted_history(
        seed, shifts=0, tests=2, flaky=0, broken=0, renamed=0, fail_only_flaky=0, revisions=150
    )
    assert find_regressions(q.builds, q.steps) == []


def test_json_object_has_the_promised_keys() -> None:
    p = planted_history(1, revisions=60)
    data = analyse(History(p.builds, p.steps, p.sets, p.rows, len(p.rows), 42)).to_dict()
    assert set(data) == {"flaky_tests", "regressions", "window"}
    assert {"builder", "test", "passes", "failures", "revisions_with_both", "last_failure_build"} <= set(
        data["flaky_tests"][0]
    )
    assert {
        "builder",
        "what",
        "build_number",
        "revision",
        "before_seconds",
        "after_seconds",
        "direction",
    } <= set(data["regressions"][0])
    changes = [abs(r["after_seconds"] - r["before_seconds"]) for r in data["regressions"]]
    assert changes == sorted(changes, reverse=True)
    assert data["window"]["builds"] == len(p.builds) and data["window"]["tests"] == 42
