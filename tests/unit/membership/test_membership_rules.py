"""Unit tests of each membership rule, one machine driven by hand (no network)."""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections.abc import Callable, Iterable

import pytest

from meshd.config import MembershipConfig
from meshd.effects import Connect, Disconnect, MemberChanged, Publish, Send
from meshd.errors import ConfigError
from meshd.membership import Effect, Membership, digest_of
from meshd.sim import fake_info
from meshd.wire.messages import (
    Ack,
    Error,
    Heartbeat,
    Hello,
    Intro,
    IntroAck,
    Leave,
    MemberUpdate,
    Payload,
    Ping,
    PingReq,
    Sync,
    SyncReq,
)
from meshd.wire.records import MemberInfo, MemberRecord, MemberState

CFG = MembershipConfig()
ME = fake_info("me")
B = fake_info("bravo")
C = fake_info("charlie")
D = fake_info("delta")
E = fake_info("echo")
ALIVE, SUSPECT, DEAD, LEFT = (
    MemberState.ALIVE,
    MemberState.SUSPECT,
    MemberState.DEAD,
    MemberState.LEFT,
)


def rec(info: MemberInfo, state: MemberState, inc: int | None = None) -> MemberRecord:
    if inc is not None:
        info = dataclasses.replace(info, incarnation=inc)
    return MemberRecord(info, state)


def bump(info: MemberInfo, inc: int, **changes: object) -> MemberInfo:
    return dataclasses.replace(info, incarnation=inc, **changes)  # type: ignore[arg-type]


class Rig:
    """One machine, a test-controlled clock, and a log of every effect with its time."""

    def __init__(
        self,
        cfg: MembershipConfig = CFG,
        *,
        seed: int = 0,
        verify: Callable[[MemberInfo], bool] | None = None,
    ) -> None:
        self.now = 0.0
        kwargs = {} if verify is None else {"verify": verify}
        self.m = Membership(ME, cfg, 0.0, random.Random(seed), **kwargs)
        self.log: list[tuple[float, Effect]] = []
        self.linked: set[str] = set()

    def _record(self, effects: list[Effect]) -> list[Effect]:
        for eff in effects:
            self.log.append((self.now, eff))
            # Every Send must go over a link the machine opened and did not close.
            if isinstance(eff, Connect):
                self.linked.add(eff.info.node_id)
            elif isinstance(eff, Disconnect):
                self.linked.discard(eff.node_id)
            elif isinstance(eff, Send):
                assert eff.to in self.linked, f"send to unlinked {eff.to}: {eff}"
        return effects

    def at(self, t: float) -> list[Effect]:
        """Move the clock to ``t``, ticking at every deadline on the way."""
        assert t >= self.now
        out: list[Effect] = []
        for _ in range(100_000):
            due = self.m.next_deadline()
            if due > t:
                break
            self.now = max(self.now, due)
            out += self._record(self.m.tick(self.now))
        else:  # pragma: no cover
            raise AssertionError("next_deadline does not move forward")
        self.now = t
        return out

    def recv(self, sender: MemberInfo | str, payload: Payload, msg_id: bytes = b"") -> list[Effect]:
        node_id = sender if isinstance(sender, str) else sender.node_id
        return self._record(self.m.receive(node_id, payload, self.now, msg_id))

    def hello(self, *infos: MemberInfo) -> list[Effect]:
        out: list[Effect] = []
        for info in infos:
            out += self.recv(info, Hello(info))
        return out

    def beat(self, *infos: MemberInfo) -> list[Effect]:
        out: list[Effect] = []
        for info in infos:
            out += self.recv(info, Heartbeat(info.incarnation, self.m.digest(), 1))
        return out

    def keep_alive(
        self, infos: Iterable[MemberInfo], until: float, every: float = 0.2
    ) -> list[Effect]:
        """Heartbeats from ``infos`` every ``every`` s (with our digest) up to ``until``."""
        infos = list(infos)
        out: list[Effect] = []
        start = self.now
        k = 1
        while start + k * every < until:
            out += self.at(start + k * every)
            out += self.beat(*infos)
            k += 1
        out += self.at(until)
        return out

    def discover(self, info: MemberInfo, source: str = "mdns") -> list[Effect]:
        return self._record(self.m.discovered(info, self.now, source))

    def state(self, info: MemberInfo) -> MemberState | None:
        view = self.m.get(info.node_id)
        return None if view is None else view.state

    def since(self, t: float) -> list[Effect]:
        return [e for when, e in self.log if when >= t]


def sends(
    effects: Iterable[Effect], kind: type | None = None, to: MemberInfo | None = None
) -> list[Send]:
    return [
        e
        for e in effects
        if isinstance(e, Send)
        and (kind is None or isinstance(e.payload, kind))
        and (to is None or e.to == to.node_id)
    ]


def publishes(effects: Iterable[Effect], kind: type | None = None) -> list[Publish]:
    return [
        e
        for e in effects
        if isinstance(e, Publish) and (kind is None or isinstance(e.payload, kind))
    ]


def changes(effects: Iterable[Effect], about: MemberInfo | None = None) -> list[MemberChanged]:
    return [
        e
        for e in effects
        if isinstance(e, MemberChanged)
        and (about is None or e.record.info.node_id == about.node_id)
    ]


def connects(effects: Iterable[Effect]) -> list[str]:
    return [e.info.node_id for e in effects if isinstance(e, Connect)]


def disconnects(effects: Iterable[Effect]) -> list[str]:
    return [e.node_id for e in effects if isinstance(e, Disconnect)]


def no_heartbeats(effects: Iterable[Effect]) -> list[Effect]:
    return [e for e in effects if not (isinstance(e, Publish) and isinstance(e.payload, Heartbeat))]


# ---- construction and queries ------------------------------------------------------------


def test_initial_state() -> None:
    r = Rig()
    assert r.m.self_id == ME.node_id
    assert r.m.self_info == ME
    assert r.m.members() == []
    assert r.m.snapshot() == [MemberRecord(ME, ALIVE)]
    assert r.m.digest() == digest_of([(ME.node_id, 0)])
    assert 0.0 <= r.m.next_deadline() <= CFG.heartbeat_interval


