"""Membership: who is in the mesh, who is alive (pure state machine, no I/O).

See :mod:`meshd.membership.machine` for the protocol and :mod:`meshd.membership.table`
for the transition table of a peer's state.
"""

from meshd.membership.machine import Effect, Membership, MemberView, digest_of
from meshd.membership.table import TRANSITIONS, Event, PeerState, transition

__all__ = [
    "TRANSITIONS",
    "Effect",
    "Event",
    "MemberView",
    "Membership",
    "PeerState",
    "digest_of",
    "transition",
]
