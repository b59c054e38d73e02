"""A seeded random simulation of the lead's scheduler: 1000 tasks, 5 agents that accept,
reject, hang, fail, crash and come back, a lead change half-way, all on a fake clock.

Checked throughout and at the end: every task ends in exactly one terminal state (one
TaskFinished per run, operator retries included), no task is lost, a non-idempotent task
never starts twice without an operator retry, no task starts before its dependencies
succeeded, agents never hold more than their limit, every assignment carries the current
term.
"""

from __future__ import annotations

import contextlib
import heapq
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from meshd.config import TaskConfig
from meshd.tasks.assign import AgentView
from meshd.tasks.model import TaskError, new_task
from meshd.tasks.scheduler import (
    AssignTask,
    CancelOnAgent,
    Effect,
    RequestVerify,
    Scheduler,
    TaskFinished,
)
from meshd.wire.records import Requirement, TaskFailure, TaskState, is_terminal, succeeded

T0 = 1_700_000_000.0
N_TASKS = 1000
AGENTS = {
    "n0": ("worker", frozenset({"echo", "sleep"}), 20, 3),
    "n1": ("worker", frozenset({"echo"}), 20, 2),
    "n2": ("worker", frozenset({"echo", "sleep"}), 10, 2),
    "n3": ("gpu", frozenset({"echo", "sleep"}), 30, 2),
    "n4": ("gpu", frozenset({"echo", "sleep"}), 5, 1),
}


@dataclass
class Sim:
    rng: random.Random
    now: float = T0
    seq: int = 0
    events: list[tuple[float, int, Callable[[], None]]] = field(default_factory=list)
    crashed: set[str] = field(default_factory=set)  # really down
    detected: set[str] = field(default_factory=set)  # the lead knows it is down
    epoch: Counter[str] = field(default_factory=Counter)
    holding: dict[str, set[tuple[str, int]]] = field(default_factory=dict)
    starts: Counter[str] = field(default_factory=Counter)
    finishes: Counter[str] = field(default_factory=Counter)
    op_retries: Counter[str] = field(default_factory=Counter)
    term: int = 1

    def at(self, delay: float, fn: Callable[[], None]) -> None:
        self.seq += 1
        heapq.heappush(self.events, (self.now + delay, self.seq, fn))

    def views(self) -> list[AgentView]:
        return [
            AgentView(n, n, role, frozenset(), skills, prio, 0, limit, None, n not in self.detected)
            for n, (role, skills, prio, limit) in AGENTS.items()
        ]


