"""Delegation with real daemons on loopback: delegate to a role, crash a worker during a
resumable task, kill the lead during a burst, refuse bad input before storing anything."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from harness import Daemon, Mesh, all_see_all, run_meshctl, wait_for

from meshd.client import TaskFailed
from meshd.errors import ControlError

pytestmark = pytest.mark.integration


def start(mesh: Mesh, roles: list[tuple[str, str]]) -> list[Daemon]:
    """Daemons named and roled as given; the first is the seed. Waits for one lead."""
    name, role = roles[0]
    first = mesh.add(name, role=role).start()
    first.wait_ready()
    nodes = [first] + [mesh.add(n, role=r, peers=(first.seed,)).start() for n, r in roles[1:]]
    for d in nodes:
        d.wait_ready()
    wait_for(lambda: all_see_all(nodes), what="mesh to form")
    wait_for(
        lambda: (
            len({(d.status()["lead"] or {}).get("id") for d in nodes} - {None}) == 1
            and all(d.status()["lead"] for d in nodes)
        ),
        what="one lead agreed by all",
    )
    return nodes


def ctl(d: Daemon, *args: str) -> Any:
    return run_meshctl("--state-dir", str(d.state_dir), *args)


def runs(d: Daemon, skill: str) -> int:
    stats = d.status()["tasks"]["here"]["skill_stats"]
    return int(stats.get(skill, {}).get("runs", 0))


def test_delegate_to_another_nodes_role(mesh: Mesh) -> None:
    a, b, c = start(mesh, [("a", "team-lead"), ("b", "network-admin"), ("c", "devops")])
    out = ctl(b, "delegate", "sysinfo", "--role", "devops", "--json")
    assert out.returncode == 0, out.stderr
    task = json.loads(out.stdout)
    assert task["state"] == "complete"
    assert task["assigned_name"] == "c" and task["origin_name"] == "b"
    assert task["result"]["cpu_count"] >= 1 and task["result"]["hostname"]
    # Every node holds a copy of it (catch-up through the lead's updates).
    for d in (a, b, c):
        wait_for(
            lambda d=d: d.client().task(task["id"])["state"] == "complete",
            what=f"{d.name} to hold the finished task",
        )
    # The "NAME key=value" form and the Python client, pinned to a node by name.
    out = ctl(b, "delegate", "echo message='hi there'", "--node", "a")
    assert out.returncode == 0 and json.loads(out.stdout) == {"message": "hi there"}
    with c.client() as client:
        handle = client.delegate("echo", {"message": "from c"}, role="network-admin")
        assert handle.result(timeout=20) == {"message": "from c"}
        assert client.task(handle.task_id)["assigned_name"] == "b"
        # Delegate and wait in one call; a result not there in time is a TimeoutError.
        assert client.run("echo", {"message": "run"}, node="a") == {"message": "run"}
        with pytest.raises(TimeoutError):
            client.run("sleep", {"seconds": 5.0}, timeout=0.3, role="devops")
    # Status: mesh totals and per-node figures.
    st = b.status()
    assert st["tasks"]["totals"]["complete"] >= 3
    table = ctl(b, "status").stdout
    assert "tasks:" in table and "success 100.0%" in table


def test_bad_input_is_refused_before_anything_is_stored(mesh: Mesh) -> None:
    (a,) = start(mesh, [("a", "team-lead")])
    cases = [
        (("delegate", "nosuch"), "unknown skill 'nosuch'"),
        (("delegate", "sleep"), "missing required parameter 'seconds'"),
        (("delegate", "sleep", "seconds=abc"), "must be a number"),
        (("delegate", "sleep", "seconds=1", "bogus=2"), "bogus"),
        (("delegate", "echo", "message=x", "--role", "nosuch"), "unknown role 'nosuch'"),
        (("delegate", "echo", "message=x", "--node", "nosuch"), "unknown node 'nosuch'"),
        (("delegate", "echo", "message=x", "--after", "0123456789ab"), "unknown task id"),
        (("delegate", "echo", "message"), "expected key=value"),
        (("task", "show", "feedfacefeed"), "unknown task id"),
        (("task", "cancel", "feedfacefeed"), "unknown task id"),
        (("task", "retry", "feedfacefeed"), "unknown task id"),
        (("task", "list", "--state", "bogus"), "unknown state 'bogus'"),
    ]
    for args, needle in cases:
        out = ctl(a, *args)
        assert out.returncode == 2, (args, out.returncode, out.stderr)
        assert needle in out.stderr, (args, out.stderr)
        assert "Traceback" not in out.stderr
    assert a.client().tasks() == []
    # A retry of a task that did not fail is refused with the reason (exit 1).
    done = ctl(a, "delegate", "echo", "message=x", "--no-wait").stdout.strip()
    wait_for(lambda: a.client().task(done)["state"] == "complete", what="echo to finish")
    out = ctl(a, "task", "retry", done)
    assert out.returncode == 1 and "only a failed task can be retried" in out.stderr
    assert len(a.client().tasks()) == 1


def test_kill9_worker_during_sleep_resumes_from_checkpoint_elsewhere(mesh: Mesh) -> None:
    a, b, c = start(mesh, [("a", "team-lead"), ("b", "network-admin"), ("c", "network-admin")])
    with a.client() as client:
        handle = client.delegate("sleep", {"seconds": 3.0, "step": 0.1}, role="network-admin")
        view = wait_for(
            lambda: (v := client.task(handle.task_id))["progress"]["pct"] >= 30 and v,
            what="the sleep to be a third done",
        )
        worker = b if view["assigned_name"] == "b" else c
        other = c if worker is b else b
        worker.kill9()
        result = handle.result(timeout=60)
        final = client.task(handle.task_id)
    assert final["assigned_name"] == other.name
    assert final["attempt"] == 2
    # It resumed from the dead worker's last checkpoint instead of starting over.
    assert result["resumed_from"] >= 0.5, result
    assert any("lost" in h["reason"] for h in final["history"])
    audit = a.client().audit(kind="TASK_REASSIGNED")
    assert any(r["task_id"] == handle.task_id for r in audit)


def test_non_idempotent_task_is_not_rerun_after_agent_loss(mesh: Mesh) -> None:
    a, b, c = start(mesh, [("a", "team-lead"), ("b", "network-admin"), ("c", "network-admin")])
    with a.client() as client:
        handle = client.delegate("sleep", {"seconds": 2.0}, role="network-admin", idempotent=False)
        view = wait_for(
            lambda: (v := client.task(handle.task_id))["state"] == "running" and v,
            what="the task to run",
        )
        worker = b if view["assigned_name"] == "b" else c
        worker.kill9()
        with pytest.raises(TaskFailed) as failed:
            handle.result(timeout=30)
        assert failed.value.code == "agent_lost"
        message = failed.value.task["error"]["message"]
        assert "may have run" in message and "--force" in message, message
        # A plain retry is refused: the task may have run on the lost agent.
        refused = ctl(a, "task", "retry", handle.task_id)
        assert refused.returncode == 1, refused
        assert "may have run already" in refused.stderr and "--force" in refused.stderr
        assert client.task(handle.task_id)["state"] == "failed"
        # The operator re-runs it on purpose: it completes on the surviving agent.
        out = ctl(a, "task", "retry", handle.task_id, "--force", "--wait")
        assert out.returncode == 0, out.stderr
        final = client.task(handle.task_id)
    assert final["state"] == "complete"
    assert final["assigned_name"] != worker.name


def test_kill9_lead_during_burst_loses_none_and_runs_none_twice(mesh: Mesh) -> None:
    a, b, c = start(mesh, [("a", "team-lead"), ("b", "network-admin"), ("c", "network-admin")])
    assert b.status()["lead"]["name"] == "a"
    handles = []
    with b.client() as client:
        for i in range(200):
            handles.append(client.delegate("echo", {"message": f"m{i}"}, role="network-admin"))
            if i == 60:
                a.kill9()
        results = {h.task_id: h.result(timeout=60) for h in handles}
        views = [client.task(h.task_id) for h in handles]
    for i, h in enumerate(handles):
        assert results[h.task_id] == {"message": f"m{i}"}
    assert all(v["state"] == "complete" for v in views)
    assert all(v["assigned_name"] in ("b", "c") for v in views)
    # Exactly one run per task across both agents: none lost, none twice.
    assert runs(b, "echo") + runs(c, "echo") == 200
    new_lead = b.status()["lead"]
    assert new_lead is not None and new_lead["name"] in ("b", "c")
    assert any(r["type"] == "TASKS_RESUMED" for r in b.client().events()) or any(
        r["type"] == "TASKS_RESUMED" for r in c.client().events()
    )


def test_dependencies_verify_handoff_and_events(mesh: Mesh) -> None:
    a, b, c = start(mesh, [("a", "team-lead"), ("b", "network-admin"), ("c", "network-admin")])
    seen: list[dict[str, Any]] = []
    with a.client() as client:
        first = client.delegate("sleep", {"seconds": 0.5}, role="network-admin")
        after = client.delegate("echo", {"message": "second"}, after=[first.task_id], verify=True)
        assert after.result(timeout=30) == {"message": "second"}
        done_first = client.task(first.task_id)
        done_after = client.task(after.task_id)
        assert done_after["state"] == "verified"
        # It started only once its dependency had completed.
        started = next(h["at"] for h in done_after["history"] if h["state"] == "assigned")
        assert started >= done_first["updated_at"]
        # A dependency that fails fails its dependents with that reason.
        doomed = client.delegate("sleep", {"seconds": 30.0}, role="network-admin")
        waiting = client.delegate("echo", {"message": "never"}, after=[doomed.task_id])
        client.cancel(doomed.task_id)
        with pytest.raises(TaskFailed) as failed:
            waiting.result(timeout=30)
        assert failed.value.code == f"dependency_failed:{doomed.task_id}"
        # Operator handoff: a running sleep moves to the other agent with its checkpoint.
        moving = client.delegate("sleep", {"seconds": 2.0, "step": 0.1}, role="network-admin")
        view = wait_for(
            lambda: (v := client.task(moving.task_id))["progress"]["pct"] >= 25 and v,
            what="the sleep to be a quarter done",
        )
        target = "c" if view["assigned_name"] == "b" else "b"
        out = ctl(a, "task", "handoff", moving.task_id, "--to", target)
        assert out.returncode == 0, out.stderr
        result = moving.result(timeout=30)
        assert client.task(moving.task_id)["assigned_name"] == target
        assert result["resumed_from"] >= 0.4, result
    # Events: a subscriber sees a task complete.
    with b.client() as listener:
        listener.on("TASK_COMPLETED", seen.append)
        since = time.time()
        with c.client() as client:
            h = client.delegate("echo", {"message": "evt"})
            h.result(timeout=20)
        listener.listen(
            duration=20.0,
            since=since - 0.001,
            until=lambda: any(e["task_id"] == h.task_id for e in seen),
        )
    assert any(e["task_id"] == h.task_id for e in seen), seen


@pytest.mark.parametrize("grace", [10.0, 0.3])
def test_sigterm_during_running_tasks_loses_none(mesh: Mesh, grace: float, tmp_path: Any) -> None:
    """SIGTERM to a busy agent: with a long grace its tasks finish there; with a short
    one they are handed back and finish on another agent from their checkpoints."""
    conf = tmp_path / "grace.toml"
    conf.write_text(f"[node]\nshutdown_grace = {grace}\n")
    first = mesh.add("a", role="team-lead").start()
    first.wait_ready()
    b = mesh.add(
        "b", role="network-admin", peers=(first.seed,), extra=("--config", str(conf))
    ).start()
    for d in (first, b):
        d.wait_ready()
    wait_for(lambda: all_see_all([first, b]), what="a and b to see each other")
    wait_for(lambda: all(d.status()["lead"] for d in (first, b)), what="a lead")
    seconds = 1.5 if grace > 1 else 4.0
    with first.client() as client:
        # b is the only network-admin yet: both tasks start there.
        handles = [
            client.delegate("sleep", {"seconds": seconds, "step": 0.1}, role="network-admin")
            for _ in range(2)
        ]
        wait_for(
            lambda: all(client.task(h.task_id)["progress"]["pct"] > 10 for h in handles),
            what="both tasks running on b",
        )
        c = mesh.add("c", role="network-admin", peers=(first.seed,)).start()
        c.wait_ready()
        wait_for(lambda: all_see_all([first, b, c]), what="c to join")
        assert b.stop(timeout=30) == 0  # graceful: exit 0
        results = [h.result(timeout=60) for h in handles]
        views = [client.task(h.task_id) for h in handles]
    assert all(v["state"] == "complete" for v in views)
    if grace > 1:
        # Finished on b within the grace: never moved, never run twice.
        assert all(v["assigned_name"] == "b" and v["attempt"] == 1 for v in views)
    else:
        # Handed back at the end of the grace: finished on c from their checkpoints.
        assert all(v["assigned_name"] == "c" for v in views), views
        assert all(r["resumed_from"] > 0 for r in results), results


def test_delegate_many_checks_all_first_then_stores_them_together(mesh: Mesh) -> None:
    (a,) = start(mesh, [("a", "team-lead")])
    with a.client() as client:
        with pytest.raises(ControlError) as bad:
            client.delegate_many(
                [
                    {"skill": "echo", "params": {"message": "ok"}},
                    {"skill": "sleep", "params": {"seconds": "soon"}},
                ]
            )
        assert "task 1:" in str(bad.value) and bad.value.code == "bad_params"
        assert client.tasks() == []  # nothing stored, not even the good one
        handles = client.delegate_many(
            [{"skill": "echo", "params": {"message": f"b{i}"}} for i in range(50)]
        )
        assert [h.result(timeout=30) for h in handles] == [{"message": f"b{i}"} for i in range(50)]
