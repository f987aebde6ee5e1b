"""The Statistics page in Buildbot's web UI (docs/ui.rst): all a master.cfg loads of it; the
page's code (:mod:`buildbot_stats.ui.app`) is imported when the page is first served."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from buildbot import config

__all__ = ["StatsDashboard"]


class StatsPageApp:
    """The WSGI app Buildbot mounts; it loads :class:`buildbot_stats.ui.app.StatsPage` on the first request.
    buildbot-wsgi-dashboards sets :attr:`buildbot_api` (its plugin: the page finds the store from its
    ``master``).  Buildbot sends ``c['www']`` to browsers: this object shows there as its class name only."""

    def __init__(self, name: str, store: str | None) -> None:
        self.name = name
        self.store = store
        self.buildbot_api: Any = None
        self._page: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<StatsPageApp {self.name!r}>"

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        with self._lock:
            if self._page is None:
                from buildbot_stats.ui.app import StatsPage  # the page's code, on first use

                self._page = StatsPage(self.store, lambda: getattr(self.buildbot_api, "master", None))
        return self._page(environ, start_response)


def StatsDashboard(  # noqa: N802  (reads like the other objects of master.cfg)
    name: str = "stats",
    caption: str = "Statistics",
    order: int = 5,
    store: str | None = None,
    icon: str = "FaChartBar",
) -> dict[str, Any]:
    """The dict ``c['www']['plugins']['wsgi_dashboards']`` takes for the Statistics page, at ``#/<name>``
    under the menu entry ``caption``: it reads the store of this master's ``SQLiteStorageService``, or
    ``store`` (a path, relative to the master's basedir)."""
    if not isinstance(name, str) or not name or "/" in name or name.strip() != name:
        config.error(f"StatsDashboard: name must be a non-empty string without '/' or spaces, not {name!r}")
    if not isinstance(caption, str) or not caption:
        config.error(f"StatsDashboard: caption must be a non-empty string, not {caption!r}")
    if store is not None and (not isinstance(store, str) or not store):
        config.error(f"StatsDashboard: store must be a path (a non-empty string), not {store!r}")
    if not isinstance(order, int) or isinstance(order, bool):
        config.error(f"StatsDashboard: order must be an int, not {order!r}")
    return {"name": name, "caption": caption, "app": StatsPageApp(name, store), "order": order, "icon": icon}
