"""The fake network itself: links, latency, loss, partitions, crash/restart, mDNS, time."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pytest

from meshd.clock import FakeClock
from meshd.effects import Connect, Disconnect, MemberChanged, Publish, Send
from meshd.sim import FakeNetwork, fake_info
from meshd.wire.messages import Ping
from meshd.wire.records import MemberInfo, MemberRecord, MemberState


class Dummy:
    """A minimal SimNode: records what it gets, returns scripted effects."""

    def __init__(self, node_id: str, deadlines: Sequence[float] = ()) -> None:
        self.self_id = node_id
        self.got: list[tuple[float, str, Any, bytes]] = []
        self.ticks: list[float] = []
        self.deadlines = sorted(deadlines)
        self.on_receive: list[object] = []
        self.on_tick: list[object] = []

    def receive(self, sender: str, payload: Any, now: float, msg_id: bytes = b"") -> list[object]:
        self.got.append((now, sender, payload, msg_id))
        out, self.on_receive = self.on_receive, []
        return out

    def tick(self, now: float) -> list[object]:
        self.ticks.append(now)
        while self.deadlines and self.deadlines[0] <= now:
            self.deadlines.pop(0)
        out, self.on_tick = self.on_tick, []
        return out

    def next_deadline(self) -> float:
        return self.deadlines[0] if self.deadlines else math.inf


def info_of(node_id: str) -> MemberInfo:
    import dataclasses

    return dataclasses.replace(fake_info(node_id), node_id=node_id)


def pair(**kw: Any) -> tuple[FakeNetwork, Dummy, Dummy]:
    net = FakeNetwork(**kw)
    a, b = Dummy("a"), Dummy("b")
    net.add(a)
    net.add(b)
    return net, a, b


def test_fake_info_is_deterministic_and_well_formed() -> None:
    x = fake_info("x")
    assert x == fake_info("x")
    assert x.node_id != fake_info("y").node_id
    assert len(x.node_id) == 32 and int(x.node_id, 16) >= 0
    assert fake_info("x", incarnation=3).incarnation == 3


def test_send_needs_a_link_and_arrives_after_the_latency() -> None:
    net, _, b = pair(latency=0.005)
    net.apply("a", [Send("b", Ping(1))])
    net.advance(1.0)
    assert b.got == [] and net.stats["dropped_unlinked"] == 1
    net.apply("a", [Connect(info_of("b")), Send("b", Ping(2))])
    t0 = net.now
    net.advance(0.0049)
    assert b.got == []
    net.advance(0.0001)
    assert [(round(t - t0, 9), s, p) for t, s, p, _ in b.got] == [(0.005, "a", Ping(2))]
    assert len(b.got[0][3]) == 16  # a message id
    net.apply("a", [Disconnect("b"), Send("b", Ping(3))])
    net.advance(1.0)
    assert len(b.got) == 1


def test_send_without_link_check() -> None:
    net, _, b = pair(require_link=False)
    net.apply("a", [Send("b", Ping(1))])
    net.advance(0.01)
    assert len(b.got) == 1


def test_publish_reaches_only_subscribers() -> None:
    net, _, b = pair()
    c = Dummy("c")
    net.add(c)
    net.apply("b", [Connect(info_of("a"))])  # b subscribes to a; c does not
    net.apply("a", [Publish(Ping(1))])
    net.advance(0.01)
    assert [p for _, _, p, _ in b.got] == [Ping(1)] and c.got == []
    net.apply("b", [Disconnect("a")])
    net.apply("a", [Publish(Ping(2))])
    net.advance(0.01)
    assert len(b.got) == 1
    assert net.links("b") == frozenset()


def test_fifo_per_link_and_per_link_latency() -> None:
    net, a, b = pair(latency=0.001)
    net.set_latency("a", "b", 0.050, both=False)
    net.apply("a", [Connect(info_of("b"))] + [Send("b", Ping(i)) for i in range(5)])
    net.apply("b", [Connect(info_of("a")), Send("a", Ping(9))])
    net.advance(0.0011)
    assert [p for _, _, p, _ in a.got] == [Ping(9)] and b.got == []
    net.advance(0.05)
    assert [p.seq for _, _, p, _ in b.got] == [0, 1, 2, 3, 4]


def test_jitter_delays_within_bounds() -> None:
    net, _, b = pair(latency=0.001, jitter=0.010, seed=3)
    net.apply("a", [Connect(info_of("b"))] + [Send("b", Ping(i)) for i in range(50)])
    net.advance(1.0)
    delays = [t for t, _, _, _ in b.got]
    assert len(delays) == 50 and all(0.001 <= d <= 0.011 for d in delays)
    assert delays == sorted(delays)  # delivered in time order (not necessarily send order)


def test_loss_is_seeded_and_roughly_the_rate() -> None:
    def run(seed: int) -> list[int]:
        net, _, b = pair(loss=0.3, seed=seed)
        net.apply("a", [Connect(info_of("b"))] + [Send("b", Ping(i)) for i in range(1000)])
        net.advance(0.1)
        assert net.stats["dropped_loss"] + net.stats["delivered"] == 1000
        return [p.seq for _, _, p, _ in b.got]

    first = run(5)
    assert first == run(5)
    assert first != run(6)
    assert 600 < len(first) < 800


def test_partition_block_and_heal() -> None:
    net = FakeNetwork()
    nodes = {n: Dummy(n) for n in "abcd"}
    for d in nodes.values():
        net.add(d)
    for n in "abcd":
        net.apply(n, [Connect(info_of(m)) for m in "abcd" if m != n])
    net.partition(["a", "b"], ["c", "d"])
    for n in "abcd":
        net.apply(n, [Publish(Ping(0))])
    net.advance(0.01)
    heard = {n: sorted(s for _, s, _, _ in d.got) for n, d in nodes.items()}
    assert heard == {"a": ["b"], "b": ["a"], "c": ["d"], "d": ["c"]}
    net.heal()
    net.block("a", "b", both=False)  # one way only
    for d in nodes.values():
        d.got.clear()
    net.apply("a", [Send("b", Ping(1))])
    net.apply("b", [Send("a", Ping(2))])
    net.advance(0.01)
    assert nodes["b"].got == [] and len(nodes["a"].got) == 1
    net.unblock("a", "b")
    net.apply("a", [Send("b", Ping(3))])
    net.advance(0.01)
    assert len(nodes["b"].got) == 1
    assert net.stats["dropped_partition"] == 8 + 1


def test_drop_rule() -> None:
    net, _, b = pair()
    net.drop = lambda s, t, p: isinstance(p, Ping) and p.seq % 2 == 1
    net.apply("a", [Connect(info_of("b"))] + [Send("b", Ping(i)) for i in range(4)])
    net.advance(0.01)
    assert [p.seq for _, _, p, _ in b.got] == [0, 2]
    assert net.stats["dropped_rule"] == 2


def test_crash_stops_delivery_and_ticks_but_in_flight_messages_arrive() -> None:
    net = FakeNetwork(latency=0.01)
    a, b = Dummy("a", deadlines=[0.5]), Dummy("b")
    net.add(a)
    net.add(b)
    net.apply("a", [Connect(info_of("b")), Send("b", Ping(1))])
    net.apply("b", [Connect(info_of("a")), Send("a", Ping(2))])
    net.crash("a")
    net.advance(1.0)
    assert a.got == [] and a.ticks == []
    assert [p for _, _, p, _ in b.got] == [Ping(1)]  # already on the wire
    assert net.stats["dropped_down"] == 1
    assert net.ids(up_only=True) == ["b"] and net.ids() == ["a", "b"]


def test_ticks_happen_exactly_at_next_deadline() -> None:
    net = FakeNetwork()
    d = Dummy("a", deadlines=[0.25, 0.5, 0.75])
    net.add(d)
    net.advance(0.6)
    assert d.ticks == [0.25, 0.5]
    assert net.now == pytest.approx(0.6)
    net.advance(1.0)
    assert d.ticks == [0.25, 0.5, 0.75]


def test_effects_from_a_tick_are_carried_out() -> None:
    net = FakeNetwork()
    a, b = Dummy("a", deadlines=[0.1]), Dummy("b")
    a.on_tick = [Connect(info_of("b")), Send("b", Ping(7))]
    net.add(a)
    net.add(b)
    net.advance(0.2)
    assert [(round(t, 6), p) for t, _, p, _ in b.got] == [(0.101, Ping(7))]


def test_other_effects_go_to_the_log_and_watchers() -> None:
    net, _, _ = pair()
    seen: list[tuple[float, str, object]] = []
    net.watchers.append(lambda t, n, e: seen.append((t, n, e)))
    changed = MemberChanged(MemberRecord(fake_info("q"), MemberState.DEAD), None, "gossip")
    net.apply("a", [changed, "anything else"])
    assert [(n, e) for _, n, e in net.log] == [("a", changed), ("a", "anything else")]
    assert seen == net.log


def test_run_until_reports_elapsed_or_none() -> None:
    net = FakeNetwork(clock=FakeClock(start=10.0))
    d = Dummy("a", deadlines=[10.3])
    net.add(d)
    assert net.run_until(lambda: True, 1.0) == 0.0
    took = net.run_until(lambda: bool(d.ticks), 1.0, poll=0.1)
    assert took == pytest.approx(0.3)
    assert net.run_until(lambda: False, 0.5) is None
    assert net.now == pytest.approx(10.8)


def test_add_twice_and_wrong_kind_are_refused() -> None:
    net, _, _ = pair()
    with pytest.raises(ValueError, match="already"):
        net.add(Dummy("a"))
    with pytest.raises(TypeError):
        net.membership("a")
    with pytest.raises(TypeError):
        net.announce_info(fake_info("z"))  # Dummy takes no discovery
    with pytest.raises(ValueError, match="no info"):
        net.announce("a")


# ---- with Membership nodes ------------------------------------------------------------


def test_mdns_announce_reaches_every_other_live_node() -> None:
    net = FakeNetwork()
    ms = [net.add_member(fake_info(n)) for n in ("x", "y", "z")]
    net.crash(ms[2].self_id)
    net.announce(ms[0].self_id)
    assert ms[1].candidates() == [ms[0].self_info]
    assert ms[2].candidates() == []  # crashed: hears nothing
    assert net.links(ms[1].self_id) == {ms[0].self_id}
    # A crashed node's record lingers and can still be announced (stale).
    net.announce(ms[2].self_id)
    assert ms[2].self_info in ms[1].candidates()


def test_two_members_meet_and_heartbeat() -> None:
    net = FakeNetwork(seed=1)
    x, y = net.add_member(fake_info("x")), net.add_member(fake_info("y"))
    net.seed(x.self_id, y.self_id)
    net.advance(0.01)
    assert [v.info.node_id for v in x.members()] == [y.self_id]
    assert [v.info.node_id for v in y.members()] == [x.self_id]
    net.advance(10.0)
    assert x.get(y.self_id).state is MemberState.ALIVE  # type: ignore[union-attr]
    assert net.stats["sent.Heartbeat"] >= 2 * 10 / 0.2 - 2
    assert net.stats["sent.Hello"] == 2


def test_leave_delivers_then_stops() -> None:
    net = FakeNetwork()
    x, y = net.add_member(fake_info("x")), net.add_member(fake_info("y"))
    net.announce(x.self_id)
    net.advance(0.01)
    net.leave(x.self_id)
    assert not net.host(x.self_id).up
    net.advance(0.01)
    assert y.get(x.self_id).state is MemberState.LEFT  # type: ignore[union-attr]
    assert net.stats["sent.Leave"] == 2  # PUB + direct


def test_restart_bumps_incarnation_clears_links_and_restores() -> None:
    net = FakeNetwork()
    x, y = net.add_member(fake_info("x")), net.add_member(fake_info("y"))
    net.announce(x.self_id)
    net.advance(1.0)
    net.crash(x.self_id)
    net.advance(0.5)
    new = net.restart(x.self_id)
    assert new is net.membership(x.self_id) and new is not x
    assert new.self_info.incarnation == 1 and new.self_info.started_at == net.now
    assert new.candidates() == [y.self_info]  # restored as a candidate
    assert net.links(x.self_id) == {y.self_id}
    net.advance(0.01)
    assert new.get(y.self_id).state is MemberState.ALIVE  # type: ignore[union-attr]
    assert y.get(x.self_id).info.incarnation == 1  # type: ignore[union-attr]
    blank = net.restart(x.self_id, restore=False)
    assert blank.self_info.incarnation == 2 and blank.candidates() == []
    assert net.links(x.self_id) == frozenset()


def test_same_seed_same_history() -> None:
    def run() -> list[tuple[float, str, object]]:
        net = FakeNetwork(seed=11, loss=0.05)
        ids = [net.add_member(fake_info(f"n{i}")).self_id for i in range(8)]
        for i in ids:
            net.announce(i)
        net.advance(3.0)
        net.crash(ids[0])
        net.advance(3.0)
        return net.log

    assert run() == run()


def test_hello_is_a_send_after_connect() -> None:
    net = FakeNetwork()
    x, y = net.add_member(fake_info("x")), net.add_member(fake_info("y"))
    net.announce(y.self_id, to=[x.self_id])
    assert net.stats["sent.Hello"] == 1 and net.stats["dropped_unlinked"] == 0
    net.advance(0.01)
    assert x.get(y.self_id) is not None
    assert y.get(x.self_id) is not None
