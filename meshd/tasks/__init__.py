"""Task delegation: checks on a new task, its lifecycle table, agent choice, the lead's
scheduler and one node's task machine. All pure (no I/O, injected ``now``);
:class:`meshd.core.Core` composes the task machine with membership and election.

The task records themselves (:class:`~meshd.wire.records.Task` and its parts,
:class:`~meshd.wire.records.TaskState`) travel, so they live in :mod:`meshd.wire.records`.

- :mod:`meshd.tasks.model`: checks on a new task (:func:`new_task`, :class:`TaskError`);
- :mod:`meshd.tasks.table`: the lifecycle transition table and :func:`apply`;
- :mod:`meshd.tasks.assign`: the assignment order (:func:`choose_agent`, :func:`rank_agents`);
- :mod:`meshd.tasks.scheduler`: the lead-side :class:`Scheduler` and its effects;
- :mod:`meshd.tasks.machine`: one node's part (origin, agent, replica, lead).
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

__all__ = [
    "TRANSITIONS",
    "AgentView",
    "AssignTask",
    "CancelOnAgent",
    "Effect",
    "Event",
    "Exclusion",
    "Ranking",
    "RequestVerify",
    "Scheduler",
    "TaskChanged",
    "TaskError",
    "TaskFinished",
    "apply",
    "choose_agent",
    "new_task",
    "new_task_id",
    "rank_agents",
    "transition",
    "validate_task",
]
