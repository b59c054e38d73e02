"""Election scenarios on the fake network: Core nodes (membership + election), LAN timings.

Everything runs in simulated time. Observed times are printed (``pytest -s``) and asserted
against generous bounds. Every scenario runs under global invariant checks:

* never two leads (winners) in the same term;
* every node's durable term never decreases, across restarts too;
* a node never gives two different candidates its real vote in one term, and a vote or a
  term-dependent ack only leaves after the Persist that covers it;
* at no sampled instant (every 2 ms) do two nodes each hold a valid lease.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable, Iterable

import pytest

from meshd.config import ElectionConfig, MembershipConfig
from meshd.core import Core
from meshd.effects import Effect, ElectionEvent, Persist, Send
from meshd.election import LEAD_ELECTED, STEPPED_DOWN, Role
from meshd.sim import FakeNetwork, SimHost, fake_info
from meshd.wire.messages import LeadAck, Vote

ECFG = ElectionConfig()
MCFG = MembershipConfig()


def report(what: str, seconds: float | None) -> None:
    print(f"\n[sim] {what}: {seconds if seconds is None else round(seconds, 3)} s")


class Invariants:
    """Checks fed by the network's taps (every effect of every node, in order)."""

    def __init__(self) -> None:
        self.winners: dict[int, str] = {}
        #: Same-term winners seen when ``strict`` is off (see the lone-node test).
        self.conflicts: list[tuple[int, str, str]] = []
        self.strict = True
        self.persisted: dict[str, Persist] = {}
        self.votes: dict[tuple[str, int], str] = {}
        self.lease_samples = 0

    def tap(self, now: float, node: str, eff: object) -> None:
        if isinstance(eff, ElectionEvent) and eff.kind == LEAD_ELECTED and eff.reason == "won":
            assert eff.lead == node
            other = self.winners.setdefault(eff.term, node)
            if other != node:
                assert not self.strict, f"two leads in term {eff.term}: {other} and {node}"
                self.conflicts.append((eff.term, other, node))
        elif isinstance(eff, Persist):
            last = self.persisted.get(node)
            if last is not None:
                assert eff.term >= last.term, f"{node} went back in term"
                if eff.term == last.term and last.voted_for is not None:
                    assert eff.voted_for == last.voted_for, f"{node} changed its vote"
            self.persisted[node] = eff
        elif isinstance(eff, Send) and isinstance(eff.payload, Vote):
            v = eff.payload
            if v.granted and not v.pre:
                held = self.persisted.get(node)
                assert held is not None and (held.term, held.voted_for) == (v.term, eff.to), (
                    "vote before Persist"
                )
                first = self.votes.setdefault((node, v.term), eff.to)
                assert first == eff.to, f"{node} voted twice in term {v.term}"
        elif isinstance(eff, Send) and isinstance(eff.payload, LeadAck) and eff.payload.ok:
            p = self.persisted.get(node)
            assert p is not None and p.term == eff.payload.term, "ack before Persist"


