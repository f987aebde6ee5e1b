"""The Prometheus dashboard (``buildbot-stats dashboard --datasource prometheus``), query by query.

A real master with two LocalWorkers runs builds (some failing, of different
lengths) with a PrometheusStorageService; a real Prometheus scrapes it every
second.  Then every PromQL query of every panel runs against that Prometheus as
Grafana runs it: a range query over the time the builds ran, with the template
variables substituted as Grafana's Prometheus data source substitutes them
(``$builder`` from ``label_values(buildbot_builds_running, builder)``, both with
"All" chosen, its ``allValue`` ``.*``, and with every builder chosen: multi-value,
regex-escaped, ``(a|b)``; ``$window`` its default;
``$__rate_interval`` from the step and the scrape interval).  Each must return
at least one series with a finite value.

The live-state panels need the gauges of issue 21 (``buildbot_workers_connected``
...): a master without them fails those queries, all named in one message.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from buildbot_stats.cli import main
from buildbot_stats.cli.dashboard import load_dashboard, panel_targets
from tests.e2e.conftest import MakeMaster, wait_until
from tests.support.ports import free_port
from tests.support.prometheus import SCRAPE_INTERVAL, PrometheusServer, require_prometheus

BUILDERS = ("linux-x86_64", "docs.site")  # a dot: Grafana must escape it in the regex
CHANGES = 3
STEP_SECONDS = 1  # Grafana's $__interval for this short range (its minimum: the scrape interval)

HEADER = """
from buildbot.process import buildstep
from buildbot.process.results import FAILURE, SUCCESS
from twisted.internet import reactor, task

from buildbot_stats import statistics


class Work(buildstep.BuildStep):
    name = 'work'

    async def run(self):
        number = self.getProperty('buildnumber')
        await task.deferLater(reactor, 0.4 * number, lambda: None)
        return FAILURE if number == 2 else SUCCESS
