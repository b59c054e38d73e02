"""Delegation on the simulated network: whole nodes (:class:`meshd.sim.SimHost`: a Core
with its task machine, a disk that survives crashes, simulated skills) in simulated time,
with crashes and restarts.

Scenarios: an agent dies mid-task and another finishes it from the checkpoint; the lead
dies during a burst and the next lead resumes every task, none run twice; 1000 tasks with
random agent and lead crashes all end in exactly one terminal state, agreed by all nodes.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest

from meshd.config import TaskConfig
from meshd.core import AgentSetup
from meshd.sim import FakeNetwork, SimHost, SimSkills, fake_info
from meshd.tasks.machine import TaskMachine
from meshd.tasks.model import new_task
from meshd.wire.messages import TaskOpKind
from meshd.wire.records import Requirement, Task, TaskState, is_terminal

TCFG = TaskConfig(default_timeout=30.0)


class Mesh:
    """A mesh of :class:`SimHost` nodes sharing one :class:`SimSkills` (its books count
    every skill run)."""

    def __init__(
        self,
        priorities: Sequence[int],
        seed: int = 0,
        lead_runs: bool = False,
        approval: frozenset[str] = frozenset(),
    ) -> None:
        self.net = FakeNetwork(seed=seed)
        self.skills = SimSkills()
        self.ids: list[str] = []
        self.rng = random.Random(seed)
        for i, prio in enumerate(priorities):
            info = dataclasses.replace(fake_info(f"n{i}"), priority=prio)
            agent = AgentSetup(
                config=TCFG,
                skills=lambda: self.skills.names,
                role_defaults=lambda role: ((), 2),
                max_concurrent=2 if (lead_runs or i > 0) else 0,
                needs_approval=lambda name: name in approval,
            )
            self.net.add_host(info, agent=agent, skills=self.skills)
            self.net.announce(info.node_id)
            self.ids.append(info.node_id)
            self.net.advance(0.02)

    def node(self, node_id: str) -> SimHost:
        n = self.net.node(node_id)
        assert isinstance(n, SimHost)
        return n

    def tm(self, node_id: str) -> TaskMachine:
        tasks = self.node(node_id).core.tasks
        assert tasks is not None
        return tasks

    def lead(self) -> str | None:
        leads = {self.node(i).core.election.lead for i in self.net.ids(up_only=True)}
        return leads.pop() if len(leads) == 1 else None

    def wait_lead(self, max_time: float = 10.0) -> str:
        took = self.net.run_until(
            lambda: (
                self.lead() is not None
                and all(self.tm(i).role.value != "gathering" for i in self.net.ids(up_only=True))
            ),
            max_time,
        )
        assert took is not None, "no lead"
        lead = self.lead()
        assert lead is not None
        return lead

    def crash(self, node_id: str) -> None:
        self.net.crash(node_id)

    def restart(self, node_id: str) -> None:
        # From its disk; as the daemon does from LMDB: the members it knew, for a fast rejoin.
        self.net.restart(node_id)
        self.net.announce(node_id)

    def submit(self, origin: str, skill: str, params: dict[str, Any], **kw: Any) -> str:
        node = self.node(origin)
        task = new_task(skill, params, origin, self.net.now, config=TCFG, **kw)
        self.net.apply(origin, node.submit(task, self.net.now))
        return task.task_id

    def task(self, node_id: str, task_id: str) -> Task:
        t = self.tm(node_id).get(task_id)
        assert t is not None
        return t

    def pct(self, node_id: str, task_id: str) -> float:
        t = self.tm(node_id).get(task_id)
        return -1.0 if t is None else t.progress.pct

    def state(self, node_id: str, task_id: str) -> TaskState | None:
        t = self.tm(node_id).get(task_id)
        return None if t is None else t.state

    def all_terminal(self, ids: Sequence[str], at: Sequence[str]) -> bool:
        for n in at:
            tm = self.tm(n)
            for t in ids:
                task = tm.get(t)
                if task is None or not is_terminal(task):
                    return False
        return True


def test_agent_dies_mid_task_and_another_finishes_it_from_the_checkpoint() -> None:
    m = Mesh([100, 50, 50, 50])
    lead = m.wait_lead()
    assert lead == m.ids[0]
    origin = m.ids[3]
    tid = m.submit(origin, "sleep", {"seconds": 2.0}, idempotent=True, requirement=Requirement())
    assert m.net.run_until(lambda: m.pct(lead, tid) >= 50, 10) is not None
    worker = m.task(lead, tid).assigned_to
    assert worker is not None and worker != lead
    m.crash(worker)
    took = m.net.run_until(lambda: m.all_terminal([tid], [lead, origin]), 30)
    assert took is not None
    final = m.task(origin, tid)
    assert final.state is TaskState.COMPLETE
    assert final.assigned_to not in (worker, lead)
    assert m.skills.executions[tid] == 2
    assert m.skills.resumed_from[tid] >= 0.9  # from the checkpoint, not from zero
    assert any("lost" in h.reason for h in final.history)


def test_non_idempotent_task_fails_agent_lost_then_operator_retry_reruns_it() -> None:
    m = Mesh([100, 50, 50])
    lead = m.wait_lead()
    tid = m.submit(m.ids[1], "sleep", {"seconds": 2.0}, idempotent=False)
    assert m.net.run_until(lambda: m.state(lead, tid) is TaskState.RUNNING, 10) is not None
    worker = m.task(lead, tid).assigned_to
    assert worker is not None
    m.crash(worker)
    assert m.net.run_until(lambda: m.state(lead, tid) is TaskState.FAILED, 10) is not None
    failed = m.task(lead, tid)
    assert failed.error is not None and failed.error.code == "agent_lost"
    assert m.skills.executions[tid] == 1
    # The operator retries it on purpose, from a non-lead node (relayed to the lead).
    survivor = next(n for n in m.ids[1:] if n != worker)
    assert failed.error.message.startswith(f"agent {worker} was lost")
    assert "may have run" in failed.error.message and "--force" in failed.error.message
    # A plain retry is refused: the task may have run already.
    m.net.apply(survivor, m.node(survivor).operator(TaskOpKind.RETRY, tid, m.net.now))
    m.net.advance(1.0)
    assert m.task(survivor, tid).state is TaskState.FAILED
    assert m.skills.executions[tid] == 1
    # The operator insists.
    m.net.apply(survivor, m.node(survivor).operator(TaskOpKind.RETRY_FORCE, tid, m.net.now))
    done = m.net.run_until(lambda: m.state(survivor, tid) is TaskState.COMPLETE, 20)
    assert done is not None and m.state(lead, tid) is TaskState.COMPLETE
    assert m.skills.executions[tid] == 2


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_lead_dies_mid_burst_and_the_next_lead_resumes_every_task(seed: int) -> None:
    m = Mesh([100, 60, 50, 40], seed=seed)
    lead = m.wait_lead()
    origin = m.ids[3]
    ids = [m.submit(origin, "echo", {"message": f"m{i}", "seconds": 0.0}) for i in range(60)]
    m.net.advance(m.rng.uniform(0.0005, 0.004))  # mid-assignment
    m.crash(lead)
    ids += [m.submit(origin, "echo", {"message": f"n{i}", "seconds": 0.0}) for i in range(40)]
    rest = [i for i in m.ids if i != lead]
    took = m.net.run_until(lambda: m.all_terminal(ids, rest), 30)
    assert took is not None, Counter(m.task(origin, t).state for t in ids)
    for n in rest:
        assert all(m.task(n, t).state is TaskState.COMPLETE for t in ids)
    # None lost, none run twice (the old lead ran nothing: its limit is 0).
    assert all(m.skills.executions[t] == 1 for t in ids), m.skills.executions.most_common(3)
    assert m.tm(m.ids[1]).role.value == "lead"


@pytest.mark.parametrize("seed", [7, 8, 9])
def test_thousand_tasks_with_random_crashes_each_end_in_one_terminal_state(seed: int) -> None:
    rng = random.Random(seed)
    m = Mesh([100, 80, 60, 50, 50, 50], seed=seed, lead_runs=True)
    m.wait_lead()
    ids: list[str] = []
    idem: dict[str, bool] = {}
    crashed: dict[str, float] = {}
    for step in range(100):
        up = m.net.ids(up_only=True)
        for _ in range(10):
            origin = rng.choice(up)
            idempotent = rng.random() < 0.7
            secs = rng.choice([0.0, 0.0, 0.1, 0.3])
            tid = m.submit(origin, "sleep", {"seconds": secs}, idempotent=idempotent)
            ids.append(tid)
            idem[tid] = idempotent
        m.net.advance(0.05)
        if step % 10 == 5:
            victim = rng.choice([n for n in m.net.ids(up_only=True)])
            m.crash(victim)
            crashed[victim] = m.net.now
        for node, at in list(crashed.items()):
            if m.net.now - at > 1.5:
                m.restart(node)
                del crashed[node]
    for node in list(crashed):
        m.restart(node)
    everyone = m.ids
    took = m.net.run_until(lambda: m.all_terminal(ids, everyone), 120, poll=0.1)
    if took is None:
        lagging = [
            (
                n[:4],
                t[:6],
                m.state(n, t),
                m.tm(n).version(t),
                m.tm(n).role.value,
                m.net.hosts[n].up,
            )
            for n in everyone
            for t in ids
            if m.state(n, t) is None or not is_terminal(m.task(n, t))
        ]
        info = {
            n[:4]: (
                m.tm(n).lead and m.tm(n).lead[:4],
                m.tm(n).term,
                m.tm(n)._wm.hw,
                m.tm(n)._wm.hi,
                m.tm(n)._seq,
            )
            for n in everyone
        }
        raise AssertionError(f"not converged: {lagging[:3]} lead {m.lead()} {info}")
    # One terminal state per task, the same on every node.
    for t in ids:
        states = {(m.task(n, t).state, m.task(n, t).attempt) for n in everyone}
        assert len(states) == 1, (t, states)
        final = m.task(m.ids[0], t)
        assert final.state in (TaskState.COMPLETE, TaskState.FAILED)
        if final.state is TaskState.FAILED:
            assert final.error is not None and final.error.code == "agent_lost", final.error
            assert not idem[t]
        if not idem[t]:
            # A non-idempotent task never starts twice without an operator.
            assert m.skills.executions[t] <= 1, (t, m.skills.executions[t])
    done = sum(1 for t in ids if m.task(m.ids[0], t).state is TaskState.COMPLETE)
    assert done >= 900, done
    print(f"\n[sim] 1000 tasks: {done} complete, {len(ids) - done} failed agent_lost")


@pytest.mark.parametrize("from_lead", [False, True])
def test_an_agent_hands_its_task_off_with_its_checkpoint(from_lead: bool) -> None:
    m = Mesh([100, 50, 50], lead_runs=from_lead)
    lead = m.wait_lead()
    tid = m.submit(m.ids[2], "sleep", {"seconds": 1.0, "handoff_at": 0.5})
    assert m.net.run_until(lambda: m.state(lead, tid) is TaskState.RUNNING, 5) is not None
    first = m.task(lead, tid).assigned_to
    assert (first == lead) is from_lead
    assert m.net.run_until(lambda: m.all_terminal([tid], m.ids), 20) is not None
    final = m.task(m.ids[2], tid)
    assert final.state is TaskState.COMPLETE, final.error
    assert final.assigned_to not in (first, None)
    assert m.skills.resumed_from[tid] >= 0.5  # from the checkpoint it handed over
    assert any(h.reason.startswith("handed off") for h in final.history)


def test_a_refused_handoff_fails_the_task_with_the_reason() -> None:
    m = Mesh([100, 50, 50])
    lead = m.wait_lead()
    tid = m.submit(
        m.ids[1],
        "sleep",
        {"seconds": 1.0, "handoff_at": 0.3, "to": lead},
        requirement=Requirement(node=m.ids[1]),
    )
    assert m.net.run_until(lambda: m.all_terminal([tid], m.ids), 20) is not None
    final = m.task(lead, tid)
    assert final.state is TaskState.FAILED
    assert final.error is not None and final.error.code == "handoff_refused"


@pytest.mark.parametrize("decision", ["approve", "deny"])
def test_a_skill_that_needs_approval_waits_for_the_operator(decision: str) -> None:
    m = Mesh([100, 50, 50], approval=frozenset({"sleep"}))
    lead = m.wait_lead()
    origin = m.ids[2]
    held = m.submit(origin, "sleep", {"seconds": 0.2})
    free = m.submit(origin, "echo", {"message": "x", "seconds": 0.0})
    assert m.net.run_until(lambda: m.all_terminal([free], m.ids), 10) is not None
    m.net.advance(2.0)
    assert m.state(lead, held) is TaskState.WAITING_APPROVAL
    assert m.skills.executions[held] == 0  # never started without the operator
    # The operator decides on a node that is not the lead (relayed to the lead).
    op = TaskOpKind.APPROVE if decision == "approve" else TaskOpKind.DENY
    m.net.apply(origin, m.node(origin).operator(op, held, m.net.now))
    assert m.net.run_until(lambda: m.all_terminal([held], m.ids), 10) is not None
    final = m.task(origin, held)
    actor = f"operator@{origin}"
    if decision == "approve":
        assert final.state is TaskState.COMPLETE
        assert any(h.reason == f"approved by {actor}" for h in final.history)
        assert m.skills.executions[held] == 1
    else:
        assert final.state is TaskState.FAILED
        assert final.error is not None and final.error.code == "denied"
        assert m.skills.executions[held] == 0
