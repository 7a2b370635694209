"""The proclet lifecycle table: every (state, event) pair, and the paths a migration takes."""
import itertools

import pytest

from proclets.lifecycle import LIFECYCLE, Action, Event, LifecycleError, State, step

S, E, A = State, Event, Action

# The pairs the protocol must never produce. Listed so that a change to the table is a
# decision, not an accident.
ILLEGAL = {
    (S.ABSENT, E.INSTALL), (S.ABSENT, E.HANDED_OFF),
    (S.PRESENT, E.PREPARE_IN), (S.PRESENT, E.INSTALL), (S.PRESENT, E.HANDED_OFF),
    (S.MIGRATING_OUT, E.SPAWN), (S.MIGRATING_OUT, E.PREPARE_IN), (S.MIGRATING_OUT, E.INSTALL),
    (S.MIGRATING_IN, E.SPAWN), (S.MIGRATING_IN, E.MIGRATE_OUT),
    (S.MIGRATING_IN, E.HANDED_OFF),
    (S.LOST, E.INSTALL), (S.LOST, E.HANDED_OFF),
}


@pytest.mark.parametrize("state, event", list(itertools.product(State, Event)))
def test_every_pair_is_in_the_table_or_refused(state, event):
    if (state, event) in ILLEGAL:
        assert (state, event) not in LIFECYCLE
        with pytest.raises(LifecycleError, match=state.value):
            step(state, event)
    else:
        action, after = step(state, event)
        assert isinstance(action, Action) and isinstance(after, State)


def test_calls_run_only_where_the_proclet_is():
    answers = {state: step(state, E.CALL)[0] for state in State}
    assert answers == {S.ABSENT: A.WRONG_TARGET, S.PRESENT: A.RUN,
                       S.MIGRATING_OUT: A.RETRY_ELSEWHERE, S.MIGRATING_IN: A.RETRY_ELSEWHERE,
                       S.LOST: A.LOST}
    assert all(step(state, E.CALL)[1] is state for state in State)   # a call moves nothing


def walk(state, *events):
    actions = []
    for event in events:
        action, state = step(state, event)
        actions.append(action)
    return actions, state


def test_a_migration_moves_it_from_source_to_destination():
    assert walk(S.PRESENT, E.MIGRATE_OUT, E.HANDED_OFF) == ([A.FREEZE, A.DROP], S.ABSENT)
    assert walk(S.ABSENT, E.PREPARE_IN, E.INSTALL) == ([A.RESERVE, A.INSTALL], S.PRESENT)


def test_a_failed_migration_leaves_it_where_it_was():
    assert walk(S.PRESENT, E.MIGRATE_OUT, E.ABORT) == ([A.FREEZE, A.THAW], S.PRESENT)
    assert walk(S.ABSENT, E.PREPARE_IN, E.ABORT) == ([A.RESERVE, A.DROP], S.ABSENT)


def test_a_lost_proclet_is_never_created_again():
    for event in Event:
        if (S.LOST, event) in LIFECYCLE:
            assert step(S.LOST, event)[1] is S.LOST
    assert step(S.LOST, E.SPAWN)[0] is A.REFUSE
    for state in (S.PRESENT, S.MIGRATING_OUT, S.MIGRATING_IN):
        assert step(state, E.RUNTIME_LOST) == (A.DROP, S.LOST)
