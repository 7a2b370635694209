"""proclets: migratable logical processes with exactly-once calls (Nu + RIFL).

Being built (issue #11). What exists so far: the controller's store
(:mod:`proclets.store`: keys with revisions, compare-and-swap, leases and watches, in
memory, shaped after etcd's API so that an etcd-backed store can take its place) and the
lifecycle of a proclet on a runtime as one table (:mod:`proclets.lifecycle`).
"""
from proclets.lifecycle import LIFECYCLE, Action, Event as LifecycleEvent, LifecycleError, State
from proclets.store import (Compacted, Event, KeyValue, LeaseExpired, MemoryStore, StoreError,
                            Watch)

__all__ = ["LIFECYCLE", "Action", "Compacted", "Event", "KeyValue", "LeaseExpired",
           "LifecycleError", "LifecycleEvent", "MemoryStore", "State", "StoreError", "Watch"]