class Sim:
    def __init__(
        self,
        priorities: Iterable[int],
        *,
        seed: int = 0,
        loss: float = 0.0,
        jitter: float = 0.0,
        stagger: float = 0.02,
        ecfg: ElectionConfig = ECFG,
    ) -> None:
        self.net = FakeNetwork(seed=seed, loss=loss, jitter=jitter)
        self.ecfg = ecfg
        self.inv = Invariants()
        self.net.taps.append(self.inv.tap)
        self.ids: list[str] = []
        for i, prio in enumerate(priorities):
            self.add(f"n{i:02d}", prio)
            if stagger:
                self.net.advance(stagger)

    # -- nodes -------------------------------------------------------------------------

    def add(self, name: str, priority: int, *, announce: bool = True) -> str:
        info = dataclasses.replace(fake_info(name), priority=priority)
        host = self.net.add_host(info, membership=MCFG, election=self.ecfg)
        self.ids.append(host.self_id)
        if announce:
            self.net.announce(host.self_id)
        return host.self_id

    def core(self, node: str) -> Core:
        host = self.net.node(node)
        assert isinstance(host, SimHost)
        return host.core

    def step(self, node: str, fn: Callable[[Core, float], Iterable[Effect]]) -> None:
        """Call ``fn(core, now)`` on a node and carry out what it returns."""
        host = self.net.node(node)
        assert isinstance(host, SimHost)
        now = self.net.now
        self.net.apply(node, host.local(fn(host.core, now), now))

    def up(self) -> list[str]:
        return self.net.ids(up_only=True)

    def restart(self, node: str, *, priority: int | None = None) -> Core:
        """A new process with the durable term/vote of the old one (from its disk) and its
        member list restored, as the daemon does from LMDB."""
        old = self.core(node)
        changes = {} if priority is None else {"priority": priority}
        new = self.net.restart(node, **changes)
        assert isinstance(new, SimHost)
        assert (new.core.election.term, new.core.election.voted_for) == (
            old.election.term,
            old.election.voted_for,
        )
        assert self.inv.persisted.get(node, Persist(0, None)) == new.disk.persist
        return new.core

    # -- views -------------------------------------------------------------------------

    def lead_of(self, node: str) -> str | None:
        return self.core(node).election.lead

    def agreed(self, nodes: list[str] | None = None) -> str | None:
        """The lead every given node (default: every running one) follows, or None."""
        nodes = self.up() if nodes is None else nodes
        leads = {self.lead_of(n) for n in nodes}
        terms = {self.core(n).election.term for n in nodes}
        if len(leads) != 1 or len(terms) != 1:
            return None
        lead = leads.pop()
        if lead not in nodes or self.core(lead).election.role is not Role.LEAD:
            return None
        return lead

    def best(self, nodes: list[str]) -> str:
        return min(
            (n for n in nodes if self.core(n).election.priority > 0),
            key=lambda n: (-self.core(n).election.priority, n),
        )

    # -- time ----------------------------------------------------------------------------

    def check_leases(self) -> None:
        now = self.net.now
        holders = [n for n in self.up() if self.core(n).election.has_lease(now)]
        assert len(holders) <= 1 or not self.inv.strict, f"two valid leases at {now}: {holders}"
        leads = [
            self.core(n).election for n in self.up() if self.core(n).election.role is Role.LEAD
        ]
        assert len({e.term for e in leads}) == len(leads) or not self.inv.strict, "two leads"
        self.inv.lease_samples += 1

    def run(self, seconds: float, step: float = 0.002) -> None:
        end = self.net.now + seconds
        while self.net.now < end - 1e-9:
            self.net._run_to(min(self.net.now + step, end))
            self.check_leases()

    def until(
        self, pred: Callable[[], object], max_time: float, step: float = 0.001
    ) -> float | None:
        start = self.net.now
        while not pred():
            if self.net.now - start >= max_time:
                return None
            self.run(step, step)
        return self.net.now - start

    def started(self, max_time: float = 5.0) -> tuple[str, float]:
        took = self.until(self.agreed, max_time)
        assert took is not None, "no lead agreed"
        lead = self.agreed()
        assert lead is not None
        return lead, took


def events(sim: Sim, kind: str, since: float = 0.0) -> list[tuple[float, str, ElectionEvent]]:
    return [
        (t, n, e)
        for t, n, e in sim.net.log
        if t >= since and isinstance(e, ElectionEvent) and e.kind == kind
    ]


PRIOS_10 = [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]


# ---- initial election ------------------------------------------------------------------


def test_initial_election_picks_the_highest_priority() -> None:
    sim = Sim(PRIOS_10, seed=1)
    lead, took = sim.started()
    report("10 nodes started 20 ms apart: lead agreed by all, after the last start", took)
    assert lead == sim.best(sim.ids) == sim.ids[-1]
    assert took < 1.0
    assert {sim.core(n).election.term for n in sim.ids} == {1}
    sim.run(3.0)
    assert sim.agreed() == lead
    assert sim.net.stats["dropped_unlinked"] == 0
    assert sim.inv.winners == {1: lead}


def test_equal_priorities_tie_broken_by_node_id() -> None:
    sim = Sim([10] * 5, seed=2, stagger=0.0)
    lead, took = sim.started()
    report("5 equal-priority nodes started together: lead agreed", took)
    assert lead == min(sim.ids)
    assert sim.inv.winners == {1: lead}


