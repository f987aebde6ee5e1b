"""The ``buildbot-stats`` command: summary, spool, demo, backfill, insights, dashboard and alert-rules.

Every error a person can cause (a missing or foreign file, an unwritable
output) prints one line ``buildbot-stats: error: ...`` and exits with 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any

from buildbot_stats.cli import argtypes
from buildbot_stats.cli.output import visible

PROG = "buildbot-stats"
#: the example alerting rules of ``buildbot-stats alert-rules``, in the package
ALERT_RULES = ("alerts", "buildbot-stats-alerts.yml")

__all__ = ["build_parser", "main"]


class _UsageError(Exception):
    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser = parser


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises instead of exiting, so ``main`` can return 2."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        raise _UsageError(self, message)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``buildbot-stats`` command."""
    parser = _Parser(prog=PROG, description="Statistics of Buildbot masters, stored by buildbot_stats.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    summary = commands.add_parser(
        "summary",
        help="summarise an SQLite store written by SQLiteStorageService",
        description="Per builder: builds, success rate, duration p50/p95/max (nearest rank), queue time "
        "p50/p95, last build; the slowest steps; test totals and pass rate; per data series: count, min, "
        "mean, max.",
    )
    summary.add_argument("path", metavar="PATH", help="the SQLite store (e.g. <basedir>/stats.sqlite)")
    summary.add_argument("--json", action="store_true", help="print JSON instead of a table")
    summary.add_argument(
        "--html", metavar="FILE", help="also write a self-contained HTML page with charts to FILE"
    )
    summary.add_argument(
        "--steps",
        type=argtypes.count,
        default=10,
        metavar="N",
        help="the table shows the N slowest steps (by p95; default 10, 0 for all); JSON and HTML have all",
    )

    spool = commands.add_parser(
        "spool",
        help="show what a delivery spool holds",
        description="Per backend: pending points, oldest and newest timestamp, bytes. Read-only.",
    )
    spool.add_argument("path", metavar="PATH", help="the spool file (e.g. <basedir>/stats-spool.sqlite)")
    spool.add_argument("--json", action="store_true", help="print JSON instead of a table")

    demo = commands.add_parser(
        "demo",
        help="run a real Buildbot master with two local workers, run builds, and summarise their statistics",
        description="Create a throw-away Buildbot master with two LocalWorkers and three builders, run "
        "builds on it, record their statistics into an SQLite file (and an InfluxDB with --influxdb), "
        "print the summary, and stop every process it started.",
    )
    demo.add_argument(
        "--builds", type=argtypes.positive_int, default=10, metavar="N", help="builds to run (default 10)"
    )
    demo.add_argument(
        "--dir",
        metavar="DIR",
        help="new or empty directory for the master and the statistics file (default: a new temporary one)",
    )
    demo.add_argument(
        "--influxdb",
        metavar="URL",
        help="also send the statistics to this InfluxDB 1.x, e.g. http://127.0.0.1:8086/dbname "
        "(the database is created; default name buildbot_stats_demo)",
    )
    demo.add_argument(
        "--port",
        type=argtypes.port,
        metavar="PORT",
        help="the master's PB port on 127.0.0.1 (default: a free one)",
    )
    demo.add_argument(
        "--ui",
        action="store_true",
        help="serve the master's web UI with its Statistics page on 127.0.0.1 and keep it running until "
        'Ctrl-C (needs pip install "buildbot-stats[ui]")',
    )
    backfill = commands.add_parser(
        "backfill",
        help="write the statistics of builds that finished before the plugin was configured",
        description="Replay every finished build in the master's database through the captures of the "
        "StatsService in its master.cfg, into its backends: the points live capture would have written "
        "(values posted with yieldMetricsValue are not in the database and are not backfilled). "
        "Read-only on the master's database; safe while the master runs.",
    )
    from buildbot_stats.cli.backfill import add_arguments

    add_arguments(backfill)

    insights = commands.add_parser(
        "insights",
        help="find flaky tests and builds or steps that got lastingly slower (or faster)",
        description="Read the master's database (the db_url of its master.cfg; read-only, in short "
        "statements, safe while the master runs): tests that both passed and failed for the same source "
        "revision on one builder, and lasting shifts of the median duration of builds and steps, with the "
        "build where each starts.",
    )
    from buildbot_stats.cli.insights import add_arguments as add_insights_arguments

    add_insights_arguments(insights)

    dashboard = commands.add_parser(
        "dashboard",
        help="print a Grafana dashboard (JSON) for the InfluxDB or Prometheus backend",
        description="Print the Grafana dashboard for statistics stored in InfluxDB 1.x (InfluxQL) or "
        "scraped by Prometheus (PromQL), ready for Grafana's import or for a provisioning directory.",
    )
    dashboard.add_argument(
        "--datasource",
        choices=["influxdb", "prometheus"],
        default="influxdb",
        help="the kind of Grafana data source the dashboard's queries are for (default influxdb)",
    )
    dashboard.add_argument(
        "--datasource-uid",
        metavar="UID",
        help="the uid of the data source to use "
        "(default: a ${DS_INFLUXDB} or ${DS_PROMETHEUS} input that Grafana asks for at import)",
    )
    commands.add_parser(
        "alert-rules",
        help="print example Prometheus alerting rules (YAML) for the Prometheus backend",
        description="Print example Prometheus alerting rules: a build running far longer than its "
        "builder's p95, a build request pending too long, no worker connected. Edit the thresholds, "
        "then list the file under rule_files in prometheus.yml.",
    )
    return parser


