"""The Statistics page's WSGI app: who may see what, which store, cached figures, at most two renders.

Buildbot's ``WSGIResource`` calls it in the reactor's thread pool, the pool
the delivery's ``deferToThread`` uses too: so at most :data:`MAX_RENDERS`
pages are computed at once (a request that finds both busy for
:data:`RENDER_WAIT` seconds gets a "busy" message), and the figures of a
store are cached for :data:`FRESH_SECONDS`; after that a request is answered
from the cache while one thread computes them again.

Access: Buildbot does not apply ``c['www']['authz']`` to plugin mounts, so the
page asks the master's own REST API (``/api/v2/builders``, on loopback, with the
request's Cookie and Authorization headers) which builders this user may see,
and shows only those.  Inside the UI every answer is 200 (the UI shows an error
status as an endless spinner); on the bare URL a refusal is a 403.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import json
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Hashable, Iterable, Iterator, Mapping
from typing import Any, Callable, Generic, NamedTuple, TypeVar, cast

from twisted.internet import threads
from twisted.python import log
from twisted.python.threadable import isInIOThread

from buildbot_stats.capture.live import LiveSnapshot
from buildbot_stats.stats_service import StatsService
from buildbot_stats.storage_backends.sqlite import SQLiteStorageService
from buildbot_stats.ui.figures import summarize_windows
from buildbot_stats.ui.page import (
    InsightsView,
    WindowFigures,
    prepare,
    render_message,
    render_page,
    window_starts,
)
from buildbot_stats.ui.store import StoreError, open_store

__all__ = [
    "FRESH_SECONDS",
    "INSIGHTS_DAYS",
    "MAX_RENDERS",
    "RENDER_WAIT",
    "FiguresCache",
    "StatsPage",
    "master_live",
    "visible_builders",
]

#: pages computed at once, in this process (the reactor's thread pool has 10 threads by default)
MAX_RENDERS = 2
RENDER_WAIT = 1.0
#: seconds a store locked by a writer is waited for: a render slot is not held longer for it
STORE_BUSY_TIMEOUT = 1.0
#: how long computed figures are shown before they are computed again
FRESH_SECONDS = 60.0
RECOMPUTE_RATIO = 10
#: the insights panels read this many days of the master's database
INSIGHTS_DAYS = 30
ACCESS_TIMEOUT = 10.0

_RENDERS = threading.BoundedSemaphore(MAX_RENDERS)
_TEXT = "text/plain; charset=utf-8"
_CSP = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"


class AccessRefusedError(Exception):
    """The master's REST API refused this user."""


class AccessUnknownError(Exception):
    """The master's REST API could not be asked."""


class BusyError(Exception):
    """Every render slot is taken, or the first figures of the store are being computed."""


def visible_builders(environ: Mapping[str, Any], timeout: float = ACCESS_TIMEOUT) -> dict[str, int]:
    """The builders (name -> builderid) that the user of this request may see, from the master's REST API."""
    port = environ.get("SERVER_PORT") or "80"
    url = f"http://127.0.0.1:{int(port)}/api/v2/builders?field=builderid&field=name"
    headers = {
        header: environ[key]
        for header, key in (("Cookie", "HTTP_COOKIE"), ("Authorization", "HTTP_AUTHORIZATION"))
        if environ.get(key)
    }
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never a proxy
    try:
        with opener.open(urllib.request.Request(url, headers=headers), timeout=timeout) as response:
            data = json.load(response)
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            raise AccessRefusedError(f"HTTP {e.code}") from None
        raise AccessUnknownError(f"{url} answered HTTP {e.code}") from None
    except (OSError, ValueError) as e:
        raise AccessUnknownError(f"{url}: {e}") from None
    try:
        return {str(b["name"]): int(b["builderid"]) for b in data["builders"]}
    except (KeyError, TypeError, ValueError) as e:
        raise AccessUnknownError(f"{url}: unexpected answer ({e!r})") from None


def _stats_services(master: Any) -> list[StatsService]:
    manager = getattr(master, "service_manager", None)
    services = getattr(manager, "namedServices", None) or getattr(master, "namedServices", None) or {}
    return [s for s in list(services.values()) if isinstance(s, StatsService)]


def master_store(master: Any) -> str | None:
    """The path of the first SQLite store of the master's StatsService (None without one)."""
    for service in _stats_services(master):
        for backend in list(service.registeredStorageServices):
            if isinstance(backend, SQLiteStorageService) and backend.path:
                return _resolve(backend.path, master)
    return None


