"""What the insights read from Buildbot's database: plain records, no I/O.

The database reader (:mod:`buildbot_stats.insights.database`) makes them; the
analyses (:mod:`~buildbot_stats.insights.flaky`,
:mod:`~buildbot_stats.insights.changepoints`) take them, so that both can be
tested on histories built in code.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["Build", "ResultSet", "Step", "ResultRow", "outcome"]

#: Buildbot's results codes whose durations say nothing about the work (skipped, exception,
#: retry, cancelled): such builds and steps are left out of the duration series
NOT_A_RUN = frozenset({3, 4, 5, 6})


class Build(NamedTuple):
    buildid: int
    builderid: int
    builder: str
    number: int
    started_at: int  # seconds since the epoch, as Buildbot stores them
    complete_at: int | None
    results: int | None
    #: the buildset's sourcestamp revisions (all codebases), else ``got_revision``; None: unknown
    revision: str | None


class Step(NamedTuple):
    buildid: int
    name: str
    started_at: int | None
    complete_at: int | None
    results: int | None


class ResultSet(NamedTuple):
    setid: int
    buildid: int
    description: str | None
    category: str
    value_unit: str


class ResultRow(NamedTuple):
    """One test result: its set, the test's name and code path (either may be empty), its value."""

    setid: int
    name: str
    path: str
    value: str


def outcome(result_set: ResultSet, value: str) -> bool | None:
    """Whether a listed test passed (True), failed (False) or neither, by its set's kind.

    As Buildbot's ``test_result_submitter`` counts them: a ``pass_fail`` set
    with unit ``boolean`` says 1 (passed) or 0 (failed); a ``fail_only`` or
    ``code_issue`` set lists failures; a ``pass_only`` set lists passes; the
    other kinds (performance, sizes...) are no pass or fail.
    """
    category = result_set.category
    if category == "pass_fail" and result_set.value_unit == "boolean":
        text = value.strip()
        if text in ("1", "true", "True"):
            return True
        if text in ("0", "false", "False"):
            return False
        return None
    if category in ("fail_only", "code_issue"):
        return False
    if category == "pass_only":
        return True
    return None


def lists_failures_only(result_set: ResultSet) -> bool:
    """A set whose absent tests passed (those its description listed elsewhere)."""
    return result_set.category in ("fail_only", "code_issue")
