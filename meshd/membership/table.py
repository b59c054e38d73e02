"""The transition table of a peer's membership state, as seen by one node.

Every state change the membership machine makes goes through :func:`transition`; a
``(state, event)`` pair that is not in :data:`TRANSITIONS` raises
:class:`~meshd.errors.LocalProtocolError`. That makes the rules checkable on their own
(tests walk the table) and turns a logic slip in the machine into a loud error instead
of a silently wrong member list.

States are the four wire states (:class:`~meshd.wire.messages.MemberState`) plus two
local ones: ``UNKNOWN`` (not in the table at all: never seen, expired or forgotten) and
``CANDIDATE`` (learned from mDNS, a static seed or the restore file, connected to but not
listed until it proves itself: see :mod:`meshd.membership.machine`).

Which of these events a gossiped record about a member causes, if any, is decided by the
merge table in :mod:`meshd.membership.merge`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from meshd.errors import LocalProtocolError
from meshd.wire.records import MemberState


class PeerState(enum.Enum):
    """A peer's state in the local table (the wire states plus two local ones)."""

    UNKNOWN = "unknown"
    CANDIDATE = "candidate"
    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"
    LEFT = "left"

    @property
    def member_state(self) -> MemberState | None:
        """The wire state, or None for the local-only states (not listed, not gossiped)."""
        return _TO_MEMBER_STATE.get(self)


_TO_MEMBER_STATE: Final[dict[PeerState, MemberState]] = {
    PeerState.ALIVE: MemberState.ALIVE,
    PeerState.SUSPECT: MemberState.SUSPECT,
    PeerState.DEAD: MemberState.DEAD,
    PeerState.LEFT: MemberState.LEFT,
}


class Event(enum.Enum):
    """What can happen to a peer."""

    #: mDNS, a static seed or a restored ALIVE record named it (or named it again).
    DISCOVERED = "discovered"
    #: A DEAD / LEFT record read back from disk at start.
    RESTORED_DEAD = "restored_dead"
    RESTORED_LEFT = "restored_left"
    #: A message arrived from the peer itself, at an incarnation we accept.
    HEARD = "heard"
    #: Gossip (SYNC, MEMBER_UPDATE, INTRO_ACK) from a live peer: ALIVE/SUSPECT record that
    #: wins (vouches for an unknown peer or a candidate, or clears a suspicion with a
    #: newer incarnation, or carries newer info).
    GOSSIP_ALIVE = "gossip_alive"
    #: Nothing heard for ``suspect_after``.
    SILENT = "silent"
    #: A helper reported that the peer answered its indirect probe.
    INDIRECT_ACK = "indirect_ack"
    #: Neither the direct nor the indirect probes were answered in time.
    PROBE_FAILED = "probe_failed"
    #: Gossip: a DEAD / LEFT record that wins.
    GOSSIP_DEAD = "gossip_dead"
    GOSSIP_LEFT = "gossip_left"
    #: The peer itself sent LEAVE.
    LEAVE = "leave"
    #: A newer incarnation of a DEAD / LEFT peer showed up (direct HELLO/INTRO or gossip).
    RESTARTED = "restarted"
    #: A candidate never heard from within ``candidate_timeout``.
    EXPIRED = "expired"
    #: A DEAD / LEFT record older than ``forget_after``.
    FORGOTTEN = "forgotten"


_U, _C, _A, _S, _D, _L = (
    PeerState.UNKNOWN,
    PeerState.CANDIDATE,
    PeerState.ALIVE,
    PeerState.SUSPECT,
    PeerState.DEAD,
    PeerState.LEFT,
)
_E = Event

#: Every legal ``(state, event) -> new state``. Anything else is a bug on this side.
TRANSITIONS: Final[Mapping[tuple[PeerState, Event], PeerState]] = MappingProxyType(
    {
        # Not known yet. A direct HELLO/INTRO (the peer found us first) or gossip from a
        # live peer makes it a member at once; discovery only makes it a candidate.
        (_U, _E.DISCOVERED): _C,
        (_U, _E.HEARD): _A,
        (_U, _E.GOSSIP_ALIVE): _A,
        (_U, _E.GOSSIP_DEAD): _D,
        (_U, _E.GOSSIP_LEFT): _L,
        (_U, _E.RESTORED_DEAD): _D,
        (_U, _E.RESTORED_LEFT): _L,
        # Candidate: connected to, not listed. Only proof (its own message, or a live
        # member vouching for it) lists it; silence drops it.
        (_C, _E.DISCOVERED): _C,
        (_C, _E.HEARD): _A,
        (_C, _E.GOSSIP_ALIVE): _A,
        (_C, _E.GOSSIP_DEAD): _D,
        (_C, _E.GOSSIP_LEFT): _L,
        (_C, _E.LEAVE): _L,
        (_C, _E.EXPIRED): _U,
        # Alive.
        (_A, _E.HEARD): _A,
        (_A, _E.GOSSIP_ALIVE): _A,
        (_A, _E.SILENT): _S,
        (_A, _E.GOSSIP_DEAD): _D,
        (_A, _E.GOSSIP_LEFT): _L,
        (_A, _E.LEAVE): _L,
        # Suspect: any proof of life clears it; only failed probes (ours) or a DEAD
        # verdict gossiped by another node (subject to the dead guard) make it dead.
        (_S, _E.HEARD): _A,
        (_S, _E.INDIRECT_ACK): _A,
        (_S, _E.GOSSIP_ALIVE): _A,
        (_S, _E.PROBE_FAILED): _D,
        (_S, _E.GOSSIP_DEAD): _D,
        (_S, _E.GOSSIP_LEFT): _L,
        (_S, _E.LEAVE): _L,
        # Dead: never revived silently. Only a newer incarnation brings it back; a
        # message at the old incarnation gets a "you are dead" notice instead (no event).
        (_D, _E.RESTARTED): _A,
        (_D, _E.DISCOVERED): _D,
        (_D, _E.GOSSIP_DEAD): _D,
        (_D, _E.GOSSIP_LEFT): _L,
        (_D, _E.LEAVE): _L,
        (_D, _E.FORGOTTEN): _U,
        # Left: like dead, but a graceful exit; DEAD replaces it only at a newer incarnation.
        (_L, _E.RESTARTED): _A,
        (_L, _E.DISCOVERED): _L,
        (_L, _E.GOSSIP_DEAD): _D,
        (_L, _E.GOSSIP_LEFT): _L,
        (_L, _E.FORGOTTEN): _U,
    }
)


def transition(state: PeerState, event: Event) -> PeerState:
    """The state after ``event`` in ``state``; raises LocalProtocolError if illegal."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise LocalProtocolError(
            f"illegal membership transition: {state.value} --{event.value}-->"
        ) from None
