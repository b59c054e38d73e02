"""Durable before acknowledged: the group commit of a live node.

The store effects of one event-loop turn (task copies, outbox entries, audit records)
are collected here and written in ONE LMDB transaction at the end of the turn. What the
turn acknowledges (a TASK_ACK, an agent's STARTED, a skill started for an assignment, a
client's answer) is *held* (:meth:`Commit.hold`) and released only once that
transaction is durable:

- a batch with a durable write (the origin's new task, a submit's outbox entry) waits
  for an fsync. The fsync runs in a worker thread, one at a time: while it runs the loop
  keeps taking requests, whose batches then share the next fsync (group commit);
- a batch with no durable write is released as soon as it is committed, even while an
  fsync for earlier batches runs (what it acknowledges is committed already);
- the lead's own copies and audit records (``sync_soon``) hold nothing back but are
  fsync'd within :data:`SYNC_DELAY`;
- a replica's copies (from the lead's updates) are written lazily, within
  :data:`LAZY_WRITE`, never fsync'd.

The store is a port (:class:`BatchStore`); the loop is the running asyncio loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, Final, Protocol

from meshd import log
from meshd.effects import SaveOutbox, StoreCopies
from meshd.wire.messages import TaskReport
from meshd.wire.records import TaskCopy

_log = log.get("meshd.commit")

#: s. Longest a replica's copy waits to be written: replicas need no fsync, and writing
#: them in batches keeps the fsyncs of durable writes cheap.
LAZY_WRITE: Final = 0.5
#: s. Longest the lead's own copies and audit records wait for their fsync (they hold
#: nothing back). Many batches share one fsync.
SYNC_DELAY: Final = 0.05

Action = Callable[[], None]


class BatchStore(Protocol):
    """What the commit needs of the store (:class:`meshd.store.db.Store`)."""

    @property
    def fsync(self) -> bool: ...

    def write_batch(
        self,
        copies: list[TaskCopy],
        outbox: dict[str, TaskReport | bool | None],
        audit: list[dict[str, Any]],
        durable: bool = True,
    ) -> None: ...

    def sync(self) -> None: ...


class _Batch:
    """What one loop turn holds back until it is durable."""

    __slots__ = ("actions", "done")

    def __init__(self) -> None:
        self.actions: list[Action] = []
        self.done: asyncio.Future[None] | None = None

    def release(self) -> None:
        for action in self.actions:
            try:
                action()
            except Exception:
                _log.exception("release_failed")
        if self.done is not None and not self.done.done():
            self.done.set_result(None)


class Commit:
    """The group commit of one node (see the module docstring)."""

    def __init__(self, store: BatchStore) -> None:
        self._store = store
        self._copies: dict[str, TaskCopy] = {}
        self._lazy: dict[str, TaskCopy] = {}
        self._outbox: dict[str, TaskReport | bool | None] = {}
        self._audit: list[dict[str, Any]] = []
        self._durable = False
        self._batch = _Batch()
        self._flush_handle: asyncio.Handle | None = None
        self._lazy_handle: asyncio.TimerHandle | None = None
        self._soon_handle: asyncio.TimerHandle | None = None
        self._unsynced: list[_Batch] = []
        self._syncing = False
        self._needs_sync = False
        self._sync_job: asyncio.Future[None] | None = None
        self._closed = False
        self._closing = False
        #: Transactions committed since the last fsync began (close fsyncs them).
        self._loose = False
        #: Commits done (transactions) and fsyncs asked for: for status and tests.
        self.commits = 0

    # ---- what a turn writes and holds ----------------------------------------------------

    def copies(self, eff: StoreCopies) -> None:
        if eff.sync_soon:
            self._sync_soon()
        if eff.durable or eff.sync_soon:
            self._durable = self._durable or eff.durable
            for copy in eff.copies:
                self._copies[copy.task.task_id] = copy
                self._lazy.pop(copy.task.task_id, None)
        else:
            for copy in eff.copies:
                task_id = copy.task.task_id
                if task_id in self._copies:
                    # Newer than the copy waiting in this turn's batch: it takes its place
                    # there (a lazy write must never land before an older durable one).
                    self._copies[task_id] = copy
                else:
                    self._lazy[task_id] = copy
        self._schedule()

    def outbox(self, eff: SaveOutbox) -> None:
        self._outbox[eff.key] = (eff.report or True) if eff.pending else None
        self._durable = self._durable or (eff.durable and eff.pending)
        self._schedule()

    def audit(self, record: dict[str, Any]) -> None:
        """A durable audit record, written with this turn's batch, fsync'd soon."""
        self._audit.append(record)
        self._sync_soon()
        self._schedule()

    def hold(self, action: Action) -> None:
        """Run ``action`` once everything written so far in this turn is durable."""
        if self._closed:
            action()
            return
        self._batch.actions.append(action)
        self._schedule()

    async def durable(self) -> None:
        """Return once everything written so far is committed (and its held actions ran)."""
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        if self._flush_handle is None:
            if not self._unsynced and not self._syncing:
                return
            # Committed already; wait behind the fsyncs queued or running.
            batch = _Batch()
            batch.done = loop.create_future()
            self._unsynced.append(batch)
            self._sync_next()
            await asyncio.shield(batch.done)
            return
        if self._batch.done is None:
            self._batch.done = loop.create_future()
        await asyncio.shield(self._batch.done)

    # ---- the commit ----------------------------------------------------------------------

    def _schedule(self) -> None:
        if self._closed:
            self.flush(final=True)  # after close: carried out at once, durably
            return
        loop = asyncio.get_running_loop()
        if self._flush_handle is None and (
            self._copies or self._outbox or self._audit or self._batch.actions or self._batch.done
        ):
            self._flush_handle = loop.call_soon(self.flush)
        if self._lazy and self._lazy_handle is None:
            self._lazy_handle = loop.call_later(LAZY_WRITE, self.flush)

    def flush(self, final: bool = False) -> None:
        """Commit the turn's writes (one transaction); release its held actions once they
        are durable (see the module docstring). ``final``: at shutdown, fsync now."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._lazy_handle is not None:
            self._lazy_handle.cancel()
            self._lazy_handle = None
        copies = [*self._lazy.values(), *self._copies.values()]
        self._lazy, self._copies = {}, {}
        outbox, self._outbox = self._outbox, {}
        audit, self._audit = self._audit, []
        durable, self._durable = self._durable, False
        store = self._store
        if copies or outbox or audit:
            synced_now = final and durable
            store.write_batch(copies, outbox, audit, durable=synced_now)
            self.commits += 1
            self._loose = not synced_now
        batch, self._batch = self._batch, _Batch()
        if durable and store.fsync and not final:
            self._unsynced.append(batch)
            self._needs_sync = True
            self._sync_next()
            return
        if batch.done is not None and (self._syncing or self._unsynced):
            # Its held actions acknowledge what is committed already: out now. But whoever
            # waits in durable() waits for everything before, fsyncs in flight included.
            waiter = _Batch()
            waiter.done, batch.done = batch.done, None
            self._unsynced.append(waiter)
            self._sync_next()
        batch.release()

    def _sync_soon(self) -> None:
        """fsync within SYNC_DELAY, holding nothing back."""
        if self._soon_handle is None and self._store.fsync and not self._closed:
            loop = asyncio.get_running_loop()
            self._soon_handle = loop.call_later(SYNC_DELAY, self._soon)

    def _soon(self) -> None:
        self._soon_handle = None
        # Queued behind a sync in flight, if any: that one may predate our writes.
        self._unsynced.append(_Batch())
        self._needs_sync = True
        self._sync_next()

    def _sync_next(self) -> None:
        if self._syncing or not self._unsynced or self._closing:
            return
        batches, self._unsynced = self._unsynced, []
        if not self._needs_sync:  # only batches that waited for their turn: no fsync
            for batch in batches:
                batch.release()
            return
        self._needs_sync = False
        self._syncing = True
        self._loose = False  # this fsync covers every transaction committed before it
        job = asyncio.get_running_loop().run_in_executor(None, self._store.sync)
        self._sync_job = job

        def synced(job: asyncio.Future[None]) -> None:
            self._syncing = False
            if job.cancelled() or job.exception() is not None:
                _log.error("fsync_failed", error=str(job.exception()))
            for batch in batches:
                batch.release()
            self._sync_next()

        job.add_done_callback(synced)

    async def close(self) -> None:
        """Write what is pending and fsync it, release every held action; later writes and
        holds are carried out at once. Never returns while an fsync is running."""
        self._closing = True  # no new fsync in a worker from now on
        if self._soon_handle is not None:
            self._soon_handle.cancel()
            self._soon_handle = None
        # Never return while an fsync runs: the store is closed next.
        while self._syncing and self._sync_job is not None:
            with contextlib.suppress(BaseException):
                await self._sync_job
            await asyncio.sleep(0)  # let its done-callback run (it releases its batches)
        self.flush(final=True)
        if (self._loose or self._needs_sync) and self._store.fsync:
            # Batches queued behind that fsync, and what was only committed (the lead's
            # copies, audit records): durable before their held actions run.
            self._store.sync()
            self._loose = self._needs_sync = False
        for batch in self._unsynced:
            batch.release()
        self._unsynced.clear()
        self._closed = True
