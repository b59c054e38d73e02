"""Property test: random event sequences never break the machine's invariants.

Every state change goes through the transition table, so an illegal move would raise
LocalProtocolError here. On top of that, after every step: sends only go over open links,
live members and candidates are linked, the digest matches the listed view, and a tick
before ``next_deadline()`` has nothing to do.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshd.config import MembershipConfig
from meshd.effects import Connect, Disconnect, Send
from meshd.membership import Membership, digest_of
from meshd.sim import fake_info
from meshd.wire.messages import (
    Ack,
    Heartbeat,
    Hello,
    IntroAck,
    Leave,
    MemberUpdate,
    Ping,
    PingReq,
    Sync,
    SyncReq,
)
from meshd.wire.records import MemberInfo, MemberRecord, MemberState

ME = fake_info("me")
PEERS = [fake_info(f"p{i}") for i in range(4)]
EVERYONE = [ME, *PEERS]
CFG = MembershipConfig(forget_after=20.0)

infos = st.builds(
    lambda who, inc: dataclasses.replace(who, incarnation=inc),
    st.sampled_from(EVERYONE),
    st.integers(0, 4),
)
records = st.builds(MemberRecord, infos, st.sampled_from(list(MemberState)))
peer = st.sampled_from(PEERS)
seqs = st.integers(0, 3)

ops = st.one_of(
    st.tuples(st.just("advance"), st.floats(0.0, 3.0)),
    st.tuples(st.just("advance"), st.floats(0.0, 30.0)),
    st.tuples(st.just("hello"), peer, st.integers(0, 4)),
    st.tuples(st.just("beat"), peer, st.integers(0, 4), st.booleans()),
    st.tuples(st.just("ping"), peer, seqs),
    st.tuples(
        st.just("ack"),
        peer,
        seqs,
        st.sampled_from(["", *[p.node_id for p in PEERS]]),
        st.booleans(),
    ),
    st.tuples(st.just("ping_req"), peer, seqs, st.sampled_from([p.node_id for p in EVERYONE])),
    st.tuples(st.just("sync_req"), peer),
    st.tuples(st.just("sync"), peer, st.lists(records, max_size=4)),
    st.tuples(st.just("update"), peer, st.lists(records, max_size=3)),
    st.tuples(st.just("intro_ack"), peer, st.integers(0, 4), st.lists(records, max_size=3)),
    st.tuples(st.just("leave"), peer, st.integers(0, 4)),
    st.tuples(st.just("discover"), infos),
    st.tuples(st.just("restore"), st.lists(records, max_size=4)),
)


class Checker:
    def __init__(self, seed: int) -> None:
        self.now = 0.0
        self.m = Membership(ME, CFG, 0.0, random.Random(seed))
        self.linked: set[str] = set()

    def apply(self, effects: list[Any]) -> None:
        for eff in effects:
            if isinstance(eff, Connect):
                assert eff.info.node_id != ME.node_id
                self.linked.add(eff.info.node_id)
            elif isinstance(eff, Disconnect):
                self.linked.discard(eff.node_id)
            elif isinstance(eff, Send):
                assert eff.to in self.linked, eff

    def advance(self, dt: float) -> None:
        end = self.now + dt
        for _ in range(10_000):
            due = self.m.next_deadline()
            if due > end:
                break
            early = (self.now + due) / 2
            if self.now < early < due:
                # Nothing to do strictly before the deadline.
                assert self.m.tick(early) == []
            self.now = max(self.now, due)
            self.apply(self.m.tick(self.now))
        else:  # pragma: no cover
            raise AssertionError("ticks do not make progress")
        self.now = end

    def recv(self, who: MemberInfo, payload: Any) -> None:
        self.apply(self.m.receive(who.node_id, payload, self.now, b"id"))

    def check(self) -> None:
        m = self.m
        views = m.members()
        assert views == sorted(views, key=lambda v: (v.info.name, v.info.node_id))
        live = [v for v in views if v.state in (MemberState.ALIVE, MemberState.SUSPECT)]
        for v in live:
            assert v.info.node_id in self.linked, v
        for info in m.candidates():
            assert info.node_id in self.linked
            assert m.get(info.node_id) is None
        expected = digest_of(
            [
                (ME.node_id, m.self_info.incarnation),
                *((v.info.node_id, v.info.incarnation) for v in live),
            ]
        )
        assert m.digest() == expected
        snap = m.snapshot()
        assert snap[0].info == m.self_info
        assert len(snap) == len(views) + 1
        assert m.self_info.incarnation >= 0
        assert m.next_deadline() >= self.now or m.next_deadline() <= self.now  # a number


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32), st.lists(ops, max_size=40))
def test_random_events_keep_invariants(seed: int, steps: list[tuple[Any, ...]]) -> None:
    c = Checker(seed)
    inc_seen = 0
    before: dict[str, Any] = {}
    for step in steps:
        kind = step[0]
        if kind == "advance":
            c.advance(step[1])
        elif kind == "hello":
            who = dataclasses.replace(step[1], incarnation=step[2])
            c.recv(who, Hello(who))
        elif kind == "beat":
            who = step[1]
            digest = c.m.digest() if step[3] else b"other"
            c.recv(who, Heartbeat(step[2], digest, 2))
        elif kind == "ping":
            c.recv(step[1], Ping(step[2]))
        elif kind == "ack":
            c.recv(step[1], Ack(step[2], step[3], step[4]))
        elif kind == "ping_req":
            c.recv(step[1], PingReq(step[2], step[3]))
        elif kind == "sync_req":
            c.recv(step[1], SyncReq(b""))
        elif kind == "sync":
            c.recv(step[1], Sync(tuple(step[2])))
        elif kind == "update":
            c.recv(step[1], MemberUpdate(tuple(step[2])))
        elif kind == "intro_ack":
            who = dataclasses.replace(step[1], incarnation=step[2])
            c.recv(who, IntroAck(who, tuple(step[3])))
        elif kind == "leave":
            c.recv(step[1], Leave(step[2]))
        elif kind == "discover":
            c.apply(c.m.discovered(step[1], c.now, "mdns"))
        elif kind == "restore":
            c.apply(c.m.restore(step[1], c.now))
        after = {v.info.node_id: v for v in c.m.members()}
        for node_id, old in before.items():
            new = after.get(node_id)
            if new is None:
                # Members are only forgotten by time, forget_after after they went down.
                assert kind == "advance"
                assert c.now >= old.state_since + CFG.forget_after
                continue
            # What we know about a member never goes back to an older incarnation ...
            assert new.info.incarnation >= old.info.incarnation
            # ... and a dead/left member only comes back with a newer one.
            if old.state in (MemberState.DEAD, MemberState.LEFT) and new.state in (
                MemberState.ALIVE,
                MemberState.SUSPECT,
            ):
                assert new.info.incarnation > old.info.incarnation
        before = after
        c.check()
        # Our incarnation never goes down.
        assert c.m.self_info.incarnation >= inc_seen
        inc_seen = c.m.self_info.incarnation
    c.apply(c.m.leave(c.now))
    assert c.m.tick(c.now + 100) == []