@pytest.mark.parametrize(
    "field_name", ["heartbeat_interval", "suspect_after", "probe_timeout", "reconnect_interval"]
)
def test_bad_config_is_refused(field_name: str) -> None:
    cfg = dataclasses.replace(CFG, **{field_name: 0.0})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=field_name):
        Membership(ME, cfg, 0.0, random.Random(0))


def test_digest_encoding_is_stable() -> None:
    # Part of the protocol: other implementations must compute the same bytes.
    import hashlib

    expected = hashlib.blake2b(b"aa:1\nbb:2\n", digest_size=16).digest()
    assert digest_of([("bb", 2), ("aa", 1)]) == expected
    assert len(expected) == 16


def test_digest_covers_self_and_live_peers_only() -> None:
    r = Rig()
    r.hello(B, C)
    r.discover(D)  # candidate: not in the digest
    r.recv(B, MemberUpdate((rec(E, DEAD),)))  # dead: not in the digest
    assert r.m.digest() == digest_of([(ME.node_id, 0), (B.node_id, 0), (C.node_id, 0)])
    r.recv(C, MemberUpdate((rec(C, ALIVE, 3),)))
    assert r.m.digest() == digest_of([(ME.node_id, 0), (B.node_id, 0), (C.node_id, 3)])


def test_members_sorted_by_name_then_id() -> None:
    r = Rig()
    twin = dataclasses.replace(fake_info("zulu"), name="bravo")
    r.hello(D, twin, B, C)
    names = [(v.info.name, v.info.node_id) for v in r.m.members()]
    assert names == sorted(names)
    assert [n for n, _ in names] == ["bravo", "bravo", "charlie", "delta"]
    assert r.m.get(ME.node_id) is None
    assert r.m.get("nope") is None


def test_snapshot_self_first_then_by_id_without_candidates() -> None:
    r = Rig()
    r.hello(C, B)
    r.discover(D)
    snap = r.m.snapshot()
    assert snap[0] == MemberRecord(ME, ALIVE)
    assert [x.info.node_id for x in snap[1:]] == sorted([B.node_id, C.node_id])


# ---- candidates ------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["mdns", "seed"])
def test_discovered_peer_is_a_connected_candidate_not_a_member(source: str) -> None:
    r = Rig()
    out = r.discover(B, source)
    assert out == [Connect(B), Send(B.node_id, Hello(ME))]
    assert r.m.members() == []
    assert r.m.get(B.node_id) is None
    assert r.m.candidates() == [B]
    assert r.m.digest() == digest_of([(ME.node_id, 0)])
    assert r.discover(B) == []  # no second Connect


def test_discovering_ourselves_or_unverified_info_does_nothing() -> None:
    r = Rig(verify=lambda info: info.node_id != C.node_id)
    assert r.discover(ME) == []
    assert r.discover(dataclasses.replace(ME, incarnation=9)) == []
    assert r.discover(C) == []
    assert r.m.candidates() == []


def test_candidate_rediscovered_at_a_new_address_gets_its_links_refreshed() -> None:
    r = Rig()
    r.discover(B)
    moved = dataclasses.replace(B, addresses=("10.1.2.3",))
    assert r.discover(moved) == [Connect(moved)]
    assert r.m.candidates() == [moved]
    assert r.discover(moved) == []  # nothing new


def test_candidate_becomes_member_on_any_direct_message() -> None:
    r = Rig()
    r.discover(B)
    r.at(1.0)
    out = r.beat(B)
    assert changes(out) == [MemberChanged(rec(B, ALIVE), None, "joined")]
    view = r.m.get(B.node_id)
    assert view is not None
    assert view.state is ALIVE
    assert view.last_heard == 1.0
    assert view.state_since == 1.0
    assert r.m.candidates() == []
    assert connects(out) == []  # already connected as a candidate


def test_candidate_becomes_member_when_a_live_peer_vouches() -> None:
    r = Rig()
    r.hello(B)
    r.discover(C)
    out = r.recv(B, Sync((rec(B, ALIVE), rec(C, ALIVE))))
    assert changes(out, C) == [MemberChanged(rec(C, ALIVE), None, "joined")]
    view = r.m.get(C.node_id)
    assert view is not None and view.last_heard is None  # vouched, not heard


def test_candidate_with_newer_gossiped_info_takes_it() -> None:
    r = Rig()
    r.hello(B)
    r.discover(C)
    newer = bump(C, 2, name="charlie2")
    r.recv(B, MemberUpdate((MemberRecord(newer, ALIVE),)))
    view = r.m.get(C.node_id)
    assert view is not None and view.info == newer


def test_candidate_is_not_vouched_by_a_peer_we_hold_dead() -> None:
    r = Rig()
    r.hello(B)
    r.recv(C, Hello(C))
    r.recv(B, MemberUpdate((rec(C, DEAD),)))  # C is dead to us now
    r.discover(D)
    r.at(2.0)
    r.recv(C, Sync((rec(C, DEAD), rec(D, ALIVE))))
    assert r.m.get(D.node_id) is None
    assert r.m.candidates() == [D]


def test_candidate_never_heard_expires_without_being_listed() -> None:
    r = Rig()
    r.discover(B)
    out = r.at(CFG.candidate_timeout - 0.01)
    assert disconnects(out) == []
    out = r.at(CFG.candidate_timeout)
    assert disconnects(out) == [B.node_id]
    assert changes(out) == []
    assert r.m.candidates() == [] and r.m.members() == []
    # Seen again later (a lingering record re-announced): a fresh, bounded window.
    r.at(20.0)
    assert r.discover(B) == [Connect(B), Send(B.node_id, Hello(ME))]
    assert disconnects(r.at(20.0 + CFG.candidate_timeout)) == [B.node_id]