"""

SERVICES = """
c['services'].append(statistics.StatsService(
    storage_backends=[statistics.PrometheusStorageService(
        port={port},
        captures=[
            statistics.CaptureBuildDurationAllBuilders(),
            statistics.CaptureBuildResultsAllBuilders(),
            statistics.CaptureBuildQueueTimeAllBuilders(),
            statistics.CaptureStepDurationAllBuilders(),
        ],
        name='prom',
        buckets=[0.5, 1, 2, 5, 10],
    )],
    name='StatsService',
))
"""


# -- Grafana's substitutions (its Prometheus data source) ---------------------------


def regular_escape(value: str) -> str:
    """prometheusRegularEscape: a single-value variable."""
    return value.replace("\\", "\\\\").replace("'", "\\\\'")


def special_regex_escape(value: str) -> str:
    """prometheusSpecialRegexEscape: each value of a multi-value or include-all variable."""
    value = value.replace("\\", "\\\\\\\\")
    return re.sub(r"[$^*{}\[\]'+?.()|]", lambda m: "\\\\" + m.group(0), value)


def interpolate(values: list[str], variable: dict[str, Any]) -> str:
    """interpolateQueryExpr of Grafana's Prometheus data source."""
    if not variable.get("multi") and not variable.get("includeAll"):
        return regular_escape(values[0])
    escaped = [special_regex_escape(v) for v in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def rate_interval(step_s: int, scrape_s: int) -> str:
    """$__rate_interval: max($__interval + scrape interval, 4 x scrape interval)."""
    return f"{max(step_s + scrape_s, 4 * scrape_s)}s"


def substitute(expr: str, values: dict[str, str], step_s: int, scrape_s: int) -> str:
    text = expr.replace("$__rate_interval", rate_interval(step_s, scrape_s))
    text = text.replace("$__interval", f"{step_s}s")
    for name in sorted(values, key=len, reverse=True):
        text = text.replace(f"${name}", values[name])
    assert "$" not in text, text
    return text


def variable_values(prom: PrometheusServer, dashboard: dict[str, Any]) -> dict[str, str]:
    """Each template variable as Grafana substitutes it, with "All" (or its default) chosen."""
    values: dict[str, str] = {}
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "interval":
            values[variable["name"]] = variable["current"]["value"]
            continue
        m = re.fullmatch(r"label_values\((\w+), *(\w+)\)", variable["query"]["query"])
        assert m, variable
        found = sorted(prom.api(f"label/{m.group(2)}/values", **{"match[]": m.group(1)}))
        assert found, f"the variable {variable['name']} has no values"
        values[variable["name"]] = interpolate(found, variable)
    return values


def all_chosen(values: dict[str, str], dashboard: dict[str, Any]) -> dict[str, str]:
    """The same with "All" chosen where a variable has an ``allValue`` (Grafana then uses that)."""
    alls = {v["name"]: v["allValue"] for v in dashboard["templating"]["list"] if v.get("allValue")}
    return {**values, **alls}


def range_query(prom: PrometheusServer, expr: str, start: float, end: float, step_s: int) -> list[Any]:
    data = prom.api("query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step=f"{step_s}s")
    assert data["resultType"] == "matrix", data
    return list(data["result"])


def finite_values(result: list[Any]) -> list[float]:
    return [v for series in result for _, text in series["values"] if math.isfinite(v := float(text))]


# -- the master and the Prometheus scraping it ---------------------------------------


@pytest.fixture
def scraped(make_master: MakeMaster, tmp_path: Path) -> Iterator[tuple[PrometheusServer, float]]:
    """A Prometheus that scraped a master while it ran its builds; the time the builds began."""
    require_prometheus()
    port = free_port()
    m = make_master({b: "[Work()]" for b in BUILDERS}, header=HEADER, services=SERVICES.format(port=port))
    prom = PrometheusServer(tmp_path / "prometheus", targets=[f"127.0.0.1:{port}"])
    try:
        m.start()
        prom.start()
        prom.wait_for_target_up()
        # a fresh master, no build finished yet: $builder lists every builder already (live panels)
        wait_until(
            "every builder in the $builder variable before any build",
            lambda: (
                sorted(prom.api("label/builder/values", **{"match[]": "buildbot_builds_running"}))
                == sorted(BUILDERS)
            ),
        )
        began = time.time()
        m.sendchange(CHANGES)
        m.wait_for_builds(CHANGES * len(BUILDERS))
        wait_until(
            "every build in Prometheus",
            lambda: prom.query_value("sum(buildbot_builds_total)") == CHANGES * len(BUILDERS),
        )
        time.sleep(2)  # a few more scrapes: a rate needs two samples after the last change
        yield prom, began
        m.stop()
        assert m.tracebacks() == []
    finally:
        prom.close()


def test_every_dashboard_query_returns_data(scraped: tuple[PrometheusServer, float]) -> None:
    prom, began = scraped
    dashboard = load_dashboard(datasource="prometheus")
    values = variable_values(prom, dashboard)
    assert values["builder"] == "(docs\\\\.site|linux-x86_64)"
    assert all_chosen(values, dashboard)["builder"] == ".*"
    scrape_s = int(SCRAPE_INTERVAL.rstrip("s"))
    start, end = began - 5, time.time()
    targets = panel_targets(dashboard)
    assert len(targets) >= 15
    empty = []
    for title, ref, expr in targets:
        for chosen in (values, all_chosen(values, dashboard)):
            query = substitute(expr, chosen, STEP_SECONDS, scrape_s)
            if not finite_values(range_query(prom, query, start, end, STEP_SECONDS)):
                empty.append(f"{title} {ref}: {query}")
    assert empty == [], "queries without data:\n" + "\n".join(empty)


def test_dashboard_is_grafana_json_bound_or_asking_for_its_data_source(
    capsys: pytest.CaptureFixture[str],
) -> None:
    dashboard = load_dashboard(datasource="prometheus")
    assert dashboard["__inputs"][0]["pluginId"] == "prometheus"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(set(ids)) == len(ids)
    assert all("expr" in t for _, t in ((p, t) for p in dashboard["panels"] for t in p.get("targets", [])))
    assert main(["dashboard", "--datasource", "prometheus", "--datasource-uid", "prom-1"]) == 0
    bound = json.loads(capsys.readouterr().out)
    assert bound == load_dashboard("prom-1", "prometheus")
    assert "__inputs" not in bound and "${DS_PROMETHEUS}" not in json.dumps(bound)
    assert {p["datasource"]["uid"] for p in bound["panels"] if "datasource" in p} == {"prom-1"}
    # the default is still the InfluxDB dashboard
    assert main(["dashboard"]) == 0
    assert json.loads(capsys.readouterr().out)["__inputs"][0]["pluginId"] == "influxdb"
