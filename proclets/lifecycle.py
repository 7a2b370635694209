"""The lifecycle of one proclet on one runtime, as a table.

A runtime keeps, for each proclet id it has heard of, one of five states:

* ``ABSENT``: not here (never was, moved away, or destroyed). A call is answered
  WRONG_TARGET: the caller's ref refreshes its location from the controller and retries.
* ``PRESENT``: here and serving calls.
* ``MIGRATING_OUT``: moving away. New calls are refused with RETRY_ELSEWHERE (the ref retries
  after refreshing; nothing has run), calls already running finish, then the state is sent.
* ``MIGRATING_IN``: arriving. Calls are refused with RETRY_ELSEWHERE until it is installed.
* ``LOST``: its runtime died with its state (the controller's view, and a runtime's after
  the controller tells it). A call ends with ProcletLost; the proclet is never re-created
  behind its callers' backs.

:data:`LIFECYCLE` maps every (state, event) pair that can happen to the action the runtime
takes and the state it is in afterwards. A pair missing from it is a bug in the caller (the
migration protocol sent an event the state cannot take) and :func:`step` raises
:class:`LifecycleError`. The table is checked at import; tests walk every pair.
"""
from __future__ import annotations

import enum

__all__ = ["Action", "Event", "LIFECYCLE", "LifecycleError", "State", "step"]


class State(enum.Enum):
    ABSENT = "absent"
    PRESENT = "present"
    MIGRATING_OUT = "migrating out"
    MIGRATING_IN = "migrating in"
    LOST = "lost"


class Event(enum.Enum):
    SPAWN = "spawn"                # create it here with its first state
    CALL = "call"                  # a call for it arrived
    MIGRATE_OUT = "migrate out"    # start moving it away (stop admitting calls)
    PREPARE_IN = "prepare in"      # this runtime is the destination of a migration
    INSTALL = "install"            # its state arrived here and the directory names us
    HANDED_OFF = "handed off"      # the destination installed it: it is no longer ours
    ABORT = "abort"                # the migration failed (either side): back as before
    DESTROY = "destroy"            # its owner deleted it
    RUNTIME_LOST = "runtime lost"  # the runtime that held it died


class Action(enum.Enum):
    CREATE = "create"              # make the instance
    RUN = "run"                    # run the call (exactly once: the completion table)
    WRONG_TARGET = "wrong target"  # answer WRONG_TARGET: refresh the location, retry
    RETRY_ELSEWHERE = "retry elsewhere"  # answer RETRY_ELSEWHERE: retry after a refresh
    LOST = "lost"                  # answer LOST: the call ends with ProcletLost
    FREEZE = "freeze"              # stop admitting; send the state once running calls end
    RESERVE = "reserve"            # expect its state
    INSTALL = "install"            # install the received state, serve again
    DROP = "drop"                  # forget the instance (its state lives elsewhere or nowhere)
    THAW = "thaw"                  # the migration failed: serve again here
    REFUSE = "refuse"              # the request cannot be honoured (already exists, gone)
    NOTHING = "nothing"            # already so


S, E, A = State, Event, Action
LIFECYCLE: dict[tuple[State, Event], tuple[Action, State]] = {
    # --- not here
    (S.ABSENT, E.SPAWN): (A.CREATE, S.PRESENT),
    (S.ABSENT, E.CALL): (A.WRONG_TARGET, S.ABSENT),
    (S.ABSENT, E.MIGRATE_OUT): (A.REFUSE, S.ABSENT),        # a stale controller: nothing to move
    (S.ABSENT, E.PREPARE_IN): (A.RESERVE, S.MIGRATING_IN),
    (S.ABSENT, E.ABORT): (A.NOTHING, S.ABSENT),             # an abort for a reservation we lost
    (S.ABSENT, E.DESTROY): (A.NOTHING, S.ABSENT),
    (S.ABSENT, E.RUNTIME_LOST): (A.NOTHING, S.ABSENT),      # it was not on the dead runtime
    # --- here, serving
    (S.PRESENT, E.SPAWN): (A.REFUSE, S.PRESENT),            # ids are unique: a bug or a replay
    (S.PRESENT, E.CALL): (A.RUN, S.PRESENT),
    (S.PRESENT, E.MIGRATE_OUT): (A.FREEZE, S.MIGRATING_OUT),
    (S.PRESENT, E.ABORT): (A.NOTHING, S.PRESENT),           # a resent abort, already thawed
    (S.PRESENT, E.DESTROY): (A.DROP, S.ABSENT),
    (S.PRESENT, E.RUNTIME_LOST): (A.DROP, S.LOST),
    # --- leaving
    (S.MIGRATING_OUT, E.CALL): (A.RETRY_ELSEWHERE, S.MIGRATING_OUT),
    (S.MIGRATING_OUT, E.MIGRATE_OUT): (A.REFUSE, S.MIGRATING_OUT),  # one migration at a time
    (S.MIGRATING_OUT, E.HANDED_OFF): (A.DROP, S.ABSENT),
    (S.MIGRATING_OUT, E.ABORT): (A.THAW, S.PRESENT),
    (S.MIGRATING_OUT, E.DESTROY): (A.REFUSE, S.MIGRATING_OUT),      # after the move, there
    (S.MIGRATING_OUT, E.RUNTIME_LOST): (A.DROP, S.LOST),
    # --- arriving
    (S.MIGRATING_IN, E.CALL): (A.RETRY_ELSEWHERE, S.MIGRATING_IN),
    (S.MIGRATING_IN, E.PREPARE_IN): (A.NOTHING, S.MIGRATING_IN),    # a resent prepare
    (S.MIGRATING_IN, E.INSTALL): (A.INSTALL, S.PRESENT),
    (S.MIGRATING_IN, E.ABORT): (A.DROP, S.ABSENT),
    (S.MIGRATING_IN, E.DESTROY): (A.REFUSE, S.MIGRATING_IN),
    (S.MIGRATING_IN, E.RUNTIME_LOST): (A.DROP, S.LOST),     # the destination died mid-install
    # --- gone for good
    (S.LOST, E.SPAWN): (A.REFUSE, S.LOST),                  # never re-created under its id
    (S.LOST, E.CALL): (A.LOST, S.LOST),
    (S.LOST, E.MIGRATE_OUT): (A.REFUSE, S.LOST),
    (S.LOST, E.PREPARE_IN): (A.REFUSE, S.LOST),
    (S.LOST, E.ABORT): (A.NOTHING, S.LOST),
    (S.LOST, E.DESTROY): (A.NOTHING, S.LOST),
    (S.LOST, E.RUNTIME_LOST): (A.NOTHING, S.LOST),
}
del S, E, A


class LifecycleError(Exception):
    """An event the proclet's state cannot take: a bug in the protocol that sent it."""


def step(state: State, event: Event) -> tuple[Action, State]:
    """The action to take and the next state, for ``event`` in ``state``."""
    try:
        return LIFECYCLE[state, event]
    except KeyError:
        raise LifecycleError(f"a proclet {state.value} cannot take {event.value!r}") from None


def _check_table() -> None:
    """Every pair names a real action and state; every state can be reached."""
    reached = {State.ABSENT}
    for (state, event), (action, after) in LIFECYCLE.items():
        if not (isinstance(state, State) and isinstance(event, Event)
                and isinstance(action, Action) and isinstance(after, State)):
            raise AssertionError(f"malformed lifecycle entry {(state, event)}")
        reached.add(after)
    if reached != set(State):
        raise AssertionError(f"lifecycle states never reached: {set(State) - reached}")


_check_table()