def test_rediscovery_does_not_extend_a_candidate_window() -> None:
    r = Rig()
    r.discover(B)
    r.at(4.0)
    r.discover(B)
    assert disconnects(r.at(CFG.candidate_timeout)) == [B.node_id]


def test_candidate_gossiped_dead_is_recorded_dead_and_dropped() -> None:
    r = Rig()
    r.hello(C)
    r.discover(B)
    out = r.recv(C, Sync((rec(C, ALIVE), rec(B, DEAD))))
    assert changes(out, B) == [MemberChanged(rec(B, DEAD), None, "gossip")]
    assert disconnects(out) == [B.node_id]


def test_candidate_sending_leave_is_recorded_left() -> None:
    r = Rig()
    r.discover(B)
    out = r.recv(B, Leave(0))
    assert changes(out) == [MemberChanged(rec(B, LEFT), None, "left")]
    assert disconnects(out) == [B.node_id]


# ---- direct contact ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", [Hello, Intro])
def test_hello_from_unknown_peer_joins_and_links_back(kind: type) -> None:
    r = Rig()
    out = r.recv(B, kind(B))
    assert out == [
        MemberChanged(rec(B, ALIVE), None, "joined"),
        Connect(B),
        Send(B.node_id, Hello(ME)),
        # first-hand join: gossiped at once, not left to anti-entropy
        Publish(MemberUpdate((rec(B, ALIVE),))),
    ]


def test_hello_from_a_known_peer_is_not_answered() -> None:
    r = Rig()
    r.hello(B)
    assert r.hello(B) == []


def test_spoofed_or_unverified_info_is_ignored() -> None:
    r = Rig(verify=lambda info: info.node_id != C.node_id)
    assert r.recv(B, Hello(C)) == []  # B speaking with C's info
    assert r.recv(C, Hello(C)) == []  # unverified
    assert r.recv(C, IntroAck(C, (rec(D, ALIVE),))) == []
    assert r.m.members() == []


def test_messages_from_unknown_senders_without_info_are_ignored() -> None:
    r = Rig()
    for payload in (Heartbeat(0, b"x", 1), Ping(1), SyncReq(b""), Leave(0), Error("e", "m")):
        assert r.recv(B, payload) == []
    assert r.m.members() == [] and r.m.candidates() == []


def test_messages_from_our_own_id_are_ignored() -> None:
    r = Rig()
    assert r.recv(ME, Hello(ME)) == []
    assert r.recv(ME, MemberUpdate((rec(ME, DEAD, 5),))) == []
    assert r.m.self_info.incarnation == 0


def test_intro_ack_is_life_of_the_seed_and_vouches_for_its_members() -> None:
    r = Rig()
    r.discover(B, "seed")
    out = r.recv(B, IntroAck(B, (rec(B, ALIVE), rec(C, ALIVE), rec(D, SUSPECT), rec(E, LEFT))))
    assert r.state(B) is ALIVE and r.state(C) is ALIVE and r.state(D) is ALIVE
    assert r.state(E) is LEFT
    assert sorted(connects(out)) == sorted([C.node_id, D.node_id])
    assert {s.to for s in sends(out, Hello)} == {C.node_id, D.node_id}


def test_live_member_info_only_replaced_by_newer_incarnation() -> None:
    r = Rig()
    r.hello(B)
    older = dataclasses.replace(B, name="old-name")
    r.recv(B, Hello(older))
    assert r.m.get(B.node_id).info == B  # type: ignore[union-attr]
    moved = bump(B, 1, name="bravo2", addresses=("10.9.9.9",), router_port=9000)
    out = r.recv(B, Hello(moved))
    assert r.m.get(B.node_id).info == moved  # type: ignore[union-attr]
    assert Connect(moved) in out  # endpoints moved: refresh the links
    assert changes(out) == [MemberChanged(MemberRecord(moved, ALIVE), ALIVE, "updated")]


def test_incarnation_only_change_is_not_an_update_event() -> None:
    r = Rig()
    r.hello(B)
    out = r.recv(B, MemberUpdate((rec(B, ALIVE, 1),)))
    assert changes(out) == [] and connects(out) == []
    assert r.m.get(B.node_id).info.incarnation == 1  # type: ignore[union-attr]


# ---- heartbeats and anti-entropy ---------------------------------------------------------


def test_heartbeat_published_every_interval() -> None:
    r = Rig()
    r.hello(B, C)
    out = r.keep_alive([B, C], until=2.0)
    beats = publishes(out, Heartbeat)
    assert len(beats) in (10, 11)
    times = [t for t, e in r.log if isinstance(e, Publish) and isinstance(e.payload, Heartbeat)]
    gaps = {round(b - a, 9) for a, b in itertools_pairwise(times)}
    assert gaps == {CFG.heartbeat_interval}
    hb = beats[-1].payload
    assert isinstance(hb, Heartbeat)
    assert hb.incarnation == 0
    assert hb.members == 3  # self + the 2 live peers
    assert hb.digest == r.m.digest()


def itertools_pairwise(xs: list[float]) -> list[tuple[float, float]]:
    return list(itertools.pairwise(xs))


def test_no_heartbeat_burst_after_a_long_pause() -> None:
    r = Rig()
    r.at(0.5)
    out = r.m.tick(100.0)
    assert len(publishes(out, Heartbeat)) == 1
    assert 100.0 < r.m.next_deadline() <= 100.0 + CFG.heartbeat_interval


def test_digest_mismatch_asks_for_sync_rate_limited_per_peer_and_overall() -> None:
    r = Rig()
    r.hello(B, C)
    other = b"\x00" * 16
    out = r.recv(B, Heartbeat(0, other, 5))
    assert sends(out, SyncReq, B) == [Send(B.node_id, SyncReq(r.m.digest()))]
    r.at(0.1)
    assert sends(r.recv(C, Heartbeat(0, other, 5)), SyncReq) == []  # overall limit
    r.at(0.2)
    assert len(sends(r.recv(C, Heartbeat(0, other, 5)), SyncReq, C)) == 1
    r.at(0.5)
    assert sends(r.recv(B, Heartbeat(0, other, 5)), SyncReq) == []  # per-peer limit
    r.at(1.0)
    assert len(sends(r.recv(B, Heartbeat(0, other, 5)), SyncReq, B)) == 1
    assert sends(r.recv(B, Heartbeat(0, r.m.digest(), 3)), SyncReq) == []


