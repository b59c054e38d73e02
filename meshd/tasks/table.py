"""The task lifecycle as one transition table.

Every state change of a task goes through :func:`apply` (or :func:`transition`); a
``(state, event)`` pair that is not in :data:`TRANSITIONS` raises
:class:`~meshd.errors.LocalProtocolError`, like :mod:`meshd.election.table`.

The happy path is PENDING -ASSIGN-> ASSIGNED -START-> RUNNING -COMPLETE-> COMPLETE
(-VERIFY_OK-> VERIFIED when a verify step was asked for). COMPLETE without verify,
VERIFIED, FAILED and CANCELLED are terminal: :func:`apply` refuses every event on them,
except OPERATOR_RETRY on FAILED (an operator re-running a failed task on purpose).

Which event the lead uses can depend on the task, not only its state: a lost agent's
idempotent task takes AGENT_LOST (back to PENDING), a non-idempotent one FAIL (reason
``agent_lost``); a timeout takes TIMEOUT (to RETRY) while retries are left, FAIL after.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any, Final

from meshd.errors import LocalProtocolError
from meshd.wire.records import Task, TaskState, Transition, is_terminal


class Event(enum.Enum):
    """What moves a task. Values are stable strings (append-only)."""

    #: The lead gives the task to an agent (also the next agent after a rejection).
    ASSIGN = "assign"
    #: The agent stored the assignment and will run it.
    ACCEPT = "accept"
    #: The agent started the skill.
    START = "start"
    #: The skill reported progress (data only: not recorded in the history).
    PROGRESS = "progress"
    #: The skill saved a checkpoint (data only: not recorded in the history).
    CHECKPOINT = "checkpoint"
    #: The agent returned a result.
    COMPLETE = "complete"
    #: The verify step accepted / refused the result.
    VERIFY_OK = "verify_ok"
    VERIFY_FAIL = "verify_fail"
    #: The agent refused the assignment.
    REJECT = "reject"
    #: Given up: the skill failed, retries ran out, or a non-idempotent task's agent died.
    FAIL = "fail"
    #: The attempt ran out of time and retries are left.
    TIMEOUT = "timeout"
    #: The agent died with an idempotent task: back to the queue (keeping the checkpoint).
    AGENT_LOST = "agent_lost"
    #: The retry backoff elapsed: back to the queue.
    RETRY = "retry"
    #: Back to the queue without blame (no other agent after a rejection, new lead).
    REQUEUE = "requeue"
    #: The running agent hands the task (and its checkpoint) to another agent.
    HANDOFF = "handoff"
    #: The origin or an operator cancelled it.
    CANCEL = "cancel"
    #: A dependency failed or was cancelled.
    DEPENDENCY_FAILED = "dependency_failed"
    #: The task's deadline passed.
    DEADLINE = "deadline"
    #: An operator asked to run a failed task again.
    OPERATOR_RETRY = "operator_retry"
    #: Its skill needs an operator's approval (internet or privileged permissions).
    NEED_APPROVAL = "need_approval"
    #: An operator approved it / denied it.
    APPROVE = "approve"
    DENY = "deny"


_P, _A, _R, _C, _V, _J, _F, _T, _X, _W = (
    TaskState.PENDING,
    TaskState.ASSIGNED,
    TaskState.RUNNING,
    TaskState.COMPLETE,
    TaskState.VERIFIED,
    TaskState.REJECTED,
    TaskState.FAILED,
    TaskState.RETRY,
    TaskState.CANCELLED,
    TaskState.WAITING_APPROVAL,
)
_E = Event

#: Every legal ``(state, event) -> new state``. Anything else is a bug on this side.
TRANSITIONS: Final[Mapping[tuple[TaskState, Event], TaskState]] = MappingProxyType(
    {
        # Queued. It only leaves the queue to an agent, or for good.
        (_P, _E.ASSIGN): _A,
        (_P, _E.CANCEL): _X,
        (_P, _E.DEPENDENCY_FAILED): _F,
        (_P, _E.DEADLINE): _F,
        # Assigned: the agent may or may not have started (its START may be in flight),
        # which is why a lost non-idempotent task fails here too.
        (_A, _E.ACCEPT): _A,
        (_A, _E.START): _R,
        (_A, _E.REJECT): _J,
        (_A, _E.FAIL): _F,
        (_A, _E.TIMEOUT): _T,
        (_A, _E.AGENT_LOST): _P,
        (_A, _E.REQUEUE): _P,
        (_A, _E.CANCEL): _X,
        (_A, _E.DEADLINE): _F,
        # Running.
        (_R, _E.PROGRESS): _R,
        (_R, _E.CHECKPOINT): _R,
        (_R, _E.COMPLETE): _C,
        (_R, _E.FAIL): _F,
        (_R, _E.TIMEOUT): _T,
        (_R, _E.AGENT_LOST): _P,
        (_R, _E.REQUEUE): _P,
        (_R, _E.HANDOFF): _A,
        (_R, _E.CANCEL): _X,
        (_R, _E.DEADLINE): _F,
        # Rejected (transient): the next agent, back to the queue, or given up when every
        # capable agent refused.
        (_J, _E.ASSIGN): _A,
        (_J, _E.REQUEUE): _P,
        (_J, _E.FAIL): _F,
        (_J, _E.CANCEL): _X,
        (_J, _E.DEADLINE): _F,
        # Complete with a verify step pending (apply() refuses a terminal COMPLETE).
        (_C, _E.VERIFY_OK): _V,
        (_C, _E.VERIFY_FAIL): _F,
        # Waiting for the backoff.
        (_T, _E.RETRY): _P,
        (_T, _E.CANCEL): _X,
        (_T, _E.DEADLINE): _F,
        # Failed: only an operator brings it back (through the retry path).
        (_F, _E.OPERATOR_RETRY): _T,
        # Approval: held before it is ever queued for an agent.
        (_P, _E.NEED_APPROVAL): _W,
        (_W, _E.APPROVE): _P,
        (_W, _E.DENY): _F,
        (_W, _E.CANCEL): _X,
        (_W, _E.DEADLINE): _F,
        (_W, _E.DEPENDENCY_FAILED): _F,
    }
)

#: Self-loops that only carry data (progress, checkpoint): no history entry, so a chatty
#: skill does not grow its task record without bound.
SILENT_EVENTS: Final = frozenset({Event.PROGRESS, Event.CHECKPOINT})

_PROTECTED = frozenset({"state", "history", "task_id", "updated_at"})


def transition(state: TaskState, event: Event) -> TaskState:
    """The state after ``event`` in ``state``; raises LocalProtocolError if illegal."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise LocalProtocolError(
            f"illegal task transition: {state.value} --{event.value}-->"
        ) from None


def apply(
    task: Task, event: Event, now: float, actor: str, reason: str = "", **changes: Any
) -> Task:
    """The task after ``event``: new state, ``changes`` applied, ``updated_at = now`` and
    (except for :data:`SILENT_EVENTS`) a history entry. Raises LocalProtocolError if the
    transition is illegal, or the task is terminal (bar OPERATOR_RETRY on FAILED)."""
    if is_terminal(task) and event is not Event.OPERATOR_RETRY:
        raise LocalProtocolError(
            f"task {task.task_id} is finished ({task.state.value}): --{event.value}--> refused"
        )
    bad = _PROTECTED.intersection(changes)
    if bad:
        raise LocalProtocolError(f"apply() cannot change {', '.join(sorted(bad))}")
    state = transition(task.state, event)
    history = task.history
    if event not in SILENT_EVENTS:
        history = (*history, Transition(state, now, actor, reason or event.value))
    return replace(task, state=state, history=history, updated_at=now, **changes)