@pytest.mark.parametrize("equal", [False, True], ids=["distinct", "equal"])
def test_simultaneous_candidates(equal: bool) -> None:
    # No jitter, no rank step, all started at the same instant: every node's timer fires at
    # exactly the same time. Only the node that can win stands (the others see it ranked
    # above them and defer), and it gets every vote.
    cfg = dataclasses.replace(ECFG, election_jitter=0.0, rank_step=0.0)
    sim = Sim([7] * 10 if equal else PRIOS_10, seed=3, stagger=0.0, ecfg=cfg)
    sim.run(cfg.election_timeout + 0.0005)
    candidates = [n for n in sim.ids if sim.core(n).election.role is Role.CANDIDATE]
    assert candidates == [sim.best(sim.ids)]
    lead, took = sim.started()
    report(f"10 simultaneous candidates ({'equal' if equal else 'distinct'} priorities)", took)
    assert lead == sim.best(sim.ids)
    assert sim.inv.winners == {1: lead}  # no split vote, no second round


def test_priority_zero_nodes_never_lead() -> None:
    sim = Sim([0, 0, 5, 0, 9], seed=4)
    lead, _ = sim.started()
    assert lead == sim.ids[4]
    sim.net.crash(lead)
    lead2, took = sim.started()
    report("lead crashed, the only other eligible node leads", took)
    assert lead2 == sim.ids[2]
    sim.net.crash(lead2)
    sim.run(5.0)
    rest = sim.up()
    assert all(sim.lead_of(n) is None for n in rest)
    assert {sim.core(n).election.status(sim.net.now).reason for n in rest} == {"no eligible node"}
    assert all(sim.core(n).election.role is Role.FOLLOWER for n in rest)


def test_all_zero_mesh_has_no_lead_and_says_why() -> None:
    sim = Sim([0] * 5, seed=5)
    sim.run(5.0)
    assert all(sim.lead_of(n) is None for n in sim.ids)
    assert {sim.core(n).election.status(sim.net.now).reason for n in sim.ids} == {
        "no eligible node"
    }
    assert sim.net.stats["sent.VoteReq"] == 0
    assert all(sim.core(n).election.term == 0 for n in sim.ids)


# ---- lead crash ------------------------------------------------------------------------


def test_lead_crash_new_lead_agreed_by_all_survivors() -> None:
    times = []
    for seed in range(12):
        sim = Sim(PRIOS_10, seed=100 + seed)
        lead, _ = sim.started()
        sim.run(1.0 + seed * 0.037)  # crash at a different heartbeat phase each time
        old_term = sim.core(lead).election.term
        survivors = [n for n in sim.ids if n != lead]
        sim.net.crash(lead)
        took = sim.until(lambda s=sim, v=survivors: s.agreed(v), 5.0)
        assert took is not None
        new = sim.agreed(survivors)
        assert new == sim.best(survivors)
        assert sim.core(new).election.term == old_term + 1  # one round, no retry storm
        assert all(not sim.core(n).election.accepts(old_term, lead) for n in survivors)
        times.append(took)
    times.sort()
    med, worst = statistics.median(times), times[-1]
    report("10 nodes, lead killed -> all 9 survivors agree (median)", med)
    report("10 nodes, lead killed -> all 9 survivors agree (max of 12)", worst)
    assert med < 1.0
    assert worst < 2.0


def test_successive_lead_crashes_until_no_quorum() -> None:
    sim = Sim(PRIOS_10, seed=6)
    sim.started()
    for k in range(4):
        lead = sim.agreed()
        assert lead is not None
        sim.net.crash(lead)
        took = sim.until(lambda old=lead: sim.agreed() not in (None, old), 5.0)
        assert took is not None and took < 2.0, k
    # 6 of 10 left: one more crash leaves 5 < quorum 6 (dead members still count).
    sim.net.crash(sim.agreed())  # type: ignore[arg-type]
    sim.run(5.0)
    assert all(sim.lead_of(n) is None for n in sim.up())
    assert {sim.core(n).election.status(sim.net.now).reason for n in sim.up()} == {"no quorum"}


def test_graceful_leave_of_the_lead_elects_at_once() -> None:
    sim = Sim(PRIOS_10, seed=7)
    lead, _ = sim.started()
    sim.run(1.0)
    sim.net.leave(lead)
    took = sim.until(lambda: sim.agreed() not in (None, lead), 3.0)
    report("lead left gracefully -> new lead agreed", took)
    assert took is not None and took < ECFG.rank_step + ECFG.election_jitter + 0.1
    reasons = {e.reason for _, n, e in events(sim, STEPPED_DOWN) if n == lead}
    assert reasons == {"shutdown"}


