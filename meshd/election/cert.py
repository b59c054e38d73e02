"""Signed votes and lead certificates: what makes a lead's claim to a term checkable.

A voter that grants a vote signs :func:`vote_bytes` (the term, the candidate, pre-vote
or real) with its node key (Ed25519, the key its member info carries and its node id is
derived from). Signed votes of a quorum make a :class:`~meshd.wire.messages.LeadCert`:

* a **lead certificate** (real votes): the winner sends it to every member; a node
  follows a lead, takes its term and acts on its heartbeats, step-downs, assignments and
  task copies only once it has checked one (:meth:`meshd.election.Election.receive`);
* a **term certificate** (``pre``: pre-votes): proof that a quorum let a candidate start
  ``term`` (they had lost their lead). The candidate sends it before its real vote
  requests, and a node at that term shows it to a stale lead it refuses, so the stale lead
  moves on instead of leading a part of the mesh in an older term.

A member holding the mesh key but not the votes therefore cannot make itself lead, and
cannot move anyone to a term nobody voted for.

The context prefix keeps a vote signature from ever being mistaken for any other
signature made with a node's key (a skill pack's is ``meshd/skill-pack/v1\\0``). A node's
key belongs to one state dir, and a state dir to one mesh, so the mesh id is not part of
the signed bytes.

:func:`~meshd.wire.signing.verify_signature` (cached) checks each vote.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, TypeAlias

from meshd.wire.schema import MAX_COUNTER

#: Prefix of the signed bytes of a real vote, and of a pre-vote (domain separation).
VOTE_CONTEXT: Final = b"meshd/vote/v1\x00"
PRE_VOTE_CONTEXT: Final = b"meshd/prevote/v1\x00"

#: The highest term a node takes or asks for: one below the wire's counter bound, so
#: that ``term + 1`` (the next campaign) is always encodable.
MAX_TERM: Final = MAX_COUNTER - 1

#: How far above its own term a node lets an unproven number move it: a vote request it
#: grants, or a denial of its own request. A real election moves the term by one or a
#: few; a forged term a million above stays a refused message (``term_jump``), so no
#: member can push the mesh's terms towards the bound (2^62 - 1 at 1,000 a step takes
#: over 4 * 10^15 accepted messages).
MAX_TERM_JUMP: Final = 1000

#: Signs bytes with this node's key (the daemon: :meth:`meshd.identity.Identity.sign`).
Signer: TypeAlias = Callable[[bytes], bytes]
#: Checks ``sig`` over ``data`` by the node ``node_id`` (its key from the member view).
VoteCheck: TypeAlias = Callable[[str, bytes, bytes], bool]


def vote_bytes(term: int, candidate: str, pre: bool = False) -> bytes:
    """What a voter signs when it grants ``candidate`` its real vote (or, ``pre``, its
    pre-vote) for ``term``: :data:`VOTE_CONTEXT` (:data:`PRE_VOTE_CONTEXT`), the term as
    8 big-endian bytes, the candidate's node id (32 ASCII hex chars)."""
    context = PRE_VOTE_CONTEXT if pre else VOTE_CONTEXT
    return context + term.to_bytes(8, "big") + candidate.encode("ascii")
