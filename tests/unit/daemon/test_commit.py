"""The group commit (meshd.daemon.commit) through its BatchStore port only."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from meshd.daemon.commit import LAZY_WRITE, SYNC_DELAY, Commit
from meshd.effects import SaveOutbox, StoreCopies
from meshd.store.db import Store
from meshd.tasks.model import new_task
from meshd.wire.messages import ReportKind, TaskReport
from meshd.wire.records import TaskCopy

ORIGIN = "0" * 31 + "1"
#: s. Bound on every wait for something that must happen (never reached when it does).
PATIENCE = 5.0
#: s. Slack over a promised delay (loop scheduling on a loaded 2-core machine).
SLACK = 0.4


@dataclass
class Written:
    copies: list[TaskCopy]
    outbox: dict[str, TaskReport | bool | None]
    audit: list[dict[str, Any]]
    durable: bool


class FakeStore:
    """A BatchStore that records its calls; ``slow()`` makes each sync wait for a permit
    (``allow``), so a test can hold an fsync "running" as long as it likes."""

    def __init__(self, fsync: bool = True) -> None:
        self._fsync = fsync
        self.written: list[Written] = []
        #: What happened, in order: "write", "sync" (a sync returned) and test marks.
        self.log: list[str] = []
        self.sync_calls = 0
        self.syncs = 0
        self._lock = threading.Lock()
        self._slow = False
        self._permits = threading.Semaphore(0)

    @property
    def fsync(self) -> bool:
        return self._fsync

    def write_batch(
        self,
        copies: list[TaskCopy],
        outbox: dict[str, TaskReport | bool | None],
        audit: list[dict[str, Any]],
        durable: bool = True,
    ) -> None:
        self.written.append(Written(list(copies), dict(outbox), list(audit), durable))
        self.log.append("write")

    def sync(self) -> None:
        with self._lock:
            self.sync_calls += 1
            slow = self._slow
        if slow and not self._permits.acquire(timeout=PATIENCE):
            raise TimeoutError("the test never let this fsync finish")
        with self._lock:
            self.syncs += 1
            self.log.append("sync")

    def slow(self) -> None:
        self._slow = True

    def allow(self, n: int = 1) -> None:
        self._permits.release(n)

    def open_up(self) -> None:
        with self._lock:
            self._slow = False
        self._permits.release(100)


# Async fixtures: torn down inside the test's loop, before it waits for its worker threads.
@pytest.fixture
async def store() -> AsyncIterator[FakeStore]:
    s = FakeStore()
    yield s
    s.open_up()  # never leave a worker thread blocked behind a failed test


@pytest.fixture
async def nosync() -> AsyncIterator[FakeStore]:
    s = FakeStore(fsync=False)
    yield s
    s.open_up()


def copy_of(n: int = 1, term: int = 0, seq: int = 0, message: str = "hi") -> TaskCopy:
    task = new_task("echo", {"message": message}, ORIGIN, 1.0, task_id=f"{n:032x}")
    return TaskCopy(term, seq, task)


def durable_copy(n: int = 1) -> StoreCopies:
    return StoreCopies((copy_of(n),))


def replica_copy(n: int = 1, term: int = 1, seq: int = 1) -> StoreCopies:
    return StoreCopies((copy_of(n, term, seq),), durable=False)


def lead_copy(n: int = 1) -> StoreCopies:
    return StoreCopies((copy_of(n, 1, 1),), durable=False, sync_soon=True)


def mark(log: list[str], name: str) -> Callable[[], None]:
    return lambda: log.append(name)


async def until(cond: Callable[[], bool], timeout: float = PATIENCE) -> float:
    """Poll ``cond`` (every loop turn, then every ms) until true; returns the loop time."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    turns = 0
    while not cond():
        if loop.time() > end:
            raise AssertionError("condition not met in time")
        turns += 1
        await asyncio.sleep(0 if turns < 10 else 0.001)
    return loop.time()


async def turns(n: int = 3) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


# ---- one transaction per loop turn -----------------------------------------------------------