# ---- loss and reordering ----------------------------------------------------------------


def test_ten_percent_loss_and_reordering_still_one_lead() -> None:
    sim = Sim(PRIOS_10, seed=8, loss=0.10, jitter=0.005)
    lead, took = sim.started(10.0)
    report("10% loss + 5 ms jitter: initial lead agreed", took)
    assert lead == sim.best(sim.ids)
    for _ in range(2):
        sim.run(2.0)
        lead = sim.agreed()  # type: ignore[assignment]
        assert lead is not None
        sim.net.crash(lead)
        took = sim.until(lambda old=lead: sim.agreed() not in (None, old), 10.0)
        report("10% loss + 5 ms jitter: lead killed -> all agree", took)
        assert took is not None and took < 3.0
    sim.run(10.0)
    assert sim.agreed() is not None
    assert len(sim.inv.winners) <= 6  # a few retried rounds at most


# ---- partitions and the lease -------------------------------------------------------


@pytest.mark.parametrize("lead_side", ["minority", "majority"])
def test_partition_3_2_and_heal(lead_side: str) -> None:
    sim = Sim([50, 40, 30, 20, 10], seed=9)
    lead, _ = sim.started()
    assert lead == sim.ids[0]
    sim.run(1.0)
    old_term = sim.core(lead).election.term
    if lead_side == "minority":
        small, big = sim.ids[:2], sim.ids[2:]
    else:
        big, small = sim.ids[:3], sim.ids[3:]
    t0 = sim.net.now
    sim.net.partition(small, big)
    sim.run(0.05)  # what was in flight has landed: the old lead's lease is what it is
    lease_end = sim.core(lead).election.lease_expiry()
    took = sim.until(
        lambda: sim.agreed(big) is not None and all(sim.lead_of(n) is None for n in small),
        10.0,
    )
    report(f"partition 3|2 (lead in the {lead_side}): majority has a lead, minority none", took)
    assert took is not None and took < 2.0
    new = sim.agreed(big)
    if lead_side == "minority":
        assert new == sim.best(big) and sim.core(new).election.term == old_term + 1
        stepped = [(t, e) for t, n, e in events(sim, STEPPED_DOWN, t0) if n == lead]
        assert [e.reason for _, e in stepped] == ["lost_quorum"]
        elected = [t for t, n, e in events(sim, LEAD_ELECTED, t0) if n == new and e.reason == "won"]
        # The old lead's lease ends before the new one is in, not just in theory (and
        # check_leases saw at most one valid lease at every sampled instant).
        assert lease_end is not None and lease_end < elected[0] <= stepped[0][0]
        # Majority followers never accept the old lead any more.
        assert all(not sim.core(n).election.accepts(old_term, lead) for n in big)
    else:
        assert new == lead and sim.core(new).election.term == old_term
    sim.run(5.0)
    assert sim.agreed(big) == new
    for n in small:
        st = sim.core(n).election.status(sim.net.now)
        assert (st.lead, st.reason) == (None, "no quorum")
        assert sim.core(n).election.term <= old_term  # pre-vote: no term inflation
    sim.net.heal()
    healed = sim.net.now
    took = sim.until(lambda: sim.agreed() is not None, 30.0)
    report(f"partition 3|2 healed (lead was in the {lead_side}): all 5 follow one lead", took)
    assert took is not None
    assert len({sim.core(n).election.term for n in sim.ids}) == 1
    # The minority rejoined the majority's lead and term; the highest priority then takes
    # over after its stability window.
    assert sim.agreed() == new
    assert sim.until(lambda: sim.agreed() == sim.best(sim.ids), 10.0) is not None
    report(
        f"partition 3|2 healed (lead was in the {lead_side}): top node leads", sim.net.now - healed
    )
    final = sim.agreed()
    assert final == sim.ids[0]
    assert len({sim.core(n).election.term for n in sim.ids}) == 1
    sim.run(3.0)
    assert sim.agreed() == final
    assert sim.inv.lease_samples > 1000