def _error(message: str) -> int:
    print(f"{PROG}: error: {visible(message, 1000)}", file=sys.stderr)
    return 2


def _summary(args: argparse.Namespace) -> int:
    from buildbot_stats.cli.summary import format_table, summarize_path, to_json
    from buildbot_stats.ui.store import StoreError

    try:
        summary = summarize_path(args.path, charts=bool(args.html))
    except StoreError as e:
        return _error(str(e))
    except RecursionError:  # not expected: SQLite parses the JSON; kept to one line anyway
        return _error(f"{args.path}: cannot read the store (nested too deeply)")
    if summary.immutable:
        print(
            f"{PROG}: note: {visible(args.path)} was opened as immutable (its directory or -shm file is not "
            "writable): points a running master has not checkpointed yet are not counted",
            file=sys.stderr,
        )
    if args.html:
        from buildbot_stats.cli.report_html import render_html  # Jinja2: only when asked

        page = render_html(summary)
        try:
            with open(args.html, "w", encoding="utf-8") as f:
                f.write(page)
        except OSError as e:
            return _error(f"cannot write {args.html}: {e.strerror or e}")
    sys.stdout.write(to_json(summary) + "\n" if args.json else format_table(summary, steps=args.steps))
    if args.html:
        print(f"HTML report written to {os.path.abspath(args.html)}", file=sys.stderr)
    return 0


def _spool(args: argparse.Namespace) -> int:
    from buildbot_stats.cli.spool_info import NotASpoolError, format_table, read_spool_info, to_json

    try:
        info = read_spool_info(args.path)
    except NotASpoolError as e:
        return _error(str(e))
    sys.stdout.write(to_json(info) + "\n" if args.json else format_table(info))
    return 0


def _exception_class(module: Any, name: str) -> tuple[type[BaseException], ...]:
    """``(module.name,)`` if that is an exception class, else ``()`` (``except ():`` catches nothing)."""
    cls = getattr(module, name, None)
    return (cls,) if isinstance(cls, type) and issubclass(cls, Exception) else ()


def _demo(args: argparse.Namespace) -> int:
    try:
        demo = importlib.import_module("buildbot_stats.cli.demo")
    except ModuleNotFoundError as e:
        if e.name in ("buildbot_stats.cli.demo", "buildbot_stats"):
            return _error(
                "the demo is not available in this installation (no module buildbot_stats.cli.demo)"
            )
        return _error(f"the demo needs the Python module {e.name!r}, which is not installed")
    except ImportError as e:
        return _error(f"the demo cannot be loaded: {e}")
    user_errors = _exception_class(demo, "DemoError")
    interrupted = _exception_class(demo, "DemoInterrupted")
    try:
        result = demo.run_demo(args)
    except user_errors as e:  # problems the user can fix: one line, no traceback
        return _error(str(e))
    except interrupted as e:  # Ctrl-C or SIGTERM, once everything the demo started is stopped
        print(f"{PROG}: {e}", file=sys.stderr)
        return int(getattr(e, "exit_code", 130))
    return int(result or 0)


def _backfill(args: argparse.Namespace) -> int:
    from buildbot_stats.cli.backfill import BackfillError, BackfillInterrupted, run_backfill

    try:
        return run_backfill(args)
    except BackfillError as e:
        return _error(str(e))
    except BackfillInterrupted as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 130


def _insights(args: argparse.Namespace) -> int:
    from buildbot_stats.cli.insights import run_insights
    from buildbot_stats.cli.master_db import MasterError

    try:
        return run_insights(args)
    except MasterError as e:
        return _error(str(e))


def _dashboard(args: argparse.Namespace) -> int:
    from buildbot_stats.cli.dashboard import dashboard_json

    sys.stdout.write(dashboard_json(args.datasource_uid, args.datasource))
    return 0


def _alert_rules(args: argparse.Namespace) -> int:
    from importlib import resources

    sys.stdout.write(resources.files("buildbot_stats.cli").joinpath(*ALERT_RULES).read_text("utf-8"))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as e:
        print(e.parser.format_usage().rstrip(), file=sys.stderr)
        return _error(str(e))
    except SystemExit as e:  # --help, --version
        return e.code if isinstance(e.code, int) else 0
    try:
        if args.command == "summary":
            return _summary(args)
        if args.command == "spool":
            return _spool(args)
        if args.command == "demo":
            return _demo(args)
        if args.command == "backfill":
            return _backfill(args)
        if args.command == "insights":
            return _insights(args)
        if args.command == "dashboard":
            return _dashboard(args)
        if args.command == "alert-rules":
            return _alert_rules(args)
        parser.print_help(sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. piped into head: no traceback at exit either
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 0