async def test_writes_of_one_turn_go_in_one_write_batch(nosync: FakeStore) -> None:
    commit = Commit(nosync)
    commit.copies(durable_copy(1))
    commit.copies(durable_copy(2))
    commit.outbox(SaveOutbox(f"submit:{1:032x}", pending=True))
    commit.audit({"type": "LEAD_ELECTED"})
    assert nosync.written == []  # nothing is written inside the calls
    await asyncio.sleep(0)
    assert len(nosync.written) == 1
    batch = nosync.written[0]
    assert sorted(c.task.task_id for c in batch.copies) == [f"{1:032x}", f"{2:032x}"]
    assert batch.outbox == {f"submit:{1:032x}": True}
    assert batch.audit == [{"type": "LEAD_ELECTED"}]
    assert commit.commits == 1


async def test_the_next_turn_is_the_next_transaction(nosync: FakeStore) -> None:
    commit = Commit(nosync)
    commit.copies(durable_copy(1))
    await asyncio.sleep(0)
    commit.copies(durable_copy(2))
    await asyncio.sleep(0)
    assert [[c.task.task_id for c in b.copies] for b in nosync.written] == [
        [f"{1:032x}"],
        [f"{2:032x}"],
    ]


async def test_a_task_written_twice_in_a_turn_is_written_once_newest(nosync: FakeStore) -> None:
    commit = Commit(nosync)
    commit.copies(StoreCopies((copy_of(1, 0, 0, "old"),)))
    commit.copies(StoreCopies((copy_of(1, 0, 1, "new"),)))
    await asyncio.sleep(0)
    (batch,) = nosync.written
    assert [(c.seq, c.task.params["message"]) for c in batch.copies] == [(1, "new")]


async def test_outbox_entries_map_to_report_true_or_delete(nosync: FakeStore) -> None:
    commit = Commit(nosync)
    report = TaskReport(f"{2:032x}", 1, ReportKind.COMPLETED, result={"message": "hi"})
    commit.outbox(SaveOutbox("submit:a", pending=True))
    commit.outbox(SaveOutbox("report:b", pending=True, report=report, durable=False))
    commit.outbox(SaveOutbox("report:c", pending=False))
    await asyncio.sleep(0)
    assert nosync.written[0].outbox == {"submit:a": True, "report:b": report, "report:c": None}


# ---- held actions ------------------------------------------------------------------------------


async def test_held_action_runs_only_after_store_sync_returned(store: FakeStore) -> None:
    store.slow()
    commit = Commit(store)
    commit.copies(durable_copy())
    commit.hold(mark(store.log, "ack"))
    await until(lambda: store.sync_calls == 1)
    await turns()
    assert store.log == ["write"]  # the fsync runs: the ack waits
    store.allow()
    await until(lambda: "ack" in store.log)
    assert store.log == ["write", "sync", "ack"]
    assert store.written[0].durable is False  # the commit itself; the fsync follows


async def test_a_durable_outbox_entry_holds_the_ack_too(store: FakeStore) -> None:
    store.slow()
    commit = Commit(store)
    commit.outbox(SaveOutbox("submit:x", pending=True))
    commit.hold(mark(store.log, "ack"))
    await until(lambda: store.sync_calls == 1)
    await turns()
    assert "ack" not in store.log
    store.allow()
    await until(lambda: "ack" in store.log)
    assert store.log == ["write", "sync", "ack"]


async def test_with_fsync_off_held_action_runs_right_after_the_commit(nosync: FakeStore) -> None:
    commit = Commit(nosync)
    commit.copies(durable_copy())
    commit.hold(mark(nosync.log, "ack"))
    assert nosync.log == []  # never inside hold()
    await asyncio.sleep(0)
    assert nosync.log == ["write", "ack"]
    assert nosync.sync_calls == 0


async def test_hold_with_nothing_written_runs_on_the_next_turn(store: FakeStore) -> None:
    commit = Commit(store)
    done: list[str] = []
    commit.hold(mark(done, "ack"))
    assert done == []
    await asyncio.sleep(0)
    assert done == ["ack"]
    assert store.written == []
    assert store.sync_calls == 0


async def test_a_failing_held_action_does_not_stop_the_others(nosync: FakeStore) -> None:
    commit = Commit(nosync)
    done: list[str] = []

    def boom() -> None:
        raise RuntimeError("boom")

    commit.hold(mark(done, "a"))
    commit.hold(boom)
    commit.hold(mark(done, "b"))
    await asyncio.sleep(0)
    assert done == ["a", "b"]


