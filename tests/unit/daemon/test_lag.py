"""The loop-lag watchdog: a callback that blocks the loop shows up as a stall."""

from __future__ import annotations

import asyncio
import time

from meshd.clock import SystemClock
from meshd.daemon.lag import LagMonitor


async def wait_samples(monitor: LagMonitor, count: int) -> None:
    for _ in range(200):  # bounded: 200 x 10 ms
        if len(monitor._samples) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"fewer than {count} samples")


async def test_a_blocking_callback_is_counted_as_a_stall() -> None:
    monitor = LagMonitor(SystemClock(), interval=0.01, window=10.0, stall=0.1)
    monitor.start()
    try:
        time.sleep(0.15)  # the point: block the loop past the timer
        await wait_samples(monitor, 3)
    finally:
        monitor.stop()
    figures = monitor.figures()
    assert monitor.stalls >= 1
    assert figures["stalls"] == monitor.stalls
    assert figures["worst_ms"] >= 140.0
    assert figures["lag_ms_max"] >= 140.0
    assert figures["lag_ms_p99"] <= figures["lag_ms_max"]


async def test_stop_ends_the_sampling() -> None:
    monitor = LagMonitor(SystemClock(), interval=0.01)
    monitor.start()
    await wait_samples(monitor, 2)
    monitor.stop()
    held = len(monitor._samples)
    await asyncio.sleep(0.05)
    assert len(monitor._samples) == held
    monitor.stop()  # twice is harmless


def test_figures_before_any_sample_are_zero() -> None:
    assert LagMonitor(SystemClock()).figures() == {
        "lag_ms_max": 0.0,
        "lag_ms_p99": 0.0,
        "stalls": 0,
        "worst_ms": 0.0,
    }