def test_sync_req_is_answered_with_the_snapshot() -> None:
    r = Rig()
    r.hello(B, C)
    out = r.recv(B, SyncReq(b"whatever"))
    assert out == [Send(B.node_id, Sync(tuple(r.m.snapshot())))]


def test_ping_is_acked_with_correlation_id() -> None:
    r = Rig()
    r.hello(B)
    out = r.recv(B, Ping(42), msg_id=b"m" * 16)
    assert out == [Send(B.node_id, Ack(42), correlation_id=b"m" * 16)]


# ---- failure detection ---------------------------------------------------------------


def test_silent_peer_suspected_probed_then_dead_at_exact_times() -> None:
    r = Rig()
    r.hello(B, C, D, E)
    # C, D, E keep talking; B goes silent after t=0.
    out = r.keep_alive([C, D, E], until=CFG.suspect_after - 0.001)
    assert r.state(B) is ALIVE and changes(out) == []
    out = r.keep_alive([C, D, E], until=CFG.suspect_after)
    assert r.state(B) is SUSPECT
    assert changes(out, B) == [MemberChanged(rec(B, SUSPECT), ALIVE, "heartbeat_timeout")]
    assert publishes(out, MemberUpdate) == [Publish(MemberUpdate((rec(B, SUSPECT),)))]
    (ping,) = sends(out, Ping, B)
    assert isinstance(ping.payload, Ping)
    seq = ping.payload.seq

    t1 = CFG.suspect_after + CFG.probe_timeout
    out = r.keep_alive([C, D, E], until=t1)
    reqs = sends(out, PingReq)
    assert sorted(s.to for s in reqs) == sorted([C.node_id, D.node_id, E.node_id])
    assert all(s.payload == PingReq(seq, B.node_id) for s in reqs)
    assert sends(out, Ping, B) == [Send(B.node_id, Ping(seq))]  # one more direct try

    t2 = t1 + CFG.indirect_timeout
    out = r.keep_alive([C, D, E], until=t2 - 0.001)
    assert r.state(B) is SUSPECT
    out = r.keep_alive([C, D, E], until=t2)
    assert r.state(B) is DEAD
    assert changes(out, B) == [MemberChanged(rec(B, DEAD), SUSPECT, "probe_failed")]
    assert Publish(MemberUpdate((rec(B, DEAD),))) in out
    assert disconnects(out) == [B.node_id]
    view = r.m.get(B.node_id)
    assert view is not None and view.state_since == pytest.approx(t2)
    assert r.m.digest() == digest_of([(x.node_id, 0) for x in (ME, C, D, E)])


def test_indirect_probes_only_ask_live_peers_and_at_most_k() -> None:
    cfg = dataclasses.replace(CFG, indirect_probes=2)
    r = Rig(cfg)
    helpers = [fake_info(f"h{i}") for i in range(6)]
    r.hello(B, *helpers)
    r.discover(C)  # candidate: never a helper
    out = r.keep_alive(helpers, until=cfg.suspect_after + cfg.probe_timeout)
    reqs = sends(out, PingReq)
    assert len(reqs) == 2
    assert {s.to for s in reqs} <= {h.node_id for h in helpers}


def test_direct_ack_clears_suspicion() -> None:
    r = Rig()
    r.hello(B)
    out = r.at(CFG.suspect_after)
    (ping,) = sends(out, Ping, B)
    r.at(CFG.suspect_after + 0.05)
    out = r.recv(B, Ack(ping.payload.seq))  # type: ignore[union-attr]
    assert changes(out) == [MemberChanged(rec(B, ALIVE), SUSPECT, "recovered")]
    # The suspicion timer restarts from the ACK; no leftover probe fires.
    out = r.at(CFG.suspect_after + 0.05 + CFG.suspect_after - 0.001)
    assert no_heartbeats(out) == []


def test_any_message_from_a_suspect_clears_it() -> None:
    r = Rig()
    r.hello(B)
    r.at(CFG.suspect_after)
    assert r.state(B) is SUSPECT
    out = r.recv(B, SyncReq(b""))
    assert r.state(B) is ALIVE
    assert changes(out, B)[0].reason == "recovered"


def test_indirect_ack_clears_suspicion_without_touching_last_heard() -> None:
    r = Rig()
    r.hello(B, C)
    out = r.keep_alive([C], until=CFG.suspect_after + CFG.probe_timeout)
    (req,) = sends(out, PingReq, C)
    assert isinstance(req.payload, PingReq)
    t_ack = r.now + 0.1
    r.at(t_ack)
    r.beat(C)
    # Wrong seq or a negative answer: no effect.
    assert changes(r.recv(C, Ack(req.payload.seq + 1, B.node_id, True))) == []
    assert changes(r.recv(C, Ack(req.payload.seq, B.node_id, False))) == []
    out = r.recv(C, Ack(req.payload.seq, B.node_id, True))
    assert changes(out, B) == [MemberChanged(rec(B, ALIVE), SUSPECT, "recovered")]
    view = r.m.get(B.node_id)
    assert view is not None and view.last_heard == 0.0  # indirect: not heard by us
    # Suspicion timer restarted at the ACK.
    r.keep_alive([C], until=t_ack + CFG.suspect_after - 0.001)
    assert r.state(B) is ALIVE
    r.keep_alive([C], until=t_ack + CFG.suspect_after)
    assert r.state(B) is SUSPECT


