"""Node identity and mesh admission.

* **Identity.** Each node has one Ed25519 key, created once and kept in
  ``<state-dir>/identity.key`` (mode 0600; :mod:`meshd.daemon.state` reads and writes
  the files). Its node id is BLAKE2b-128 of the public key (32 hex chars); its CURVE key
  pair (for ZeroMQ) is the same key converted to Curve25519, so one secret backs both
  signatures and link encryption.
* **Mesh key.** 32 random bytes shared by every member, created by ``meshd init`` and
  handed to new hosts as a join token (``meshd1-`` + base32 of key + checksum).
* **Admission proof.** ``HMAC-SHA256(mesh_key, "meshd/admit/v1" | mesh_id | ed25519_pk)``.
  It proves that whoever made it holds the mesh key, without revealing the key, and it is
  bound to one public key: a copied proof is worthless without that key's secret, which
  the CURVE handshake demands. The proof travels in the mDNS TXT record and in HELLO/INTRO.
* **Intro key pair.** A Curve25519 key pair derived from the mesh key. The intro socket
  (first contact with a static seed) uses it as its server key: completing a CURVE
  handshake with it requires knowing its public key, which only mesh members can derive.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import os
from dataclasses import dataclass
from functools import lru_cache

from nacl.bindings import crypto_scalarmult_base, crypto_sign_ed25519_pk_to_curve25519
from nacl.signing import SigningKey

from meshd.errors import AdmissionError, TokenError
from meshd.wire.records import MemberInfo
from meshd.wire.signing import info_signed, sign_info

TOKEN_PREFIX = "meshd1-"
_ADMIT_CONTEXT = b"meshd/admit/v1"


def node_id_for(ed25519_pk: bytes) -> str:
    """The node id of a public key: 32 lowercase hex chars."""
    return hashlib.blake2b(ed25519_pk, digest_size=16).hexdigest()


@lru_cache(maxsize=4096)
def curve_pk_for(ed25519_pk: bytes) -> bytes:
    """The Curve25519 public key that belongs to an Ed25519 public key."""
    return bytes(crypto_sign_ed25519_pk_to_curve25519(ed25519_pk))


@dataclass(frozen=True)
class Identity:
    signing_key: SigningKey

    # Derived once (frozen dataclass without slots: cached_property may store them); the
    # node id is read for every message sent.
    @functools.cached_property
    def ed25519_pk(self) -> bytes:
        return bytes(self.signing_key.verify_key)

    @functools.cached_property
    def node_id(self) -> str:
        return node_id_for(self.ed25519_pk)

    @functools.cached_property
    def curve_pk(self) -> bytes:
        return curve_pk_for(self.ed25519_pk)

    @property
    def curve_sk(self) -> bytes:
        return bytes(self.signing_key.to_curve25519_private_key())

    def sign(self, data: bytes) -> bytes:
        return bytes(self.signing_key.sign(data).signature)

    def sign_info(self, info: MemberInfo) -> MemberInfo:
        """``info`` (this node's own) with its signature (:mod:`meshd.wire.signing`)."""
        return sign_info(self.sign, info)

    @classmethod
    def generate(cls) -> Identity:
        return cls(SigningKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        """The identity whose Ed25519 seed is ``seed`` (32 bytes; ValueError otherwise)."""
        if len(seed) != 32:
            raise ValueError("an Ed25519 seed is 32 bytes")
        return cls(SigningKey(seed))

    @property
    def seed(self) -> bytes:
        """The 32-byte Ed25519 seed (secret: what the identity file holds)."""
        return bytes(self.signing_key)


@dataclass(frozen=True)
class MeshKey:
    key: bytes

    @property
    def mesh_id(self) -> str:
        return hashlib.blake2b(self.key, digest_size=8, person=b"meshd-mesh-id").hexdigest()

    @classmethod
    def generate(cls) -> MeshKey:
        return cls(os.urandom(32))

    # -- join token ---------------------------------------------------------------
    def token(self) -> str:
        check = hashlib.blake2b(self.key, digest_size=4, person=b"meshd-token").digest()
        body = base64.b32encode(self.key + check).decode().rstrip("=").lower()
        return TOKEN_PREFIX + body

    @classmethod
    def from_token(cls, token: str) -> MeshKey:
        token = token.strip()
        if not token.startswith(TOKEN_PREFIX):
            raise TokenError(f"a join token starts with {TOKEN_PREFIX!r}; got {token[:12]!r}...")
        body = token[len(TOKEN_PREFIX) :].upper()
        body += "=" * (-len(body) % 8)
        try:
            raw = base64.b32decode(body)
        except (ValueError, binascii.Error):
            raise TokenError("the join token is damaged (not base32); copy it again") from None
        if len(raw) != 36:
            raise TokenError("the join token has the wrong length; copy it again in full")
        key, check = raw[:32], raw[32:]
        if hashlib.blake2b(key, digest_size=4, person=b"meshd-token").digest() != check:
            raise TokenError("the join token fails its checksum (a typo?); copy it again")
        return cls(key)

    # -- admission ----------------------------------------------------------------
    def proof_for(self, ed25519_pk: bytes) -> bytes:
        msg = _ADMIT_CONTEXT + bytes.fromhex(self.mesh_id) + ed25519_pk
        return hmac.new(self.key, msg, hashlib.sha256).digest()

    def check(self, info: MemberInfo) -> None:
        """Raise AdmissionError unless ``info`` is a consistent, admitted member's info,
        signed by that member (what every HELLO, INTRO and gossiped record carries)."""
        self.check_proof(info)
        if not info_signed(info):
            raise AdmissionError(f"node {info.node_id[:12]}: info is not signed by its node")

    def check_proof(self, info: MemberInfo) -> None:
        """Raise AdmissionError unless ``info``'s keys are consistent and its admission
        proof is valid (an mDNS record: it carries no signature)."""
        if len(info.ed25519_pk) != 32:
            raise AdmissionError("ed25519 key must be 32 bytes")
        if node_id_for(info.ed25519_pk) != info.node_id:
            raise AdmissionError(f"node id {info.node_id[:12]} does not match its key")
        if curve_pk_for(info.ed25519_pk) != info.curve_pk:
            raise AdmissionError(f"node {info.node_id[:12]}: CURVE key does not match its key")
        if not hmac.compare_digest(self.proof_for(info.ed25519_pk), info.proof):
            raise AdmissionError(f"node {info.node_id[:12]}: admission proof is not valid")

    def verify(self, info: MemberInfo) -> bool:
        """:meth:`check` as a bool."""
        try:
            self.check(info)
        except AdmissionError:
            return False
        return True

    def verify_proof(self, info: MemberInfo) -> bool:
        """:meth:`check_proof` as a bool."""
        try:
            self.check_proof(info)
        except AdmissionError:
            return False
        return True

    def intro_keypair(self) -> tuple[bytes, bytes]:
        """(public, secret) Curve25519 pair of the mesh's intro sockets."""
        secret = hashlib.blake2b(self.key, digest_size=32, person=b"meshd-intro-kp").digest()
        return bytes(crypto_scalarmult_base(secret)), secret
