"""``buildbot-stats dashboard``: the Grafana dashboard shipped with the package.

The dashboard (``dashboards/buildbot-stats-influxdb.json``) is in Grafana's
export format: importing it asks for the InfluxDB data source (the input
``DS_INFLUXDB``).  With ``--datasource-uid`` the input is filled in, so that
the file can go into a provisioning directory, where inputs are not asked for.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

__all__ = ["DASHBOARD_FILE", "DATASOURCE_INPUT", "dashboard_json", "load_dashboard", "panel_targets"]

DASHBOARD_FILE = "buildbot-stats-influxdb.json"
DATASOURCE_INPUT = "${DS_INFLUXDB}"


def load_dashboard(datasource_uid: str | None = None) -> dict[str, Any]:
    """The dashboard as a dict; with ``datasource_uid``, bound to that data source."""
    text = resources.files("buildbot_stats.cli").joinpath("dashboards", DASHBOARD_FILE).read_text("utf-8")
    dashboard: dict[str, Any] = json.loads(text)
    if datasource_uid is not None:
        dashboard = _bind(dashboard, datasource_uid)
        dashboard.pop("__inputs", None)
    return dashboard


def _bind(value: Any, uid: str) -> Any:
    if isinstance(value, dict):
        return {k: _bind(v, uid) for k, v in value.items()}
    if isinstance(value, list):
        return [_bind(v, uid) for v in value]
    if value == DATASOURCE_INPUT:
        return uid
    return value


def dashboard_json(datasource_uid: str | None = None) -> str:
    """The dashboard as JSON text (what ``buildbot-stats dashboard`` prints)."""
    return json.dumps(load_dashboard(datasource_uid), indent=2) + "\n"


def panel_targets(dashboard: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(panel title, refId, InfluxQL query) of every query of every panel."""
    return [
        (panel["title"], target["refId"], target["query"])
        for panel in dashboard.get("panels", [])
        for target in panel.get("targets", [])
    ]
