"""Property tests: one member against the rest ("a member speaks only for itself, and no
single frame can wedge the mesh"; PROTOCOL.md 11.1).

A simulated mesh of four honest hosts and one insider (``n0``: priority 0, runs no tasks,
holds the mesh key and its own node key, so every frame it sends is authenticated as
coming from it) elects a lead, finishes a task, re-elects (so copies of an older term
exist), then runs a long task. Hypothesis then draws a sequence of well-formed frames
from the insider, biased towards nasty values (terms, incarnations and seqs at 0, the
current value, +1, +1000, +1001, ``MAX_COUNTER``; the lead's and the other members' ids
as ``lead``, subject or target; copies of the real tasks with another state, seq, term or
result; certificates with forged, replayed or its own signatures), sent directly or
published, interleaved with time passing and with honest submits. The insider's own Core
keeps running honestly underneath (it answers what the others ask it), as a compromised
daemon would.

Properties, checked after every step (and from the effect taps, so transient states
count too):

* no term has two different leads (every honest LEAD_ELECTED, and the election states);
* every frame an honest node emits is encodable by :mod:`meshd.wire.codec` (and decodes
  back to itself), with the node's term in the envelope;
* no honest node holds a term, an incarnation of its own or of another honest member
  above ``MAX_COUNTER - 1``;
* honest terms move only by honest elections: every term an honest node holds is the
  term before the attack or one an honest candidate campaigned for (sent a real
  VOTE_REQ for), and the highest is at most the start term plus the number of such
  campaigns;
* an honest member that keeps talking is never held DEAD or LEFT by another honest node,
  and nobody holds its incarnation above its own real incarnation +
  ``MAX_INCARNATION_JUMP``;
* every task copy an honest node holds is one an honest lead wrote (or the origin's own
  copy of its submit): nothing the insider wrote, in particular never its forged result.

Three properties fail on the code as it stands (``REFLEX_BUG``, ``CLIMB_BUG``,
``OLDER_COPY_BUG`` below): each such test is a strict xfail, with its minimal example as
an explicit test at the end, and a twin that leaves out only that one vector, so that the
rest of the vocabulary stays guarded. When a fix lands, the xfail turns into a failure:
drop the marker (and the twin's ``avoid``).

Besides single frames, the insider may have a reflex: it answers an honest candidate's
vote request at once (before the honest voters) with a vote naming another term. It may
also ask the lead to step down (TRANSFER_REQ, which any live member may relay for its
operator): the honest election that follows is fair game.

Out of the insider's vocabulary, on purpose: raising its own priority and AGENT_INFO
(either makes it a legitimate actor, not a forger: a candidate like any other, which may
win; an agent whose reports are its own word), and records of fabricated members that are
not LEFT (they count in quorums: a wedge of their own, documented in
``test_insider_sim.py``).

Member info is not signed by its subject yet: an insider can still relay another
member's info with other fields (priority, ports) at a bounded incarnation jump. Once
signed info lands, the records built by :func:`member_record` about honest members
(``priority`` / ``router_port`` changed) must be refused outright, and the incarnation
property can be tightened to "never above the member's own incarnation".
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from meshd.config import TaskConfig
from meshd.core import Core
from meshd.effects import ElectionEvent, MemberChanged, Publish, Refused, Send
from meshd.election.cert import vote_bytes
from meshd.membership.machine import MAX_INCARNATION_JUMP
from meshd.sim import SimHost, SimMesh, fake_info, sim_identity
from meshd.tasks.model import new_task
from meshd.wire import codec
from meshd.wire.messages import (
    PAYLOAD_TYPES,
    Ack,
    CertVote,
    Envelope,
    Heartbeat,
    Hello,
    IntroAck,
    LeadAck,
    LeadCert,
    LeadCertReq,
    LeadHeartbeat,
    Leave,
    MemberUpdate,
    Payload,
    Ping,
    PingReq,
    ReportKind,
    StepDown,
    Sync,
    SyncReq,
    TaskAck,
    TaskAssign,
    TaskDigest,
    TaskKey,
    TaskKeys,
    TaskOp,
    TaskOpKind,
    TaskQuery,
    TaskReport,
    TaskSubmit,
    TaskSync,
    TaskSyncReq,
    TaskUpdate,
    TransferReq,
    Vote,
    VoteReq,
)
from meshd.wire.records import (
    MemberInfo,
    MemberRecord,
    MemberState,
    TaskCopy,
    TaskFailure,
    TaskState,
)
from meshd.wire.schema import MAX_COUNTER

#: n0 is the insider (priority 0, runs nothing); n1..n4 are honest.
PRIORITIES = (0, 10, 20, 30, 40)
#: A member nobody ever ran (used as a lead, target or subject that does not exist).
GHOST = fake_info("ghost")
#: What the insider writes where a result goes.
FORGED: dict[str, Any] = {"forged": True}
_LIVE = (MemberState.ALIVE, MemberState.SUSPECT)

ATTACK = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


#: For the tests that document a violation: stop at the first failing example (shrinking
#: it takes minutes; the minimal examples are the explicit tests at the end).
FOUND = settings(ATTACK, phases=[Phase.explicit, Phase.reuse, Phase.generate])

REFLEX_BUG = (
    "Election._on_vote: a candidate adopts the newer term of any single VOTE (a denial, or"
    " a real vote naming another term) up to MAX_TERM_JUMP, without proof; an insider"
    " answering each vote request at once with term + 1 moves honest terms with no honest"
    " campaign and kills every round before the honest grants arrive (no lead at all)"
)
CLIMB_BUG = (
    "Membership._merge bounds a third party's incarnation jump against the incarnation"
    " held, not the member's own: records at held + 1000, one after the other, climb"
    " without limit; the member cannot refute above its own + 1000 (incarnation_jump), so"
    " a holder that later declares it dead keeps it dead (signed member info fixes this)"
)
OLDER_COPY_BUG = (
    "TaskMachine._entitled takes copies of an older term from any sender: after one"
    " re-election, a TASK_SYNC from a member with a copy of the previous term at seq +"
    " 1000 replaces a finished task's result on every follower, and the lead adopts it"
    " (scheduler.adopt) and may rewrite it in its own term"
)


def task_id(name: str) -> str:
    """Deterministic task ids (a random one would make examples irreproducible)."""
    return hashlib.blake2b(name.encode(), digest_size=16).hexdigest()


def frame_problem(sender: str, payload: Payload, correlation_id: bytes | None, term: int) -> str:
    """Why ``payload`` sent by ``sender`` at ``term`` cannot travel ("" when it can): the
    envelope the daemon would build (:meth:`meshd.daemon.node.Node._envelope`) must
    encode, and decode back to itself."""
    try:
        env = Envelope(
            msg_type=PAYLOAD_TYPES[type(payload)],
            msg_id=bytes(16),
            sender=sender,
            timestamp_ms=0,
            payload=payload,
            correlation_id=correlation_id,
            term=term,
        )
        back = codec.decode(codec.encode(env))
    except Exception as exc:
        return f"{type(payload).__name__}: {exc!r}"
    return "" if back == env else f"{type(payload).__name__}: changed on the way"


class World:
    """The mesh under attack, and the books the properties read (fed by the taps)."""

    def __init__(self) -> None:
        self.mesh = SimMesh(PRIORITIES, seed=5, config=TaskConfig(default_timeout=120.0))
        self.net = self.mesh.net
        self.adv = self.mesh.ids[0]
        self.honest = list(self.mesh.ids[1:])
        self._honest = frozenset(self.honest)
        self.adv_sign = sim_identity("n0").sign
        #: term -> every lead an honest node announced for it (LEAD_ELECTED, any reason).
        self.leads: dict[int, set[str]] = {}
        #: Terms an honest candidate campaigned for (sent a real VOTE_REQ).
        self.campaigns: set[int] = set()
        #: Certificates honest nodes sent (the insider sees them: replay material).
        self.certs: list[LeadCert] = []
        self.violations: list[str] = []
        self.member_violations: list[str] = []
        #: Copies an honest lead wrote, and origin copies of honest submits.
        self.legit: dict[tuple[str, int, int], TaskCopy] = {}
        self.refused: Counter[str] = Counter()
        self.frames = 0
        self.submits = 0
        #: The insider's reflex: its answer to an honest candidate's (pre-)vote request
        #: (None: its honest core answers alone). Set by :func:`attack`.
        self.reflex: Callable[[str, VoteReq], Payload | None] | None = None
        #: Attack vectors left out (known violations, see the xfail tests): "reflex",
        #: "older_copies", "climb".
        self.avoid: frozenset[str] = frozenset()
        self.net.taps.append(self._tap)
        self._setup()

    # ---- books ----------------------------------------------------------------------

    def _tap(self, now: float, node: str, eff: object) -> None:
        if node not in self._honest:
            return
        if isinstance(eff, ElectionEvent) and eff.kind == "LEAD_ELECTED" and eff.lead:
            self.leads.setdefault(eff.term, set()).add(eff.lead)
        elif isinstance(eff, Send | Publish):
            payload = eff.payload
            if (
                self.reflex is not None
                and isinstance(eff, Send)
                and eff.to == self.adv
                and isinstance(payload, VoteReq)
            ):
                answer = self.reflex(node, payload)
                if answer is not None:  # arrives before the honest voters' answers
                    self.net.apply(self.adv, [Send(node, answer)])
            corr = eff.correlation_id if isinstance(eff, Send) else None
            problem = frame_problem(node, payload, corr, self.core(node).election.term)
            if problem:
                self.violations.append(f"{node[:6]} emits an unencodable frame: {problem}")
            if isinstance(payload, VoteReq) and not payload.pre:
                self.campaigns.add(payload.term)
            elif isinstance(payload, LeadCert):
                self.certs.append(payload)
            elif isinstance(payload, TaskUpdate | TaskAssign) and self._leads_tasks(node):
                # What a lead writes, it publishes (TASK_UPDATE) or assigns (TASK_ASSIGN)
                # in the same step; a TASK_SYNC may carry a copy it merely took.
                copies = payload.copies if isinstance(payload, TaskUpdate) else (payload.copy,)
                for c in copies:
                    self.legit[(c.task.task_id, c.term, c.seq)] = c
        elif isinstance(eff, MemberChanged):
            rec = eff.record
            subject = rec.info.node_id
            if subject in self._honest and subject != node:
                if rec.state not in _LIVE and eff.reason != "forgotten":
                    self.member_violations.append(
                        f"{node[:6]} holds honest {subject[:6]} {rec.state.value} ({eff.reason})"
                    )
                real = self.core(subject).self_info.incarnation
                if rec.info.incarnation > real + MAX_INCARNATION_JUMP:
                    self.member_violations.append(
                        f"{node[:6]} holds {subject[:6]} at incarnation {rec.info.incarnation},"
                        f" its own is {real}"
                    )
        elif isinstance(eff, Refused):
            self.refused[eff.reason] += 1

    def _leads_tasks(self, node: str) -> bool:
        tasks = self.mesh.tasks(node)
        return tasks.role.value == "lead" and tasks.lead == node

    # ---- the mesh ---------------------------------------------------------------------

    def core(self, node: str) -> Core:
        return self.mesh.node(node).core

    def host(self, node: str) -> SimHost:
        return self.mesh.node(node)

    def lead(self) -> str:
        """The lead the most honest nodes follow (the first honest node if none)."""
        votes = Counter(
            lead for h in self.honest if (lead := self.core(h).election.lead) is not None
        )
        return votes.most_common(1)[0][0] if votes else self.honest[0]

    def submit(self, origin: str, skill: str, params: dict[str, Any]) -> str:
        self.submits += 1
        tid = self.mesh.submit(
            origin, skill, params, task_id=task_id(f"{skill}-{self.submits}-{origin}")
        )
        copy = self.mesh.tasks(origin).copies[tid]
        self.legit[(tid, copy.term, copy.seq)] = copy
        return tid

    def _setup(self) -> None:
        net, mesh = self.net, self.mesh
        assert net.run_until(lambda: mesh.settled_lead() is not None, 10.0) is not None
        self.done1 = self.submit(self.honest[0], "echo", {"message": "first"})
        assert net.run_until(lambda: mesh.terminal_everywhere([self.done1], mesh.ids), 10.0)
        # An honest re-election (the lead steps down): copies of an older term exist.
        old = self.lead()
        host = self.host(old)
        net.apply(old, host.local(host.core.request_transfer("", net.now), net.now))
        took = net.run_until(lambda: mesh.settled_lead() not in (None, old), 10.0)
        assert took is not None, "no second lead"
        self.done2 = self.submit(self.honest[1], "echo", {"message": "second"})
        self.long = self.submit(self.honest[2], "sleep", {"seconds": 20.0})

        def ready() -> bool:
            long = [mesh.task(n, self.long) for n in mesh.ids]
            return mesh.terminal_everywhere([self.done2], mesh.ids) and all(
                t is not None and t.state is TaskState.RUNNING for t in long
            )

        assert net.run_until(ready, 10.0) is not None
        net.advance(1.0)
        terms = {self.core(n).election.term for n in mesh.ids}
        assert len(terms) == 1 and mesh.settled_lead() is not None
        self.start_term = terms.pop()
        self.campaigns = {t for t in self.campaigns if t > self.start_term}
        assert not self.violations and not self.member_violations and not self.refused

    # ---- the insider ------------------------------------------------------------------

    def send(self, to: str | None, payload: Payload) -> None:
        """A frame from the insider, directly (``to``) or published, through the network;
        it must be a well-formed frame (an insider cannot send anything else)."""
        problem = frame_problem(self.adv, payload, None, self.core(self.adv).election.term)
        assert not problem, f"the strategy built a frame the wire refuses: {problem}"
        self.frames += 1
        self.net.apply(self.adv, [Publish(payload) if to is None else Send(to, payload)])
        self.net.advance(0.002)  # delivered (latency 1 ms)

    # ---- properties ---------------------------------------------------------------------

    def check_safety(self) -> None:
        """One lead per term; every honest frame encodable; counters below the bound."""
        assert not self.violations, self.violations[:3]
        two = {t: ls for t, ls in self.leads.items() if len(ls) > 1}
        assert not two, f"two leads in a term: {two}"
        seen: dict[int, str] = {}
        for h in self.honest:
            e = self.core(h).election
            assert e.term <= MAX_COUNTER - 1, f"{h[:6]} at term {e.term}"
            if e.lead is not None:
                other = seen.setdefault(e.term, e.lead)
                assert other == e.lead, f"term {e.term} followed as led by {other} and {e.lead}"
            me = self.core(h)
            assert me.self_info.incarnation <= MAX_COUNTER - 1
            for v in me.members():
                if v.info.node_id in self._honest:
                    assert v.info.incarnation <= MAX_COUNTER - 1, (h[:6], v.info.node_id[:6])

    def check_terms(self) -> None:
        """Honest terms move only by honest elections."""
        allowed = {self.start_term} | self.campaigns
        for h in self.honest:
            term = self.core(h).election.term
            assert term in allowed, (
                f"{h[:6]} holds term {term}; start {self.start_term},"
                f" honest campaigns {sorted(self.campaigns)}"
            )
            assert term <= self.start_term + len(self.campaigns)

    def check_members(self) -> None:
        """An honest member is held live by every honest node, at an incarnation at most
        MAX_INCARNATION_JUMP above its own."""
        assert not self.member_violations, self.member_violations[:3]
        for h in self.honest:
            for v in self.core(h).members():
                subject = v.info.node_id
                if subject not in self._honest:
                    continue
                assert v.state in _LIVE, f"{h[:6]} holds {subject[:6]} {v.state.value}"
                real = self.core(subject).self_info.incarnation
                assert v.info.incarnation <= real + MAX_INCARNATION_JUMP, (
                    f"{h[:6]} holds {subject[:6]} at {v.info.incarnation}, its own is {real}"
                )

    def check_tasks(self) -> None:
        """Every copy an honest node holds was written by an honest lead (or is the
        origin's own copy of its submit)."""
        for h in self.honest:
            tasks = self.mesh.tasks(h)
            for tid, copy in tasks.copies.items():
                assert copy.task.result != FORGED, f"{h[:6]} holds the forged result of {tid}"
                legit = self.legit.get((tid, copy.term, copy.seq))
                assert legit == copy, (
                    f"{h[:6]} holds a copy of {tid[:8]} at ({copy.term}, {copy.seq}),"
                    f" {copy.task.state.value}, that no honest lead wrote"
                )


# ---- what the insider sends --------------------------------------------------------------


def counter(data: st.DataObject, base: int, label: str = "") -> int:
    """A counter near ``base`` or at the bound (or anywhere in range)."""
    near = [0, 1, base - 1, base, base + 1, base + 2, base + 999, base + 1000, base + 1001]
    near += [MAX_COUNTER - 1, MAX_COUNTER]
    values = sorted({min(max(v, 0), MAX_COUNTER) for v in near})
    return data.draw(
        st.one_of(st.sampled_from(values), st.integers(0, MAX_COUNTER)), label=label or None
    )


def some_id(data: st.DataObject, w: World, target: str | None) -> str:
    ids = [w.adv, w.lead(), *w.honest, GHOST.node_id]
    if target is not None:
        ids.insert(2, target)
    return data.draw(st.sampled_from(ids))


def signature(data: st.DataObject, w: World, term: int, lead: str, pre: bool) -> bytes:
    """A forged, replayed or genuine-but-own signature over a vote."""
    real = [v.sig for c in w.certs[-4:] for v in c.votes]
    kind = data.draw(st.sampled_from(["own", "zero", "random", "replay", "own-other-term"]))
    if kind == "own":
        return w.adv_sign(vote_bytes(term, lead, pre))
    if kind == "own-other-term":
        return w.adv_sign(vote_bytes(max(term - 1, 0), lead, pre))
    if kind == "replay" and real:
        return data.draw(st.sampled_from(real))
    if kind == "random":
        return data.draw(st.binary(min_size=64, max_size=64))
    return bytes(64)


def election_frame(data: st.DataObject, w: World, target: str | None) -> Payload:
    core = w.core(target or w.lead())
    term = core.election.term
    kind = data.draw(
        st.sampled_from(
            ["cert", "heartbeat", "vote_req", "vote", "step_down", "ack", "cert_req", "transfer"]
        )
    )
    if kind == "cert":
        t = counter(data, term, "cert term")
        lead = some_id(data, w, target)
        pre = data.draw(st.booleans())
        voters = data.draw(st.lists(st.sampled_from([w.adv, *w.honest, GHOST.node_id]), max_size=5))
        votes = tuple(CertVote(v, signature(data, w, t, lead, pre)) for v in voters)
        if data.draw(st.booleans()) and w.certs:
            # A real certificate, re-aimed at another term or lead.
            real = w.certs[-1]
            return LeadCert(t, lead, real.votes + votes, pre)
        return LeadCert(t, lead, votes, pre)
    if kind == "heartbeat":
        lead = some_id(data, w, target)
        return LeadHeartbeat(counter(data, term), lead, counter(data, 1))
    if kind == "vote_req":
        prio = data.draw(st.sampled_from([100, 0, 1, 2**31 - 1]))
        return VoteReq(counter(data, term), data.draw(st.booleans()), prio)
    if kind == "vote":
        t = counter(data, term)
        granted, pre = data.draw(st.booleans()), data.draw(st.booleans())
        reason = data.draw(st.sampled_from(["", "term_jump", "have_lead", "already_voted"]))
        return Vote(t, granted, pre, reason, signature(data, w, t, target or w.lead(), pre))
    if kind == "step_down":
        successor = data.draw(st.sampled_from(["", w.adv, *w.honest]))
        reason = data.draw(st.sampled_from(["transfer", "operator", "shutdown", "lost_quorum"]))
        return StepDown(counter(data, term), successor, reason)
    if kind == "ack":
        return LeadAck(counter(data, term), counter(data, 1), data.draw(st.booleans()))
    if kind == "cert_req":
        return LeadCertReq(counter(data, term))
    return TransferReq(data.draw(st.sampled_from(["", w.adv, *w.honest])))


def member_record(data: st.DataObject, w: World, target: str | None) -> MemberRecord:
    """A record about the insider, the recipient, another honest member or a member that
    never existed, at a nasty incarnation, in any state."""
    subject = data.draw(
        st.sampled_from([w.adv, target or w.lead(), w.lead(), *w.honest, GHOST.node_id])
    )
    state = data.draw(st.sampled_from(list(MemberState)))
    info: MemberInfo
    if subject == GHOST.node_id:
        # A fabricated member that is not LEFT counts in every quorum (a wedge, documented
        # in test_insider_sim.py): only its "left" record is in the vocabulary here.
        info, state = GHOST, MemberState.LEFT
    elif subject == w.adv:
        info = w.core(w.adv).self_info  # its own record: priority stays 0 (see the docstring)
    elif subject == target:
        info = w.core(subject).self_info  # what the recipient holds about itself
    else:
        # What the recipient holds (an insider learns it from the recipient's SYNC), so
        # that a run of frames can climb from there.
        view = w.core(target or w.adv).get(subject)
        info = view.info if view is not None else w.core(subject).self_info
        # Not signed by its subject yet: other fields can be relayed changed.
        prio = data.draw(st.sampled_from([info.priority, 0, 1, 10**6]))
        port = data.draw(st.sampled_from([info.router_port, 1]))
        info = dataclasses.replace(info, priority=prio, router_port=port)
    inc = counter(data, info.incarnation, "incarnation")
    if "climb" in w.avoid and subject in w.honest:
        # No climbing (CLIMB_BUG): at most MAX_INCARNATION_JUMP above the subject's own
        # incarnation, or so far above it that no holder may take it.
        real = w.core(subject).self_info.incarnation
        if real + MAX_INCARNATION_JUMP < inc <= real + 2 * MAX_INCARNATION_JUMP:
            inc = real + MAX_INCARNATION_JUMP
    return MemberRecord(dataclasses.replace(info, incarnation=inc), state)


def member_frame(data: st.DataObject, w: World, target: str | None) -> Payload:
    me = w.core(w.adv).self_info
    kind = data.draw(
        st.sampled_from(
            [
                *("update", "sync", "intro_ack", "heartbeat", "hello"),
                *("ping_req", "ack", "ping", "sync_req", "leave"),
            ]
        )
    )
    if kind in ("update", "sync", "intro_ack"):
        n = data.draw(st.integers(1, 3))
        records = tuple(member_record(data, w, target) for _ in range(n))
        if kind == "update":
            return MemberUpdate(records)
        if kind == "sync":
            return Sync(records)
        return IntroAck(me, records)
    if kind == "heartbeat":
        return Heartbeat(counter(data, me.incarnation), bytes(16), data.draw(st.integers(0, 99)))
    if kind == "hello":
        ports = data.draw(st.sampled_from([me.router_port, 1]))
        inc = counter(data, me.incarnation)
        return Hello(dataclasses.replace(me, incarnation=inc, router_port=ports))
    if kind == "ping_req":
        return PingReq(counter(data, 1), some_id(data, w, target))
    if kind == "ack":
        return Ack(counter(data, 1), some_id(data, w, target), data.draw(st.booleans()))
    if kind == "ping":
        return Ping(counter(data, 1))
    if kind == "sync_req":
        return SyncReq(data.draw(st.sampled_from([b"", bytes(16)])))
    return Leave(counter(data, me.incarnation))


def forged_copy(data: st.DataObject, w: World) -> TaskCopy:
    """A copy of a real task (as the insider holds it) with another term, seq, state,
    result or assignee; or a task nobody submitted."""
    held = sorted(w.mesh.tasks(w.adv).copies.values(), key=lambda c: c.task.task_id)
    term = w.core(w.adv).election.term
    fabricate = not held or data.draw(st.booleans())
    if fabricate:
        task = new_task("echo", {"message": "forged"}, w.honest[0], 1.0, task_id=task_id("fake"))
        base = TaskCopy(term, 1, task)
    else:
        base = data.draw(st.sampled_from(held))
    terms = [base.term, base.term - 1, term - 1, term, term + 1, term + 1000, MAX_COUNTER]
    if "older_copies" in w.avoid:
        newest = max(w.core(h).election.term for h in w.honest)
        terms = [t for t in terms if t >= newest] or [newest]
    new_term = data.draw(st.sampled_from(sorted({min(max(t, 0), MAX_COUNTER) for t in terms})))
    state = data.draw(st.sampled_from(list(TaskState)))
    assignee = data.draw(st.sampled_from([base.task.assigned_to, w.adv, *w.honest]))
    error = TaskFailure("forged", "by the insider") if state is TaskState.FAILED else None
    task = dataclasses.replace(
        base.task, state=state, result=FORGED, error=error, assigned_to=assignee
    )
    return TaskCopy(new_term, counter(data, base.seq, "seq"), task)


def task_frame(data: st.DataObject, w: World, target: str | None) -> Payload:
    ids = sorted(w.mesh.tasks(w.adv).copies) or [task_id("fake")]
    tid = data.draw(st.sampled_from(ids))
    term = w.core(w.adv).election.term
    kind = data.draw(
        st.sampled_from(
            [
                *("update", "sync", "assign", "report", "ack", "op"),
                *("submit", "sync_req", "keys", "digest", "query"),
            ]
        )
    )
    if kind == "update":
        copies = tuple(forged_copy(data, w) for _ in range(data.draw(st.integers(1, 2))))
        return TaskUpdate(counter(data, max(c.seq for c in copies)), copies)
    if kind == "sync":
        copies = tuple(forged_copy(data, w) for _ in range(data.draw(st.integers(1, 2))))
        return TaskSync(copies, data.draw(st.booleans()))
    if kind == "assign":
        return TaskAssign(forged_copy(data, w))
    if kind == "report":
        attempt = data.draw(st.integers(0, 3))
        rk = data.draw(st.sampled_from(list(ReportKind)))
        return TaskReport(tid, attempt, rk, 100.0, "forged", None, FORGED, "forged")
    if kind == "ack":
        code = data.draw(st.sampled_from(["submit", "report", "held:1", "op:cancel"]))
        message = data.draw(st.sampled_from(["refused: forged", "not lead", ""]))
        return TaskAck(tid, data.draw(st.booleans()), code, message)
    if kind == "op":
        op = data.draw(st.sampled_from(list(TaskOpKind)))
        actor = data.draw(st.sampled_from(["operator", w.adv, *w.honest]))
        return TaskOp(op, tid, actor, data.draw(st.sampled_from(["", w.adv, *w.honest])))
    if kind == "submit":
        origin = data.draw(st.sampled_from([w.adv, *w.honest]))
        state = data.draw(st.sampled_from([TaskState.PENDING, TaskState.COMPLETE]))
        result = None if state is TaskState.PENDING else FORGED
        task = new_task("echo", {"message": "from n0"}, origin, w.net.now, task_id=task_id("n0"))
        task = dataclasses.replace(task, state=state, result=result)
        return TaskSubmit(TaskCopy(0, 0, task))
    if kind == "sync_req":
        return TaskSyncReq(counter(data, term), counter(data, 0), (tid,), data.draw(st.booleans()))
    if kind == "keys":
        key = TaskKey(tid, counter(data, term), counter(data, 1))
        return TaskKeys(tuple(range(4)), (key,), False)
    if kind == "digest":
        return TaskDigest(counter(data, term), bytes(16), (), counter(data, 1))
    return TaskQuery(tid, data.draw(st.integers(0, 3)), counter(data, term))


FAMILIES: dict[str, Callable[[st.DataObject, World, str | None], Payload]] = {
    "election": election_frame,
    "member": member_frame,
    "task": task_frame,
}


def reflex(data: st.DataObject, w: World) -> Callable[[str, VoteReq], Payload | None] | None:
    """How the insider answers an honest candidate's (pre-)vote request, if it does more
    than its honest core: a vote naming another term (a denial "you are behind", or a
    grant), signed by itself."""
    if not data.draw(st.booleans(), label="reflex"):
        return None
    offset = data.draw(st.sampled_from([1, 2, 1000, 1001, MAX_COUNTER]), label="vote offset")
    granted = data.draw(st.booleans(), label="granted")
    pre = data.draw(st.sampled_from(["as asked", "real", "pre"]), label="pre")

    def answer(candidate: str, req: VoteReq) -> Payload:
        term = min(req.term + offset, MAX_COUNTER)
        is_pre = req.pre if pre == "as asked" else pre == "pre"
        sig = w.adv_sign(vote_bytes(term, candidate, is_pre)) if granted else b""
        return Vote(term, granted, is_pre, "" if granted else "term_jump", sig)

    return answer


def attack(
    data: st.DataObject,
    checks: Sequence[Callable[[World], None]],
    families: Sequence[str] = ("election", "member", "task"),
    *,
    avoid: Sequence[str] = (),
    climbs: int = 0,
) -> World:
    """Build the mesh, run a drawn attack, check after every step and at the end."""
    w = World()
    w.avoid = frozenset(avoid)
    w.reflex = None if "reflex" in avoid else reflex(data, w)
    steps = data.draw(st.integers(1, 24), label="steps")
    actions = ["frame", "frame", "frame", "frame", "time", "time", "submit", "step_down"]
    actions += ["climb"] * climbs
    for _ in range(steps):
        what = data.draw(st.sampled_from(actions))
        if what == "climb":
            # An adaptive insider: records about an honest member, each at the
            # incarnation the recipient holds + MAX_INCARNATION_JUMP (the most one record
            # may move it), one after the other.
            target = data.draw(st.sampled_from(w.honest))
            subject = data.draw(st.sampled_from([h for h in w.honest if h != target]))
            runs = 1 if "climb" in avoid else data.draw(st.integers(1, 3), label="run")
            for _ in range(runs):
                view = w.core(target).get(subject)
                assert view is not None
                base = view.info.incarnation
                if "climb" in avoid:
                    base = w.core(subject).self_info.incarnation
                inc = min(base + MAX_INCARNATION_JUMP, MAX_COUNTER)
                info = dataclasses.replace(view.info, incarnation=inc)
                w.send(target, MemberUpdate((MemberRecord(info, MemberState.ALIVE),)))
        elif what == "frame":
            family = data.draw(st.sampled_from(list(families)))
            to: str | None = data.draw(st.sampled_from([None, *w.honest]))
            w.send(to, FAMILIES[family](data, w, to))
        elif what == "time":
            w.net.advance(data.draw(st.sampled_from([0.05, 0.3, 1.0, 2.5])))
        elif what == "submit":
            origin = data.draw(st.sampled_from(w.honest))
            w.submit(origin, "echo", {"message": f"honest {w.submits}"})
        else:
            # An operator on the lead makes it step down: an honest election follows.
            lead = w.lead()
            host = w.host(lead)
            if host.core.election.lead == lead:
                now = w.net.now
                w.net.apply(lead, host.local(host.core.request_transfer("", now), now))
        for check in checks:
            check(w)
    w.net.advance(5.0)
    for check in checks:
        check(w)
    return w


# ---- the properties -------------------------------------------------------------------------


@ATTACK
@given(st.data())
def test_no_term_has_two_leads_and_every_honest_frame_is_encodable(data: st.DataObject) -> None:
    attack(data, [World.check_safety], climbs=1)


@FOUND
@pytest.mark.xfail(strict=True, raises=AssertionError, reason=REFLEX_BUG)
@given(st.data())
def test_honest_terms_move_only_by_honest_elections(data: st.DataObject) -> None:
    attack(data, [World.check_terms], families=("election", "member"))


@ATTACK
@given(st.data())
def test_honest_terms_move_only_by_honest_elections_unless_the_insider_answers_a_vote_request(
    data: st.DataObject,
) -> None:
    """The property above, without the one vector known to break it (REFLEX_BUG)."""
    attack(data, [World.check_terms], families=("election", "member"), avoid=("reflex",))


@FOUND
@pytest.mark.xfail(strict=True, raises=AssertionError, reason=CLIMB_BUG)
@given(st.data())
def test_an_honest_member_is_never_taken_down_or_pushed_up_by_another(
    data: st.DataObject,
) -> None:
    attack(data, [World.check_members], families=("member", "election"), climbs=2)


@ATTACK
@given(st.data())
def test_an_honest_member_is_never_taken_down_or_pushed_up_by_another_without_climbing(
    data: st.DataObject,
) -> None:
    """The property above, without records that climb on an earlier forged jump
    (CLIMB_BUG): about an honest member, at most MAX_INCARNATION_JUMP above its own
    incarnation, or beyond any holder's bound."""
    attack(data, [World.check_members], families=("member", "election"), avoid=("climb",), climbs=2)


@FOUND
@pytest.mark.xfail(strict=True, raises=AssertionError, reason=OLDER_COPY_BUG)
@given(st.data())
def test_honest_task_copies_never_hold_what_the_insider_wrote(data: st.DataObject) -> None:
    attack(data, [World.check_tasks], families=("task",))


@ATTACK
@given(st.data())
def test_honest_task_copies_never_hold_what_the_insider_wrote_of_the_current_term(
    data: st.DataObject,
) -> None:
    """The property above, without copies of an older term (OLDER_COPY_BUG)."""
    attack(data, [World.check_tasks], families=("task",), avoid=("older_copies",))


def test_without_an_attack_every_property_holds() -> None:
    """The books are right: an honest run (time and submits only) passes every check."""
    w = World()
    for i in range(3):
        w.submit(w.honest[i % len(w.honest)], "echo", {"message": f"plain {i}"})
        w.net.advance(1.0)
    w.net.advance(25.0)  # the long task finishes too
    for check in (World.check_safety, World.check_terms, World.check_members, World.check_tasks):
        check(w)
    assert w.mesh.task(w.honest[0], w.long) is not None
    assert w.mesh.terminal_everywhere([w.long], w.honest)
    assert not w.refused


# ---- the minimal examples of the violations found ---------------------------------------


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=REFLEX_BUG)
def test_example_an_insider_s_vote_answers_naming_a_newer_term_keep_the_mesh_leaderless() -> None:
    w = World()

    def answer(candidate: str, req: VoteReq) -> Payload:
        return Vote(req.term + 1, False, req.pre, "term_jump")

    w.reflex = answer
    w.send(w.lead(), TransferReq(""))  # any member may ask the lead to step down
    got = w.net.run_until(lambda: w.mesh.settled_lead() is not None, 10.0)
    terms = {h: w.core(h).election.term for h in w.honest}
    assert got is not None, f"no lead for 10 s; terms {terms}, campaigns {sorted(w.campaigns)}"
    w.check_terms()


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=CLIMB_BUG)
def test_example_two_climbing_records_then_a_short_cut_keep_a_member_dead_at_one_node() -> None:
    w = World()
    x, y = w.honest[0], w.honest[1]
    for _ in range(2):
        view = w.core(y).get(x)
        assert view is not None
        info = dataclasses.replace(view.info, incarnation=view.info.incarnation + 1000)
        w.send(y, MemberUpdate((MemberRecord(info, MemberState.ALIVE),)))
    held = w.core(y).get(x)
    assert held is not None and held.info.incarnation == 2000  # x itself is at 0
    # x is cut off for a few seconds (a switch reboots): everyone declares it dead.
    w.net.partition([x], [n for n in w.mesh.ids if n != x])
    w.net.advance(6.0)
    w.net.heal()
    w.net.advance(20.0)
    states = {n[:6]: v.state.value for n in w.honest if n != x and (v := w.core(n).get(x))}
    assert states == dict.fromkeys(states, "alive"), states


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=OLDER_COPY_BUG)
def test_example_a_task_sync_of_the_previous_term_rewrites_a_finished_task() -> None:
    w = World()  # the first task finished in term 1; the mesh is in term 2 now
    copy = w.mesh.tasks(w.adv).copies[w.done1]
    assert copy.term < w.start_term and copy.task.state is TaskState.COMPLETE
    forged = TaskCopy(copy.term, copy.seq + 1000, dataclasses.replace(copy.task, result=FORGED))
    w.send(None, TaskSync((forged,), False))
    w.net.advance(1.0)
    held = {h[:6]: w.mesh.tasks(h).copies[w.done1].task.result for h in w.honest}
    assert FORGED not in held.values(), held
    assert w.refused, "nothing was refused"
