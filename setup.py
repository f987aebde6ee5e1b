from setuptools import find_packages, setup

with open("README.rst", encoding="utf-8") as f:
    long_description = f.read()

TEST_REQUIRES = [
    # Buildbot's own test fakes turn warnings into errors; these two emit
    # DeprecationWarnings from inside Buildbot 4.3.0 when newer.
    "alembic<1.16",
    "twisted<26.10",
    "buildbot-worker>=4.3",
    "pytest>=8",
    "hypothesis>=6",
    # self-signed certificates for the HTTPS tests
    "cryptography",
    # the PostgreSQL driver of the multi-master test (SQLAlchemy 2.x: postgresql+psycopg://)
    "psycopg[binary]>=3.1",
    # the Prometheus tests parse the exposition with its parser (the backend writes it itself)
    "prometheus_client>=0.12",
]
# the Statistics page in Buildbot's web UI (statistics.StatsDashboard; docs/ui.rst)
UI_REQUIRES = ["buildbot-www", "buildbot-wsgi-dashboards"]

_CAPTURES = [
    f"Capture{what}{scope}"
    for what in (
        "BuildDuration",
        "BuildEndTime",
        "BuildQueueTime",
        "BuildResults",
        "BuildStartTime",
        "Data",
        "Property",
        "StepDuration",
        "TestResults",
    )
    for scope in ("", "AllBuilders")
]
# Buildbot's plugin entry points, as other plugins have them: `from buildbot.plugins import util`,
# then util.StatsService, util.SQLiteStorageService... (docs/configuration.rst)
BUILDBOT_UTIL = {
    "buildbot_stats.stats_service": ["StatsService"],
    "buildbot_stats.storage_backends.influxdb_client": ["InfluxStorageService"],
    "buildbot_stats.storage_backends.influxdb_http": ["InfluxDB2StorageService", "InfluxDB3StorageService"],
    "buildbot_stats.storage_backends.prometheus": ["PrometheusStorageService"],
    "buildbot_stats.storage_backends.sqlite": ["SQLiteStorageService"],
    "buildbot_stats.capture": _CAPTURES,
    "buildbot_stats.steps": ["StatsStepMixin"],
    "buildbot_stats.ui.dashboard": ["StatsDashboard"],
}

setup(
    name="buildbot-stats",
    version="0.1.0",
    description="Statistics for Buildbot masters: captures build data and delivers it "
    "to time-series storage without slowing builds or losing points.",
    long_description=long_description,
    long_description_content_type="text/x-rst",
    license="GPL-2.0-only",
    packages=find_packages(include=["buildbot_stats", "buildbot_stats.*"]),
    # the Grafana dashboards of `buildbot-stats dashboard`, the rules of `alert-rules`,
    # the templates of `summary --html` and of the web page
    package_data={
        "buildbot_stats.cli": ["dashboards/*.json", "alerts/*.yml", "templates/*.j2"],
        "buildbot_stats.ui": ["templates/*.j2"],
    },
    python_requires=">=3.9",
    install_requires=[
        "twisted",
        "buildbot>=4.0",
        "influxdb>=5.3",
        # the InfluxDB 2.x/3 backends (already required by influxdb)
        "requests",
        "zope.interface",
        "Jinja2",  # the HTML report of `buildbot-stats summary --html` (already required by buildbot)
        # the spool's codec (Buildbot requires it too; 1.0 for strict_map_key)
        "msgpack>=1.0",
    ],
    extras_require={
        # LocalWorkers of `buildbot-stats demo`
        "demo": ["buildbot-worker"],
        # benchmarks/bench_builds_webui.py runs masters with the web UI on
        "bench": ["buildbot-worker", "buildbot-www"],
        "ui": UI_REQUIRES,
        # the end-to-end test of the Statistics page needs the UI
        "test": TEST_REQUIRES + UI_REQUIRES,
        "dev": TEST_REQUIRES + UI_REQUIRES + ["ruff", "mypy", "tox", "sphinx"],
    },
    entry_points={
        "console_scripts": ["buildbot-stats = buildbot_stats.cli:main"],
        "buildbot.util": [
            f"{name} = {module}:{name}" for module, names in BUILDBOT_UTIL.items() for name in names
        ],
    },
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "Topic :: Software Development :: Build Tools",
    ],
)
