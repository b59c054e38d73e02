"""Revocation records (meshd.skills.revocation): signatures, who may revoke what, the
bounded list, and the committed wire vector."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from meshd.identity import Identity
from meshd.skills import revocation as rev
from meshd.skills.revocation import RevocationList, Rules
from meshd.wire.records import Revocation, RevocationKind

KEY, PACK = RevocationKind.KEY, RevocationKind.PACK
PID = "ab" * 32
PID2 = "cd" * 32
VECTOR = Path(__file__).resolve().parents[3] / "proto" / "vectors" / "skill_revoke.json"


def record(who: Identity, kind: RevocationKind, target: str, at_ms: int = 1) -> Revocation:
    return rev.sign(kind, target, at_ms, who.ed25519_pk, who.sign)


class World:
    """Who is a revoker, whom the node trusts, who signed the packs it holds."""

    def __init__(self) -> None:
        self.revokers: set[bytes] = set()
        self.trusted: set[bytes] = set()
        self.held: dict[str, bytes] = {}

    def rules(self) -> Rules:
        return Rules(
            is_revoker=lambda k: k in self.revokers,
            trusted=lambda k: k in self.trusted or k in self.revokers,
            signer_of=self.held.get,
        )

    def list(self, max_total: int = 100, max_per_key: int = 10) -> RevocationList:
        return RevocationList(max_total, max_per_key, self.rules())


@pytest.fixture
def ids() -> tuple[Identity, Identity, Identity]:
    """(revoker, member, other member)"""
    return Identity.generate(), Identity.generate(), Identity.generate()


@pytest.fixture
def world(ids: tuple[Identity, Identity, Identity]) -> World:
    w = World()
    revoker, member, other = ids
    w.revokers.add(revoker.ed25519_pk)
    w.trusted |= {member.ed25519_pk, other.ed25519_pk}
    return w


def test_signed_bytes_layout() -> None:
    by = bytes(range(32))
    got = rev.signed_bytes(PACK, PID, by, 258)
    assert got == b"meshd/skill-revoke/v1\x00pack\x00" + PID.encode() + by + bytes(6) + b"\x01\x02"


def test_a_signed_record_verifies_and_a_changed_one_does_not(
    ids: tuple[Identity, Identity, Identity],
) -> None:
    _, member, other = ids
    rec = record(member, KEY, member.ed25519_pk.hex(), 5)
    assert rev.signature_ok(rec)
    for changed in (
        dataclasses.replace(rec, at_ms=6),
        dataclasses.replace(rec, kind=PACK),
        dataclasses.replace(rec, target=other.ed25519_pk.hex()),
        dataclasses.replace(rec, by=other.ed25519_pk),
        dataclasses.replace(rec, sig=bytes(64)),
        dataclasses.replace(rec, by=b"\x00" * 31),  # not a key at all
    ):
        assert not rev.signature_ok(changed)


def test_the_committed_vector_carries_valid_records() -> None:
    # The vector's generator signs independently of this module: the layouts agree.
    doc = json.loads(VECTOR.read_text())
    for r in doc["envelope"]["payload"]["records"]:
        rec = Revocation(
            RevocationKind(r["kind"]),
            r["target"],
            bytes.fromhex(r["by"]),
            r["at_ms"],
            bytes.fromhex(r["sig"]),
        )
        assert rev.signature_ok(rec)


def test_a_key_holder_may_revoke_its_own_key_and_nobody_elses(
    world: World, ids: tuple[Identity, Identity, Identity]
) -> None:
    _, member, other = ids
    lst = world.list()
    own = record(member, KEY, member.ed25519_pk.hex())
    assert lst.judge(own) is None
    theirs = record(member, KEY, other.ed25519_pk.hex())
    assert lst.judge(theirs) == rev.NOT_ENTITLED


def test_a_revoker_may_revoke_any_key_and_any_pack(
    world: World, ids: tuple[Identity, Identity, Identity]
) -> None:
    revoker, member, other = ids
    world.held[PID] = other.ed25519_pk
    lst = world.list()
    for rec in (
        record(revoker, KEY, member.ed25519_pk.hex()),
        record(revoker, PACK, PID),
        record(revoker, PACK, PID2),
    ):
        assert lst.judge(rec) is None
        held = lst.add(rec, sent_by="n1")
        assert held is not None and held.revoker and held.sent_by == "n1"
    assert lst.key_revoked(member.ed25519_pk) is not None
    # a revoker's pack record covers the pack whoever signed it
    assert lst.pack_revoked(PID, other.ed25519_pk) is not None
    assert lst.pack_revoked(PID2, member.ed25519_pk) is not None
    assert lst.revoked_packs_for(member.ed25519_pk) == {PID, PID2}


def test_a_pack_may_be_revoked_by_its_signer_only(
    world: World, ids: tuple[Identity, Identity, Identity]
) -> None:
    _, member, other = ids
    world.held[PID] = other.ed25519_pk
    lst = world.list()
    # held here, signed by `other`: `member` may not revoke it
    assert lst.judge(record(member, PACK, PID)) == rev.NOT_ENTITLED
    assert lst.judge(record(other, PACK, PID)) is None


def test_a_record_for_a_pack_not_held_is_conditional(
    world: World, ids: tuple[Identity, Identity, Identity]
) -> None:
    _, member, other = ids
    lst = world.list()
    rec = record(member, PACK, PID2)
    assert lst.judge(rec) is None
    held = lst.add(rec)
    assert held is not None and not held.revoker
    # it covers the pack only if `member` signed it: never someone else's pack
    assert lst.pack_revoked(PID2, member.ed25519_pk) is held
    assert lst.pack_revoked(PID2, other.ed25519_pk) is None
    assert lst.revoked_packs_for(other.ed25519_pk) == set()
    assert lst.revoked_packs_for(member.ed25519_pk) == {PID2}


def test_bad_signature_is_refused_first(
    world: World, ids: tuple[Identity, Identity, Identity]
) -> None:
    revoker, member, _ = ids
    lst = world.list()
    forged = dataclasses.replace(
        record(member, KEY, member.ed25519_pk.hex()), by=revoker.ed25519_pk
    )
    assert lst.judge(forged) == rev.BAD_SIGNATURE
    # a revoker's key with somebody else's signature: refused too
    stolen = dataclasses.replace(
        record(member, KEY, member.ed25519_pk.hex()),
        by=revoker.ed25519_pk,
        target=member.ed25519_pk.hex(),
    )
    assert lst.judge(stolen) == rev.BAD_SIGNATURE


def test_an_unknown_key_cannot_fill_the_list(world: World) -> None:
    stranger = Identity.generate()
    lst = world.list()
    assert lst.judge(record(stranger, KEY, stranger.ed25519_pk.hex())) == rev.UNKNOWN_SIGNER
    assert lst.judge(record(stranger, PACK, PID)) == rev.UNKNOWN_SIGNER


def test_bounds_per_key_and_in_all(world: World, ids: tuple[Identity, Identity, Identity]) -> None:
    revoker, member, other = ids
    lst = world.list(max_total=6, max_per_key=3)
    for i in range(3):
        rec = record(member, PACK, f"{i:064x}")
        assert lst.judge(rec) is None
        lst.add(rec)
    assert lst.judge(record(member, PACK, f"{9:064x}")) == rev.OVER_KEY_LIMIT
    # another member has its own allowance; a revoker is not held to one
    for i in range(2):
        rec = record(other, PACK, f"{i:064x}")
        assert lst.judge(rec) is None
        lst.add(rec)
    rec = record(revoker, PACK, PID)
    assert lst.judge(rec) is None
    lst.add(rec)
    assert len(lst) == 6
    assert lst.judge(record(revoker, PACK, PID2)) == rev.LIST_FULL
    assert lst.judge(record(other, KEY, other.ed25519_pk.hex())) == rev.LIST_FULL


def test_the_same_revocation_is_held_once(
    world: World, ids: tuple[Identity, Identity, Identity]
) -> None:
    _, member, _ = ids
    lst = world.list()
    a = record(member, KEY, member.ed25519_pk.hex(), 1)
    b = record(member, KEY, member.ed25519_pk.hex(), 2)  # signed again, later
    assert lst.add(a) is not None
    assert b in lst
    assert lst.add(b) is None
    assert len(lst) == 1 and lst.records() == [a]


def test_a_revoked_revoker_is_a_revoker_no_more(
    world: World, ids: tuple[Identity, Identity, Identity]
) -> None:
    revoker, member, _ = ids
    lst = world.list()
    assert lst.is_revoker(revoker.ed25519_pk)
    lst.add(record(revoker, KEY, revoker.ed25519_pk.hex()))  # it revokes itself
    assert not lst.is_revoker(revoker.ed25519_pk)
    assert lst.judge(record(revoker, KEY, member.ed25519_pk.hex())) == rev.NOT_ENTITLED


def test_records_loaded_keep_what_they_were_when_accepted(
    world: World, ids: tuple[Identity, Identity, Identity]
) -> None:
    revoker, _, other = ids
    rec = record(revoker, PACK, PID)
    world.revokers.clear()  # no longer designated: the stored record still says it was
    lst = world.list()
    held = lst.add(rec, revoker=True)
    assert held is not None and held.revoker
    assert lst.pack_revoked(PID, other.ed25519_pk) is held
