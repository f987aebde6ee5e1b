"""A master's ``master.cfg`` and database URL, found the way Buildbot finds them.

One place for the commands that read a master's database (``backfill``,
``insights``): master.cfg is loaded as ``buildbot checkconfig`` loads it, the
database URL rendered as the master renders it, and a missing SQLite file is
an error (SQLite would create an empty one).  Problems a user can fix are a
:class:`MasterError` of one line, never with the database password.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

__all__ = ["MasterError", "check_sqlite_file", "database_url", "load_master_cfg", "one_line", "shown_url"]


class MasterError(Exception):
    """A problem the user can fix (missing master.cfg, unusable database): one line."""


def load_master_cfg(basedir: str) -> Any:
    """The master's loaded config."""
    from buildbot.config.errors import ConfigErrors
    from buildbot.config.master import FileLoader

    if not os.path.isfile(os.path.join(basedir, "master.cfg")):
        raise MasterError(f"no master.cfg in {basedir}")
    try:
        with warnings.catch_warnings():
            # buildbot checkconfig reports those; here they would only bury the output
            warnings.simplefilter("ignore")
            return FileLoader(basedir, "master.cfg").loadConfig()
    except ConfigErrors as e:
        raise MasterError(f"master.cfg has errors: {'; '.join(str(x) for x in e.errors)}") from None


async def database_url(master: Any, master_cfg: Any, basedir: str) -> str:
    """The database URL of ``master_cfg``, rendered by ``master`` (a BuildMaster), checked to exist."""
    try:
        db_config = await master.get_db_config(master_cfg)
    except Exception as e:  # e.g. a db_url rendered from a secret this tool cannot reach
        raise MasterError(f"cannot work out the database URL of master.cfg: {e}") from None
    url = str(db_config.db_url)
    check_sqlite_file(url, basedir)
    return url


def check_sqlite_file(url: str, basedir: str) -> None:
    """A MasterError if ``url`` is an SQLite file that does not exist."""
    from sqlalchemy.engine.url import make_url

    shown = shown_url(url)
    try:
        parsed = make_url(url)
    except Exception as e:
        raise MasterError(f"cannot open the database {shown}: {one_line(e, url)}") from None
    if not parsed.drivername.startswith("sqlite") or parsed.database in (None, "", ":memory:"):
        return
    path = parsed.database.replace("%(basedir)s", basedir)
    if not os.path.isabs(path):
        path = os.path.join(basedir, path)
    if not os.path.isfile(path):
        raise MasterError(f"cannot open the database {shown}: {path} does not exist")


def shown_url(url: str) -> str:
    """The database URL without its password."""
    try:
        from sqlalchemy.engine.url import make_url

        return str(make_url(url).render_as_string(hide_password=True))
    except Exception:
        return "<the db_url of master.cfg>"


def one_line(e: BaseException, url: str) -> str:
    """The first line of an exception's message, without the database password."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    try:
        from sqlalchemy.engine.url import make_url

        password = make_url(url).password
    except Exception:
        password = None
    if password:
        text = text.replace(str(password), "***")
    return text