def test_late_indirect_ack_after_verdict_is_ignored() -> None:
    r = Rig()
    r.hello(B, C)
    out = r.keep_alive([C], until=CFG.suspect_after + CFG.probe_timeout)
    (req,) = sends(out, PingReq, C)
    r.keep_alive([C], until=CFG.suspect_after + CFG.probe_timeout + CFG.indirect_timeout)
    assert r.state(B) is DEAD
    assert changes(r.recv(C, Ack(req.payload.seq, B.node_id, True))) == []  # type: ignore[union-attr]
    assert r.state(B) is DEAD


def test_ping_req_relayed_and_answered_when_target_answers() -> None:
    r = Rig()
    r.hello(B, C)
    out = r.recv(B, PingReq(77, C.node_id))
    (ping,) = sends(out, Ping, C)
    assert isinstance(ping.payload, Ping)
    r.at(0.05)
    out = r.recv(C, Ack(ping.payload.seq))
    assert sends(out) == [Send(B.node_id, Ack(77, C.node_id, True))]
    # Answered once only.
    assert sends(r.at(1.0), Ack) == []


def test_ping_req_any_message_from_target_counts() -> None:
    r = Rig()
    r.hello(B, C)
    r.recv(B, PingReq(5, C.node_id))
    out = r.beat(C)
    assert sends(out, Ack) == [Send(B.node_id, Ack(5, C.node_id, True))]


def test_ping_req_negative_answer_on_timeout() -> None:
    r = Rig()
    r.hello(B, C)
    r.at(0.1)
    r.recv(B, PingReq(9, C.node_id))
    out = r.keep_alive([B], until=0.1 + CFG.probe_timeout - 0.001)
    assert sends(out, Ack) == []
    out = r.keep_alive([B], until=0.1 + CFG.probe_timeout)
    assert sends(out, Ack) == [Send(B.node_id, Ack(9, C.node_id, False))]


def test_ping_req_for_unknown_target_or_for_us() -> None:
    r = Rig()
    r.hello(B)
    assert r.recv(B, PingReq(1, "f" * 32)) == [Send(B.node_id, Ack(1, "f" * 32, False))]
    assert r.recv(B, PingReq(2, ME.node_id)) == [Send(B.node_id, Ack(2, ME.node_id, True))]


# ---- refutation ------------------------------------------------------------------------


@pytest.mark.parametrize("state", [SUSPECT, DEAD, LEFT])
def test_refute_suspicion_about_ourselves(state: MemberState) -> None:
    r = Rig()
    r.hello(B)
    out = r.recv(B, MemberUpdate((rec(ME, state, 0),)))
    me1 = bump(ME, 1)
    assert r.m.self_info == me1
    assert out == [
        MemberChanged(MemberRecord(me1, ALIVE), ALIVE, "refuted"),
        Publish(MemberUpdate((MemberRecord(me1, ALIVE),))),
        Send(B.node_id, MemberUpdate((MemberRecord(me1, ALIVE),))),
    ]
    assert r.m.snapshot()[0] == MemberRecord(me1, ALIVE)
    assert r.m.digest() == digest_of([(ME.node_id, 1), (B.node_id, 0)])


def test_refute_jumps_above_a_newer_accusation() -> None:
    r = Rig()
    r.hello(B)
    r.recv(B, Sync((rec(B, ALIVE), rec(ME, DEAD, 7))))
    assert r.m.self_info.incarnation == 8


def test_stale_accusation_gets_a_direct_correction_not_a_bump() -> None:
    r = Rig()
    r.hello(B, C)
    r.recv(B, MemberUpdate((rec(ME, SUSPECT, 0),)))  # -> inc 1
    out = r.recv(C, MemberUpdate((rec(ME, DEAD, 0),)))
    assert r.m.self_info.incarnation == 1
    assert out == [Send(C.node_id, MemberUpdate((MemberRecord(bump(ME, 1), ALIVE),)))]
    assert r.recv(C, MemberUpdate((rec(ME, DEAD, 0),))) == []  # rate-limited


def test_alive_record_of_ourselves_at_a_newer_incarnation_is_superseded() -> None:
    # Our previous process had a higher incarnation than we started with.
    r = Rig()
    r.hello(B)
    r.recv(B, Sync((rec(B, ALIVE), rec(ME, ALIVE, 4))))
    assert r.m.self_info.incarnation == 5


def test_alive_gossip_about_ourselves_at_our_incarnation_is_fine() -> None:
    r = Rig()
    r.hello(B)
    assert r.recv(B, Sync((rec(B, ALIVE), rec(ME, ALIVE, 0)))) == []


# ---- merge rules ---------------------------------------------------------------------


def test_merge_unknown_records() -> None:
    r = Rig(verify=lambda info: info.name != "bad")
    r.hello(B)
    bad = fake_info("bad")
    out = r.recv(B, Sync((rec(C, ALIVE), rec(D, SUSPECT), rec(E, DEAD), rec(bad, ALIVE))))
    assert r.state(C) is ALIVE and r.state(D) is ALIVE and r.state(E) is DEAD
    assert r.m.get(bad.node_id) is None and r.m.candidates() == []
    assert sorted(connects(out)) == sorted([C.node_id, D.node_id])
    assert changes(out, E) == [MemberChanged(rec(E, DEAD), None, "gossip")]
    assert changes(out, C) == [MemberChanged(rec(C, ALIVE), None, "joined")]


def test_merge_incarnation_rules_for_a_live_member() -> None:
    r = Rig()
    r.hello(B)
    r.recv(C, Hello(bump(C, 3)))
    r.at(1.0)  # beyond the dead guard for C (heard at 0)
    r.beat(B)
    # Lower incarnation: ignored, whatever the state.
    assert r.recv(B, MemberUpdate((rec(C, DEAD, 2),))) == []
    assert r.state(C) in (ALIVE, SUSPECT)
    # SUSPECT gossip about others never changes our view.
    assert changes(r.recv(B, MemberUpdate((rec(C, SUSPECT, 3),)))) == []
    assert changes(r.recv(B, MemberUpdate((rec(C, SUSPECT, 9),)))) == []
    # Equal incarnation: DEAD beats ALIVE.
    r.hello(bump(C, 9))
    r.at(2.0)
    r.beat(B)
    out = r.recv(B, MemberUpdate((rec(C, DEAD, 9),)))
    assert changes(out, C)[0].reason == "gossip"
    assert r.state(C) is DEAD and disconnects(out) == [C.node_id]


