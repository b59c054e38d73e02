from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from meshd.clock import FakeClock
from meshd.skills.api import SkillContext
from meshd.skills.builtin import Registry, builtin_skills, decode_elapsed, encode_elapsed
from meshd.skills.executor import (
    MAX_MESSAGE,
    ExecResult,
    Executor,
    ExecutorConfig,
    SkillStats,
    failed,
    ok,
)
from meshd.skills.spec import ParamSpec, SkillError, SkillSpec
from meshd.wire.records import TaskFailure


class Boom:
    spec = SkillSpec("boom", params=(ParamSpec("text", default="bad thing"),))

    async def run(self, ctx: SkillContext) -> object:
        raise ValueError(ctx.params["text"])


class Refuse:
    spec = SkillSpec("refuse")

    async def run(self, ctx: SkillContext) -> object:
        raise SkillError("no space left on the scratch disk", code="disk_full")


class BadResult:
    spec = SkillSpec("bad-result", params=(ParamSpec("big", "bool", default=False),))

    async def run(self, ctx: SkillContext) -> object:
        return "x" * 2000 if ctx.params["big"] else {"obj": object()}


class Gate:
    """Runs until ``release`` is set."""

    spec = SkillSpec("gate")

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started = 0

    async def run(self, ctx: SkillContext) -> object:
        self.started += 1
        await self.release.wait()
        return "done"


class Stubborn:
    """Swallows the first cancel, then waits for ``release``."""

    spec = SkillSpec("stubborn")

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.task: asyncio.Task[object] | None = None

    async def run(self, ctx: SkillContext) -> object:
        self.task = asyncio.current_task()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            await self.release.wait()
        return "late"


class Tick:
    """Advances the fake clock (the run 'takes' ``seconds``); reports ``n`` progress
    steps, each advancing the clock by ``gap``, with a checkpoint each."""

    spec = SkillSpec(
        "tick",
        params=(
            ParamSpec("seconds", "float", default=0.0),
            ParamSpec("n", "int", default=0),
            ParamSpec("gap", "float", default=0.0),
            ParamSpec("fail", "bool", default=False),
            ParamSpec("hang", "bool", default=False),
        ),
    )

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock

    async def run(self, ctx: SkillContext) -> object:
        n = int(ctx.params["n"])  # type: ignore[call-overload]
        for i in range(1, n + 1):
            ctx.progress(100.0 * i / n, f"step {i}")
            ctx.checkpoint(str(i).encode())
            self.clock.advance(float(ctx.params["gap"]))  # type: ignore[arg-type]
        self.clock.advance(float(ctx.params["seconds"]))  # type: ignore[arg-type]
        if ctx.params["hang"]:
            await asyncio.Event().wait()
        if ctx.params["fail"]:
            raise RuntimeError("asked to fail")
        return n


def make(
    *extra: object, clock: FakeClock | None = None, **config: float
) -> tuple[Executor, FakeClock]:
    clock = clock or FakeClock()
    reg = Registry([*builtin_skills(), Boom(), Refuse(), BadResult(), Tick(clock)])
    for skill in extra:
        reg.register(skill)  # type: ignore[arg-type]
    cfg = ExecutorConfig(**{"cancel_grace": 0.2, **config})  # type: ignore[arg-type]
    return Executor(reg, config=cfg, clock=clock), clock


async def test_echo_ok() -> None:
    ex, _ = make()
    res = await ex.run("t1", "echo", {"message": "hi"})
    assert res == ExecResult(True, {"message": "hi"})
    assert res.failure is None
    assert ex.running() == ()


async def test_unknown_skill_and_bad_params_never_start() -> None:
    ex, _ = make()
    res = await ex.run("t1", "nope", {})
    assert (res.ok, res.code) == (False, "unknown_skill")
    assert res.message.startswith("unknown skill 'nope'; known: bad-result, boom, echo")
    res = await ex.run("t2", "echo", {"msg": "x"})
    assert (res.code, res.message) == (
        "bad_params",
        "unknown parameter 'msg' for skill 'echo'; known: message",
    )
    res = await ex.run("t3", "sleep", {"seconds": "a while"})
    assert res.code == "bad_params"
    assert "must be a number" in res.message
    res = await ex.run("t4", "echo", {"message": "x"}, timeout=0)
    assert (res.code, res.message) == ("bad_params", "bad timeout 0: must be positive seconds")
    assert res.failure == TaskFailure("bad_params", res.message)
    assert ex.stats() == {}


