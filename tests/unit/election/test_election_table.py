"""The election role table: every legal pair, every illegal one, key properties."""

from __future__ import annotations

import itertools

import pytest

from meshd.election import TRANSITIONS, Event, Role, transition
from meshd.errors import LocalProtocolError

F, C, L = Role.FOLLOWER, Role.CANDIDATE, Role.LEAD
E = Event

# Written out independently of the implementation (double entry): any change to the
# table must be made in both places, on purpose.
EXPECTED: dict[tuple[Role, Event], Role] = {
    (F, E.CAMPAIGN): C,
    (F, E.LEAD_SEEN): F,
    (F, E.HIGHER_TERM): F,
    (C, E.RETRY): C,
    (C, E.PRE_VOTE_WON): C,
    (C, E.ELECTED): L,
    (C, E.LEAD_SEEN): F,
    (C, E.HIGHER_TERM): F,
    (C, E.ABANDON): F,
    (L, E.HIGHER_TERM): F,
    (L, E.STEP_DOWN): F,
}

ALL_PAIRS = list(itertools.product(Role, Event))
ILLEGAL = [pair for pair in ALL_PAIRS if pair not in EXPECTED]


def test_table_is_exactly_the_expected_one() -> None:
    assert dict(TRANSITIONS) == EXPECTED


def test_table_is_read_only() -> None:
    with pytest.raises(TypeError):
        TRANSITIONS[(F, E.ELECTED)] = L  # type: ignore[index]


@pytest.mark.parametrize(("role", "event"), sorted(EXPECTED, key=str))
def test_legal_transition(role: Role, event: Event) -> None:
    assert transition(role, event) is EXPECTED[(role, event)]


@pytest.mark.parametrize(
    ("role", "event"), ILLEGAL, ids=[f"{r.value}-{e.value}" for r, e in ILLEGAL]
)
def test_illegal_transition_raises(role: Role, event: Event) -> None:
    with pytest.raises(LocalProtocolError, match=f"{role.value} --{event.value}-->"):
        transition(role, event)


def test_only_a_candidate_becomes_lead() -> None:
    assert [pair for pair, new in EXPECTED.items() if new is L] == [(C, E.ELECTED)]


def test_a_lead_leaves_only_for_a_newer_term_or_by_stepping_down() -> None:
    assert {e for (r, e) in EXPECTED if r is L} == {E.HIGHER_TERM, E.STEP_DOWN}
    # A lead never "sees" another lead of its own term: that would be two leads.
    assert (L, E.LEAD_SEEN) not in EXPECTED


def test_a_follower_never_jumps_to_lead() -> None:
    assert all(new is not L for (r, _), new in EXPECTED.items() if r is F)


def test_every_role_is_reachable_and_can_return_to_follower() -> None:
    reached = {F}
    frontier = [F]
    while frontier:
        r = frontier.pop()
        for (src, _), dst in EXPECTED.items():
            if src is r and dst not in reached:
                reached.add(dst)
                frontier.append(dst)
    assert reached == set(Role)
    assert all(any(src is r and dst is F for (src, _), dst in EXPECTED.items()) for r in Role)