def test_minority_lead_steps_down_before_majority_elects_even_with_slow_links() -> None:
    # 20 ms links: the lease margin (100 ms) still covers the delays.
    sim = Sim([50, 40, 30, 20, 10], seed=10, jitter=0.02)
    lead, _ = sim.started()
    sim.run(1.37)
    t0 = sim.net.now
    sim.net.partition(sim.ids[:2], sim.ids[2:])
    sim.run(0.05)
    lease_end = sim.core(lead).election.lease_expiry()
    assert sim.until(lambda: sim.agreed(sim.ids[2:]) is not None, 5.0) is not None
    new = sim.agreed(sim.ids[2:])
    won = [t for t, n, e in events(sim, LEAD_ELECTED, t0) if n == new and e.reason == "won"]
    assert lease_end is not None and won and lease_end < won[0]
    assert sim.until(lambda: sim.core(lead).election.role is not Role.LEAD, 2.0) is not None
    down = [t for t, n, e in events(sim, STEPPED_DOWN, t0) if n == lead]
    assert down and down[0] == pytest.approx(lease_end + ECFG.lease_grace, abs=0.15)
    sim.run(2.0)
    assert sim.core(lead).election.role is not Role.LEAD  # a quiet candidate: no quorum
    assert sim.core(lead).election.status(sim.net.now).reason == "no quorum"


# ---- takeover, flapping, transfer, step-down ---------------------------------------


def test_takeover_after_the_stability_window_and_not_before() -> None:
    sim = Sim([10, 20, 30, 40, 50], seed=11)
    lead, _ = sim.started()
    sim.run(1.0)
    hi = sim.add("hi", 90)
    joined = sim.net.now
    sim.run(ECFG.stability_window - 0.1)
    assert sim.agreed() == lead
    took = sim.until(lambda: sim.agreed() == hi, 2.0)
    assert took is not None
    after = sim.net.now - joined
    report("higher-priority node joined -> it leads (stability window 3 s)", after)
    assert ECFG.stability_window <= after < ECFG.stability_window + 0.5
    assert [e.reason for _, n, e in events(sim, STEPPED_DOWN) if n == lead] == ["priority_takeover"]
    # The hand-over gap without any lead is tiny: the successor campaigns at once.
    gap_end = min(t for t, n, e in events(sim, LEAD_ELECTED, joined) if e.reason == "won")
    gap_start = min(t for t, _, _ in events(sim, STEPPED_DOWN, joined))
    report("priority takeover: no-lead gap", gap_end - gap_start)
    assert gap_end - gap_start < 0.05


def test_flapping_node_never_takes_over_until_it_is_stable() -> None:
    sim = Sim([10, 20, 30, 40, 50], seed=12)
    lead, _ = sim.started()
    hi = sim.add("flappy", 5)
    sim.run(1.0)
    # Restarted every 2 s with a priority flapping between 90 (above the lead) and 5.
    for k in range(6):
        sim.net.crash(hi)
        sim.run(0.05)
        sim.restart(hi, priority=90 if k % 2 == 0 else 5)
        sim.run(1.95)
        assert sim.agreed() == lead, k
    sim.net.crash(hi)
    sim.run(0.05)
    sim.restart(hi, priority=90)
    stable = sim.net.now
    took = sim.until(lambda: sim.agreed() == hi, 6.0)
    assert took is not None
    report("flapping node stable at last -> takeover after", sim.net.now - stable)
    assert sim.net.now - stable >= ECFG.stability_window


def test_operator_transfer_then_manual_hold() -> None:
    sim = Sim([10, 20, 30, 40, 50], seed=13)
    lead, _ = sim.started()
    target = sim.ids[0]  # the lowest priority
    sim.step(lead, lambda core, now: core.election.transfer(target, now))
    took = sim.until(lambda: sim.agreed() == target, 2.0)
    report("lead transfer -> target leads", took)
    assert took is not None and took < 0.05
    sim.run(2 * ECFG.stability_window + 1.0)  # well past the window: manual hold
    assert sim.agreed() == target


