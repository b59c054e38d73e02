"""meshd.daemon.metrics: figures from task copies and the Prometheus text."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from meshd.cli.health import assess
from meshd.daemon.metrics import collect, completion, prometheus_text, task_figures
from meshd.election.machine import LeadStatus
from meshd.election.table import Role
from meshd.net.base import Counters
from meshd.skills.executor import SkillStats
from meshd.tasks.model import new_task
from meshd.tasks.table import Event, apply
from meshd.wire.records import MemberState, Task, TaskCopy, TaskFailure

NOW = 1_000_000.0
ME, A, B, GONE = "me" * 16, "aa" * 16, "bb" * 16, "cc" * 16
LEAD = "lead"


def _task(i: int, created: float, **kw: Any) -> Task:
    return new_task("echo", {"i": i}, ME, created, task_id=f"{i:032x}", **kw)


def completed(i: int, agent: str, assigned: float, done: float, **kw: Any) -> Task:
    t = apply(_task(i, assigned - 5, **kw), Event.ASSIGN, assigned, LEAD, assigned_to=agent)
    t = apply(t, Event.START, assigned + 1, agent)
    return apply(t, Event.COMPLETE, done, agent, result={"ok": True})


def failed(i: int, agent: str, at: float) -> Task:
    t = apply(_task(i, at - 20), Event.ASSIGN, at - 10, LEAD, assigned_to=agent)
    t = apply(t, Event.START, at - 9, agent)
    return apply(t, Event.FAIL, at, LEAD, error=TaskFailure("boom"))


def fixture_tasks() -> list[Task]:
    tasks = [
        # A: two completed (30 s and 10 s), one of them more than an hour ago.
        completed(1, A, NOW - 100, NOW - 70),
        completed(2, A, NOW - 5000, NOW - 4990),
        # A: one failed.
        failed(3, A, NOW - 50),
    ]
    # B: completed on its second attempt: the first attempt (another agent, then a
    # timeout and a retry backoff) is not part of the duration (last attempt: 20 s).
    t = apply(_task(4, NOW - 400), Event.ASSIGN, NOW - 390, LEAD, assigned_to=A)
    t = apply(t, Event.START, NOW - 389, A)
    t = apply(t, Event.TIMEOUT, NOW - 300, LEAD, assigned_to=None, retry_count=1)
    t = apply(t, Event.RETRY, NOW - 290, LEAD)
    t = apply(t, Event.ASSIGN, NOW - 60, LEAD, assigned_to=B)
    t = apply(t, Event.START, NOW - 59, B)
    tasks.append(apply(t, Event.COMPLETE, NOW - 40, B))
    # B: handed off mid-run from A: the whole run counts (100 s), for B.
    t = apply(_task(5, NOW - 300), Event.ASSIGN, NOW - 200, LEAD, assigned_to=A)
    t = apply(t, Event.START, NOW - 199, A)
    t = apply(t, Event.HANDOFF, NOW - 150, A, assigned_to=B)
    t = apply(t, Event.START, NOW - 149, B)
    tasks.append(apply(t, Event.COMPLETE, NOW - 100, B))
    # B: verify asked for: COMPLETE is not a success yet; VERIFIED is.
    tasks.append(completed(6, B, NOW - 30, NOW - 20, verify=True))
    verified = completed(7, B, NOW - 30, NOW - 25, verify=True)
    tasks.append(apply(verified, Event.VERIFY_OK, NOW - 24, LEAD))
    # Load: one ASSIGNED on B, one RUNNING on the node that is no longer a member.
    tasks.append(apply(_task(8, NOW - 10), Event.ASSIGN, NOW - 9, LEAD, assigned_to=B))
    running = apply(_task(9, NOW - 10), Event.ASSIGN, NOW - 9, LEAD, assigned_to=GONE)
    tasks.append(apply(running, Event.START, NOW - 8, GONE))
    # Queue: pending, retry backoff, waiting for approval.
    tasks.append(_task(10, NOW - 5))
    t = apply(_task(11, NOW - 50), Event.ASSIGN, NOW - 40, LEAD, assigned_to=A)
    tasks.append(apply(t, Event.TIMEOUT, NOW - 30, LEAD, assigned_to=None))
    tasks.append(apply(_task(12, NOW - 5), Event.NEED_APPROVAL, NOW - 4, LEAD))
    # Failed before any assignment: mesh-wide only. Cancelled: neither.
    tasks.append(apply(_task(13, NOW - 5), Event.DEADLINE, NOW - 1, LEAD))
    tasks.append(apply(_task(14, NOW - 5), Event.CANCEL, NOW - 1, ME))
    return tasks


def member(node_id: str, name: str, role: str, state: MemberState) -> Any:
    return SimpleNamespace(info=SimpleNamespace(node_id=node_id, name=name, role=role), state=state)


def fake_node(
    tasks: list[Task] | None, lead: str | None = ME, members: list[Any] | None = None
) -> SimpleNamespace:
    """What collect() reads of a node: its core, counters, skill statistics, figures."""
    me = SimpleNamespace(node_id=ME, name="me", role="network-admin")
    views = (
        members
        if members is not None
        else [
            member(A, 'a "quoted"', "worker", MemberState.ALIVE),
            member(B, "b", "worker", MemberState.SUSPECT),
        ]
    )
    role = Role.LEAD if lead == ME else Role.FOLLOWER
    status = LeadStatus(lead, 7, 1.0 if lead else None, role, "" if lead else "no quorum")
    machine = (
        None
        if tasks is None
        else SimpleNamespace(copies={t.task_id: TaskCopy(1, i, t) for i, t in enumerate(tasks)})
    )
    core = SimpleNamespace(
        self_info=me,
        members=lambda: list(views),
        status=lambda now: status,
        tasks=machine,
        name_of=lambda node_id: node_id[:12],
    )
    counters = Counters(frames_in=10, frames_out=20, dropped_out=1)
    counters.reject("malformed")
    counters.reject("malformed")
    counters.reject("spoofed_sender")
    return SimpleNamespace(
        core=core,
        counters=counters,
        skills={"echo": SkillStats(4, 1, 2.0), "sleep": SkillStats(1, 0, 0.5)},
    )


def metrics_of(node: SimpleNamespace) -> dict[str, Any]:
    return collect(
        node.core,  # type: ignore[arg-type]
        node.counters,
        node.skills,
        done_here=3,
        failed_here=1,
        started_wall=NOW - 120.5,
        now=500.0,
        now_wall=NOW,
        loop={"lag_ms_max": 250.0, "lag_ms_p99": 12.5, "stalls": 3, "worst_ms": 400.0},
    )


def test_completion_takes_the_last_attempt() -> None:
    t = completed(1, A, 100.0, 130.0)
    assert completion(t.history) == (30.0, 130.0)
    assert completion(_task(2, 5.0).history) == (None, None)
    # Clocks of different nodes disagree: never a negative duration.
    assert completion(completed(3, A, 100.0, 99.0).history) == (0.0, 99.0)


def test_collect_per_agent_and_mesh_figures() -> None:
    m = metrics_of(fake_node(fixture_tasks()))
    agents = m["agents"]
    assert set(agents) == {ME, A, B, GONE}
    a, b = agents[A], agents[B]
    assert a["name"] == 'a "quoted"' and a["role"] == "worker" and a["state"] == "alive"
    assert (a["completed"], a["failed"], a["load"]) == (2, 1, 0)
    assert a["mean_duration_s"] == pytest.approx(20.0)  # (30 + 10) / 2
    assert a["success_rate"] == pytest.approx(2 / 3)
    assert a["completed_last_hour"] == 1
    assert b["state"] == "suspect"
    assert (b["completed"], b["failed"], b["load"]) == (3, 0, 1)  # 4, 5 and the verified 7
    assert b["mean_duration_s"] == pytest.approx((20 + 100 + 5) / 3)
    assert b["success_rate"] == 1.0 and b["completed_last_hour"] == 3
    gone = agents[GONE]
    assert gone["state"] == "unknown" and gone["name"] == GONE[:12] and gone["load"] == 1
    mine = agents[ME]
    assert mine["completed"] == 0 and mine["success_rate"] is None
    assert mine["mean_duration_s"] is None

    mesh = m["mesh"]
    assert (mesh["completed"], mesh["failed"], mesh["load"]) == (5, 2, 2)
    assert mesh["success_rate"] == pytest.approx(5 / 7)
    assert mesh["mean_duration_s"] == pytest.approx((30 + 10 + 20 + 100 + 5) / 5)
    assert mesh["completed_last_hour"] == 4
    assert mesh["queue_depth"] == 3
    assert mesh["total"] == 14
    assert mesh["tasks"]["complete"] == 5  # 1, 2, 4, 5, and 6 awaiting its verify step
    assert mesh["tasks"]["verified"] == 1 and mesh["tasks"]["cancelled"] == 1
    assert mesh["tasks"]["rejected"] == 0  # every state present

    node = m["node"]
    assert node["id"] == ME and node["is_lead"] and node["term"] == 7
    assert node["election_role"] == "lead" and node["lead"] == ME
    assert node["uptime_s"] == 120.5
    assert node["members"] == {"alive": 2, "suspect": 1, "dead": 0, "left": 0}
    assert (node["messages_in"], node["messages_out"], node["dropped_out"]) == (10, 20, 1)
    assert node["rejected"] == {"malformed": 2, "spoofed_sender": 1}
    assert node["skills"]["echo"] == {
        "runs": 4,
        "failures": 1,
        "total_duration_s": 2.0,
        "mean_duration_s": 0.5,
    }
    assert (node["tasks_completed"], node["tasks_failed"]) == (3, 1)


def test_collect_without_a_task_machine() -> None:
    node = fake_node(None, lead=None, members=[])
    m = metrics_of(node)
    assert m["node"]["is_lead"] is False and m["node"]["lead"] is None
    assert m["mesh"]["total"] == 0 and m["mesh"]["success_rate"] is None
    assert list(m["agents"]) == [ME]
    families = {f.name: f for f in text_string_to_metric_families(prometheus_text(m))}
    assert "meshd_task_success_ratio" in families
    assert families["meshd_mesh_task_success_ratio"].samples == []  # undefined: no sample


def test_collect_counts_10k_tasks() -> None:
    tasks = [completed(i, (A, B)[i % 2], NOW - 1000 + i % 900, NOW - 10) for i in range(10_000)]
    m = metrics_of(fake_node(tasks))
    assert m["mesh"]["completed"] == 10_000
    assert m["agents"][A]["completed"] == m["agents"][B]["completed"] == 5_000
    agents, mesh, _ = task_figures(tasks[:10], NOW)
    assert mesh.completed == 10 and agents[A].completed == 5


def families_of(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def sample_map(family: Any) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(s.labels.items())): s.value for s in family.samples}


def test_prometheus_text_of_collected_metrics_parses() -> None:
    text = prometheus_text(metrics_of(fake_node(fixture_tasks())))
    fams = families_of(text)
    expected = {
        "meshd_up": "gauge",
        "meshd_info": "gauge",
        "meshd_uptime_seconds": "gauge",
        "meshd_term": "gauge",
        "meshd_is_lead": "gauge",
        "meshd_has_lead": "gauge",
        "meshd_members": "gauge",
        "meshd_messages_in": "counter",
        "meshd_messages_out": "counter",
        "meshd_messages_dropped": "counter",
        "meshd_frames_rejected": "counter",
        "meshd_skill_runs": "counter",
        "meshd_skill_failures": "counter",
        "meshd_skill_duration_seconds": "counter",
        "meshd_tasks_completed": "counter",
        "meshd_tasks_failed": "counter",
        "meshd_task_duration_seconds_mean": "gauge",
        "meshd_task_success_ratio": "gauge",
        "meshd_tasks_completed_per_hour": "gauge",
        "meshd_agent_load": "gauge",
        "meshd_agent_info": "gauge",
        "meshd_mesh_tasks_completed": "counter",
        "meshd_mesh_tasks_failed": "counter",
        "meshd_mesh_task_success_ratio": "gauge",
        "meshd_queue_depth": "gauge",
        "meshd_tasks": "gauge",
        "meshd_loop_lag_seconds_max": "gauge",
        "meshd_loop_lag_seconds_p99": "gauge",
        "meshd_loop_stalls": "counter",
    }
    for name, kind in expected.items():
        assert name in fams, name
        assert fams[name].type == kind, name
    # The parser drops "_total" from a counter family's name, not from its samples.
    assert {s.name for s in fams["meshd_tasks_completed"].samples} == {
        "meshd_tasks_completed_total"
    }
    assert "# TYPE meshd_tasks_completed_total counter" in text
    assert all(line.startswith("meshd_") or line.startswith("# ") for line in text.splitlines())

    done = sample_map(fams["meshd_tasks_completed"])
    assert done[(("name", 'a "quoted"'), ("node", A))] == 2
    assert done[(("name", "b"), ("node", B))] == 3
    ratio = sample_map(fams["meshd_task_success_ratio"])
    assert ratio[(("name", "b"), ("node", B))] == 1.0
    assert (("name", "me"), ("node", ME)) not in ratio  # no finished task: no sample
    assert sample_map(fams["meshd_tasks"])[(("state", "pending"),)] == 1
    assert sample_map(fams["meshd_frames_rejected"])[(("reason", "malformed"),)] == 2
    assert sample_map(fams["meshd_skill_runs"])[(("skill", "echo"),)] == 4
    assert sample_map(fams["meshd_members"])[(("state", "alive"),)] == 2
    assert sample_map(fams["meshd_queue_depth"])[()] == 3
    assert sample_map(fams["meshd_is_lead"])[()] == 1
    assert sample_map(fams["meshd_up"])[()] == 1
    assert sample_map(fams["meshd_loop_lag_seconds_max"])[()] == 0.25
    assert sample_map(fams["meshd_loop_lag_seconds_p99"])[()] == 0.0125
    assert sample_map(fams["meshd_loop_stalls"])[()] == 3


def test_prometheus_text_escapes_label_values() -> None:
    nasty = 'we"ird\\name\nline2'
    metrics = {
        "node": {
            "id": "n1",
            "name": nasty,
            "role": "r\\",
            "members": {"alive": 1},
            "rejected": {'bad"reason\n': 3},
            "skills": {"sk\\ill": {"runs": 2, "failures": 0, "total_duration_s": 0.25}},
            "messages_in": 5,
        },
        "agents": {"n1": {"name": nasty, "completed": 1, "failed": 0, "success_rate": 1.0}},
        "mesh": {"tasks": {"pending": 0}, "queue_depth": 0},
    }
    text = prometheus_text(metrics)
    assert 'name="we\\"ird\\\\name\\nline2"' in text
    assert 'reason="bad\\"reason\\n"' in text
    fams = families_of(text)
    info = fams["meshd_info"].samples[0].labels
    assert info["name"] == nasty and info["role"] == "r\\"
    assert fams["meshd_frames_rejected"].samples[0].labels == {"reason": 'bad"reason\n'}
    assert fams["meshd_skill_runs"].samples[0].labels == {"skill": "sk\\ill"}
    assert fams["meshd_skill_duration_seconds"].samples[0].value == 0.25
    assert fams["meshd_tasks_completed"].samples[0].labels == {"node": "n1", "name": nasty}
    assert fams["meshd_messages_in"].samples[0].value == 5
    # Parts not given are left out (no sample), not written as zeros.
    assert fams["meshd_messages_out"].samples == []


def test_prometheus_text_of_an_empty_dict_is_just_up() -> None:
    fams = families_of(prometheus_text({}))
    assert list(fams) == ["meshd_up"]


def test_health_verdict_from_status() -> None:
    status: dict[str, Any] = {
        "lead": None,
        "lead_reason": "no lead: no quorum",
        "counts": {"alive": 1, "suspect": 1, "dead": 2, "left": 0, "total": 5},
    }
    assert assess(status) == (False, "no lead: no quorum", 3)
    status["lead"] = {"id": A, "name": "a", "term": 3, "since": 1.0}
    assert assess(status) == (True, None, 3)
    assert assess({"lead": None}) == (False, "no lead", 1)
