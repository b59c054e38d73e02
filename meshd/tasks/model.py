"""The task model: what a delegated piece of work is, and the checks on a new one.

A :class:`Task` is an immutable record; every change makes a new one (see
:func:`meshd.tasks.table.apply`), so a task can be stored, broadcast and compared without
copies or locks. Times are wall-clock epoch seconds, because a task's ``created_at`` and
``deadline`` must mean the same on every node that holds a copy of it.
"""

from __future__ import annotations

import enum
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, Final

import msgpack

from meshd.config import TaskConfig
from meshd.errors import MeshError


class TaskError(MeshError):
    """A task request or an operator command that cannot be honoured (bad input, unknown
    task id, retry of a task that did not fail...). The message says what and why."""


class TaskState(enum.Enum):
    """Where a task is in its lifecycle. Values are stable strings (stored and sent on
    the wire): append new states, never rename or reuse one."""

    #: Waiting in the lead's queue: for its dependencies, for a capable free agent, or
    #: for a lead.
    PENDING = "pending"
    #: Sent to an agent (with the lead's term); not reported started yet.
    ASSIGNED = "assigned"
    #: The agent reported it started.
    RUNNING = "running"
    #: The agent returned a result. Terminal unless a verify step was asked for.
    COMPLETE = "complete"
    #: The verify step accepted the result. Terminal.
    VERIFIED = "verified"
    #: The agent refused it (transient: the lead tries the next agent or requeues).
    REJECTED = "rejected"
    #: Given up: ``error`` says why. Terminal; only an operator retry re-runs it.
    FAILED = "failed"
    #: Waiting for its retry backoff to elapse.
    RETRY = "retry"
    #: Cancelled by the origin or an operator. Terminal.
    CANCELLED = "cancelled"
    #: Its skill declares ``internet`` or ``privileged``: held until an operator approves
    #: (back to PENDING) or denies (FAILED, ``denied``) it.
    WAITING_APPROVAL = "waiting_approval"


#: States a task is never moved out of automatically (COMPLETE counts only when no verify
#: step was asked for: see :func:`is_terminal`).
FINAL_STATES: Final = frozenset({TaskState.VERIFIED, TaskState.FAILED, TaskState.CANCELLED})

#: A task in one of these states is held by an agent (it counts towards the agent's load).
ACTIVE_STATES: Final = frozenset({TaskState.ASSIGNED, TaskState.RUNNING})

_TASK_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True, slots=True)
class Requirement:
    """Who may run a task: a role, a capability and/or one named node (all optional;
    every one given must hold)."""

    role: str | None = None
    capability: str | None = None
    node: str | None = None


@dataclass(frozen=True, slots=True)
class Transition:
    """One entry of a task's history: the state entered, when, by whom and why."""

    state: TaskState
    at: float
    actor: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Progress:
    """The last progress the running skill reported."""

    pct: float = 0.0
    message: str = ""


@dataclass(frozen=True, slots=True)
class TaskFailure:
    """Why a task failed: a short stable ``code`` (``timeout``, ``agent_lost``,
    ``deadline``, ``dependency_failed:<id>``, ``rejected``, a skill's own code...) and a
    human message."""

    code: str
    message: str = ""


@dataclass(frozen=True, slots=True)
class Assignment:
    """The fence on an assignment: the lead's term and id. Agents refuse an older term."""

    term: int
    lead: str


@dataclass(frozen=True, slots=True)
class Task:
    """A delegated piece of work. Build new ones with :func:`new_task`."""

    task_id: str
    skill: str
    params: dict[str, Any]
    origin: str
    requirement: Requirement = field(default_factory=Requirement)
    #: 0..9, higher runs first.
    priority: int = 5
    #: s. Time one attempt may take, from assignment to result.
    timeout_s: float = 300.0
    #: Wall epoch seconds after which the task fails with ``deadline``; None: none.
    deadline: float | None = None
    #: True if running it twice is harmless: it may then be re-run after a crash.
    idempotent: bool = False
    #: A verify step was asked for: COMPLETE waits for VERIFY_OK / VERIFY_FAIL.
    verify: bool = False
    parent: str | None = None
    depends_on: tuple[str, ...] = ()
    retry_count: int = 0
    retry_limit: int = 3
    state: TaskState = TaskState.PENDING
    history: tuple[Transition, ...] = ()
    progress: Progress = field(default_factory=Progress)
    #: Opaque data from the running skill to resume from (passed on reassignment).
    checkpoint: bytes | None = None
    result: Any = None
    error: TaskFailure | None = None
    assigned_to: str | None = None
    assignment: Assignment | None = None
    #: Attempt number, bumped on every assignment: an agent's report about an older
    #: attempt is stale and ignored.
    attempt: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0