# ---- group commit ---------------------------------------------------------------------------


async def test_batches_arriving_during_an_fsync_share_the_next_one(store: FakeStore) -> None:
    store.slow()
    commit = Commit(store)
    acks: list[str] = []
    commit.copies(durable_copy(1))
    commit.hold(mark(acks, "a"))
    await until(lambda: store.sync_calls == 1)
    for n, name in ((2, "b"), (3, "c"), (4, "d")):  # three turns, one slow fsync running
        commit.copies(durable_copy(n))
        commit.hold(mark(acks, name))
        await asyncio.sleep(0)
    assert len(store.written) == 4
    assert store.sync_calls == 1  # none of them started an fsync of its own
    store.allow()
    await until(lambda: acks == ["a"])
    await until(lambda: store.sync_calls == 2)
    await turns()
    assert acks == ["a"]  # b, c, d wait for the second fsync
    store.allow()
    await until(lambda: len(acks) == 4)
    assert acks == ["a", "b", "c", "d"]
    await turns()
    assert store.sync_calls == 2  # 4 durable batches, 2 fsyncs (not 4)


async def test_a_batch_without_durable_write_skips_the_running_fsync(store: FakeStore) -> None:
    store.slow()
    commit = Commit(store)
    acks: list[str] = []
    commit.copies(durable_copy(1))
    commit.hold(mark(acks, "durable"))
    await until(lambda: store.sync_calls == 1)
    commit.outbox(SaveOutbox("report:x", pending=True, durable=False))  # an outcome
    commit.copies(replica_copy(2))
    commit.hold(mark(acks, "plain"))
    await until(lambda: acks == ["plain"])  # released while the fsync still runs
    assert store.syncs == 0
    assert len(store.written) == 2
    store.allow()
    await until(lambda: acks == ["plain", "durable"])
    assert store.sync_calls == 1


# ---- lazy and sync-soon writes ----------------------------------------------------------------


async def test_replica_copies_are_written_lazily_without_fsync(store: FakeStore) -> None:
    loop = asyncio.get_running_loop()
    commit = Commit(store)
    start = loop.time()
    commit.copies(replica_copy(1))
    await turns()
    assert store.written == []  # not written with the turn
    written_at = await until(lambda: len(store.written) == 1, timeout=LAZY_WRITE + PATIENCE)
    assert written_at - start <= LAZY_WRITE + SLACK
    (batch,) = store.written
    assert [c.task.task_id for c in batch.copies] == [f"{1:032x}"]
    assert batch.durable is False
    await asyncio.sleep(2 * SYNC_DELAY)  # a negative: nothing may fsync it later either
    assert store.sync_calls == 0


async def test_a_durable_copy_replaces_a_pending_replica_copy(nosync: FakeStore) -> None:
    commit = Commit(nosync)
    commit.copies(StoreCopies((copy_of(1, 1, 1, "replica"),), durable=False))
    commit.copies(StoreCopies((copy_of(1, 2, 0, "newer"),)))
    await asyncio.sleep(0)
    (batch,) = nosync.written
    assert [c.task.params["message"] for c in batch.copies] == ["newer"]


async def test_a_later_replica_copy_of_the_same_task_is_not_overwritten(
    nosync: FakeStore,
) -> None:
    commit = Commit(nosync)
    commit.copies(StoreCopies((copy_of(1, 0, 0, "origin"),)))
    commit.copies(StoreCopies((copy_of(1, 3, 7, "from-lead"),), durable=False))
    commit.flush()
    (batch,) = nosync.written
    # the store writes copies in order: the last one of a task is what it keeps
    last = [c for c in batch.copies if c.task.task_id == f"{1:032x}"][-1]
    assert (last.term, last.seq) == (3, 7)


async def test_sync_soon_copies_are_fsynced_within_sync_delay_holding_nothing(
    store: FakeStore,
) -> None:
    loop = asyncio.get_running_loop()
    commit = Commit(store)
    start = loop.time()
    commit.copies(lead_copy(1))
    commit.hold(mark(store.log, "ack"))
    await asyncio.sleep(0)
    assert store.log == ["write", "ack"]  # committed and released in the same turn
    assert store.written[0].durable is False
    synced_at = await until(lambda: store.syncs == 1)
    assert synced_at - start <= SYNC_DELAY + SLACK
    assert store.log == ["write", "ack", "sync"]


