"""Unit tests of each election rule, one machine driven by hand (no network).

The vote rules are a table: one row per rule, checked for pre-votes and real votes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest

from meshd.config import Config, ElectionConfig, load_file
from meshd.effects import ElectionEvent, Persist, Publish, Refused, Send
from meshd.election import LEAD_ELECTED, LEAD_LOST, STEPPED_DOWN, Effect, Election, Role, Voter
from meshd.errors import ConfigError, LocalProtocolError
from meshd.wire.messages import (
    CertVote,
    LeadAck,
    LeadCert,
    LeadHeartbeat,
    Payload,
    StepDown,
    TransferReq,
    Vote,
    VoteReq,
)
from meshd.wire.records import MemberState

CFG = ElectionConfig()
TE = CFG.election_timeout
ALIVE, SUSPECT, DEAD, LEFT = (
    MemberState.ALIVE,
    MemberState.SUSPECT,
    MemberState.DEAD,
    MemberState.LEFT,
)


def nid(name: str) -> str:
    return hashlib.blake2b(name.encode(), digest_size=16).hexdigest()


ME, HI, LO, P, Z = nid("me"), nid("hi"), nid("lo"), nid("p"), nid("z")
#: The others' priorities (this node's is set per test): HI above everyone, Z never leads.
PRIO = {HI: 20, LO: 5, P: 7, Z: 0}


class Rig:
    """One Election, a hand-moved clock, the peers it hears, and every effect it returned."""

    def __init__(
        self,
        priority: int = 10,
        members: dict[str, int] | None = None,
        *,
        cfg: ElectionConfig = CFG,
        term: int = 0,
        voted_for: str | None = None,
        seed: int = 0,
        term_known: bool = True,
    ) -> None:
        self.now = 0.0
        self.cfg = cfg
        self.e = Election(ME, priority, cfg, 0.0, random.Random(seed), term, voted_for, term_known)
        self.views = {
            n: Voter(n, p, ALIVE) for n, p in (PRIO if members is None else members).items()
        }
        #: Peers whose (membership) messages keep arriving while time runs.
        self.audible = set(self.views)
        self.log: list[tuple[float, Effect]] = []
        self.push()
        self.hear()
        self._next_hear = 0.1

    # -- driving -----------------------------------------------------------------------

    def feed(self, effects: Iterable[Effect]) -> list[Effect]:
        out = list(effects)
        self.log.extend((self.now, e) for e in out)
        return out

    def push(self) -> list[Effect]:
        return self.feed(self.e.update_members(list(self.views.values()), self.now))

    def member(
        self, node: str, state: MemberState | None = None, priority: int | None = None
    ) -> list[Effect]:
        v = self.views.get(node, Voter(node, 0, ALIVE))
        self.views[node] = Voter(
            node,
            v.priority if priority is None else priority,
            v.state if state is None else state,
        )
        return self.push()

    def hear(self, *nodes: str) -> None:
        for n in nodes or sorted(self.audible):
            if self.views.get(n, Voter(n, 0, LEFT)).state in (ALIVE, SUSPECT):
                self.e.heard(n, self.now)

    def recv(self, sender: str, payload: Payload) -> list[Effect]:
        self.e.heard(sender, self.now)
        return self.feed(self.e.receive(sender, payload, self.now))

    def tick(self) -> list[Effect]:
        return self.feed(self.e.tick(self.now))

    def run_to(self, t: float) -> list[Effect]:
        """Move to ``t``: the audible peers are heard every 0.1 s, ticks at deadlines."""
        start = len(self.log)
        for _ in range(100_000):
            due = self.e.next_deadline()
            nxt = min(due, self._next_hear)
            if nxt > t:
                break
            self.now = max(self.now, nxt)
            if nxt == self._next_hear:
                self.hear()
                self._next_hear = self.now + 0.1
            else:
                self.tick()
        else:
            raise AssertionError("no progress")
        self.now = t
        return [e for _, e in self.log[start:]]

    def run(self, dt: float) -> list[Effect]:
        return self.run_to(self.now + dt)

    def until(self, pred: Any, limit: float = 10.0, step: float = 0.001) -> list[Effect]:
        start = len(self.log)
        end = self.now + limit
        while not pred():
            assert self.now < end, "condition not met in time"
            self.run(step)
        return [e for _, e in self.log[start:]]

    # -- making a lead ---------------------------------------------------------------

    def voters(self) -> list[str]:
        return sorted(n for n, v in self.views.items() if v.state is not LEFT)

    def elect(self) -> list[Effect]:
        """Campaign (timer), get every pre-vote and vote: this node leads."""
        out = self.until(lambda: self.e.role is Role.CANDIDATE)
        t = self.e.term + 1
        for n in self.voters():
            out += self.recv(n, Vote(t, True, True))
        assert self.e.term == t
        for n in self.voters():
            if self.e.role is Role.CANDIDATE:
                out += self.recv(n, Vote(t, True, False))
        assert self.e.role is Role.LEAD
        return out

    def ack_all(self, seq: int | None = None) -> None:
        for n in self.voters():
            self.recv(n, LeadAck(self.e.term, seq or self.hb_seq(), True, self.e.voter_set[0]))

    def hb_seq(self) -> int:
        hbs = [e.payload for _, e in self.log if isinstance(e, Publish)]
        return max(p.seq for p in hbs if isinstance(p, LeadHeartbeat))

    def follow(self, lead: str, term: int, seq: int = 1) -> list[Effect]:
        return self.recv(lead, LeadHeartbeat(term, lead, seq))


def sends(effects: Sequence[Effect], kind: type[Any] | None = None) -> list[Send]:
    return [
        e for e in effects if isinstance(e, Send) and (kind is None or isinstance(e.payload, kind))
    ]


def publishes(effects: Sequence[Effect], kind: type[Any]) -> list[Any]:
    return [e.payload for e in effects if isinstance(e, Publish) and isinstance(e.payload, kind)]


def events(effects: Sequence[Effect], kind: str | None = None) -> list[ElectionEvent]:
    return [e for e in effects if isinstance(e, ElectionEvent) and (kind is None or e.kind == kind)]


def persists(effects: Sequence[Effect]) -> list[Persist]:
    return [e for e in effects if isinstance(e, Persist)]


def vote_of(effects: Sequence[Effect], to: str) -> Vote:
    votes = [s.payload for s in sends(effects, Vote) if s.to == to]
    assert len(votes) == 1, effects
    v = votes[0]
    assert isinstance(v, Vote)
    return v


# ---- the vote rules, as a table ------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    candidate: str
    #: Requested term relative to the voter's term.
    dterm: int = 1
    my_priority: int = 10
    voter_term: int = 3
    voted_for: str | None = None
    #: Setup steps: "lead_fresh", "lead_stale", "hi_silent", "hi_dead", "hi_held",
    #: "nominated", "restarted", "cand_prio0".
    setup: tuple[str, ...] = ()
    #: Expected denial reason; "" = granted.
    deny: str = ""


CASES = [
    Case("grant_highest_reachable", HI),
    Case("stale_term", HI, dterm=-1, deny="stale_term"),
    Case("same_term_unvoted", HI, dterm=0),
    Case("already_voted_other", HI, dterm=0, voted_for=P, deny="already_voted"),
    Case("already_voted_same", HI, dterm=0, voted_for=HI),
    Case("sticky_lead_fresh", HI, setup=("lead_fresh",), deny="have_lead"),
    Case("sticky_lead_stale", HI, setup=("lead_stale",)),
    Case("lower_rank_other_reachable", LO, my_priority=0, deny="lower_rank"),
    Case("lower_rank_voter_itself", LO, setup=("hi_silent",), deny="lower_rank"),
    Case("higher_one_silent", P, my_priority=0, setup=("hi_silent",)),
    Case("higher_one_dead", P, my_priority=0, setup=("hi_dead",)),
    Case("higher_one_held", P, my_priority=0, setup=("hi_held",)),
    Case("priority_zero_candidate", Z, my_priority=0, setup=("hi_silent",), deny="not_eligible"),
    Case("nominated_beats_rank", LO, setup=("nominated",)),
    Case("nominated_beats_stickiness", LO, setup=("lead_fresh", "nominated")),
    Case("restarted_voter_waits", HI, setup=("restarted",), deny="starting"),
    Case("equal_priority_smaller_id_wins", LO, my_priority=0, setup=("twins",)),
    Case("equal_priority_larger_id_loses", P, my_priority=0, setup=("twins",), deny="lower_rank"),
]


def setup_case(case: Case) -> Rig:
    members = dict(PRIO)
    if "twins" in case.setup:
        # Only P and LO are eligible, with the same priority: the smaller id ranks first.
        assert LO < P
        members = {P: 5, LO: 5, Z: 0, HI: 0}
    rig = Rig(
        case.my_priority,
        members,
        term=case.voter_term,
        voted_for=case.voted_for,
    )
    if "restarted" not in case.setup:
        rig.run(TE)  # past the restart guard
    if "hi_silent" in case.setup or "hi_held" in case.setup:
        rig.audible.discard(HI)
    if "hi_held" in case.setup:
        # HI led and stepped down on the operator's word: left out of the ranking.
        rig.audible.add(HI)
        rig.follow(HI, rig.e.term)
        rig.recv(HI, StepDown(rig.e.term, "", "operator"))
    if "hi_dead" in case.setup:
        rig.member(HI, DEAD)
    if "lead_fresh" in case.setup or "lead_stale" in case.setup:
        rig.follow(HI, rig.e.term)
    if "nominated" in case.setup:
        rig.follow(HI, rig.e.term)
        rig.recv(HI, StepDown(rig.e.term, LO, "transfer"))
    rig.run(0.6 if "lead_stale" in case.setup or "hi_silent" in case.setup else 0.01)
    if "lead_fresh" in case.setup and "nominated" not in case.setup:
        rig.follow(HI, rig.e.term, seq=2)
    return rig


@pytest.mark.parametrize("pre", [True, False], ids=["pre", "real"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_vote_rule(case: Case, pre: bool) -> None:
    rig = setup_case(case)
    term_before, voted_before = rig.e.term, rig.e.voted_for
    t = term_before + case.dterm
    prio = 0 if case.candidate == Z else rig.views[case.candidate].priority
    out = rig.recv(case.candidate, VoteReq(t, pre, prio))
    v = vote_of(out, case.candidate)
    assert v.pre is pre
    if case.deny:
        assert (v.granted, v.reason) == (False, case.deny)
        assert v.term == term_before  # a denial carries the voter's own term
        assert (rig.e.term, rig.e.voted_for) == (term_before, voted_before)
        assert persists(out) == []
        return
    assert (v.granted, v.reason, v.term) == (True, "", t)
    if pre:
        # A pre-vote changes nothing.
        assert (rig.e.term, rig.e.voted_for) == (term_before, voted_before)
        assert persists(out) == []
    else:
        assert (rig.e.term, rig.e.voted_for) == (t, case.candidate)
        # Stored before the grant leaves.
        i_persist = out.index(Persist(t, case.candidate))
        i_vote = next(i for i, e in enumerate(out) if isinstance(e, Send) and e.payload == v)
        assert i_persist < i_vote


def test_unknown_or_dead_sender_gets_no_answer() -> None:
    rig = Rig()
    rig.run(TE)
    stranger = nid("stranger")
    assert rig.recv(stranger, VoteReq(5, True, 50)) == []
    rig.member(HI, DEAD)
    assert rig.recv(HI, VoteReq(5, False, 20)) == []
    assert rig.e.term == 0


def test_one_real_vote_per_term_even_across_requests_and_restart() -> None:
    rig = Rig(priority=0)
    rig.run(TE)
    assert vote_of(rig.recv(HI, VoteReq(4, False, 20)), HI).granted
    rig.audible.discard(HI)
    rig.run(0.6)  # HI silent: P now the best reachable
    out = rig.recv(P, VoteReq(4, False, 7))
    assert vote_of(out, P).reason == "already_voted"
    # The durable state, read back by a new process: still voted for HI in term 4.
    last = persists([e for _, e in rig.log])[-1]
    assert last == Persist(4, HI)
    again = Rig(priority=0, term=last.term, voted_for=last.voted_for)
    again.audible.discard(HI)
    again.run(0.6)
    assert vote_of(again.recv(P, VoteReq(4, False, 7)), P).reason == "already_voted"
    assert vote_of(again.recv(HI, VoteReq(4, False, 20)), HI).granted
    again.run(0.6)
    assert vote_of(again.recv(P, VoteReq(5, False, 7)), P).granted
    assert again.e.term == 5


def test_a_lost_term_means_no_vote_and_no_campaign_until_a_lead_is_heard() -> None:
    rig = Rig(priority=50, term_known=False)  # ranked first: it would stand at once
    out = rig.run(5 * TE)
    assert sends(out, VoteReq) == [] and persists(out) == [] and rig.e.role is Role.FOLLOWER
    for pre in (True, False):
        assert vote_of(rig.recv(HI, VoteReq(3, pre, 20)), HI).reason == "term_unknown"
    assert rig.e.term == 0 and rig.e.voted_for is None
    out = rig.follow(HI, 6)
    assert rig.e.term_known and rig.e.term == 6 and rig.e.lead == HI
    assert persists(out) == [Persist(6, None)]  # the learnt term is durable again
    assert sends(out, LeadAck)[0].payload == LeadAck(6, 1, True)
    rig.audible.discard(HI)  # the lead dies: this node may stand again
    out = rig.run(5 * TE)
    assert VoteReq(7, True, 50) in [s.payload for s in sends(out, VoteReq)]


def test_a_lost_term_alone_still_leads_itself() -> None:
    rig = Rig(priority=10, members={}, term_known=False)  # nobody else to have voted for
    rig.run(5 * TE)
    assert rig.e.role is Role.LEAD and rig.e.term == 1


def test_restarted_node_never_goes_back_in_term() -> None:
    rig = Rig(priority=0, term=7)
    out = rig.follow(HI, 6)
    assert rig.e.term == 7 and rig.e.lead is None
    assert sends(out, LeadAck)[0].payload == LeadAck(7, 1, False)
    assert rig.e.accepts(6, HI) is False
    assert rig.e.accepts(7, HI) is False  # no lead known in term 7
    assert rig.e.accepts(8, HI) is False  # a newer term counts only once proven


# ---- campaigning ---------------------------------------------------------------------


def test_follower_timer_and_rank_order() -> None:
    # Ranks: HI(20) > ME(15) > P(7) > LO(5). HI goes silent (it crashed): when ME's timer
    # fires HI is out of reach, so ME is the best-ranked node: no rank step, no deferring.
    rig = Rig(priority=15)
    rig.audible.discard(HI)
    out = rig.until(lambda: rig.e.role is Role.CANDIDATE)
    t = rig.now
    assert TE <= t <= TE + CFG.election_jitter + 0.002
    pre = sends(out, VoteReq)
    assert {s.to for s in pre} == set(PRIO)  # every live member, Z included
    assert {s.payload for s in pre} == {VoteReq(1, True, 15)}
    assert rig.e.term == 0  # a pre-vote does not bump the term


def test_only_nodes_that_can_win_stand_but_not_forever() -> None:
    # HI(20) stays reachable (it is heard) but never stands: ME (rank 1) defers to it each
    # time its timer fires, max_defer times, and only then campaigns (HI might be cut off
    # from the others while ME still hears it: the mesh must not stay without a lead).
    rig = Rig(priority=15)
    before = len(rig.log)
    out = rig.until(lambda: rig.e.role is Role.CANDIDATE, limit=30.0)
    assert sends([e for _, e in rig.log[:before]], VoteReq) == []
    assert len(sends(out, VoteReq)) == len(sends(out))  # nothing but the pre-vote round
    firing = TE + CFG.rank_step  # the first firing, at the earliest
    assert rig.now >= firing + CFG.max_defer * TE
    assert {s.payload for s in sends(out, VoteReq)} == {VoteReq(1, True, 15)}


def test_top_ranked_campaigns_after_election_timeout_plus_jitter() -> None:
    rig = Rig(priority=30)
    rig.until(lambda: rig.e.role is Role.CANDIDATE)
    assert TE <= rig.now <= TE + CFG.election_jitter + 0.002


def test_priority_zero_node_never_campaigns() -> None:
    rig = Rig(priority=0, members={P: 0, LO: 0})
    out = rig.run(30.0)
    assert rig.e.role is Role.FOLLOWER and sends(out) == []
    assert rig.e.next_deadline() == math.inf
    assert rig.e.status(rig.now).reason == "no eligible node"


def test_pre_vote_majority_then_real_vote_then_lead() -> None:
    rig = Rig(priority=30)
    rig.until(lambda: rig.e.role is Role.CANDIDATE)
    # n = 5 -> quorum 3: ourselves + 2.
    assert rig.e.quorum() == 3
    assert rig.recv(HI, Vote(1, True, True)) == []
    out = rig.recv(P, Vote(1, True, True))
    assert rig.e.term == 1 and rig.e.voted_for == ME
    assert isinstance(out[0], Persist) and out[0] == Persist(1, ME)
    real = sends(out, VoteReq)
    assert real and {s.payload for s in real} == {VoteReq(1, False, 30)}
    # A late pre-vote answer is ignored, a real one counts.
    assert rig.recv(LO, Vote(1, True, True)) == []
    assert rig.e.role is Role.CANDIDATE
    rig.recv(HI, Vote(1, True, False))
    out = rig.recv(LO, Vote(1, True, False))
    assert rig.e.role is Role.LEAD and rig.e.lead == ME
    assert events(out) == [ElectionEvent(LEAD_ELECTED, 1, ME, "won")]
    assert publishes(out, LeadHeartbeat) == [LeadHeartbeat(1, ME, 1)]


def test_votes_from_non_members_do_not_count() -> None:
    rig = Rig(priority=30)
    rig.until(lambda: rig.e.role is Role.CANDIDATE)
    for i in range(5):
        rig.recv(nid(f"ghost{i}"), Vote(1, True, True))
    assert rig.e.term == 0
    rig.member(P, LEFT)
    rig.recv(P, Vote(1, True, True))
    assert rig.e.term == 0


def test_candidate_without_reachable_quorum_stays_quiet() -> None:
    rig = Rig(priority=30)
    rig.audible = {HI}  # only one other reachable: 2 < 3
    out = rig.run(3.0)
    assert rig.e.role is Role.CANDIDATE
    assert sends(out, VoteReq) == []
    assert rig.e.term == 0  # pre-vote keeps the term still
    assert rig.e.status(rig.now).reason == "no quorum"


def test_candidate_retries_after_jittered_candidate_retry() -> None:
    rig = Rig(priority=30)
    rig.until(lambda: rig.e.role is Role.CANDIDATE)
    t0 = rig.now
    out = rig.until(lambda: len(sends([e for _, e in rig.log], VoteReq)) > len(PRIO))
    dt = rig.now - t0
    assert 0.5 * CFG.candidate_retry - 0.002 <= dt <= 1.5 * CFG.candidate_retry + 0.002
    assert {s.payload for s in sends(out, VoteReq)} == {VoteReq(1, True, 30)}


def test_denial_with_a_newer_term_makes_the_candidate_a_follower() -> None:
    rig = Rig(priority=30)
    rig.until(lambda: rig.e.role is Role.CANDIDATE)
    out = rig.recv(HI, Vote(9, False, True, "have_lead"))
    assert rig.e.role is Role.FOLLOWER and rig.e.term == 9 and rig.e.voted_for is None
    assert persists(out) == [Persist(9, None)]


def test_candidate_seeing_a_lead_of_its_term_follows_it() -> None:
    rig = Rig(priority=30)
    rig.until(lambda: rig.e.role is Role.CANDIDATE)
    for n in (HI, P):
        rig.recv(n, Vote(1, True, True))
    assert rig.e.term == 1
    out = rig.follow(LO, 1)
    assert rig.e.role is Role.FOLLOWER and rig.e.lead == LO
    assert events(out) == [ElectionEvent(LEAD_ELECTED, 1, LO, "heartbeat")]
    assert sends(out, LeadAck)[0] == Send(LO, LeadAck(1, 1, True))


def test_single_node_mesh_elects_itself() -> None:
    rig = Rig(priority=1, members={})
    rig.until(lambda: rig.e.role is Role.LEAD)
    assert rig.e.term == 1 and rig.e.has_lease(rig.now)


def test_fixed_quorum() -> None:
    rig = Rig(priority=30, cfg=ElectionConfig(quorum=2))
    assert rig.e.quorum() == 2
    rig.until(lambda: rig.e.role is Role.CANDIDATE)
    rig.recv(LO, Vote(1, True, True))
    rig.recv(LO, Vote(1, True, False))
    assert rig.e.role is Role.LEAD


def test_member_count_includes_dead_not_left() -> None:
    rig = Rig()
    assert rig.e.member_count() == 5 and rig.e.quorum() == 3
    rig.member(HI, DEAD)
    rig.member(P, SUSPECT)
    assert rig.e.member_count() == 5
    rig.member(LO, LEFT)
    assert rig.e.member_count() == 4 and rig.e.quorum() == 3
    rig.views.pop(HI)  # forgotten by membership
    rig.push()
    assert rig.e.member_count() == 3 and rig.e.quorum() == 2


# ---- following -----------------------------------------------------------------------


def test_follower_adopts_newer_term_persists_before_acking() -> None:
    rig = Rig()
    out = rig.follow(HI, 4, seq=9)
    assert out[0] == Persist(4, None)
    assert out.index(Persist(4, None)) < out.index(Send(HI, LeadAck(4, 9, True)))
    assert rig.e.lead == HI and rig.e.term == 4
    assert events(out) == [ElectionEvent(LEAD_ELECTED, 4, HI, "heartbeat")]
    assert rig.e.accepts(4, HI) and not rig.e.accepts(4, P) and not rig.e.accepts(3, HI)


def test_heartbeat_naming_another_lead_is_ignored() -> None:
    rig = Rig()
    assert rig.recv(HI, LeadHeartbeat(4, P, 1)) == [
        Refused("lead_not_sender", HI, "LEAD_HEARTBEAT")
    ]
    assert rig.e.term == 0 and rig.e.lead is None


def test_no_switching_leads_within_a_term() -> None:
    rig = Rig()
    rig.follow(HI, 2)
    assert rig.follow(P, 2) == [Refused("second_lead", P, "term 2")]
    assert rig.e.lead == HI and rig.e.accepts(2, HI) and not rig.e.accepts(2, P)
    out = rig.follow(P, 3)
    assert events(out) == [
        ElectionEvent(LEAD_LOST, 2, HI, "higher_term"),
        ElectionEvent(LEAD_ELECTED, 3, P, "heartbeat"),
    ]


def test_lead_silent_then_lost() -> None:
    rig = Rig(priority=0)
    rig.follow(HI, 2)
    rig.audible.discard(HI)
    out = rig.run(TE + 0.01)
    assert events(out, LEAD_LOST) == [ElectionEvent(LEAD_LOST, 2, HI, "lead_silent")]
    assert rig.e.lead is None


@pytest.mark.parametrize(("state", "reason"), [(DEAD, "lead_dead"), (LEFT, "lead_left")])
def test_lead_marked_down_by_membership_is_lost_at_once(state: MemberState, reason: str) -> None:
    rig = Rig(priority=10)
    rig.follow(HI, 2)
    out = rig.member(HI, state)
    assert events(out) == [ElectionEvent(LEAD_LOST, 2, HI, reason)]
    # ... and the campaign starts in rank order right away (ME is the best left: rank 0).
    rig.until(lambda: rig.e.role is Role.CANDIDATE, limit=CFG.election_jitter + 0.01)


def test_stale_lead_told_and_refused() -> None:
    rig = Rig()
    rig.follow(HI, 5)
    out = rig.recv(P, LeadHeartbeat(4, P, 3))
    assert sends(out) == [Send(P, LeadAck(5, 3, False))]
    assert rig.e.lead == HI and rig.e.term == 5


# ---- leading and the lease -----------------------------------------------------------


def test_lead_heartbeats_and_lease_from_majority_acks() -> None:
    rig = Rig(priority=30)
    rig.elect()
    won = rig.now
    assert not rig.e.has_lease(won)  # nobody acknowledged yet
    rig.recv(HI, LeadAck(1, 1, True))
    assert not rig.e.has_lease(rig.now)  # 2 of 3
    rig.recv(P, LeadAck(1, 1, True))
    assert rig.e.has_lease(rig.now)
    assert rig.e.lease_expiry() == pytest.approx(won + TE - CFG.lease_margin)
    out = rig.run(CFG.lead_heartbeat_interval)
    assert publishes(out, LeadHeartbeat) == [LeadHeartbeat(1, ME, 2)]
    rig.recv(HI, LeadAck(1, 2, True))
    rig.recv(LO, LeadAck(1, 2, True))
    assert rig.e.lease_expiry() == pytest.approx(won + 0.1 + TE - CFG.lease_margin)


def test_lead_that_loses_quorum_loses_its_lease_in_time_then_steps_down() -> None:
    rig = Rig(priority=30)
    rig.elect()
    rig.ack_all(1)
    last_acked_send = rig.now
    lease_end = last_acked_send + TE - CFG.lease_margin
    # From now on only HI answers: 2 of 5 < 3.
    lapsed_at = None
    for _ in range(40):
        rig.run(CFG.lead_heartbeat_interval / 4)
        if lapsed_at is None and not rig.e.has_lease(rig.now):
            lapsed_at = rig.now
            # Decides nothing now, and says so: no lead in its status.
            st = rig.e.status(rig.now)
            assert st.lead is None and st.reason == "lease lapsed: no quorum acks"
        if rig.e.role is not Role.LEAD:
            break
        rig.recv(HI, LeadAck(1, rig.hb_seq(), True))
    # Voters refuse others until TE after the heartbeat they acknowledged: the lease ends
    # before, so no other lead can hold one at the same time.
    assert lapsed_at is not None and lapsed_at <= lease_end + CFG.lead_heartbeat_interval / 4
    assert lapsed_at < last_acked_send + TE
    stepped = events([e for _, e in rig.log], STEPPED_DOWN)
    assert stepped == [ElectionEvent(STEPPED_DOWN, 1, ME, "lost_quorum")]
    t_down = next(t for t, e in rig.log if isinstance(e, ElectionEvent) and e.kind == STEPPED_DOWN)
    # It kept heartbeating through the grace in case the acks came back (a stall).
    assert t_down == pytest.approx(lease_end + CFG.lease_grace, abs=CFG.lead_heartbeat_interval)
    assert rig.e.lead is None and not rig.e.has_lease(rig.now)
    assert rig.e.status(rig.now).reason in ("election in progress", "no quorum")


def test_a_lead_whose_lease_lapsed_leads_on_when_a_majority_acks_again() -> None:
    # Its event loop stalled past the lease (a loaded host): the followers did not elect
    # anyone meanwhile, so their acks of its next heartbeat give it a fresh lease, with no
    # election and no new term.
    rig = Rig(priority=30)
    rig.elect()
    rig.ack_all(1)
    rig.run(TE)  # nobody answers: the lease lapses
    assert rig.e.role is Role.LEAD and not rig.e.has_lease(rig.now)
    rig.ack_all(rig.hb_seq())
    assert rig.e.has_lease(rig.now) and rig.e.term == 1
    assert rig.e.status(rig.now).lead == ME
    assert events([e for _, e in rig.log], STEPPED_DOWN) == []


def test_lead_without_any_ack_steps_down() -> None:
    rig = Rig(priority=30)
    rig.elect()
    won = rig.now
    out = rig.run(TE + CFG.lease_grace)
    assert events(out) == [ElectionEvent(STEPPED_DOWN, 1, ME, "lost_quorum")]
    t_down = next(t for t, e in rig.log if isinstance(e, ElectionEvent) and e.kind == STEPPED_DOWN)
    assert t_down == pytest.approx(won + TE - CFG.lease_margin + CFG.lease_grace)
    # It steps down quietly: its STEP_DOWN could not reach a majority anyway.
    assert publishes(out, StepDown) == []


def test_a_refusing_ack_moves_no_term() -> None:
    # Anyone can claim a newer term in a LEAD_ACK: the lead moves only on a proof of it
    # (a term or lead certificate, which the refusing node sends along when it has one).
    rig = Rig(priority=30)
    rig.elect()
    assert rig.recv(LO, LeadAck(3, 1, False)) == []
    assert rig.e.role is Role.LEAD and rig.e.term == 1
    out = rig.recv(
        LO, LeadCert(3, HI, (CertVote(HI, b""), CertVote(LO, b""), CertVote(P, b"")), True)
    )
    assert out[0] == Persist(3, None)
    assert events(out) == [ElectionEvent(STEPPED_DOWN, 1, ME, "higher_term")]
    assert rig.e.role is Role.FOLLOWER and rig.e.term == 3


def test_lead_denies_votes_and_ignores_same_term_heartbeats() -> None:
    rig = Rig(priority=30)
    rig.elect()
    rig.ack_all(1)
    assert vote_of(rig.recv(HI, VoteReq(2, False, 20)), HI).reason == "have_lead"
    assert rig.e.term == 1  # stickiness comes before term adoption
    assert rig.recv(HI, LeadHeartbeat(1, HI, 1)) == [Refused("second_lead", HI, "term 1")]
    assert rig.e.role is Role.LEAD
    out = rig.recv(HI, LeadHeartbeat(2, HI, 1))
    assert events(out)[0] == ElectionEvent(STEPPED_DOWN, 1, ME, "higher_term")
    assert rig.e.lead == HI


# ---- takeover, transfer, step-down ---------------------------------------------------


def lead_with_acks(rig: Rig, dt: float) -> list[Effect]:
    """Run ``dt`` as lead, every voter acknowledging every heartbeat."""
    out: list[Effect] = []
    end = rig.now + dt
    while rig.now < end - 1e-9 and rig.e.role is Role.LEAD:
        out += rig.run(min(CFG.lead_heartbeat_interval, end - rig.now))
        if rig.e.role is Role.LEAD:
            rig.ack_all()
    return out


def test_priority_takeover_after_the_stability_window_and_not_before() -> None:
    members = {LO: 5, P: 7, Z: 0}
    rig = Rig(priority=10, members=members)
    rig.elect()
    rig.ack_all(1)
    lead_with_acks(rig, 1.0)
    # HI (priority 20) joins.
    rig.member(HI, ALIVE, 20)
    rig.audible.add(HI)
    rig.hear(HI)
    joined = rig.now
    out = lead_with_acks(rig, CFG.stability_window - 0.15)
    assert rig.e.role is Role.LEAD and publishes(out, StepDown) == []
    out = lead_with_acks(rig, 0.3)
    assert rig.e.role is Role.FOLLOWER
    sd = StepDown(1, HI, "priority_takeover")
    assert publishes(out, StepDown) == [sd]
    assert {s.to for s in sends(out, StepDown)} == {HI, LO, P, Z}
    assert events(out, STEPPED_DOWN) == [ElectionEvent(STEPPED_DOWN, 1, ME, "priority_takeover")]
    t_down = next(t for t, e in rig.log if isinstance(e, ElectionEvent) and e.kind == STEPPED_DOWN)
    assert CFG.stability_window <= t_down - joined <= CFG.stability_window + 0.15
    # The old lead votes for its successor (and does not campaign against it).
    assert vote_of(rig.recv(HI, VoteReq(2, True, 20)), HI).granted


def test_flapping_priority_restarts_the_stability_clock() -> None:
    members = {LO: 5, P: 7, Z: 0, HI: 20}
    rig = Rig(priority=30, members=members)
    rig.elect()
    rig.ack_all(1)
    # HI flaps between 20 and 40 (above us) every 2 s: never stable for 3 s.
    for k in range(6):
        rig.member(HI, priority=40 if k % 2 == 0 else 20)
        out = lead_with_acks(rig, 2.0)
        assert rig.e.role is Role.LEAD, k
        assert publishes(out, StepDown) == []
    # Stable at 40: handed over after the window.
    rig.member(HI, priority=40)
    changed = rig.now
    lead_with_acks(rig, CFG.stability_window + 0.2)
    assert rig.e.role is Role.FOLLOWER
    t_down = next(t for t, e in rig.log if isinstance(e, ElectionEvent) and e.kind == STEPPED_DOWN)
    assert t_down - changed >= CFG.stability_window


def test_own_priority_change_restarts_the_clocks_and_zero_steps_down() -> None:
    rig = Rig(priority=30)
    rig.elect()
    rig.ack_all(1)
    lead_with_acks(rig, 5.0)
    out = rig.feed(rig.e.set_priority(15, rig.now))  # HI (20) is now above us
    assert out == [] and rig.e.role is Role.LEAD
    out = lead_with_acks(rig, CFG.stability_window - 0.2)
    assert rig.e.role is Role.LEAD
    out = lead_with_acks(rig, 0.4)
    assert publishes(out, StepDown) == [StepDown(1, HI, "priority_takeover")]
    rig2 = Rig(priority=30, seed=1)
    rig2.elect()
    out = rig2.feed(rig2.e.set_priority(0, rig2.now))
    assert events(out) == [ElectionEvent(STEPPED_DOWN, 1, ME, "operator")]
    assert rig2.e.role is Role.FOLLOWER and rig2.e.lead is None
    assert rig2.e.next_deadline() == math.inf
    assert sends(rig2.run(5.0), VoteReq) == []


def test_transfer_to_a_lower_priority_node_and_manual_hold() -> None:
    rig = Rig(priority=30)
    rig.elect()
    rig.ack_all(1)
    out = rig.feed(rig.e.transfer(LO, rig.now))
    sd = StepDown(1, LO, "transfer")
    assert publishes(out, StepDown) == [sd]
    assert {s.to for s in sends(out, StepDown)} == set(PRIO)
    assert events(out) == [ElectionEvent(STEPPED_DOWN, 1, ME, "transfer")]
    assert rig.e.role is Role.FOLLOWER
    # We vote for the nominee although we (and HI) rank above it.
    out = rig.recv(LO, VoteReq(2, False, 5))
    assert vote_of(out, LO).granted
    rig.follow(LO, 2)
    assert rig.e.lead == LO


def test_transferred_lead_does_not_hand_back_during_manual_hold() -> None:
    # We are LO's future: a follower that gets the transfer, wins, and stays lead.
    rig = Rig(priority=5, members={HI: 20, P: 7, LO: 0, Z: 0})
    rig.follow(HI, 1)
    out = rig.recv(HI, StepDown(1, ME, "transfer"))
    assert events(out) == [ElectionEvent(LEAD_LOST, 1, HI, "stepped_down")]
    # Nominated: campaigns at once.
    assert {s.payload for s in sends(out, VoteReq)} == {VoteReq(2, True, 5)}
    for n in rig.voters():
        rig.recv(n, Vote(2, True, True))
    for n in rig.voters():
        if rig.e.role is Role.CANDIDATE:
            rig.recv(n, Vote(2, True, False))
    assert rig.e.role is Role.LEAD
    out = lead_with_acks(rig, 2 * CFG.stability_window)
    assert rig.e.role is Role.LEAD and publishes(out, StepDown) == []


def test_step_down_by_operator_holds_this_node_out() -> None:
    rig = Rig(priority=30)
    rig.elect()
    rig.ack_all(1)
    out = rig.feed(rig.e.step_down(rig.now))
    assert publishes(out, StepDown) == [StepDown(1, "", "operator")]
    assert events(out) == [ElectionEvent(STEPPED_DOWN, 1, ME, "operator")]
    t0 = rig.now
    # We vote for others meanwhile (we do not count ourselves as ranked above them)...
    rig.run(TE + 0.05)
    assert vote_of(rig.recv(LO, VoteReq(2, True, 5)), LO).granted is False  # HI ranks above
    rig.audible.discard(HI)
    rig.run(TE + 0.05)
    assert vote_of(rig.recv(P, VoteReq(2, True, 7)), P).granted
    # ... and never campaign during the hold.
    out = rig.run_to(t0 + CFG.step_down_hold - 0.01)
    assert sends(out, VoteReq) == [] and rig.e.role is Role.FOLLOWER
    out = rig.run(1.0)
    assert sends(out, VoteReq) != []


def test_followers_campaign_at_once_after_a_step_down_without_successor() -> None:
    rig = Rig(priority=10, members={HI: 20, LO: 5, P: 7, Z: 0})
    rig.follow(HI, 1)
    rig.run(0.05)
    t0 = rig.now
    out = rig.recv(HI, StepDown(1, "", "operator"))
    assert events(out) == [ElectionEvent(LEAD_LOST, 1, HI, "stepped_down")]
    rig.until(lambda: rig.e.role is Role.CANDIDATE, limit=1.0)
    # HI is held: ME is rank 0, so it campaigns within the jitter.
    assert rig.now - t0 <= CFG.election_jitter + 0.002
    # A second copy (PUB + direct) changes nothing.
    assert rig.recv(HI, StepDown(1, "", "operator")) == []


def test_late_heartbeat_after_step_down_is_not_obeyed() -> None:
    rig = Rig(priority=10)
    rig.follow(HI, 1)
    rig.recv(HI, StepDown(1, LO, "transfer"))
    assert rig.recv(HI, LeadHeartbeat(1, HI, 2)) == []
    assert rig.e.lead is None


def test_commands_on_a_non_lead() -> None:
    rig = Rig()
    with pytest.raises(LocalProtocolError, match="not the lead; the lead is unknown"):
        rig.e.transfer(HI, rig.now)
    with pytest.raises(LocalProtocolError, match="not the lead"):
        rig.e.step_down(rig.now)
    with pytest.raises(LocalProtocolError, match="no lead to ask"):
        rig.e.request_transfer(P, rig.now)
    rig.follow(HI, 1)
    with pytest.raises(LocalProtocolError, match=f"not the lead; the lead is {HI}"):
        rig.e.step_down(rig.now)
    assert rig.e.request_transfer(P, rig.now) == [Send(HI, TransferReq(P))]
    assert rig.e.request_transfer("", rig.now) == [Send(HI, TransferReq(""))]


def test_transfer_target_checks() -> None:
    rig = Rig(priority=30)
    rig.elect()
    for target, msg in [
        (ME, "already the lead"),
        (Z, "priority 0"),
        (nid("nobody"), "not a live member"),
    ]:
        with pytest.raises(LocalProtocolError, match=msg):
            rig.e.transfer(target, rig.now)
    rig.member(P, DEAD)
    with pytest.raises(LocalProtocolError, match="not a live member"):
        rig.e.transfer(P, rig.now)
    assert rig.e.role is Role.LEAD


def test_lead_carries_out_relayed_requests() -> None:
    rig = Rig(priority=30)
    rig.elect()
    assert rig.recv(LO, TransferReq(Z)) == []  # invalid target: ignored
    assert rig.e.role is Role.LEAD
    out = rig.recv(LO, TransferReq(P))
    assert publishes(out, StepDown) == [StepDown(1, P, "transfer")]
    rig2 = Rig(priority=30)
    rig2.elect()
    out = rig2.recv(LO, TransferReq(""))
    assert publishes(out, StepDown) == [StepDown(1, "", "operator")]


def test_request_transfer_on_the_lead_acts_directly() -> None:
    rig = Rig(priority=30)
    rig.elect()
    out = rig.e.request_transfer(HI, rig.now)
    assert publishes(out, StepDown) == [StepDown(1, HI, "transfer")]


def test_leave_as_lead_announces_shutdown_and_ends() -> None:
    rig = Rig(priority=30)
    rig.elect()
    out = rig.feed(rig.e.leave(rig.now))
    assert publishes(out, StepDown) == [StepDown(1, "", "shutdown")]
    assert events(out) == [ElectionEvent(STEPPED_DOWN, 1, ME, "shutdown")]
    assert rig.e.next_deadline() == math.inf
    assert rig.e.tick(rig.now + 5) == []
    assert rig.e.receive(HI, VoteReq(9, False, 20), rig.now) == []
    with pytest.raises(LocalProtocolError):
        rig.e.request_transfer("", rig.now)


# ---- status --------------------------------------------------------------------------


def test_status_reasons() -> None:
    rig = Rig(priority=10)
    assert rig.e.status(0.0).reason == "starting"
    rig.audible = set()
    rig.run(TE + 0.01)
    assert rig.e.status(rig.now).reason == "no quorum"
    rig.audible = set(PRIO)
    rig.run(0.11)
    assert rig.e.status(rig.now).reason == "election in progress"
    rig.follow(HI, 3)
    st = rig.e.status(rig.now)
    assert (st.lead, st.term, st.since, st.role, st.reason) == (HI, 3, rig.now, Role.FOLLOWER, "")
    zero = Rig(priority=0, members={P: 0, LO: 0, Z: 0})
    zero.run(1.0)
    assert zero.e.status(zero.now).reason == "no eligible node"


# ---- config --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {"election_timeout": 0.0},
        {"lead_heartbeat_interval": -1.0},
        {"candidate_retry": 0.0},
        {"election_jitter": -0.1},
        {"rank_step": -1.0},
        {"quorum": -1},
        {"stability_window": math.inf},
        {"lease_margin": 0.5},
        {"lead_heartbeat_interval": 0.4},
    ],
)
def test_bad_config_is_refused_when_the_machine_is_built(changes: dict[str, Any]) -> None:
    cfg = dataclasses.replace(CFG, **changes)
    with pytest.raises(ConfigError, match=r"\[election\]"):
        Election(ME, 1, cfg, 0.0, random.Random(0))


def test_bad_priority_or_term_refused() -> None:
    with pytest.raises(ConfigError):
        Election(ME, -1, CFG, 0.0, random.Random(0))
    with pytest.raises(ConfigError):
        Election(ME, 1, CFG, 0.0, random.Random(0), term=-1)


def test_config_defaults_and_toml_section(tmp_path: Path) -> None:
    assert Config().election == ElectionConfig()
    assert (CFG.lead_heartbeat_interval, CFG.election_timeout, CFG.election_jitter) == (
        0.1,
        0.5,
        0.1,
    )
    assert (CFG.rank_step, CFG.lease_margin, CFG.candidate_retry) == (0.1, 0.1, 0.2)
    assert (CFG.stability_window, CFG.step_down_hold, CFG.manual_hold, CFG.quorum) == (
        3.0,
        10.0,
        300.0,
        0,
    )
    path = tmp_path / "meshd.toml"
    path.write_text("[election]\nelection_timeout = 1\nquorum = 2\nstability_window = 5.5\n")
    cfg = load_file(path)
    assert cfg.election == dataclasses.replace(
        CFG, election_timeout=1.0, quorum=2, stability_window=5.5
    )
    path.write_text('[election]\nquorum = "two"\n')
    with pytest.raises(ConfigError, match="quorum"):
        load_file(path)
    path.write_text("[election]\nbogus = 1\n")
    with pytest.raises(ConfigError, match="unknown setting"):
        load_file(path)
