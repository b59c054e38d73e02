"""Local skill runs (meshd.daemon.runner) on a real Executor with the built-in skills,
reporting through fake Outcomes and StatsStore ports."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from meshd.daemon.runner import Runner
from meshd.skills.api import SkillContext
from meshd.skills.builtin import decode_elapsed, default_registry
from meshd.skills.executor import Executor, ExecutorConfig, SkillStats
from meshd.skills.spec import SkillSpec
from meshd.tasks.model import new_task
from meshd.wire.records import Task

ORIGIN = "0" * 31 + "1"
#: s. Bound on every wait for something that must happen (never reached when it does).
PATIENCE = 10.0


class FakeOutcomes:
    """Records what the runs report; ``until`` awaits a condition on the records."""

    def __init__(self) -> None:
        self.progress_calls: list[tuple[str, int, float, str, bytes | None]] = []
        self.done_calls: list[tuple[str, int, bool, Any, str, str]] = []
        self.handoff_calls: list[tuple[str, int, str, bytes | None]] = []
        #: every call, in order: ("progress" | "done" | "handoff", task_id, attempt)
        self.order: list[tuple[str, str, int]] = []
        self._changed = asyncio.Event()

    def progress(
        self, task_id: str, attempt: int, pct: float, message: str, checkpoint: bytes | None
    ) -> None:
        self.progress_calls.append((task_id, attempt, pct, message, checkpoint))
        self._note("progress", task_id, attempt)

    def done(
        self, task_id: str, attempt: int, ok: bool, result: Any, code: str, message: str
    ) -> None:
        self.done_calls.append((task_id, attempt, ok, result, code, message))
        self._note("done", task_id, attempt)

    def handoff(self, task_id: str, attempt: int, target: str, checkpoint: bytes | None) -> None:
        self.handoff_calls.append((task_id, attempt, target, checkpoint))
        self._note("handoff", task_id, attempt)

    def _note(self, kind: str, task_id: str, attempt: int) -> None:
        self.order.append((kind, task_id, attempt))
        self._changed.set()

    async def until(self, cond: Callable[[], bool], timeout: float = PATIENCE) -> None:
        async with asyncio.timeout(timeout):
            while not cond():
                self._changed.clear()
                await self._changed.wait()

    def done_of(self, task_id: str, attempt: int) -> tuple[str, int, bool, Any, str, str] | None:
        return next((d for d in self.done_calls if d[:2] == (task_id, attempt)), None)

    def checkpoints(self, task_id: str) -> list[bytes]:
        return [c[4] for c in self.progress_calls if c[0] == task_id and c[4] is not None]


class FakeStats:
    def __init__(self, items: list[tuple[str, Any]] | None = None) -> None:
        self.items = items or []
        self.puts: list[tuple[str, str, Any, bool]] = []

    def kv_put(self, table: str, key: str, value: Any, durable: bool = True) -> None:
        self.puts.append((table, key, value, durable))

    def kv_items(self, table: str) -> list[tuple[str, Any]]:
        assert table == "skill_stats"
        return list(self.items)


class Parked:
    """A skill that checkpoints once, then waits to be cancelled, recording its exit."""

    spec = SkillSpec(name="parked", description="waits for a cancel", version="1.0.0")

    def __init__(self) -> None:
        self.log: list[str] = []

    async def run(self, ctx: SkillContext) -> object:
        self.log.append("started")
        try:
            ctx.checkpoint(b"ck-1")
            await ctx.wait_cancelled()
            return {"cancelled": True}
        finally:
            self.log.append("left")


class Mover:
    """A skill that checkpoints and asks for a handoff to node ``n2``."""

    spec = SkillSpec(name="mover", description="hands off", version="1.0.0")

    async def run(self, ctx: SkillContext) -> object:
        ctx.checkpoint(b"moved-at-3")
        ctx.handoff("n2")


class World:
    def __init__(self, stats: FakeStats | None = None) -> None:
        self.registry = default_registry()
        self.parked = Parked()
        self.registry.register(self.parked)
        self.registry.register(Mover())
        # No throttling: every progress report and checkpoint is passed on.
        config = ExecutorConfig(progress_min_interval=0.0, checkpoint_min_interval=0.0)
        self.executor = Executor(self.registry, config=config)
        self.outcomes = FakeOutcomes()
        self.stats = stats or FakeStats()
        self.runner = Runner(self.executor, self.outcomes, self.stats)


@pytest.fixture
async def w() -> AsyncIterator[World]:
    world = World()
    yield world
    await world.runner.close()


def make_task(skill: str, params: dict[str, Any], n: int = 1, attempt: int = 1) -> Task:
    task = new_task(skill, params, ORIGIN, 1.0, task_id=f"{n:032x}")
    return dataclasses.replace(task, attempt=attempt)


def long_sleep(n: int = 1, attempt: int = 1) -> Task:
    return make_task("sleep", {"seconds": 600.0, "step": 0.005}, n, attempt)


async def running(w: World, task_id: str) -> None:
    """Wait until the executor runs ``task_id`` (its first progress report)."""
    await w.outcomes.until(lambda: any(c[0] == task_id for c in w.outcomes.progress_calls))
    assert task_id in w.executor.running()


# ---- outcomes -----------------------------------------------------------------------------------


async def test_a_run_result_reaches_done(w: World) -> None:
    task = make_task("echo", {"message": "hi"}, attempt=3)
    w.runner.start(task)
    assert w.outcomes.done_calls == []  # the run starts on a later turn
    await w.outcomes.until(lambda: bool(w.outcomes.done_calls))
    assert w.outcomes.done_calls == [(task.task_id, 3, True, {"message": "hi"}, "", "")]


@pytest.mark.parametrize(
    ("skill", "params", "code"),
    [
        ("nope", {}, "unknown_skill"),
        ("echo", {}, "bad_params"),
        ("sleep", {"seconds": -1}, "bad_params"),
    ],
)
async def test_a_refused_run_reaches_done_not_ok(
    w: World, skill: str, params: dict[str, Any], code: str
) -> None:
    task = make_task(skill, params)
    w.runner.start(task)
    await w.outcomes.until(lambda: bool(w.outcomes.done_calls))
    ((task_id, attempt, ok, result, got_code, message),) = w.outcomes.done_calls
    assert (task_id, attempt, ok, result) == (task.task_id, 1, False, None)
    assert got_code == code
    assert message


async def test_progress_and_checkpoints_reach_outcomes(w: World) -> None:
    task = make_task("sleep", {"seconds": 0.05, "step": 0.01})
    w.runner.start(task)
    await w.outcomes.until(lambda: bool(w.outcomes.done_calls))
    ckpts = w.outcomes.checkpoints(task.task_id)
    assert len(ckpts) == 5
    assert decode_elapsed(ckpts[-1]) == pytest.approx(0.05)
    pcts = [c[2] for c in w.outcomes.progress_calls if c[4] is None]
    assert pcts == sorted(pcts)
    assert pcts[-1] == 100.0
    assert all(c[:2] == (task.task_id, 1) for c in w.outcomes.progress_calls)
    assert w.outcomes.order[-1] == ("done", task.task_id, 1)
    assert w.outcomes.done_calls[0][2:4] == (True, {"slept": 0.05, "resumed_from": 0.0})


async def test_checkpoint_is_the_freshest_until_the_run_ends(w: World) -> None:
    task = long_sleep()
    assert w.runner.checkpoint(task.task_id) is None
    w.runner.start(task)

    def has(n: int) -> Callable[[], bool]:
        return lambda: len(w.outcomes.checkpoints(task.task_id)) >= n

    for seen in (1, 3, 6):
        await w.outcomes.until(has(seen))
        # read together, no await between: the runner holds the last one reported
        assert w.runner.checkpoint(task.task_id) == w.outcomes.checkpoints(task.task_id)[-1]
    w.runner.cancel(task.task_id)
    await w.outcomes.until(lambda: bool(w.outcomes.done_calls))
    assert w.runner.checkpoint(task.task_id) is None


async def test_a_resumed_run_starts_from_the_tasks_checkpoint(w: World) -> None:
    task = dataclasses.replace(
        make_task("sleep", {"seconds": 0.05, "step": 0.01}), checkpoint=b"0.04"
    )
    w.runner.start(task)
    await w.outcomes.until(lambda: bool(w.outcomes.done_calls))
    assert w.outcomes.done_calls[0][3] == {"slept": 0.05, "resumed_from": 0.04}


async def test_the_task_timeout_gets_a_backstop(w: World) -> None:
    # The lead's attempt timer (timeout_s) fires first; the executor only backs it up.
    task = dataclasses.replace(make_task("sleep", {"seconds": 0.1, "step": 0.01}), timeout_s=0.01)
    w.runner.start(task)
    await w.outcomes.until(lambda: bool(w.outcomes.done_calls))
    assert w.outcomes.done_calls[0][2] is True


# ---- stopping runs ----------------------------------------------------------------------------


async def test_cancel_makes_the_outcome_cancelled(w: World) -> None:
    task = long_sleep()
    w.runner.start(task)
    await running(w, task.task_id)
    w.runner.cancel(task.task_id)
    await w.outcomes.until(lambda: bool(w.outcomes.done_calls))
    ((task_id, attempt, ok, result, code, _msg),) = w.outcomes.done_calls
    assert (task_id, attempt, ok, result, code) == (task.task_id, 1, False, None, "cancelled")
    assert w.executor.running() == ()


async def test_cancel_of_no_run_is_harmless(w: World) -> None:
    w.runner.cancel("f" * 32)
    await asyncio.sleep(0)
    assert w.outcomes.order == []


async def test_stop_skill_makes_a_running_run_revoked(w: World) -> None:
    sleeper = long_sleep(1)
    parked = make_task("parked", {}, 2)
    w.runner.start(sleeper)
    w.runner.start(parked)
    await running(w, sleeper.task_id)
    assert w.runner.stop_skill("sleep") == 1
    await w.outcomes.until(lambda: bool(w.outcomes.done_calls))
    ((task_id, attempt, ok, result, code, message),) = w.outcomes.done_calls
    assert (task_id, attempt, ok, result, code) == (sleeper.task_id, 1, False, None, "revoked")
    assert "revoked" in message
    assert w.executor.running() == (parked.task_id,)  # other skills run on


async def test_stop_skill_with_nothing_running_stops_nothing(w: World) -> None:
    assert w.runner.stop_skill("sleep") == 0


async def test_a_revoked_mark_does_not_stick_to_the_next_run(w: World) -> None:
    first = long_sleep(1, attempt=1)
    w.runner.start(first)
    await running(w, first.task_id)
    w.runner.stop_skill("sleep")
    await w.outcomes.until(lambda: w.outcomes.done_of(first.task_id, 1) is not None)
    w.runner.start(make_task("echo", {"message": "again"}, 1, attempt=2))
    await w.outcomes.until(lambda: w.outcomes.done_of(first.task_id, 2) is not None)
    assert w.outcomes.done_of(first.task_id, 2) == (
        first.task_id,
        2,
        True,
        {"message": "again"},
        "",
        "",
    )


async def test_a_new_attempt_supersedes_the_running_one(w: World) -> None:
    old = long_sleep(1, attempt=1)
    w.runner.start(old)
    await running(w, old.task_id)
    w.runner.start(make_task("echo", {"message": "new"}, 1, attempt=2))
    await w.outcomes.until(lambda: w.outcomes.done_of(old.task_id, 2) is not None)
    old_done = w.outcomes.done_of(old.task_id, 1)
    assert old_done is not None
    assert old_done[2:5] == (False, None, "cancelled")
    assert w.outcomes.done_of(old.task_id, 2) == (old.task_id, 2, True, {"message": "new"}, "", "")
    dones = [o for o in w.outcomes.order if o[0] == "done"]
    assert dones == [("done", old.task_id, 1), ("done", old.task_id, 2)]  # old leaves first


async def test_a_new_attempt_in_the_same_turn_supersedes_the_old_one(w: World) -> None:
    w.runner.start(make_task("sleep", {"seconds": 0.3, "step": 0.01}, 1, attempt=1))
    w.runner.start(make_task("echo", {"message": "new"}, 1, attempt=2))
    await w.outcomes.until(lambda: w.outcomes.done_of(f"{1:032x}", 2) is not None)
    old_done = w.outcomes.done_of(f"{1:032x}", 1)
    assert old_done is not None
    assert old_done[2] is False, "the superseded attempt ran to completion"


async def test_a_handoff_reaches_outcomes_with_the_last_checkpoint(w: World) -> None:
    task = make_task("mover", {}, attempt=4)
    w.runner.start(task)
    await w.outcomes.until(lambda: bool(w.outcomes.handoff_calls))
    assert w.outcomes.handoff_calls == [(task.task_id, 4, "n2", b"moved-at-3")]
    assert w.outcomes.done_calls == []


async def test_close_cancels_every_run_and_waits_for_them(w: World) -> None:
    sleeper = long_sleep(1)
    parked = make_task("parked", {}, 2)
    w.runner.start(sleeper)
    w.runner.start(parked)
    await running(w, sleeper.task_id)
    await w.outcomes.until(lambda: bool(w.outcomes.checkpoints(parked.task_id)))
    assert w.parked.log == ["started"]
    await w.runner.close()
    assert w.executor.running() == ()
    assert w.parked.log == ["started", "left"]  # the skill itself has ended


# ---- statistics ---------------------------------------------------------------------------------


async def test_run_statistics_are_saved_after_each_run(w: World) -> None:
    w.runner.start(make_task("echo", {"message": "a"}, 1))
    await w.outcomes.until(lambda: len(w.outcomes.done_calls) == 1)
    sleeper = long_sleep(2)
    w.runner.start(sleeper)
    await running(w, sleeper.task_id)
    w.runner.cancel(sleeper.task_id)  # a run that started and failed: counted
    await w.outcomes.until(lambda: len(w.outcomes.done_calls) == 2)
    assert [(t, k, d) for t, k, _v, d in w.stats.puts] == [
        ("skill_stats", "echo", False),
        ("skill_stats", "sleep", False),
    ]
    echo, sleep = (v for _t, _k, v, _d in w.stats.puts)
    assert (echo["runs"], echo["failures"]) == (1, 0)
    assert (sleep["runs"], sleep["failures"]) == (1, 1)
    assert sleep["total_duration"] > 0
    assert w.runner.stats()["sleep"] == SkillStats(1, 1, sleep["total_duration"])


async def test_load_stats_seeds_the_executor_and_skips_bad_records() -> None:
    stats = FakeStats(
        [
            ("echo", {"runs": 5, "failures": 1, "total_duration": 2.0}),
            ("sleep", {"runs": "7", "failures": 0, "total_duration": 1}),  # numbers as text
            ("broken", {"runs": 1}),
            ("garbage", "not a record"),
            ("nan", {"runs": "x", "failures": 0, "total_duration": 0}),
        ]
    )
    world = World(stats)
    world.runner.load_stats()
    seeded = world.runner.stats()
    assert seeded == {"echo": SkillStats(5, 1, 2.0), "sleep": SkillStats(7, 0, 1.0)}
    world.runner.start(make_task("echo", {"message": "x"}))
    await world.outcomes.until(lambda: bool(world.outcomes.done_calls))
    saved = stats.puts[-1][2]
    assert (saved["runs"], saved["failures"]) == (6, 1)
    assert saved["total_duration"] >= 2.0
    await world.runner.close()
