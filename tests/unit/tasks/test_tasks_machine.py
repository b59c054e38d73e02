"""The per-node task machine, message by message: what it refuses and why (fencing,
impostors, stale reports, a follower asked to lead), and that a refusal stores nothing."""

from __future__ import annotations

from dataclasses import replace

from meshd.config import TaskConfig
from meshd.effects import RunSkill, Send, StoreCopies
from meshd.tasks.machine import Member, TaskMachine
from meshd.tasks.model import new_task
from meshd.wire.messages import ReportKind, TaskAck, TaskAssign, TaskReport, TaskSubmit
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