async def test_params_from_the_cli_are_coerced() -> None:
    ex, _ = make()
    res = await ex.run("t1", "sleep", {"seconds": "0.01", "step": "0.005"})
    assert res.ok
    assert res.result == {"slept": 0.01, "resumed_from": 0.0}


async def test_exception_in_a_skill_is_an_error_result() -> None:
    ex, _ = make()
    res = await ex.run("t1", "boom", {})
    assert (res.ok, res.code, res.message) == (False, "error", "ValueError: bad thing")
    assert "Traceback" not in res.message
    res = await ex.run("t2", "boom", {"text": ""})
    assert res.message == "ValueError"
    res = await ex.run("t3", "boom", {"text": "y" * 5000})
    assert len(res.message) == MAX_MESSAGE and res.message.endswith("...")
    # The executor is still fine afterwards.
    assert (await ex.run("t4", "echo", {"message": "still here"})).ok
    assert ex.stats()["boom"] == SkillStats(runs=3, failures=3, total_duration=0.0)


async def test_skill_error_keeps_its_code() -> None:
    ex, _ = make()
    res = await ex.run("t1", "refuse", {})
    assert (res.code, res.message) == ("disk_full", "no space left on the scratch disk")


async def test_bad_results() -> None:
    ex, _ = make(max_result_bytes=1000)
    res = await ex.run("t1", "bad-result", {})
    assert res.code == "bad_result"
    assert res.message.startswith("result cannot be encoded")
    res = await ex.run("t2", "bad-result", {"big": True})
    assert res.code == "bad_result"
    assert res.message.startswith("result too large: 2003 bytes encoded, at most 1000")
    assert ex.stats()["bad-result"].failures == 2


async def test_timeout() -> None:
    ex, _ = make()
    checkpoints: list[bytes] = []
    t0 = time.monotonic()
    res = await ex.run(
        "t1",
        "sleep",
        {"seconds": 60, "step": 0.01},
        on_checkpoint=checkpoints.append,
        timeout=0.05,
    )
    assert time.monotonic() - t0 < 0.5
    assert (res.code, res.message) == ("timeout", "skill 'sleep' timed out after 0.05 s")
    assert ex.running() == ()
    elapsed = [decode_elapsed(c) for c in checkpoints]
    assert elapsed == sorted(elapsed)
    assert len(checkpoints) <= 2  # the fake clock never moved: the rate limit holds


async def test_timeout_passes_on_the_held_checkpoint() -> None:
    ex, _ = make()
    checkpoints: list[bytes] = []
    res = await ex.run(
        "t1", "tick", {"n": 4, "hang": True}, on_checkpoint=checkpoints.append, timeout=0.02
    )
    assert res.code == "timeout"
    # The fake clock never moved: only the first checkpoint passed the rate limit, and
    # the freshest one held back was passed on when the run ended without a result.
    assert checkpoints == [b"1", b"4"]


async def test_timeout_of_a_skill_that_ignores_the_cancel_flag() -> None:
    gate = Gate()
    ex, _ = make(gate)
    res = await ex.run("t1", "gate", {}, timeout=0.02)
    assert res.code == "timeout"


async def test_stubborn_skill_is_abandoned_after_the_grace() -> None:
    stubborn = Stubborn()
    ex, _ = make(stubborn, cancel_grace=0.05)
    t0 = time.monotonic()
    res = await ex.run("t1", "stubborn", {}, timeout=0.02)
    assert time.monotonic() - t0 < 0.5
    assert res.code == "timeout"
    assert "did not stop within 0.05 s; abandoned" in res.message
    assert ex.running() == ()
    stubborn.release.set()
    assert stubborn.task is not None
    assert await stubborn.task == "late"


async def test_cancel_is_prompt() -> None:
    ex, _ = make()
    run = asyncio.create_task(ex.run("t1", "sleep", {"seconds": 60, "step": 30}))
    await asyncio.sleep(0.01)
    assert ex.running() == ("t1",)
    t0 = time.monotonic()
    assert ex.cancel("t1") is True
    res = await run
    assert time.monotonic() - t0 < 0.5
    assert (res.code, res.message) == ("cancelled", "skill 'sleep' was cancelled")
    assert ex.cancel("t1") is False
    assert ex.running() == ()
    assert ex.stats()["sleep"].failures == 1