def test_newer_alive_gossip_clears_our_suspicion() -> None:
    r = Rig()
    r.hello(B, C)
    r.keep_alive([B], until=CFG.suspect_after)
    assert r.state(C) is SUSPECT
    out = r.recv(B, MemberUpdate((rec(C, ALIVE, 1),)))
    assert changes(out, C) == [MemberChanged(rec(C, ALIVE, 1), SUSPECT, "refuted")]
    # Equal incarnation ALIVE does not clear it (the voucher may not have noticed yet).
    r.keep_alive([B], until=2 * CFG.suspect_after + 0.01)
    assert r.state(C) is SUSPECT
    assert changes(r.recv(B, MemberUpdate((rec(C, ALIVE, 1),)))) == []


def test_dead_guard_protects_a_peer_we_just_heard() -> None:
    r = Rig()
    r.hello(B, C)
    r.at(0.3)
    r.beat(B, C)
    r.at(0.5)
    out = r.recv(B, MemberUpdate((rec(C, DEAD),)))
    assert r.state(C) is ALIVE
    assert out == [Send(C.node_id, MemberUpdate((rec(C, DEAD),)))]
    # Past the guard, the same verdict applies.
    r.at(0.3 + CFG.dead_guard + 0.01)
    r.beat(B)
    out = r.recv(B, MemberUpdate((rec(C, DEAD),)))
    assert r.state(C) is DEAD


def test_only_a_member_itself_says_it_left() -> None:
    # A third party's "C left" about a C we just heard is a dead verdict: the dead guard
    # holds it off (C is told, so it refutes). C's own LEAVE counts at once.
    r = Rig()
    r.hello(B, C)
    r.recv(B, MemberUpdate((rec(C, LEFT),)))
    assert r.state(C) is ALIVE
    r.recv(C, Leave(C.incarnation))
    assert r.state(C) is LEFT


def test_left_beats_dead_at_equal_incarnation_and_dead_needs_newer_to_replace_left() -> None:
    r = Rig()
    r.hello(B)
    r.recv(B, MemberUpdate((rec(C, DEAD, 2),)))
    out = r.recv(B, MemberUpdate((rec(C, LEFT, 2),)))
    assert r.state(C) is LEFT and changes(out)[0].previous is DEAD
    assert changes(r.recv(B, MemberUpdate((rec(C, DEAD, 2),)))) == []
    assert r.state(C) is LEFT
    r.recv(B, MemberUpdate((rec(C, DEAD, 3),)))
    assert r.state(C) is DEAD
    assert r.m.get(C.node_id).info.incarnation == 3  # type: ignore[union-attr]


def test_newer_alive_gossip_revives_a_dead_member() -> None:
    r = Rig()
    r.hello(B)
    r.recv(B, MemberUpdate((rec(C, DEAD, 1),)))
    assert changes(r.recv(B, MemberUpdate((rec(C, ALIVE, 1),)))) == []  # not newer
    out = r.recv(B, MemberUpdate((rec(C, ALIVE, 2),)))
    assert changes(out, C) == [MemberChanged(rec(C, ALIVE, 2), DEAD, "restarted")]
    assert connects(out) == [C.node_id]


def test_gossip_from_a_dead_sender_only_counts_about_itself_and_us() -> None:
    r = Rig()
    r.hello(B, C)
    r.at(1.0)
    r.beat(B)
    r.recv(B, MemberUpdate((rec(C, DEAD),)))
    r.at(3.0)
    r.recv(C, Sync((rec(C, DEAD), rec(D, ALIVE), rec(E, DEAD))))
    assert r.m.get(D.node_id) is None and r.m.get(E.node_id) is None
    # ... but about us it still counts (we refute), and a newer self-record revives it.
    r.recv(C, Sync((rec(ME, DEAD, 0),)))
    assert r.m.self_info.incarnation == 1
    r.recv(C, MemberUpdate((rec(C, ALIVE, 1),)))
    assert r.state(C) is ALIVE


# ---- dead peers talking to us --------------------------------------------------------


def dead_c(cfg: MembershipConfig = CFG) -> Rig:
    """C declared dead by our own probes at t = 1.15 (disconnected)."""
    r = Rig(cfg)
    r.hello(B, C)
    r.keep_alive([B], until=CFG.suspect_after + CFG.probe_timeout + CFG.indirect_timeout)
    assert r.state(C) is DEAD
    return r


#: No reconnect attempt within these tests' windows: what they check is the notice.
SLOW_RETRY = dataclasses.replace(CFG, reconnect_first=CFG.reconnect_interval)


def test_old_incarnation_message_from_a_dead_peer_gets_a_notice_not_a_revival() -> None:
    r = dead_c(SLOW_RETRY)
    t_dead = r.now
    # Stragglers right after the verdict: no notice yet.
    r.at(t_dead + 0.1)
    assert r.recv(C, Heartbeat(0, b"", 3)) == []
    r.at(t_dead + CFG.sync_interval)
    out = r.recv(C, Heartbeat(0, b"", 3))
    assert r.state(C) is DEAD
    assert out == [
        Connect(C),
        Send(C.node_id, Hello(ME)),
        Send(C.node_id, MemberUpdate((rec(C, DEAD),))),
    ]
    # Rate-limited.
    assert r.recv(C, Ping(3)) == [Send(C.node_id, Ack(3))]
    assert r.recv(C, Hello(C)) == []
    assert r.state(C) is DEAD
    # It refutes: alive again at the newer incarnation.
    out = r.recv(C, MemberUpdate((rec(C, ALIVE, 1),)))
    assert r.state(C) is ALIVE
    assert changes(out, C) == [MemberChanged(rec(C, ALIVE, 1), DEAD, "restarted")]
    assert connects(out) == []  # the contact link is kept


