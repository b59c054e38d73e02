"""The lead election state machine, sans I/O.

:class:`Election` is fed events (a message from a peer, a membership change, the passage of
time, an operator command) together with ``now`` (monotonic seconds) and answers with
effects: :class:`~meshd.membership.Send` / :class:`~meshd.membership.Publish` (messages),
:class:`Persist` (write ``term`` and ``voted_for`` durably, *before* carrying out the
effects that follow it) and :class:`ElectionEvent` (for logs and the event stream).
Timings are in :class:`~meshd.config.ElectionConfig`; the role table is
:mod:`meshd.election.table`.

Protocol summary (Raft's election without a log, plus priorities, pre-vote and a lease):

* **Members and quorum.** The mesh's member count ``n`` is every member membership knows
  that is not LEFT (ALIVE, SUSPECT and DEAD all count) plus this node: a crashed member
  keeps counting until it is forgotten or leaves, so a minority partition can never elect.
  ``quorum`` = ``n // 2 + 1`` (or the configured fixed number).
* **Rank.** Eligible nodes (priority > 0) are ordered by (priority desc, node id asc). A
  node is *reachable* when membership holds it ALIVE/SUSPECT and it was heard (any
  message) within ``election_timeout`` (or the longer window :meth:`Election.set_reach_window`
  sets: in big meshes membership heartbeats less often, see :mod:`meshd.core`).
* **Timers.** A follower campaigns ``election_timeout + rank * rank_step +
  uniform(0, election_jitter)`` after the last contact from its lead (a LEAD_HEARTBEAT, or
  any message from the lead node: a crashed lead is timed from its very last word), where
  ``rank`` counts the reachable eligible nodes ranked above it. The best-ranked survivor
  normally campaigns alone. Priority-0 nodes never campaign (they vote).
* **Pre-vote.** A round first asks ``VOTE_REQ(term + 1, pre=True)``; voters answer without
  changing state. Only with a majority of pre-votes (itself included) does the candidate
  bump its term (Persist), vote for itself and ask for real votes. A node cut off from the
  majority therefore never inflates terms, and does not disrupt the mesh when it is back.
* **Granting.** A voter denies a request for term T from C when T < its term
  (``stale_term``); when it heard a lead of its term within ``election_timeout`` or is the
  lead (``have_lead``: stickiness, which is what makes the lead's lease safe); when C has
  priority 0 (``not_eligible``); when it knows a reachable eligible node ranked above C,
  itself included (``lower_rank``: the highest-priority reachable node wins); for
  ``have_lead`` and ``lower_rank`` a successor nominated by the lead's STEP_DOWN is
  exempt. A node restarted with a durable term > 0 grants nothing for
  ``election_timeout`` (``starting``): it may have acknowledged a lead's heartbeat just
  before it died. A real vote adopts T (Persist, a lead or candidate becomes follower) and
  is granted iff ``voted_for`` is empty or C, with ``Persist(T, C)`` emitted before the
  reply. One vote per term, durable.
* **Lost term.** A node whose stored term was unusable (quarantined by the store) starts
  at term 0 with the term *unknown*: it may have voted in any term up to the lost one, so
  it grants no vote (``term_unknown``) and does not campaign until it accepts a lead's
  LEAD_HEARTBEAT, whose term it adopts. Exception: a node that knows no other member
  campaigns (it can only vote for itself). Residual risk, accepted: a vote it cast in a
  term above that lead's, for a round still running when it learns the lead, could be
  cast again; such a round is refused by every voter that hears the lead (``have_lead``).
* **Lead and lease.** A majority of real votes makes the candidate lead: LEAD_ELECTED, a
  LEAD_HEARTBEAT at once and every ``lead_heartbeat_interval``. Followers answer each one
  with LEAD_ACK. When a majority (the lead included) has acknowledged heartbeat ``s``, the
  lease runs from the send time of ``s``: the lead is lead while ``now < lease_start +
  election_timeout - lease_margin``. Every voter that acknowledged ``s`` refuses other
  candidates until ``election_timeout`` after receiving it, and any majority that could
  elect someone else contains one of them, so no other lead can exist during the lease.
  A lease that lapses: STEPPED_DOWN ``lost_quorum``.
* **Terms.** Any message with a higher term makes a candidate or lead a follower of it
  (``higher_term``); heartbeats of an older term are answered ``LEAD_ACK(ok=False)`` with
  our term so that a stale lead steps down.
* **Takeover.** When an eligible node ranked above the lead has been continuously reachable
  (and acknowledging heartbeats) for ``stability_window``, the lead hands over: STEP_DOWN
  with ``successor`` (published and sent directly) and the successor campaigns at once.
  A priority change restarts the stability clock. ``transfer`` hands over to any eligible
  node and suspends automatic takeover for ``manual_hold``; ``step_down`` hands over to
  nobody: everyone else campaigns at once in rank order and this node stays out for
  ``step_down_hold``. ``leave`` (shutdown) steps down the same way.
* **Fencing.** :meth:`Election.accepts` tells whether a lead message stamped (term, lead
  id) is acceptable: the current term and lead, or a newer term.

Known limit (as in Raft without joint consensus): each node computes the quorum from its
own member view. Views converge in milliseconds on a LAN (membership), long before the
first election timeout, but a node that starts alone, knowing nobody, is a one-node mesh
and leads it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, TypeAlias

from meshd.config import ElectionConfig
from meshd.effects import ElectionEvent, Persist, Publish, Refused, Send
from meshd.election.cert import MAX_TERM, MAX_TERM_JUMP, Signer, VoteCheck, vote_bytes
from meshd.election.table import Event, Role, transition
from meshd.errors import ConfigError, LocalProtocolError
from meshd.wire.messages import (
    CertVote,
    LeadAck,
    LeadCert,
    LeadCertReq,
    LeadHeartbeat,
    Payload,
    StepDown,
    TransferReq,
    Vote,
    VoteReq,
    Voters,
)
from meshd.wire.records import MemberState

__all__ = [
    "LEAD_ELECTED",
    "LEAD_LOST",
    "STEPPED_DOWN",
    "Effect",
    "Election",
    "ElectionEvent",
    "LeadStatus",
    "Persist",
    "Voter",
    "validate_config",
]

_INF = math.inf

#: Event kinds (:attr:`ElectionEvent.kind`).
LEAD_ELECTED: Final = "LEAD_ELECTED"
LEAD_LOST: Final = "LEAD_LOST"
STEPPED_DOWN: Final = "STEPPED_DOWN"
VOTERS_CHANGED: Final = "VOTERS_CHANGED"

_LIVE = (MemberState.ALIVE, MemberState.SUSPECT)


# ---- effects and views -----------------------------------------------------------------


Effect: TypeAlias = Send | Publish | Persist | ElectionEvent | Refused

#: s. Least time between two LEAD_CERT_REQ to one node, and two LEAD_CERT answers to one.
_CERT_INTERVAL: Final = 0.25


@dataclass(frozen=True, slots=True)
class Voter:
    """A member as membership sees it (what :meth:`Election.update_members` takes)."""

    node_id: str
    priority: int
    state: MemberState
    #: Monotonic time of its last state change (how long a DEAD voter has been dead).
    since: float = 0.0
    #: This node has heard the member itself (or knew it before a restart); False for a
    #: member known only from others' gossip, which never counts as a voter.
    direct: bool = True


@dataclass(frozen=True, slots=True)
class LeadStatus:
    """What ``status`` shows. ``since``: monotonic time this node has seen ``lead`` as lead.

    ``reason`` is ``""`` with a lead, else ``"starting"``, ``"no eligible node"`` (no
    reachable node with priority > 0), ``"no quorum"`` (fewer reachable voters, this node
    included, than the quorum) or ``"election in progress"``.
    """

    lead: str | None
    term: int
    since: float | None
    role: Role
    reason: str


def validate_config(cfg: ElectionConfig) -> None:
    """Raise ConfigError for timings that cannot work together."""
    positive = ("lead_heartbeat_interval", "election_timeout", "candidate_retry")
    for name in positive:
        if not getattr(cfg, name) > 0:
            raise ConfigError(f"[election] {name} must be > 0")
    non_negative = (
        "election_jitter",
        "rank_step",
        "lease_margin",
        "stability_window",
        "step_down_hold",
        "manual_hold",
        "quorum",
        "lease_grace",
        "max_defer",
        "voter_dead_after",
    )
    for name in non_negative:
        value = getattr(cfg, name)
        if not (value >= 0 and math.isfinite(value)):
            raise ConfigError(f"[election] {name} must be >= 0")
    if cfg.lease_margin >= cfg.election_timeout:
        raise ConfigError("[election] lease_margin must be < election_timeout")
    if cfg.lead_heartbeat_interval >= cfg.election_timeout - cfg.lease_margin:
        raise ConfigError(
            "[election] lead_heartbeat_interval must be < election_timeout - lease_margin "
            "(the lease could never be renewed in time)"
        )


def _key(priority: int, node_id: str) -> tuple[int, str]:
    """Rank order: higher priority first, then the smaller node id."""
    return (-priority, node_id)


# ---- the machine -----------------------------------------------------------------------


class Election:
    """The lead election of one node (pure: events in, effects out).

    ``term`` and ``voted_for`` are the durable state read back from the store (the last
    :class:`Persist`). ``now`` arguments are monotonic seconds and never go backwards;
    ``rng`` is the only source of randomness (timer jitter).

    After :meth:`leave` every method returns ``[]`` and :meth:`next_deadline` infinity.
    """

    def __init__(
        self,
        self_id: str,
        priority: int,
        config: ElectionConfig,
        now: float,
        rng: random.Random,
        term: int = 0,
        voted_for: str | None = None,
        term_known: bool = True,
        *,
        sign: Signer | None = None,
        check_vote: VoteCheck | None = None,
        voters: tuple[int, tuple[str, ...]] = (0, ()),
    ) -> None:
        validate_config(config)
        if priority < 0:
            raise ConfigError("priority must be >= 0")
        if not 0 <= term <= MAX_TERM:
            raise ConfigError(f"term must be in 0..{MAX_TERM}")
        if (sign is None) != (check_vote is None):
            raise ConfigError("sign and check_vote go together")
        self._id = self_id
        self._sign = sign
        self._check_vote = check_vote
        # The voter set the lead decided (version 0: none yet, the member view counts).
        self._voters_version = voters[0]
        self._voter_ids: frozenset[str] = frozenset(voters[1])
        # Lead: the version of a change not yet held by a majority of the new set; the
        # voter version each follower's LEAD_ACK showed; when we last sent one VOTERS.
        self._voters_pending: int | None = None
        self._voters_acked: dict[str, int] = {}
        self._voters_sent: dict[str, float] = {}
        #: Since when the conditions for the first voter set have held (see _plan_voters).
        self._voters_settled = _INF
        self._priority = priority
        self._cfg = config
        self._rng = rng
        self._term = term
        self._voted_for = voted_for
        # False while the durable term is lost (see "Lost term" above).
        self._term_known = term_known
        self._role = Role.FOLLOWER
        self._left = False
        self._started = now
        self._reach = config.election_timeout
        # A restarted node may have acknowledged a lead's heartbeat just before it died:
        # it grants no vote until that lead's lease has surely lapsed. A node at term 0
        # never acknowledged anything.
        self._guard_until = now + config.election_timeout if term > 0 else -_INF
        # Lead as this node sees it.
        self._lead: str | None = None
        self._lead_since: float | None = None
        self._lead_contact = -_INF
        self._ever_lead = False
        # Membership input.
        self._members: dict[str, Voter] = {}
        self._heard: dict[str, float] = {}
        self._reach_since: dict[str, float] = {}
        # Operator holds: node -> end of its step-down hold (this node included).
        self._held: dict[str, float] = {}
        self._takeover_hold_until = -_INF
        # A successor nominated by a STEP_DOWN: (node, term of the step-down, valid until).
        self._nominee: tuple[str, int, float] | None = None
        self._last_step_down: tuple[str, int] | None = None
        # Follower's campaign timer (see _campaign_deadline).
        self._timer_base = now
        self._timer_delay = config.election_timeout
        self._timer_watch: str | None = None
        #: Campaign timer firings in a row spent deferring to a better-ranked node.
        self._deferred = 0
        self._timer_jitter = 0.0
        self._timer_rank = 0.0
        self._arm(now, config.election_timeout)
        # Candidate.
        self._pre = True
        self._round_term = 0
        self._grants: set[str] = set()
        #: Signatures of the real votes of this round (voter -> sig), ours included.
        self._vote_sigs: dict[str, bytes] = {}
        self._round_deadline = _INF
        #: The proof of our current term we hold (a lead or term certificate, ours or
        #: received), shown to stale leads we refuse; None after a restart.
        self._term_proof: LeadCert | None = None
        #: Signatures of the pre-votes of this round (voter -> sig), ours included.
        self._pre_sigs: dict[str, bytes] = {}
        # Heartbeats of leads not yet proven (sender -> (term, seq), acknowledged once
        # their certificate checks out); when we last asked a node for its certificate,
        # or answered one's request.
        self._unproven: dict[str, tuple[int, int]] = {}
        self._cert_asked: dict[str, float] = {}
        self._cert_answered: dict[str, float] = {}
        # Lead.
        self._hb_seq = 0
        self._next_hb = _INF
        self._sent_at: dict[int, float] = {}
        self._acked: dict[str, int] = {}
        self._acked_at: dict[str, float] = {}
        self._won_at = -_INF
        self._lease_start: float | None = None

    # ---- queries -----------------------------------------------------------------------

    @property
    def self_id(self) -> str:
        return self._id

    @property
    def priority(self) -> int:
        return self._priority

    @property
    def term(self) -> int:
        """Current term (durable)."""
        return self._term

    @property
    def voted_for(self) -> str | None:
        """The candidate this node voted for in :attr:`term` (durable), or None."""
        return self._voted_for

    @property
    def term_known(self) -> bool:
        """False from a start with a lost durable term until a lead's heartbeat."""
        return self._term_known

    @property
    def role(self) -> Role:
        return self._role

    @property
    def lead(self) -> str | None:
        """The lead of :attr:`term` as this node sees it (itself when lead), or None."""
        return self._lead

    @property
    def has_left(self) -> bool:
        return self._left

    def member_count(self) -> int:
        """``n`` of the quorum: the voters (see :meth:`_is_voter`)."""
        return len(self._voter_list())

    def _voter_list(self) -> frozenset[str]:
        if self._voters_version:
            return self._voter_ids
        return frozenset({self._id, *(n for n in self._members if self._is_voter(n))})

    @property
    def voter_set(self) -> tuple[int, tuple[str, ...]]:
        """(version, sorted node ids) of the decided voter set; (0, ()) before one."""
        return self._voters_version, tuple(sorted(self._voter_ids))

    def voters_committed(self) -> bool:
        """On the lead: no voter change is waiting for a majority of the new set."""
        return self._voters_pending is None

    def quorum(self) -> int:
        """Votes (this node's included) needed to elect, and acks needed for the lease."""
        if self._cfg.quorum > 0:
            return self._cfg.quorum
        return self.member_count() // 2 + 1

    def reachable(self, node_id: str, now: float) -> bool:
        """Membership holds it ALIVE/SUSPECT and it was heard within the reach window
        (``election_timeout`` unless :meth:`set_reach_window` made it longer)."""
        if node_id == self._id:
            return True
        v = self._members.get(node_id)
        if v is None or v.state not in _LIVE:
            return False
        last = self._heard.get(node_id)
        return last is not None and now - last < self._reach

    def lease_expiry(self) -> float | None:
        """End of the lead's lease (None when not lead or no majority acknowledged yet)."""
        if self._role is not Role.LEAD or self._lease_start is None:
            return None
        return self._lease_start + self._cfg.election_timeout - self._cfg.lease_margin

    def has_lease(self, now: float) -> bool:
        """True while this node is lead and its lease (majority-acknowledged) holds."""
        end = self.lease_expiry()
        return end is not None and now < end

    def accepts(self, term: int, lead_id: str) -> bool:
        """Fencing: may a lead message stamped (``term``, ``lead_id``) be acted upon?

        True only for the current term and its proven lead (this node follows a lead
        only once it checked its certificate). Older terms, and newer ones not proven
        yet, are refused.
        """
        return term == self._term and self._lead is not None and lead_id == self._lead

    @property
    def signed(self) -> bool:
        """Whether votes are signed and certificates checked (always, in the daemon and
        the simulator; only rule tests run a machine without keys)."""
        return self._sign is not None

    def status(self, now: float) -> LeadStatus:
        """The lead, the term and, without a lead, why not. A lead whose lease lapsed (in
        its grace, see ``lease_grace``) reports no lead: it decides nothing new until a
        majority acknowledges it again."""
        if self._role is Role.LEAD and now >= self._lease_deadline():
            return LeadStatus(None, self._term, None, self._role, "lease lapsed: no quorum acks")
        reason = ""
        if self._lead is None:
            reason = self._no_lead_reason(now)
        return LeadStatus(self._lead, self._term, self._lead_since, self._role, reason)

    def next_deadline(self) -> float:
        """The earliest ``now`` at which :meth:`tick` has something to do (may be early)."""
        if self._left:
            return _INF
        if self._role is Role.LEAD:
            return min(self._next_hb, self._lease_deadline() + self._cfg.lease_grace)
        if self._role is Role.CANDIDATE:
            return self._round_deadline
        due = self._campaign_deadline()
        if self._lead is not None:
            due = min(due, self._lead_contact + self._cfg.election_timeout)
        return due

    # ---- inputs ------------------------------------------------------------------------

    def heard(self, node_id: str, now: float) -> None:
        """A message (any type) arrived from ``node_id``: it is reachable."""
        if node_id == self._id or self._left:
            return
        last = self._heard.get(node_id)
        if last is None or now - last >= self._reach:
            # First word after a silence: its stability clock starts again.
            self._reach_since[node_id] = now
        self._heard[node_id] = now

    def set_reach_window(self, seconds: float) -> None:
        """How long after its last message a peer still counts as reachable: at least
        ``election_timeout``; more when the peers' own messages (membership heartbeats) are
        further apart than that. A follower also waits this long for a silent lead."""
        self._reach = max(self._cfg.election_timeout, seconds)

    def update_members(self, views: Iterable[Voter], now: float) -> list[Effect]:
        """The whole member view (call on every membership change). This node's own entry,
        if present, is ignored (see :meth:`set_priority`)."""
        if self._left:
            return []
        seen: set[str] = set()
        for v in views:
            nid = v.node_id
            if nid == self._id:
                continue
            seen.add(nid)
            old = self._members.get(nid)
            self._members[nid] = v
            if v.state in _LIVE:
                if old is None or old.state not in _LIVE or old.priority != v.priority:
                    # Came (back) or changed priority: the stability window starts over.
                    self._reach_since[nid] = now
            else:
                self._reach_since.pop(nid, None)
        for nid in [n for n in self._members if n not in seen]:
            del self._members[nid]
            self._reach_since.pop(nid, None)
            self._heard.pop(nid, None)
            self._acked.pop(nid, None)
            self._acked_at.pop(nid, None)
            self._unproven.pop(nid, None)
            self._cert_asked.pop(nid, None)
            self._cert_answered.pop(nid, None)
            self._voters_acked.pop(nid, None)
            self._voters_sent.pop(nid, None)
        out: list[Effect] = []
        lead = self._lead
        if lead is not None and lead != self._id:
            lv = self._members.get(lead)
            if lv is None or lv.state in (MemberState.DEAD, MemberState.LEFT):
                left = lv is not None and lv.state is MemberState.LEFT
                self._lose_lead("lead_left" if left else "lead_dead", out)
                self._arm(now, 0.0)
        return out

    def receive(self, sender: str, payload: Payload, now: float) -> list[Effect]:
        """An election message from ``sender`` (authenticated by the transport).

        Other payload types are ignored (the caller routes them to membership).
        """
        if self._left or sender == self._id:
            return []
        out: list[Effect] = []
        if isinstance(payload, LeadHeartbeat):
            self._on_heartbeat(sender, payload, now, out)
        elif isinstance(payload, LeadAck):
            self._on_lead_ack(sender, payload, now, out)
        elif isinstance(payload, VoteReq):
            self._on_vote_req(sender, payload, now, out)
        elif isinstance(payload, Vote):
            self._on_vote(sender, payload, now, out)
        elif isinstance(payload, StepDown):
            self._on_step_down(sender, payload, now, out)
        elif isinstance(payload, TransferReq):
            self._on_transfer_req(sender, payload, now, out)
        elif isinstance(payload, LeadCert):
            self._on_cert(sender, payload, now, out)
        elif isinstance(payload, LeadCertReq):
            self._on_cert_req(sender, payload, now, out)
        elif isinstance(payload, Voters):
            self._on_voters(sender, payload, out)
        return out

    def tick(self, now: float) -> list[Effect]:
        """Let time pass (call at :meth:`next_deadline`)."""
        if self._left:
            return []
        out: list[Effect] = []
        if self._role is Role.LEAD:
            if now >= self._lease_deadline() + self._cfg.lease_grace:
                self._step_down("lost_quorum", "", now, out, announce=False)
            elif now >= self._next_hb:
                self._heartbeat(now, out)
                self._check_takeover(now, out)
                if self._role is Role.LEAD and self.has_lease(now):
                    self._plan_voters(now, out)
        elif self._role is Role.CANDIDATE:
            if now >= self._round_deadline:
                if self._can_campaign(now) and not self._defers(now):
                    self._set_role(Event.RETRY)
                    self._start_round(now, out)
                else:
                    self._set_role(Event.ABANDON)
                    self._round_deadline = _INF
                    self._arm(now, self._cfg.election_timeout)
        else:
            if self._lead is not None and now >= self._lead_contact + self._cfg.election_timeout:
                # The campaign timer keeps running from the last contact (and from the
                # lead's last word of any kind): no re-arm here.
                self._lose_lead("lead_silent", out)
            if now >= self._campaign_deadline():
                # Rank is evaluated when the timer first fires: by then a crashed lead (and
                # anyone who crashed with it) is no longer reachable and does not count.
                extra = self._own_rank(now) * self._cfg.rank_step
                if extra > self._timer_rank:
                    self._timer_rank = extra
                if now >= self._campaign_deadline():
                    self._campaign(now, out)
        return out

    # ---- operator commands -------------------------------------------------------------

    def transfer(self, target: str, now: float) -> list[Effect]:
        """On the lead: hand the lead to ``target`` (an eligible, reachable member).

        Automatic priority takeover is then suspended for ``manual_hold``.
        """
        self._require_lead()
        if target == self._id:
            raise LocalProtocolError("this node is already the lead")
        v = self._members.get(target)
        if v is None or v.state not in _LIVE:
            raise LocalProtocolError(f"{target} is not a live member")
        if v.priority <= 0:
            raise LocalProtocolError(f"{target} has priority 0 and can never lead")
        if not self.reachable(target, now):
            raise LocalProtocolError(f"{target} is not reachable")
        if not self._is_voter(target):
            raise LocalProtocolError(f"{target} is not a voter yet")
        out: list[Effect] = []
        self._takeover_hold_until = now + self._cfg.manual_hold
        self._step_down("transfer", target, now, out)
        return out

    def step_down(self, now: float) -> list[Effect]:
        """On the lead: give up the lead; others elect at once, this node stays out of
        elections for ``step_down_hold``."""
        self._require_lead()
        out: list[Effect] = []
        self._held[self._id] = now + self._cfg.step_down_hold
        self._step_down("operator", "", now, out)
        return out

    def request_transfer(self, target: str, now: float) -> list[Effect]:
        """An operator request on any node: ``target`` a node id (transfer) or ``""``
        (step down). On the lead it is carried out; elsewhere it is sent to the lead."""
        if self._left:
            raise LocalProtocolError("this node is leaving")
        if self._role is Role.LEAD:
            return self.transfer(target, now) if target else self.step_down(now)
        if self._lead is None:
            raise LocalProtocolError("no lead to ask")
        return [Send(self._lead, TransferReq(target))]

    def set_priority(self, priority: int, now: float) -> list[Effect]:
        """This node's priority changed. Priority 0 ends any lead or candidacy of ours
        (STEPPED_DOWN ``operator``). Any change restarts the stability clocks this node
        keeps, so a takeover it causes waits a full ``stability_window``."""
        if priority < 0:
            raise LocalProtocolError("priority must be >= 0")
        if self._left or priority == self._priority:
            self._priority = priority
            return []
        self._priority = priority
        for nid in self._reach_since:
            self._reach_since[nid] = now
        out: list[Effect] = []
        if priority == 0:
            if self._role is Role.LEAD:
                self._step_down("operator", "", now, out)
            elif self._role is Role.CANDIDATE:
                self._set_role(Event.ABANDON)
                self._round_deadline = _INF
                self._arm(now, self._cfg.election_timeout)
        return out

    def leave(self, now: float) -> list[Effect]:
        """Graceful shutdown: a lead steps down (``shutdown``) so the others elect at once."""
        if self._left:
            return []
        out: list[Effect] = []
        if self._role is Role.LEAD:
            self._step_down("shutdown", "", now, out)
        elif self._role is Role.CANDIDATE:
            self._set_role(Event.ABANDON)
        self._left = True
        return out

    # ---- internals: messages -----------------------------------------------------------

    def _on_heartbeat(self, sender: str, hb: LeadHeartbeat, now: float, out: list[Effect]) -> None:
        if hb.lead != sender:
            out.append(Refused("lead_not_sender", sender, "LEAD_HEARTBEAT"))
            return  # a lead speaks only for itself
        if self._last_step_down == (sender, hb.term):
            return  # overtaken by its own STEP_DOWN (PUB and direct links do not keep order)
        if hb.term < self._term:
            # A stale lead: tell it our term, and show it the proof of our term (it moves
            # on only with one).
            self._send(sender, LeadAck(self._term, hb.seq, False, self._voters_version), out)
            proof = self._term_proof
            if proof is not None and now - self._cert_answered.get(sender, -_INF) >= _CERT_INTERVAL:
                self._cert_answered[sender] = now
                self._send(sender, proof, out)
            return
        if hb.term == self._term and self._lead == sender and self._role is Role.FOLLOWER:
            self._lead_contact = now
            self._arm(now, self._cfg.election_timeout, watch=sender)
            self._send(sender, LeadAck(self._term, hb.seq, True, self._voters_version), out)
            return
        if hb.term == self._term and (self._role is Role.LEAD or self._lead is not None):
            # A second lead of our term: a forged claim (two certificates for one term
            # need a voter that voted twice). Never obey it, never switch leads in a term.
            out.append(Refused("second_lead", sender, f"term {hb.term}"))
            return
        # A lead we have no proof for (a newer term, or ours before its certificate came):
        # not followed, not acknowledged, until its certificate checks out.
        if not self._is_live(sender):
            return
        self._unproven[sender] = (hb.term, hb.seq)
        if self._sign is None:  # rule tests without keys: the heartbeat is its own proof
            if hb.term > self._term:
                self._adopt(hb.term, now, out)
            self._follow(sender, now, out, "heartbeat")
            return
        if now - self._cert_asked.get(sender, -_INF) >= _CERT_INTERVAL:
            self._cert_asked[sender] = now
            out.append(Refused("lead_unproven", sender, f"term {hb.term}: certificate asked"))
            self._send(sender, LeadCertReq(hb.term), out)

    def _follow(self, lead: str, now: float, out: list[Effect], how: str) -> None:
        """Follow ``lead`` as the proven lead of our term; acknowledge the heartbeat it
        sent before its proof was checked."""
        self._set_role(Event.LEAD_SEEN)  # a candidate gives up: this term has its lead
        self._round_deadline = _INF
        self._term_known = True  # a lead's term, adopted (and persisted) above if newer
        if self._lead != lead:
            self._lead = lead
            self._lead_since = now
            self._ever_lead = True
            out.append(ElectionEvent(LEAD_ELECTED, self._term, lead, how))
        self._lead_contact = now
        self._nominee = None
        self._arm(now, self._cfg.election_timeout, watch=lead)
        pending = self._unproven.pop(lead, None)
        if pending is not None and pending[0] == self._term:
            self._send(lead, LeadAck(self._term, pending[1], True, self._voters_version), out)

    def _on_cert(self, sender: str, cert: LeadCert, now: float, out: list[Effect]) -> None:
        """A lead or term certificate (it proves itself, whoever relays it)."""
        if cert.term > MAX_TERM:
            out.append(Refused("term_range", sender, f"LEAD_CERT term {cert.term}"))
            return
        if cert.term < self._term or cert.lead == self._id:
            return
        if cert.pre:
            if cert.term == self._term:
                return  # nothing new: we are at that term already
            problem = self._cert_problem(cert)
            if problem:
                out.append(Refused("bad_certificate", sender, problem))
                return
            self._adopt(cert.term, now, out)
            self._term_proof = cert
            self._arm(now, self._cfg.election_timeout)
            return
        if cert.term == self._term and self._lead == cert.lead:
            return  # a second copy
        if cert.term == self._term and (self._role is Role.LEAD or self._lead is not None):
            out.append(Refused("second_lead", sender, f"term {cert.term}"))
            return
        problem = self._cert_problem(cert)
        if problem:
            out.append(Refused("bad_certificate", sender, problem))
            return
        if cert.term > self._term:
            self._adopt(cert.term, now, out)
        self._term_proof = cert
        self._follow(cert.lead, now, out, "certified")
        self._endorse(cert, out)

    def _endorse(self, cert: LeadCert, out: list[Effect]) -> None:
        """Add our signed vote to a proven lead's certificate when it lacks it (we did not
        vote in that election, or our vote came late): the certificate then covers every
        member that follows the lead, so members that join later (and count more voters)
        still find a quorum in it. Never a second vote: only when we voted for nobody
        else in the term (the vote is stored before it leaves)."""
        if self._sign is None or any(v.voter == self._id for v in cert.votes):
            return
        if self._voted_for not in (None, cert.lead):
            return
        if self._voted_for is None:
            self._voted_for = cert.lead
            self._persist(out)
        sig = self._sign(vote_bytes(cert.term, cert.lead))
        self._send(cert.lead, Vote(cert.term, True, False, "", sig), out)

    def _cert_problem(self, cert: LeadCert) -> str:
        """Why ``cert`` does not prove its lead, or ``""`` when it does: the lead must be
        an eligible member (priority > 0 in its own member info) and a quorum of voters
        (as this node counts them) must have signed a real vote for it in that term. The
        first bad signature condemns the whole certificate (an honest lead checks every
        vote it gathers), so a forged one costs one signature check."""
        lead = self._members.get(cert.lead)
        if lead is None or lead.state is MemberState.LEFT:
            return "lead is not a member"
        if lead.priority <= 0:
            return "lead has priority 0"
        data = vote_bytes(cert.term, cert.lead, cert.pre)
        check = self._check_vote
        voters: set[str] = set()
        q = self._cert_quorum()
        for v in cert.votes:
            if v.voter in voters or not self._is_voter(v.voter):
                continue
            if check is not None and not check(v.voter, data, v.sig):
                return f"bad signature of {v.voter}"
            voters.add(v.voter)
            if len(voters) >= q:
                return ""
        return f"{len(voters)} valid votes of {q} needed"

    def _cert_quorum(self) -> int:
        """Votes a certificate needs here: a majority of the live voters this node knows
        (itself included), or the configured fixed quorum. An honest certificate won a
        majority of all members, dead ones included, so it passes at every node whose
        view has not grown since; the endorsements of the followers (:meth:`_endorse`)
        keep it passing as members join."""
        if self._cfg.quorum > 0:
            return self._cfg.quorum
        if self._voters_version:
            return self.quorum()
        live = 1 + sum(1 for v in self._members.values() if v.state in _LIVE)
        return live // 2 + 1

    def _on_cert_req(self, sender: str, req: LeadCertReq, now: float, out: list[Effect]) -> None:
        cert = self._term_proof
        if cert is None or cert.pre or req.term != self._term:
            return
        if now - self._cert_answered.get(sender, -_INF) < _CERT_INTERVAL:
            return
        self._cert_answered[sender] = now
        self._send(sender, cert, out)

    def _on_lead_ack(self, sender: str, ack: LeadAck, now: float, out: list[Effect]) -> None:
        # A refusal with a newer term moves nothing here: a term is taken only from a
        # certificate (a stale lead learns the new lead from its heartbeat and proof, and
        # loses its lease meanwhile, as a majority no longer acknowledges it).
        if self._role is not Role.LEAD or ack.term != self._term or not ack.ok:
            return
        if not self._is_live(sender):
            return
        self._acked_at[sender] = now  # it follows us (a joiner: the voter set may add it)
        self._voters_acked[sender] = ack.voters_version
        if ack.voters_version < self._voters_version:
            self._send_voters(sender, now, out)
        self._check_voters_commit()
        if not self._is_voter(sender):
            return
        if ack.seq > self._acked.get(sender, 0):
            self._acked[sender] = ack.seq
            self._update_lease()

    def _on_voters(self, sender: str, msg: Voters, out: list[Effect]) -> None:
        if sender != self._lead or msg.term != self._term or self._role is not Role.FOLLOWER:
            out.append(Refused("voters_not_lead", sender, f"version {msg.version}"))
            return
        if msg.version <= self._voters_version:
            return
        self._voters_version = msg.version
        self._voter_ids = frozenset(msg.voters)
        self._persist(out)  # held durably before our next LEAD_ACK says so

    # ---- internals: the voter set (lead) -----------------------------------------------

    def _send_voters(self, to: str, now: float, out: list[Effect]) -> None:
        if now - self._voters_sent.get(to, -_INF) < _CERT_INTERVAL or not self._voters_version:
            return
        self._voters_sent[to] = now
        self._send(to, Voters(self._term, *self.voter_set), out)

    def _check_voters_commit(self) -> None:
        """A change is committed once a majority of the new set holds its version."""
        pending = self._voters_pending
        if pending is None:
            return
        have = sum(
            1 for n in self._voter_ids if n == self._id or self._voters_acked.get(n, 0) >= pending
        )
        if have >= len(self._voter_ids) // 2 + 1:
            self._voters_pending = None

    def _voter_gone(self, node_id: str, now: float) -> bool:
        v = self._members.get(node_id)
        if v is None or v.state is MemberState.LEFT:
            return True
        return v.state is MemberState.DEAD and now - v.since >= self._cfg.voter_dead_after

    def _plan_voters(self, now: float, out: list[Effect]) -> None:
        """On the lead, with its lease: one change of the voter set at a time (Raft's
        single-server changes, so any two majorities of consecutive sets meet).

        The first set is decided once every member this node has heard itself and holds
        live follows it (acknowledged it within ``election_timeout``), at least one does,
        and that has held for ``stability_window``: this node, those members, and the
        members it heard before that are dead now (not for ``voter_dead_after``). Then a
        member that follows this lead is added, and a voter LEFT, forgotten or DEAD for
        ``voter_dead_after`` is removed. Members known only by gossip never become voters.
        """
        if self._voters_pending is not None or self._cfg.quorum > 0:
            return
        timeout = self._cfg.election_timeout
        follows = {
            n
            for n, v in self._members.items()
            if v.state in _LIVE and now - self._acked_at.get(n, -_INF) < timeout
        }
        if not self._voters_version:
            direct_live = {n for n, v in self._members.items() if v.state in _LIVE and v.direct}
            if not follows or not direct_live <= follows:
                self._voters_settled = _INF
                return
            if self._voters_settled == _INF:
                self._voters_settled = now
            if now - self._voters_settled < self._cfg.stability_window:
                return
            dead = {
                n
                for n, v in self._members.items()
                if v.direct and v.state is MemberState.DEAD and not self._voter_gone(n, now)
            }
            new = frozenset({self._id} | follows | dead)
        else:
            ids = self._voter_ids
            gone = sorted(n for n in ids if n != self._id and self._voter_gone(n, now))
            if gone:
                new = ids - {gone[0]}
            else:
                joiners = sorted(n for n in follows - ids if self._members[n].direct)
                if not joiners:
                    return
                new = ids | {joiners[0]}
        self._voters_version += 1
        self._voter_ids = new
        self._voters_pending = self._voters_version
        self._persist(out)
        out.append(ElectionEvent(VOTERS_CHANGED, self._term, self._id, f"{len(new)} voters"))
        for nid, v in self._members.items():
            if v.state in _LIVE:
                self._send_voters(nid, now, out)
        self._check_voters_commit()

    def _on_vote_req(self, sender: str, req: VoteReq, now: float, out: list[Effect]) -> None:
        if not self._is_live(sender):
            return  # no link to answer on, and its election could not count us anyway
        deny = self._deny_reason(sender, req, now)
        if deny:
            self._send(sender, Vote(self._term, False, req.pre, deny), out)
            return
        if req.pre:
            sig = b"" if self._sign is None else self._sign(vote_bytes(req.term, sender, True))
            self._send(sender, Vote(req.term, True, True, "", sig), out)
            return
        if req.term > self._term:
            self._adopt(req.term, now, out)
        if self._voted_for is None or self._voted_for == sender:
            self._voted_for = sender
            self._persist(out)  # before the grant leaves
            self._arm(now, self._cfg.election_timeout)
            sig = self._sign(vote_bytes(self._term, sender)) if self._sign is not None else b""
            self._send(sender, Vote(self._term, True, False, "", sig), out)
        else:
            self._send(sender, Vote(self._term, False, False, "already_voted"), out)

    def _deny_reason(self, sender: str, req: VoteReq, now: float) -> str:
        if req.term < self._term:
            return "stale_term"
        if req.term > MAX_TERM or req.term > self._term + MAX_TERM_JUMP:
            return "term_jump"
        if req.term == self._term and self._voted_for not in (None, sender):
            return "already_voted"
        if not self._term_known:
            return "term_unknown"
        if now < self._guard_until:
            return "starting"
        # Eligibility and rank by the priority the candidate's own member info states
        # (what every voter sees alike), not the number in its request.
        v = self._members.get(sender)
        priority = v.priority if v is not None else 0
        if priority <= 0 or req.priority <= 0:
            return "not_eligible"
        if self._is_nominee(sender, req.term, now):
            return ""
        if self._role is Role.LEAD:
            return "have_lead"
        if self._lead is not None and now - self._lead_contact < self._cfg.election_timeout:
            return "have_lead"
        if self._count_above(_key(priority, sender), now, exclude=sender) > 0:
            return "lower_rank"
        return ""

    def _on_vote(self, sender: str, vote: Vote, now: float, out: list[Effect]) -> None:
        # A granted pre-vote carries the term we *asked* for; anything else carries the
        # voter's real term, and a newer one means we are behind — believed only while
        # we campaign (we asked) and only within MAX_TERM_JUMP of our term.
        if vote.term > self._term and not (vote.pre and vote.granted):
            if self._role is not Role.CANDIDATE:
                return
            if vote.term > MAX_TERM or vote.term > self._term + MAX_TERM_JUMP:
                out.append(Refused("term_jump", sender, f"VOTE term {vote.term}"))
                return
            self._adopt(vote.term, now, out)
            self._arm(now, self._cfg.election_timeout)
            return
        if not vote.granted or not self._is_voter(sender):
            return
        real = not vote.pre and vote.term == self._term
        check = self._check_vote
        signed = vote_bytes(vote.term, self._id, vote.pre)
        if (real or vote.pre) and check is not None and not check(sender, signed, vote.sig):
            out.append(Refused("bad_vote_signature", sender, f"term {vote.term}"))
            return
        if self._role is Role.LEAD and real:
            # A late vote: the certificate grows (a node that counts more voters than we
            # did still finds a quorum in it).
            if sender not in self._vote_sigs:
                self._vote_sigs[sender] = vote.sig
                self._term_proof = self._make_cert()
            return
        if self._role is not Role.CANDIDATE:
            return
        if vote.pre != self._pre or vote.term != self._round_term:
            return  # an answer to an earlier round
        (self._pre_sigs if vote.pre else self._vote_sigs)[sender] = vote.sig
        self._grants.add(sender)
        self._maybe_advance(now, out)

    def _on_step_down(self, sender: str, sd: StepDown, now: float, out: list[Effect]) -> None:
        if sd.term < self._term or self._last_step_down == (sender, sd.term):
            return  # stale, or the second copy (PUB and direct)
        if sd.term != self._term or self._role is Role.LEAD or self._lead != sender:
            # Only the proven lead of our term may hand it over (or give it up).
            out.append(Refused("step_down_not_lead", sender, f"term {sd.term}"))
            return
        self._last_step_down = (sender, sd.term)
        if sd.reason == "operator":
            self._held[sender] = now + self._cfg.step_down_hold
        elif sd.reason == "transfer":
            self._takeover_hold_until = now + self._cfg.manual_hold
        if self._lead == sender:
            self._lose_lead("stepped_down", out)
        succ = sd.successor
        if succ:
            self._nominee = (succ, sd.term, now + 2 * self._cfg.election_timeout)
            if succ == self._id:
                self._arm(now, 0.0)
                if self._role is Role.FOLLOWER:
                    self._campaign(now, out)
                elif self._role is Role.CANDIDATE and self._can_campaign(now):
                    self._set_role(Event.RETRY)
                    self._start_round(now, out)
            elif self._role is Role.FOLLOWER:
                # Fallback if the successor fails: the normal timer, from now.
                self._arm(now, self._cfg.election_timeout)
        elif self._role is Role.FOLLOWER:
            self._arm(now, 0.0)  # nobody nominated: campaign at once, in rank order

    def _on_transfer_req(
        self, sender: str, req: TransferReq, now: float, out: list[Effect]
    ) -> None:
        if self._role is not Role.LEAD:
            return
        if not self._is_live(sender):
            out.append(Refused("not_a_member", sender, "TRANSFER_REQ"))
            return
        try:
            out.extend(self.transfer(req.target, now) if req.target else self.step_down(now))
        except LocalProtocolError:
            return  # not a valid target now; the operator sees the unchanged status

    # ---- internals: campaigning --------------------------------------------------------

    def _can_campaign(self, now: float) -> bool:
        if not self._term_known and self._members:
            return False  # it may have voted for another in the lost term
        return (
            self._priority > 0
            and self._term < MAX_TERM
            and self._is_voter(self._id)
            and now >= self._held.get(self._id, -_INF)
        )

    def _campaign(self, now: float, out: list[Effect]) -> None:
        if not self._can_campaign(now) or self._defers(now):
            self._arm(now, self._cfg.election_timeout)
            return
        self._set_role(Event.CAMPAIGN)
        self._start_round(now, out)

    def _defers(self, now: float) -> bool:
        """Only nodes that can win stand: a reachable eligible node ranked above us would
        get every vote (voters refuse us with ``lower_rank``), so we leave the round to it
        — up to ``max_defer`` times in a row, in case it cannot win (it may be cut off
        from the others while we still hear it)."""
        nominated = self._is_nominee(self._id, self._term + 1, now)
        if nominated or self._own_rank(now) == 0 or self._deferred >= self._cfg.max_defer:
            self._deferred = 0
            return False
        self._deferred += 1
        return True

    def _start_round(self, now: float, out: list[Effect]) -> None:
        """A new round: pre-vote at term + 1. Without enough reachable voters, wait."""
        self._round_deadline = now + self._cfg.candidate_retry * (0.5 + self._rng.random())
        self._pre = True
        self._round_term = self._term + 1
        self._grants = {self._id}
        sign = self._sign
        own = b"" if sign is None else sign(vote_bytes(self._round_term, self._id, True))
        self._pre_sigs = {self._id: own}
        if self._reachable_voters(now) < self.quorum():
            return  # cannot win: do not bother anyone (status says "no quorum")
        if not self._maybe_advance(now, out):
            self._send_all(VoteReq(self._round_term, True, self._priority), out)

    def _maybe_advance(self, now: float, out: list[Effect]) -> bool:
        """Count the grants of the current phase; move on when they make a quorum.
        Returns True when the phase was won."""
        q = self.quorum()
        if self._count_grants() < q:
            return False
        if self._pre:
            self._set_role(Event.PRE_VOTE_WON)
            self._term = self._round_term
            self._voted_for = self._id
            self._persist(out)  # before anyone sees the new term
            if self._lead is not None:
                self._lose_lead("higher_term", out)
            self._pre = False
            self._grants = {self._id}
            own = self._sign(vote_bytes(self._term, self._id)) if self._sign is not None else b""
            self._vote_sigs = {self._id: own}
            pre_votes = tuple(CertVote(v, sig) for v, sig in sorted(self._pre_sigs.items()))
            self._term_proof = LeadCert(self._term, self._id, pre_votes, True)
            self._round_deadline = now + self._cfg.candidate_retry * (0.5 + self._rng.random())
            if self._count_grants() < q:
                # The proof of the new term first: each voter takes the term from it, then
                # answers the request on the same link.
                self._send_all(self._term_proof, out)
                self._send_all(VoteReq(self._term, False, self._priority), out)
                return True
        self._become_lead(now, out)
        return True

    def _count_grants(self) -> int:
        return sum(1 for g in self._grants if self._is_voter(g))

    def _become_lead(self, now: float, out: list[Effect]) -> None:
        self._set_role(Event.ELECTED)
        self._round_deadline = _INF
        self._lead = self._id
        self._lead_since = now
        self._ever_lead = True
        self._nominee = None
        self._won_at = now
        self._lease_start = None
        self._hb_seq = 0
        self._sent_at = {}
        self._acked = {}
        self._acked_at = {}
        self._unproven.clear()
        # A voter set of an earlier lead may not be held by a majority yet: no change of
        # ours until it is (so two changes are never outstanding at once).
        self._voters_acked = {}
        self._voters_sent = {}
        self._voters_pending = self._voters_version or None
        out.append(ElectionEvent(LEAD_ELECTED, self._term, self._id, "won"))
        # The proof first: on each link it arrives before anything else this lead sends.
        cert = self._term_proof = self._make_cert()
        self._send_all(cert, out)
        self._heartbeat(now, out)

    def _make_cert(self) -> LeadCert:
        votes = tuple(CertVote(v, sig) for v, sig in sorted(self._vote_sigs.items()))
        return LeadCert(self._term, self._id, votes)

    # ---- internals: leading ------------------------------------------------------------

    def _heartbeat(self, now: float, out: list[Effect]) -> None:
        self._hb_seq += 1
        self._sent_at[self._hb_seq] = now
        out.append(Publish(LeadHeartbeat(self._term, self._id, self._hb_seq)))
        self._next_hb = now + self._cfg.lead_heartbeat_interval
        self._update_lease()

    def _update_lease(self) -> None:
        """lease_start = send time of the newest heartbeat a quorum (us included) acked."""
        need = self.quorum() - 1  # acks needed from others
        if need <= 0:
            seq = self._hb_seq
        else:
            acked = sorted((s for n, s in self._acked.items() if self._is_voter(n)), reverse=True)
            if len(acked) < need:
                return
            seq = acked[need - 1]
        sent = self._sent_at.get(seq)
        if sent is None:
            return
        if self._lease_start is None or sent > self._lease_start:
            self._lease_start = sent
        for s in [s for s in self._sent_at if s < seq]:
            del self._sent_at[s]

    def _lease_deadline(self) -> float:
        start = self._lease_start if self._lease_start is not None else self._won_at
        return start + self._cfg.election_timeout - self._cfg.lease_margin

    def _check_takeover(self, now: float, out: list[Effect]) -> None:
        """Hand over to the best-ranked eligible node above us that has been reachable,
        and following us, for the whole stability window."""
        if now < self._takeover_hold_until:
            return
        cfg = self._cfg
        mine = _key(self._priority, self._id)
        best: tuple[int, str] | None = None
        for nid, v in self._members.items():
            if v.priority <= 0 or _key(v.priority, nid) >= mine:
                continue
            if not self.reachable(nid, now):
                continue
            if now - self._acked_at.get(nid, -_INF) >= cfg.election_timeout:
                continue  # not following us: it might not hear the hand-over
            if not self._is_voter(nid):
                continue  # not a voter yet: it could not stand
            stable_since = max(self._reach_since.get(nid, now), self._held.get(nid, -_INF))
            if now - stable_since < cfg.stability_window:
                continue
            k = _key(v.priority, nid)
            if best is None or k < best:
                best = k
        if best is not None:
            self._step_down("priority_takeover", best[1], now, out)

    def _step_down(
        self, reason: str, successor: str, now: float, out: list[Effect], *, announce: bool = True
    ) -> None:
        term = self._term
        self._set_role(Event.STEP_DOWN)
        self._lead = None
        self._lead_since = None
        self._lease_start = None
        self._next_hb = _INF
        self._sent_at = {}
        self._acked = {}
        self._acked_at = {}
        out.append(ElectionEvent(STEPPED_DOWN, term, self._id, reason))
        if announce:
            sd = StepDown(term, successor, reason)
            # PUB may drop; the direct copies make sure followers react at once.
            out.append(Publish(sd))
            self._send_all(sd, out)
        if successor:
            self._nominee = (successor, term, now + 2 * self._cfg.election_timeout)
        self._arm(now, self._cfg.election_timeout)

    # ---- internals: bookkeeping --------------------------------------------------------

    def _require_lead(self) -> None:
        if self._left:
            raise LocalProtocolError("this node is leaving")
        if self._role is not Role.LEAD:
            lead = self._lead or "unknown (no lead)"
            raise LocalProtocolError(f"not the lead; the lead is {lead}")

    def _set_role(self, event: Event) -> None:
        self._role = transition(self._role, event)

    def _persist(self, out: list[Effect]) -> None:
        """Emit the durable state; a Persist directly before is superseded (same write)."""
        p = Persist(self._term, self._voted_for, self.voter_set)
        if out and isinstance(out[-1], Persist):
            out[-1] = p
        else:
            out.append(p)

    def _adopt(self, term: int, now: float, out: list[Effect]) -> None:
        """A newer term: adopt it (Persist), stop leading / campaigning, lose the lead."""
        old_term = self._term
        self._term = term
        self._voted_for = None
        self._term_proof = None
        self._persist(out)
        if self._role is Role.LEAD:
            self._set_role(Event.HIGHER_TERM)
            self._lead = None
            self._lead_since = None
            self._lease_start = None
            self._next_hb = _INF
            out.append(ElectionEvent(STEPPED_DOWN, old_term, self._id, "higher_term"))
            self._arm(now, self._cfg.election_timeout)
        else:
            if self._role is Role.CANDIDATE:
                self._round_deadline = _INF
            self._set_role(Event.HIGHER_TERM)
            if self._lead is not None:
                lost = self._lead
                self._lead = None
                self._lead_since = None
                self._unwatch(lost)
                out.append(ElectionEvent(LEAD_LOST, old_term, lost, "higher_term"))

    def _lose_lead(self, reason: str, out: list[Effect]) -> None:
        lost = self._lead
        if lost is None:
            return
        self._lead = None
        self._lead_since = None
        self._unwatch(lost)
        out.append(ElectionEvent(LEAD_LOST, self._term, lost, reason))

    def _unwatch(self, node_id: str) -> None:
        """Stop timing our campaign from ``node_id``'s last word: it no longer leads, and
        what it says now (its own vote requests, its membership heartbeats) must not keep
        pushing our timer back, or a node that could win would never stand."""
        if self._timer_watch == node_id:
            self._timer_base = max(self._timer_base, self._heard.get(node_id, -_INF))
            self._timer_watch = None

    def _arm(self, now: float, delay: float, *, watch: str | None = None) -> None:
        """(Re)start the campaign timer: ``delay`` (+ rank, + jitter) after ``now`` or after
        the last word of ``watch`` (the lead being timed out), whichever is later."""
        self._timer_base = now
        self._timer_delay = delay
        self._timer_watch = watch
        self._timer_rank = 0.0
        self._timer_jitter = self._rng.uniform(0.0, self._cfg.election_jitter)

    def _campaign_deadline(self) -> float:
        if self._role is not Role.FOLLOWER or self._priority <= 0:
            return _INF
        base = self._timer_base
        if self._timer_watch is not None:
            base = max(base, self._heard.get(self._timer_watch, -_INF))
        # A silent lead is given up only once it is no longer reachable either.
        delay = max(self._timer_delay, self._reach) if self._timer_delay > 0 else 0.0
        due = base + delay + self._timer_rank + self._timer_jitter
        return max(due, self._held.get(self._id, -_INF))

    def _is_nominee(self, node_id: str, term: int, now: float) -> bool:
        n = self._nominee
        return n is not None and n[0] == node_id and term <= n[1] + 2 and now < n[2]

    def _is_voter(self, node_id: str) -> bool:
        """Whether its vote and its acknowledgements count: a member of the decided voter
        set (dead ones too, until the lead removes them); before there is one, any member
        not LEFT and this node (a crashed member keeps counting: a minority never elects)."""
        if self._voters_version:
            return node_id in self._voter_ids
        if node_id == self._id:
            return True
        v = self._members.get(node_id)
        return v is not None and v.state is not MemberState.LEFT

    def _is_live(self, node_id: str) -> bool:
        v = self._members.get(node_id)
        return v is not None and v.state in _LIVE

    def _send(self, to: str, payload: Payload, out: list[Effect]) -> None:
        if self._is_live(to):
            out.append(Send(to, payload))

    def _send_all(self, payload: Payload, out: list[Effect]) -> None:
        for nid, v in self._members.items():
            if v.state in _LIVE:
                out.append(Send(nid, payload))

    def _is_held(self, node_id: str, now: float) -> bool:
        return now < self._held.get(node_id, -_INF)

    def _count_above(self, key: tuple[int, str], now: float, exclude: str = "") -> int:
        """Reachable, eligible, not held nodes (this one included) ranked above ``key``."""
        count = 0
        if (
            self._priority > 0
            and self._id != exclude
            and _key(self._priority, self._id) < key
            and not self._is_held(self._id, now)
        ):
            count += 1
        for nid, v in self._members.items():
            if v.priority <= 0 or nid == exclude or _key(v.priority, nid) >= key:
                continue
            if self.reachable(nid, now) and not self._is_held(nid, now):
                count += 1
        return count

    def _own_rank(self, now: float) -> int:
        return self._count_above(_key(self._priority, self._id), now, exclude=self._id)

    def _reachable_voters(self, now: float) -> int:
        return sum(1 for n in self._voter_list() if self.reachable(n, now))

    def _no_lead_reason(self, now: float) -> str:
        if not self._ever_lead and now < self._started + self._cfg.election_timeout:
            return "starting"
        eligible = self._priority > 0 and not self._is_held(self._id, now)
        if not eligible:
            eligible = any(
                v.priority > 0 and self.reachable(nid, now) and not self._is_held(nid, now)
                for nid, v in self._members.items()
            )
        if not eligible:
            return "no eligible node"
        if self._reachable_voters(now) < self.quorum():
            return "no quorum"
        return "election in progress"
