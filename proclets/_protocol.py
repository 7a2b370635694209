"""What runtimes, the controller and refs say to each other: method names, reply codes and
the timing constants of membership. One place for each, so the three sides cannot drift.

A call to a proclet is the runtime method ``CALL``, a raw-codec request carrying
``(pid, method, args, kwargs, lease, seq, ack)`` (``lease, seq, ack``: the caller's RIFL id,
see microrpc.exactly_once) and answered ``(code, value)``, in the bytes proclets._wire
writes and reads:

=================  ==========================================================  ===========
code               meaning                                                     ran?
=================  ==========================================================  ===========
OK                 value is the method's result                                yes, once
ERROR              value is ``[exception type, message]`` raised by the method  yes, once
WRONG_TARGET       not here; value is the address it moved to, or None          no
RETRY              moving in or out, or the call is in progress: retry soon    no
LOST               its runtime died with its state                             no
EXPIRED            the caller's lease is expired: refused                      no
STALE              the call id was already acknowledged (a late duplicate)     no
=================  ==========================================================  ===========
"""
from __future__ import annotations

# --- runtime methods
CALL = "p.call"              # a proclet method call (see the table above)
SPAWN = "p.spawn"            # (pid, class path, args, kwargs) -> epoch
MIGRATE = "p.migrate"        # (pid, destination address) -> statistics dict (at the source)
INSTALL = "p.install"        # raw codec: an install message (proclets.migration)
INFO = "p.info"              # () -> {"id", "address", "proclets"}
FAULTS = "p.faults"          # (dict) -> None: fault injection for tests and benchmarks
DESTROY = "p.destroy"        # (pid) -> DROPPED, BUSY (migrating: ask again) or NOT_HERE

# --- controller methods
REGISTER = "c.register"      # (runtime id, address, [[pid, epoch, class path], ...],
                             #  [client leases it holds valid])
BEAT = "c.beat"              # (runtime id, [proclet client leases]) -> known?
LOCATE = "c.locate"          # (pid) -> [status, runtime id, address, epoch]
PLACE = "c.place"            # (pid, runtime id, address, class path) -> placed?
MOVE = "c.move"              # (pid, from id, epoch, to id, to address) -> new epoch or 0
RECLAIM = "c.reclaim"        # (pid, runtime id, epoch) -> new epoch or 0
LEASE = "c.lease"            # () -> [lease id, ttl]
RENEW = "c.renew"            # (lease) -> still alive?
LEASE_LEFT = "c.lease_left"  # (lease) -> seconds left, or -1 if gone
RUNTIMES = "c.runtimes"      # () -> [[runtime id, address], ...]
FORGET = "c.forget"          # (pid) -> [status, runtime id, address, epoch]: destroyed now

# --- reply codes of CALL
OK, ERROR, WRONG_TARGET, RETRY, LOST, EXPIRED, STALE = range(7)

# --- locate statuses
HERE, GONE, UNKNOWN = "here", "lost", "unknown"

# --- DESTROY answers
DROPPED, BUSY, NOT_HERE = "dropped", "busy", "not here"

# --- membership timing. A runtime beats every HEARTBEAT seconds and is declared dead after
# DEAD_AFTER beats of silence: 0.8 s, inside the 1 s the issue allows for detection and
# leaving a ref ~0.7 s to learn it (its 1.5 s budget). Not shorter: a runtime pickling or
# unpickling a large state holds the GIL for a few hundred ms (a 16 MiB dict of small
# objects: ~0.3 s), and its heartbeat thread waits meanwhile; at 0.5 s a busy machine
# declared such a runtime dead in the middle of a migration.
HEARTBEAT = 0.1
DEAD_AFTER = 8
# A ref polls the controller this often while it waits for a dead runtime's verdict.
RELOCATE_POLL = 0.02
# Client leases (refs' RIFL ids): renewed every third of this by a background thread.
# Short enough that a dead client's records go within a minute, long enough that a busy
# process never misses a renewal.
LEASE_TTL = 30.0
# A runtime that cannot reach its controller for this long exits (no orphans). Longer than
# a controller restart takes.
ORPHAN_TIMEOUT = 10.0
# Environment variable with the cluster key (hex) for processes that use refs.
KEY_ENV = "PROCLETS_CLUSTER_KEY"
CONTROLLER_ENV = "PROCLETS_CONTROLLER"
# Directories (os.pathsep-separated) a controller or runtime appends to its sys.path to
# import proclet classes from: appended, not prepended as PYTHONPATH would be, so that a
# source checkout among them cannot shadow the installed packages (whose compiled modules
# a checkout does not have).
PATH_ENV = "PROCLETS_PATH"
