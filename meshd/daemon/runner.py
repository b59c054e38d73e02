"""Local skill runs of a live node: the executor, with progress, checkpoints and the
outcome of each run fed back to the core through a port.

The core decides what runs here (:class:`~meshd.effects.RunSkill`, released only once
the assignment is durable) and what stops (:class:`~meshd.effects.CancelSkill`); this
module starts and stops the runs on the :class:`~meshd.skills.executor.Executor` and
tells the :class:`Outcomes` port what they report. It keeps each run's freshest
checkpoint, so a graceful shutdown can hand a task back with it, and each skill's run
statistics in the store, so they survive a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any, Protocol

from meshd import log
from meshd.skills.executor import HANDOFF, ExecResult, Executor, SkillStats
from meshd.wire.records import Task

_log = log.get("meshd.runner")

#: s. Extra time the executor gives a run past its task's timeout: the lead's attempt
#: timer fires first and cancels it; this is only a backstop.
TIMEOUT_BACKSTOP = 1.0


class Outcomes(Protocol):
    """Where a run's reports go (the node feeds them to its core)."""

    def progress(
        self, task_id: str, attempt: int, pct: float, message: str, checkpoint: bytes | None
    ) -> None: ...

    def done(
        self, task_id: str, attempt: int, ok: bool, result: Any, code: str, message: str
    ) -> None: ...

    def handoff(
        self, task_id: str, attempt: int, target: str, checkpoint: bytes | None
    ) -> None: ...


class StatsStore(Protocol):
    """Where run statistics are kept (the store's small keyed tables)."""

    def kv_put(self, table: str, key: str, value: Any, durable: bool = True) -> None: ...

    def kv_items(self, table: str) -> list[tuple[str, Any]]: ...


class Runner:
    """The skill runs of one node (see the module docstring)."""

    def __init__(self, executor: Executor, outcomes: Outcomes, stats: StatsStore) -> None:
        self.executor = executor
        self._outcomes = outcomes
        self._stats = stats
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._revoked: set[str] = set()
        self._checkpoints: dict[str, bytes] = {}

    def load_stats(self) -> None:
        """Seed the executor's statistics from the store (at start)."""
        seeded: dict[str, SkillStats] = {}
        for name, rec in self._stats.kv_items("skill_stats"):
            with contextlib.suppress(KeyError, TypeError, ValueError):
                seeded[name] = SkillStats(
                    int(rec["runs"]), int(rec["failures"]), float(rec["total_duration"])
                )
        self.executor.seed_stats(seeded)

    def stats(self) -> Mapping[str, SkillStats]:
        return self.executor.stats()

    def checkpoint(self, task_id: str) -> bytes | None:
        """The freshest checkpoint the run of ``task_id`` made (None: none, or no run)."""
        return self._checkpoints.get(task_id)

    # ---- what the core asks ----------------------------------------------------------------

    def start(self, task: Task) -> None:
        """Run attempt ``task.attempt`` of ``task`` (a superseded attempt is stopped first)."""
        task_id, attempt = task.task_id, task.attempt
        old = self._tasks.get(task_id)
        if old is not None and not old.done():
            self.executor.cancel(task_id)
        last: dict[str, Any] = {"pct": task.progress.pct, "message": task.progress.message}
        outcomes = self._outcomes

        def on_progress(pct: float, message: str) -> None:
            last["pct"], last["message"] = pct, message
            outcomes.progress(task_id, attempt, pct, message, None)

        def on_checkpoint(data: bytes) -> None:
            last["ckpt"] = data
            self._checkpoints[task_id] = data
            outcomes.progress(task_id, attempt, float(last["pct"]), str(last["message"]), data)

        async def run() -> None:
            if old is not None and not old.done():
                with contextlib.suppress(BaseException):
                    await old  # the superseded attempt must leave the executor first
            if self._tasks.get(task_id) is not current:
                # Superseded before it reached the executor: it never runs.
                outcomes.done(task_id, attempt, False, None, "cancelled", "superseded")
                return
            result = await self.executor.run(
                task_id,
                task.skill,
                task.params,
                task.checkpoint,
                on_progress=on_progress,
                on_checkpoint=on_checkpoint,
                timeout=task.timeout_s + TIMEOUT_BACKSTOP,
            )
            if self._tasks.get(task_id) is current:
                del self._tasks[task_id]
            self._checkpoints.pop(task_id, None)
            stats = self.executor.stats().get(task.skill)
            if stats is not None:  # kept across restarts (describe / list show them)
                self._stats.kv_put("skill_stats", task.skill, stats.to_dict(), durable=False)
            if task_id in self._revoked:
                self._revoked.discard(task_id)
                result = ExecResult(
                    False, code="revoked", message=f"skill {task.skill!r} was revoked while it ran"
                )
            if result.code == HANDOFF:
                outcomes.handoff(task_id, attempt, result.message, last.get("ckpt"))
                return
            outcomes.done(task_id, attempt, result.ok, result.result, result.code, result.message)

        current = asyncio.get_running_loop().create_task(run(), name=f"skill-{task_id[:8]}")
        self._tasks[task_id] = current

    def cancel(self, task_id: str) -> None:
        """Stop the run of ``task_id`` (its outcome, ``cancelled``, is still reported)."""
        self.executor.cancel(task_id)

    def stop_skill(self, name: str) -> int:
        """Stop every local run of ``name`` (its pack was revoked): they fail ``revoked``."""
        ids = self.executor.running_skill(name)
        for task_id in ids:
            self._revoked.add(task_id)
            self.executor.cancel(task_id)
        return len(ids)

    async def close(self) -> None:
        """Cancel every run and wait for them to leave (shutdown)."""
        self.executor.cancel_all()
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        self._tasks.clear()
