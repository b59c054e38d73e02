"""The per-node task machine, message by message: what it refuses and why (fencing,
impostors, stale reports, a follower asked to lead), and that a refusal stores nothing."""

from __future__ import annotations

from dataclasses import replace

from meshd.config import TaskConfig
from meshd.effects import RunSkill, Send, StoreCopies
from meshd.tasks.machine import Member, TaskMachine
from meshd.tasks.model import new_task
from meshd.wire.messages import (
    ReportKind,
    TaskAck,
    TaskAssign,
    TaskDigest,
    TaskKeys,
    TaskQuery,
    TaskReport,
    TaskSubmit,
    TaskSync,
    TaskUpdate,
)
from meshd.wire.records import Assignment, TaskCopy, TaskState

A, B, C = (f"{i:032x}" for i in (10, 11, 12))
CFG = TaskConfig()


def machine(node: str) -> TaskMachine:
    return TaskMachine(
        node, CFG, skills=lambda: ("echo", "sleep"), role_defaults=lambda r: ((), 2),
        max_concurrent=2, capabilities=(),
    )  # fmt: skip


def members(m: TaskMachine) -> None:
    m.members_changed([Member(n, n[-2:], "worker", 50, True) for n in (A, B, C)], 0.0)


def assigned(lead: str, term: int, to: str) -> TaskCopy:
    task = new_task("echo", {"message": "x"}, C, 1.0)
    task = replace(task, state=TaskState.ASSIGNED, assigned_to=to,
                   assignment=Assignment(term, lead), attempt=1)  # fmt: skip
    return TaskCopy(term, 1, task)


def sends(effects: list[object]) -> list[Send]:
    return [e for e in effects if isinstance(e, Send)]


def test_an_assignment_from_an_older_term_is_refused_and_nothing_runs() -> None:
    b = machine(B)
    members(b)
    b.lead_changed(A, 5, 10.0)
    out = b.receive(A, TaskAssign(assigned(A, 4, B)), 10.0)
    assert not any(isinstance(e, RunSkill | StoreCopies) for e in out)
    (reply,) = [s for s in sends(out) if isinstance(s.payload, TaskReport)]
    assert reply.payload.kind is ReportKind.REJECTED and reply.payload.code == "fenced"
    assert "stale lead term 4" in reply.payload.message
    assert b.copies == {}


def test_an_assignment_not_naming_this_node_or_its_sender_is_ignored() -> None:
    b = machine(B)
    members(b)
    b.lead_changed(A, 5, 10.0)
    for sender, copy in ((A, assigned(A, 5, C)), (C, assigned(A, 5, B))):
        out = b.receive(sender, TaskAssign(copy), 10.0)
        assert not any(isinstance(e, RunSkill | StoreCopies) for e in out)
    assert b.copies == {} and b.running_here() == {}


def test_a_current_assignment_is_stored_before_it_runs() -> None:
    b = machine(B)
    members(b)
    b.lead_changed(A, 5, 10.0)
    copy = assigned(A, 5, B)
    out = b.receive(A, TaskAssign(copy), 10.0)
    kinds = [type(e).__name__ for e in out if isinstance(e, StoreCopies | RunSkill)]
    assert kinds == ["StoreCopies", "RunSkill"]
    # The same assignment again (a resend) does not run it twice.
    again = b.receive(A, TaskAssign(copy), 10.1)
    assert not any(isinstance(e, RunSkill) for e in again)


def test_a_follower_refuses_to_take_a_submit_and_the_origin_keeps_it() -> None:
    b = machine(B)
    members(b)
    b.lead_changed(A, 5, 10.0)
    task = new_task("echo", {"message": "x"}, C, 1.0)
    out = b.receive(C, TaskSubmit(TaskCopy(0, 0, task)), 10.0)
    (ack,) = [s.payload for s in sends(out) if isinstance(s.payload, TaskAck)]
    assert (ack.ok, ack.code, ack.message) == (False, "submit", "not lead")
    assert b.copies == {}


def test_the_lead_refuses_a_submit_whose_origin_is_not_its_sender() -> None:
    a = machine(A)
    members(a)
    a.lead_changed(A, 1, 10.0)
    a.receive(B, TaskSubmit(TaskCopy(0, 0, new_task("echo", {"message": "x"}, B, 1.0))), 10.0)
    a.tick(12.0)  # gathering ends
    forged = new_task("echo", {"message": "x"}, C, 1.0)
    out = a.receive(B, TaskSubmit(TaskCopy(0, 0, forged)), 12.0)
    (ack,) = [s.payload for s in sends(out) if isinstance(s.payload, TaskAck)]
    assert not ack.ok and "origin mismatch" in ack.message
    assert forged.task_id not in a.copies


