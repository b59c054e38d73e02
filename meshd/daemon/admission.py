"""Admission of a live node: who may talk to it, and a trace of who was refused.

A host takes part only once it proves it belongs to the mesh: its member info carries an
admission proof (an HMAC of its Ed25519 key under the mesh key, :class:`~meshd.identity.MeshKey`).
This module checks that proof wherever a member's info arrives (HELLO on a mesh link,
INTRO on the intro socket, an mDNS record, a seed's INTRO_ACK) and, once it verifies,
lets the member's CURVE key through the transport's ZAP handler (the :class:`Gate` port).

Every refusal is counted (``counters.rejected["admission"]``; a CURVE handshake the ZAP
handler refused is counted by the transport, ``zap_refused``), logged, and kept as a
durable ``ADMISSION_REFUSED`` audit record and event, at most one per (channel, source)
every :data:`AUDIT_REFUSAL_INTERVAL` seconds, so a misconfigured host retrying cannot
flood the log. The source is the claimed node id for a refused HELLO, INTRO or mDNS
record, the client's address for a refused handshake (channel ``handshake``: an outsider
presents no node id, and could present a fresh key on every try).
"""

from __future__ import annotations

from typing import Final, Protocol

from meshd import log
from meshd.clock import Clock
from meshd.daemon.events import EventLog
from meshd.errors import AdmissionError
from meshd.net.base import Refusal
from meshd.wire.records import MemberInfo

_log = log.get("meshd.admission")

#: s. Least time between two ADMISSION_REFUSED audit records for the same source.
AUDIT_REFUSAL_INTERVAL: Final = 60.0
#: Sources remembered for the rate limit; beyond it the memory starts afresh.
MAX_REFUSAL_SOURCES: Final = 1024


class Proof(Protocol):
    """The mesh key's side of admission (:class:`meshd.identity.MeshKey`)."""

    def check(self, info: MemberInfo) -> None:
        """Raise AdmissionError unless ``info``'s proof and its node's signature verify."""
        ...

    def verify(self, info: MemberInfo) -> bool: ...

    def verify_proof(self, info: MemberInfo) -> bool:
        """The admission proof only (an mDNS record carries no signature)."""
        ...


class Gate(Protocol):
    """The transport's side of admission: which CURVE keys its ZAP handler lets in."""

    def admit(self, curve_pk: bytes, node_id: str) -> None: ...

    def reject(self, reason: str) -> None:
        """Count a refused frame or record under ``reason``."""
        ...


class Admission:
    """Proof checks, the ZAP admissions they unlock, and refusal records."""

    def __init__(
        self, self_id: str, proof: Proof, gate: Gate, events: EventLog, clock: Clock
    ) -> None:
        self._self_id = self_id
        self._proof = proof
        self._gate = gate
        self._events = events
        self._clock = clock
        self._refusals: dict[tuple[str, str], float] = {}

    def admit(self, info: MemberInfo) -> bool:
        """Let ``info``'s CURVE key through if its proof verifies (never our own); an
        mDNS record carries no signature, so only the proof is checked here."""
        if info.node_id == self._self_id or not self._proof.verify_proof(info):
            return False
        self._gate.admit(info.curve_pk, info.node_id)
        return True

    def check_hello(self, info: MemberInfo, sender: str) -> bool:
        """A HELLO from the authenticated ``sender``: its info must prove membership and
        be the sender's own."""
        try:
            self._proof.check(info)
        except AdmissionError as exc:
            self.refused("hello", sender, str(exc))
            return False
        if info.node_id != sender:
            self._gate.reject("spoofed_sender")
            return False
        return True

    def check_intro(self, info: MemberInfo, sender: str, handshake_key: str | None) -> bool:
        """An INTRO on the intro socket: a valid proof for the very key that did the
        CURVE handshake (``handshake_key``, hex), sent by the node it describes. On
        success the member is admitted on the mesh sockets too."""
        try:
            self._proof.check(info)
            if handshake_key is None or info.curve_pk.hex() != handshake_key:
                raise AdmissionError("INTRO key differs from the handshake key")
            if sender != info.node_id:
                raise AdmissionError("INTRO sender differs from its info")
        except AdmissionError as exc:
            self.refused("intro", sender, str(exc))
            return False
        self.admit(info)
        return True

    def check_seed(self, info: MemberInfo, sender: str) -> None:
        """A seed's INTRO_ACK: raise AdmissionError unless it proves membership."""
        self._proof.check(info)
        if sender != info.node_id:
            raise AdmissionError("seed's sender id differs from its info")

    def check_mdns(self, info: MemberInfo) -> bool:
        """An mDNS record of another node: admitted if its proof verifies."""
        if info.node_id == self._self_id:
            return False
        if self.admit(info):
            return True
        self.refused("mdns", info.node_id, "bad admission proof")
        return False

    def refused(self, via: str, who: str, reason: str) -> None:
        """Count, log and (rate-limited) audit a refusal on channel ``via``."""
        self._gate.reject("admission")
        _log.warning(f"{via}_rejected", claimed=who[:32], reason=reason)
        self._audit(via, who, {"via": via, "claimed": who, "reason": reason})

    def handshake_refused(self, refusal: Refusal) -> None:
        """A CURVE handshake the transport's ZAP handler refused (counted there): audit it,
        at most once per client address a minute. The record names the address
        (``claimed``: '' - a handshake claims no node id) and the key it presented."""
        self._audit(
            "handshake",
            refusal.source,
            {
                "via": "handshake",
                "claimed": "",
                "address": refusal.source,
                "key": refusal.key,
                "reason": refusal.detail,
            },
        )

    def _audit(self, via: str, source: str, fields: dict[str, str]) -> None:
        """An ADMISSION_REFUSED record, unless (via, source) had one within the interval."""
        now = self._clock.monotonic()
        key = (via, source)
        last = self._refusals.get(key)
        if last is not None and now - last < AUDIT_REFUSAL_INTERVAL:
            return
        if len(self._refusals) >= MAX_REFUSAL_SOURCES:
            self._refusals.clear()
        self._refusals[key] = now
        self._events.append("ADMISSION_REFUSED", fields, audit=True)
