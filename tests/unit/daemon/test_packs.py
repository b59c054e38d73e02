"""The pack manager's handling of revocations and announcements (meshd.daemon.packs),
with a real store and fake mesh: what is kept, counted, audited, and migrated."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from meshd.clock import FakeClock
from meshd.config import SkillsConfig
from meshd.daemon.events import EventLog
from meshd.daemon.packs import PackManager
from meshd.identity import Identity
from meshd.roles import get_role
from meshd.skills import catalog as cat
from meshd.skills import revocation as rev
from meshd.skills.builtin import Registry
from meshd.skills.executor import SkillStats
from meshd.store.db import Store
from meshd.wire.messages import Payload, SkillAnnounce, SkillRevoke
from meshd.wire.records import MemberInfo, PackInfo, RevocationKind

PID = "ab" * 32


class FakeMesh:
    def __init__(self) -> None:
        self.infos: list[MemberInfo] = []
        self.sent: list[tuple[str, Payload]] = []
        self.published: list[Payload] = []
        self.rejected: Counter[str] = Counter()

    def members(self) -> list[MemberInfo]:
        return self.infos

    def name_of(self, node_id: str) -> str:
        return {i.node_id: i.name for i in self.infos}.get(node_id, node_id[:8])

    def send(self, to: str, payload: Payload) -> None:
        self.sent.append((to, payload))

    def publish(self, payload: Payload) -> None:
        self.published.append(payload)

    def reply(self, to: str, payload: Payload, correlation_id: bytes) -> None:
        self.sent.append((to, payload))

    def request(self, to: str, payload: Payload, msg_id: bytes) -> None:
        self.sent.append((to, payload))

    def reject(self, reason: str) -> None:
        self.rejected[reason] += 1


class FakeRuns:
    def stop_skill(self, name: str) -> int:
        return 0

    def stats(self) -> Mapping[str, SkillStats]:
        return {}


class World:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.me = Identity.generate()
        self.clock = FakeClock()
        self.store = Store(root, fsync=False)
        self.mesh = FakeMesh()
        self.audit: list[dict[str, Any]] = []

    def member(self, name: str) -> Identity:
        ident = Identity.generate()
        info = MemberInfo(
            ident.node_id, name, "observer", 1, ident.ed25519_pk, ident.curve_pk,
            b"\x00" * 32, ("127.0.0.1",), 1, 2, 3,
        )  # fmt: skip
        self.mesh.infos.append(info)
        return ident

    def manager(self) -> PackManager:
        events = EventLog(self.clock, self.me.node_id, audit=self.audit.append)
        role = dataclasses.replace(get_role("observer"), skill_packs=())
        pm = PackManager(
            self.root / "skills",
            Registry(),
            identity=self.me,
            role=role,
            config=SkillsConfig(max_packs_per_member=4),
            store=self.store,
            events=events,
            clock=self.clock,
            mesh=self.mesh,
            runs=FakeRuns(),
        )
        pm.start()
        return pm

    def kinds(self) -> list[str]:
        return [r["type"] for r in self.audit]


@pytest.fixture
def w(tmp_path: Path) -> Iterator[World]:
    world = World(tmp_path)
    yield world
    world.store.close()


def test_legacy_revocations_are_migrated_or_dropped_and_never_stop_a_start(w: World) -> None:
    mine, theirs = Identity.generate(), Identity.generate()
    w.store.kv_put("revoked_keys", mine.ed25519_pk.hex(), {"at": 12.5, "by": w.me.node_id})
    w.store.kv_put("revoked_keys", theirs.ed25519_pk.hex(), {"at": 1.0, "by": "f" * 32})
    w.store.kv_put("revoked_packs", PID, {"at": 1.0, "by": "f" * 32})
    w.store.kv_put("revoked_packs", "not-a-pack-id", "garbage")
    pm = w.manager()
    # This node's own (its operator's) revocation: signed again with its key, and kept.
    held = pm.revocations.key_revoked(mine.ed25519_pk)
    assert held is not None and held.revoker and held.record.by == w.me.ed25519_pk
    assert held.record.at_ms == 12500 and rev.signature_ok(held.record)
    # Received from another member, unsigned: dropped, with an audit record.
    assert pm.revocations.key_revoked(theirs.ed25519_pk) is None
    assert pm.revocations.pack_revoked(PID, theirs.ed25519_pk) is None
    assert w.kinds().count("SKILL_REVOCATION_MIGRATED") == 1
    dropped = [r for r in w.audit if r["type"] == "SKILL_REVOCATION_DROPPED"]
    assert {r["target"] for r in dropped} == {theirs.ed25519_pk.hex(), PID, "not-a-pack-id"}
    assert w.store.kv_items("revoked_keys") == [] and w.store.kv_items("revoked_packs") == []
    # A restart finds the signed record in its own table.
    again = w.manager()
    assert again.revocations.key_revoked(mine.ed25519_pk) is not None
    assert len(again.revocations) == 1


def test_a_broken_stored_record_is_skipped(w: World) -> None:
    w.store.kv_put("revocations", "x", {"kind": "key", "target": "zz"})
    pm = w.manager()
    assert len(pm.revocations) == 0


def test_revocations_from_a_member(w: World) -> None:
    m = w.member("m")
    other = w.member("o")
    pm = w.manager()
    sender = m.node_id
    own = rev.sign(RevocationKind.KEY, m.ed25519_pk.hex(), 1, m.ed25519_pk, m.sign)
    not_its = rev.sign(RevocationKind.KEY, other.ed25519_pk.hex(), 1, m.ed25519_pk, m.sign)
    pm.receive(sender, SkillRevoke((not_its,)), b"1" * 16, None)
    pm.receive(sender, SkillRevoke((not_its,)), b"2" * 16, None)
    assert pm.revocations.key_revoked(other.ed25519_pk) is None
    assert w.mesh.rejected[rev.NOT_ENTITLED] == 2
    # audited once a minute per member and reason, with who signed and who sent it
    refused = [r for r in w.audit if r["type"] == "SKILL_REVOKE_REFUSED"]
    assert len(refused) == 1
    assert refused[0]["by"] == m.ed25519_pk.hex() and refused[0]["by_name"] == "m"
    assert refused[0]["sent_by"] == sender and refused[0]["sent_by_name"] == "m"
    w.clock.advance(61)
    pm.receive(sender, SkillRevoke((not_its,)), b"3" * 16, None)
    assert w.kinds().count("SKILL_REVOKE_REFUSED") == 2
    assert w.store.kv_items("revocations") == []  # nothing refused is stored
    # relayed by another member: judged as the original, kept, audited with both names
    pm.receive(other.node_id, SkillRevoke((own,)), b"4" * 16, None)
    assert pm.revocations.key_revoked(m.ed25519_pk) is not None
    done = [r for r in w.audit if r["type"] == "SKILL_KEY_REVOKED"]
    assert done[0]["by_name"] == "m" and done[0]["sent_by_name"] == "o"
    assert len(w.store.kv_items("revocations")) == 1
    # and sent on to a member that joins
    pm.member_joined("j" * 32)
    assert ("j" * 32, SkillRevoke((own,))) in w.mesh.sent


def test_a_revoker_designated_here(w: World) -> None:
    m = w.member("m")
    boss = Identity.generate()
    pm = w.manager()
    rec = rev.sign(RevocationKind.KEY, m.ed25519_pk.hex(), 1, boss.ed25519_pk, boss.sign)
    pm.receive(m.node_id, SkillRevoke((rec,)), b"1" * 16, None)
    assert w.mesh.rejected[rev.NOT_ENTITLED] == 1
    pm.trust_add(boss.ed25519_pk.hex(), "security", revoker=True)
    assert any(r["revoker"] for r in pm.trust_list() if r["key"] == boss.ed25519_pk.hex())
    pm.receive(m.node_id, SkillRevoke((rec,)), b"2" * 16, None)
    assert pm.revocations.key_revoked(m.ed25519_pk) is not None


def test_local_revoke_signs_with_the_node_key_and_publishes(w: World) -> None:
    m = w.member("m")
    pm = w.manager()
    out = pm.revoke([m.ed25519_pk.hex()], [PID])
    assert out["by"] == w.me.ed25519_pk.hex() and out["new"] == 2
    (msg,) = w.mesh.published
    assert isinstance(msg, SkillRevoke) and len(msg.records) == 2
    assert all(r.by == w.me.ed25519_pk and rev.signature_ok(r) for r in msg.records)
    assert pm.revocations.key_revoked(m.ed25519_pk) is not None
    # again: nothing new, published again (for members that refused it before)
    assert pm.revoke([m.ed25519_pk.hex()], [])["new"] == 0
    assert len(w.mesh.published) == 2


def test_announcements_of_untrusted_signers_are_counted_not_kept(w: World) -> None:
    m = w.member("m")
    pm = w.manager()
    stranger = Identity.generate().ed25519_pk

    def infos(n: int, signer: bytes) -> tuple[PackInfo, ...]:
        return tuple(PackInfo(f"p{i}", "1", f"{i:064x}", 10, signer, {}) for i in range(n))

    pm.receive(m.node_id, SkillAnnounce(infos(100, stranger), True), b"1" * 16, None)
    assert pm.catalog.entries == 0 and w.mesh.rejected[cat.UNTRUSTED] == 100
    # a trusted signer's: kept up to the member's limit (4 here)
    pm.receive(m.node_id, SkillAnnounce(infos(6, m.ed25519_pk), True), b"2" * 16, None)
    assert pm.catalog.entries == 4 and w.mesh.rejected[cat.MEMBER_LIMIT] == 2
    assert pm.known_names() == ["p0", "p1", "p2", "p3"]
    pm.member_gone(m.node_id)
    assert pm.catalog.entries == 0