def test_operator_step_down_through_a_follower() -> None:
    sim = Sim([10, 20, 30, 40, 50], seed=14)
    lead, _ = sim.started()
    follower = sim.ids[0]
    sim.step(follower, lambda core, now: core.election.request_transfer("", now))
    took = sim.until(lambda: sim.agreed() not in (None, lead), 2.0)
    report("step-down relayed by a follower -> next lead agreed", took)
    assert took is not None and took < 0.3
    second = sim.agreed()
    assert second == sim.ids[3]  # the best of the others
    assert [e.reason for _, n, e in events(sim, STEPPED_DOWN) if n == lead] == ["operator"]
    t0 = sim.net.now
    sim.run(ECFG.step_down_hold - 0.5)
    assert sim.agreed() == second
    # After the hold and a stability window the highest priority takes its place again.
    took = sim.until(lambda: sim.agreed() == lead, 10.0)
    assert took is not None
    report("step-down hold over -> original lead back after", sim.net.now - t0)


# ---- restart with durable state ----------------------------------------------------


def test_restart_with_durable_term_and_vote() -> None:
    sim = Sim(PRIOS_10, seed=15)
    lead, _ = sim.started()
    voter = sim.ids[3]
    # A voter dies, the lead dies, the mesh elects, the voter comes back with its term
    # and vote; then the old lead comes back too and takes over after the window.
    sim.net.crash(voter)
    sim.run(0.3)
    sim.net.crash(lead)
    assert sim.until(lambda: sim.agreed() not in (None, lead), 3.0) is not None
    before = sim.core(voter).election.term
    sim.run(1.0)
    sim.restart(voter)
    assert sim.core(voter).election.term == before
    took = sim.until(lambda: sim.agreed() not in (None, lead) and voter in sim.up(), 3.0)
    report("restarted voter follows the current lead after", took)
    assert took is not None
    assert sim.core(voter).election.term >= before
    sim.restart(lead)
    took = sim.until(lambda: sim.agreed() == lead, 10.0)
    report("restarted old lead (highest priority) leads again after", took)
    assert took is not None and took >= ECFG.stability_window
    terms = {sim.core(n).election.term for n in sim.ids}
    assert len(terms) == 1


def test_restart_in_the_middle_of_an_election_never_votes_twice() -> None:
    # Crash and restart voters at many instants around an election: the invariants (one
    # real vote per node per term, terms never decrease) hold throughout.
    for k in range(6):
        sim = Sim([10, 20, 30, 40, 50], seed=200 + k, jitter=0.003)
        lead, _ = sim.started()
        sim.net.crash(lead)
        sim.run(ECFG.election_timeout + 0.02 * k)
        victim = sim.ids[1 + k % 3]
        sim.net.crash(victim)
        sim.run(0.01)
        sim.restart(victim)
        assert sim.until(lambda s=sim, old=lead: s.agreed() not in (None, old), 5.0) is not None


def test_no_stray_election_messages_in_a_quiet_mesh() -> None:
    sim = Sim(PRIOS_10, seed=16)
    sim.started()
    votes = ("sent.VoteReq", "sent.Vote")
    before = {k: v for k, v in sim.net.stats.items() if k in votes}
    sim.run(10.0)
    after = {k: v for k, v in sim.net.stats.items() if k in votes}
    assert before == after  # no campaign while the lead is healthy
    hb = sim.net.stats["sent.LeadHeartbeat"]
    assert hb > 0
    assert sim.net.stats["dropped_unlinked"] == 0


def test_big_mesh_with_stretched_membership_heartbeats() -> None:
    # 100 nodes: membership heartbeats every 0.4 s (heartbeat_budget), longer than half
    # the election timeout. Core widens the election's reach window to match, so peers do
    # not look unreachable (which would read "no quorum" and never elect).
    sim = Sim([10 + i for i in range(100)], seed=17, stagger=0.0)
    lead, took = sim.started(10.0)
    report("100 nodes started together: lead agreed", took)
    assert lead == sim.best(sim.ids)
    assert sim.core(lead).reach_window() == pytest.approx(0.8)
    sim.run(1.0, step=0.02)
    survivors = [n for n in sim.ids if n != lead]
    sim.net.crash(lead)
    took = sim.until(lambda: sim.agreed(survivors) is not None, 5.0, step=0.005)
    report("100 nodes, lead killed -> all 99 agree", took)
    assert took is not None and took < 2.0
    assert sim.agreed(survivors) == sim.best(survivors)


