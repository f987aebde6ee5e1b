"""A local two-master cluster with buildbot_stats: run `PYTHONPATH=. python scripts/local-cluster.py` in a checkout."""

from pathlib import Path

from buildbot_stats.cli.master_process import RealMaster, free_port, make_master_cfg
from tests.support.crossbar import CrossbarRouter
from tests.support.postgres import PostgresServer

CLUSTER = """
import os
from buildbot_stats import statistics
c['multiMaster'] = True
c['mq'] = {{'type': 'wamp', 'router_url': {url!r}, 'realm': 'realm1'}}
c['workers'] = [worker.LocalWorker(n) if i == {index} else worker.Worker(n, 'unused')
                for i, n in enumerate(WORKER_NAMES, 1)]
if {index} != 1:  # the change source and the scheduler run on the first master
    c['change_source'] = []
    c['schedulers'] = []
c['services'].append(statistics.StatsService(
    storage_backends=[statistics.SQLiteStorageService(
        os.path.join(basedir, 'stats.sqlite'),
        [statistics.CaptureBuildDurationAllBuilders()])],
    name='StatsService'))
"""

top = Path("/tmp/bbstats-cluster")
with PostgresServer() as pg, CrossbarRouter(top / "crossbar") as router:
    masters = []
    for index in (1, 2):
        cfg = make_master_cfg(
            {"b1": "[steps.ShellCommand(command=['sleep', '1'])]"},
            pb_port=free_port(), workers=2, db_url=pg.url,
            services=CLUSTER.format(url=router.url, index=index),
        )
        m = RealMaster(top / f"master{index}", cfg)
        m.create()
        m.start()
        masters.append(m)
    masters[0].sendchange(4)
    for b in masters[0].wait_for_builds(4):
        print(b["builder"], b["number"], "ran on master", b["masterid"])
    for m in masters:
        m.stop()
# then: buildbot-stats summary /tmp/bbstats-cluster/master1/stats.sqlite (and master2's)
