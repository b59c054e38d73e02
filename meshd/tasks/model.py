"""A new task and the checks on it: :func:`new_task`, :func:`validate_task`, :class:`TaskError`.

The record itself (:class:`~meshd.wire.records.Task`) is immutable and lives with the
other records that travel, in :mod:`meshd.wire.records`; every change makes a new one
(see :func:`meshd.tasks.table.apply`).
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import msgpack

from meshd.config import TaskConfig
from meshd.errors import MeshError
from meshd.wire.records import Requirement, Task, TaskState, Transition


class TaskError(MeshError):
    """A task request or an operator command that cannot be honoured (bad input, unknown
    task id, retry of a task that did not fail...). The message says what and why."""


_TASK_ID = re.compile(r"^[0-9a-f]{32}$")


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
