"""Revocations of pack signers and packs: signed records, who may issue them, and the
bounded list a node keeps. Pure: no I/O, no clock (times are handed in).

**A record** (:class:`~meshd.wire.records.Revocation`) says "key or pack ``target`` is
revoked by the holder of key ``by`` at ``at_ms``", signed by ``by`` over
:data:`SIGNING_CONTEXT` + the fields (:func:`signed_bytes`). The context keeps it from
ever being mistaken for any other signature made with a node's key (a pack's is
``meshd/skill-pack/v1\\0``). Records travel in SKILL_REVOKE and are relayed as they are:
every receiver checks every record itself.

**Entitlement** (:func:`entitled`): a record counts only when its signer may revoke its
target:

* a signer key may be revoked by its holder (``by == target``) or by a *revoker*: a key
  this node's operator designated (``meshctl skill trust add KEY --revoker``), or this
  node's own key (it acts for its operator). A revoked key is no longer a revoker;
* a pack may be revoked by its signer or by a revoker. A node knows a pack's signer for
  sure only when it holds the pack (its signature was verified); a record for a pack it
  does not hold is kept *conditionally*: it applies to that pack only if the pack turns out
  to be signed by ``by`` (a pack id names one archive, hence one signer), so it can never
  disable anyone else's pack;
* a record whose signer is not a revoker is kept only when the signer is a key this node
  trusts (a member's, its own, an operator's): an unknown key's records would revoke
  nothing installable here, and must not fill the list.

**The list** (:class:`RevocationList`) holds accepted records, bounded: at most
``max_total`` records, and at most ``max_per_key`` records by one key that is not a
revoker here (its own key and its own packs). Beyond, records are refused, never stored.
The rules it judges by (who is a revoker, whom this node trusts, who signed a pack it
holds) are the caller's: :class:`Rules`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

from nacl.exceptions import CryptoError
from nacl.signing import VerifyKey

from meshd.wire.records import Revocation, RevocationKind

#: Prefix of the signed bytes of a revocation (domain separation).
SIGNING_CONTEXT: Final = b"meshd/skill-revoke/v1\x00"

#: Refusal reasons (counted per reason: ``counters.rejected``, ``frames_rejected_total``).
BAD_SIGNATURE: Final = "revoke_bad_signature"
NOT_ENTITLED: Final = "revoke_not_entitled"
LIST_FULL: Final = "revoke_list_full"
OVER_KEY_LIMIT: Final = "revoke_over_key_limit"

#: Refused: the signer is not a revoker here and not a key this node trusts.
UNKNOWN_SIGNER: Final = "revoke_unknown_signer"

#: Every refusal reason, in the order they are checked.
REASONS: Final = (BAD_SIGNATURE, NOT_ENTITLED, UNKNOWN_SIGNER, LIST_FULL, OVER_KEY_LIMIT)

#: (kind, target, by): one record per signer and target.
RecordId = tuple[RevocationKind, str, bytes]


def signed_bytes(kind: RevocationKind, target: str, by: bytes, at_ms: int) -> bytes:
    """What the signer of a revocation signs: :data:`SIGNING_CONTEXT`, the kind and a NUL,
    the target (64 ASCII hex chars), the signer's 32-byte key and ``at_ms`` as 8 bytes,
    big-endian."""
    return (
        SIGNING_CONTEXT
        + kind.value.encode("ascii")
        + b"\x00"
        + target.encode("ascii")
        + by
        + at_ms.to_bytes(8, "big")
    )


def sign(
    kind: RevocationKind, target: str, at_ms: int, by: bytes, signer: Callable[[bytes], bytes]
) -> Revocation:
    """A record revoking ``target`` signed by ``signer`` (signed bytes in, 64-byte
    signature out), whose public key is ``by``."""
    return Revocation(kind, target, by, at_ms, signer(signed_bytes(kind, target, by, at_ms)))


def signature_ok(rec: Revocation) -> bool:
    """True when ``rec.sig`` is ``rec.by``'s signature of the record."""
    try:
        VerifyKey(rec.by).verify(signed_bytes(rec.kind, rec.target, rec.by, rec.at_ms), rec.sig)
    except (CryptoError, ValueError, TypeError):
        return False
    return True


def record_id(rec: Revocation) -> RecordId:
    """What makes two records the same revocation (their times and signatures aside)."""
    return (rec.kind, rec.target, rec.by)


def entitled(rec: Revocation, *, revoker: bool, signer_of: Callable[[str], bytes | None]) -> bool:
    """May ``rec.by`` revoke ``rec.target`` (see the module docstring)? ``revoker``: the
    signer is a revoker here; ``signer_of`` gives the verified signer of a pack this node
    holds (None: not held, so a pack record is conditional, and entitled)."""
    if revoker:
        return True
    if rec.kind is RevocationKind.KEY:
        return rec.target == rec.by.hex()
    signer = signer_of(rec.target)
    return signer is None or signer == rec.by


