"""Lead election: who leads the mesh (pure state machine, no I/O).

See :mod:`meshd.election.machine` for the protocol and :mod:`meshd.election.table` for the
transition table of this node's role.
"""

from meshd.election.machine import (
    LEAD_ELECTED,
    LEAD_LOST,
    STEPPED_DOWN,
    Effect,
    Election,
    LeadStatus,
    Voter,
    validate_config,
)
from meshd.election.table import TRANSITIONS, Event, Role, transition

__all__ = [
    "LEAD_ELECTED",
    "LEAD_LOST",
    "STEPPED_DOWN",
    "TRANSITIONS",
    "Effect",
    "Election",
    "Event",
    "LeadStatus",
    "Role",
    "Voter",
    "transition",
    "validate_config",
]
