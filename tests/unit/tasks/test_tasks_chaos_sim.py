"""Delegation under faults, in simulated time: many seeded random fault schedules.

Five whole nodes (:class:`meshd.sim.SimMesh`), a burst of tasks half of which are not
idempotent, one fault injected during the burst and healed later; then the books are
checked, as the namespace-lab chaos suite checks real daemons:

* every acknowledged task ends terminal, with one final copy on every node;
* no non-idempotent task ever starts twice (the skills' books count every start);
* no term ever has two leads;
* after the heal, a lead is agreed (and has resumed every task) within 2 s.

Faults: crash of the lead or of a worker (restarted later), a silent cut of the lead
(its links drop, it keeps running), a 3|2 partition with the lead on the minority, 10 %
loss everywhere, the lead stopped (SIGSTOP) and resumed. Each schedule is reproducible
from its seed; the failure message names the seed and the schedule.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import pytest

from meshd.config import TaskConfig
from meshd.sim import SimMesh

PRIORITIES = (100, 90, 80, 70, 60)
FAULTS = ("crash_lead", "crash_worker", "cut_lead", "partition", "loss", "stop_lead")
#: Tasks per run, submitted 20 ms apart (50/s).
TASKS = 120
RATE = 0.02
#: The product's defaults: a task's attempt timer (300 s) is far longer than the time
#: every task must be settled in (60 s), so a lost assignment is not hidden by a timeout.
CONFIG = TaskConfig()
SETTLE = 60.0


@dataclass
class Run:
    seed: int
    fault: str
    at: float
    lasting: float
    tasks: list[str]
    idempotent: dict[str, bool]
    mesh: SimMesh

    def describe(self) -> str:
        return f"seed {self.seed}: {self.fault} at +{self.at:.2f} s for {self.lasting:.2f} s"


def chaos(seed: int, fault: str) -> Run:
    rng = random.Random(seed)
    m = SimMesh(PRIORITIES, seed=seed, lead_runs=True, config=CONFIG)
    assert m.net.run_until(lambda: m.settled_lead() is not None, 10.0) is not None
    lead = m.settled_lead()
    assert lead is not None
    at = rng.uniform(0.2, TASKS * RATE * 0.7)
    lasting = rng.uniform(0.5, 4.0)
    others = [n for n in m.ids if n != lead]
    victim = lead if fault in ("crash_lead", "cut_lead", "stop_lead") else rng.choice(others)
    run = Run(seed, fault, at, lasting, [], {}, m)
    start = m.net.now
    injected = healed = False
    for i in range(TASKS):
        now = m.net.now - start
        if not injected and now >= at:
            inject(m, fault, victim)
            injected = True
        if injected and not healed and now >= at + lasting:
            heal(m, fault, victim)
            healed = True
        origins = [n for n in m.up() if not m.net.hosts[n].paused]
        idem = i % 2 == 0
        secs = rng.choice((0.0, 0.05, 0.2))
        tid = m.submit(rng.choice(origins), "sleep", {"seconds": secs}, idempotent=idem)
        run.tasks.append(tid)
        run.idempotent[tid] = idem
        m.net.advance(RATE)
    if not injected:
        inject(m, fault, victim)
        m.net.advance(lasting)
    if not healed:
        heal(m, fault, victim)
    run.healed_at = m.net.now  # type: ignore[attr-defined]
    return run


def inject(m: SimMesh, fault: str, victim: str) -> None:
    if fault in ("crash_lead", "crash_worker"):
        m.net.crash(victim)
    elif fault == "cut_lead":
        for o in m.ids:
            if o != victim:
                m.net.block(victim, o)
    elif fault == "partition":
        lead = m.lead() or victim
        minority = [lead, next(n for n in m.ids if n != lead)]
        m.net.partition(minority, [n for n in m.ids if n not in minority])
    elif fault == "loss":
        m.net.loss = 0.10
    elif fault == "stop_lead":
        m.net.pause(victim)


def heal(m: SimMesh, fault: str, victim: str) -> None:
    if fault in ("crash_lead", "crash_worker"):
        m.restart(victim)
    elif fault in ("cut_lead", "partition"):
        m.net.heal()
    elif fault == "loss":
        m.net.loss = 0.0
    elif fault == "stop_lead":
        m.net.resume(victim)


def check(run: Run) -> None:
    m, why = run.mesh, run.describe()
    healed_at = run.healed_at  # type: ignore[attr-defined]
    took = m.net.run_until(lambda: m.settled_lead() is not None, 10.0)
    assert took is not None, f"{why}: no lead after the heal"
    assert m.net.now - healed_at <= 2.0 + 1e-9, (
        f"{why}: a lead only {m.net.now - healed_at:.2f} s after the heal"
    )
    everyone = m.ids
    done = m.net.run_until(lambda: m.terminal_everywhere(run.tasks, everyone), SETTLE, poll=0.1)
    if done is None:
        lagging = [
            (
                t[:6],
                {
                    n[:4]: (
                        m.tasks(n).version(t),
                        (m.task(n, t) or None) and m.task(n, t).state.value,
                    )
                    for n in everyone
                },
            )  # type: ignore[union-attr]
            for t in run.tasks
            if not m.terminal_everywhere([t], everyone)
        ]
        raise AssertionError(f"{why}: not every task terminal everywhere: {lagging[:3]}")
    m.net.advance(3.0)  # let the last copies spread
    diverged = m.disagreements(run.tasks, everyone)
    assert diverged == {}, f"{why}: copies differ: {list(diverged.items())[:3]}"
    twice = {
        t: m.skills.executions[t]
        for t in run.tasks
        if not run.idempotent[t] and m.skills.executions[t] > 1
    }
    assert twice == {}, f"{why}: non-idempotent tasks started twice: {twice}"
    split = {term: nodes for term, nodes in m.winners.items() if len(nodes) > 1}
    assert split == {}, f"{why}: terms with two leads: {split}"


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("seed", range(8))
def test_one_fault_during_a_burst(seed: int, fault: str) -> None:
    run = chaos(seed * 101 + FAULTS.index(fault), fault)
    check(run)
    states = Counter(
        (run.mesh.task(run.mesh.ids[0], t).state.value)  # type: ignore[union-attr]
        for t in run.tasks
    )
    print(f"\n[chaos] {run.describe()}: {dict(states)}")


def two_faults(seed: int) -> Run:
    """Two overlapping faults from the list (the lead-targeted ones hit whoever leads when
    they strike), 3 % loss and 10 ms jitter throughout, 200 tasks."""
    rng = random.Random(seed)
    m = SimMesh(PRIORITIES, seed=seed, lead_runs=True, loss=0.03, jitter=0.01, config=CONFIG)
    assert m.net.run_until(lambda: m.settled_lead() is not None, 20.0) is not None
    kinds = rng.sample(["crash_lead", "crash_worker", "cut_lead", "partition", "stop_lead"], 2)
    plan = []
    for kind in kinds:
        at = rng.uniform(0.2, 3.0)
        plan.append({"kind": kind, "at": at, "end": at + rng.uniform(0.3, 3.0), "victim": ""})
    run = Run(seed, "+".join(kinds), 0.0, 0.0, [], {}, m)
    start = m.net.now
    for i in range(200):
        now = m.net.now - start
        for f in plan:
            if not f["victim"] and now >= f["at"]:
                lead = m.lead() or m.ids[0]
                others = [n for n in m.up() if n != lead]
                hits_lead = f["kind"] in ("crash_lead", "cut_lead", "stop_lead")
                f["victim"] = lead if hits_lead or not others else rng.choice(others)
                if f["kind"].startswith("crash") and not m.net.hosts[f["victim"]].up:
                    f["end"] = -1.0  # already down: nothing to do
                else:
                    inject(m, f["kind"], f["victim"])
            elif f["victim"] and 0 <= f["end"] <= now:
                heal(m, f["kind"], f["victim"])
                f["end"] = -1.0
        origins = [n for n in m.up() if not m.net.hosts[n].paused]
        idem = i % 2 == 0
        secs = rng.choice((0.0, 0.05, 0.2))
        tid = m.submit(rng.choice(origins), "sleep", {"seconds": secs}, idempotent=idem)
        run.tasks.append(tid)
        run.idempotent[tid] = idem
        m.net.advance(RATE)
    for f in plan:
        if f["victim"] and f["end"] >= 0:
            heal(m, f["kind"], f["victim"])
    m.net.loss = 0.0
    run.healed_at = m.net.now  # type: ignore[attr-defined]
    return run


@pytest.mark.parametrize("seed", range(24))
def test_two_overlapping_faults_with_loss(seed: int) -> None:
    check(two_faults(seed))
