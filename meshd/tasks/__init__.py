"""Task delegation: the task model, its lifecycle table, agent choice and the lead's
scheduler. All pure (no I/O, injected ``now``); :mod:`meshd.node` wires them to the mesh.

- :mod:`meshd.tasks.model`: :class:`Task` and its parts, :class:`TaskState`, checks on a
  new task (:class:`TaskError`);
- :mod:`meshd.tasks.table`: the lifecycle transition table and :func:`apply`;
- :mod:`meshd.tasks.assign`: the assignment order (:func:`choose_agent`, :func:`rank_agents`);
- :mod:`meshd.tasks.scheduler`: the lead-side :class:`Scheduler` and its effects.
"""

from meshd.tasks.assign import AgentView, Exclusion, Ranking, choose_agent, rank_agents
from meshd.tasks.model import TaskError, new_task, new_task_id, validate_task
from meshd.tasks.scheduler import (
    AssignTask,
    CancelOnAgent,
    Effect,
    RequestVerify,
    Scheduler,
    TaskChanged,
    TaskFinished,
)
from meshd.tasks.table import TRANSITIONS, Event, apply, transition
from meshd.wire.records import (
    Assignment,
    Progress,
    Requirement,
    Task,
    TaskFailure,
    TaskState,
    Transition,
    is_terminal,
    succeeded,
)

__all__ = [
    "TRANSITIONS",
    "AgentView",
    "AssignTask",
    "Assignment",
    "CancelOnAgent",
    "Effect",
    "Event",
    "Exclusion",
    "Progress",
    "Ranking",
    "RequestVerify",
    "Requirement",
    "Scheduler",
    "Task",
    "TaskChanged",
    "TaskError",
    "TaskFailure",
    "TaskFinished",
    "TaskState",
    "Transition",
    "apply",
    "choose_agent",
    "is_terminal",
    "new_task",
    "new_task_id",
    "rank_agents",
    "succeeded",
    "transition",
    "validate_task",
]
