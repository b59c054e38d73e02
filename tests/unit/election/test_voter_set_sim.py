"""The voter set, decided by the lead (not gossiped), in the simulator (nodes sign their
votes with real keys): members known only by gossip never count toward the quorum, a
member that follows the lead becomes a voter, a dead voter stops counting after
``voter_dead_after`` by the same committed path, and the set survives a restart."""

from __future__ import annotations

import dataclasses

from test_election_sim import ECFG, Sim

from meshd.sim import fake_info
from meshd.wire.messages import MemberUpdate
from meshd.wire.records import MemberRecord, MemberState

#: Long enough for the first voter set (stability window 3 s) and a change or two.
SETTLE = ECFG.stability_window + 2.0


def voter_sets(sim: Sim) -> set[tuple[int, tuple[str, ...]]]:
    return {sim.core(n).election.voter_set for n in sim.up()}


def settled(sim: Sim, count: int) -> bool:
    sets = voter_sets(sim)
    return len(sets) == 1 and len(next(iter(sets))[1]) == count


def test_the_lead_decides_the_first_set_and_every_member_holds_it() -> None:
    sim = Sim([50, 40, 30, 20, 10], seed=1)
    lead, _ = sim.started()
    assert sim.until(lambda: settled(sim, 5), SETTLE) is not None
    ((version, ids),) = voter_sets(sim)
    assert version == 1 and set(ids) == set(sim.ids)
    assert sim.until(sim.core(lead).election.voters_committed, 1.0) is not None


def test_members_known_only_by_gossip_never_count() -> None:
    # 40 members with valid info that nobody can reach (what an insider holding the mesh
    # key can gossip): before, they counted toward the quorum (45 members: 23 votes) and
    # the lead lost its lease for good; now the quorum stays 3 of 5.
    sim = Sim([50, 40, 30, 20, 10], seed=2)
    lead, _ = sim.started()
    assert sim.until(lambda: settled(sim, 5), SETTLE) is not None
    fakes = tuple(
        MemberRecord(dataclasses.replace(fake_info(f"fake{i}"), priority=90), MemberState.ALIVE)
        for i in range(40)
    )
    voucher = next(n for n in sim.ids if n != lead)
    for n in sim.ids:
        if n != voucher:
            sim.step(n, lambda c, now: c.receive(voucher, MemberUpdate(fakes), now))
    assert all(len(sim.core(n).membership.members()) >= 44 for n in sim.ids if n != voucher)
    sim.run(3.0)
    assert sim.agreed() == lead
    assert {sim.core(n).election.quorum() for n in sim.ids} == {3}
    # Failover still works: the survivors elect among the five.
    sim.net.crash(lead)
    took = sim.until(lambda: sim.agreed() not in (None, lead), 5.0)
    assert took is not None and took < 2.0
    assert settled(sim, 5)  # the fakes were never added


def test_a_member_that_follows_the_lead_becomes_a_voter() -> None:
    sim = Sim([50, 40, 30], seed=3)
    sim.started()
    assert sim.until(lambda: settled(sim, 3), SETTLE) is not None
    new = sim.add("late", 5)
    assert sim.until(lambda: settled(sim, 4), SETTLE) is not None
    ((version, ids),) = voter_sets(sim)
    assert new in ids and version == 2


def test_a_dead_voter_stops_counting_after_voter_dead_after() -> None:
    ecfg = dataclasses.replace(ECFG, voter_dead_after=5.0)
    sim = Sim([50, 40, 30, 20, 10], seed=4, ecfg=ecfg)
    lead, _ = sim.started()
    assert sim.until(lambda: settled(sim, 5), SETTLE) is not None
    down = [n for n in sim.ids if n != lead][:2]
    for n in down:
        sim.net.crash(n)
    # Two of five gone: still 5 voters (quorum 3) until they have been dead 5 s; then
    # removed one at a time, each change held by a majority of the new set.
    sim.run(2.0)
    assert settled(sim, 5)
    assert sim.until(lambda: settled(sim, 3), 15.0) is not None
    assert all(n not in next(iter(voter_sets(sim)))[1] for n in down)
    # A third one fails: 2 of the 3 voters left still make a quorum (with the 5 of
    # before, 2 of 5 would not).
    third = next(n for n in sim.up() if n != lead)
    sim.net.crash(third)
    sim.run(3.0)
    assert sim.agreed() == lead
    assert sim.core(lead).election.has_lease(sim.net.now)


def test_the_voter_set_survives_a_restart() -> None:
    sim = Sim([50, 40, 30], seed=5)
    lead, _ = sim.started()
    assert sim.until(lambda: settled(sim, 3), SETTLE) is not None
    node = next(n for n in sim.ids if n != lead)
    before = sim.core(node).election.voter_set
    sim.net.crash(node)
    core = sim.restart(node)
    assert core.election.voter_set == before
