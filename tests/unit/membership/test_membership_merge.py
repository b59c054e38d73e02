"""The merge table for gossiped records: total, agrees with the SWIM rules, and every row
carried out as the table says, through the public Membership API.

The rules are written here a second time, from the machine's docstring and independently
of :data:`~meshd.membership.merge.MERGE` (:func:`wins`, :func:`outcome`), and every key is
checked against them: on the table itself, then on a machine that holds a member in the
key's state and receives a record with the key's state and incarnation.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections.abc import Callable

import pytest

from meshd.config import MembershipConfig
from meshd.effects import Connect, Disconnect, MemberChanged, Refused, Send
from meshd.errors import LocalProtocolError
from meshd.membership import Effect, Membership, PeerState
from meshd.membership.merge import MERGE, Action, Order, merge_action, order_of
from meshd.sim import fake_info
from meshd.wire.messages import Hello, Leave, MemberUpdate, Payload, Sync
from meshd.wire.records import MemberInfo, MemberRecord, MemberState

U, C, A, S, D, L = (
    PeerState.UNKNOWN,
    PeerState.CANDIDATE,
    PeerState.ALIVE,
    PeerState.SUSPECT,
    PeerState.DEAD,
    PeerState.LEFT,
)
OLDER, EQUAL, NEWER = Order.OLDER, Order.EQUAL, Order.NEWER
ALIVE, SUSPECT, DEAD, LEFT = (
    MemberState.ALIVE,
    MemberState.SUSPECT,
    MemberState.DEAD,
    MemberState.LEFT,
)
LIVE_RECORD = (ALIVE, SUSPECT)
DOWN_RECORD = (DEAD, LEFT)

Key = tuple[PeerState, MemberState, Order]
ALL_KEYS: list[Key] = list(itertools.product(PeerState, MemberState, Order))
KEY_IDS = [f"{h.value}-{i.value}-{o.value}" for h, i, o in ALL_KEYS]

ME = fake_info("me")
VOUCHER = fake_info("bravo")
#: The member the records are about; we hold it at incarnation HELD_INC.
HELD_INC = 5
TARGET = fake_info("charlie", incarnation=HELD_INC)
INC_OF = {OLDER: HELD_INC - 1, EQUAL: HELD_INC, NEWER: HELD_INC + 1}
#: The dead guard off: the rows are checked on their own, the guard separately below.
NO_GUARD = MembershipConfig(dead_guard=0.0)


# ---- the rules, written independently of the table --------------------------------------


def wins(held: PeerState, incoming: MemberState, order: Order) -> bool:
    """Does the record beat what we hold (so that we take its info)?"""
    if held is U or order is NEWER:
        return True  # anything beats nothing; the higher incarnation wins
    if order is OLDER:
        return False
    if held is C:
        return True  # a candidate takes a record as new as its announcement
    if held in (A, S):
        return incoming in DOWN_RECORD  # DEAD/LEFT beat ALIVE/SUSPECT at equal incarnation
    # DEAD/LEFT: never revived at the same incarnation; LEFT beats DEAD, not the reverse.
    return held is D and incoming is LEFT


def outcome(held: PeerState, incoming: MemberState, order: Order) -> PeerState:
    """The state we hold after the record."""
    if not wins(held, incoming, order):
        return held
    if incoming in DOWN_RECORD:
        return PeerState(incoming.value)
    # A live record lists, vouches for or revives a member as ALIVE; SUSPECT gossip about
    # others never changes our view, so it leaves a suspicion of ours as it is.
    if held is S and incoming is SUSPECT:
        return S
    return A


# ---- the table on its own ----------------------------------------------------------------


def test_table_is_total() -> None:
    assert len(ALL_KEYS) == len(PeerState) * len(MemberState) * len(Order) == 72
    assert set(MERGE) == set(ALL_KEYS)
    assert len(MERGE) == 72


def test_table_is_read_only() -> None:
    with pytest.raises(TypeError):
        MERGE[(A, ALIVE, NEWER)] = Action.IGNORE  # type: ignore[index]


def test_every_action_is_used() -> None:
    assert set(MERGE.values()) == set(Action)


@pytest.mark.parametrize("key", ALL_KEYS, ids=KEY_IDS)
def test_lookup(key: Key) -> None:
    assert merge_action(*key) is MERGE[key]


def test_lookup_outside_the_table_raises() -> None:
    with pytest.raises(LocalProtocolError, match="no merge rule"):
        merge_action(A, None, NEWER)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("held", "incoming", "expected"),
    [(None, 0, NEWER), (None, 7, NEWER), (5, 4, OLDER), (5, 5, EQUAL), (5, 6, NEWER)],
)
def test_order_of(held: int | None, incoming: int, expected: Order) -> None:
    assert order_of(held, incoming) is expected


@pytest.mark.parametrize("key", ALL_KEYS, ids=KEY_IDS)
def test_table_ignores_exactly_the_records_that_lose(key: Key) -> None:
    assert (MERGE[key] is Action.IGNORE) == (not wins(*key))


@pytest.mark.parametrize("key", ALL_KEYS, ids=KEY_IDS)
def test_table_action_fits_the_key(key: Key) -> None:
    held, incoming, order = key
    action = MERGE[key]
    expected_state = outcome(*key)
    # Which states each action is for, and where it leads.
    if action in (Action.ADD_ALIVE, Action.ADD_DOWN):
        assert held is U
    if action is Action.VOUCHED:
        assert held is C and expected_state is A
    if action is Action.UPDATE_INFO:
        assert held in (A, S) and order is NEWER and expected_state is held
    if action is Action.REFUTED:
        assert (held, incoming, order) == (S, ALIVE, NEWER)
    if action in (Action.GOSSIP_DOWN, Action.GUARDED_DEAD):
        assert incoming in DOWN_RECORD and expected_state is PeerState(incoming.value)
        assert held is not PeerState(incoming.value)
    if action is Action.RESTARTED:
        assert held in (D, L) and order is NEWER and expected_state is A
    if action is Action.NEWER_DOWN_INFO:
        assert held in (D, L) and order is NEWER and held.value == incoming.value


def test_unknown_rows_do_not_depend_on_the_order() -> None:
    for incoming in MemberState:
        actions = {MERGE[(U, incoming, order)] for order in Order}
        expected = Action.ADD_ALIVE if incoming in LIVE_RECORD else Action.ADD_DOWN
        assert actions == {expected}


def test_older_records_never_change_a_known_member() -> None:
    for held, incoming in itertools.product(PeerState, MemberState):
        if held is not U:
            assert MERGE[(held, incoming, OLDER)] is Action.IGNORE


def test_dead_and_left_are_revived_only_by_a_newer_incarnation() -> None:
    for held, incoming, order in ALL_KEYS:
        if held in (D, L) and incoming in LIVE_RECORD:
            expected = Action.RESTARTED if order is NEWER else Action.IGNORE
            assert MERGE[(held, incoming, order)] is expected


def test_suspect_gossip_never_makes_anyone_suspect() -> None:
    # It lists, vouches for or revives a member (as ALIVE), carries newer info, or nothing.
    harmless = {
        Action.IGNORE,
        Action.ADD_ALIVE,
        Action.VOUCHED,
        Action.UPDATE_INFO,
        Action.RESTARTED,
    }
    for key in ALL_KEYS:
        if key[1] is SUSPECT:
            assert MERGE[key] in harmless


def test_the_dead_guard_is_only_for_dead_verdicts_about_live_members() -> None:
    guarded = {key for key, action in MERGE.items() if action is Action.GUARDED_DEAD}
    assert guarded == {(held, DEAD, order) for held in (A, S) for order in (EQUAL, NEWER)}


# ---- every row, carried out by a machine -------------------------------------------------


class Rig:
    """One machine holding TARGET in a given state, told about it by VOUCHER (live)."""

    def __init__(
        self,
        held: PeerState,
        cfg: MembershipConfig = NO_GUARD,
        verify: Callable[[MemberInfo], bool] = lambda info: True,
    ) -> None:
        self.now = 0.0
        self.m = Membership(ME, cfg, 0.0, random.Random(1), verify=verify)
        self.linked: set[str] = set()
        self.recv(VOUCHER, Hello(VOUCHER))
        if held is C:
            self.check(self.m.discovered(TARGET, self.now, "mdns"))
        elif held is not U:
            self.recv(TARGET, Hello(TARGET))
        if held is S:
            while self.held() is not S:
                self.at(self.m.next_deadline())
                self.recv(VOUCHER, MemberUpdate(()))  # VOUCHER stays alive
        elif held is D:
            self.recv(VOUCHER, MemberUpdate((MemberRecord(TARGET, DEAD),)))
        elif held is L:
            self.recv(TARGET, Leave(HELD_INC))
        assert self.held() is held

    def check(self, effects: list[Effect]) -> list[Effect]:
        """Track the links; every Send must go over one the machine opened."""
        for eff in effects:
            if isinstance(eff, Connect):
                self.linked.add(eff.info.node_id)
            elif isinstance(eff, Disconnect):
                self.linked.discard(eff.node_id)
            elif isinstance(eff, Send):
                assert eff.to in self.linked, eff
        return effects

    def recv(self, sender: MemberInfo, payload: Payload) -> list[Effect]:
        return self.check(self.m.receive(sender.node_id, payload, self.now))

    def at(self, t: float) -> list[Effect]:
        out: list[Effect] = []
        while self.m.next_deadline() <= t:
            self.now = max(self.now, self.m.next_deadline())
            out += self.check(self.m.tick(self.now))
        self.now = t
        return out

    def held(self) -> PeerState:
        if any(c.node_id == TARGET.node_id for c in self.m.candidates()):
            return C
        view = self.m.get(TARGET.node_id)
        return U if view is None else PeerState(view.state.value)

    def held_info(self) -> MemberInfo | None:
        view = self.m.get(TARGET.node_id)
        return None if view is None else view.info

    def connected(self) -> bool:
        return TARGET.node_id in self.linked


def record(incoming: MemberState, order: Order, **changes: object) -> MemberRecord:
    info = dataclasses.replace(TARGET, incarnation=INC_OF[order], **changes)  # type: ignore[arg-type]
    return MemberRecord(info, incoming)


def expected_effects(key: Key, new: MemberRecord, was_connected: bool) -> list[Effect]:
    """What each action emits when the record's info differs from ours only in the
    incarnation (so links need no refresh and no "updated" event is due)."""
    held = key[0]
    info = new.info
    previous = held.member_state
    action = MERGE[key]
    link: list[Effect] = [Connect(info), Send(info.node_id, Hello(ME))]
    if action is Action.ADD_ALIVE:
        return [MemberChanged(MemberRecord(info, ALIVE), None, "joined"), *link]
    if action is Action.ADD_DOWN:
        return [MemberChanged(new, None, "gossip")]
    if action is Action.VOUCHED:
        return [MemberChanged(MemberRecord(info, ALIVE), None, "joined")]
    if action is Action.REFUTED:
        return [MemberChanged(MemberRecord(info, ALIVE), SUSPECT, "refuted")]
    if action in (Action.GOSSIP_DOWN, Action.GUARDED_DEAD):
        closed: list[Effect] = [Disconnect(info.node_id)] if was_connected else []
        return [MemberChanged(new, previous, "gossip"), *closed]
    if action is Action.RESTARTED:
        assert not was_connected
        return [MemberChanged(MemberRecord(info, ALIVE), previous, "restarted"), *link]
    return []  # IGNORE, UPDATE_INFO (incarnation only), NEWER_DOWN_INFO


MESSAGES: list[Callable[[tuple[MemberRecord, ...]], Payload]] = [MemberUpdate, Sync]


def relayed(key: Key) -> Key:
    """A third party's "left" about a member we hold live counts as "dead": only a node
    itself may say it left."""
    held, incoming, order = key
    if incoming is MemberState.LEFT and held in (A, S):
        return (held, MemberState.DEAD, order)
    return key


@pytest.mark.parametrize("message", MESSAGES, ids=["member_update", "sync"])
@pytest.mark.parametrize("key", ALL_KEYS, ids=KEY_IDS)
def test_row(key: Key, message: Callable[[tuple[MemberRecord, ...]], Payload]) -> None:
    sent = record(key[1], key[2])
    key = relayed(key)
    held, incoming, order = key
    r = Rig(held)
    was_connected = r.connected()
    before = r.held_info()
    new = record(incoming, order)
    out = r.recv(VOUCHER, message((sent,)))
    assert out == expected_effects(key, new, was_connected)
    assert r.held() is outcome(*key)
    if wins(*key):
        assert r.held_info() == (None if r.held() is C else new.info)
    else:
        assert r.held_info() == before
    # Live members and candidates are linked; DEAD/LEFT ones are not (no contact window).
    assert r.connected() == (r.held() in (C, A, S))


@pytest.mark.parametrize("key", ALL_KEYS, ids=KEY_IDS)
def test_info_failing_verification_changes_nothing(key: Key) -> None:
    held, incoming, order = key
    r = Rig(held, verify=lambda info: info.proof != b"forged")
    before = (r.held(), r.held_info(), r.m.snapshot(), r.m.candidates())
    out = r.recv(VOUCHER, MemberUpdate((record(incoming, order, proof=b"forged"),)))
    assert out == [Refused("bad_member_info", VOUCHER.node_id, f"about {TARGET.node_id}")]
    assert (r.held(), r.held_info(), r.m.snapshot(), r.m.candidates()) == before


DOWN_KEYS = [key for key in ALL_KEYS if MERGE[key] in (Action.GOSSIP_DOWN, Action.GUARDED_DEAD)]


@pytest.mark.parametrize(
    "key", DOWN_KEYS, ids=[f"{h.value}-{i.value}-{o.value}" for h, i, o in DOWN_KEYS]
)
def test_only_a_dead_verdict_about_a_live_member_is_retried(key: Key) -> None:
    key = relayed(key)
    held, incoming, order = key
    r = Rig(held)
    r.recv(VOUCHER, MemberUpdate((record(incoming, order),)))
    later = r.at(r.now + 2 * NO_GUARD.reconnect_interval)
    retried = Connect(record(incoming, order).info) in later
    assert retried == (MERGE[key] is Action.GUARDED_DEAD)


# ---- side conditions and info changes -----------------------------------------------------


GUARDED_KEYS = [(held, DEAD, order) for held in (A, S) for order in (EQUAL, NEWER)]


@pytest.mark.parametrize(
    "key", GUARDED_KEYS, ids=[f"{h.value}-{o.value}" for h, _, o in GUARDED_KEYS]
)
def test_dead_guard_answers_with_a_rate_limited_notice(key: Key) -> None:
    held, incoming, order = key
    # A guard longer than suspect_after, so that a suspect can still be within it.
    cfg = MembershipConfig(dead_guard=2.0)
    r = Rig(held, cfg)
    assert r.now < cfg.dead_guard  # TARGET was heard at 0
    new = record(incoming, order)
    notice = Send(TARGET.node_id, MemberUpdate((new,)))
    assert r.recv(VOUCHER, MemberUpdate((new,))) == [notice]
    assert r.held() is held and r.held_info() == TARGET
    assert r.recv(VOUCHER, MemberUpdate((new,))) == []  # within sync_interval
    assert r.held() is held and r.held_info() == TARGET


INFO_KEYS = [(C, ALIVE, EQUAL), (C, SUSPECT, NEWER), (A, ALIVE, NEWER), (S, SUSPECT, NEWER)]


@pytest.mark.parametrize(
    "key", INFO_KEYS, ids=[f"{h.value}-{i.value}-{o.value}" for h, i, o in INFO_KEYS]
)
def test_moved_endpoints_refresh_the_link(key: Key) -> None:
    held, incoming, order = key
    r = Rig(held)
    new = record(incoming, order, addresses=("10.0.0.9",))
    out = r.recv(VOUCHER, MemberUpdate((new,)))
    assert out[0] == Connect(new.info)
    assert r.held_info() == (None if r.held() is C else new.info)


@pytest.mark.parametrize("held", [A, S])
@pytest.mark.parametrize("incoming", [ALIVE, SUSPECT])
def test_newer_info_of_a_live_member_is_an_update(held: PeerState, incoming: MemberState) -> None:
    r = Rig(held)
    new = record(incoming, NEWER, role="lead")
    out = r.recv(VOUCHER, MemberUpdate((new,)))
    if MERGE[(held, incoming, NEWER)] is Action.REFUTED:
        # The state change says it all: no separate "updated".
        assert out == [MemberChanged(MemberRecord(new.info, ALIVE), SUSPECT, "refuted")]
    else:
        state = held.member_state
        assert state is not None
        assert out == [MemberChanged(MemberRecord(new.info, state), state, "updated")]
    assert r.held_info() == new.info


def test_refuted_suspect_gets_a_fresh_suspicion_timer() -> None:
    r = Rig(S)
    t = r.now
    r.recv(VOUCHER, MemberUpdate((record(ALIVE, NEWER),)))
    assert r.held() is A
    # Not suspected again before suspect_after has passed since the refutation.
    r.at(t + NO_GUARD.suspect_after - 0.01)
    assert r.held() is A
