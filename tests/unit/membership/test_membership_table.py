"""The peer-state transition table: every legal pair, every illegal one, key properties."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshd.errors import LocalProtocolError
from meshd.membership import TRANSITIONS, Event, PeerState, transition
from meshd.wire.records import MemberState

U, C, A, S, D, L = (
    PeerState.UNKNOWN,
    PeerState.CANDIDATE,
    PeerState.ALIVE,
    PeerState.SUSPECT,
    PeerState.DEAD,
    PeerState.LEFT,
)
E = Event

# Written out independently of the implementation (double entry): any change to the
# table must be made in both places, on purpose.
EXPECTED: dict[tuple[PeerState, Event], PeerState] = {
    (U, E.DISCOVERED): C,
    (U, E.HEARD): A,
    (U, E.GOSSIP_ALIVE): A,
    (U, E.GOSSIP_DEAD): D,
    (U, E.GOSSIP_LEFT): L,
    (U, E.RESTORED_DEAD): D,
    (U, E.RESTORED_LEFT): L,
    (C, E.DISCOVERED): C,
    (C, E.HEARD): A,
    (C, E.GOSSIP_ALIVE): A,
    (C, E.GOSSIP_DEAD): D,
    (C, E.GOSSIP_LEFT): L,
    (C, E.LEAVE): L,
    (C, E.EXPIRED): U,
    (A, E.HEARD): A,
    (A, E.GOSSIP_ALIVE): A,
    (A, E.SILENT): S,
    (A, E.GOSSIP_DEAD): D,
    (A, E.GOSSIP_LEFT): L,
    (A, E.LEAVE): L,
    (S, E.HEARD): A,
    (S, E.INDIRECT_ACK): A,
    (S, E.GOSSIP_ALIVE): A,
    (S, E.PROBE_FAILED): D,
    (S, E.GOSSIP_DEAD): D,
    (S, E.GOSSIP_LEFT): L,
    (S, E.LEAVE): L,
    (D, E.RESTARTED): A,
    (D, E.DISCOVERED): D,
    (D, E.GOSSIP_DEAD): D,
    (D, E.GOSSIP_LEFT): L,
    (D, E.LEAVE): L,
    (D, E.FORGOTTEN): U,
    (L, E.RESTARTED): A,
    (L, E.DISCOVERED): L,
    (L, E.GOSSIP_DEAD): D,
    (L, E.GOSSIP_LEFT): L,
    (L, E.FORGOTTEN): U,
}

ALL_PAIRS = list(itertools.product(PeerState, Event))


def test_table_is_exactly_the_expected_one() -> None:
    assert dict(TRANSITIONS) == EXPECTED


def test_table_is_read_only() -> None:
    with pytest.raises(TypeError):
        TRANSITIONS[(U, E.HEARD)] = D  # type: ignore[index]


@pytest.mark.parametrize(("state", "event"), sorted(EXPECTED, key=str))
def test_legal_transition(state: PeerState, event: Event) -> None:
    assert transition(state, event) is EXPECTED[(state, event)]


ILLEGAL = [pair for pair in ALL_PAIRS if pair not in EXPECTED]


@pytest.mark.parametrize(
    ("state", "event"), ILLEGAL, ids=[f"{s.value}-{e.value}" for s, e in ILLEGAL]
)
def test_illegal_transition_raises(state: PeerState, event: Event) -> None:
    with pytest.raises(LocalProtocolError, match="illegal membership transition"):
        transition(state, event)


def test_counts() -> None:
    assert len(ALL_PAIRS) == len(PeerState) * len(Event) == 84
    assert len(EXPECTED) == 38
    assert len(ILLEGAL) == 46


def test_dead_and_left_are_never_revived_silently() -> None:
    # Only a newer incarnation (RESTARTED) brings a dead or left peer back.
    for state in (D, L):
        for event in Event:
            target = TRANSITIONS.get((state, event))
            if target in (A, S, C):
                assert event is E.RESTARTED


def test_only_our_own_probes_or_gossip_kill() -> None:
    into_dead = {(s, e) for (s, e), t in TRANSITIONS.items() if t is D and s is not D}
    assert {e for _, e in into_dead} == {
        E.PROBE_FAILED,
        E.GOSSIP_DEAD,
        E.RESTORED_DEAD,
    }
    # A probe only fails for a suspect; silence only makes an alive peer suspect.
    assert [s for (s, e) in TRANSITIONS if e is E.PROBE_FAILED] == [S]
    assert [s for (s, e) in TRANSITIONS if e is E.SILENT] == [A]


def test_candidates_are_never_suspected_or_probed() -> None:
    for event in (E.SILENT, E.PROBE_FAILED, E.INDIRECT_ACK, E.RESTARTED, E.FORGOTTEN):
        assert (C, event) not in TRANSITIONS


def test_removal_only_by_expiry_or_forgetting() -> None:
    into_unknown = {pair for pair, target in TRANSITIONS.items() if target is U}
    assert into_unknown == {(C, E.EXPIRED), (D, E.FORGOTTEN), (L, E.FORGOTTEN)}


def test_every_state_reachable_from_unknown() -> None:
    seen = {U}
    frontier = [U]
    while frontier:
        state = frontier.pop()
        for (s, _), target in TRANSITIONS.items():
            if s is state and target not in seen:
                seen.add(target)
                frontier.append(target)
    assert seen == set(PeerState)


def test_member_state_mapping() -> None:
    assert U.member_state is None
    assert C.member_state is None
    assert A.member_state is MemberState.ALIVE
    assert S.member_state is MemberState.SUSPECT
    assert D.member_state is MemberState.DEAD
    assert L.member_state is MemberState.LEFT


@given(st.lists(st.sampled_from(list(Event)), max_size=40))
def test_random_walk_follows_the_table(events: list[Event]) -> None:
    state = U
    for event in events:
        expected = EXPECTED.get((state, event))
        if expected is None:
            with pytest.raises(LocalProtocolError):
                transition(state, event)
        else:
            state = transition(state, event)
            assert state is expected