@dataclass(frozen=True, slots=True)
class Rules:
    """What a node judges revocations by, as of now: ``is_revoker(key)``, the operator
    designated ``key`` or it is this node's own; ``trusted(key)``, this node trusts
    ``key`` (member, own, operator's); ``signer_of(pack_id)``, the verified signer of a
    pack this node holds (None when it holds none with that id)."""

    is_revoker: Callable[[bytes], bool]
    trusted: Callable[[bytes], bool]
    signer_of: Callable[[str], bytes | None]


@dataclass(frozen=True, slots=True)
class Held:
    """An accepted revocation. ``revoker``: its signer was a revoker here when it was
    accepted (a pack record then applies whoever signed the pack); ``sent_by``: node id
    of the member that delivered it ('' when made here)."""

    record: Revocation
    revoker: bool
    sent_by: str = ""

    @property
    def kind(self) -> RevocationKind:
        return self.record.kind

    @property
    def target(self) -> str:
        return self.record.target

    @property
    def by(self) -> bytes:
        return self.record.by

    def applies_to(self, signer: bytes) -> bool:
        """Does this pack revocation cover a pack signed by ``signer``?"""
        return self.revoker or self.record.by == signer


class RevocationList:
    """The revocations a node holds (see the module docstring), indexed for the checks
    before every install and every run."""

    def __init__(self, max_total: int, max_per_key: int, rules: Rules) -> None:
        self.max_total = max_total
        self.max_per_key = max_per_key
        self.rules = rules
        self._keys: dict[str, list[Held]] = {}
        self._packs: dict[str, list[Held]] = {}
        self._ids: set[RecordId] = set()
        #: records held per signer that was not a revoker when they were accepted
        self._per_key: Counter[bytes] = Counter()

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, rec: Revocation) -> bool:
        return record_id(rec) in self._ids

    def __iter__(self) -> Iterator[Held]:
        for table in (self._keys, self._packs):
            for entries in table.values():
                yield from entries

    def is_revoker(self, key: bytes) -> bool:
        """``key`` is a revoker here: designated (or this node's own), and not revoked."""
        return self.rules.is_revoker(key) and self.key_revoked(key) is None

    def judge(self, rec: Revocation) -> str | None:
        """Why ``rec`` may not be added (one of :data:`REASONS`), or None. A record
        already held is not judged again (check ``rec in list`` first)."""
        if not signature_ok(rec):
            return BAD_SIGNATURE
        revoker = self.is_revoker(rec.by)
        if not entitled(rec, revoker=revoker, signer_of=self.rules.signer_of):
            return NOT_ENTITLED
        if not revoker and not self.rules.trusted(rec.by):
            return UNKNOWN_SIGNER
        if len(self) >= self.max_total:
            return LIST_FULL
        if not revoker and self._per_key[rec.by] >= self.max_per_key:
            return OVER_KEY_LIMIT
        return None

    def add(
        self, rec: Revocation, *, sent_by: str = "", revoker: bool | None = None
    ) -> Held | None:
        """Hold ``rec`` (already judged, or loaded from the store, where ``revoker`` says
        what it was when accepted); None if an equal record was held already."""
        rid = record_id(rec)
        if rid in self._ids:
            return None
        held = Held(rec, self.is_revoker(rec.by) if revoker is None else revoker, sent_by)
        self._ids.add(rid)
        if not held.revoker:
            self._per_key[rec.by] += 1
        table = self._keys if rec.kind is RevocationKind.KEY else self._packs
        table.setdefault(rec.target, []).append(held)
        return held

    def key_revoked(self, key: bytes) -> Held | None:
        """The revocation of signer ``key``, if any."""
        entries = self._keys.get(key.hex())
        return entries[0] if entries else None

    def pack_revoked(self, pack_id: str, signer: bytes) -> Held | None:
        """The revocation that covers pack ``pack_id`` signed by ``signer``, if any."""
        for held in self._packs.get(pack_id, ()):
            if held.applies_to(signer):
                return held
        return None

    def revoked_keys(self) -> set[bytes]:
        """Every revoked signer key."""
        return {bytes.fromhex(k) for k in self._keys}

    def revoked_packs_for(self, signer: bytes) -> set[str]:
        """The pack ids revoked for packs signed by ``signer``."""
        return {
            pid
            for pid, entries in self._packs.items()
            if any(h.applies_to(signer) for h in entries)
        }

    def records(self) -> list[Revocation]:
        """Every record held, as signed (what a joiner is sent)."""
        return [h.record for h in self]
