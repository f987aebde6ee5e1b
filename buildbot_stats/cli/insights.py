"""``buildbot-stats insights``: the flaky tests and the lasting duration shifts in a master's history.

Reads the master's own database (the URL of its master.cfg, as ``backfill``
finds it) read-only, in short statements, so it may run beside the live
master; the analysis is :mod:`buildbot_stats.insights`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from typing import IO, Any

from buildbot_stats.cli.master_db import MasterError, database_url, load_master_cfg, one_line, shown_url
from buildbot_stats.cli.output import Table, format_time, table_lines
from buildbot_stats.insights import Insights, ShiftRule, analyse
from buildbot_stats.insights.database import open_readonly, read_history

__all__ = ["add_arguments", "format_tables", "parse_since", "run_insights"]

_UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str) -> int | None:
    """``30d``, ``12h``, ``2w``, ``90m`` before now, a date (UTC), or ``all``: seconds since the epoch."""
    text = text.strip()
    if text == "all":
        return None
    match = re.fullmatch(r"(\d+)\s*([mhdw])", text)
    if match:
        return int(time.time()) - int(match.group(1)) * _UNITS[match.group(2)]
    from buildbot_stats.cli.backfill import parse_date

    return int(parse_date(text).timestamp())


def _since_argument(text: str) -> int | None:
    try:
        return parse_since(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"not a time: {text!r} (use 30d, 12h, 2w, a date YYYY-MM-DD, or all)"
        ) from None


def _percent(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value:
        raise argparse.ArgumentTypeError(f"not a positive percentage: {text!r}")
    return value / 100


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value < 0:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``buildbot-stats insights``."""
    parser.add_argument("basedir", metavar="MASTER_DIR", help="the master's directory (holding master.cfg)")
    parser.add_argument(
        "--since",
        type=_since_argument,
        default="30d",
        metavar="WHEN",
        help="only builds that finished since WHEN: 30d (default), 12h, 2w, a date (UTC), or all",
    )
    parser.add_argument(
        "--builder",
        action="append",
        metavar="NAME",
        dest="builders",
        help="only builds of this builder (repeat for several)",
    )
    parser.add_argument(
        "--min-change",
        type=_percent,
        default=ShiftRule.min_ratio,
        metavar="PERCENT",
        help="report a duration shift of at least PERCENT of the median before "
        f"(default {100 * ShiftRule.min_ratio:g})",
    )
    parser.add_argument(
        "--min-seconds",
        type=_seconds,
        default=ShiftRule.min_seconds,
        metavar="SECONDS",
        help=f"... and at least SECONDS (default {ShiftRule.min_seconds:g})",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")


def find_insights(
    basedir: str, since: int | None, builders: list[str], rule: ShiftRule
) -> tuple[Insights, str]:
    """The insights of the master in ``basedir``, and its web UI's URL (for build links)."""
    from buildbot.master import BuildMaster
    from twisted.internet import defer

    basedir = os.path.abspath(basedir)
    master_cfg = load_master_cfg(basedir)
    outcome: list[Any] = []
    # no reactor needed: a plain db_url renders at once; one that waits for a secret is refused
    d = defer.ensureDeferred(database_url(BuildMaster(basedir), master_cfg, basedir))
    d.addBoth(outcome.append)
    if not outcome:
        d.cancel()
        raise MasterError("cannot work out the database URL of master.cfg without a running master")
    if isinstance(outcome[0], BaseException) or hasattr(outcome[0], "raiseException"):
        outcome[0].raiseException()
    url = str(outcome[0])
    try:
        engine = open_readonly(url, basedir)
        try:
            history = read_history(engine, since, builders)
        finally:
            engine.dispose()
    except Exception as e:
        raise MasterError(f"cannot read the database {shown_url(url)}: {one_line(e, url)}") from None
    try:
        insights = analyse(history, rule)
    except Exception as e:  # a defect of the analysis: one line, not a traceback
        raise MasterError(
            f"the analysis of the build history failed: {type(e).__name__}: {one_line(e, url)}"
        ) from None
    return insights, str(getattr(master_cfg, "buildbotURL", "") or "")


def build_link(base: str, builderid: int, number: int) -> str:
    """Buildbot's page of a build."""
    return f"{base}#/builders/{builderid}/builds/{number}"


def _seconds_text(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, s = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {s:02d} s"
    hours, m = divmod(minutes, 60)
    return f"{hours} h {m:02d} min"


def format_tables(insights: Insights, base_url: str) -> str:
    """The two tables people read: flaky tests, then slower (and faster) builds and steps."""
    w = insights.window
    first = format_time(w["first_started_at"] * 10**9, "%Y-%m-%d %H:%M") if w["first_started_at"] else "-"
    last = format_time(w["last_complete_at"] * 10**9, "%Y-%m-%d %H:%M") if w["last_complete_at"] else "-"
    lines = [
        f"Read {w['builds']} builds of {w['builders']} builders ({first} to {last} UTC), "
        f"{w['test_results']} results of {w['tests']} tests; "
        f"{w['builds_without_revision']} builds without a revision.",
        "",
        f"Flaky tests: {len(insights.flaky_tests)} (passed and failed for the same revision)",
    ]
    if insights.flaky_tests:
        rows = [
            [
                t.builder,
                t.test + (f" ({t.path})" if t.path else ""),
                str(t.passes),
                str(t.failures),
                f"{100 * t.failure_rate:.1f} %",
                str(t.revisions_with_both),
                build_link(base_url, t.builderid, t.last_failure_build),
            ]
            for t in insights.flaky_tests
        ]
        headers = ["builder", "test", "passes", "failures", "failed", "revisions with both", "last failure"]
        lines += ["  " + line for line in table_lines(Table(headers, rows, (0, 1, 6)))]
    lines += [
        "",
        f"Slower builds and steps: {len(insights.regressions)} lasting shifts of the median duration",
    ]
    if insights.regressions:
        rows = [
            [
                r.builder,
                r.what,
                r.direction,
                _seconds_text(r.before_seconds),
                _seconds_text(r.after_seconds),
                f"{100 * (r.after_seconds - r.before_seconds) / r.before_seconds:+.0f} %"
                if r.before_seconds
                else "-",
                (r.revision or "-")[:12],
                build_link(base_url, r.builderid, r.build_number),
            ]
            for r in insights.regressions
        ]
        headers = ["builder", "what", "direction", "before", "after", "change", "revision", "from build"]
        lines += ["  " + line for line in table_lines(Table(headers, rows, (0, 1, 2, 6, 7)))]
    return "\n".join(lines) + "\n"


def run_insights(args: argparse.Namespace, out: IO[str] = sys.stdout, err: IO[str] = sys.stderr) -> int:
    """Print the insights of ``args.basedir``; MasterError for a problem the user can fix."""
    rule = ShiftRule(min_ratio=args.min_change, min_seconds=args.min_seconds)
    builders = list(args.builders or ())
    insights, base_url = find_insights(args.basedir, args.since, builders, rule)
    seen = set(insights.window.get("builder_names", ()))
    for name in builders:
        if name not in seen:
            err.write(f"buildbot-stats: note: no finished build of builder {name!r} in the window\n")
    if args.json:
        out.write(json.dumps(insights.to_dict(), indent=2) + "\n")
    else:
        out.write(format_tables(insights, base_url))
    return 0
