"""The transition table of this node's election role.

Every role change the election machine makes goes through :func:`transition`; a
``(role, event)`` pair that is not in :data:`TRANSITIONS` raises
:class:`~meshd.errors.LocalProtocolError` (as in :mod:`meshd.membership.table`), so a logic
slip shows up as a loud error instead of, say, a lead that never stops being one.

A candidate runs rounds: a pre-vote (term unchanged) and, with a majority of pre-votes, a
real vote at ``term + 1``. Both phases are the one ``CANDIDATE`` role; the machine keeps
the phase itself.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from meshd.errors import LocalProtocolError


class Role(enum.Enum):
    """This node's part in the election."""

    FOLLOWER = "follower"
    CANDIDATE = "candidate"
    LEAD = "lead"


class Event(enum.Enum):
    """What moves the role."""

    #: The election timer fired (or this node was nominated successor): start a round.
    CAMPAIGN = "campaign"
    #: A round failed (no majority before ``candidate_retry``): start another one.
    RETRY = "retry"
    #: A majority of pre-votes: bump the term, vote for ourselves, ask for real votes.
    PRE_VOTE_WON = "pre_vote_won"
    #: A majority of real votes.
    ELECTED = "elected"
    #: A heartbeat from the lead of our term (another candidate won it).
    LEAD_SEEN = "lead_seen"
    #: Any message with a higher term (adopted).
    HIGHER_TERM = "higher_term"
    #: A candidate gives up (operator hold, priority set to 0, shutdown).
    ABANDON = "abandon"
    #: The lead gives up: lease lapsed, transfer, operator, priority takeover, shutdown.
    STEP_DOWN = "step_down"


_F, _C, _L = Role.FOLLOWER, Role.CANDIDATE, Role.LEAD
_E = Event

#: Every legal ``(role, event) -> new role``. Anything else is a bug on this side.
TRANSITIONS: Final[Mapping[tuple[Role, Event], Role]] = MappingProxyType(
    {
        (_F, _E.CAMPAIGN): _C,
        # A follower may see a lead of its term (first heartbeat after a vote) or a
        # newer term; both keep it a follower.
        (_F, _E.LEAD_SEEN): _F,
        (_F, _E.HIGHER_TERM): _F,
        (_C, _E.RETRY): _C,
        (_C, _E.PRE_VOTE_WON): _C,
        (_C, _E.ELECTED): _L,
        (_C, _E.LEAD_SEEN): _F,
        (_C, _E.HIGHER_TERM): _F,
        (_C, _E.ABANDON): _F,
        # A lead never sees another lead of its own term (one lead per term): only a newer
        # term or its own decision ends its lead.
        (_L, _E.HIGHER_TERM): _F,
        (_L, _E.STEP_DOWN): _F,
    }
)


def transition(role: Role, event: Event) -> Role:
    """The role after ``event`` in ``role``; raises LocalProtocolError if illegal."""
    try:
        return TRANSITIONS[(role, event)]
    except KeyError:
        raise LocalProtocolError(
            f"illegal election transition: {role.value} --{event.value}-->"
        ) from None