def master_live(master: Any) -> LiveSnapshot | None:
    """The live state of the master's first StatsService that keeps it (None: no live state)."""
    for service in _stats_services(master):
        snapshot = getattr(service, "live_snapshot", None)
        if not callable(snapshot):
            continue
        # taken on the reactor, which changes the live state (this runs in the WSGI thread pool)
        reactor = getattr(master, "reactor", None)
        if reactor is not None and reactor.running and not isInIOThread():
            live = threads.blockingCallFromThread(reactor, snapshot)
        else:
            live = snapshot()
        if live is not None:
            return cast(LiveSnapshot, live)
    return None


def _resolve(path: str, master: Any) -> str:
    path = os.path.expanduser(path)
    basedir = getattr(master, "basedir", None)
    return path if os.path.isabs(path) or not basedir else os.path.join(basedir, path)


class Figures(NamedTuple):
    computed_ns: int
    at: float  # time.monotonic() when computed
    took: float  # seconds it took
    windows: dict[str, WindowFigures]


def compute_figures(path: str) -> Figures:
    """Read the store and compute the figures of every window (seconds for a large store)."""
    now_ns = time.time_ns()
    start = time.monotonic()
    with open_store(path, busy_timeout=STORE_BUSY_TIMEOUT) as store:
        summaries = summarize_windows(store, window_starts(now_ns))
    windows = prepare(summaries, now_ns)
    return Figures(now_ns, time.monotonic(), time.monotonic() - start, windows)


class InsightsFigures(NamedTuple):
    at: float  # time.monotonic() when computed
    took: float
    insights: Any  # buildbot_stats.insights.Insights, None if they could not be read
    error: str | None
    analysis_failed: bool = False  # the history was read, its analysis failed


def compute_insights(database: tuple[str, str]) -> InsightsFigures:
    """The insights of the last :data:`INSIGHTS_DAYS` days of the master's database (url, basedir).

    Read through an engine of its own, read-only, in short statements: the
    master's own database threads are not used.
    """
    start = time.monotonic()
    url, basedir = database
    with _no_cycle_collection():
        return _compute_insights(url, basedir, start)


_cycle_collection_lock = threading.Lock()
#: how many threads compute insights, and whether the collector ran before the first
_cycle_collection = {"paused": 0, "was_enabled": False}


@contextlib.contextmanager
def _no_cycle_collection() -> Iterator[None]:
    """Python's cycle collector paused, in the whole process, while the insights are computed.

    Their millions of small objects (result rows, builds) made each full collection
    a pause of 50-150 ms holding the GIL, so the reactor (web UI, builds) waited that
    long; they are freed by reference counting all the same.
    """
    with _cycle_collection_lock:
        if _cycle_collection["paused"] == 0:
            _cycle_collection["was_enabled"] = gc.isenabled()
            gc.disable()
        _cycle_collection["paused"] += 1
    try:
        yield
    finally:
        with _cycle_collection_lock:
            _cycle_collection["paused"] -= 1
            if _cycle_collection["paused"] == 0 and _cycle_collection["was_enabled"]:
                gc.enable()


def _compute_insights(url: str, basedir: str, start: float) -> InsightsFigures:
    from buildbot_stats.insights import analyse
    from buildbot_stats.insights.database import open_readonly, read_history

    try:
        engine = open_readonly(url, basedir)
        try:
            history = read_history(engine, since=int(time.time()) - INSIGHTS_DAYS * 86400)
        finally:
            engine.dispose()
    except Exception as e:  # shown as a message in the panels; one log line
        error = _one_line(e)
        log.msg(
            f"buildbot_stats: Statistics page: cannot read the insights from the master's database: {error}"
        )
        return InsightsFigures(time.monotonic(), time.monotonic() - start, None, error)
    try:
        insights = analyse(history)
    except Exception as e:  # a defect of the analysis, not of the database: said so, in one log line
        error = _one_line(e)
        log.msg(
            f"buildbot_stats: Statistics page: the analysis of the master's build history failed: {error}"
        )
        return InsightsFigures(time.monotonic(), time.monotonic() - start, None, error, analysis_failed=True)
    return InsightsFigures(time.monotonic(), time.monotonic() - start, insights, None)


