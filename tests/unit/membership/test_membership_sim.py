"""50-node scenarios on the fake network: join, leave, crash, false suspicion, restart,
message loss, partition and heal, stale mDNS records.

Default (LAN) timings; everything runs in simulated time. The observed times are
printed (``pytest -s``) and asserted against generous bounds.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest

from meshd.config import MembershipConfig
from meshd.effects import MemberChanged
from meshd.sim import FakeNetwork, fake_info
from meshd.wire.messages import Heartbeat, Hello, IntroAck
from meshd.wire.records import MemberState

N = 50
CFG = MembershipConfig()
ALIVE, SUSPECT, DEAD, LEFT = (
    MemberState.ALIVE,
    MemberState.SUSPECT,
    MemberState.DEAD,
    MemberState.LEFT,
)
#: The worst case of one detection by one node: silence, direct probe, indirect probes.
DETECTION = CFG.suspect_after + CFG.probe_timeout + CFG.indirect_timeout


def report(what: str, seconds: float | None) -> None:
    print(f"\n[sim] {what}: {seconds if seconds is None else round(seconds, 3)} s")


def start_cluster(net: FakeNetwork, n: int = N, stagger: float = 0.02) -> list[str]:
    """Nodes start one by one and announce themselves over mDNS."""
    ids = []
    for i in range(n):
        m = net.add_member(fake_info(f"n{i:02d}"))
        ids.append(m.self_id)
        net.announce(m.self_id)
        net.advance(stagger)
    return ids


def states(net: FakeNetwork, target: str, observers: list[str]) -> Counter[MemberState | None]:
    out: Counter[MemberState | None] = Counter()
    for o in observers:
        view = net.membership(o).get(target)
        out[None if view is None else view.state] += 1
    return out


def all_see_all_alive(net: FakeNetwork, ids: list[str]) -> Callable[[], bool]:
    wanted = {i: set(ids) - {i} for i in ids}

    def pred() -> bool:
        for i in ids:
            alive = {v.info.node_id for v in net.membership(i).members() if v.state is ALIVE}
            if alive != wanted[i]:
                return False
        return True

    return pred


def all_see(
    net: FakeNetwork, observers: list[str], targets: list[str], state: MemberState
) -> Callable[[], bool]:
    def pred() -> bool:
        for o in observers:
            m = net.membership(o)
            for t in targets:
                view = m.get(t)
                if view is None or view.state is not state:
                    return False
        return True

    return pred


def verdicts(
    net: FakeNetwork, state: MemberState, since: float = 0.0
) -> list[tuple[float, str, MemberChanged]]:
    return [
        (t, n, e)
        for t, n, e in net.log
        if t >= since
        and isinstance(e, MemberChanged)
        and e.record.state is state
        and e.record.info.node_id != n
    ]


def same_digest(net: FakeNetwork, ids: list[str]) -> bool:
    return len({net.membership(i).digest() for i in ids}) == 1


@pytest.fixture
def cluster() -> tuple[FakeNetwork, list[str]]:
    """50 nodes that joined over mDNS and ran for 2 s."""
    net = FakeNetwork(seed=7)
    ids = start_cluster(net)
    assert net.run_until(all_see_all_alive(net, ids), 5.0) is not None
    net.advance(2.0)
    assert all_see_all_alive(net, ids)()
    return net, ids


# ---- join ------------------------------------------------------------------------------


def test_join_via_mdns() -> None:
    net = FakeNetwork(seed=1)
    ids = start_cluster(net)  # the last one starts at ~1 s
    took = net.run_until(all_see_all_alive(net, ids), 5.0, poll=0.001)
    report("50-node mDNS join, after the last node started", took)
    assert took is not None and took < 0.05
    net.advance(3.0)
    assert all_see_all_alive(net, ids)()
    assert same_digest(net, ids)
    assert verdicts(net, SUSPECT) == []
    assert net.stats["dropped_unlinked"] == 0


def test_join_all_at_once_via_mdns() -> None:
    net = FakeNetwork(seed=2)
    ids = [net.add_member(fake_info(f"n{i:02d}")).self_id for i in range(N)]
    for i in ids:
        net.announce(i)
    took = net.run_until(all_see_all_alive(net, ids), 5.0, poll=0.001)
    report("50-node mDNS join, all at once", took)
    assert took is not None and took < 0.05


@pytest.mark.parametrize("direction", ["node_finds_seed", "seed_finds_node"])
def test_join_via_one_seed(direction: str) -> None:
    net = FakeNetwork(seed=3)
    seed = net.add_member(fake_info("seed")).self_id
    ids = [seed]
    for i in range(1, N):
        node = net.add_member(fake_info(f"n{i:02d}")).self_id
        ids.append(node)
        if direction == "node_finds_seed":
            net.seed(node, seed)
        else:
            net.announce(node, to=[seed], source="seed")
        net.advance(0.02)
    # Each node knows only the seed; the rest comes by gossip (SYNC vouching).
    took = net.run_until(all_see_all_alive(net, ids), 20.0, poll=0.01)
    report(f"50-node join through one seed ({direction}), after the last node started", took)
    assert took is not None and took < 5.0
    net.advance(2.0)
    assert all_see_all_alive(net, ids)()
    assert same_digest(net, ids)
    assert verdicts(net, DEAD) == []
    assert net.stats["dropped_unlinked"] == 0


@pytest.mark.parametrize("loss", [0.0, 0.1])
def test_join_all_at_once_via_one_seed(loss: float) -> None:
    net = FakeNetwork(seed=5, loss=loss)
    seed = net.add_member(fake_info("seed")).self_id
    ids = [seed]
    for i in range(1, N):
        node = net.add_member(fake_info(f"n{i:02d}")).self_id
        ids.append(node)
        net.seed(node, seed)
    took = net.run_until(all_see_all_alive(net, ids), 20.0)
    report(f"50-node join through one seed, all at once, loss {loss:.0%}", took)
    assert took is not None and took < (1.0 if loss == 0 else 8.0)
    net.loss = 0.0  # under loss, refutations keep incarnations (and digests) moving
    assert net.run_until(lambda: same_digest(net, ids), 5.0) is not None
    assert verdicts(net, DEAD) == []


def test_join_via_intro_exchange_like_the_daemon() -> None:
    """The daemon's static-seed path: INTRO answered by INTRO_ACK with the seed's view."""
    net = FakeNetwork(seed=4)
    seed = net.add_member(fake_info("seed")).self_id
    ids = [seed]
    for i in range(1, N):
        node = net.add_member(fake_info(f"n{i:02d}")).self_id
        ids.append(node)
        s, m = net.membership(seed), net.membership(node)
        # Seed side: the INTRO's info as a HELLO, then the reply built from its view.
        net.apply(seed, s.receive(m.self_id, Hello(m.self_info), net.now))
        ack = IntroAck(s.self_info, tuple(s.snapshot()))
        # Joiner side: the seed's record, then its INTRO_ACK.
        net.apply(node, m.discovered(s.self_info, net.now, "seed"))
        net.apply(node, m.receive(s.self_id, ack, net.now))
        net.advance(0.02)
    took = net.run_until(all_see_all_alive(net, ids), 20.0)
    report("50-node join through INTRO/INTRO_ACK, after the last node started", took)
    assert took is not None and took < 5.0
    assert net.stats["dropped_unlinked"] == 0


# ---- leave and crash -------------------------------------------------------------------


def test_graceful_leave_seen_by_all_within_one_delivery(
    cluster: tuple[FakeNetwork, list[str]],
) -> None:
    net, ids = cluster
    x, others = ids[10], ids[:10] + ids[11:]
    net.leave(x)
    net.advance(net.latency * 1.5)  # one delivery
    assert states(net, x, others) == Counter({LEFT: N - 1})
    assert {e.reason for _, _, e in verdicts(net, LEFT)} == {"left"}
    net.advance(10.0)
    assert states(net, x, others) == Counter({LEFT: N - 1})
    assert all_see_all_alive(net, others)()
    assert same_digest(net, others)
    assert all(x not in net.links(o) for o in others)
    assert net.stats["dropped_unlinked"] == 0


def test_crash_detected_by_all(cluster: tuple[FakeNetwork, list[str]]) -> None:
    net, ids = cluster
    x, others = ids[20], ids[:20] + ids[21:]
    t0 = net.now
    net.crash(x)
    took = net.run_until(all_see(net, others, [x], DEAD), 10.0, poll=0.001)
    report("50-node crash, until all 49 hold it DEAD", took)
    first = min(t for t, _, e in verdicts(net, DEAD) if e.record.info.node_id == x) - t0
    report("50-node crash, first DEAD verdict", first)
    assert took is not None
    assert took <= DETECTION + 3 * CFG.heartbeat_interval
    reasons = Counter(e.reason for _, _, e in verdicts(net, DEAD))
    assert set(reasons) <= {"probe_failed", "gossip"} and reasons["probe_failed"] >= 1
    # Nobody else was declared dead, everyone else stays alive, views agree.
    assert {e.record.info.node_id for _, _, e in verdicts(net, DEAD)} == {x}
    net.advance(3.0)
    assert all_see_all_alive(net, others)()
    assert same_digest(net, others)
    assert net.stats["dropped_unlinked"] == 0


def test_two_crashes_at_once(cluster: tuple[FakeNetwork, list[str]]) -> None:
    net, ids = cluster
    xs, others = ids[:2], ids[2:]
    for x in xs:
        net.crash(x)
    took = net.run_until(all_see(net, others, xs, DEAD), 10.0, poll=0.001)
    report("50-node double crash, until all hold both DEAD", took)
    assert took is not None and took <= DETECTION + 3 * CFG.heartbeat_interval
    assert {e.record.info.node_id for _, _, e in verdicts(net, DEAD)} == set(xs)


# ---- false suspicion -------------------------------------------------------------------


def test_heartbeats_dropped_on_some_links_never_kill(
    cluster: tuple[FakeNetwork, list[str]],
) -> None:
    net, ids = cluster
    x = ids[5]
    deaf = set(ids[30:40])  # these never get x's heartbeats; probes and the rest flow
    net.drop = lambda s, t, p: s == x and t in deaf and isinstance(p, Heartbeat)
    t0 = net.now
    net.advance(10.0)
    assert [e for _, _, e in verdicts(net, DEAD, t0)] == []
    suspicions = [n for _, n, e in verdicts(net, SUSPECT, t0) if e.record.info.node_id == x]
    assert suspicions and set(suspicions) <= deaf  # suspected, probed, cleared
    assert net.membership(x).self_info.incarnation >= 1  # it refuted
    assert states(net, x, ids[:5] + ids[6:])[DEAD] == 0
    net.drop = None
    net.advance(3.0)
    assert all_see_all_alive(net, ids)()


def test_one_cut_link_never_kills(cluster: tuple[FakeNetwork, list[str]]) -> None:
    net, ids = cluster
    a, b = ids[1], ids[2]
    net.block(a, b)  # both ways; indirect probes through the 48 others still work
    t0 = net.now
    net.advance(10.0)
    assert verdicts(net, DEAD, t0) == []
    assert net.membership(a).get(b).state in (ALIVE, SUSPECT)  # type: ignore[union-attr]
    assert net.membership(b).get(a).state in (ALIVE, SUSPECT)  # type: ignore[union-attr]
    net.heal()
    net.advance(2.0)
    assert all_see_all_alive(net, ids)()


def test_node_declared_dead_by_mistake_comes_back_by_refutation(
    cluster: tuple[FakeNetwork, list[str]],
) -> None:
    net, ids = cluster
    x, others = ids[7], ids[:7] + ids[8:]
    net.drop = lambda s, t, p: s == x  # x is mute for a while (it still hears everyone)
    assert net.run_until(all_see(net, others, [x], DEAD), 5.0) is not None
    net.drop = None
    took = net.run_until(all_see_all_alive(net, ids), 20.0)
    report("wrongly dead node back alive everywhere (after it can speak again)", took)
    assert took is not None and took < 5.0
    inc = net.membership(x).self_info.incarnation
    assert inc >= 1
    assert all(net.membership(o).get(x).info.incarnation == inc for o in others)  # type: ignore[union-attr]
    assert same_digest(net, ids)
    assert net.stats["dropped_unlinked"] == 0


# ---- restart ---------------------------------------------------------------------------


@pytest.mark.parametrize("restore", [True, False])
def test_rejoin_after_restart_with_the_same_id(
    cluster: tuple[FakeNetwork, list[str]], restore: bool
) -> None:
    net, ids = cluster
    x, others = ids[30], ids[:30] + ids[31:]
    net.crash(x)
    assert net.run_until(all_see(net, others, [x], DEAD), 5.0) is not None
    net.advance(1.0)
    m = net.restart(x, restore=restore)
    assert m.self_info.incarnation == 1
    if not restore:
        net.announce(x)  # a fresh process without a store is found over mDNS
    took = net.run_until(all_see_all_alive(net, ids), 10.0, poll=0.001)
    report(f"restarted node alive everywhere (restore={restore})", took)
    assert took is not None and took < 1.0
    assert {e.reason for _, _, e in verdicts(net, ALIVE) if e.record.info.node_id == x} >= {
        "restarted"
    }
    assert all(net.membership(o).get(x).info.incarnation == 1 for o in others)  # type: ignore[union-attr]
    net.advance(3.0)
    assert all_see_all_alive(net, ids)()
    assert same_digest(net, ids)
    assert net.stats["dropped_unlinked"] == 0


def test_quick_restart_before_anyone_noticed(cluster: tuple[FakeNetwork, list[str]]) -> None:
    net, ids = cluster
    x = ids[40]
    net.crash(x)
    net.advance(0.1)
    net.restart(x)
    assert net.run_until(all_see_all_alive(net, ids), 5.0) is not None
    net.advance(3.0)
    assert all_see_all_alive(net, ids)()
    assert all(net.membership(o).get(x).info.incarnation >= 1 for o in ids if o != x)  # type: ignore[union-attr]


# ---- loss and partitions -----------------------------------------------------------------


def test_ten_percent_loss_no_false_dead(cluster: tuple[FakeNetwork, list[str]]) -> None:
    net, ids = cluster
    net.loss = 0.10
    t0 = net.now
    net.advance(20.0)
    suspicions = len(verdicts(net, SUSPECT, t0))
    print(f"\n[sim] 10% loss for 20 s: {suspicions} suspicions, all cleared, no DEAD")
    assert verdicts(net, DEAD, t0) == []
    for i in ids:
        assert {v.state for v in net.membership(i).members()} <= {ALIVE, SUSPECT}
    net.loss = 0.0
    assert net.run_until(all_see_all_alive(net, ids), 5.0) is not None
    assert net.run_until(lambda: same_digest(net, ids), 5.0) is not None


def test_partition_30_20_and_heal(cluster: tuple[FakeNetwork, list[str]]) -> None:
    net, ids = cluster
    left, right = ids[:30], ids[30:]
    net.partition(left, right)
    split = net.run_until(
        lambda: all_see(net, left, right, DEAD)() and all_see(net, right, left, DEAD)(), 10.0
    )
    report("partition 30|20: each side holds the other DEAD", split)
    assert split is not None and split <= DETECTION + 3 * CFG.heartbeat_interval
    net.advance(10.0)
    # Each side stays whole: nobody on the same side was declared dead.
    assert all_see_all_alive(net, left)() and all_see_all_alive(net, right)()
    assert same_digest(net, left) and same_digest(net, right)
    net.heal()
    took = net.run_until(all_see_all_alive(net, ids), 30.0)
    report("partition 30|20 healed: all 50 alive everywhere", took)
    bound = 1.5 * CFG.reconnect_interval + CFG.reconnect_window + 2 * CFG.sync_interval
    assert took is not None and took <= bound
    assert net.run_until(lambda: same_digest(net, ids), 5.0) is not None
    assert net.stats["dropped_unlinked"] == 0


# ---- stale mDNS records ----------------------------------------------------------------


def test_stale_mdns_record_of_a_ghost_is_never_listed_and_expires(
    cluster: tuple[FakeNetwork, list[str]],
) -> None:
    net, ids = cluster
    ghost = fake_info("ghost")  # its host died long ago; the record lingers
    before = {i: net.membership(i).digest() for i in ids}
    net.announce_info(ghost)
    assert all(ghost in net.membership(i).candidates() for i in ids)
    net.advance(CFG.candidate_timeout - 0.1)
    assert all(net.membership(i).get(ghost.node_id) is None for i in ids)
    assert {i: net.membership(i).digest() for i in ids} == before
    net.advance(0.2)
    assert all(net.membership(i).candidates() == [] for i in ids)
    assert all(ghost.node_id not in net.links(i) for i in ids)
    assert [
        e
        for _, _, e in net.log
        if isinstance(e, MemberChanged) and e.record.info.node_id == ghost.node_id
    ] == []


def test_stale_mdns_record_of_a_crashed_member_is_never_listed_alive(
    cluster: tuple[FakeNetwork, list[str]],
) -> None:
    net, ids = cluster
    x, others = ids[3], ids[:3] + ids[4:]
    net.crash(x)
    assert net.run_until(all_see(net, others, [x], DEAD), 5.0) is not None
    newcomer = net.add_member(fake_info("newcomer")).self_id
    net.announce(newcomer)
    net.announce(x, to=[newcomer])  # the crashed host's record is still cached
    t0 = net.now
    net.advance(CFG.candidate_timeout + 1.0)
    about_x = [
        e
        for t, n, e in net.log
        if t >= t0 and n == newcomer and isinstance(e, MemberChanged) and e.record.info.node_id == x
    ]
    assert all(e.record.state is not ALIVE for e in about_x)
    view = net.membership(newcomer).get(x)
    assert view is None or view.state is DEAD
    assert net.membership(newcomer).candidates() == []
    assert all_see_all_alive(net, [*others, newcomer])()