def is_terminal(task: Task) -> bool:
    """True once nothing more will happen to the task without an operator."""
    if task.state is TaskState.COMPLETE:
        return not task.verify
    return task.state in FINAL_STATES


def succeeded(task: Task) -> bool:
    """True if the task's result stands (COMPLETE without verify, or VERIFIED): what a
    dependency must reach before its dependents start."""
    return task.state is TaskState.VERIFIED or (
        task.state is TaskState.COMPLETE and not task.verify
    )


def new_task_id() -> str:
    """A fresh random task id (32 lowercase hex digits)."""
    return uuid.uuid4().hex


def new_task(
    skill: str,
    params: dict[str, Any],
    origin: str,
    now: float,
    *,
    config: TaskConfig | None = None,
    task_id: str | None = None,
    requirement: Requirement | None = None,
    priority: int = 5,
    timeout_s: float | None = None,
    deadline: float | None = None,
    idempotent: bool = False,
    verify: bool = False,
    parent: str | None = None,
    depends_on: tuple[str, ...] = (),
    retry_limit: int | None = None,
) -> Task:
    """A new PENDING task, validated (raises :class:`TaskError`); defaults from ``config``."""
    cfg = config or TaskConfig()
    task = Task(
        task_id=task_id or new_task_id(),
        skill=skill,
        params=params,
        origin=origin,
        requirement=requirement or Requirement(),
        priority=priority,
        timeout_s=cfg.default_timeout if timeout_s is None else timeout_s,
        deadline=deadline,
        idempotent=idempotent,
        verify=verify,
        parent=parent,
        depends_on=tuple(depends_on),
        retry_limit=cfg.retry_limit if retry_limit is None else retry_limit,
        history=(Transition(TaskState.PENDING, now, origin, "submitted"),),
        created_at=now,
        updated_at=now,
    )
    validate_task(task, cfg)
    return task


def validate_task(task: Task, config: TaskConfig | None = None) -> None:
    """Check a task request; raises :class:`TaskError` naming the first problem."""
    cfg = config or TaskConfig()
    if not _TASK_ID.match(task.task_id):
        raise TaskError(f"bad task id {task.task_id!r}: expected 32 lowercase hex digits")
    if not task.skill or not task.skill.strip():
        raise TaskError("empty skill name")
    if not task.origin:
        raise TaskError("task has no origin node")
    if not isinstance(task.params, dict):
        raise TaskError("params must be a mapping of names to values")
    try:
        size = len(msgpack.packb(task.params, use_bin_type=True))
    except (TypeError, ValueError, OverflowError) as exc:
        raise TaskError(f"params cannot be encoded: {exc}") from None
    if size > cfg.max_params_bytes:
        raise TaskError(f"params too large: {size} bytes encoded, at most {cfg.max_params_bytes}")
    if isinstance(task.priority, bool) or not 0 <= task.priority <= 9:
        raise TaskError(f"bad priority {task.priority!r}: must be an integer 0..9")
    if not task.timeout_s > 0:
        raise TaskError(f"bad timeout {task.timeout_s!r}: must be a positive number of seconds")
    if task.retry_limit < 0:
        raise TaskError(f"bad retry limit {task.retry_limit}: must be 0 or more")
    if task.task_id in task.depends_on:
        raise TaskError(f"task {task.task_id} cannot depend on itself")
    if task.parent == task.task_id:
        raise TaskError(f"task {task.task_id} cannot be its own parent")
    if len(task.depends_on) > cfg.max_depends:
        raise TaskError(f"too many dependencies: {len(task.depends_on)}, at most {cfg.max_depends}")
    if len(set(task.depends_on)) != len(task.depends_on):
        raise TaskError("a dependency is listed twice")
    for dep in task.depends_on:
        if not _TASK_ID.match(dep):
            raise TaskError(f"bad dependency id {dep!r}: expected 32 lowercase hex digits")
    req = task.requirement
    for what, value in (("role", req.role), ("capability", req.capability), ("node", req.node)):
        if value is not None and not value:
            raise TaskError(f"empty {what} requirement")