async def test_cancel_of_a_skill_that_ignores_the_flag() -> None:
    gate = Gate()
    ex, _ = make(gate)
    run = asyncio.create_task(ex.run("t1", "gate", {}))
    await asyncio.sleep(0)
    ex.cancel("t1")
    assert (await run).code == "cancelled"


async def test_cancel_before_the_skill_starts() -> None:
    ex, _ = make()
    run = asyncio.create_task(ex.run("t1", "sleep", {"seconds": 60}))
    await asyncio.sleep(0)  # registered and started
    assert ex.cancel_all() == 1
    assert (await run).code == "cancelled"


async def test_caller_cancelled_stops_the_skill() -> None:
    gate = Gate()
    ex, _ = make(gate)
    run = asyncio.create_task(ex.run("t1", "gate", {}))
    await asyncio.sleep(0.01)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert ex.running() == ()


async def test_busy_and_duplicate() -> None:
    gate = Gate()
    ex, _ = make(gate, max_concurrent=2)
    runs = [asyncio.create_task(ex.run(f"t{i}", "gate", {})) for i in (1, 2)]
    await asyncio.sleep(0.01)
    assert ex.running() == ("t1", "t2")
    res = await ex.run("t3", "echo", {"message": "x"})
    assert (res.code, res.message) == ("busy", "2 skills already running, at most 2")
    gate.release.set()
    assert [(await r).result for r in runs] == ["done", "done"]
    assert (await ex.run("t3", "echo", {"message": "x"})).ok

    gate.release.clear()
    first = asyncio.create_task(ex.run("t1", "gate", {}))
    await asyncio.sleep(0.01)
    res = await ex.run("t1", "echo", {"message": "x"})
    assert (res.code, res.message) == ("duplicate", "task t1 is already running on this node")
    gate.release.set()
    assert (await first).ok
    assert gate.started == 3


async def test_resume_from_a_checkpoint() -> None:
    ex, _ = make()
    t0 = time.monotonic()
    res = await ex.run(
        "t1", "sleep", {"seconds": 10, "step": 0.01}, checkpoint=encode_elapsed(9.97)
    )
    assert time.monotonic() - t0 < 1.0
    assert res.result == {"slept": 10.0, "resumed_from": 9.97}


async def test_progress_is_rate_limited() -> None:
    ex, _ = make(progress_min_interval=0.25, checkpoint_min_interval=0.5)
    progress: list[tuple[float, str]] = []
    checkpoints: list[bytes] = []
    res = await ex.run(
        "t1",
        "tick",
        {"n": 20, "gap": 0.1},
        on_progress=lambda p, m: progress.append((p, m)),
        on_checkpoint=checkpoints.append,
    )
    assert res.ok and res.result == 20
    # Reports at clock 0.0, 0.1, ... 1.9: one passes every 0.25 s (every third, float
    # rounding aside), and 100 % always goes through.
    steps = [int(m.split()[1]) for _, m in progress]
    assert steps[0] == 1 and steps[-1] == 20
    assert 7 <= len(steps) <= 9
    assert steps == sorted(steps)
    # Checkpoints every 0.5 s; nothing is flushed after a successful run.
    assert [int(c) for c in checkpoints] == [1, 6, 11, 16]


async def test_held_checkpoint_is_flushed_on_failure() -> None:
    ex, _ = make(checkpoint_min_interval=10)
    checkpoints: list[bytes] = []
    res = await ex.run("t1", "tick", {"n": 5, "fail": True}, on_checkpoint=checkpoints.append)
    assert (res.code, res.message) == ("error", "RuntimeError: asked to fail")
    assert checkpoints == [b"1", b"5"]


async def test_a_failing_callback_does_not_break_the_run() -> None:
    ex, _ = make()

    def bad(pct: float, msg: str) -> None:
        raise OSError("link down")

    res = await ex.run("t1", "tick", {"n": 3}, on_progress=bad)
    assert res.ok


