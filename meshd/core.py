"""One node's protocol logic: membership + election, composed, still pure (no I/O).

:class:`Core` is what the daemon (:mod:`meshd.node`) and the in-memory network
(:mod:`meshd.net.fake`) both drive, so the scenarios tested in simulated time are the very
code that runs on sockets. It routes each incoming message, feeds the election the
membership view whenever that changes, and merges both machines' timers.

Routing: every message counts as contact for the election (:meth:`Election.heard`) and as
proof of life for membership (election messages included: membership ignores what it
does not know, beyond the liveness it proves); election payloads then go to the election.

Reach window: the election counts a peer reachable while it was heard recently. Peers
that are not the lead speak mostly through membership heartbeats, whose period grows
with the mesh beyond ``heartbeat_budget * heartbeat_interval`` members (see
:class:`~meshd.config.MembershipConfig`); Core keeps the election's window at two such
periods (never below ``election_timeout``), so that big meshes do not look unreachable.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from typing import Final, TypeAlias

from meshd.config import ElectionConfig, MembershipConfig
from meshd.effects import Connect, Disconnect, ElectionEvent, MemberChanged, Persist, Publish, Send
from meshd.election import Election, LeadStatus, Voter
from meshd.membership import Membership, MemberView
from meshd.wire.messages import (
    LeadAck,
    LeadHeartbeat,
    Payload,
    StepDown,
    TransferReq,
    Vote,
    VoteReq,
)
from meshd.wire.records import MemberInfo, MemberRecord, MemberState

__all__ = ["ELECTION_PAYLOADS", "Core", "CoreEffect"]

#: Payload types the election machine handles.
ELECTION_PAYLOADS: Final = (VoteReq, Vote, LeadHeartbeat, LeadAck, StepDown, TransferReq)

CoreEffect: TypeAlias = (
    Send | Publish | Connect | Disconnect | MemberChanged | Persist | ElectionEvent
)


def _accept_all(info: MemberInfo) -> bool:
    return True


class Core:
    """Membership and election of one node (pure: events in, effects out).

    ``term`` / ``voted_for``: the durable election state read back from the store (the
    last :class:`~meshd.election.Persist` carried out). ``rng`` seeds both machines.
    Effects are returned in the order they must be carried out (a ``Persist`` before the
    messages that depend on it).
    """

    def __init__(
        self,
        self_info: MemberInfo,
        membership_config: MembershipConfig,
        election_config: ElectionConfig,
        now: float,
        rng: random.Random,
        verify: Callable[[MemberInfo], bool] = _accept_all,
        term: int = 0,
        voted_for: str | None = None,
    ) -> None:
        self._mcfg = membership_config
        self.membership = Membership(self_info, membership_config, now, rng, verify)
        self.election = Election(
            self_info.node_id,
            self_info.priority,
            election_config,
            now,
            random.Random(rng.getrandbits(64)),
            term,
            voted_for,
        )

    # ---- queries -----------------------------------------------------------------------

    @property
    def self_id(self) -> str:
        return self.membership.self_id

    @property
    def self_info(self) -> MemberInfo:
        return self.membership.self_info

    @property
    def has_left(self) -> bool:
        return self.membership.has_left

    def members(self) -> list[MemberView]:
        return self.membership.members()

    def candidates(self) -> list[MemberInfo]:
        return self.membership.candidates()

    def digest(self) -> bytes:
        return self.membership.digest()

    def get(self, node_id: str) -> MemberView | None:
        return self.membership.get(node_id)

    def snapshot(self) -> list[MemberRecord]:
        return self.membership.snapshot()

    def status(self, now: float) -> LeadStatus:
        return self.election.status(now)

    def next_deadline(self) -> float:
        return min(self.membership.next_deadline(), self.election.next_deadline())

    def voters(self) -> list[Voter]:
        """The election's view of the members (this node included)."""
        out = [Voter(v.info.node_id, v.info.priority, v.state) for v in self.membership.members()]
        out.append(Voter(self.self_id, self.election.priority, MemberState.ALIVE))
        return out

    # ---- events ------------------------------------------------------------------------

    def receive(
        self, sender: str, payload: Payload, now: float, msg_id: bytes = b""
    ) -> list[CoreEffect]:
        """A message from ``sender`` (authenticated by the transport)."""
        if sender == self.self_id:
            return []
        self.election.heard(sender, now)
        out: list[CoreEffect] = list(self.membership.receive(sender, payload, now, msg_id))
        self._sync(out, now)
        if isinstance(payload, ELECTION_PAYLOADS):
            out.extend(self.election.receive(sender, payload, now))
        return out

    def tick(self, now: float) -> list[CoreEffect]:
        """Let time pass (call at :meth:`next_deadline`)."""
        out: list[CoreEffect] = list(self.membership.tick(now))
        self._sync(out, now)
        out.extend(self.election.tick(now))
        return out

    def discovered(self, info: MemberInfo, now: float, source: str) -> list[CoreEffect]:
        out: list[CoreEffect] = list(self.membership.discovered(info, now, source))
        self._sync(out, now)
        return out

    def restore(self, records: Iterable[MemberRecord], now: float) -> list[CoreEffect]:
        out: list[CoreEffect] = list(self.membership.restore(records, now))
        self._sync(out, now)
        return out

    def leave(self, now: float) -> list[CoreEffect]:
        """Graceful exit: a lead steps down first (so the others elect at once), then the
        LEAVEs go out."""
        out: list[CoreEffect] = list(self.election.leave(now))
        out.extend(self.membership.leave(now))
        return out

    def set_priority(self, priority: int, now: float) -> list[CoreEffect]:
        """This node's lead priority changed (see :meth:`Election.set_priority`).

        Other nodes learn priorities from membership (``MemberInfo.priority``) and from
        VOTE_REQs; announcing a new priority mesh-wide needs a new incarnation of the
        member info, which is membership's to publish.
        """
        return list(self.election.set_priority(priority, now))

    # ---- internals ---------------------------------------------------------------------

    def reach_window(self) -> float:
        """Two membership heartbeat periods at the current mesh size."""
        return 2 * self.membership.heartbeat_period()

    def _sync(self, out: list[CoreEffect], now: float) -> None:
        if any(isinstance(e, MemberChanged) for e in out):
            self.election.set_reach_window(self.reach_window())
            out.extend(self.election.update_members(self.voters(), now))
