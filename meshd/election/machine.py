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
from meshd.effects import ElectionEvent, Persist, Publish, Send
from meshd.election.table import Event, Role, transition
from meshd.errors import ConfigError, LocalProtocolError
from meshd.wire.messages import (
    LeadAck,
    LeadHeartbeat,
    Payload,
    StepDown,
    TransferReq,
    Vote,
    VoteReq,
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

_LIVE = (MemberState.ALIVE, MemberState.SUSPECT)


# ---- effects and views -----------------------------------------------------------------


Effect: TypeAlias = Send | Publish | Persist | ElectionEvent


@dataclass(frozen=True, slots=True)
class Voter:
    """A member as membership sees it (what :meth:`Election.update_members` takes)."""

    node_id: str
    priority: int
    state: MemberState


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
    ) -> None:
        validate_config(config)
        if priority < 0:
            raise ConfigError("priority must be >= 0")
        if term < 0:
            raise ConfigError("term must be >= 0")
        self._id = self_id
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
        self._round_deadline = _INF
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
        """``n`` of the quorum: members not LEFT (dead ones included) plus this node."""
        return 1 + sum(1 for v in self._members.values() if v.state is not MemberState.LEFT)

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

        True for the current term and lead, or a newer term (the caller then feeds the
        message, which makes this node adopt the term). Older terms are refused.
        """
        if term > self._term:
            return True
        return term == self._term and self._lead is not None and lead_id == self._lead

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
            self._on_transfer_req(payload, now, out)
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
            return  # a lead speaks only for itself
        if self._last_step_down == (sender, hb.term):
            return  # overtaken by its own STEP_DOWN (PUB and direct links do not keep order)
        if hb.term < self._term:
            # A stale lead: tell it our term so it steps down.
            self._send(sender, LeadAck(self._term, hb.seq, False), out)
            return
        if hb.term > self._term:
            self._adopt(hb.term, now, out)
        elif self._role is Role.LEAD or self._lead not in (None, sender):
            # A second lead of our term: only possible for a node that led a mesh of its own
            # view (it started alone). Never obey it, never switch leads within a term; its
            # lease lapses without our acks and it follows the real one.
            return
        self._set_role(Event.LEAD_SEEN)  # a candidate gives up: this term has its lead
        self._round_deadline = _INF
        self._term_known = True  # a lead's term, adopted (and persisted) above if newer
        if self._lead != sender:
            self._lead = sender
            self._lead_since = now
            self._ever_lead = True
            out.append(ElectionEvent(LEAD_ELECTED, self._term, sender, "heartbeat"))
        self._lead_contact = now
        self._nominee = None
        self._arm(now, self._cfg.election_timeout, watch=sender)
        self._send(sender, LeadAck(self._term, hb.seq, True), out)

    def _on_lead_ack(self, sender: str, ack: LeadAck, now: float, out: list[Effect]) -> None:
        if ack.term > self._term:
            self._adopt(ack.term, now, out)
            self._arm(now, self._cfg.election_timeout)
            return
        if self._role is not Role.LEAD or ack.term != self._term or not ack.ok:
            return
        if not self._is_voter(sender):
            return
        self._acked_at[sender] = now
        if ack.seq > self._acked.get(sender, 0):
            self._acked[sender] = ack.seq
            self._update_lease()

    def _on_vote_req(self, sender: str, req: VoteReq, now: float, out: list[Effect]) -> None:
        if not self._is_live(sender):
            return  # no link to answer on, and its election could not count us anyway
        deny = self._deny_reason(sender, req, now)
        if deny:
            self._send(sender, Vote(self._term, False, req.pre, deny), out)
            return
        if req.pre:
            self._send(sender, Vote(req.term, True, True), out)
            return
        if req.term > self._term:
            self._adopt(req.term, now, out)
        if self._voted_for is None or self._voted_for == sender:
            self._voted_for = sender
            self._persist(out)  # before the grant leaves
            self._arm(now, self._cfg.election_timeout)
            self._send(sender, Vote(self._term, True, False), out)
        else:
            self._send(sender, Vote(self._term, False, False, "already_voted"), out)

    def _deny_reason(self, sender: str, req: VoteReq, now: float) -> str:
        if req.term < self._term:
            return "stale_term"
        if req.term == self._term and self._voted_for not in (None, sender):
            return "already_voted"
        if not self._term_known:
            return "term_unknown"
        if now < self._guard_until:
            return "starting"
        if req.priority <= 0:
            return "not_eligible"
        if self._is_nominee(sender, req.term, now):
            return ""
        if self._role is Role.LEAD:
            return "have_lead"
        if self._lead is not None and now - self._lead_contact < self._cfg.election_timeout:
            return "have_lead"
        if self._count_above(_key(req.priority, sender), now, exclude=sender) > 0:
            return "lower_rank"
        return ""

    def _on_vote(self, sender: str, vote: Vote, now: float, out: list[Effect]) -> None:
        # A granted pre-vote carries the term we *asked* for; anything else carries the
        # voter's real term, and a newer one means we are behind.
        if vote.term > self._term and not (vote.pre and vote.granted):
            self._adopt(vote.term, now, out)
            self._arm(now, self._cfg.election_timeout)
            return
        if self._role is not Role.CANDIDATE or not vote.granted:
            return
        if vote.pre != self._pre or vote.term != self._round_term:
            return  # an answer to an earlier round
        if not self._is_voter(sender):
            return
        self._grants.add(sender)
        self._maybe_advance(now, out)

    def _on_step_down(self, sender: str, sd: StepDown, now: float, out: list[Effect]) -> None:
        if sd.term < self._term or self._last_step_down == (sender, sd.term):
            return  # stale, or the second copy (PUB and direct)
        if sd.term > self._term:
            self._adopt(sd.term, now, out)
        elif self._role is Role.LEAD or self._lead not in (None, sender):
            return  # we lead this term, or follow another lead of it: not from our lead
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

    def _on_transfer_req(self, req: TransferReq, now: float, out: list[Effect]) -> None:
        if self._role is not Role.LEAD:
            return
        try:
            out.extend(self.transfer(req.target, now) if req.target else self.step_down(now))
        except LocalProtocolError:
            return  # not a valid target now; the operator sees the unchanged status

    # ---- internals: campaigning --------------------------------------------------------

    def _can_campaign(self, now: float) -> bool:
        if not self._term_known and self._members:
            return False  # it may have voted for another in the lost term
        return self._priority > 0 and now >= self._held.get(self._id, -_INF)

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
            self._round_deadline = now + self._cfg.candidate_retry * (0.5 + self._rng.random())
            if self._count_grants() < q:
                self._send_all(VoteReq(self._term, False, self._priority), out)
                return True
        self._become_lead(now, out)
        return True

    def _count_grants(self) -> int:
        return sum(1 for g in self._grants if g == self._id or self._is_voter(g))

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
        out.append(ElectionEvent(LEAD_ELECTED, self._term, self._id, "won"))
        self._heartbeat(now, out)

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
        p = Persist(self._term, self._voted_for)
        if out and isinstance(out[-1], Persist):
            out[-1] = p
        else:
            out.append(p)

    def _adopt(self, term: int, now: float, out: list[Effect]) -> None:
        """A newer term: adopt it (Persist), stop leading / campaigning, lose the lead."""
        old_term = self._term
        self._term = term
        self._voted_for = None
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
        return 1 + sum(
            1
            for nid, v in self._members.items()
            if v.state is not MemberState.LEFT and self.reachable(nid, now)
        )

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
