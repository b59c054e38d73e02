"""Lead election across a real partition: 5 daemons in network namespaces, cut 3|2 by nft.

Real ``meshd`` processes found by mDNS on one bridge, distinct priorities. The current lead
is put on the 2-side of the cut: it must step down (its lease lapses without a quorum),
the 3-side must elect a lead of its own, and both minority nodes must end with no lead and
``no quorum``. After the heal all five must agree on one lead at one term. Throughout,
every ~0.1 s, the leads every node reports (status and LEAD_ELECTED events) are checked:
no term may ever have two different leads.

The module skips, with the reason, where this machine cannot build the lab
(``netlab.probe``) or where nft does not work in a lab namespace.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import pytest
from harness import DEADLINE, Daemon, Mesh, all_see_all, wait_for
from meshlab import POLL, Watch, agreed, cut_from
from netlab import Host, Lab, nft_usable

pytestmark = pytest.mark.lab

#: Every node listens on the standard port of its own host, as on a real LAN.
PORT = 7790
#: Lead priority of h1..h5: distinct, so every side of a cut has a well-defined winner.
PRIORITIES = (100, 90, 80, 70, 60)
#: s. Generous bounds; the waits poll and stop at the first success.
FORM_DEADLINE = max(DEADLINE, 45.0)
PARTITION_DEADLINE = max(DEADLINE, 30.0)
#: A dead peer is re-contacted every reconnect_interval (5 s +-50 %) after a heal.
HEAL_DEADLINE = max(DEADLINE, 30.0)
#: s. After both sides settled, the cut is held this long: nothing may change in it.
HOLD = 3.0


@pytest.fixture
def lab(host: Host) -> Iterator[Lab]:
    """One lab; closed (daemons by pid, namespaces by exact name) even on failure."""
    the_lab = Lab(host)
    try:
        yield the_lab
    finally:
        the_lab.close()


def test_partition_3_2_with_the_lead_in_the_minority(lab: Lab, mesh: Mesh) -> None:
    nodes = lab.add_nodes(len(PRIORITIES))
    why = nft_usable(lab.host, nodes[0].ns)
    if why is not None:
        pytest.skip(why)
    daemons: list[Daemon] = []
    for n, pri in zip(nodes, PRIORITIES, strict=True):
        d = mesh.add(
            f"h{n.index}",
            mdns=True,
            listen=f"0.0.0.0:{PORT}",
            wrap=lab.exec_prefix(n),
            extra=("--interface", n.ifaces[0], "--priority", str(pri)),
        )
        d.start()
        lab.track(d.proc, d.stop)
        daemons.append(d)
    for d in daemons:
        d.wait_ready()
    wait_for(lambda: all_see_all(daemons), FORM_DEADLINE, "5 namespaced nodes to see each other")
    ids = {d.name: d.node_id for d in daemons}
    names = {i: n for n, i in ids.items()}
    node_of = {d.name: n for d, n in zip(daemons, nodes, strict=True)}
    watch = Watch(daemons, names)
    everyone = list(ids)

    # The top-priority node leads once the mesh is stable (after any priority takeover).
    top = daemons[0].name
    lead, term = watch.until(
        lambda s: (a := agreed(s, everyone)) and a[0] == ids[top] and a,
        FORM_DEADLINE,
        "all five to agree on the top-priority lead",
    )

    # Minority: the current lead and the lowest-priority node; majority: the other three.
    minority = [names[lead], daemons[-1].name]
    majority = [n for n in everyone if n not in minority]
    old_lead = names[lead]
    t_cut = time.time()
    for name in minority:
        cut_from(lab, node_of[name], [node_of[m] for m in majority])

    def settled(s: dict[str, dict[str, Any]]) -> tuple[str, int] | None:
        a = agreed(s, majority)
        if a is None or a[0] not in {ids[m] for m in majority} or a[1] <= term:
            return None
        for name in minority:
            st = s[name]
            if st["lead"] is not None or "no quorum" not in (st["lead_reason"] or ""):
                return None
        return a

    try:
        new_lead, new_term = watch.until(
            settled, PARTITION_DEADLINE, "the 3-side to elect and the 2-side to have no quorum"
        )
        t_settled = time.time()
        # Hold the cut: nothing changes, and the minority does not inflate its term.
        end = time.monotonic() + HOLD
        for _ in range(int(HOLD / POLL) + 1):
            s = watch.sample()
            assert settled(s) == (new_lead, new_term), f"a side changed during the cut: {s}"
            for name in minority:
                assert s[name]["term"] <= term, f"{name} raised its term without a quorum"
                assert s[name]["role"] != "lead"
            # The cut is the intended one: each side holds the other down, and the pairs
            # inside each side keep talking.
            for name, st in s.items():
                side = minority if name in minority else majority
                for p in st["peers"]:
                    want_alive = names[p["id"]] in side
                    assert (p["state"] == "alive") == want_alive, f"{name}: {st['peers']}"
            if time.monotonic() >= end:
                break
            time.sleep(POLL)
    finally:
        for name in minority:
            with contextlib.suppress(Exception):
                lab.heal(node_of[name])
    t_heal = time.time()

    with next(d for d in daemons if d.name == old_lead).client() as c:
        downs = [
            e
            for e in c.events(t_cut)
            if e["type"] == "STEPPED_DOWN" and e["term"] == term and e["lead"] == lead
        ]
    assert downs, f"{old_lead} led on the 2-side and never stepped down"
    with next(d for d in daemons if d.name == names[new_lead]).client() as c:
        won = [
            e["at"]
            for e in c.events(t_cut)
            if e["type"] == "LEAD_ELECTED" and e["term"] == new_term and e["lead"] == new_lead
        ]
    assert won, f"no LEAD_ELECTED event on {names[new_lead]} for term {new_term}"

    one, one_term = watch.until(
        lambda s: agreed(s, everyone), HEAL_DEADLINE, "all five to agree on one lead after heal"
    )
    t_one = time.time()
    watch.until(
        lambda s: (a := agreed(s, everyone)) and a[0] == ids[top] and a,
        HEAL_DEADLINE,
        "the top-priority node to lead again after the heal",
    )
    t_top = time.time()
    # Everything every node recorded, once more, then the verdict (also raised at once
    # during the run by Watch).
    watch.cursor.clear()
    watch.sample()
    assert all(len(v) == 1 for v in watch.leads.values()), dict(watch.leads)
    print(
        f"\n[election lab] cut 3|2 with the lead {old_lead} (term {term}) on the 2-side: "
        f"{old_lead} stepped down ({downs[0]['reason']}) {downs[0]['at'] - t_cut:.3f} s "
        f"after the cut; the 3-side elected {names[new_lead]} (term {new_term}) "
        f"{min(won) - t_cut:.3f} s after the cut (old lease ended "
        f"{min(won) - downs[0]['at']:.3f} s before); both sides settled (polled) "
        f"{t_settled - t_cut:.3f} s after the cut; heal -> all five agree on "
        f"{names[one]} (term {one_term}) in {t_one - t_heal:.3f} s; heal -> {top} leads "
        f"again in {t_top - t_heal:.3f} s; {watch.samples} samples, max term "
        f"{max(watch.leads)}, terms with two leads: 0"
    )
