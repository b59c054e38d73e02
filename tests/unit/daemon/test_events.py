"""The event log and long-poll waiters (meshd.daemon.events)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

import pytest

from meshd.clock import FakeClock, SystemClock
from meshd.daemon.events import TICK, EventLog, Waiters

NODE = "ab" * 16
#: Loop turns a woken waiter may take to return (a wake is a future's callback away).
TURNS = 10


class StubClock:
    """A clock whose wall time a test sets freely (even backwards); monotonic stands
    still unless moved."""

    def __init__(self, wall: float = 1_700_000_000.0) -> None:
        self.wall_now = wall
        self.mono_now = 100.0

    def monotonic(self) -> float:
        return self.mono_now

    def wall(self) -> float:
        return self.wall_now


async def within_turns(cond: Callable[[], bool], n: int = TURNS) -> bool:
    """True once ``cond`` holds, giving the loop at most ``n`` turns (no wall time)."""
    for _ in range(n):
        if cond():
            return True
        await asyncio.sleep(0)
    return cond()


async def cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# ---- at, since, history ----------------------------------------------------------------------


def test_record_has_type_node_fields_and_wall_at() -> None:
    clock = StubClock(wall=1_700_000_123.5)
    log = EventLog(clock, NODE)
    rec = log.append("AGENT_JOINED", {"peer": "p1"})
    assert rec == {"type": "AGENT_JOINED", "node": NODE, "peer": "p1", "at": 1_700_000_123.5}
    assert log.since(0.0) == [rec]
    assert log.newest_at() == rec["at"]


def test_fields_may_name_another_node() -> None:
    log = EventLog(StubClock(), NODE)
    rec = log.append("AGENT_FAILED", {"node": "cd" * 16})
    assert rec["node"] == "cd" * 16


def test_at_strictly_increases_when_the_clock_stands_still() -> None:
    log = EventLog(StubClock(), NODE)
    ats = [log.append("X")["at"] for _ in range(100)]
    assert all(b > a for a, b in itertools.pairwise(ats))
    assert ats[1] - ats[0] == pytest.approx(TICK, rel=0.5)


def test_at_strictly_increases_when_the_clock_goes_back() -> None:
    clock = StubClock()
    log = EventLog(clock, NODE)
    first = log.append("X")["at"]
    clock.wall_now -= 3600.0  # NTP stepped the wall clock back an hour
    second = log.append("X")["at"]
    third = log.append("X")["at"]
    assert first < second < third
    assert log.since(first) == log.since(0.0)[1:]


def test_at_follows_the_clock_when_it_moves_on() -> None:
    clock = StubClock()
    log = EventLog(clock, NODE)
    log.append("X")
    clock.wall_now += 10.0
    assert log.append("X")["at"] == clock.wall_now


def test_since_returns_exactly_the_newer_events_in_order() -> None:
    clock = FakeClock()
    log = EventLog(clock, NODE)
    recs = []
    for i in range(6):
        recs.append(log.append("X", {"i": i}))
        clock.advance(1.0)
    assert log.since(recs[2]["at"]) == recs[3:]
    assert log.since(recs[-1]["at"]) == []
    assert log.since(0.0) == recs
    assert log.since(recs[2]["at"] - TICK / 2) == recs[2:]


def test_history_is_bounded_oldest_dropped() -> None:
    log = EventLog(StubClock(), NODE, history=3)
    recs = [log.append("X", {"i": i}) for i in range(5)]
    assert len(log) == 3
    assert log.since(0.0) == recs[2:]


def test_an_empty_log_has_newest_at_zero() -> None:
    log = EventLog(StubClock(), NODE)
    assert log.newest_at() == 0.0
    assert log.since(0.0) == []


# ---- audit sink and listeners ----------------------------------------------------------------


def test_audit_records_reach_the_sink_others_do_not() -> None:
    sink: list[dict[str, Any]] = []
    log = EventLog(StubClock(), NODE, audit=sink.append)
    plain = log.append("AGENT_JOINED", {"peer": "p"})
    audited = log.append("LEAD_ELECTED", {"term": 3}, audit=True)
    assert sink == [audited]
    assert plain not in sink
    assert len(log) == 2  # both are events


def test_set_audit_replaces_the_sink() -> None:
    first: list[dict[str, Any]] = []
    second: list[dict[str, Any]] = []
    log = EventLog(StubClock(), NODE, audit=first.append)
    log.append("A", audit=True)
    log.set_audit(second.append)
    rec = log.append("B", audit=True)
    assert [r["type"] for r in first] == ["A"]
    assert second == [rec]


def test_audit_without_a_sink_is_just_an_event() -> None:
    log = EventLog(StubClock(), NODE)
    rec = log.append("A", audit=True)
    assert log.since(0.0) == [rec]


def test_listeners_see_every_record() -> None:
    log = EventLog(StubClock(), NODE)
    seen: list[dict[str, Any]] = []
    log.listeners.append(seen.append)
    recs = [log.append("A"), log.append("B", audit=True)]
    assert seen == recs


# ---- wait (the events long-poll) ----------------------------------------------------------------


async def test_wait_returns_at_once_when_a_newer_event_exists() -> None:
    log = EventLog(StubClock(), NODE)
    old = log.append("A")
    new = log.append("B")
    waiter = asyncio.ensure_future(log.wait(old["at"], timeout=60.0))
    assert await within_turns(waiter.done, 2)
    assert waiter.result() == [new]


@pytest.mark.parametrize(
    "kind",
    ["AGENT_FAILED", "LEAD_ELECTED", "TASK_COMPLETED", "SKILL_INSTALLED", "ADMISSION_REFUSED"],
)
async def test_every_kind_wakes_a_waiting_long_poll(kind: str) -> None:
    # The clock stands still: the wait could only end by being woken.
    log = EventLog(StubClock(), NODE)
    log.append("OLD")
    waiter = asyncio.ensure_future(log.wait(log.newest_at(), timeout=60.0))
    parked = asyncio.Event()

    async def appender() -> None:
        await parked.wait()
        log.append(kind, {"why": "test"}, audit=kind == "ADMISSION_REFUSED")

    other = asyncio.ensure_future(appender())
    await asyncio.sleep(0)  # the waiter runs and parks
    assert not waiter.done()
    parked.set()
    assert await within_turns(waiter.done)
    assert [r["type"] for r in waiter.result()] == [kind]
    await other


async def test_wait_returns_every_event_newer_than_since() -> None:
    log = EventLog(StubClock(), NODE)
    since = log.append("OLD")["at"]
    waiter = asyncio.ensure_future(log.wait(since, timeout=60.0))
    await asyncio.sleep(0)
    a = log.append("A")
    b = log.append("B")  # same turn: both come back
    assert await within_turns(waiter.done)
    assert waiter.result() == [a, b]


async def test_wait_returns_empty_after_the_timeout() -> None:
    loop = asyncio.get_running_loop()
    log = EventLog(SystemClock(), NODE)
    since = log.append("OLD")["at"]
    start = loop.time()
    assert await asyncio.wait_for(log.wait(since, timeout=0.05), 5.0) == []
    assert loop.time() - start >= 0.04


async def test_wait_with_zero_timeout_does_not_wait() -> None:
    log = EventLog(StubClock(), NODE)
    since = log.append("OLD")["at"]
    waiter = asyncio.ensure_future(log.wait(since, timeout=0.0))
    assert await within_turns(waiter.done, 2)
    assert waiter.result() == []


async def test_an_older_event_does_not_end_a_wait_for_newer_ones() -> None:
    clock = StubClock()
    log = EventLog(clock, NODE)
    log.append("A")
    # a cursor from the future (another node's clock): nothing here is newer yet
    waiter = asyncio.ensure_future(log.wait(log.newest_at() + 100.0, timeout=60.0))
    await asyncio.sleep(0)
    log.append("B")
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert not waiter.done()  # woken, re-checked, waits on
    await cancel(waiter)


async def test_close_ends_waiting_long_polls() -> None:
    log = EventLog(StubClock(), NODE)
    since = log.append("A")["at"]
    waiter = asyncio.ensure_future(log.wait(since, timeout=60.0))
    await asyncio.sleep(0)
    log.close()
    try:
        assert await within_turns(waiter.done), "the long-poll is still waiting after close()"
        assert waiter.result() == []
    finally:
        if not waiter.done():
            await cancel(waiter)


# ---- Waiters -----------------------------------------------------------------------------------


async def test_waiters_wake_only_their_key() -> None:
    waiters = Waiters()
    t1 = asyncio.ensure_future(waiters.wait("t1", 60.0))
    t1b = asyncio.ensure_future(waiters.wait("t1", 60.0))
    t2 = asyncio.ensure_future(waiters.wait("t2", 60.0))
    await asyncio.sleep(0)
    assert len(waiters) == 3
    waiters.wake("t1")
    assert await within_turns(lambda: t1.done() and t1b.done())
    assert not t2.done()
    assert len(waiters) == 1
    waiters.wake("t2")
    assert await within_turns(t2.done)
    assert len(waiters) == 0


async def test_waiters_wake_all_wakes_every_key() -> None:
    waiters = Waiters()
    tasks = [asyncio.ensure_future(waiters.wait(key, 60.0)) for key in ("a", "b", None)]
    await asyncio.sleep(0)
    waiters.wake_all()
    assert await within_turns(lambda: all(t.done() for t in tasks))
    assert len(waiters) == 0


async def test_waiters_return_after_the_timeout_and_forget_the_waiter() -> None:
    waiters = Waiters()
    await asyncio.wait_for(waiters.wait("k", 0.01), 5.0)
    assert len(waiters) == 0


async def test_waiters_with_no_timeout_return_without_registering() -> None:
    waiters = Waiters()
    waiter = asyncio.ensure_future(waiters.wait("k", 0.0))
    await asyncio.sleep(0)
    assert waiter.done()
    assert len(waiters) == 0


async def test_a_cancelled_waiter_is_forgotten() -> None:
    waiters = Waiters()
    waiter = asyncio.ensure_future(waiters.wait("k", 60.0))
    await asyncio.sleep(0)
    assert len(waiters) == 1
    await cancel(waiter)
    assert len(waiters) == 0
    waiters.wake("k")  # nothing left to wake; no error


async def test_waking_a_key_nobody_waits_on_is_harmless() -> None:
    waiters = Waiters()
    waiters.wake("nobody")
    waiters.wake_all()
    assert len(waiters) == 0


async def test_a_waiter_added_after_a_wake_waits_for_the_next_one() -> None:
    waiters = Waiters()
    first = asyncio.ensure_future(waiters.wait("k", 60.0))
    await asyncio.sleep(0)
    waiters.wake("k")
    second = asyncio.ensure_future(waiters.wait("k", 60.0))
    assert await within_turns(first.done)
    assert not second.done()
    assert len(waiters) == 1
    waiters.wake("k")
    assert await within_turns(second.done)