def test_a_report_from_an_agent_that_does_not_hold_the_task_changes_nothing() -> None:
    a = machine(A)
    members(a)
    a.lead_changed(A, 1, 10.0)
    a.tick(12.0)
    task = new_task("sleep", {"seconds": 5.0}, B, 12.0)
    a.receive(B, TaskSubmit(TaskCopy(0, 0, task)), 12.0)
    holder = a.get(task.task_id)
    assert holder is not None and holder.assigned_to is not None
    other = next(n for n in (A, B, C) if n != holder.assigned_to and n != A)
    before = a.version(task.task_id)
    out = a.receive(other, TaskReport(task.task_id, 1, ReportKind.COMPLETED, result=1), 12.1)
    assert a.version(task.task_id) == before
    assert not any(isinstance(e, StoreCopies) for e in out)
    assert a.get(task.task_id).state is not TaskState.COMPLETE  # type: ignore[union-attr]


# ---- at most once: a quorum holds a non-idempotent assignment before it may start ----------


def quorate(node: str, quorum: int = 2, lease: list[bool] | None = None) -> TaskMachine:
    flag = lease if lease is not None else [True]
    m = TaskMachine(
        node, CFG, skills=lambda: ("echo", "sleep"), role_defaults=lambda r: ((), 2),
        max_concurrent=2, capabilities=(), quorum=lambda: quorum, lease=lambda: flag[0],
    )  # fmt: skip
    members(m)
    return m


def lead_with_task(
    idempotent: bool, lease: list[bool] | None = None, lead_runs: bool = True
) -> tuple[TaskMachine, str]:
    """A (quorum 2 of 3) leading, with one sleep task from B submitted and scheduled."""
    a = quorate(A, lease=lease)
    if not lead_runs:
        a.max_concurrent = 0
    a.lead_changed(A, 1, 10.0)
    a.tick(12.0)  # nobody answered the digests: no quorum, so it asks again and waits
    assert a.role.value == "gathering"
    for peer in (B, C):
        a.receive(peer, TaskKeys((), (), False), 12.0)  # our digests agree
    assert a.role.value == "lead"
    task = new_task("sleep", {"seconds": 5.0}, B, 12.0, idempotent=idempotent)
    a.receive(B, TaskSubmit(TaskCopy(0, 0, task)), 12.0)
    return a, task.task_id


def test_a_non_idempotent_assignment_leaves_only_once_a_quorum_holds_it() -> None:
    a, tid = lead_with_task(idempotent=False)
    held = a.get(tid)
    assert held is not None and held.state is TaskState.ASSIGNED
    agent = held.assigned_to
    assert agent is not None
    out = a.tick(12.05)
    assert not [s for s in sends(out) if isinstance(s.payload, TaskAssign)]
    assert a.running_here() == {}
    seq = a.version(tid)[1]  # type: ignore[index]
    # A wrong sequence number (an older copy) does not count.
    out = a.receive(C, TaskAck(tid, True, f"held:{seq - 1}"), 12.06)
    assert not [s for s in sends(out) if isinstance(s.payload, TaskAssign)]
    out = a.receive(C, TaskAck(tid, True, f"held:{seq}"), 12.07)
    released = [s for s in sends(out) if isinstance(s.payload, TaskAssign)]
    if agent == A:
        assert a.running_here() == {tid: 1}
    else:
        assert [s.to for s in released] == [agent]


def test_an_idempotent_assignment_needs_no_quorum_but_a_lease() -> None:
    lease = [False]
    a, tid = lead_with_task(idempotent=True, lease=lease)
    agent = a.get(tid).assigned_to  # type: ignore[union-attr]
    out = a.tick(12.05)
    assert not [s for s in sends(out) if isinstance(s.payload, TaskAssign)]
    assert a.running_here() == {}
    lease[0] = True  # a majority acknowledged a heartbeat again
    out = a.tick(12.1)
    assert [s.to for s in sends(out) if isinstance(s.payload, TaskAssign)] == (
        [] if agent == A else [agent]
    )
    assert (a.running_here() == {tid: 1}) is (agent == A)


def test_a_follower_holds_a_non_idempotent_assignment_durably_then_says_so() -> None:
    b = quorate(B)
    b.lead_changed(A, 5, 10.0)
    copy = replace(assigned(A, 5, C), task=replace(assigned(A, 5, C).task, idempotent=False))
    out = b.receive(A, TaskUpdate(1, (copy,)), 10.0)
    stores = [e for e in out if isinstance(e, StoreCopies)]
    assert stores and all(s.durable for s in stores)
    (ack,) = [s for s in sends(out) if isinstance(s.payload, TaskAck)]
    assert ack.to == A and ack.payload == TaskAck(copy.task.task_id, True, "held:1")
    # Not from the lead, or an idempotent task: no such promise.
    other = b.receive(C, TaskUpdate(1, (replace(copy, seq=2),)), 10.1)
    assert not [s for s in sends(other) if isinstance(s.payload, TaskAck)]


