"""The lead's task scheduler: a pure state machine with an injected clock.

Only the lead runs one. It holds every task it knows, a priority queue of PENDING ones
(priority high to low, then oldest first, then id), the agents' views and its own timers.
Every public method takes ``now`` (wall epoch seconds, the clock tasks are stamped with)
and returns the effects for the task machine (:mod:`meshd.tasks.machine`) to carry out,
in order:

- :class:`TaskChanged`: store the new copy (before anything is sent) and broadcast it;
- :class:`AssignTask`: send the task to an agent (it carries the ``(term, lead)`` fence);
- :class:`CancelOnAgent`: tell an agent to stop a task (cancelled, timed out, stale);
- :class:`RequestVerify`: run the verify step on a COMPLETE task that asked for one;
- :class:`TaskFinished`: the task reached a terminal state (tell the origin).

Rules (see ``tests/unit/tasks/test_tasks_scheduler.py``):

- A task waits while a dependency has not succeeded; a dependency that FAILED or was
  CANCELLED fails it with ``dependency_failed:<id>`` (and so on down the chain).
- The best agent (:mod:`meshd.tasks.assign`) gets it; with none, it waits in the queue
  until :meth:`Scheduler.agents_changed` or a finished task frees one.
- A rejection tries the next capable agent (the rejecters of this attempt are skipped);
  when every capable agent refused, the task fails with ``rejected``.
- An attempt that exceeds ``timeout_s`` (from assignment) is cancelled on its agent. An
  idempotent task then goes to RETRY with exponential backoff while ``retry_count <
  retry_limit``; otherwise it fails with ``timeout``. A non-idempotent task that may have
  started is never re-run without the operator, so it fails at once.
- A lost agent's idempotent tasks go back to the queue with their last checkpoint; its
  non-idempotent ones (ASSIGNED counts: the start may be in flight) fail with
  ``agent_lost``. Only :meth:`Scheduler.operator_retry` re-runs a failed task.
- A task still unfinished at its ``deadline`` fails with ``deadline``.
- Reports from an agent about an attempt that is no longer its own are ignored.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from meshd.config import TaskConfig
from meshd.errors import LocalProtocolError
from meshd.tasks.assign import AgentView, Ranking, rank_agents
from meshd.tasks.model import TaskError, validate_task
from meshd.tasks.table import Event, apply
from meshd.wire.records import (
    ACTIVE_STATES,
    Assignment,
    Progress,
    Task,
    TaskFailure,
    TaskState,
    Transition,
    is_terminal,
    succeeded,
)

_S = TaskState


@dataclass(frozen=True, slots=True)
class AssignTask:
    """Send ``task`` (ASSIGNED, fenced with the lead's term) to agent ``to``."""

    task: Task
    to: str


@dataclass(frozen=True, slots=True)
class CancelOnAgent:
    """Tell agent ``node`` to stop ``task_id`` (cancelled, timed out or a stale attempt)."""

    task_id: str
    node: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class TaskChanged:
    """Store and broadcast the new copy of a task. ``previous_state`` None: a new task."""

    task: Task
    previous_state: TaskState | None


@dataclass(frozen=True, slots=True)
class TaskFinished:
    """The task reached a terminal state: tell its origin (result or error)."""

    task: Task


@dataclass(frozen=True, slots=True)
class RequestVerify:
    """Run the verify step on a COMPLETE task that asked for one."""

    task: Task


Effect = AssignTask | CancelOnAgent | TaskChanged | TaskFinished | RequestVerify

_ATTEMPT, _RETRY, _DEADLINE = "attempt", "retry", "deadline"
#: A note is added only while a task's history is shorter than this (the wire allows
#: 1000 entries; notes must never push a task over it).
MAX_NOTES_HISTORY = 900


def _never(task: Task) -> bool:
    return False


class Scheduler:
    """The lead-side scheduler (see the module docstring for the rules)."""

    def __init__(
        self,
        config: TaskConfig,
        now: float,
        needs_approval: Callable[[Task], bool] | None = None,
    ) -> None:
        self._cfg = config
        #: Whether a task's skill needs an operator's approval (internet / privileged).
        self._needs_approval = needs_approval or _never
        #: Wall epoch seconds when this scheduler (this lead's term of office) began.
        self.started_at = now
        self._tasks: dict[str, Task] = {}
        # PENDING tasks, kept sorted by (-priority, created_at, task_id).
        self._queue: list[tuple[int, float, str]] = []
        self._agents: dict[str, AgentView] = {}
        self._active: dict[str, set[str]] = {}
        self._last_assigned: dict[str, float] = {}
        self._rejected: dict[str, dict[str, str]] = {}
        self._dependents: dict[str, set[str]] = {}
        self._timers: dict[tuple[str, str], tuple[float, int]] = {}
        self._heap: list[tuple[float, str, str, int]] = []
        self._fence: Assignment | None = None

    # --- queries -------------------------------------------------------------------

    def get(self, task_id: str) -> Task | None:
        """The lead's copy of a task, or None."""
        return self._tasks.get(task_id)

    def tasks(self) -> list[Task]:
        """Every task known, in no particular order."""
        return list(self._tasks.values())

    def queue(self) -> list[str]:
        """The ids of the PENDING tasks, in the order they will be considered."""
        return [key[2] for key in self._queue]

    def agent_load(self, node_id: str) -> int:
        """Tasks this lead has on ``node_id`` (assigned or running)."""
        return len(self._active.get(node_id, ()))

    def why_waiting(self, task_id: str, now: float) -> str:
        """Why a PENDING task is not running yet ('' if it is not waiting)."""
        task = self._require(task_id)
        if task.state is not _S.PENDING:
            return ""
        if self._fence is None:
            return "no lead term yet"
        for dep in task.depends_on:
            dep_task = self._tasks.get(dep)
            if dep_task is None or not succeeded(dep_task):
                state = dep_task.state.value if dep_task else "unknown"
                return f"waiting for dependency {dep} ({state})"
        return self._rank(task, now).explain() or "about to be assigned"

    def next_deadline(self) -> float | None:
        """When :meth:`tick` has something to do next (None: nothing scheduled)."""
        while self._heap:
            due, kind, task_id, token = self._heap[0]
            if self._timers.get((kind, task_id)) == (due, token):
                return due
            heapq.heappop(self._heap)
        return None

    # --- inputs from the lead's own node --------------------------------------------

    def set_term(self, term: int, lead_id: str, now: float) -> tuple[Effect, ...]:
        """This node leads ``term``: every assignment from now on carries ``(term, lead_id)``."""
        if self._fence is not None and term < self._fence.term:
            raise LocalProtocolError(f"term went backwards: {self._fence.term} -> {term}")
        self._fence = Assignment(term, lead_id)
        effects: list[Effect] = []
        self._dispatch(now, effects)
        return tuple(effects)

    def submit(self, task: Task, now: float) -> tuple[Effect, ...]:
        """Take a new task (PENDING). A second submit of the same task is a no-op;
        bad input raises :class:`TaskError`."""
        validate_task(task, self._cfg)
        known = self._tasks.get(task.task_id)
        if known is not None:
            if (known.created_at, known.origin, known.skill) == (
                task.created_at,
                task.origin,
                task.skill,
            ):
                return ()  # the same request again (a retried message): recognised by id
            raise TaskError(f"task id {task.task_id} is already in use")
        if task.state is not _S.PENDING:
            raise TaskError(f"a new task must be pending, not {task.state.value}")
        for dep in task.depends_on:
            if dep not in self._tasks:
                raise TaskError(f"unknown dependency {dep}")
        if task.deadline is not None and task.deadline <= now:
            raise TaskError(f"deadline already passed ({task.deadline} <= {now})")
        effects: list[Effect] = []
        for dep in task.depends_on:
            self._dependents.setdefault(dep, set()).add(task.task_id)
        self._put(task, None, now, effects)
        if task.deadline is not None:
            self._set_timer(_DEADLINE, task.task_id, task.deadline, 0)
        if self._hold_for_approval(task, now, effects):
            return tuple(effects)
        self._check_dependencies(task.task_id, now, effects)
        self._dispatch(now, effects)
        return tuple(effects)

    def approve(self, task_id: str, now: float, actor: str = "operator") -> tuple[Effect, ...]:
        """An operator approves a task held for approval: it is queued. Raises TaskError
        when it is not waiting for one."""
        task = self._require(task_id)
        if task.state is not _S.WAITING_APPROVAL:
            raise TaskError(f"task {task_id} is not waiting for approval ({task.state.value})")
        effects: list[Effect] = []
        self._change(task, Event.APPROVE, now, effects, f"approved by {actor}", actor=actor)
        self._check_dependencies(task_id, now, effects)
        self._dispatch(now, effects)
        return tuple(effects)

    def deny(
        self, task_id: str, now: float, actor: str = "operator", reason: str = ""
    ) -> tuple[Effect, ...]:
        """An operator denies a task held for approval: it fails with ``denied``."""
        task = self._require(task_id)
        if task.state is not _S.WAITING_APPROVAL:
            raise TaskError(f"task {task_id} is not waiting for approval ({task.state.value})")
        effects: list[Effect] = []
        why = f"denied by {actor}" + (f": {reason}" if reason else "")
        self._change(
            task, Event.DENY, now, effects, why, actor=actor, error=TaskFailure("denied", why)
        )
        self._dispatch(now, effects)
        return tuple(effects)

    def _hold_for_approval(self, task: Task, now: float, effects: list[Effect]) -> bool:
        """Hold a PENDING task that needs an approval it has not had (an approval holds
        until a denial; a retried denied task is asked for again)."""
        current = self._tasks[task.task_id]
        if current.state is not _S.PENDING or not self._needs_approval(current):
            return False
        for h in reversed(current.history):
            if h.reason.startswith("approved by"):
                return False
            if h.reason.startswith("denied by"):
                break
        self._change(
            current, Event.NEED_APPROVAL, now, effects, "waiting for an operator's approval"
        )
        return True

    def restore(self, tasks: Iterable[Task], now: float) -> tuple[Effect, ...]:
        """Resume the unfinished tasks of a previous lead (read from the store). Queued
        and rejected tasks go back to the queue; tasks on agents keep running, with a
        fresh attempt timer; tasks waiting for a retry get a fresh backoff."""
        effects: list[Effect] = []
        batch = [t for t in tasks if t.task_id not in self._tasks]
        for task in batch:
            for dep in task.depends_on:
                self._dependents.setdefault(dep, set()).add(task.task_id)
            if is_terminal(task):
                self._tasks[task.task_id] = task
        for task in batch:
            if is_terminal(task):
                continue
            # Indexes only (queue, loads, attempt timer): the store already holds this copy.
            self._put(task, None, now, [])
            if task.state is _S.REJECTED:
                self._change(task, Event.REQUEUE, now, effects, "resumed by a new lead")
            elif task.state is _S.RETRY:
                self._set_timer(_RETRY, task.task_id, now + self._backoff(0), task.retry_count)
            elif task.state is _S.COMPLETE:
                effects.append(RequestVerify(task))
            if task.deadline is not None:
                self._set_timer(_DEADLINE, task.task_id, task.deadline, 0)
        for task in batch:
            if task.state is _S.PENDING:
                self._check_dependencies(task.task_id, now, effects)
        self._dispatch(now, effects)
        return tuple(effects)

    def adopt(self, task: Task, now: float) -> tuple[Effect, ...]:
        """A copy of ``task`` newer than ours arrived after we resumed (from a node that
        was cut off, written by an earlier lead): it replaces ours and is resumed like the
        tasks of :meth:`restore`."""
        old = self._tasks.get(task.task_id)
        if old is None:
            return self.restore([task], now)
        effects: list[Effect] = []
        if is_terminal(task):
            self._put(task, old, now, [])
            return ()
        self._put(task, old, now, [])
        if task.state is _S.REJECTED:
            self._change(task, Event.REQUEUE, now, effects, "resumed by the lead")
        elif task.state is _S.RETRY:
            self._set_timer(_RETRY, task.task_id, now + self._backoff(0), task.retry_count)
        elif task.state is _S.COMPLETE:
            effects.append(RequestVerify(task))
        elif task.state is _S.PENDING:
            self._check_dependencies(task.task_id, now, effects)
        self._dispatch(now, effects)
        return tuple(effects)

    def agents_changed(self, views: Sequence[AgentView], now: float) -> tuple[Effect, ...]:
        """The agents' views changed (joined, left, role or skills changed, load)."""
        self._agents = {v.node_id: v for v in views}
        effects: list[Effect] = []
        self._dispatch(now, effects)
        return tuple(effects)

    def agent_lost(self, node_id: str, now: float) -> tuple[Effect, ...]:
        """``node_id`` died: requeue its idempotent tasks (with their checkpoints), fail
        its non-idempotent ones with ``agent_lost``."""
        view = self._agents.get(node_id)
        if view is not None:
            self._agents[node_id] = replace(view, alive=False)
        effects: list[Effect] = []
        for task_id in sorted(self._active.get(node_id, ())):
            self._lose(self._tasks[task_id], node_id, now, effects)
        self._dispatch(now, effects)
        return tuple(effects)

    def on_lost(
        self, task_id: str, node: str, now: float, attempt: int | None = None
    ) -> tuple[Effect, ...]:
        """The agent lost its run of this task (it restarted): as :meth:`agent_lost`, for
        this task only."""
        effects: list[Effect] = []
        task = self._current(task_id, node, attempt, effects, stop_stale=False)
        if task is not None:
            self._lose(task, node, now, effects)
            self._dispatch(now, effects)
        return tuple(effects)

    def _lose(self, task: Task, node_id: str, now: float, effects: list[Effect]) -> None:
        if task.idempotent:
            self._change(
                task,
                Event.AGENT_LOST,
                now,
                effects,
                f"agent {node_id} lost",
                assigned_to=None,
            )
        else:
            failure = TaskFailure(
                "agent_lost",
                f"agent {node_id} was lost while the task was {task.state.value}: it may "
                "have run. It is not idempotent, so it is not re-run without the operator: "
                f"`meshctl task retry --force {task.task_id}` runs it again",
            )
            self._change(task, Event.FAIL, now, effects, "agent_lost", error=failure)

    def annotate(self, task_id: str, note: str, now: float, actor: str) -> tuple[Effect, ...]:
        """Add ``note`` to a task's history (same state; once per text): e.g. the other
        outcome a partitioned lead had recorded for it."""
        task = self._tasks.get(task_id)
        if task is None or len(task.history) >= MAX_NOTES_HISTORY:
            return ()
        if any(h.reason == note for h in task.history):
            return ()
        step = Transition(task.state, now, actor, note)
        effects: list[Effect] = []
        self._put(replace(task, history=(*task.history, step), updated_at=now), task, now, effects)
        return tuple(effects)

    def cancel(self, task_id: str, now: float, actor: str = "operator") -> tuple[Effect, ...]:
        """Cancel a task (and stop it on its agent). Raises TaskError if it is finished."""
        task = self._require(task_id)
        if is_terminal(task):
            raise TaskError(f"task {task_id} is already {task.state.value}")
        if task.state is _S.COMPLETE:
            raise TaskError(f"task {task_id} is complete, its result awaiting verification")
        effects: list[Effect] = []
        if task.state in ACTIVE_STATES and task.assigned_to:
            effects.append(CancelOnAgent(task_id, task.assigned_to, "cancelled"))
        self._change(task, Event.CANCEL, now, effects, f"cancelled by {actor}", actor=actor)
        self._dispatch(now, effects)
        return tuple(effects)

    def operator_retry(
        self, task_id: str, now: float, actor: str = "operator", *, force: bool = False
    ) -> tuple[Effect, ...]:
        """Run a FAILED task again on purpose (retry count reset). Raises TaskError for
        any other state, and for a non-idempotent task that may have run already (its
        agent was lost while it held it) unless ``force``."""
        task = self._require(task_id)
        if task.state is not _S.FAILED:
            raise TaskError(
                f"only a failed task can be retried; task {task_id} is {task.state.value}"
            )
        may_have_run = task.error is not None and task.error.code == "agent_lost"
        if may_have_run and not task.idempotent and not force:
            raise TaskError(
                f"task {task_id} is not idempotent and may have run already (its agent was "
                "lost while it held it): retry it anyway with --force"
            )
        effects: list[Effect] = []
        task = self._change(
            task,
            Event.OPERATOR_RETRY,
            now,
            effects,
            f"retried by {actor}",
            actor=actor,
            retry_count=0,
            error=None,
            result=None,
            assigned_to=None,
        )
        self._rejected.pop(task_id, None)
        if task.deadline is not None:
            self._set_timer(_DEADLINE, task_id, task.deadline, 0)
        task = self._change(task, Event.RETRY, now, effects, "operator retry")
        if self._hold_for_approval(task, now, effects):
            return tuple(effects)
        self._check_dependencies(task_id, now, effects)
        self._dispatch(now, effects)
        return tuple(effects)

    def handoff(
        self,
        task_id: str,
        to_node: str | None,
        now: float,
        *,
        from_node: str | None = None,
        checkpoint: bytes | None = None,
    ) -> tuple[Effect, ...]:
        """The running agent hands the task (and its checkpoint) to ``to_node`` (None: the
        best other agent). Raises TaskError if the task is not running or no agent fits."""
        task = self._require(task_id)
        if task.state is not _S.RUNNING or task.assigned_to is None:
            raise TaskError(
                f"only a running task can be handed off; {task_id} is {task.state.value}"
            )
        if from_node is not None and from_node != task.assigned_to:
            return ()  # a stale request from an agent that no longer holds the task
        ranking = self._rank(task, now, exclude={task.assigned_to})
        if to_node is None:
            target = ranking.best
            if target is None:
                raise TaskError(f"no agent to hand task {task_id} to: {ranking.explain()}")
        else:
            target = next((a for a in ranking.order if to_node in (a.node_id, a.name)), None)
            if target is None:
                why = next(
                    (
                        e.reason
                        for e in ranking.excluded
                        if to_node in (e.agent.node_id, e.agent.name)
                    ),
                    "unknown agent",
                )
                raise TaskError(f"cannot hand task {task_id} to {to_node}: {why}")
        effects: list[Effect] = []
        changes: dict[str, Any] = {}
        if checkpoint is not None:
            changes["checkpoint"] = checkpoint
        self._assign(
            task, target, now, effects, Event.HANDOFF, f"handed off to {target.node_id}", **changes
        )
        self._dispatch(now, effects)
        return tuple(effects)

    def tick(self, now: float) -> tuple[Effect, ...]:
        """Fire every timer due at ``now``: attempt timeouts, retry backoffs, deadlines."""
        effects: list[Effect] = []
        while self._heap and self._heap[0][0] <= now:
            due, kind, task_id, token = heapq.heappop(self._heap)
            if self._timers.get((kind, task_id)) != (due, token):
                continue
            del self._timers[(kind, task_id)]
            task = self._tasks[task_id]
            if kind == _ATTEMPT:
                self._timed_out(task, now, effects)
            elif kind == _RETRY:
                self._change(task, Event.RETRY, now, effects, "backoff elapsed")
                self._check_dependencies(task_id, now, effects)
            elif not is_terminal(task) and task.state is not _S.COMPLETE:
                if task.state in ACTIVE_STATES and task.assigned_to:
                    effects.append(CancelOnAgent(task_id, task.assigned_to, "deadline"))
                failure = TaskFailure("deadline", f"deadline {task.deadline} passed")
                self._change(task, Event.DEADLINE, now, effects, "deadline", error=failure)
        self._dispatch(now, effects)
        return tuple(effects)

    # --- reports from agents --------------------------------------------------------

    def on_accepted(
        self, task_id: str, node: str, now: float, attempt: int | None = None
    ) -> tuple[Effect, ...]:
        """The agent stored the assignment."""
        effects: list[Effect] = []
        task = self._current(task_id, node, attempt, effects)
        if task is not None and task.state is _S.ASSIGNED:
            self._change(task, Event.ACCEPT, now, effects, f"accepted by {node}", actor=node)
        return tuple(effects)

    def on_started(
        self, task_id: str, node: str, now: float, attempt: int | None = None
    ) -> tuple[Effect, ...]:
        """The agent started the skill."""
        effects: list[Effect] = []
        task = self._current(task_id, node, attempt, effects)
        if task is not None and task.state is _S.ASSIGNED:
            self._change(task, Event.START, now, effects, f"started on {node}", actor=node)
        return tuple(effects)

    def on_progress(
        self,
        task_id: str,
        node: str,
        pct: float,
        message: str,
        now: float,
        checkpoint: bytes | None = None,
        attempt: int | None = None,
    ) -> tuple[Effect, ...]:
        """Progress (0..100, clamped) and optionally a checkpoint from the running skill."""
        effects: list[Effect] = []
        task = self._current(task_id, node, attempt, effects)
        if task is None:
            return tuple(effects)
        task = self._started(task, node, now, effects)
        progress = Progress(max(0.0, min(100.0, float(pct))), message)
        if checkpoint is not None:
            self._change(
                task,
                Event.CHECKPOINT,
                now,
                effects,
                "",
                actor=node,
                progress=progress,
                checkpoint=checkpoint,
            )
        else:
            self._change(task, Event.PROGRESS, now, effects, "", actor=node, progress=progress)
        return tuple(effects)

    def on_completed(
        self, task_id: str, node: str, result: Any, now: float, attempt: int | None = None
    ) -> tuple[Effect, ...]:
        """The agent returned a result."""
        effects: list[Effect] = []
        task = self._current(task_id, node, attempt, effects, stop_stale=False)
        if task is None:
            return tuple(effects)
        task = self._started(task, node, now, effects)
        self._change(
            task,
            Event.COMPLETE,
            now,
            effects,
            f"completed on {node}",
            actor=node,
            result=result,
            progress=Progress(100.0, task.progress.message),
        )
        self._dispatch(now, effects)
        return tuple(effects)

    def on_failed(
        self,
        task_id: str,
        node: str,
        error: TaskFailure,
        now: float,
        attempt: int | None = None,
    ) -> tuple[Effect, ...]:
        """The skill failed on the agent (its own error: not retried automatically)."""
        effects: list[Effect] = []
        task = self._current(task_id, node, attempt, effects, stop_stale=False)
        if task is None:
            return tuple(effects)
        self._change(task, Event.FAIL, now, effects, error.code, actor=node, error=error)
        self._dispatch(now, effects)
        return tuple(effects)

    def on_rejected(
        self, task_id: str, node: str, reason: str, now: float, attempt: int | None = None
    ) -> tuple[Effect, ...]:
        """The agent refused the assignment: try the next capable agent."""
        effects: list[Effect] = []
        task = self._current(task_id, node, attempt, effects, stop_stale=False)
        if task is None or task.state is not _S.ASSIGNED:
            return tuple(effects)
        self._rejected.setdefault(task_id, {})[node] = reason
        task = self._change(
            task,
            Event.REJECT,
            now,
            effects,
            f"rejected by {node}: {reason}",
            actor=node,
            assigned_to=None,
        )
        ranking = self._rank(task, now)
        refused = self._rejected[task_id]
        if ranking.best is not None:
            self._assign(task, ranking.best, now, effects)
        elif any(e.capable and e.agent.node_id not in refused for e in ranking.excluded):
            self._change(task, Event.REQUEUE, now, effects, "waiting for another agent")
        else:
            refusals = "; ".join(f"{n}: {r}" for n, r in sorted(self._rejected[task_id].items()))
            failure = TaskFailure("rejected", f"every capable agent refused it ({refusals})")
            self._change(task, Event.FAIL, now, effects, "rejected", error=failure)
        self._dispatch(now, effects)
        return tuple(effects)

    def on_verified(
        self, task_id: str, ok: bool, now: float, actor: str = "verifier", reason: str = ""
    ) -> tuple[Effect, ...]:
        """The verify step's verdict on a COMPLETE task."""
        task = self._require(task_id)
        if task.state is not _S.COMPLETE or not task.verify:
            return ()  # a duplicate verdict
        effects: list[Effect] = []
        if ok:
            self._change(task, Event.VERIFY_OK, now, effects, reason or "verified", actor=actor)
        else:
            failure = TaskFailure("verify_failed", reason or "the verify step refused the result")
            self._change(
                task, Event.VERIFY_FAIL, now, effects, "verify_failed", actor=actor, error=failure
            )
        self._dispatch(now, effects)
        return tuple(effects)

    # --- internals ------------------------------------------------------------------

    def _require(self, task_id: str) -> Task:
        task = self._tasks.get(task_id)
        if task is None:
            raise TaskError(f"unknown task id {task_id}")
        return task

    @property
    def _actor(self) -> str:
        return self._fence.lead if self._fence else "lead"

    def _current(
        self,
        task_id: str,
        node: str,
        attempt: int | None,
        effects: list[Effect],
        stop_stale: bool = True,
    ) -> Task | None:
        """The task if ``node`` holds its current attempt; otherwise None (stale report),
        telling the agent to stop unless the report says it already did."""
        task = self._tasks.get(task_id)
        if task is None:
            return None
        if (
            task.state in ACTIVE_STATES
            and task.assigned_to == node
            and (attempt is None or attempt == task.attempt)
        ):
            return task
        if stop_stale:
            effects.append(CancelOnAgent(task_id, node, "stale attempt"))
        return None

    def _started(self, task: Task, node: str, now: float, effects: list[Effect]) -> Task:
        # A report that implies the start (progress, result) while START is still in flight.
        if task.state is _S.ASSIGNED:
            return self._change(task, Event.START, now, effects, f"started on {node}", actor=node)
        return task

    def _views(self) -> list[AgentView]:
        views = []
        for node, view in self._agents.items():
            load = max(view.load, len(self._active.get(node, ())))
            last = self._last_assigned.get(node)
            if view.last_assigned_at is not None and (last is None or view.last_assigned_at > last):
                last = view.last_assigned_at
            views.append(replace(view, load=load, last_assigned_at=last))
        return views

    def _rank(
        self,
        task: Task,
        now: float,
        exclude: Iterable[str] = (),
        views: list[AgentView] | None = None,
    ) -> Ranking:
        skip = set(exclude) | set(self._rejected.get(task.task_id, ()))
        return rank_agents(task, self._views() if views is None else views, now, exclude=skip)

    def _backoff(self, retries_done: int) -> float:
        cfg = self._cfg
        return float(
            min(
                cfg.retry_backoff_max,
                cfg.retry_backoff_base * cfg.retry_backoff_factor**retries_done,
            )
        )

    def _set_timer(self, kind: str, task_id: str, due: float, token: int) -> None:
        self._timers[(kind, task_id)] = (due, token)
        heapq.heappush(self._heap, (due, kind, task_id, token))

    def _change(
        self,
        task: Task,
        event: Event,
        now: float,
        effects: list[Effect],
        reason: str,
        actor: str | None = None,
        **changes: Any,
    ) -> Task:
        new = apply(task, event, now, actor or self._actor, reason, **changes)
        self._put(new, task, now, effects)
        return new

    def _put(self, new: Task, old: Task | None, now: float, effects: list[Effect]) -> None:
        """Record ``new`` and keep every index (queue, loads, timers, dependents) in step."""
        task_id = new.task_id
        self._tasks[task_id] = new
        was_active = old is not None and old.state in ACTIVE_STATES
        if old is not None and was_active and old.assigned_to:
            self._active.get(old.assigned_to, set()).discard(task_id)
        if new.state in ACTIVE_STATES and new.assigned_to:
            self._active.setdefault(new.assigned_to, set()).add(task_id)
            if not was_active or old is None or old.attempt != new.attempt:
                self._set_timer(_ATTEMPT, task_id, now + new.timeout_s, new.attempt)
        else:
            self._timers.pop((_ATTEMPT, task_id), None)
        if new.state is not _S.RETRY:
            self._timers.pop((_RETRY, task_id), None)
        key = (-new.priority, new.created_at, task_id)
        queued = old is not None and old.state is _S.PENDING
        if new.state is _S.PENDING and not queued:
            bisect.insort(self._queue, key)
        elif new.state is not _S.PENDING and queued and old is not None:
            old_key = (-old.priority, old.created_at, task_id)
            idx = bisect.bisect_left(self._queue, old_key)
            if idx < len(self._queue) and self._queue[idx] == old_key:
                del self._queue[idx]
        effects.append(TaskChanged(new, old.state if old is not None else None))
        if (
            new.state is _S.COMPLETE
            and new.verify
            and (old is None or old.state is not _S.COMPLETE)
        ):
            effects.append(RequestVerify(new))
        if is_terminal(new) and (old is None or not is_terminal(old)):
            self._timers.pop((_DEADLINE, task_id), None)
            self._rejected.pop(task_id, None)
            effects.append(TaskFinished(new))
            if not succeeded(new):
                for dependent in sorted(self._dependents.get(task_id, ())):
                    self._check_dependencies(dependent, now, effects)

    def _check_dependencies(self, task_id: str, now: float, effects: list[Effect]) -> bool:
        """Fail a PENDING task whose dependency failed; True if all succeeded."""
        task = self._tasks[task_id]
        if task.state is not _S.PENDING:
            return False
        ready = True
        for dep in task.depends_on:
            dep_task = self._tasks.get(dep)
            if dep_task is None:
                ready = False
            elif dep_task.state in (_S.FAILED, _S.CANCELLED):
                code = f"dependency_failed:{dep}"
                failure = TaskFailure(code, f"dependency {dep} {dep_task.state.value}")
                self._change(task, Event.DEPENDENCY_FAILED, now, effects, code, error=failure)
                return False
            elif not succeeded(dep_task):
                ready = False
        return ready

    def _assign(
        self,
        task: Task,
        agent: AgentView,
        now: float,
        effects: list[Effect],
        event: Event = Event.ASSIGN,
        reason: str = "",
        **changes: Any,
    ) -> Task:
        self._last_assigned[agent.node_id] = now
        new = self._change(
            task,
            event,
            now,
            effects,
            reason or f"assigned to {agent.node_id}",
            assigned_to=agent.node_id,
            assignment=self._fence,
            attempt=task.attempt + 1,
            **changes,
        )
        effects.append(AssignTask(new, agent.node_id))
        return new

    def _timed_out(self, task: Task, now: float, effects: list[Effect]) -> None:
        if task.assigned_to:
            effects.append(CancelOnAgent(task.task_id, task.assigned_to, "timeout"))
        self._rejected.pop(task.task_id, None)
        if task.idempotent and task.retry_count < task.retry_limit:
            delay = self._backoff(task.retry_count)
            new = self._change(
                task,
                Event.TIMEOUT,
                now,
                effects,
                f"timeout; retry in {delay:g}s",
                retry_count=task.retry_count + 1,
                assigned_to=None,
            )
            self._set_timer(_RETRY, task.task_id, now + delay, new.retry_count)
            return
        if task.idempotent:
            why = f"no result within {task.timeout_s:g}s, {task.retry_count} retries used"
        else:
            why = f"no result within {task.timeout_s:g}s; not idempotent, so not retried"
        failure = TaskFailure("timeout", why)
        self._change(task, Event.FAIL, now, effects, "timeout", error=failure)

    def _dispatch(self, now: float, effects: list[Effect]) -> None:
        """Assign queued tasks, best first, while agents have room."""
        if self._fence is None:
            return
        views = self._views()
        for key in list(self._queue):
            if not any(v.alive and v.load < v.max_concurrent for v in views):
                return  # every agent is full: the rest of the queue waits
            task = self._tasks[key[2]]
            if task.state is not _S.PENDING:
                continue
            if not self._check_dependencies(task.task_id, now, effects):
                continue
            best = self._rank(task, now, views=views).best
            if best is not None:
                self._assign(task, best, now, effects)
                views = self._views()
