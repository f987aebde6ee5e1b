"""Planted histories for the insights: builds, steps and test results with known flaky tests and shifts.

:func:`planted_history` builds one in code from a seed: revisions built once
or several times, flaky tests that fail on a given share of their runs,
tests broken from one revision until a later fix, tests renamed half-way,
builds without a revision, step durations with 10 % noise, single slow
builds (three times as long) and planted lasting shifts.  What was planted is returned beside the records, so a test
compares what the analysis finds with it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from buildbot_stats.insights.records import Build, ResultSet, Step, TestRow

START = 1_700_000_000
STEPS = {"checkout": 8.0, "compile": 120.0, "test": 240.0, "upload": 30.0}


@dataclass
class PlantedShift:
    builder: str
    step: str
    index: int  # the first build (0-based, in the builder's order) after the shift
    ratio: float  # after = before * ratio

    def direction(self) -> str:
        return "slower" if self.ratio > 1 else "faster"


@dataclass
class Planted:
    builds: list[Build] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    sets: list[ResultSet] = field(default_factory=list)
    rows: list[TestRow] = field(default_factory=list)
    flaky: dict[tuple[str, str], float] = field(default_factory=dict)  # (builder, test) -> failure rate
    broken: set[tuple[str, str]] = field(default_factory=set)
    renamed: set[tuple[str, str]] = field(default_factory=set)
    shifts: list[PlantedShift] = field(default_factory=list)
    #: build number (per builder) -> index in that builder's order
    numbers: dict[str, list[int]] = field(default_factory=dict)


def planted_history(
    seed: int,
    *,
    builders: tuple[str, ...] = ("linux", "windows"),
    revisions: int = 120,
    rebuilt: float = 0.3,
    tests: int = 40,
    flaky: int = 6,
    min_rate: float = 0.1,
    max_rate: float = 0.4,
    broken: int = 3,
    renamed: int = 2,
    no_revision: float = 0.05,
    shifts: int = 2,
    noise: float = 0.1,
    fail_only_flaky: int = 1,
    spikes: float = 0.02,
) -> Planted:
    """A history of ``revisions`` revisions per builder; ``rebuilt`` of them built two or three times."""
    rng = random.Random(seed)
    planted = Planted()
    buildid = setid = 0
    for b_index, builder in enumerate(builders):
        names = [f"tests.test_{i:03d}" for i in range(tests)]
        flaky_names = rng.sample(names, flaky)
        rest = [n for n in names if n not in flaky_names]
        broken_names = rng.sample(rest, broken)
        rest = [n for n in rest if n not in broken_names]
        renamed_names = rng.sample(rest, renamed)
        rates = {n: rng.uniform(min_rate, max_rate) for n in flaky_names}
        lint_flaky = {f"lint.check_{i}": rng.uniform(min_rate, max_rate) for i in range(fail_only_flaky)}
        for n, r in {**rates, **lint_flaky}.items():
            planted.flaky[(builder, n)] = r
        planted.broken.update((builder, n) for n in broken_names)
        planted.renamed.update((builder, n) for n in renamed_names)
        broken_span = {n: sorted(rng.sample(range(revisions), 2)) for n in broken_names}
        rename_at = {n: rng.randrange(revisions) for n in renamed_names}
        runs = [r for r in range(revisions) for _ in range(1 + (rng.random() < rebuilt) * rng.choice((1, 2)))]
        n_builds = len(runs)
        builder_shifts = []
        for k in range(shifts):
            step = rng.choice(["compile", "test"])
            # apart from each other and from the ends, so each has a window on both sides
            index = (k + 1) * n_builds // (shifts + 1) + rng.randrange(-5, 6)
            ratio = rng.choice([rng.uniform(1.3, 2.0), rng.uniform(0.45, 0.7)])
            builder_shifts.append(PlantedShift(builder, step, index, ratio))
        planted.shifts.extend(builder_shifts)
        base = {s: d * (1 + 0.2 * b_index) for s, d in STEPS.items()}
        numbers: list[int] = []
        t = START
        for index, revision in enumerate(runs):
            buildid += 1
            number = index + 1
            numbers.append(number)
            rev = None if rng.random() < no_revision else f"{revision:040x}"
            clock = t
            step_rows = []
            for step, seconds in base.items():
                for s in builder_shifts:
                    if s.step == step and index >= s.index:
                        seconds *= s.ratio
                took = max(1, round(rng.gauss(seconds, noise * seconds)))
                if rng.random() < spikes:  # a single slow build: noise, not a shift
                    took *= 3
                step_rows.append(Step(buildid, step, clock, clock + took, 0))
                clock += took
            planted.steps.extend(step_rows)
            failed = False
            setid += 1
            unit = ResultSet(setid, buildid, "unit tests", "pass_fail", "boolean")
            planted.sets.append(unit)
            for name in names:
                shown = name
                if name in rename_at and revision >= rename_at[name]:
                    shown = name.replace("test_", "renamed_test_")
                if name in rates:
                    passed = rng.random() >= rates[name]
                elif name in broken_span:
                    lo, hi = broken_span[name]
                    passed = not lo <= revision < hi
                else:
                    passed = True
                failed |= not passed
                planted.rows.append(TestRow(setid, shown, "tests/test_all.py", "1" if passed else "0"))
            setid += 1
            lint = ResultSet(setid, buildid, "lint", "fail_only", "message")
            planted.sets.append(lint)
            for name, rate in lint_flaky.items():
                if rng.random() < rate:
                    planted.rows.append(TestRow(setid, name, "", "line too long"))
            planted.builds.append(Build(buildid, b_index + 1, builder, number, t, clock + 2, 2 if failed else 0, rev))
            t = clock + rng.randrange(60, 600)
        planted.numbers[builder] = numbers
    return planted
