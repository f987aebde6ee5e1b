"""Flaky tests: the same test, on the same builder, both passed and failed for one source revision.

A test that fails on every build from one revision until a later fix is
broken, not flaky: no revision saw it pass and fail.  A build without a
revision counts in a test's passes and failures but is never paired.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from buildbot_stats.insights.records import Build, ResultRow, ResultSet, lists_failures_only, outcome

__all__ = ["FlakyTest", "find_flaky"]


@dataclass
class FlakyTest:
    builder: str
    builderid: int
    test: str
    path: str
    passes: int
    failures: int
    #: how many source revisions saw the test both pass and fail
    revisions_with_both: int
    revisions_built: int
    last_failure_build: int

    @property
    def failure_rate(self) -> float:
        return self.failures / (self.passes + self.failures)


@dataclass
class _Runs:
    passes: int = 0
    failures: int = 0
    last_failure: Build | None = None
    by_revision: dict[str, list[int]] = field(default_factory=dict)  # revision -> [passes, failures]

    def add(self, build: Build, passed: bool) -> None:
        if passed:
            self.passes += 1
        else:
            self.failures += 1
            if self.last_failure is None or build.number > self.last_failure.number:
                self.last_failure = build
        if build.revision:
            self.by_revision.setdefault(build.revision, [0, 0])[0 if passed else 1] += 1


def find_flaky(
    builds: Iterable[Build], sets: Iterable[ResultSet], rows: Iterable[ResultRow]
) -> list[FlakyTest]:
    """The flaky tests among ``rows`` (results of ``sets`` of ``builds``), most revisions with both first.

    A ``fail_only`` (or ``code_issue``) set lists failures only: a test it
    listed in some build passed in every other build where a set of the same
    description ran on that builder.
    """
    build_of = {b.buildid: b for b in builds}
    set_of: dict[int, tuple[ResultSet, Build]] = {}
    #: (builder, description) -> builds that ran a failures-only set of that description
    failure_lists: dict[tuple[str, str | None], set[int]] = {}
    for s in sets:
        build = build_of.get(s.buildid)
        if build is None:
            continue
        set_of[s.setid] = (s, build)
        if lists_failures_only(s):
            failure_lists.setdefault((build.builder, s.description), set()).add(build.buildid)
    runs: dict[tuple[str, str, str], _Runs] = {}
    #: (builder, description, name, path) -> builds whose failures-only set listed the test
    listed: dict[tuple[str, str | None, str, str], set[int]] = {}
    for row in rows:
        found = set_of.get(row.setid)
        if found is None:
            continue
        result_set, build = found
        passed = outcome(result_set, row.value)
        if passed is None:
            continue
        key = (build.builder, row.name, row.path)
        entry = runs.get(key)
        if entry is None:
            entry = runs[key] = _Runs()
        entry.add(build, passed)
        if lists_failures_only(result_set):
            listed.setdefault((build.builder, result_set.description, row.name, row.path), set()).add(
                build.buildid
            )
    for (builder, description, name, path), failed_in in listed.items():
        entry = runs[(builder, name, path)]
        for buildid in failure_lists[(builder, description)] - failed_in:
            entry.add(build_of[buildid], True)
    found_flaky = []
    for (builder, name, path), entry in runs.items():
        both = sum(1 for p, f in entry.by_revision.values() if p and f)
        if both and entry.last_failure is not None:
            found_flaky.append(
                FlakyTest(
                    builder=builder,
                    builderid=entry.last_failure.builderid,
                    test=name,
                    path=path,
                    passes=entry.passes,
                    failures=entry.failures,
                    revisions_with_both=both,
                    revisions_built=len(entry.by_revision),
                    last_failure_build=entry.last_failure.number,
                )
            )
    found_flaky.sort(key=lambda t: (-t.revisions_with_both, -t.failures, t.builder, t.test, t.path))
    return found_flaky
