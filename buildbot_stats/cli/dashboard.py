"""``buildbot-stats dashboard``: the Grafana dashboards shipped with the package.

Each dashboard (``dashboards/buildbot-stats-<datasource>.json``) is in
Grafana's export format: importing it asks for its data source (the input
``DS_INFLUXDB`` or ``DS_PROMETHEUS``).  With ``--datasource-uid`` the input is
filled in, so that the file can go into a provisioning directory, where inputs
are not asked for.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

__all__ = [
    "DATASOURCES",
    "dashboard_json",
    "datasource_input",
    "load_dashboard",
    "panel_targets",
]

#: data source type -> the dashboard file for it
DATASOURCES = {
    "influxdb": "buildbot-stats-influxdb.json",
    "prometheus": "buildbot-stats-prometheus.json",
}


def datasource_input(datasource: str) -> str:
    """The placeholder of the data source's uid in the dashboard, e.g. ``${DS_INFLUXDB}``."""
    return "${DS_" + datasource.upper() + "}"


def load_dashboard(datasource_uid: str | None = None, datasource: str = "influxdb") -> dict[str, Any]:
    """The dashboard for ``datasource`` as a dict; with ``datasource_uid``, bound to that data source."""
    name = DATASOURCES[datasource]
    text = resources.files("buildbot_stats.cli").joinpath("dashboards", name).read_text("utf-8")
    dashboard: dict[str, Any] = json.loads(text)
    if datasource_uid is not None:
        dashboard = _bind(dashboard, datasource_input(datasource), datasource_uid)
        dashboard.pop("__inputs", None)
    return dashboard


def _bind(value: Any, placeholder: str, uid: str) -> Any:
    if isinstance(value, dict):
        return {k: _bind(v, placeholder, uid) for k, v in value.items()}
    if isinstance(value, list):
        return [_bind(v, placeholder, uid) for v in value]
    if value == placeholder:
        return uid
    return value


def dashboard_json(datasource_uid: str | None = None, datasource: str = "influxdb") -> str:
    """The dashboard as JSON text (what ``buildbot-stats dashboard`` prints)."""
    return json.dumps(load_dashboard(datasource_uid, datasource), indent=2) + "\n"


def panel_targets(dashboard: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(panel title, refId, query) of every query of every panel: InfluxQL ``query`` or PromQL ``expr``."""
    return [
        (panel["title"], target["refId"], target.get("query") or target["expr"])
        for panel in dashboard.get("panels", [])
        for target in panel.get("targets", [])
    ]
