"""Clocks. Logic never reads the time itself: it is handed ``now`` or a ``Clock``.

``monotonic()`` drives every timeout and timer; ``wall()`` is only for human-facing
timestamps (``last_seen`` in status, log lines, message timestamps).
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds from an arbitrary origin; never goes backwards."""
        ...

    def wall(self) -> float:
        """Seconds since the Unix epoch; for display and logs only."""
        ...


class SystemClock:
    """The real clock."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()


class FakeClock:
    """A clock tests move by hand. ``wall`` keeps a fixed offset from ``monotonic``."""

    def __init__(self, start: float = 1000.0, wall_offset: float = 1_700_000_000.0) -> None:
        self._now = start
        self._wall_offset = wall_offset

    def monotonic(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._now + self._wall_offset

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock cannot go backwards")
        self._now += seconds

    def set(self, now: float) -> None:
        if now < self._now:
            raise ValueError("a clock cannot go backwards")
        self._now = now


# The process's clocks, for the shell (CLI, client, transport) where no Clock is passed
# around: the one place that reads them.


def monotonic() -> float:
    """Seconds from an arbitrary origin; never goes backwards (timeouts, deadlines)."""
    return time.monotonic()


def wall() -> float:
    """Seconds since the Unix epoch (what users read; event cursors)."""
    return time.time()


def precise() -> float:
    """A high-resolution monotonic reading, for measuring short durations (round trips)."""
    return time.perf_counter()
