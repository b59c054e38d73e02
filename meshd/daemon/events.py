"""The event log of a live node: recent history, long-poll waiters, and the audit sink.

Everything a subscriber may see goes through :meth:`EventLog.append`: membership
(AGENT_JOINED, AGENT_FAILED...), the election (LEAD_ELECTED...), delegation
(TASK_COMPLETED...), skill packs (SKILL_INSTALLED...) and admission refusals. Every
append wakes the ``events`` long-polls at once (``meshctl events``,
:meth:`meshd.client.Client.listen`), whatever its kind.

Each record is a JSON-ready dict with ``type``, ``at`` (wall seconds) and ``node`` (the
node that made it, unless the fields name another). ``at`` is strictly increasing within
one log, even when the wall clock steps back or two events share a clock reading, so a
subscriber's cursor (``since``: the ``at`` of the newest event it saw) never skips one.

Records marked ``audit`` also go to the audit sink (:meth:`meshd.daemon.commit.Commit.audit`:
committed with the batch of the loop turn that made them).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Hashable, Mapping
from typing import Any, Final

from meshd.clock import Clock

#: events. How many recent events the node keeps in memory for the ``events`` op.
EVENT_HISTORY: Final = 1000
#: s. Least step between two events' ``at`` (keeps them strictly increasing).
TICK: Final = 1e-6

AuditSink = Callable[[dict[str, Any]], None]


class Waiters:
    """Futures grouped by key (a task id, or None for "any event"), woken together.

    :meth:`wait` returns when :meth:`wake` is called for its key, or after ``timeout``
    seconds, whichever comes first; it never raises on timeout (callers re-check).
    """

    def __init__(self) -> None:
        self._waiting: dict[Hashable, list[asyncio.Future[None]]] = {}

    def __len__(self) -> int:
        return sum(len(v) for v in self._waiting.values())

    def future(self, key: Hashable) -> asyncio.Future[None]:
        """A future set by the next :meth:`wake` of ``key`` (:meth:`discard` it after)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, []).append(fut)
        return fut

    def discard(self, key: Hashable, fut: asyncio.Future[None]) -> None:
        bucket = self._waiting.get(key, [])
        if fut in bucket:
            bucket.remove(fut)
        if not bucket:
            self._waiting.pop(key, None)

    async def wait(self, key: Hashable, timeout: float) -> None:
        if timeout <= 0:
            return
        fut = self.future(key)

        def expire() -> None:
            if not fut.done():
                fut.set_result(None)

        timer = asyncio.get_running_loop().call_later(timeout, expire)
        try:
            await fut
        finally:
            timer.cancel()
            self.discard(key, fut)

    def wake(self, key: Hashable) -> None:
        for fut in self._waiting.pop(key, ()):
            if not fut.done():
                fut.set_result(None)

    def wake_all(self) -> None:
        for key in list(self._waiting):
            self.wake(key)


class EventLog:
    """Recent events of one node (see the module docstring)."""

    def __init__(
        self,
        clock: Clock,
        node_id: str,
        audit: AuditSink | None = None,
        history: int = EVENT_HISTORY,
    ) -> None:
        self._clock = clock
        self._node_id = node_id
        self._audit = audit
        self._events: deque[dict[str, Any]] = deque(maxlen=history)
        self._last_at = 0.0
        self._waiters = Waiters()
        self._closed = False
        #: Called with every record appended (after the waiters are woken).
        self.listeners: list[Callable[[dict[str, Any]], None]] = []

    def __len__(self) -> int:
        return len(self._events)

    def set_audit(self, audit: AuditSink) -> None:
        self._audit = audit

    def append(
        self, kind: str, fields: Mapping[str, Any] | None = None, *, audit: bool = False
    ) -> dict[str, Any]:
        """Record one event (``fields`` must not hold ``type`` or ``at``); returns it."""
        at = max(self._clock.wall(), self._last_at + TICK)
        self._last_at = at
        record: dict[str, Any] = {"type": kind, "node": self._node_id}
        if fields:
            record.update(fields)
        record["type"], record["at"] = kind, at  # never taken from ``fields``
        self._events.append(record)
        if audit and self._audit is not None:
            self._audit(record)
        self._waiters.wake(None)
        for listener in self.listeners:
            listener(record)
        return record

    def since(self, at: float) -> list[dict[str, Any]]:
        """Events newer than ``at``, oldest first."""
        out = []
        for record in reversed(self._events):
            if record["at"] <= at:
                break
            out.append(record)
        out.reverse()
        return out

    def newest_at(self) -> float:
        return self._events[-1]["at"] if self._events else 0.0

    async def wait(self, since: float, timeout: float) -> list[dict[str, Any]]:
        """Events newer than ``since``, waiting up to ``timeout`` s for the first one (an
        empty list: none came, or the log closed). The timeout runs on the event loop's
        timer; an append that is not newer than ``since`` (a cursor from another clock)
        wakes the wait, which then waits on."""
        if self.newest_at() > since or self._closed or timeout <= 0:
            return self.since(since)
        loop = asyncio.get_running_loop()
        expired: asyncio.Future[None] = loop.create_future()

        def expire() -> None:
            if not expired.done():
                expired.set_result(None)

        timer = loop.call_later(timeout, expire)
        try:
            while self.newest_at() <= since and not self._closed and not expired.done():
                woken = self._waiters.future(None)
                try:
                    await asyncio.wait((woken, expired), return_when=asyncio.FIRST_COMPLETED)
                finally:
                    self._waiters.discard(None, woken)
        finally:
            timer.cancel()
        return self.since(since)

    def close(self) -> None:
        """End every waiting long-poll, and every later one at once (shutdown)."""
        self._closed = True
        self._waiters.wake_all()
