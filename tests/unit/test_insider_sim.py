"""The insider of ``tests/integration/test_insider.py`` in the simulator, at 50 nodes.

A compromised member (it holds the mesh key and its own node key: every frame it sends
is authenticated as coming from it) against 49 honest simulated hosts that sign their
votes with real Ed25519 keys. Its own Core keeps running honestly underneath, as the
integration test's in-process insider does; the crafted frames go out through the
simulated network from its host (direct or published). Each attack of the trust issue is
refused (the :class:`~meshd.effects.Refused` effects of the honest hosts, by reason, or a
denied vote), and the mesh is healthy afterwards: the same lead in the same term
everywhere, every member alive everywhere, the forged task copy nowhere, a delegated task
done with its real result.

Beyond the integration test: one MEMBER_UPDATE of fabricated members (valid info that
an insider mints with the mesh key) must not take the quorum away. It does on the code
before the lead-decided voter set; with it, it still does before the lead decided the
first set (a strict xfail until that window closes).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Any

import pytest

from meshd.config import TaskConfig
from meshd.core import Core
from meshd.effects import Publish, Refused, Send
from meshd.election import Election
from meshd.sim import SimMesh, fake_info, sim_identity
from meshd.wire.messages import (
    CertVote,
    LeadAck,
    LeadCert,
    LeadHeartbeat,
    MemberUpdate,
    Payload,
    StepDown,
    TaskUpdate,
    Vote,
    VoteReq,
)
from meshd.wire.records import MemberRecord, MemberState, TaskState
from meshd.wire.schema import MAX_COUNTER

N = 50
#: n0 is the insider (priority 0: it can never lead, and runs no tasks).
PRIORITIES = (0, *(10 * i for i in range(1, N)))
FORGED: dict[str, Any] = {"slept": "forged"}


class Insider:
    """A 50-node mesh, its insider, and what the honest hosts refused."""

    def __init__(self) -> None:
        self.mesh = SimMesh(PRIORITIES, seed=11, config=TaskConfig(default_timeout=60.0))
        self.net = self.mesh.net
        self.me = self.mesh.ids[0]
        self.honest = self.mesh.ids[1:]
        self._honest = frozenset(self.honest)
        self.sign = sim_identity("n0").sign
        #: reason -> honest nodes that refused a frame of the insider for it.
        self.refused: dict[str, set[str]] = defaultdict(set)
        #: reason -> honest nodes that denied the insider a vote for it.
        self.denied: dict[str, set[str]] = defaultdict(set)
        self.granted: list[tuple[str, Vote]] = []
        self.net.taps.append(self._tap)

    def _tap(self, now: float, node: str, eff: object) -> None:
        if node not in self._honest:
            return
        if isinstance(eff, Refused) and eff.sender == self.me:
            self.refused[eff.reason].add(node)
        elif isinstance(eff, Send) and eff.to == self.me and isinstance(eff.payload, Vote):
            vote = eff.payload
            if vote.granted:
                self.granted.append((node, vote))
            else:
                self.denied[vote.reason].add(node)

    def core(self, node: str) -> Core:
        return self.mesh.node(node).core

    def send(self, to: str, payload: Payload) -> None:
        self.net.apply(self.me, [Send(to, payload)])

    def publish(self, payload: Payload) -> None:
        self.net.apply(self.me, [Publish(payload)])

    def agreed(self) -> tuple[str, int] | None:
        """(lead, term) every honest node agrees on, if any."""
        seen = {(self.core(n).election.lead, self.core(n).election.term) for n in self.honest}
        if len(seen) == 1:
            lead, term = seen.pop()
            if lead is not None:
                return lead, term
        return None

    def all_alive(self) -> bool:
        """Every honest node holds every other member (the insider too) alive."""
        everyone = set(self.mesh.ids)
        for n in self.honest:
            views = {v.info.node_id: v.state for v in self.core(n).members()}
            if any(views.get(x) is not MemberState.ALIVE for x in everyone - {n}):
                return False
        return True

    def start(self) -> tuple[str, int]:
        net = self.net
        assert net.run_until(lambda: self.mesh.settled_lead() is not None, 15.0) is not None
        net.advance(5.0)  # membership settles at 50 (and the lead's voter set, if any)
        before = self.agreed()
        assert before is not None and self.all_alive()
        assert not self.refused
        return before


def test_an_insider_cannot_lead_wedge_terms_rewrite_tasks_or_speak_for_others() -> None:
    sim = Insider()
    lead, term = before = sim.start()
    follower = sim.honest[0] if sim.honest[0] != lead else sim.honest[1]
    me = sim.me
    net = sim.net

    # 1. Terms: a LEAD_ACK, vote requests and certificates naming huge terms.
    sim.send(lead, LeadAck(MAX_COUNTER, 1, False))
    for d in sim.honest:
        sim.send(d, VoteReq(term + 1000, False, 100))
        sim.send(d, VoteReq(MAX_COUNTER, True, 100))
    # 2. Leadership without votes: heartbeats of a newer term, a certificate holding only
    #    the insider's own "vote", and one with a forged vote of every real member.
    own = sim.sign(b"not a vote")
    for d in sim.honest:
        sim.send(d, LeadHeartbeat(term + 1, me, 1))
        sim.send(d, LeadCert(term + 1, me, (CertVote(me, own),)))
        sim.send(d, LeadCert(term + 1, me, tuple(CertVote(x, own) for x in [me, *sim.honest])))
    sim.publish(LeadHeartbeat(term + 1, me, 2))
    net.advance(0.05)
    # 3. A step-down in the lead's name (the envelope's sender is the insider).
    sim.publish(StepDown(term, me, "transfer"))
    net.advance(0.05)
    # 4. Speaking for others: "the lead left" with the lead's own info, and "the follower
    #    is suspect" at the largest incarnation the wire carries.
    lead_view = sim.core(me).get(lead)
    f_view = sim.core(me).get(follower)
    assert lead_view is not None and f_view is not None
    left = MemberRecord(lead_view.info, MemberState.LEFT)
    suspect = MemberRecord(
        dataclasses.replace(f_view.info, incarnation=MAX_COUNTER), MemberState.SUSPECT
    )
    for d in sim.honest:
        sim.send(d, MemberUpdate((left,)))
    sim.send(follower, MemberUpdate((suspect,)))
    sim.publish(MemberUpdate((left, suspect)))
    net.advance(0.5)

    # Every kind is refused, by every honest host it reached.
    everyone = set(sim.honest)
    assert not sim.granted, sim.granted[:3]
    assert sim.denied["term_jump"] == everyone  # VOTE_REQ at MAX_COUNTER
    assert sim.denied["not_eligible"] == everyone  # priority 0, term + 1000
    assert sim.refused["lead_unproven"] == everyone
    assert sim.refused["bad_certificate"] == everyone
    assert sim.refused["step_down_not_lead"] == everyone
    assert sim.refused["incarnation_jump"] == everyone  # about the follower, or about us
    assert sim.agreed() == before

    # 5. Rewriting a task: a copy of a running task, marked complete by the insider at the
    #    lead's term with seq + 1000, sent to every node; and one at (MAX_COUNTER,
    #    MAX_COUNTER) published.
    task_id = sim.mesh.submit(follower, "sleep", {"seconds": 2.0})

    def running() -> bool:
        tasks = sim.core(me).tasks
        copy = tasks.copies.get(task_id) if tasks is not None else None
        return copy is not None and copy.task.state is TaskState.RUNNING

    assert net.run_until(running, 10.0) is not None, "the insider never saw the task run"
    tasks = sim.core(me).tasks
    assert tasks is not None
    copy = tasks.copies[task_id]
    forged_task = dataclasses.replace(copy.task, state=TaskState.COMPLETE, result=FORGED)
    forged = dataclasses.replace(copy, seq=copy.seq + 1000, task=forged_task)
    for d in sim.honest:
        sim.send(d, TaskUpdate(forged.seq, (forged,)))
    far = dataclasses.replace(copy, term=MAX_COUNTER, seq=MAX_COUNTER, task=forged_task)
    sim.publish(TaskUpdate(MAX_COUNTER, (far,)))
    net.advance(0.05)
    assert sim.refused["task_update_not_lead"] == everyone
    for d in sim.honest:
        held = sim.mesh.task(d, task_id)
        assert held is not None and held.result != FORGED, d

    done = net.run_until(lambda: sim.mesh.terminal_everywhere([task_id], sim.mesh.ids), 20.0)
    assert done is not None, "the task did not finish"
    for d in sim.honest:
        held = sim.mesh.task(d, task_id)
        assert held is not None and held.state is TaskState.COMPLETE
        assert held.result == {"message": None, "slept": 2.0}

    # The mesh is whole: the same lead in the same term everywhere, every member alive
    # (the insider too: nobody was declared gone), the follower's incarnation small.
    net.advance(3.0)
    assert sim.agreed() == before
    assert sim.mesh.settled_lead() == lead
    assert sim.all_alive()
    assert sim.core(follower).self_info.incarnation < 1000
    assert all(sim.core(n).election.term == term for n in sim.mesh.ids)
    echo = sim.mesh.submit(lead, "echo", {"message": "still here"})
    assert net.run_until(lambda: sim.mesh.terminal_everywhere([echo], sim.mesh.ids), 10.0)
    result = sim.mesh.task(sim.honest[-1], echo)
    assert result is not None and result.result == {"message": "still here", "slept": 0.0}


#: The lead-decided voter set (test_voter_set_sim.py), under way as this is written.
VOTER_SET = hasattr(Election, "voter_set")
GHOSTS = (
    "Election.member_count: every member not LEFT counts in the quorum, members known only"
    " from one member's gossip too (DEAD ones until forget_after, 24 h): one MEMBER_UPDATE"
    " of fabricated members (an insider mints valid info with the mesh key) takes the"
    " quorum away, the lead loses its lease and no lead is elected"
)


def fabricated_members_after(wait: float) -> None:
    """One published MEMBER_UPDATE of N + 2 members that never ran, ``wait`` s after the
    first lead settled: the lead keeps its lead."""
    sim = Insider()
    assert sim.net.run_until(lambda: sim.mesh.settled_lead() is not None, 15.0) is not None
    sim.net.advance(wait)
    before = sim.agreed()
    assert before is not None
    ghosts = tuple(MemberRecord(fake_info(f"ghost{i}"), MemberState.ALIVE) for i in range(N + 2))
    sim.publish(MemberUpdate(ghosts))  # one frame
    sim.net.advance(10.0)
    assert sim.agreed() == before, "the mesh lost its lead"
    assert sim.mesh.settled_lead() == before[0]


@pytest.mark.xfail(
    not VOTER_SET, strict=True, raises=AssertionError, reason=GHOSTS + " (no voter set yet)"
)
def test_one_member_update_of_fabricated_members_does_not_take_a_settled_mesh_s_quorum() -> None:
    fabricated_members_after(5.0)  # the lead decided the first voter set by then


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason=GHOSTS + "; with the voter set too, before the lead decided the first one (it"
    " plans it only while it holds its lease, which the ghosts take away)",
)
def test_one_member_update_of_fabricated_members_right_after_the_first_lead() -> None:
    fabricated_members_after(0.0)
