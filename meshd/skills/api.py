"""What a running skill sees: its :class:`SkillContext`, and the :class:`Skill` protocol.

The executor builds one context per run. The skill reads its validated ``params`` and,
when the task was reassigned, the ``checkpoint_data`` its previous run left; it reports
``progress`` and saves ``checkpoint`` data as it goes, and watches ``cancelled`` (or
awaits :meth:`SkillContext.sleep` / :meth:`SkillContext.wait_cancelled`) so that a cancel
or a timeout stops it promptly. The sandboxed runner for packs (issue 5) will hand the
same calls across a pipe to ``meshd.skill`` in the child process.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import NoReturn, Protocol, runtime_checkable

from meshd.clock import Clock, SystemClock
from meshd.skills.spec import SkillSpec

#: Called with (pct 0..100, message) for every progress report.
ProgressFn = Callable[[float, str], None]
#: Called with the skill's opaque checkpoint data.
CheckpointFn = Callable[[bytes], None]


class SkillHandoff(Exception):
    """Raised by :meth:`SkillContext.handoff`: the skill asks that the task move, with
    its last checkpoint, to another agent (``to``: a node id or name; None: the best)."""

    def __init__(self, to: str | None = None) -> None:
        super().__init__(to or "")
        self.to = to


class SkillCancelled(Exception):
    """Raised by a skill (or :meth:`SkillContext.raise_if_cancelled`) when it stops
    because it was cancelled; the executor reports ``cancelled`` (or ``timeout``)."""


def _ignore_progress(pct: float, message: str) -> None:
    return None


def _ignore_checkpoint(data: bytes) -> None:
    return None


class SkillContext:
    """One run's view of the world. Built by the executor; tests build their own."""

    def __init__(
        self,
        params: Mapping[str, object],
        *,
        checkpoint_data: bytes | None = None,
        on_progress: ProgressFn | None = None,
        on_checkpoint: CheckpointFn | None = None,
        clock: Clock | None = None,
        task_id: str = "",
    ) -> None:
        self._params = MappingProxyType(dict(params))
        self._checkpoint_data = checkpoint_data
        self._on_progress = on_progress or _ignore_progress
        self._on_checkpoint = on_checkpoint or _ignore_checkpoint
        self._clock: Clock = clock or SystemClock()
        self._cancel = asyncio.Event()
        self.task_id = task_id

    @property
    def params(self) -> Mapping[str, object]:
        """The validated parameters (read-only)."""
        return self._params

    @property
    def checkpoint_data(self) -> bytes | None:
        """The last checkpoint of an earlier run of this task (after a reassignment or a
        handoff), or None on a first run."""
        return self._checkpoint_data

    def progress(self, pct: float, message: str = "") -> None:
        """Report progress: ``pct`` is clamped to 0..100 (NaN counts as 0). The executor
        may drop reports that come faster than its configured minimum interval."""
        value = 0.0 if math.isnan(pct) else min(100.0, max(0.0, float(pct)))
        self._on_progress(value, str(message))

    def checkpoint(self, data: bytes | bytearray) -> None:
        """Save opaque resume data: a later run of this task after a reassignment gets
        it back as :attr:`checkpoint_data`."""
        if not isinstance(data, bytes | bytearray):
            raise TypeError(f"checkpoint data must be bytes, not {type(data).__name__}")
        self._checkpoint_data = bytes(data)
        self._on_checkpoint(bytes(data))

    def handoff(self, to: str | None = None) -> NoReturn:
        """Stop here and hand the task to another agent (``to``, or the best other one),
        which resumes it from the last :meth:`checkpoint`. Save one first."""
        raise SkillHandoff(to)

    @property
    def cancelled(self) -> bool:
        """True once the run was cancelled or timed out."""
        return self._cancel.is_set()

    def cancel(self) -> None:
        """Mark the run cancelled (the executor calls this)."""
        self._cancel.set()

    def raise_if_cancelled(self) -> None:
        """Raise :class:`SkillCancelled` if the run was cancelled."""
        if self._cancel.is_set():
            raise SkillCancelled("cancelled")

    async def wait_cancelled(self) -> None:
        """Return once the run is cancelled."""
        await self._cancel.wait()

    async def sleep(self, seconds: float) -> bool:
        """Sleep up to ``seconds`` of real time; return early when cancelled. True if
        the whole time passed, False if cancelled."""
        if self._cancel.is_set():
            return False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._cancel.wait(), timeout=max(0.0, seconds))
        return not self._cancel.is_set()

    def now(self) -> float:
        """Monotonic seconds from the injected clock."""
        return self._clock.monotonic()


@runtime_checkable
class Skill(Protocol):
    """A runnable skill: its :class:`SkillSpec` and an async ``run`` returning a
    msgpack-encodable result. It raises :class:`~meshd.skills.spec.SkillError` (with its
    own ``code``) for a failure it understands, :class:`SkillCancelled` when it stops on a
    cancel; any other exception is reported as ``error`` with its type and text."""

    @property
    def spec(self) -> SkillSpec: ...

    async def run(self, ctx: SkillContext) -> object: ...
