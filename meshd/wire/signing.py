"""Signatures over what travels: a node's member info, and the check of any Ed25519
signature (votes use it too, see :mod:`meshd.election.cert`).

A node signs its own :class:`~meshd.wire.records.MemberInfo` with its node key (the
Ed25519 key the info carries and its node id is derived from) every time the info changes
(a new incarnation, priority, address). The signed bytes are :data:`INFO_CONTEXT` and the
msgpack encoding of the info's wire map with an empty ``sig`` — the wire map has a fixed
key order, so the bytes are the same at every node. A receiver checks the signature with
the key in the info itself; together with the admission proof (which binds that key to
the mesh) this means relayed info says only what its node said: nobody else can raise a
member's incarnation, change its priority or point its addresses elsewhere.

:func:`verify_signature` is a pure function of its arguments; its results are cached
(the same info and the same votes reach a node many times).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import lru_cache
from typing import Final

from nacl.exceptions import BadSignatureError, CryptoError
from nacl.signing import VerifyKey

from meshd.wire.codec import member_info_to_wire
from meshd.wire.fields import packb
from meshd.wire.records import MemberInfo

#: Prefix of the signed bytes of a member info (domain separation).
INFO_CONTEXT: Final = b"meshd/member-info/v1\x00"


@lru_cache(maxsize=16384)
def verify_signature(public_key: bytes, data: bytes, sig: bytes) -> bool:
    """True when ``sig`` is ``public_key``'s Ed25519 signature of ``data``."""
    if len(public_key) != 32 or len(sig) != 64:
        return False
    try:
        VerifyKey(public_key).verify(data, sig)
    except (BadSignatureError, CryptoError, ValueError):
        return False
    return True


def info_signing_bytes(info: MemberInfo) -> bytes:
    """What a node signs of its info: :data:`INFO_CONTEXT` + msgpack(wire map, sig empty)."""
    unsigned = dataclasses.replace(info, sig=b"")
    return INFO_CONTEXT + packb(member_info_to_wire(unsigned))


def sign_info(sign: Callable[[bytes], bytes], info: MemberInfo) -> MemberInfo:
    """``info`` signed with ``sign`` (the node's own key)."""
    return dataclasses.replace(info, sig=sign(info_signing_bytes(info)))


def info_signed(info: MemberInfo) -> bool:
    """Whether ``info`` carries its own node's valid signature."""
    if len(info.sig) != 64:
        return False
    return verify_signature(info.ed25519_pk, info_signing_bytes(info), info.sig)