async def test_stats_use_the_injected_clock() -> None:
    ex, _ = make()
    for seconds in (1.0, 3.0):
        assert (await ex.run("a", "tick", {"seconds": seconds})).duration == seconds
    res = await ex.run("b", "tick", {"seconds": 2.0, "fail": True})
    assert (res.code, res.duration) == ("error", 2.0)
    await ex.run("c", "echo", {"message": "m"})
    await ex.run("d", "echo", {"message": 1})  # bad params: not a run
    stats = ex.stats()
    assert stats["tick"] == SkillStats(runs=3, failures=1, total_duration=6.0)
    assert stats["tick"].mean_duration == 2.0
    assert stats["echo"] == SkillStats(runs=1, failures=0, total_duration=0.0)
    assert SkillStats().mean_duration == 0.0
    assert set(stats) == {"tick", "echo"}


def test_result_constructors() -> None:
    assert ok(5, 1.5) == ExecResult(True, result=5, duration=1.5)
    res = failed("timeout", "slow", 2.0)
    assert (res.ok, res.code, res.message, res.duration) == (False, "timeout", "slow", 2.0)
    assert res.failure == TaskFailure("timeout", "slow")


def test_default_executor_has_the_builtins() -> None:
    assert Executor().registry.names() == ("echo", "sleep", "sysinfo")


def test_stats_to_dict() -> None:
    assert SkillStats(runs=2, failures=1, total_duration=3.0).to_dict() == {
        "runs": 2,
        "failures": 1,
        "total_duration": 3.0,
        "mean_duration": 1.5,
    }


class Deaf:
    """Swallows every cancel until ``release`` is set (a badly written skill)."""

    spec = SkillSpec("deaf")

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.task: asyncio.Task[object] | None = None

    async def run(self, ctx: SkillContext) -> object:
        self.task = asyncio.current_task()
        while not self.release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await self.release.wait()
        return "finally"


async def test_cancel_of_a_skill_that_swallows_it_is_prompt() -> None:
    deaf = Deaf()
    ex, _ = make(deaf, cancel_grace=0.05)
    run = asyncio.create_task(ex.run("t1", "deaf", {}, timeout=60))
    await asyncio.sleep(0.01)
    t0 = time.monotonic()
    ex.cancel("t1")
    res = await run
    assert time.monotonic() - t0 < 0.5
    assert res.code == "cancelled"
    assert res.message == "skill 'deaf' was cancelled and did not stop within 0.05 s; abandoned"
    assert ex.running() == ()
    deaf.release.set()
    assert deaf.task is not None
    assert await deaf.task == "finally"


class SelfCancel:
    spec = SkillSpec("self-cancel")

    async def run(self, ctx: SkillContext) -> object:
        ctx.cancel()
        await asyncio.sleep(0)
        ctx.raise_if_cancelled()
        return "unreachable"


class NotAsync:
    spec = SkillSpec("not-async")

    def run(self, ctx: SkillContext) -> object:
        return "sync"


class RaisesOnCall:
    spec = SkillSpec("raises-on-call")

    def run(self, ctx: SkillContext) -> object:
        raise KeyError("k")


async def test_skills_that_break_the_protocol() -> None:
    ex, _ = make(SelfCancel(), NotAsync(), RaisesOnCall())
    res = await ex.run("t1", "self-cancel", {})
    assert (res.code, res.message) == ("cancelled", "skill 'self-cancel' was cancelled")
    res = await ex.run("t2", "not-async", {})
    assert (res.code, res.message) == ("error", "skill 'not-async': run() is not a coroutine")
    res = await ex.run("t3", "raises-on-call", {})
    assert (res.code, res.message) == (
        "error",
        "skill 'raises-on-call' did not start: KeyError: 'k'",
    )
    assert ex.running() == ()


class Mover:
    spec = SkillSpec(name="mover", description="Checkpoints, then hands off.", version="1.0.0")

    async def run(self, ctx: SkillContext) -> object:
        ctx.checkpoint(b"half")
        ctx.handoff("node-b")


async def test_handoff_ends_the_run_with_its_target_and_last_checkpoint() -> None:
    ex, _ = make(Mover(), checkpoint_min_interval=10.0)
    seen: list[bytes] = []
    res = await ex.run("t1", "mover", {}, on_checkpoint=seen.append)
    assert (res.ok, res.code, res.message) == (False, "handoff", "node-b")
    assert seen == [b"half"]
    assert ex.running() == ()