def test_hello_with_newer_incarnation_revives_a_dead_peer() -> None:
    r = dead_c()
    out = r.recv(C, Hello(bump(C, 1)))
    assert changes(out, C) == [MemberChanged(rec(C, ALIVE, 1), DEAD, "restarted")]
    assert out[-3:] == [
        Connect(bump(C, 1)),
        Send(C.node_id, Hello(ME)),
        Publish(MemberUpdate((rec(C, ALIVE, 1),))),
    ]
    view = r.m.get(C.node_id)
    assert view is not None and view.last_heard == r.now


def test_newer_heartbeat_from_a_dead_peer_fetches_its_record() -> None:
    r = dead_c()
    r.at(r.now + 0.1)
    out = r.recv(C, Heartbeat(1, b"theirs", 3))
    assert [type(s.payload) for s in sends(out)] == [Hello, SyncReq]
    assert r.state(C) is DEAD
    r.recv(C, Sync((rec(C, ALIVE, 1), rec(ME, ALIVE, 0))))
    assert r.state(C) is ALIVE


def test_sync_req_from_a_dead_peer_is_answered_with_its_dead_record() -> None:
    r = dead_c()
    out = r.recv(C, SyncReq(b""))
    (sync,) = sends(out, Sync)
    assert isinstance(sync.payload, Sync)
    assert rec(C, DEAD) in sync.payload.members


def test_contact_link_to_a_dead_peer_is_closed_again() -> None:
    r = dead_c(dataclasses.replace(CFG, reconnect_interval=100.0, reconnect_first=100.0))
    r.at(r.now + CFG.sync_interval)
    r.recv(C, Heartbeat(0, b"", 3))
    t = r.now
    assert disconnects(r.keep_alive([B], until=t + CFG.reconnect_window - 0.01)) == []
    assert disconnects(r.keep_alive([B], until=t + CFG.reconnect_window)) == [C.node_id]


def test_dead_peer_is_retried_soon_then_less_and_less_often() -> None:
    # Attempt k comes reconnect_first * 2^k after the one before (+-50 %), capped at twice
    # reconnect_first for reconnect_fast_for after the verdict, then at reconnect_interval:
    # soon after a partition heals, and rarely for a host that is gone.
    cfg = dataclasses.replace(CFG, reconnect_fast_for=10.0)
    r = dead_c(cfg)
    t_dead = r.now
    r.keep_alive([B], until=t_dead + 60.0)
    hello = Send(C.node_id, Hello(ME))
    attempts = [t for t, e in r.log if e == hello and t > t_dead]
    gaps = [b - a for a, b in zip([t_dead, *attempts], attempts, strict=False)]
    first = cfg.reconnect_first
    assert 0.5 * first - 0.02 <= gaps[0] <= 1.5 * first + 0.02
    for k, (at, gap) in enumerate(zip(attempts, gaps, strict=True)):
        fast = at - gap - t_dead < cfg.reconnect_fast_for
        cap = 2 * first if fast else cfg.reconnect_interval
        base = min(cap, first * 2**k)
        assert 0.5 * base - 0.02 <= gap <= 1.5 * base + 0.02, (k, at - t_dead, gap)
    early = [g for a, g in zip(attempts, gaps, strict=True) if a - t_dead < cfg.reconnect_fast_for]
    assert max(early) <= 1.5 * 2 * first + 0.02  # about one a second in the fast phase
    assert gaps[-1] >= 0.5 * cfg.reconnect_interval - 0.02  # then capped, not exploding
    assert len(attempts) <= 30


def test_dead_peer_is_retried_periodically_with_jitter() -> None:
    r = dead_c(SLOW_RETRY)
    t_dead = r.now
    out = r.keep_alive([B], until=t_dead + 0.5 * CFG.reconnect_interval - 0.01)
    assert connects(out) == []
    out = r.keep_alive([B], until=t_dead + 1.5 * CFG.reconnect_interval)
    attempts = [
        t for t, e in r.log if isinstance(e, Connect) and e.info.node_id == C.node_id and t > t_dead
    ]
    assert len(attempts) == 1
    assert Send(C.node_id, Hello(ME)) in out
    assert disconnects(out) == [C.node_id]  # window closed after reconnect_window


def test_only_former_live_members_are_retried() -> None:
    r = Rig()
    r.hello(B, C)
    r.at(1.0)
    r.beat(B)
    r.recv(B, MemberUpdate((rec(C, DEAD), rec(D, DEAD))))  # C was live; D never seen
    out = r.keep_alive([B], until=1.0 + 1.5 * CFG.reconnect_interval)
    assert C.node_id in connects(out)
    assert D.node_id not in connects(out)


def test_left_peer_is_not_retried() -> None:
    r = Rig()
    r.hello(B, C)
    r.recv(C, Leave(0))
    out = r.keep_alive([B], until=4 * CFG.reconnect_interval)
    assert C.node_id not in connects(out)


def test_discovery_of_a_dead_peer() -> None:
    r = dead_c()
    assert r.discover(C) == []  # stale record at the dead incarnation
    newer = bump(C, 1)
    out = r.discover(newer)
    assert out == [Connect(newer), Send(C.node_id, Hello(ME))]
    assert r.state(C) is DEAD  # until it speaks
    assert r.m.get(C.node_id).info.incarnation == 0  # type: ignore[union-attr]
    r.recv(C, Hello(newer))
    assert r.state(C) is ALIVE


def test_discovery_of_a_live_member_is_ignored() -> None:
    r = Rig()
    r.hello(B)
    assert r.discover(bump(B, 5, name="x")) == []
    assert r.m.get(B.node_id).info == B  # type: ignore[union-attr]


# ---- leave ---------------------------------------------------------------------------


def test_leave_received_marks_left_at_once() -> None:
    r = Rig()
    r.hello(B, C)
    out = r.recv(B, Leave(0))
    assert out == [MemberChanged(rec(B, LEFT), ALIVE, "left"), Disconnect(B.node_id)]
    assert r.recv(B, Leave(0)) == []  # the PUB copy after the direct one
    assert r.recv(B, Heartbeat(0, b"", 1)) == []  # straggler: no notice


