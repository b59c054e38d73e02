"""Admission (meshd.daemon.admission) through its Proof and Gate ports, with real
proofs from meshd.identity and a FakeClock."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from meshd.clock import FakeClock
from meshd.daemon.admission import AUDIT_REFUSAL_INTERVAL, MAX_REFUSAL_SOURCES, Admission
from meshd.daemon.events import EVENT_HISTORY, EventLog
from meshd.errors import AdmissionError
from meshd.identity import Identity, MeshKey
from meshd.wire.records import MemberInfo


class FakeGate:
    def __init__(self) -> None:
        self.admitted: list[tuple[bytes, str]] = []
        self.rejected: dict[str, int] = {}

    def admit(self, curve_pk: bytes, node_id: str) -> None:
        self.admitted.append((curve_pk, node_id))

    def reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1


class FakeProof:
    """A Proof that accepts exactly the node ids in ``good``."""

    def __init__(self, *good: str) -> None:
        self.good = set(good)

    def check(self, info: MemberInfo) -> None:
        if info.node_id not in self.good:
            raise AdmissionError(f"node {info.node_id[:12]}: admission proof is not valid")

    def verify(self, info: MemberInfo) -> bool:
        return info.node_id in self.good


def info_for(ident: Identity, mesh: MeshKey, **changes: Any) -> MemberInfo:
    info = MemberInfo(
        node_id=ident.node_id,
        name="peer",
        role="devops",
        priority=50,
        ed25519_pk=ident.ed25519_pk,
        curve_pk=ident.curve_pk,
        proof=mesh.proof_for(ident.ed25519_pk),
        addresses=("127.0.0.1",),
        router_port=7790,
        pub_port=7791,
        intro_port=7792,
    )
    return ident.sign_info(dataclasses.replace(info, **changes))


def fake_info(node_id: str) -> MemberInfo:
    return MemberInfo(node_id, "x", "r", 0, b"e" * 32, b"c" * 32, b"p" * 32, (), 1, 2, 3)


class World:
    def __init__(self, proof: Any = None) -> None:
        self.mesh = MeshKey.generate()
        self.me = Identity.generate()
        self.peer = Identity.generate()
        self.clock = FakeClock()
        self.gate = FakeGate()
        self.audit: list[dict[str, Any]] = []
        self.events = EventLog(self.clock, self.me.node_id, audit=self.audit.append)
        self.adm = Admission(
            self.me.node_id, proof or self.mesh, self.gate, self.events, self.clock
        )

    def good(self, **changes: Any) -> MemberInfo:
        return info_for(self.peer, self.mesh, **changes)

    def bad(self) -> MemberInfo:
        """The peer's info with a proof made under another mesh's key."""
        return info_for(self.peer, MeshKey.generate())

    def refusals(self) -> list[dict[str, Any]]:
        """The refusal records the audit sink got (each is also an event)."""
        audited = [r for r in self.audit if r["type"] == "ADMISSION_REFUSED"]
        events = self.events.since(0.0)  # the newest EVENT_HISTORY of them
        assert len(events) == min(len(audited), EVENT_HISTORY)
        assert events == audited[len(audited) - len(events) :]
        return audited


@pytest.fixture
def w() -> World:
    return World()


# ---- admit ----------------------------------------------------------------------------------


def test_admit_lets_a_verified_key_through(w: World) -> None:
    assert w.adm.admit(w.good()) is True
    assert w.gate.admitted == [(w.peer.curve_pk, w.peer.node_id)]


def test_admit_refuses_a_bad_proof_silently(w: World) -> None:
    assert w.adm.admit(w.bad()) is False
    assert w.gate.admitted == []
    assert w.refusals() == []  # admit() only decides; callers record refusals


def test_admit_refuses_a_key_that_is_not_the_infos_own(w: World) -> None:
    other = Identity.generate()
    assert w.adm.admit(w.good(curve_pk=other.curve_pk)) is False
    assert w.gate.admitted == []


def test_admit_never_admits_our_own_id(w: World) -> None:
    ours = info_for(w.me, w.mesh)
    assert w.mesh.verify(ours)
    assert w.adm.admit(ours) is False
    assert w.gate.admitted == []


# ---- HELLO ------------------------------------------------------------------------------------


def test_check_hello_accepts_a_valid_info_of_the_sender(w: World) -> None:
    assert w.adm.check_hello(w.good(), w.peer.node_id) is True
    assert w.gate.rejected == {}
    assert w.refusals() == []


def test_check_hello_refuses_a_bad_proof_counted_and_audited(w: World) -> None:
    assert w.adm.check_hello(w.bad(), w.peer.node_id) is False
    assert w.gate.rejected == {"admission": 1}
    (rec,) = w.refusals()
    assert rec["via"] == "hello"
    assert rec["claimed"] == w.peer.node_id
    assert "proof" in rec["reason"]
    assert w.audit == [rec]
    assert w.gate.admitted == []


def test_check_hello_refusals_are_audited_once_per_interval_counted_always(w: World) -> None:
    for _ in range(5):
        assert w.adm.check_hello(w.bad(), w.peer.node_id) is False
        w.clock.advance(AUDIT_REFUSAL_INTERVAL / 10)
    assert w.gate.rejected == {"admission": 5}
    assert len(w.refusals()) == 1
    assert len(w.audit) == 1


def test_check_hello_naming_another_node_is_spoofed_sender(w: World) -> None:
    other = Identity.generate().node_id
    assert w.adm.check_hello(w.good(), other) is False
    assert w.gate.rejected == {"spoofed_sender": 1}
    assert w.refusals() == []


def test_refusals_are_rate_limited_per_channel_and_claimed_node(w: World) -> None:
    third = Identity.generate()
    w.adm.check_hello(w.bad(), w.peer.node_id)
    w.adm.check_hello(w.bad(), w.peer.node_id)  # same source: not audited again
    w.adm.check_hello(info_for(third, MeshKey.generate()), third.node_id)  # another node
    w.adm.check_intro(w.bad(), w.peer.node_id, w.peer.curve_pk.hex())  # another channel
    assert [(r["via"], r["claimed"]) for r in w.refusals()] == [
        ("hello", w.peer.node_id),
        ("hello", third.node_id),
        ("intro", w.peer.node_id),
    ]
    assert w.gate.rejected == {"admission": 4}


def test_the_rate_limit_resets_after_the_interval(w: World) -> None:
    w.adm.check_hello(w.bad(), w.peer.node_id)
    w.clock.advance(AUDIT_REFUSAL_INTERVAL - 0.001)
    w.adm.check_hello(w.bad(), w.peer.node_id)
    assert len(w.refusals()) == 1
    w.clock.advance(0.001)
    w.adm.check_hello(w.bad(), w.peer.node_id)
    assert len(w.refusals()) == 2
    # and the interval counts from the last audited refusal
    w.clock.advance(AUDIT_REFUSAL_INTERVAL / 2)
    w.adm.check_hello(w.bad(), w.peer.node_id)
    assert len(w.refusals()) == 2
    assert w.gate.rejected == {"admission": 4}


def test_the_remembered_sources_are_bounded() -> None:
    w = World(proof=FakeProof())  # refuses everyone
    ids = [f"{i:032x}" for i in range(MAX_REFUSAL_SOURCES)]
    for node_id in ids:
        w.adm.check_hello(fake_info(node_id), node_id)
    assert len(w.refusals()) == MAX_REFUSAL_SOURCES
    w.adm.check_hello(fake_info(ids[0]), ids[0])  # still remembered: not audited
    assert len(w.refusals()) == MAX_REFUSAL_SOURCES
    extra = f"{MAX_REFUSAL_SOURCES:032x}"
    w.adm.check_hello(fake_info(extra), extra)  # one more: the memory starts afresh
    assert len(w.refusals()) == MAX_REFUSAL_SOURCES + 1
    w.adm.check_hello(fake_info(ids[0]), ids[0])  # forgotten, so audited again
    assert len(w.refusals()) == MAX_REFUSAL_SOURCES + 2
    assert len(w.adm._refusals) <= MAX_REFUSAL_SOURCES
    assert w.gate.rejected == {"admission": MAX_REFUSAL_SOURCES + 3}


# ---- INTRO ------------------------------------------------------------------------------------


def test_check_intro_admits_the_handshake_key(w: World) -> None:
    assert w.adm.check_intro(w.good(), w.peer.node_id, w.peer.curve_pk.hex()) is True
    assert w.gate.admitted == [(w.peer.curve_pk, w.peer.node_id)]
    assert w.gate.rejected == {}


@pytest.mark.parametrize("key", [None, "00" * 32, ""], ids=["none", "other", "empty"])
def test_check_intro_refuses_a_key_other_than_the_handshake_key(w: World, key: str | None) -> None:
    assert w.adm.check_intro(w.good(), w.peer.node_id, key) is False
    assert w.gate.admitted == []
    assert w.gate.rejected == {"admission": 1}
    (rec,) = w.refusals()
    assert rec["via"] == "intro"
    assert "handshake key" in rec["reason"]


def test_check_intro_refuses_a_sender_other_than_the_info(w: World) -> None:
    other = Identity.generate().node_id
    assert w.adm.check_intro(w.good(), other, w.peer.curve_pk.hex()) is False
    assert w.gate.admitted == []
    (rec,) = w.refusals()
    assert (rec["via"], rec["claimed"]) == ("intro", other)
    assert "sender" in rec["reason"]


def test_check_intro_refuses_a_bad_proof(w: World) -> None:
    assert w.adm.check_intro(w.bad(), w.peer.node_id, w.peer.curve_pk.hex()) is False
    assert w.gate.admitted == []
    assert w.gate.rejected == {"admission": 1}
    assert len(w.refusals()) == 1


# ---- seeds and mDNS -------------------------------------------------------------------------


def test_check_seed_accepts_a_valid_seed_without_admitting(w: World) -> None:
    w.adm.check_seed(w.good(), w.peer.node_id)
    assert w.gate.admitted == []


def test_check_seed_raises_on_a_bad_proof_or_another_sender(w: World) -> None:
    with pytest.raises(AdmissionError):
        w.adm.check_seed(w.bad(), w.peer.node_id)
    with pytest.raises(AdmissionError, match="sender"):
        w.adm.check_seed(w.good(), Identity.generate().node_id)
    assert w.gate.admitted == []


def test_check_mdns_admits_a_verified_record(w: World) -> None:
    assert w.adm.check_mdns(w.good()) is True
    assert w.gate.admitted == [(w.peer.curve_pk, w.peer.node_id)]


def test_check_mdns_refuses_a_bad_record_audited(w: World) -> None:
    assert w.adm.check_mdns(w.bad()) is False
    assert w.gate.admitted == []
    assert w.gate.rejected == {"admission": 1}
    (rec,) = w.refusals()
    assert (rec["via"], rec["claimed"]) == ("mdns", w.peer.node_id)


def test_check_mdns_ignores_our_own_record(w: World) -> None:
    assert w.adm.check_mdns(info_for(w.me, w.mesh)) is False
    assert w.adm.check_mdns(info_for(w.me, MeshKey.generate())) is False
    assert w.gate.admitted == []
    assert w.gate.rejected == {}
    assert w.refusals() == []


def test_refusal_record_is_an_audited_event_of_this_node(w: World) -> None:
    w.adm.refused("hello", "claimed-id", "why not")
    (rec,) = w.audit
    assert rec["type"] == "ADMISSION_REFUSED"
    assert rec["node"] == w.me.node_id
    assert (rec["via"], rec["claimed"], rec["reason"]) == ("hello", "claimed-id", "why not")


# ---- refused handshakes (told by the transport) ----------------------------------------------


def test_handshake_refusal_is_audited_once_per_address_a_minute(w: World) -> None:
    from meshd.net.base import Refusal

    for i in range(5):  # the same outsider retrying, a fresh key each time
        w.adm.handshake_refused(Refusal("10.0.0.9", f"{i:02x}" * 32, "key not admitted"))
        w.clock.advance(1.0)
    w.adm.handshake_refused(Refusal("10.0.0.8", "ab" * 32, "key not admitted"))
    recs = w.refusals()
    assert [(r["via"], r["address"]) for r in recs] == [
        ("handshake", "10.0.0.9"),
        ("handshake", "10.0.0.8"),
    ]
    assert recs[0]["key"] == "00" * 32 and recs[0]["claimed"] == ""
    assert w.gate.rejected == {}  # counted by the transport (zap_refused), not as a frame
    w.clock.advance(AUDIT_REFUSAL_INTERVAL)
    w.adm.handshake_refused(Refusal("10.0.0.9", "cd" * 32, "key not admitted"))
    assert len(w.refusals()) == 3
