"""A daemon whose durable state went bad while it was stopped starts anyway: the bad
records are quarantined, audited and reported by ``meshctl health`` until cleared, and
the node rejoins and works (real processes on loopback)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import msgpack
import pytest
from harness import Daemon, Mesh, all_see_all, run_meshctl, wait_for

from meshd.store.db import Store

pytestmark = pytest.mark.integration


def ctl(d: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return run_meshctl("--state-dir", str(d.state_dir), *args)


def one_lead(nodes: list[Daemon]) -> bool:
    leads = [(d.status()["lead"] or {}).get("id") for d in nodes]
    return None not in leads and len(set(leads)) == 1


def corrupt(state_dir: Path, task_id: str) -> None:
    """Write bad records straight into a stopped daemon's store."""
    store = Store(state_dir)
    try:
        with store.env.begin(write=True) as txn:
            txn.put(b"term", msgpack.packb(2**63 - 1), db=store._meta)
            txn.put(b"incarnation", msgpack.packb(2**62 - 1), db=store._meta)
            assert txn.get(task_id.encode(), db=store._tasks) is not None
            txn.put(task_id.encode(), b"garbage", db=store._tasks)
    finally:
        store.close()


def test_bad_term_incarnation_and_task_copy_are_quarantined_and_the_node_works(
    mesh: Mesh,
) -> None:
    a = mesh.add("a", role="team-lead").start()
    a.wait_ready()
    b = mesh.add("b", role="network-admin", peers=(a.seed,)).start()
    c = mesh.add("c", role="devops", peers=(a.seed,)).start()
    nodes = [a, b, c]
    for d in nodes:
        d.wait_ready()
    wait_for(lambda: all_see_all(nodes), what="the mesh to form")
    wait_for(lambda: one_lead(nodes), what="one lead agreed by all")
    with a.client() as client:
        done = client.delegate("echo", {"message": "before"}, role="devops").wait(timeout=30)
    assert done["state"] == "complete"
    wait_for(lambda: b.client().task(done["id"])["state"] == "complete", what="b's copy")
    b_id = b.node_id
    old_incarnation = b.status()["self"]["incarnation"]

    assert b.stop() == 0
    corrupt(b.state_dir, done["id"])
    b.start()
    st = b.wait_ready()  # it starts: never refuses over its own state

    quarantined = {(q["table"], q["key"]) for q in st["quarantine"]}
    assert quarantined == {
        ("meta", "term"),
        ("meta", "voted_for"),  # the vote that belonged to the lost term
        ("meta", "incarnation"),
        ("tasks", done["id"]),
    }
    reasons = {(q["table"], q["key"]): q["reason"] for q in st["quarantine"]}
    assert "out of range" in reasons[("meta", "term")]
    assert "out of range" in reasons[("meta", "incarnation")]
    assert st["self"]["incarnation"] > old_incarnation  # the wall-clock fallback

    # It rejoins, learns the mesh's term from the lead, and follows it.
    wait_for(lambda: all_see_all(nodes), what="b to rejoin")
    wait_for(lambda: one_lead(nodes), what="one lead agreed by all, b included")
    wait_for(lambda: b.status()["term_known"], what="b to learn the term")
    wait_for(
        lambda: b.client().task(done["id"])["state"] == "complete",
        what="b to get the quarantined task copy back from the mesh",
    )
    for d in (a, c):
        assert d.status()["quarantine"] == []

    # Audited, and reported by health as degraded (exit 5) with the reason.
    audit = b.client().audit(kind="STATE_QUARANTINED")
    assert {(r["table"], r["key"]) for r in audit} == quarantined
    assert all(r["node"] == b_id and r["reason"] for r in audit)
    out = ctl(b, "health")
    assert out.returncode == 5, out
    assert out.stderr.startswith("meshctl: degraded: 4 state records quarantined (")
    report: dict[str, Any] = json.loads(ctl(b, "health", "--json").stdout)
    assert report["healthy"] is False and report["degraded"] is True
    assert report["lead"] is not None and len(report["warnings"]) == 4
    listing = ctl(b, "state", "quarantine", "list")
    assert listing.returncode == 0 and "meta/term" in listing.stdout, listing

    # It works: a task delegated from it, and one run on it, complete.
    with b.client() as client:
        assert client.run("echo", {"message": "after"}, role="devops", timeout=30) == {
            "message": "after"
        }
    with c.client() as client:
        assert client.run("echo", {"message": "on b"}, node="b", timeout=30) == {"message": "on b"}

    # The operator clears the quarantine: healthy again, and that is audited too.
    out = ctl(b, "state", "quarantine", "clear")
    assert out.returncode == 0 and "cleared 4" in out.stdout, out
    out = ctl(b, "health")
    assert out.returncode == 0, out
    assert b.client().audit(kind="STATE_QUARANTINE_CLEARED")[0]["count"] == 4