def test_stale_leave_is_ignored() -> None:
    r = Rig()
    r.recv(B, Hello(bump(B, 3)))
    assert r.recv(B, Leave(2)) == []
    assert r.state(B) is ALIVE


def test_leave_of_a_suspect_or_newer_incarnation() -> None:
    r = Rig()
    r.hello(B)
    r.at(CFG.suspect_after)
    assert r.state(B) is SUSPECT
    r.recv(B, Leave(4))
    assert r.state(B) is LEFT
    assert r.m.get(B.node_id).info.incarnation == 4  # type: ignore[union-attr]


def test_our_leave_publishes_and_sends_directly_then_stops() -> None:
    r = Rig()
    r.hello(B, C, D)
    r.recv(D, Leave(0))
    r.discover(E)  # candidate: no direct LEAVE
    out = r.m.leave(r.now)
    assert out[0] == MemberChanged(MemberRecord(ME, LEFT), ALIVE, "left")
    assert out[1] == Publish(Leave(0))
    assert sorted(s.to for s in sends(out, Leave)) == sorted([B.node_id, C.node_id])
    assert r.m.has_left
    assert r.m.snapshot()[0] == MemberRecord(ME, LEFT)
    assert r.m.leave(r.now) == []
    assert r.m.tick(100.0) == []
    assert r.m.receive(B.node_id, Ping(1), 100.0) == []
    assert r.m.discovered(E, 100.0, "mdns") == []
    assert r.m.next_deadline() == float("inf")


# ---- restore and forget --------------------------------------------------------------


def test_restore_alive_as_candidates_and_dead_as_listed() -> None:
    r = Rig()
    out = r._record(
        r.m.restore(
            [rec(ME, ALIVE, 4), rec(B, ALIVE, 2), rec(C, SUSPECT), rec(D, DEAD, 1), rec(E, LEFT)],
            0.0,
        )
    )
    assert r.m.self_info.incarnation == 5  # above what we were before the restart
    assert sorted(connects(out)) == sorted([B.node_id, C.node_id])
    assert [i.node_id for i in r.m.candidates()] == sorted([B.node_id, C.node_id])
    assert {v.info.node_id: v.state for v in r.m.members()} == {D.node_id: DEAD, E.node_id: LEFT}
    assert {c.reason for c in changes(out)} == {"restored"}
    assert [i.node_id for i in r.m.restored()] == sorted([B.node_id, C.node_id])
    # Restored peers that answer are members. The others stay candidates (they were
    # members before the restart: they count toward the quorum, see restored()) and are
    # greeted again now and then, until forget_after.
    r.at(1.0)
    out = r.keep_alive([bump(B, 2)], until=CFG.candidate_timeout + 1.0)
    assert r.state(B) is ALIVE and [i.node_id for i in r.m.restored()] == [C.node_id]
    assert r.state(C) is None and [i.node_id for i in r.m.candidates()] == [C.node_id]
    assert Send(C.node_id, Hello(r.m.self_info)) in out
    assert C.node_id not in disconnects(out)
    # Restored dead or left peers are not chased (they will find us if they come back).
    r.keep_alive([bump(B, 2)], until=3 * CFG.reconnect_interval)
    assert [e for e in r.since(0.1) if isinstance(e, Connect)] == []
    r.keep_alive([bump(B, 2)], until=CFG.forget_after + 1.0, every=60.0)
    assert r.m.restored() == [] and r.m.candidates() == []


def test_restore_does_not_override_what_we_know() -> None:
    r = Rig()
    r.hello(B)
    assert r.m.restore([rec(B, DEAD, 9), rec(ME, ALIVE, 0)], 0.0) == []
    assert r.state(B) is ALIVE
    assert r.m.self_info.incarnation == 1  # equal record of ourselves: still bumped above


def test_dead_members_are_forgotten_after_forget_after() -> None:
    cfg = dataclasses.replace(CFG, forget_after=30.0)
    r = Rig(cfg)
    r.hello(B)
    r.recv(B, MemberUpdate((rec(C, DEAD),)))
    r.recv(B, Leave(0))
    out = r.keep_alive([], until=30.0 - 0.01)
    assert changes(out, C) == []
    out = r.at(30.0)
    forgotten = {c.record.info.node_id: c for c in changes(out)}
    assert forgotten[C.node_id] == MemberChanged(rec(C, DEAD), DEAD, "forgotten")
    assert forgotten[B.node_id] == MemberChanged(rec(B, LEFT), LEFT, "forgotten")
    assert r.m.members() == []


# ---- timing contract -------------------------------------------------------------------


def test_tick_before_next_deadline_does_nothing() -> None:
    r = Rig()
    r.hello(B, C)
    r.discover(D)
    r.recv(B, PingReq(1, C.node_id))
    for _ in range(200):
        due = r.m.next_deadline()
        early = r.now + (due - r.now) * 0.5
        assert r.m.tick(early) == []
        r.at(due)
    assert r.now > 3.0


def test_links_to_members_known_only_by_gossip_are_bounded() -> None:
    # A member holding the mesh key can gossip any number of members: at most
    # max_unheard_links links are opened to members nobody has heard from itself; a
    # member that speaks for itself (its HELLO) is linked whatever the count.
    r = Rig()
    r.hello(B)
    many = tuple(rec(fake_info(f"ghost{i}"), ALIVE) for i in range(100))
    out = r.recv(B, MemberUpdate(many))
    linked = {e.info.node_id for e in out if isinstance(e, Connect)}
    assert len(linked) == MembershipConfig().max_unheard_links
    assert len(r.m.members()) == 101  # listed all the same
    assert not any(isinstance(e, Send) and e.to not in linked | {B.node_id} for e in out)
    out = r.recv(C, Hello(C))
    assert any(isinstance(e, Connect) and e.info.node_id == C.node_id for e in out)
