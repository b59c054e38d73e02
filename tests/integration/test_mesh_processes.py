"""Real daemons on loopback: the mesh forms, notices crashes, takes restarts back."""

from __future__ import annotations

import pytest
from harness import Mesh, all_see_all, wait_for

pytestmark = pytest.mark.integration


def test_five_nodes_joined_through_one_seed_form_one_mesh(mesh: Mesh) -> None:
    seed = mesh.add("n1").start()
    seed.wait_ready()
    others = [mesh.add(f"n{i}", peers=(seed.seed,)).start() for i in range(2, 6)]
    for d in others:
        d.wait_ready()
    nodes = [seed, *others]
    wait_for(lambda: all_see_all(nodes), what="5 nodes to see each other")
    # Everyone learned the others from the one seed (membership gossip), and the
    # table shows the self row plus 4 peers with their roles and addresses.
    st = others[-1].status()
    assert {p["name"] for p in st["peers"]} == {"n1", "n2", "n3", "n4"}
    assert all(p["role"] == "network-admin" and p["address"] == "127.0.0.1" for p in st["peers"])
    assert st["self"]["mesh_id"] == seed.status()["self"]["mesh_id"]


def test_kill9_is_marked_dead_by_all_and_restart_rejoins_with_same_id(mesh: Mesh) -> None:
    seed = mesh.add("n1").start()
    seed.wait_ready()
    nodes = [seed] + [mesh.add(f"n{i}", peers=(seed.seed,)).start() for i in (2, 3)]
    for d in nodes:
        d.wait_ready()
    wait_for(lambda: all_see_all(nodes), what="3 nodes to see each other")
    victim = nodes[2]
    victim_id = victim.node_id
    inc_before = victim.status()["self"]["incarnation"]
    victim.kill9()
    wait_for(
        lambda: all(d.peer_states().get(victim_id) == "dead" for d in nodes[:2]),
        what="the killed node to be marked dead by all",
    )
    victim._status = None
    victim.start()
    st = victim.wait_ready()
    assert st["self"]["id"] == victim_id  # same identity from its state dir
    assert st["self"]["incarnation"] > inc_before
    wait_for(lambda: all_see_all(nodes), what="the restarted node to rejoin")


def test_graceful_stop_marks_left_at_once(mesh: Mesh) -> None:
    a = mesh.add("a").start()
    a.wait_ready()
    b = mesh.add("b", peers=(a.seed,)).start()
    b.wait_ready()
    wait_for(lambda: all_see_all([a, b]), what="2 nodes to see each other")
    b_id = b.node_id
    assert b.stop() == 0
    wait_for(lambda: a.peer_states().get(b_id) == "left", timeout=5, what="b to be left")


def test_nodes_find_each_other_over_mdns_on_loopback(mesh: Mesh) -> None:
    nodes = [mesh.add(f"m{i}", mdns=True).start() for i in range(3)]
    for d in nodes:
        d.wait_ready()
    wait_for(lambda: all_see_all(nodes), what="3 nodes to find each other over mDNS")
