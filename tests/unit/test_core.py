"""Core (membership + election of one node): routing, the member view it feeds the
election, merged timers, leave order; and the fake network hooks Core relies on."""

from __future__ import annotations

import dataclasses
import random

from meshd.config import ElectionConfig, MembershipConfig
from meshd.core import ELECTION_PAYLOADS, Core
from meshd.effects import Connect, MemberChanged, Persist, Publish, Send
from meshd.election import Role, Voter
from meshd.sim import Discoverer, FakeNetwork, Leaver, fake_info
from meshd.wire.messages import Heartbeat, Hello, LeadHeartbeat, Leave, StepDown, Vote, VoteReq
from meshd.wire.records import MemberInfo, MemberState

MCFG = MembershipConfig()
ECFG = ElectionConfig()


def info(name: str, priority: int) -> MemberInfo:
    return dataclasses.replace(fake_info(name), priority=priority)


def core(name: str = "me", priority: int = 10, **kw: object) -> Core:
    return Core(info(name, priority), MCFG, ECFG, 0.0, random.Random(0), **kw)  # type: ignore[arg-type]


def test_core_is_a_sim_node_and_discoverer() -> None:
    c = core()
    assert isinstance(c, Discoverer) and isinstance(c, Leaver)
    assert c.self_id == c.self_info.node_id == c.election.self_id
    assert c.next_deadline() == min(c.membership.next_deadline(), c.election.next_deadline())
    assert c.voters() == [Voter(c.self_id, 10, MemberState.ALIVE)]


def test_member_changes_reach_the_election() -> None:
    c = core()
    peer = info("peer", 42)
    out = c.receive(peer.node_id, Hello(peer), 0.1)
    assert any(isinstance(e, MemberChanged) for e in out)
    assert any(isinstance(e, Connect) for e in out)
    assert c.election.member_count() == 2
    assert c.election.reachable(peer.node_id, 0.1)
    assert Voter(peer.node_id, 42, MemberState.ALIVE, 0.1, True) in c.voters()


def test_election_messages_go_to_the_election_and_count_as_life() -> None:
    c = core(priority=0)
    peer = info("peer", 42)
    c.receive(peer.node_id, Hello(peer), 0.1)
    # Membership suspects a peer silent for suspect_after; an election message is life.
    t = 0.1 + MCFG.suspect_after * 0.9
    out = c.receive(peer.node_id, LeadHeartbeat(3, peer.node_id, 1), t)
    assert out[0] == Persist(3, None)
    assert c.election.lead == peer.node_id
    view = c.get(peer.node_id)
    assert view is not None and view.last_heard == t
    # A non-election message never reaches the election.
    assert not isinstance(Heartbeat(0, b"", 1), ELECTION_PAYLOADS)
    assert c.election.receive(peer.node_id, Heartbeat(0, b"", 1), t) == []


def test_vote_request_answered_after_persist() -> None:
    c = core(priority=0)
    peer = info("peer", 42)
    c.receive(peer.node_id, Hello(peer), 0.1)
    out = c.receive(peer.node_id, VoteReq(1, False, 42), 0.2)
    assert out.index(Persist(1, peer.node_id)) < out.index(Send(peer.node_id, Vote(1, True, False)))


def test_leave_steps_down_before_the_leave() -> None:
    net = FakeNetwork(seed=1)
    cores = []
    for i, prio in enumerate([30, 20, 10]):
        c = Core(info(f"n{i}", prio), MCFG, ECFG, net.now, random.Random(i))
        net.add(c, c.self_info)
        net.announce(c.self_id)
        cores.append(c)
    assert net.run_until(lambda: cores[1].election.lead == cores[0].self_id, 3.0) is not None
    effects = cores[0].leave(net.now)
    kinds = [type(e.payload).__name__ for e in effects if isinstance(e, Publish)]
    assert kinds == ["StepDown", "Leave"]
    sent = [type(e.payload) for e in effects if isinstance(e, Send)]
    assert set(sent) == {StepDown, Leave}
    assert sent.index(Leave) > max(i for i, k in enumerate(sent) if k is StepDown)
    assert cores[0].election.has_left and cores[0].has_left
    # Through the network hook: the survivors elect at once.
    net2 = FakeNetwork(seed=2)
    cs = [
        Core(info(f"m{i}", p), MCFG, ECFG, 0.0, random.Random(i))
        for i, p in enumerate([30, 20, 10])
    ]
    for c in cs:
        net2.add(c, c.self_info)
        net2.announce(c.self_id)
    assert net2.run_until(lambda: cs[2].election.lead == cs[0].self_id, 3.0) is not None
    net2.leave(cs[0].self_id)
    took = net2.run_until(lambda: cs[2].election.lead == cs[1].self_id, 1.0, poll=0.001)
    assert took is not None and took < 0.2


def test_fake_network_hooks_replace_taps_and_announce_any_node() -> None:
    net = FakeNetwork(seed=3)
    seen: list[tuple[str, str]] = []
    net.taps.append(lambda t, n, e: seen.append((n, type(e).__name__)))
    a = Core(info("a", 5), MCFG, ECFG, 0.0, random.Random(1))
    b = Core(info("b", 6), MCFG, ECFG, 0.0, random.Random(2))
    net.add(a, a.self_info)
    net.add(b, b.self_info)
    net.announce(a.self_id)
    assert (b.self_id, "Connect") in seen
    assert (b.self_id, "Send") in seen  # network effects are tapped too
    net.advance(2.0)
    assert b.election.lead is not None
    # replace: a new process for b, with its durable state; a restarted-with-newer-info
    # node is announced with its current info.
    new_info = dataclasses.replace(b.self_info, incarnation=1)
    b2 = Core(new_info, MCFG, ECFG, net.now, random.Random(3), term=b.election.term)
    host = net.replace(b.self_id, b2, new_info)
    assert host.node is b2 and host.links == set() and host.up
    net.announce(b.self_id)  # its current info (a ignores it: b is a live member)
    net.announce(a.self_id, to=[b.self_id])  # b2 finds a: HELLO with incarnation 1
    net.advance(2.0)
    view = a.get(b.self_id)
    assert view is not None and view.info.incarnation == 1 and view.state is MemberState.ALIVE
    assert b2.election.role in (Role.LEAD, Role.FOLLOWER) and b2.election.lead is not None
