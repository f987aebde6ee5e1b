"""The real-master harness lives in the package (the demo uses it too); re-exported here."""

from buildbot_stats.master_process import (
    CHANGE_AUTH,
    RealMaster,
    RealMasterError,
    free_port,
    make_master_cfg,
)

__all__ = ["CHANGE_AUTH", "RealMaster", "RealMasterError", "free_port", "make_master_cfg"]
