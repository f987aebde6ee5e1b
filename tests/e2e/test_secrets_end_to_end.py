"""End to end: a real master whose InfluxDB password is a Buildbot secret (``SecretInAFile``).

influxd runs with authentication.  The master starts with a wrong password
in its secrets directory: builds run, the points are kept in the spool, the
log says the write was refused.  The admin puts the right password in a new
secrets directory, points ``SecretInAFile`` at it and runs ``buildbot
reconfig``; the kept points arrive without a restart.  Buildbot reconfigures
``c['services']`` before it reloads the secrets providers, so the backend
first renders the old value; it renders the secret again after the next
refusal.  Neither password is ever found in the master's basedir: log, spool,
state database.

Why a new directory: Buildbot 4.3 reconfigures a secrets provider only when
its arguments change, and ``SecretInAFile`` reads its files when it is
(re)configured; a file edited in place with an unchanged master.cfg keeps
its old value until the master restarts (seen with this very test).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.e2e.conftest import MakeMaster, spooled, stats_lines, wait_until
from tests.support.influxd import InfluxServer, require_influxd

DB = "bbstats_secrets"
RIGHT = "bbs-e2e_R1ght+pw/9xQ=="
WRONG = "bbs-e2e_Wr0ng+pw/7kZ=="
BUILDERS = ("b1", "b2")

SERVICES = """
from buildbot.plugins import secrets
c['secretsProviders'] = [secrets.SecretInAFile(dirname={secrets_dir!r})]
captures = [statistics.CaptureBuildDurationAllBuilders(), statistics.CaptureBuildResultsAllBuilders()]
c['services'].append(
    statistics.StatsService(
        storage_backends=[
            statistics.InfluxStorageService(
                '127.0.0.1', {port}, 'admin', util.Secret('influxdb-password'), {db!r}, captures,
                name='influx',
            ),
        ],
        name='StatsService',
        max_retry_delay=2,
    )
)
"""


def write_secret(directory: Path, value: str) -> None:
    path = directory / "influxdb-password"
    path.write_text(value + "\n")
    path.chmod(0o600)  # SecretInAFile refuses files others may read


def found_in(basedir: Path, secret: str) -> list[str]:
    """Files under ``basedir`` holding ``secret`` (a recursive grep, binary files too)."""
    needle = secret.encode()
    return [str(p) for p in basedir.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_secret_password_wrong_then_fixed_by_reconfig(tmp_path: Path, make_master: MakeMaster) -> None:
    require_influxd()
    secrets_dir = tmp_path / "secrets-1"
    secrets_dir.mkdir(mode=0o700)
    write_secret(secrets_dir, WRONG)
    fixed_dir = tmp_path / "secrets-2"
    fixed_dir.mkdir(mode=0o700)
    write_secret(fixed_dir, RIGHT)
    with InfluxServer(tmp_path / "influxd", auth_enabled=True) as influx:
        influx.create_admin("admin", RIGHT)
        influx.create_database(DB)
        m = make_master(
            {b: "[steps.ShellCommand(command=['true'])]" for b in BUILDERS},
            header="from buildbot_stats import statistics",
            services=SERVICES.format(secrets_dir=str(secrets_dir), port=influx.port, db=DB),
        )
        rc, out = m.checkconfig()
        assert rc == 0, out

        m.start()
        m.sendchange(1)
        m.wait_for_builds(len(BUILDERS))
        wait_until("the refused write", lambda: stats_lines(m, "refused user 'admin'"))
        wait_until("4 points in the spool", lambda: spooled(m) == 4)
        (line,) = stats_lines(m, "failed")
        assert "InfluxDB refused user 'admin' on database 'bbstats_secrets' (HTTP 401)" in line
        assert "retried every 2s until fixed" in line
        assert influx.measurements(DB) == []
        assert found_in(m.basedir, WRONG) == []  # after the failed write: log, spool, state db

        cfg_path = m.basedir / "master.cfg"
        cfg_path.write_text(cfg_path.read_text().replace(str(secrets_dir), str(fixed_dir)))
        m.reconfig()
        rows = wait_until("the kept points", lambda: _rows(influx) if len(_rows(influx)) == 4 else None)
        builds = m.builds()
        assert sorted((r["series"], r["builder_name"], r["build_number"]) for r in rows) == sorted(
            (f"{b['builder']}-{kind}", b["builder"], str(b["number"]))
            for b in builds
            for kind in ("build-times", "build-results")
        )
        for r in rows:
            build = next(b for b in builds if b["builder"] == r["builder_name"])
            assert r["time"] == build["complete_at"] * 10**9
        wait_until("an empty spool", lambda: spooled(m) == 0)
        assert stats_lines(m, "accepts writes again")

        # later builds go straight through
        m.sendchange(1)
        m.wait_for_builds(2 * len(BUILDERS))
        wait_until("the new points", lambda: len(_rows(influx)) == 8)
        m.stop()
        assert m.tracebacks() == []
        assert found_in(m.basedir, WRONG) == []
        assert found_in(m.basedir, RIGHT) == []


def _rows(influx: InfluxServer) -> list[dict[str, Any]]:
    names = [name for name in influx.measurements(DB) if name != "buildbot-live"]  # (docs/live.rst)
    return [{"series": name, **row} for name in names for row in influx.points(name, DB)]


def test_checkconfig_names_each_wrong_influx_argument(make_master: MakeMaster) -> None:
    services = """
captures = [statistics.CaptureBuildDurationAllBuilders()]
c['services'].append(statistics.StatsService(storage_backends=[
    statistics.InfluxStorageService('127.0.0.1', 8086, 'u', 'pw', None, captures, name='v1'),
    statistics.InfluxDB2StorageService(
        'http://127.0.0.1:8086', 'o', 'b', 't', captures, name='v2', timeout='10'
    ),
    statistics.InfluxDB3StorageService('ftp://127.0.0.1', 'db', 't', captures, name='v3', verify_ssl='no'),
], name='StatsService'))
"""
    m = make_master(
        {"b1": "[steps.ShellCommand(command=['true'])]"},
        header="from buildbot_stats import statistics",
        services=services,
    )
    rc, out = m.checkconfig()
    assert rc != 0, out
    assert "Traceback" not in out
    for line in (
        "InfluxStorageService 'v1': db must be a non-empty name, not None",
        "InfluxDB2StorageService 'v2': timeout must be a number of seconds > 0, not '10'",
        "InfluxDB3StorageService 'v3': url must start with http:// or https://, not 'ftp://127.0.0.1'",
        "InfluxDB3StorageService 'v3': verify_ssl must be True or False, not 'no'",
    ):
        assert line in out, out
