"""The package uses Buildbot's public APIs only (docs/architecture.rst lists them).

A grep of the package's sources for names Buildbot does not document: its
simple MQ's consumer list and dispatch, its services' stored arguments, any
attribute with a leading underscore on a master, MQ, data or database object,
and Buildbot's private or test modules.
"""

from __future__ import annotations

import re
from pathlib import Path

import buildbot_stats

PACKAGE = Path(buildbot_stats.__file__).parent

#: (pattern, what it is): known private names of Buildbot
PRIVATE = [
    (r"\bqrefs\b", "SimpleMQ.qrefs (its consumer list)"),
    (r"\bpersistent_qrefs\b", "SimpleMQ.persistent_qrefs"),
    (r"\binvokeQref\b", "MQBase.invokeQref (its dispatch)"),
    (r"\b_deferwaiter\b", "MQBase._deferwaiter"),
    (r"\b_config_(args|kwargs)\b", "BuildbotService._config_args/_config_kwargs"),
    (r"\bconfig\._errors\b", "buildbot.config._errors"),
    (r"\b(master|mq|data|db|service_manager|botmaster)\._[A-Za-z]\w*", "an attribute of a Buildbot object"),
    (r"^\s*(from|import)\s+buildbot\.[\w.]*\b_\w+", "a private Buildbot module"),
    (r"^\s*(from|import)\s+buildbot\.test\b", "Buildbot's test helpers"),
]


def private_uses(text: str) -> list[str]:
    """Each private Buildbot name in ``text``, as ``line: what``."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        for pattern, what in PRIVATE:
            if re.search(pattern, line):
                found.append(f"{number}: {what}: {line.strip()}")
    return found


def test_the_package_uses_no_private_buildbot_name():
    sources = sorted(PACKAGE.rglob("*.py"))
    assert len(sources) > 30
    found = [
        f"{path.relative_to(PACKAGE)}:{use}" for path in sources for use in private_uses(path.read_text())
    ]
    assert found == []


def test_the_grep_finds_each_kind_of_private_use():
    samples = [
        "for q in self.master.mq.qrefs:",
        "mq.invokeQref(qref, key, msg)",
        "svc._config_kwargs",
        "self.master._services",
        "from buildbot.util._notifier import Notifier",
        "from buildbot.test.fake import fakemaster",
    ]
    assert [len(private_uses(s)) for s in samples] == [1] * len(samples)
    assert private_uses("self._queues = None\nfrom buildbot.util import service") == []
