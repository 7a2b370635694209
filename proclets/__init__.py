"""proclets: migratable logical processes with exactly-once calls (Nu + RIFL).

Being built (issue #11). What exists so far is the controller's store
(:mod:`proclets.store`): keys with revisions, compare-and-swap, leases and watches, in
memory, shaped after etcd's API so that an etcd-backed store can take its place.
"""
from proclets.store import (Compacted, Event, KeyValue, LeaseExpired, MemoryStore, StoreError,
                            Watch)

__all__ = ["Compacted", "Event", "KeyValue", "LeaseExpired", "MemoryStore", "StoreError",
           "Watch"]