def _one_line(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def master_database(master: Any) -> tuple[str, str] | None:
    """The master's database URL (as rendered when it started) and its directory."""
    config = getattr(getattr(master, "db", None), "configured_db_config", None)
    url = getattr(config, "db_url", None)
    if not isinstance(url, str) or not url:
        return None
    return url, str(getattr(master, "basedir", "") or ".")


_Key = TypeVar("_Key", bound=Hashable)
_Entry = TypeVar("_Entry", Figures, InsightsFigures)


class FiguresCache(Generic[_Key, _Entry]):
    """The figures of each store, computed again in the background once older than ``fresh`` seconds,
    or :data:`RECOMPUTE_RATIO` times the time they took if that is longer (a large store's page costs
    the master at most a tenth of a core, however often it is asked for)."""

    def __init__(self, fresh: float = FRESH_SECONDS, compute: Callable[[_Key], _Entry] | None = None) -> None:
        self.fresh = fresh
        #: the store's figures unless told otherwise
        self._compute: Callable[[_Key], _Entry] = compute or compute_figures  # type: ignore[assignment]
        self._lock = threading.Lock()
        self._entries: dict[_Key, _Entry] = {}
        self._computing: set[_Key] = set()

    def get_later(self, key: _Key) -> _Entry | None:
        """The figures of ``key`` if there are any (fresh or not); never computed in the caller's thread:
        missing or old ones are computed in the background."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and time.monotonic() - entry.at < max(
                self.fresh, RECOMPUTE_RATIO * entry.took
            ):
                return entry
            if key in self._computing:
                return entry
            self._computing.add(key)
        threading.Thread(target=self._refresh, args=(key,), name="bbs-stats-figures", daemon=True).start()
        return entry

    def get(self, path: _Key) -> _Entry:
        """The figures of ``path``; the caller holds a render slot (computing the first ones takes it)."""
        with self._lock:
            entry = self._entries.get(path)
            if entry is not None and time.monotonic() - entry.at < max(
                self.fresh, RECOMPUTE_RATIO * entry.took
            ):
                return entry
            computing = path in self._computing
            self._computing.add(path)
        if computing:
            if entry is not None:
                return entry
            raise BusyError("the figures are being computed")
        if entry is not None:
            threading.Thread(
                target=self._refresh, args=(path,), name="bbs-stats-figures", daemon=True
            ).start()
            return entry
        try:
            return self._store(path, self._compute(path))
        finally:
            with self._lock:
                self._computing.discard(path)

    def _store(self, path: _Key, figures: _Entry) -> _Entry:
        with self._lock:
            self._entries[path] = figures
        return figures

    def _refresh(self, path: _Key) -> None:
        try:
            if _RENDERS.acquire(timeout=RENDER_WAIT):
                try:
                    self._store(path, self._compute(path))
                finally:
                    _RENDERS.release()
        except Exception as e:  # the stale figures stay; the next request tries again
            log.msg(f"buildbot_stats: Statistics page: cannot refresh the figures of {path}: {e}")
        finally:
            with self._lock:
                self._computing.discard(path)


def _inside_ui(environ: Mapping[str, Any]) -> bool:
    """Whether the UI fetched the page (to insert it), rather than a browser opening the URL itself."""
    dest = environ.get("HTTP_SEC_FETCH_DEST")
    if dest:
        return dest == "empty"
    return "application/json" in environ.get("HTTP_ACCEPT", "")


class StatsPage:
    """The WSGI app (see :class:`buildbot_stats.ui.dashboard.StatsPageApp`, which loads it)."""

    def __init__(
        self,
        store: str | None,
        master: Callable[[], Any],
        cache: FiguresCache[str, Figures] | None = None,
        insights: FiguresCache[tuple[str, str], InsightsFigures] | None = None,
    ) -> None:
        self.store = store
        self.master = master
        self.cache = cache or FiguresCache()
        #: the insights panels' figures, by (database URL, basedir): always computed in the background
        self.insights = insights or FiguresCache(compute=compute_insights)
        self._logged: str | None = None  # the last problem logged: one log line per problem
        self._pages: collections.OrderedDict[tuple[Any, ...], str] = collections.OrderedDict()
        self._pages_lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "/") not in ("", "/", "/index.html"):
            return self._answer(start_response, "404 Not Found", _TEXT, "not found")
        if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
            return self._answer(
                start_response, "405 Method Not Allowed", "text/plain; charset=utf-8", "GET only"
            )
        inside = _inside_ui(environ)
        status, html = self._page(environ, inside)
        body = "" if environ.get("REQUEST_METHOD") == "HEAD" else html
        return self._answer(start_response, "200 OK" if inside else status, "text/html; charset=utf-8", body)

    def _answer(self, start_response: Any, status: str, content_type: str, text: str) -> list[bytes]:
        data = text.encode("utf-8")
        start_response(
            status,
            [
                ("Content-Type", content_type),
                ("Content-Length", str(len(data))),
                ("Cache-Control", "no-store"),
                ("X-Content-Type-Options", "nosniff"),
                # the bare URL's document: no script, no load from anywhere (inside the UI it is inert)
                ("Content-Security-Policy", _CSP),
            ],
        )
        return [data]

    def _problem(self, text: str) -> None:
        """One log line per problem (not one per request)."""
        if text != self._logged:
            self._logged = text
            log.msg(f"buildbot_stats: Statistics page: {text}")

    def _page(self, environ: Mapping[str, Any], inside: bool) -> tuple[str, str]:
        standalone = not inside
        try:
            builder_ids = visible_builders(environ)
        except AccessRefusedError:
            return "403 Forbidden", render_message(
                "refused",
                "You may not see this master's builders: log in (or ask for access) to see their statistics.",
                standalone=standalone,
            )
        except AccessUnknownError as e:
            self._problem(f"cannot ask the master's REST API which builders the user may see: {e}")
            return "503 Service Unavailable", render_message(
                "access-unknown",
                "The statistics are not shown: the page could not ask this master's REST API which builders "
                "you may see (see the master's twistd.log).",
                standalone=standalone,
            )
        path = self.store_path()
        if path is None:
            return "200 OK", render_message(
                "no-store",
                "This master keeps no statistics the page can read: add SQLiteStorageService(...) beside the "
                "other storage backends of its StatsService (see docs/ui.rst of buildbot-stats).",
                standalone=standalone,
            )
        if not _RENDERS.acquire(timeout=RENDER_WAIT):
            return "503 Service Unavailable", render_message(
                "busy",
                "The statistics page is busy (two pages are being computed): reload in a moment.",
                standalone=standalone,
            )
        try:
            figures = self.cache.get(path)
            query = urllib.parse.parse_qs(environ.get("QUERY_STRING", "")) if standalone else {}
            window = (query.get("window") or [None])[0]
            builder = (query.get("builder") or [None])[0]
            live = self._live()
            page = self._render(figures, self._insights(), live, builder_ids, window, builder, standalone)
            return "200 OK", page
        except BusyError:
            return "503 Service Unavailable", render_message(
                "busy",
                "The statistics are being computed for the first time: reload in a moment.",
                standalone=standalone,
            )
        except StoreError as e:
            self._problem(f"cannot read the store: {e}")
            return "200 OK", render_message(
                "store-error",
                "The statistics store cannot be read (see the master's twistd.log).",
                standalone=standalone,
            )
        except Exception as e:  # never a traceback in the UI or in the master's log
            self._problem(f"cannot show the statistics: {type(e).__name__}: {e}")
            return "500 Internal Server Error", render_message(
                "error",
                "The statistics cannot be shown (see the master's twistd.log).",
                standalone=standalone,
            )
        finally:
            _RENDERS.release()

    def store_path(self) -> str | None:
        """The store this page reads: ``store=`` of StatsDashboard, else the StatsService's SQLite store."""
        master = self.master()
        if self.store is not None:
            return _resolve(self.store, master)
        return master_store(master) if master is not None else None

    def _live(self) -> LiveSnapshot | None:
        """The live state now; None without it, or when it cannot be read (one log line)."""
        try:
            return master_live(self.master())
        except Exception as e:  # the figures are still worth showing
            self._problem(f"cannot read the live state: {type(e).__name__}: {e}")
            return None

    def _insights(self) -> InsightsFigures | None | bool:
        """The insights figures; None while the first are computed; False: this master has no database URL."""
        master = self.master()
        database = master_database(master) if master is not None else None
        if database is None:
            return False
        return self.insights.get_later(database)

    def _render(
        self,
        figures: Figures,
        insights: InsightsFigures | None | bool,
        live: LiveSnapshot | None,
        builder_ids: dict[str, int],
        window: str | None,
        builder: str | None,
        standalone: bool,
    ) -> str:
        """The page, kept for the next request of the same figures and builders (the last 8 pages)."""
        key = (
            id(figures),
            figures.computed_ns,
            id(insights),
            repr(live),
            tuple(sorted(builder_ids.items())),
            window,
            builder,
            standalone,
        )
        with self._pages_lock:
            page = self._pages.get(key)
        if page is None:
            page = render_page(
                figures.windows,
                builder_ids,
                computed_ns=figures.computed_ns,
                window=window,
                builder=builder,
                standalone=standalone,
                link_prefix="../../../" if standalone else "",
                live=live,
                insights=None
                if insights is False
                else InsightsView(
                    insights.insights if isinstance(insights, InsightsFigures) else None,
                    f"last {INSIGHTS_DAYS} days",
                    insights.error if isinstance(insights, InsightsFigures) else None,
                    isinstance(insights, InsightsFigures) and insights.analysis_failed,
                ),
            )
            with self._pages_lock:
                self._pages[key] = page
                while len(self._pages) > 8:
                    self._pages.popitem(last=False)
        return page
