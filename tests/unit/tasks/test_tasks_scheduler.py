"""The lead's scheduler, rule by rule (fake time: plain floats)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from meshd.config import TaskConfig
from meshd.errors import LocalProtocolError
from meshd.tasks.assign import AgentView
from meshd.tasks.model import TaskError, new_task
from meshd.tasks.scheduler import (
    AssignTask,
    CancelOnAgent,
    Effect,
    RequestVerify,
    Scheduler,
    TaskChanged,
    TaskFinished,
)
from meshd.wire.records import Assignment, Requirement, Task, TaskFailure
from meshd.wire.records import TaskState as S

T0 = 1_700_000_000.0
CFG = TaskConfig()


def agent(node_id: str, **kw: object) -> AgentView:
    base = AgentView(
        node_id=node_id,
        name=node_id,
        role="worker",
        capabilities=frozenset({"compute"}),
        skills=frozenset({"echo", "sleep"}),
        priority=10,
        load=0,
        max_concurrent=2,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def mk(**kw: object) -> Task:
    args: dict[str, object] = {"idempotent": True, "timeout_s": 10.0}
    args.update(kw)
    return new_task("echo", {}, "origin", T0, **args)  # type: ignore[arg-type]


def sched(*agents: AgentView, term: bool = True) -> Scheduler:
    s = Scheduler(CFG, T0)
    s.agents_changed(list(agents), T0)
    if term:
        s.set_term(3, "lead-1", T0)
    return s


def assigns(effects: tuple[Effect, ...]) -> list[tuple[str, str]]:
    return [(e.task.task_id, e.to) for e in effects if isinstance(e, AssignTask)]


def finished(effects: tuple[Effect, ...]) -> list[Task]:
    return [e.task for e in effects if isinstance(e, TaskFinished)]


def test_submit_assigns_the_best_agent_with_the_fence() -> None:
    s = sched(agent("a", priority=1), agent("b", priority=5))
    t = mk()
    eff = s.submit(t, T0)
    assert assigns(eff) == [(t.task_id, "b")]
    changed = [e for e in eff if isinstance(e, TaskChanged)]
    assert changed[0].previous_state is None and changed[-1].previous_state is S.PENDING
    # Stored (TaskChanged) before it is sent (AssignTask).
    assert isinstance(eff[-1], AssignTask)
    sent = eff[-1].task
    assert sent.state is S.ASSIGNED and sent.assignment == Assignment(3, "lead-1")
    assert sent.attempt == 1 and s.agent_load("b") == 1


def test_no_lead_term_no_assignment() -> None:
    s = sched(agent("a"), term=False)
    t = mk()
    assert assigns(s.submit(t, T0)) == []
    assert s.why_waiting(t.task_id, T0) == "no lead term yet"
    assert assigns(s.set_term(1, "me", T0)) == [(t.task_id, "a")]
    with pytest.raises(LocalProtocolError):
        s.set_term(0, "me", T0)


def test_submit_refuses_bad_input_and_ignores_duplicates() -> None:
    s = sched(agent("a"))
    t = mk()
    s.submit(t, T0)
    assert s.submit(t, T0) == ()
    with pytest.raises(TaskError, match="already in use"):
        s.submit(replace(t, created_at=T0 + 1), T0)
    with pytest.raises(TaskError, match="unknown dependency"):
        s.submit(mk(depends_on=("f" * 32,)), T0)
    with pytest.raises(TaskError, match="deadline already passed"):
        s.submit(mk(deadline=T0 - 1), T0)
    with pytest.raises(TaskError, match="bad priority"):
        s.submit(replace(mk(), priority=11), T0)


def test_queue_order_priority_then_age_and_waiting_for_an_agent() -> None:
    s = sched()
    low = mk(priority=1)
    high = mk(priority=9)
    old = replace(mk(priority=5), created_at=T0 - 10)
    new = mk(priority=5)
    for t in (low, new, high, old):
        assert assigns(s.submit(t, T0)) == []
    assert s.queue() == [high.task_id, old.task_id, new.task_id, low.task_id]
    assert s.why_waiting(low.task_id, T0) == "no agents known"
    # One agent with room for two: the two best go.
    eff = s.agents_changed([agent("a")], T0 + 1)
    assert assigns(eff) == [(high.task_id, "a"), (old.task_id, "a")]
    assert s.why_waiting(new.task_id, T0).startswith("no available agent: a: busy")


def test_no_capable_agent_waits_until_one_appears() -> None:
    s = sched(agent("a"))
    t = mk(requirement=Requirement(role="gpu"))
    assert assigns(s.submit(t, T0)) == []
    assert "no capable agent: a: role 'gpu' required" in s.why_waiting(t.task_id, T0)
    assert assigns(s.agents_changed([agent("a"), agent("g", role="gpu")], T0 + 5)) == [
        (t.task_id, "g")
    ]


def test_lifecycle_to_complete_frees_the_agent() -> None:
    s = sched(agent("a", max_concurrent=1))
    t1, t2 = mk(), mk()
    s.submit(t1, T0)
    assert assigns(s.submit(t2, T0)) == []
    s.on_accepted(t1.task_id, "a", T0 + 1)
    s.on_started(t1.task_id, "a", T0 + 2)
    s.on_progress(t1.task_id, "a", 150, "half", T0 + 3, checkpoint=b"cp")
    got = s.get(t1.task_id)
    assert got is not None and got.state is S.RUNNING
    assert got.progress.pct == 100.0 and got.checkpoint == b"cp"
    eff = s.on_completed(t1.task_id, "a", {"out": 1}, T0 + 4)
    done = finished(eff)
    assert [d.task_id for d in done] == [t1.task_id] and done[0].result == {"out": 1}
    assert [h.state for h in done[0].history] == [
        S.PENDING, S.ASSIGNED, S.ASSIGNED, S.RUNNING, S.COMPLETE,
    ]  # fmt: skip
    assert assigns(eff) == [(t2.task_id, "a")]


def test_result_before_start_implies_the_start() -> None:
    s = sched(agent("a"))
    t = mk()
    s.submit(t, T0)
    done = finished(s.on_completed(t.task_id, "a", 1, T0 + 1))
    assert [h.state for h in done[0].history][-2:] == [S.RUNNING, S.COMPLETE]


def test_verify_step() -> None:
    s = sched(agent("a"))
    ok, bad = mk(verify=True), mk(verify=True)
    for t in (ok, bad):
        s.submit(t, T0)
        eff = s.on_completed(t.task_id, "a", 1, T0 + 1)
        assert [e.task.task_id for e in eff if isinstance(e, RequestVerify)] == [t.task_id]
        assert finished(eff) == []
    assert finished(s.on_verified(ok.task_id, True, T0 + 2))[0].state is S.VERIFIED
    done = finished(s.on_verified(bad.task_id, False, T0 + 2, reason="wrong sum"))
    assert done[0].state is S.FAILED and done[0].error == TaskFailure("verify_failed", "wrong sum")
    assert s.on_verified(ok.task_id, True, T0 + 3) == ()


def test_skill_failure_fails_the_task() -> None:
    s = sched(agent("a"))
    t = mk()
    s.submit(t, T0)
    s.on_started(t.task_id, "a", T0)
    done = finished(s.on_failed(t.task_id, "a", TaskFailure("bad_params", "x missing"), T0 + 1))
    assert done[0].state is S.FAILED and done[0].error == TaskFailure("bad_params", "x missing")


def test_rejection_tries_the_next_agent_then_waits_then_fails() -> None:
    s = sched(agent("a", priority=9), agent("b", priority=5), agent("c", priority=1, load=2))
    t = mk()
    assert assigns(s.submit(t, T0)) == [(t.task_id, "a")]
    assert assigns(s.on_rejected(t.task_id, "a", "disk full", T0 + 1)) == [(t.task_id, "b")]
    # b refuses too; c is capable but busy: the task waits (a and b stay skipped).
    assert assigns(s.on_rejected(t.task_id, "b", "policy", T0 + 2)) == []
    got = s.get(t.task_id)
    assert got is not None and got.state is S.PENDING
    assert assigns(s.agents_changed([agent("a"), agent("b"), agent("c")], T0 + 3)) == [
        (t.task_id, "c")
    ]
    done = finished(s.on_rejected(t.task_id, "c", "nope", T0 + 4))
    assert done[0].state is S.FAILED and done[0].error is not None
    assert done[0].error.code == "rejected"
    assert "a: disk full; b: policy; c: nope" in done[0].error.message


def test_timeout_retries_with_backoff_then_fails() -> None:
    cfg = TaskConfig(retry_backoff_base=1.0, retry_backoff_factor=3.0, retry_backoff_max=5.0)
    s = Scheduler(cfg, T0)
    s.agents_changed([agent("a")], T0)
    s.set_term(1, "L", T0)
    t = mk(retry_limit=3, timeout_s=10.0)
    s.submit(t, T0)
    now = T0
    delays = []
    for attempt in range(1, 5):
        assert s.next_deadline() == now + 10.0
        now += 10.0
        eff = s.tick(now)
        assert CancelOnAgent(t.task_id, "a", "timeout") in eff
        got = s.get(t.task_id)
        assert got is not None
        if attempt == 4:
            assert got.state is S.FAILED and got.error is not None
            assert got.error.code == "timeout" and finished(eff) == [got]
            break
        assert got.state is S.RETRY and got.retry_count == attempt
        due = s.next_deadline()
        assert due is not None
        delays.append(due - now)
        assert assigns(s.tick(due - 0.001)) == []
        now = due
        assert assigns(s.tick(now)) == [(t.task_id, "a")]
    assert delays == [1.0, 3.0, 5.0]


def test_non_idempotent_timeout_is_not_retried() -> None:
    s = sched(agent("a"))
    t = mk(idempotent=False)
    s.submit(t, T0)
    done = finished(s.tick(T0 + 10))
    assert done[0].state is S.FAILED and done[0].retry_count == 0


def test_agent_lost_requeues_idempotent_with_checkpoint_fails_others() -> None:
    s = sched(agent("a", priority=9), agent("b", priority=1))
    idem = mk(idempotent=True, priority=9)
    once_running = mk(idempotent=False, priority=8)
    once_assigned = mk(idempotent=False, priority=7)
    for t in (idem, once_running, once_assigned):
        s.submit(t, T0)
    holders = [
        getattr(s.get(t.task_id), "assigned_to", None) for t in (idem, once_running, once_assigned)
    ]
    assert holders == ["a", "a", "b"]  # a (higher priority) up to its limit, then b
    s.on_progress(idem.task_id, "a", 40, "", T0 + 1, checkpoint=b"step4")
    s.on_started(once_running.task_id, "a", T0 + 1)
    eff = s.agent_lost("a", T0 + 2)
    moved = assigns(eff)
    assert moved == [(idem.task_id, "b")]
    sent = next(e.task for e in eff if isinstance(e, AssignTask))
    assert sent.checkpoint == b"step4" and sent.attempt == 2
    lost = s.get(once_running.task_id)
    assert lost is not None and lost.state is S.FAILED and lost.error is not None
    assert lost.error.code == "agent_lost" and "meshctl task retry" in lost.error.message
    # The task that was only ASSIGNED on b (its start may be in flight) also fails if b dies.
    eff = s.agent_lost("b", T0 + 3)
    states = {t.task_id: t.state for t in finished(eff)}
    assert states == {once_assigned.task_id: S.FAILED}
    got = s.get(idem.task_id)
    assert got is not None and got.state is S.PENDING  # idempotent: waits for an agent


def test_operator_retry_reruns_a_failed_task_only() -> None:
    s = sched(agent("a"))
    t = mk(idempotent=False)
    s.submit(t, T0)
    s.agent_lost("a", T0 + 1)
    s.agents_changed([agent("a")], T0 + 2)
    # Lost while its agent held it: it may have run, so only a forced retry re-runs it.
    with pytest.raises(TaskError, match="may have run already"):
        s.operator_retry(t.task_id, T0 + 3)
    eff = s.operator_retry(t.task_id, T0 + 3, force=True)
    assert assigns(eff) == [(t.task_id, "a")]
    got = s.get(t.task_id)
    assert got is not None and got.error is None and got.attempt == 2
    assert [h.state for h in got.history][-3:] == [S.RETRY, S.PENDING, S.ASSIGNED]
    with pytest.raises(TaskError, match="only a failed task can be retried"):
        s.operator_retry(t.task_id, T0 + 4)
    with pytest.raises(TaskError, match="unknown task id"):
        s.operator_retry("0" * 32, T0)


def test_dependencies_wait_then_run_or_fail_in_a_chain() -> None:
    s = sched(agent("a", max_concurrent=5))
    first = mk()
    second = mk(depends_on=(first.task_id,))
    third = mk(depends_on=(second.task_id,))
    assert assigns(s.submit(first, T0)) == [(first.task_id, "a")]
    assert assigns(s.submit(second, T0)) == []
    s.submit(third, T0)
    assert "waiting for dependency" in s.why_waiting(second.task_id, T0)
    assert assigns(s.on_completed(first.task_id, "a", 1, T0 + 1)) == [(second.task_id, "a")]
    # second fails -> third fails with the reason, at once.
    eff = s.on_failed(second.task_id, "a", TaskFailure("boom"), T0 + 2)
    done = {t.task_id: t for t in finished(eff)}
    assert done[third.task_id].error is not None
    assert done[third.task_id].error.code == f"dependency_failed:{second.task_id}"
    # A new task on an already failed dependency fails on submit.
    late = mk(depends_on=(third.task_id,))
    assert finished(s.submit(late, T0 + 3))[0].state is S.FAILED


def test_cancel() -> None:
    s = sched(agent("a", max_concurrent=1))
    running, queued = mk(), mk()
    s.submit(running, T0)
    s.submit(queued, T0)
    eff = s.cancel(running.task_id, T0 + 1)
    assert CancelOnAgent(running.task_id, "a", "cancelled") in eff
    assert finished(eff)[0].state is S.CANCELLED
    assert assigns(eff) == [(queued.task_id, "a")]  # the freed slot is used at once
    with pytest.raises(TaskError, match="already cancelled"):
        s.cancel(running.task_id, T0 + 2)


def test_deadline_fails_the_task_and_stops_it() -> None:
    s = sched(agent("a"))
    t = mk(deadline=T0 + 5, timeout_s=100.0)
    s.submit(t, T0)
    assert s.next_deadline() == T0 + 5
    eff = s.tick(T0 + 5)
    assert CancelOnAgent(t.task_id, "a", "deadline") in eff
    done = finished(eff)
    assert done[0].error is not None and done[0].error.code == "deadline"
    assert s.next_deadline() is None


def test_handoff_moves_a_running_task_with_its_checkpoint() -> None:
    s = sched(agent("a", priority=9), agent("b", priority=1), agent("g", role="gpu"))
    t = mk(requirement=Requirement(role="worker"))
    s.submit(t, T0)
    s.on_started(t.task_id, "a", T0)
    with pytest.raises(TaskError, match=r"cannot hand task \w+ to g: role 'worker' required"):
        s.handoff(t.task_id, "g", T0 + 1)
    eff = s.handoff(t.task_id, None, T0 + 1, from_node="a", checkpoint=b"cp")
    assert assigns(eff) == [(t.task_id, "b")]
    got = s.get(t.task_id)
    assert got is not None and got.state is S.ASSIGNED and got.checkpoint == b"cp"
    assert s.agent_load("a") == 0 and s.agent_load("b") == 1
    # Reports from a, which no longer holds the task, are stale: it is told to stop.
    assert s.on_progress(t.task_id, "a", 50, "", T0 + 2, attempt=1) == (
        CancelOnAgent(t.task_id, "a", "stale attempt"),
    )
    assert s.on_completed(t.task_id, "a", 1, T0 + 2) == ()
    with pytest.raises(TaskError, match="only a running task"):
        s.handoff(t.task_id, None, T0 + 3)


def test_stale_attempt_reports_are_ignored() -> None:
    s = sched(agent("a"))
    t = mk()
    s.submit(t, T0)
    s.tick(T0 + 10)  # timeout -> RETRY
    due = s.next_deadline()
    assert due is not None
    s.tick(due)  # reassigned to a, attempt 2
    got = s.get(t.task_id)
    assert got is not None and got.attempt == 2
    assert s.on_completed(t.task_id, "a", "old", due + 1, attempt=1) == ()
    assert s.on_started(t.task_id, "a", due + 1, attempt=1) == (
        CancelOnAgent(t.task_id, "a", "stale attempt"),
    )
    assert finished(s.on_completed(t.task_id, "a", "new", due + 2, attempt=2))[0].result == "new"


def test_restore_resumes_a_previous_leads_tasks() -> None:
    old = sched(agent("a", max_concurrent=1))
    done, running, queued = mk(priority=9), mk(priority=8), mk(priority=2)
    for t in (done, running, queued):
        old.submit(t, T0)
    old.on_completed(done.task_id, "a", 1, T0 + 1)
    old.on_started(running.task_id, "a", T0 + 2)
    stored = old.tasks()
    new = Scheduler(CFG, T0 + 5)
    new.agents_changed([agent("a", max_concurrent=1), agent("b")], T0 + 5)
    new.set_term(4, "lead-2", T0 + 5)
    eff = new.restore(stored, T0 + 5)
    # running stays on a; queued goes to b with the new lead's fence.
    assert assigns(eff) == [(queued.task_id, "b")]
    sent = next(e.task for e in eff if isinstance(e, AssignTask))
    assert sent.assignment == Assignment(4, "lead-2")
    assert new.agent_load("a") == 1
    assert new.next_deadline() == T0 + 5 + 10.0  # running's fresh attempt timer