def query(agent: TaskMachine, tid: str, attempt: int, term: int = 6) -> TaskReport:
    out = agent.receive(A, TaskQuery(tid, attempt, term), 20.0)
    (report,) = [s.payload for s in sends(out) if isinstance(s.payload, TaskReport)]
    return report


def test_a_query_about_a_run_in_progress_says_started() -> None:
    b = quorate(B)
    b.lead_changed(A, 5, 10.0)
    copy = assigned(A, 5, B)
    b.receive(A, TaskAssign(copy), 10.0)
    b.lead_changed(A, 6, 19.0)  # A leads again in a newer term and asks
    assert query(b, copy.task.task_id, 1).kind is ReportKind.STARTED


def test_a_query_about_a_finished_run_answers_the_outcome_from_the_copy() -> None:
    # The run finished here and the old lead's COMPLETE copy settled our outbox: the
    # outcome is still known from that copy, never "not started".
    b = quorate(B)
    b.lead_changed(A, 5, 10.0)
    copy = assigned(A, 5, B)
    b.receive(A, TaskAssign(copy), 10.0)
    b.skill_done(copy.task.task_id, 1, True, {"n": 7}, "", "", 11.0)
    done = replace(copy.task, state=TaskState.COMPLETE, result={"n": 7})
    b.receive(A, TaskUpdate(2, (TaskCopy(5, 2, done),)), 11.1)
    assert b.pending_reports() == 0
    b.lead_changed(A, 6, 19.0)
    report = query(b, copy.task.task_id, 1)
    assert report.kind is ReportKind.COMPLETED and report.result == {"n": 7}


def test_a_query_about_an_assignment_that_never_came_says_not_started() -> None:
    b = quorate(B)
    b.lead_changed(A, 6, 19.0)
    copy = assigned(A, 5, B)
    report = query(b, copy.task.task_id, 1)
    assert (report.kind, report.code) == (ReportKind.REJECTED, "not_started")
    # ... and that older assignment can no longer start here.
    out = b.receive(A, TaskAssign(copy), 20.1)
    assert not any(isinstance(e, RunSkill) for e in out)


def test_a_query_from_a_node_that_is_not_our_lead_is_not_answered() -> None:
    b = quorate(B)
    b.lead_changed(A, 6, 19.0)
    tid = assigned(A, 5, B).task.task_id
    for sender, term in ((C, 6), (A, 7)):
        out = b.receive(sender, TaskQuery(tid, 1, term), 20.0)
        assert sends(out) == []


def test_an_assignment_of_this_term_that_never_came_is_refused_once_answered() -> None:
    # Same term: only the answer fences the attempt off (a late frame must not start it).
    b = quorate(B)
    b.lead_changed(A, 6, 19.0)
    copy = assigned(A, 6, B)
    report = query(b, copy.task.task_id, 1)
    assert (report.kind, report.code) == (ReportKind.REJECTED, "not_started")
    out = b.receive(A, TaskAssign(copy), 20.1)
    assert not any(isinstance(e, RunSkill) for e in out)
    (refusal,) = [s.payload for s in sends(out) if isinstance(s.payload, TaskReport)]
    assert refusal.code == "fenced" and "not started" in refusal.message
    # A new attempt of the same task is not refused.
    again = replace(copy, seq=2, task=replace(copy.task, attempt=2))
    out = b.receive(A, TaskAssign(again), 20.2)
    assert any(isinstance(e, RunSkill) for e in out)


def unreported_assignment(idempotent: bool) -> tuple[TaskMachine, str, str]:
    """A leading (running no tasks itself) with a task assigned to B or C, released to
    its agent."""
    a, tid = lead_with_task(idempotent=idempotent, lead_runs=False)
    agent = a.get(tid).assigned_to  # type: ignore[union-attr]
    assert agent is not None and agent != A
    if not idempotent:
        seq = a.version(tid)[1]  # type: ignore[index]
        out = a.receive(C if agent == B else B, TaskAck(tid, True, f"held:{seq}"), 12.01)
        assert [s.to for s in sends(out) if isinstance(s.payload, TaskAssign)] == [agent]
    return a, tid, agent


def test_an_idempotent_assignment_no_report_answered_is_sent_again() -> None:
    a, tid, agent = unreported_assignment(idempotent=True)
    out = a.tick(12.5)
    assert not [s for s in sends(out) if isinstance(s.payload, TaskAssign)]
    out = a.tick(13.1)
    assert [s.to for s in sends(out) if isinstance(s.payload, TaskAssign)] == [agent]
    # Backoff: not again at once; then the agent reports and the resends stop.
    assert not [s for s in sends(a.tick(13.2)) if isinstance(s.payload, TaskAssign)]
    a.receive(agent, TaskReport(tid, 1, ReportKind.STARTED), 13.3)
    for t in (15.0, 20.0, 30.0):
        assert not [s for s in sends(a.tick(t)) if isinstance(s.payload, TaskAssign)]


