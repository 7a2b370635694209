"""proclets: migratable logical processes with exactly-once calls (Nu + RIFL).

A proclet is an instance of a :class:`Proclet` subclass living in a runtime process; its
instance attributes are its state. :class:`ProcletRef` calls its methods from any process,
exactly once, and keeps working while the proclet migrates between runtimes
(``Cluster.migrate``). A proclet whose runtime dies is lost (:class:`ProcletLost`), never
re-created behind its callers' backs. See docs/proclets.md.

    with proclets.Cluster.local(runtimes=3) as cluster:
        ref = cluster.spawn(Counter, 10, on=0)
        ref.incr(5)
        cluster.migrate(ref, to=1)
        ref.incr(1)

Also here: the controller's store (:mod:`proclets.store`, etcd-shaped) and the lifecycle
table (:mod:`proclets.lifecycle`).
"""
from proclets.cluster import Cluster, LocalCluster
from proclets.errors import (CallError, MigrationError, NotImportable, OutcomeUnknown,
                             ProcletError, ProcletLost)
from proclets.lifecycle import LIFECYCLE, Action, Event as LifecycleEvent, LifecycleError, State
from proclets.migration import MigrationStats
from proclets.proclet import Proclet, blocking
from proclets.ref import Faults, ProcletRef, connect, faults
from proclets.store import (Compacted, Event, KeyValue, LeaseExpired, MemoryStore, StoreError,
                            Watch)

__all__ = ["LIFECYCLE", "Action", "CallError", "Cluster", "Compacted", "Event", "Faults",
           "KeyValue", "LeaseExpired", "LifecycleError", "LifecycleEvent", "LocalCluster",
           "MemoryStore", "MigrationError", "MigrationStats", "NotImportable",
           "OutcomeUnknown", "Proclet", "ProcletError", "ProcletLost", "ProcletRef", "State",
           "StoreError", "Watch", "blocking", "connect", "faults"]


def __getattr__(name: str):
    # The distribution's version, read from its metadata on first use (as microrpc does).
    if name == "__version__":
        from microrpc import _distribution_version
        return _distribution_version()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