def test_node_that_started_alone_meets_the_mesh() -> None:
    # Known limit of per-view quorums: a node that knows nobody is a one-node mesh and
    # leads it (term 1), while the real mesh has its own lead of term 1. When they meet,
    # nobody obeys the stray lead (no switching leads within a term), its lease lapses
    # without acks, and it follows the mesh's lead.
    sim = Sim([10, 20, 30, 40, 50], seed=18)
    sim.inv.strict = False
    lead, _ = sim.started()
    lone = sim.add("lone", 5, announce=False)
    assert sim.until(lambda: sim.core(lone).election.role is Role.LEAD, 2.0) is not None
    term = sim.core(lone).election.term
    assert term == sim.core(lead).election.term == 1
    sim.run(1.0)
    met = sim.net.now
    sim.net.announce(lone)
    took = sim.until(lambda: sim.agreed() == lead, 3.0)
    report("stray one-node lead met the mesh -> follows its lead", took)
    assert took is not None and took < 1.0
    assert [e.reason for t, n, e in events(sim, STEPPED_DOWN, met) if n == lone] == ["lost_quorum"]
    assert sim.inv.conflicts == [(1, lead, lone)]
    # Nobody but itself ever followed the stray lead.
    followed = {n for t, n, e in events(sim, LEAD_ELECTED) if e.lead == lone}
    assert followed == {lone}
    sim.inv.strict = True
    sim.run(2.0)
    assert sim.agreed() == lead


# ---- liveness under stalls (issue: an election always ends) -----------------------------


def stall(sim: Sim, node: str, seconds: float) -> None:
    """``node``'s event loop stops for ``seconds`` (a loaded host): nothing in or out."""
    others = [n for n in sim.ids if n != node]
    for o in others:
        sim.net.block(node, o)
    sim.run(seconds)
    for o in others:
        sim.net.unblock(node, o)


@pytest.mark.parametrize("seconds", [0.3, 0.45, 0.6, 1.0])
@pytest.mark.parametrize("seed", range(4))
def test_a_stalled_lead_costs_no_election_or_one(seconds: float, seed: int) -> None:
    # A stall shorter than the lease grace: no election at all (the lead leads on with a
    # fresh lease); longer: the others elect, the stalled node follows. Either way the
    # mesh agrees again within a second.
    sim = Sim([10, 20, 30, 40, 50], seed=seed)
    lead, _ = sim.started()
    term = sim.core(lead).election.term
    stall(sim, lead, seconds)
    took = sim.until(lambda: sim.agreed() is not None, 5.0)
    assert took is not None and took < 1.0
    if seconds <= ECFG.election_timeout - ECFG.lease_margin:
        assert (sim.agreed(), sim.core(lead).election.term) == (lead, term)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("when", [0.5, 1.5, 2.5])
def test_a_lower_ranked_lead_that_stalls_in_the_takeover_window_is_replaced(
    seed: int, when: float
) -> None:
    # The top node H is back (restarted); the lower-ranked lead L would hand over to it
    # after the stability window, but L's loop stalls first and its lease lapses. L then
    # asks for votes (refused: lower_rank) — its requests must not keep pushing back the
    # timers of the others, or H, which can win, never stands and the mesh has no lead
    # for good (seen on real daemons after a partition heal and after SIGSTOP/SIGCONT).
    sim = Sim([100, 50, 40, 30, 20], seed=seed)
    top, _ = sim.started()
    sim.net.crash(top)
    low, _ = sim.started()
    sim.restart(top)
    sim.net.announce(top)
    sim.run(when)
    stall(sim, low, 0.45)
    took = sim.until(lambda: sim.agreed() is not None, 5.0)
    assert took is not None
    assert sim.until(lambda: sim.agreed() == top, 10.0) is not None
    report(f"stalled low lead {when} s into the window -> top leads", sim.net.now)


@pytest.mark.parametrize("seed", range(3))
def test_twenty_equal_nodes_started_together_agree(seed: int) -> None:
    # Every node ranks the others by id; only the best stands, the others defer to it.
    sim = Sim([10] * 20, seed=seed, stagger=0.0, jitter=0.05)
    took = sim.until(sim.agreed, 5.0, step=0.005)
    report("20 equal-priority nodes started together (50 ms jitter): lead agreed", took)
    assert took is not None and took < 2.0
    assert sim.agreed() == min(sim.ids)
    assert len(sim.inv.winners) == 1