def test_a_non_idempotent_assignment_no_report_answered_is_asked_about() -> None:
    a, tid, agent = unreported_assignment(idempotent=False)
    out = a.tick(13.2)
    assert not [s for s in sends(out) if isinstance(s.payload, TaskAssign)]
    (ask,) = [s for s in sends(out) if isinstance(s.payload, TaskQuery)]
    assert ask.to == agent and ask.payload == TaskQuery(tid, 1, 1)
    # "Not started": the lead moves the task on (another agent, or back to the queue).
    a.receive(agent, TaskReport(tid, 1, ReportKind.REJECTED, code="not_started"), 13.3)
    task = a.get(tid)
    assert task is not None and task.assigned_to != agent


# ---- convergence: digests ------------------------------------------------------------------


def test_two_nodes_that_hold_different_copies_converge_by_digest() -> None:
    # Each holds copies the other lacks, of every age: after one exchange both hold the
    # newest copy of every task, and their digests agree.
    a, b = quorate(A), quorate(B)
    a.lead_changed(A, 9, 10.0)
    b.lead_changed(A, 9, 10.0)
    tasks = [new_task("echo", {"message": str(i)}, C, 1.0) for i in range(40)]
    for i, t in enumerate(tasks):
        mine = TaskCopy(1 + i % 3, i + 1, t)
        newer = TaskCopy(4, i + 1, replace(t, state=TaskState.COMPLETE, result=i))
        if i % 4 == 0:
            a._hold(mine)
        elif i % 4 == 1:
            b._hold(mine)
        elif i % 4 == 2:
            a._hold(mine)
            b._hold(newer)
        else:
            a._hold(newer)
            b._hold(mine)
    shared = [new_task("echo", {"message": f"s{i}"}, C, 1.0) for i in range(300)]
    for i, t in enumerate(shared):  # the same copy on both sides: never sent
        a._hold(TaskCopy(3, 100 + i, t))
        b._hold(TaskCopy(3, 100 + i, t))
    assert a.digest.root() != b.digest.root()
    # b asks (as a follower answering its lead's root); a answers with its keys; b
    # fetches what is newer at a and sends a what is newer at b. Pump until quiet.
    queue: list[tuple[str, object]] = [
        (A, s.payload) for s in sends(b.receive(A, TaskDigest(9, a.digest.root()), 11.0))
    ]
    assert queue and isinstance(queue[0][1], TaskDigest)
    kinds = []
    moved = 0
    for _ in range(100):
        if not queue:
            break
        to, payload = queue.pop(0)
        kinds.append(type(payload).__name__)
        if isinstance(payload, TaskSync):
            moved += len(payload.copies)
        if to == A:
            queue += [(B, x.payload) for x in sends(a.receive(B, payload, 11.1))]
        else:
            queue += [(A, x.payload) for x in sends(b.receive(A, payload, 11.1))]
    assert queue == []
    assert kinds[:2] == ["TaskDigest", "TaskKeys"]
    # Only what differs travelled: each of the 40 tasks where one side had the newer
    # copy (or the only one) went over once; none of the 300 shared ones.
    assert moved == 40, kinds
    assert a.digest.root() == b.digest.root()
    for t in tasks:
        assert a.version(t.task_id) == b.version(t.task_id) is not None


def test_a_follower_compares_roots_only_at_the_seq_the_lead_took_its_root() -> None:
    # During a burst, copies are in flight: a root taken at seq 5 differs from what a
    # follower holds at seq 3 (or at 7) without any divergence: no exchange is asked.
    b = quorate(B)
    b.lead_changed(A, 9, 10.0)
    copies = [TaskCopy(9, i, new_task("echo", {"message": str(i)}, C, 1.0)) for i in range(1, 8)]
    b.receive(A, TaskUpdate(3, tuple(copies[:3])), 10.1)
    other_root = bytes(16)
    assert sends(b.receive(A, TaskDigest(9, other_root, (), 5), 11.0)) == []  # behind
    b.receive(A, TaskUpdate(7, tuple(copies[3:])), 11.1)
    assert sends(b.receive(A, TaskDigest(9, other_root, (), 5), 12.5)) == []  # ahead
    # At exactly the root's seq, a different root is a divergence: b sends its buckets.
    out = b.receive(A, TaskDigest(9, other_root, (), 7), 14.0)
    (ask,) = [s.payload for s in sends(out) if isinstance(s.payload, TaskDigest)]
    assert len(ask.buckets) == 256
    # The same root: nothing to do.
    assert sends(b.receive(A, TaskDigest(9, b.digest.root(), (), 7), 16.0)) == []