def run_sim(seed: int) -> tuple[Sim, Scheduler]:
    rng = random.Random(seed)
    sim = Sim(rng)
    cfg = TaskConfig(retry_backoff_base=0.5, retry_backoff_factor=2.0, retry_backoff_max=4.0)
    sched = Scheduler(cfg, sim.now)
    box = {"s": sched}
    crashes_on = {"v": True}

    def s() -> Scheduler:
        return box["s"]

    def handle(effects: tuple[Effect, ...]) -> None:
        for eff in effects:
            if isinstance(eff, AssignTask):
                on_assign(eff)
            elif isinstance(eff, CancelOnAgent):
                sim.holding.get(eff.node, set()).difference_update(
                    {k for k in sim.holding.get(eff.node, set()) if k[0] == eff.task_id}
                )
            elif isinstance(eff, RequestVerify):
                verdict = (eff.task.task_id, rng.random() < 0.9)
                sim.at(
                    rng.uniform(0.01, 0.3),
                    lambda v=verdict: handle(s().on_verified(v[0], v[1], sim.now)),
                )
            elif isinstance(eff, TaskFinished):
                task = eff.task
                assert is_terminal(task)
                sim.finishes[task.task_id] += 1
                assert sim.finishes[task.task_id] == 1 + sim.op_retries[task.task_id]
                lost = task.error is not None and task.error.code in ("agent_lost", "timeout")
                if lost and sim.op_retries[task.task_id] < 2 and rng.random() < 0.3:
                    sim.at(rng.uniform(0.5, 3.0), lambda t=task.task_id: operator_retry(t))

    def operator_retry(tid: str) -> None:
        sim.op_retries[tid] += 1
        handle(s().operator_retry(tid, sim.now, force=True))

    def on_assign(eff: AssignTask) -> None:
        node, task = eff.to, eff.task
        assert task.assignment is not None and task.assignment.term == sim.term
        _, _, _, limit = AGENTS[node]
        assert s().agent_load(node) <= limit
        assert node not in sim.detected
        if node in sim.crashed:
            return  # the message is lost; the lead learns of the crash later
        key = (task.task_id, task.attempt)
        epoch = sim.epoch[node]
        sim.holding.setdefault(node, set()).add(key)
        tid, att = key

        def live() -> bool:
            return sim.epoch[node] == epoch and key in sim.holding.get(node, set())

        def step(delay: float, fn: Callable[[], None]) -> None:
            sim.at(delay, lambda: fn() if live() else None)

        def done() -> None:
            sim.holding[node].discard(key)

        r = rng.random()
        if r < 0.07:
            step(0.01, lambda: (done(), handle(s().on_rejected(tid, node, "busy", sim.now, att))))
            return

        def start() -> None:
            current = s().get(tid)
            assert current is not None
            for dep in current.depends_on:
                dep_task = s().get(dep)
                assert dep_task is not None and succeeded(dep_task), "started before a dep"
            sim.starts[tid] += 1
            if not current.idempotent:
                assert sim.starts[tid] <= 1 + sim.op_retries[tid], "non-idempotent ran twice"
            handle(s().on_started(tid, node, sim.now, att))

        step(0.005, lambda: handle(s().on_accepted(tid, node, sim.now, att)))
        step(0.01, start)
        if r < 0.12:
            return  # hangs: only the attempt timeout ends it
        duration = rng.uniform(0.05, task.timeout_s * 1.2)
        for i in range(1, 3):
            step(
                0.01 + duration * i / 3,
                lambda i=i: handle(
                    s().on_progress(tid, node, 33 * i, "step", sim.now, bytes([i]), att)
                ),
            )
        if rng.random() < 0.9:
            step(
                0.01 + duration,
                lambda: (done(), handle(s().on_completed(tid, node, 1, sim.now, att))),
            )
        else:
            failure = TaskFailure("skill_error", "boom")
            step(
                0.01 + duration,
                lambda: (done(), handle(s().on_failed(tid, node, failure, sim.now, att))),
            )

    def crash() -> None:
        if crashes_on["v"]:
            up = sorted(set(AGENTS) - sim.crashed)
            if len(up) > 1:
                node = rng.choice(up)
                sim.crashed.add(node)
                sim.epoch[node] += 1
                sim.holding[node] = set()
                sim.at(rng.uniform(0.2, 1.5), lambda: detect(node))
            sim.at(rng.expovariate(1 / 8.0), crash)

    def detect(node: str) -> None:
        sim.detected.add(node)
        handle(s().agent_lost(node, sim.now))
        sim.at(rng.uniform(1.0, 10.0), lambda: recover(node))

    def recover(node: str) -> None:
        sim.crashed.discard(node)
        sim.detected.discard(node)
        handle(s().agents_changed(sim.views(), sim.now))

    def lead_change() -> None:
        # The lead dies; the next one restores every task from the (replicated) store.
        stored = s().tasks()
        sim.term += 1
        new = Scheduler(cfg, sim.now)
        box["s"] = new
        handle(new.agents_changed(sim.views(), sim.now))
        handle(new.set_term(sim.term, f"lead-{sim.term}", sim.now))
        handle(new.restore(stored, sim.now))

    submitted: list[str] = []

    def submit() -> None:
        deps: tuple[str, ...] = ()
        if submitted and rng.random() < 0.2:
            recent = submitted[-40:]
            deps = tuple(rng.sample(recent, min(len(recent), rng.randint(1, 3))))
        skill = rng.choice(["echo", "echo", "sleep"])
        req = Requirement()
        r = rng.random()
        if r < 0.1:
            req = Requirement(role="gpu")
        elif r < 0.15:  # a node that has the skill (the origin refuses others up front)
            req = Requirement(node=rng.choice([n for n in AGENTS if skill in AGENTS[n][1]]))
        task = new_task(
            skill,
            {"i": len(submitted)},
            "origin",
            sim.now,
            requirement=req,
            priority=rng.randint(0, 9),
            timeout_s=rng.uniform(1.0, 5.0),
            deadline=sim.now + rng.uniform(5, 60) if rng.random() < 0.1 else None,
            idempotent=rng.random() < 0.5,
            verify=rng.random() < 0.1,
            depends_on=deps,
            retry_limit=rng.randint(0, 3),
        )
        submitted.append(task.task_id)
        handle(s().submit(task, sim.now))
        if rng.random() < 0.03:
            sim.at(rng.uniform(0.1, 10.0), lambda: cancel(task.task_id))

    def cancel(tid: str) -> None:
        # TaskError: already finished (or awaiting verification).
        with contextlib.suppress(TaskError):
            handle(s().cancel(tid, sim.now))

    handle(s().agents_changed(sim.views(), sim.now))
    handle(s().set_term(sim.term, "lead-1", sim.now))
    for i in range(N_TASKS):
        sim.at(i * 0.25 + rng.uniform(0, 0.2), submit)
    sim.at(1.0, crash)
    sim.at(N_TASKS * 0.125, lead_change)
    sim.at(N_TASKS * 0.25 + 5, lambda: crashes_on.update(v=False))

    for _ in range(2_000_000):
        due = s().next_deadline()
        nxt = sim.events[0][0] if sim.events else None
        if due is None and nxt is None:
            break
        if nxt is not None and (due is None or nxt <= due):
            when, _, fn = heapq.heappop(sim.events)
            sim.now = max(sim.now, when)
            fn()
        else:
            assert due is not None
            sim.now = max(sim.now, due)
            handle(s().tick(sim.now))
    else:
        pytest.fail("simulation did not settle")
    assert len(submitted) == N_TASKS
    return sim, s()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_simulation(seed: int) -> None:
    sim, sched = run_sim(seed)
    tasks = {t.task_id: t for t in sched.tasks()}
    assert len(tasks) == N_TASKS  # nothing lost, nothing invented
    states = Counter(t.state for t in tasks.values())
    for task in tasks.values():
        assert is_terminal(task), task
        assert sim.finishes[task.task_id] == 1 + sim.op_retries[task.task_id]
        if not task.idempotent:
            assert sim.starts[task.task_id] <= 1 + sim.op_retries[task.task_id]
        if task.state in (TaskState.COMPLETE, TaskState.VERIFIED):
            assert all(succeeded(tasks[d]) for d in task.depends_on)
    # The mix really exercised the rules.
    assert states[TaskState.COMPLETE] > 300
    codes = Counter(t.error.code.split(":")[0] for t in tasks.values() if t.error)
    for code in ("agent_lost", "timeout", "dependency_failed", "skill_error"):
        assert codes[code] > 0, codes
    assert sum(sim.op_retries.values()) > 0
    assert sched.queue() == [] and sched.next_deadline() is None