async def test_audit_records_are_fsynced_within_sync_delay_holding_nothing(
    store: FakeStore,
) -> None:
    loop = asyncio.get_running_loop()
    commit = Commit(store)
    start = loop.time()
    commit.audit({"type": "LEAD_ELECTED", "at": 1.0})
    commit.hold(mark(store.log, "ack"))
    await asyncio.sleep(0)
    assert store.log == ["write", "ack"]
    assert store.written[0].audit == [{"type": "LEAD_ELECTED", "at": 1.0}]
    synced_at = await until(lambda: store.syncs == 1)
    assert synced_at - start <= SYNC_DELAY + SLACK


async def test_many_sync_soon_writes_share_one_fsync(store: FakeStore) -> None:
    loop = asyncio.get_running_loop()
    commit = Commit(store)
    start = loop.time()
    for n in range(5):
        commit.audit({"type": "X", "n": n})
        await asyncio.sleep(0)
    spread = loop.time() - start  # a few ms; more only on a machine that stalls
    assert len(store.written) == 5
    await until(lambda: store.syncs >= 1)
    await asyncio.sleep(2 * SYNC_DELAY)  # a negative: no further fsync follows
    # one fsync for all five batches (one more per SYNC_DELAY the writes took, if any)
    assert store.sync_calls <= 1 + int(spread // SYNC_DELAY)


async def test_sync_soon_with_fsync_off_never_syncs(nosync: FakeStore) -> None:
    commit = Commit(nosync)
    commit.audit({"type": "X"})
    commit.copies(lead_copy(1))
    await asyncio.sleep(0)
    assert len(nosync.written) == 1
    await asyncio.sleep(2 * SYNC_DELAY)
    assert nosync.sync_calls == 0


# ---- durable() ---------------------------------------------------------------------------------


async def test_durable_with_nothing_written_returns_at_once(store: FakeStore) -> None:
    commit = Commit(store)
    task = asyncio.ensure_future(commit.durable())
    await asyncio.sleep(0)
    assert task.done()
    assert store.sync_calls == 0


async def test_durable_waits_for_the_fsync_of_this_turns_writes(store: FakeStore) -> None:
    store.slow()
    commit = Commit(store)

    async def submit() -> None:  # as a request handler does: write, then await durable()
        commit.copies(durable_copy())
        await commit.durable()

    waiter = asyncio.ensure_future(submit())
    await until(lambda: store.sync_calls == 1)
    await turns()
    assert not waiter.done()
    store.allow()
    await asyncio.wait_for(waiter, PATIENCE)
    assert store.syncs == 1


async def test_durable_after_the_commit_waits_for_the_running_fsync(store: FakeStore) -> None:
    store.slow()
    commit = Commit(store)
    commit.copies(durable_copy())
    await until(lambda: store.sync_calls == 1)  # committed; its fsync runs
    waiter = asyncio.ensure_future(commit.durable())
    await turns()
    assert not waiter.done()
    store.allow()
    await asyncio.wait_for(waiter, PATIENCE)
    assert store.syncs == 1
    await turns()
    assert store.sync_calls == 1  # waiting costs no extra fsync


async def test_durable_returns_once_held_actions_of_its_turn_ran(nosync: FakeStore) -> None:
    commit = Commit(nosync)
    commit.copies(durable_copy())
    commit.hold(mark(nosync.log, "ack"))
    await commit.durable()
    assert nosync.log == ["write", "ack"]


async def test_durable_of_a_plain_batch_returns_at_its_commit(store: FakeStore) -> None:
    commit = Commit(store)
    commit.outbox(SaveOutbox("report:x", pending=True, durable=False))
    commit.hold(mark(store.log, "ack"))
    await commit.durable()
    assert store.log == ["write", "ack"]
    assert store.sync_calls == 0


async def test_durable_waits_for_an_earlier_fsync_behind_a_plain_batch(
    store: FakeStore,
) -> None:
    store.slow()
    commit = Commit(store)
    commit.copies(durable_copy(1))
    commit.hold(mark(store.log, "ack"))
    await until(lambda: store.sync_calls == 1)

    async def request() -> None:  # writes an outcome (no fsync needed), then waits
        commit.outbox(SaveOutbox("report:x", pending=True, durable=False))
        await commit.durable()

    waiter = asyncio.ensure_future(request())
    await turns(5)
    assert "ack" not in store.log  # the earlier batch is not durable yet...
    assert not waiter.done(), "durable() returned before the earlier batch was fsync'd"


# ---- close() -----------------------------------------------------------------------------------


async def test_close_flushes_pending_writes_final_and_releases(store: FakeStore) -> None:
    commit = Commit(store)
    commit.copies(durable_copy(1))
    commit.outbox(SaveOutbox("submit:a", pending=True))
    commit.hold(mark(store.log, "ack"))
    await commit.close()
    assert store.log == ["write", "ack"]
    (batch,) = store.written
    assert batch.durable is True  # the store fsyncs the final transaction itself
    assert batch.outbox == {"submit:a": True}
    assert store.sync_calls == 0


async def test_close_writes_pending_replica_copies(store: FakeStore) -> None:
    commit = Commit(store)
    commit.copies(replica_copy(1))
    await commit.close()
    (batch,) = store.written
    assert [c.task.task_id for c in batch.copies] == [f"{1:032x}"]
    assert batch.durable is False  # nothing durable in it


async def test_close_waits_for_a_running_fsync(store: FakeStore) -> None:
    store.slow()
    commit = Commit(store)
    commit.copies(durable_copy(1))
    commit.hold(mark(store.log, "ack"))
    await until(lambda: store.sync_calls == 1)
    closing = asyncio.ensure_future(commit.close())
    await turns()
    assert not closing.done()
    store.allow()
    await asyncio.wait_for(closing, PATIENCE)
    assert store.log == ["write", "sync", "ack"]


async def test_after_close_holds_run_at_once(store: FakeStore) -> None:
    commit = Commit(store)
    await commit.close()
    done: list[str] = []
    commit.hold(mark(done, "ack"))
    assert done == ["ack"]
    await commit.durable()  # returns at once, too


async def test_close_never_returns_while_an_fsync_runs(store: FakeStore) -> None:
    store.slow()
    commit = Commit(store)
    acks: list[str] = []
    commit.copies(durable_copy(1))
    commit.hold(mark(acks, "a"))
    await until(lambda: store.sync_calls == 1)
    commit.copies(durable_copy(2))  # queued behind the running fsync
    commit.hold(mark(acks, "b"))
    await asyncio.sleep(0)
    closing = asyncio.ensure_future(commit.close())
    await asyncio.sleep(0)
    assert not closing.done()
    store.allow(2)  # the running fsync ends; the batch behind it needs a second one
    await asyncio.wait_for(closing, PATIENCE)
    assert acks == ["a", "b"], "close() returned with a held action not released"
    assert store.sync_calls == store.syncs == 2, "close() returned while an fsync was running"
    await turns()
    assert store.sync_calls == 2, "an fsync started after close()"


async def test_close_fsyncs_sync_soon_writes_already_committed(store: FakeStore) -> None:
    commit = Commit(store)
    commit.audit({"type": "LEAD_ELECTED"})
    await asyncio.sleep(0)  # committed, fsync due within SYNC_DELAY
    assert store.syncs == 0
    await commit.close()
    assert store.syncs == 1 or any(b.durable for b in store.written[1:])


async def test_writes_after_close_are_carried_out(store: FakeStore) -> None:
    commit = Commit(store)
    await commit.close()
    commit.copies(durable_copy(1))
    await turns()
    assert len(store.written) == 1


# ---- with the real store --------------------------------------------------------------------


async def test_with_the_real_store_an_ack_follows_its_fsync(tmp_path: Path) -> None:
    db = Store(tmp_path, map_size=8 << 20, fsync=True)
    try:
        commit = Commit(db)
        seen: list[int] = []
        commit.copies(durable_copy(1))
        commit.outbox(SaveOutbox(f"submit:{1:032x}", pending=True))
        commit.hold(lambda: seen.append(db.syncs))
        await commit.durable()
        assert seen == [1]  # released after exactly one fsync
        copies, submits, _reports = db.load_tasks()
        assert [c.task.task_id for c in copies] == [f"{1:032x}"]
        assert submits == [f"{1:032x}"]
        await commit.close()
    finally:
        db.close()
