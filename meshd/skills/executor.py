"""The executor: runs one skill for one task and says how it ended.

:meth:`Executor.run` looks the skill up, validates the params, runs the skill as an
asyncio task under a wall-clock timeout and returns an :class:`ExecResult`: ``ok`` with
the result, or ``failed`` with a stable code. It never raises for anything a skill or a
request does wrong. Built-in skills run in-process; the sandboxed subprocess runner for
packs (issue 5) plugs in behind the same :class:`~meshd.skills.api.Skill` interface.

Failure codes: ``busy`` (at ``max_concurrent``), ``duplicate`` (that task id is already
running here), ``unknown_skill``, ``bad_params``, ``timeout``, ``cancelled``, ``error``
(an exception in the skill: its type and text, never a traceback), ``bad_result`` (not
msgpack-encodable, or too large), or a code a skill raised with
:class:`~meshd.skills.spec.SkillError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Final

import msgpack

from meshd import log
from meshd.clock import Clock, SystemClock
from meshd.skills.api import CheckpointFn, ProgressFn, SkillCancelled, SkillContext, SkillHandoff
from meshd.skills.builtin import Registry, default_registry
from meshd.skills.spec import SkillError, validate_params
from meshd.wire.records import TaskFailure

_log = log.get("meshd.skills.executor")

#: The code of a run that ended by handing its task off (message: the target, or "").
HANDOFF: Final = "handoff"
#: Longest failure message kept (an exception's text can be arbitrarily long).
MAX_MESSAGE: Final = 500


@dataclass(frozen=True, slots=True)
class ExecutorConfig:
    """Limits of the executor. (To be moved into :mod:`meshd.config` when the node wires
    it; kept here so the skills package is self-contained.)"""

    #: count. Skills running at once on this node; one more is refused with ``busy`` so
    #: the lead assigns it elsewhere. 4 keeps a small host responsive; roles may raise it.
    max_concurrent: int = 4
    #: s. Least time between two progress reports passed on: a chatty skill (a loop
    #: reporting every iteration) cannot flood the mesh. 0.25 s still animates a
    #: progress bar smoothly. Reports in between are dropped; 100 % always goes through.
    progress_min_interval: float = 0.25
    #: s. Least time between two checkpoints passed on (each travels to the lead and is
    #: stored). The latest one held back is passed on when the run ends without a
    #: result, so a reassigned task resumes from the freshest point.
    checkpoint_min_interval: float = 0.5
    #: s. After a timeout or cancel, how long a skill gets to unwind before it is
    #: abandoned (a skill that swallows CancelledError must not hang the executor).
    cancel_grace: float = 1.0
    #: bytes. Largest msgpack-encoded result accepted: it travels in one mesh frame
    #: (transport.max_frame, 1 MiB) with the task record around it.
    max_result_bytes: int = 512 * 1024


@dataclass(frozen=True, slots=True)
class ExecResult:
    """How a run ended: ``ok`` with ``result``, or not ok with ``code`` and
    ``message``. ``duration`` is in seconds (0 when the skill never started)."""

    ok: bool
    result: object = None
    code: str = ""
    message: str = ""
    duration: float = 0.0

    @property
    def failure(self) -> TaskFailure | None:
        """The failure as the task model records it; None when ok."""
        return None if self.ok else TaskFailure(self.code, self.message)


def ok(result: object, duration: float = 0.0) -> ExecResult:
    """A successful run."""
    return ExecResult(True, result=result, duration=duration)


def failed(code: str, message: str, duration: float = 0.0) -> ExecResult:
    """A failed run (``message`` cut to :data:`MAX_MESSAGE` characters)."""
    if len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE - 3] + "..."
    return ExecResult(False, code=code, message=message, duration=duration)


@dataclass(frozen=True, slots=True)
class SkillStats:
    """Usage of one skill on this node since start: runs that started, how many did not
    succeed, and their durations (s)."""

    runs: int = 0
    failures: int = 0
    total_duration: float = 0.0

    @property
    def mean_duration(self) -> float:
        return self.total_duration / self.runs if self.runs else 0.0

    def to_dict(self) -> dict[str, object]:
        """A msgpack-ready form (for ``skill list``/``describe`` and status)."""
        return {
            "runs": self.runs,
            "failures": self.failures,
            "total_duration": self.total_duration,
            "mean_duration": self.mean_duration,
        }

    def add(self, result: ExecResult) -> SkillStats:
        return SkillStats(
            runs=self.runs + 1,
            failures=self.failures + (0 if result.ok else 1),
            total_duration=self.total_duration + result.duration,
        )


class _Throttle:
    """Passes a value on at most once per ``interval`` (by the injected clock) and keeps
    the latest one held back."""

    def __init__(self, clock: Clock, interval: float) -> None:
        self._clock = clock
        self._interval = interval
        self._last: float | None = None
        self.held: tuple[object, ...] | None = None

    def admit(self, *value: object, force: bool = False) -> bool:
        now = self._clock.monotonic()
        if force or self._last is None or now - self._last >= self._interval:
            self._last = now
            self.held = None
            return True
        self.held = value
        return False


@dataclass(slots=True)
class _Run:
    skill: str
    ctx: SkillContext
    task: asyncio.Task[object] | None = None
    cancel_requested: bool = False
    on_cancel: Callable[[], None] | None = None


class Executor:
    """Runs skills from a :class:`Registry` (the built-ins by default)."""

    def __init__(
        self,
        registry: Registry | None = None,
        *,
        config: ExecutorConfig | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.registry = registry if registry is not None else default_registry()
        self.config = config or ExecutorConfig()
        self._clock: Clock = clock or SystemClock()
        self._runs: dict[str, _Run] = {}
        self._stats: dict[str, SkillStats] = {}

    def running(self) -> tuple[str, ...]:
        """Ids of the tasks running now, in start order."""
        return tuple(self._runs)

    def seed_stats(self, stats: Mapping[str, SkillStats]) -> None:
        """Start from statistics kept from earlier runs of the daemon."""
        self._stats.update(stats)

    def running_skill(self, skill_name: str) -> tuple[str, ...]:
        """Ids of the tasks running ``skill_name`` here."""
        return tuple(t for t, run in self._runs.items() if run.skill == skill_name)

    def stats(self) -> dict[str, SkillStats]:
        """Usage statistics per skill name (skills that ran at least once)."""
        return dict(self._stats)

    def cancel(self, task_id: str) -> bool:
        """Cancel a running task; its :meth:`run` returns ``cancelled`` promptly. False
        if no such task is running here."""
        run = self._runs.get(task_id)
        if run is None:
            return False
        run.cancel_requested = True
        run.ctx.cancel()
        if run.on_cancel is not None:
            run.on_cancel()
        elif run.task is not None:
            run.task.cancel()
        return True

    def cancel_all(self) -> int:
        """Cancel every running task (shutdown); returns how many."""
        ids = list(self._runs)
        for task_id in ids:
            self.cancel(task_id)
        return len(ids)

    async def run(
        self,
        task_id: str,
        skill_name: str,
        params: Mapping[str, object],
        checkpoint: bytes | None = None,
        on_progress: ProgressFn | None = None,
        on_checkpoint: CheckpointFn | None = None,
        timeout: float | None = None,
    ) -> ExecResult:
        """Run ``skill_name`` with ``params`` for ``task_id``, resuming from
        ``checkpoint``; ``timeout`` (s, real time; None: none) bounds the run. Progress
        and checkpoints go to the callbacks, rate-limited. Never raises for a failure of
        the skill or the request; re-raises only if this coroutine itself is cancelled
        (after cancelling the skill)."""
        if task_id in self._runs:
            return failed("duplicate", f"task {task_id} is already running on this node")
        if len(self._runs) >= self.config.max_concurrent:
            return failed(
                "busy",
                f"{len(self._runs)} skills already running, at most {self.config.max_concurrent}",
            )
        if timeout is not None and not timeout > 0:
            return failed("bad_params", f"bad timeout {timeout!r}: must be positive seconds")
        try:
            skill = self.registry.get(skill_name)
            valid = validate_params(skill.spec, params)
        except SkillError as exc:
            return failed(exc.code, str(exc))

        progress = _Throttle(self._clock, self.config.progress_min_interval)
        checkpoints = _Throttle(self._clock, self.config.checkpoint_min_interval)

        def report_progress(pct: float, message: str) -> None:
            if on_progress is not None and progress.admit(pct, message, force=pct >= 100.0):
                _call(on_progress, pct, message)

        def report_checkpoint(data: bytes) -> None:
            if on_checkpoint is not None and checkpoints.admit(data):
                _call(on_checkpoint, data)

        ctx = SkillContext(
            valid,
            checkpoint_data=checkpoint,
            on_progress=report_progress,
            on_checkpoint=report_checkpoint,
            clock=self._clock,
            task_id=task_id,
        )
        run = _Run(skill_name, ctx)
        self._runs[task_id] = run
        started = self._clock.monotonic()
        try:
            try:
                coro = skill.run(ctx)
            except Exception as exc:  # a skill whose run is not a coroutine function
                result = failed("error", f"skill {skill_name!r} did not start: {_describe(exc)}")
            else:
                if inspect.iscoroutine(coro):
                    result = await self._supervise(run, coro, timeout)
                else:
                    result = failed("error", f"skill {skill_name!r}: run() is not a coroutine")
        finally:
            del self._runs[task_id]
        duration = max(0.0, self._clock.monotonic() - started)
        result = ExecResult(result.ok, result.result, result.code, result.message, duration)
        if result.ok:
            result = self._check_result(result)
        elif checkpoints.held is not None and on_checkpoint is not None:
            # The run ended without a result: pass on the freshest resume point.
            data = checkpoints.held[0]
            assert isinstance(data, bytes)
            _call(on_checkpoint, data)
        self._stats[skill_name] = self._stats.get(skill_name, SkillStats()).add(result)
        return result

    async def _supervise(
        self, run: _Run, coro: Coroutine[Any, Any, object], timeout: float | None
    ) -> ExecResult:
        # Callbacks and timers only: no watcher task and no asyncio.wait per run, so a
        # trivial skill costs one task and one loop turn.
        loop = asyncio.get_running_loop()
        task: asyncio.Task[object] = loop.create_task(coro)
        run.task = task
        if run.cancel_requested:  # cancelled between registration and start
            task.cancel()
        settled: asyncio.Future[None] = loop.create_future()
        state = {"timed_out": False}

        def settle(*_: object) -> None:
            if not settled.done():
                settled.set_result(None)

        def give_up() -> None:
            # A cancel or timeout is in force: the skill gets ``cancel_grace`` to unwind.
            run.ctx.cancel()
            task.cancel()
            timers.append(loop.call_later(self.config.cancel_grace, settle))

        def on_timeout() -> None:
            if not task.done():
                state["timed_out"] = True
                give_up()

        task.add_done_callback(settle)
        timers: list[asyncio.TimerHandle] = []
        if timeout is not None:
            timers.append(loop.call_later(timeout, on_timeout))
        run.on_cancel = give_up
        try:
            await settled
        except asyncio.CancelledError:
            # The caller (the node shutting down) cancelled us: stop the skill too.
            await self._stop(run, task)
            raise
        finally:
            for timer in timers:
                timer.cancel()
            task.remove_done_callback(settle)
        timed_out = state["timed_out"]
        if not task.done():
            why = f"timed out after {timeout:g} s" if timed_out else "was cancelled"
            return failed(
                "timeout" if timed_out else "cancelled",
                f"skill {run.skill!r} {why} and did not stop within "
                f"{self.config.cancel_grace:g} s; abandoned",
            )
        if task.cancelled():
            return self._cancel_result(run, timed_out, timeout)
        exc = task.exception()
        if exc is None:
            return ok(task.result())
        if isinstance(exc, SkillCancelled | asyncio.CancelledError) or (
            run.cancel_requested or timed_out
        ):
            return self._cancel_result(run, timed_out, timeout)
        if isinstance(exc, SkillError):
            return failed(exc.code, str(exc))
        if isinstance(exc, SkillHandoff):
            return failed(HANDOFF, exc.to or "")
        _log.warning(
            "skill raised",
            skill=run.skill,
            task_id=run.ctx.task_id,
            exc_info=(type(exc), exc, exc.__traceback__),
        )
        return failed("error", _describe(exc))

    def _cancel_result(self, run: _Run, timed_out: bool, timeout: float | None) -> ExecResult:
        if timed_out:
            assert timeout is not None
            return failed("timeout", f"skill {run.skill!r} timed out after {timeout:g} s")
        return failed("cancelled", f"skill {run.skill!r} was cancelled")

    async def _stop(self, run: _Run, task: asyncio.Task[object]) -> None:
        run.ctx.cancel()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait({task}, timeout=self.config.cancel_grace)
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: no "exception never retrieved" warning

    def _check_result(self, result: ExecResult) -> ExecResult:
        try:
            size = len(msgpack.packb(result.result, use_bin_type=True))
        except (TypeError, ValueError, OverflowError) as exc:
            return failed("bad_result", f"result cannot be encoded: {exc}", result.duration)
        if size > self.config.max_result_bytes:
            return failed(
                "bad_result",
                f"result too large: {size} bytes encoded, at most {self.config.max_result_bytes}",
                result.duration,
            )
        return result


def _describe(exc: BaseException) -> str:
    """An exception as its type and text, without a traceback."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _call(fn: Callable[..., None], *args: object) -> None:
    """Call a progress/checkpoint callback; a failing callback is logged, never fatal to
    the skill."""
    try:
        fn(*args)
    except Exception as exc:
        _log.warning("skill callback failed", error=f"{type(exc).__name__}: {exc}")
