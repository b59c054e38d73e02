"""How late the event loop runs: a watchdog of loop lag.

Every protocol timer of a node (heartbeats, the lead's lease, failure detection) assumes
the loop runs a callback within milliseconds of its time. On a loaded host, or when one
callback takes long (a big sync, a slow disk), it does not, and the lead can lose its lease
with nothing wrong on the network. :class:`LagMonitor` measures it: a timer every
``interval`` seconds notes how late it fired. The figures (the worst and the 99th
percentile over the last ``window`` seconds, and the stalls over ``stall`` seconds) go to
``meshctl status`` / ``/metrics``; every stall is logged with its length, so a slow
callback shows up in the log next to what it delayed.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Final

from meshd import log
from meshd.clock import Clock

_log = log.get("meshd.lag")

#: s. How often the loop is sampled.
INTERVAL: Final = 0.1
#: s. The figures cover this much recent time.
WINDOW: Final = 60.0
#: s. A sample this late counts (and is logged) as a stall: a quarter of the lead's lease.
STALL: Final = 0.1


class LagMonitor:
    """Loop-lag samples of one daemon (see the module docstring)."""

    def __init__(
        self, clock: Clock, interval: float = INTERVAL, window: float = WINDOW, stall: float = STALL
    ) -> None:
        self._clock = clock
        self._interval = interval
        self._stall = stall
        self._samples: deque[tuple[float, float]] = deque(maxlen=max(1, int(window / interval)))
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0
        self.stalls = 0
        self.worst = 0.0

    def start(self) -> None:
        self._arm()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _arm(self) -> None:
        self._due = self._clock.monotonic() + self._interval
        self._handle = asyncio.get_running_loop().call_later(self._interval, self._tick)

    def _tick(self) -> None:
        now = self._clock.monotonic()
        lag = max(0.0, now - self._due)
        self._samples.append((now, lag))
        self.worst = max(self.worst, lag)
        if lag >= self._stall:
            self.stalls += 1
            _log.warning("loop_stall", late_ms=round(lag * 1000, 1))
        self._arm()

    def figures(self) -> dict[str, Any]:
        """``{"lag_ms_max", "lag_ms_p99", "stalls", "worst_ms"}``: the recent worst and 99th
        percentile lag, stalls since start, and the worst lag since start."""
        lags = sorted(lag for _, lag in self._samples)
        p99 = lags[min(len(lags) - 1, int(0.99 * len(lags)))] if lags else 0.0
        return {
            "lag_ms_max": round((lags[-1] if lags else 0.0) * 1000, 1),
            "lag_ms_p99": round(p99 * 1000, 1),
            "stalls": self.stalls,
            "worst_ms": round(self.worst * 1000, 1),
        }
