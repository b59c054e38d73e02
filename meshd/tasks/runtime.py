"""Delegation on a live node: carries out the :class:`TaskMachine`'s effects.

The I/O edge of :mod:`meshd.tasks`, owned by :class:`meshd.node.Node`:

- **group commit**: effects of one event-loop batch are collected; store writes (task
  copies, outbox, audit) are committed in one LMDB transaction (one fsync), and only
  then are the batch's acknowledgements sent, its skills started and its clients
  answered, so nothing is acknowledged before it is durable. Other messages leave at
  once (see :func:`_is_ack`);
- the local skill runner (:class:`~meshd.skills.executor.Executor`), whose progress,
  checkpoints and outcome go back into the machine;
- the control operations behind ``meshctl delegate`` / ``task ...`` and
  :class:`meshd.client.TaskHandle`, with long-polls for progress and events.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from meshd import log
from meshd.effects import (
    CancelSkill,
    Emit,
    OpDone,
    Publish,
    RunSkill,
    SaveOutbox,
    Send,
    StoreCopies,
)
from meshd.errors import ControlError
from meshd.roles import load_roles
from meshd.skills.builtin import Registry, default_registry
from meshd.skills.executor import HANDOFF, ExecResult, Executor, ExecutorConfig, SkillStats
from meshd.skills.spec import SkillError, validate_params
from meshd.tasks.machine import CHUNK, Member, TaskEffect, TaskMachine
from meshd.tasks.model import TaskError, new_task
from meshd.wire import codec
from meshd.wire.messages import (
    PAYLOAD_TYPES,
    ReportKind,
    TaskAck,
    TaskOpKind,
    TaskReport,
    TaskUpdate,
)
from meshd.wire.records import Requirement, Task, TaskCopy, TaskState, is_terminal

if TYPE_CHECKING:
    from meshd.node import Node

_log = log.get("meshd.tasks")

#: s. Longest a control long-poll (task_watch, events) may wait.
MAX_WAIT = 30.0
#: s. Longest a replica's copy (from the lead's updates) waits to be written: replicas
#: need no fsync, and writing them in batches keeps the fsyncs of durable writes cheap.
LAZY_WRITE = 0.5
#: s. Longest the lead's own copies and audit records wait for their fsync (they hold
#: nothing back; see StoreCopies.sync_soon). Many batches share one fsync.
SYNC_DELAY = 0.05
#: Most tasks in one ``delegate_many`` call (one control frame, one transaction).
MAX_BATCH = 1000
#: s. How long a relayed operator command waits for the lead's answer.
OP_TIMEOUT = 5.0


def task_to_dict(
    task: Task, version: tuple[int, int] | None, names: Callable[[str], str]
) -> dict[str, Any]:
    """A task as ``meshctl``/the client show it (JSON-ready)."""
    req = task.requirement
    return {
        "id": task.task_id,
        "skill": task.skill,
        "params": task.params,
        "state": task.state.value,
        "terminal": is_terminal(task),
        "origin": task.origin,
        "origin_name": names(task.origin),
        "requirement": {"role": req.role, "capability": req.capability, "node": req.node},
        "priority": task.priority,
        "timeout_s": task.timeout_s,
        "deadline": task.deadline,
        "idempotent": task.idempotent,
        "verify": task.verify,
        "parent": task.parent,
        "depends_on": list(task.depends_on),
        "retry_count": task.retry_count,
        "retry_limit": task.retry_limit,
        "progress": {"pct": task.progress.pct, "message": task.progress.message},
        "has_checkpoint": task.checkpoint is not None,
        "result": task.result,
        "error": None
        if task.error is None
        else {"code": task.error.code, "message": task.error.message},
        "assigned_to": task.assigned_to,
        "assigned_name": names(task.assigned_to) if task.assigned_to else None,
        "attempt": task.attempt,
        "term": task.assignment.term if task.assignment else None,
        "created_at": task.created_at,
        "updated_at": task.updated_at,
        "history": [
            {"state": h.state.value, "at": h.at, "actor": h.actor, "reason": h.reason}
            for h in task.history
        ],
        "version": list(version) if version else None,
    }


def _is_ack(payload: object) -> bool:
    """Acknowledgements promise durability: they leave only after the batch's commit
    (TASK_ACK, and STARTED, the agent's acknowledgement of an assignment). Everything
    else may go at once: a copy or an outcome sent before it is durable here is still
    held by its sender (an unacknowledged submit or report is resent), so a crash in
    between loses nothing."""
    if isinstance(payload, TaskAck):
        return True
    return isinstance(payload, TaskReport) and payload.kind is ReportKind.STARTED


class TaskRuntime:
    """Delegation for one :class:`~meshd.node.Node` (see the module docstring)."""

    def __init__(self, node: Node, registry: Registry | None = None) -> None:
        self.node = node
        self.registry = registry if registry is not None else default_registry()
        role = node.role
        roles = load_roles()
        self.roles = roles
        limit = role.limits.max_concurrent_tasks
        self.executor = Executor(
            self.registry,
            config=ExecutorConfig(max_concurrent=max(1, limit)),
            clock=node.clock,
        )

        def role_defaults(name: str) -> tuple[tuple[str, ...], int]:
            r = roles.get(name)
            return (r.capabilities, r.limits.max_concurrent_tasks) if r else ((), 2)

        self.machine = TaskMachine(
            node.identity.node_id,
            node.cfg.tasks,
            skills=self._runnable,
            role_defaults=role_defaults,
            max_concurrent=limit,
            capabilities=role.capabilities,
            verifier=self._verify,
            needs_approval=self._needs_approval,
        )
        self._copies: dict[str, TaskCopy] = {}
        self._outbox: dict[str, TaskReport | bool | None] = {}
        self._audit: list[dict[str, Any]] = []
        #: Replica copies: written with the next batch or within LAZY_WRITE s, unsynced.
        self._lazy: dict[str, TaskCopy] = {}
        self._lazy_handle: asyncio.TimerHandle | None = None
        self._task_waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._event_waiters: list[asyncio.Future[None]] = []
        self._durable = False
        self._pub: list[TaskCopy] = []
        self._pub_hi = 0
        self._syncing = False
        self._needs_sync = False
        self._soon_handle: asyncio.TimerHandle | None = None
        self._sync_job: asyncio.Future[None] | None = None
        self._unsynced: list[
            tuple[list[Send | Publish], list[RunSkill], asyncio.Future[None] | None]
        ] = []
        self._sends: list[Send | Publish] = []
        self._runs: list[RunSkill] = []
        self._flush_handle: asyncio.Handle | None = None
        self._flushed: asyncio.Future[None] | None = None
        self._event_seq = 0
        self._ops: dict[tuple[str, str], asyncio.Future[OpDone]] = {}
        self._skill_tasks: dict[str, asyncio.Task[None]] = {}
        self._lead: tuple[str | None, int] = (None, 0)
        self._revoked_runs: set[str] = set()
        self._last_ckpt: dict[str, bytes] = {}
        self.frames_in = 0
        self.completed_here = 0
        self.failed_here = 0

    # ---- life cycle --------------------------------------------------------------------

    async def drain(self, grace: float) -> dict[str, int]:
        """Graceful shutdown, first half: take no more tasks, let the running ones finish
        for up to ``grace`` s, then hand back the idempotent ones (with their last
        checkpoint: another agent resumes them) and report the others lost (the lead
        fails them ``agent_lost``; an operator may retry them). Returns counts."""
        if self.machine.draining:
            return {"finished": 0, "handed_back": 0, "lost": 0}
        now = self.node.clock.wall()
        self.apply(self.machine.drain(now))
        running = dict(self.machine.running_here())
        loop = asyncio.get_running_loop()
        end = loop.time() + max(0.0, grace)
        while self.machine.running_here() and loop.time() < end:
            await asyncio.sleep(min(0.05, max(0.0, end - loop.time())))
        left = self.machine.running_here()
        handed = lost = 0
        for task_id, attempt in left.items():
            task = self.machine.get(task_id)
            ckpt = self._last_ckpt.get(task_id)
            if task is not None and ckpt is not None:
                # The freshest resume point first (same link, so it arrives first).
                self.apply(
                    self.machine.skill_progress(
                        task_id,
                        attempt,
                        task.progress.pct,
                        task.progress.message,
                        ckpt,
                        self.node.clock.wall(),
                    )
                )
            # LOST: the lead requeues an idempotent task (it resumes elsewhere from its
            # checkpoint) and fails a non-idempotent one with agent_lost.
            self.apply(
                self.machine.skill_lost(
                    task_id,
                    attempt,
                    "the agent shut down before the task finished",
                    self.node.clock.wall(),
                )
            )
            if task is not None and task.idempotent:
                handed += 1
            else:
                lost += 1
            self.executor.cancel(task_id)
        await self.durable()
        finished = len(running) - len(left)
        _log.info("drained", finished=finished, handed_back=handed, lost=lost)
        return {"finished": finished, "handed_back": handed, "lost": lost}

    def stop_skill(self, name: str) -> int:
        """Stop every local run of ``name`` (its pack was revoked): they fail ``revoked``."""
        ids = self.executor.running_skill(name)
        for task_id in ids:
            self._revoked_runs.add(task_id)
            self.executor.cancel(task_id)
        return len(ids)

    def start(self) -> None:
        seeded = {}
        for name, rec in self.node.store.kv_items("skill_stats"):
            with contextlib.suppress(KeyError, TypeError, ValueError):
                seeded[name] = SkillStats(
                    int(rec["runs"]), int(rec["failures"]), float(rec["total_duration"])
                )
        self.executor.seed_stats(seeded)
        copies, submits, reports = self.node.store.load_tasks()
        if self.node.store.bad_task_records:
            _log.warning("task_records_skipped", count=self.node.store.bad_task_records)
        now = self.node.clock.wall()
        self.apply(self.machine.load(copies, submits, reports, now))
        self.members_changed()

    async def stop(self) -> None:
        self.executor.cancel_all()
        for task in list(self._skill_tasks.values()):
            task.cancel()
        for task in list(self._skill_tasks.values()):
            with contextlib.suppress(BaseException):
                await task
        if self._soon_handle is not None:
            self._soon_handle.cancel()
            self._soon_handle = None
        if self._sync_job is not None:
            with contextlib.suppress(BaseException):
                await self._sync_job  # never close the store under a running fsync
        self._flush(final=True)
        for batch in self._unsynced:
            self._release(batch)
        self._unsynced.clear()

    # ---- inputs from the node -----------------------------------------------------------

    def receive(self, sender: str, payload: object) -> None:
        self.frames_in += 1
        self.apply(self.machine.receive(sender, payload, self.node.clock.wall()))

    def election_changed(self) -> None:
        """Called after every core step: tell the machine when the lead or term moved."""
        election = self.node.machine.election
        current = (election.lead, election.term)
        if current != self._lead:
            self._lead = current
            self.apply(self.machine.lead_changed(current[0], current[1], self.node.clock.wall()))

    def members_changed(self) -> None:
        core = self.node.machine
        me = core.self_info
        from meshd.wire.records import MemberState

        members = [Member(me.node_id, me.name, me.role, me.priority, True)]
        for view in core.members():
            info = view.info
            alive = view.state in (MemberState.ALIVE, MemberState.SUSPECT)
            members.append(Member(info.node_id, info.name, info.role, info.priority, alive))
        self.apply(self.machine.members_changed(members, self.node.clock.wall()))

    def tick(self) -> None:
        self.apply(self.machine.tick(self.node.clock.wall()))

    def next_deadline_wall(self) -> float:
        return self.machine.next_deadline()

    # ---- effects ------------------------------------------------------------------------

    def apply(self, effects: Iterable[TaskEffect]) -> None:
        for eff in effects:
            if isinstance(eff, Publish) and isinstance(eff.payload, TaskUpdate):
                # Merged into one publication per loop turn (fewer, larger frames).
                self._pub.extend(eff.payload.copies)
                self._pub_hi = max(self._pub_hi, eff.payload.seq_hi)
            elif isinstance(eff, Send | Publish):
                if _is_ack(eff.payload):
                    self._sends.append(eff)  # after the batch is durable
                else:
                    self._send(eff)
            elif isinstance(eff, StoreCopies):
                if eff.sync_soon:
                    self._sync_soon()
                if eff.durable or eff.sync_soon:
                    self._durable = self._durable or eff.durable
                    for copy in eff.copies:
                        self._copies[copy.task.task_id] = copy
                        self._lazy.pop(copy.task.task_id, None)
                        self._wake(copy.task.task_id)
                else:
                    for copy in eff.copies:
                        self._lazy[copy.task.task_id] = copy
                        self._wake(copy.task.task_id)
            elif isinstance(eff, SaveOutbox):
                self._outbox[eff.key] = (eff.report or True) if eff.pending else None
                self._durable = self._durable or (eff.durable and eff.pending)
            elif isinstance(eff, RunSkill):
                self._runs.append(eff)
            elif isinstance(eff, CancelSkill):
                self.executor.cancel(eff.task_id)
            elif isinstance(eff, Emit):
                self._event(eff)
            elif isinstance(eff, OpDone):
                fut = self._ops.pop((eff.task_id, eff.op), None)
                if fut is not None and not fut.done():
                    fut.set_result(eff)
        if self._flush_handle is None and (
            self._copies
            or self._outbox
            or self._audit
            or self._sends
            or self._runs
            or self._flushed is not None
            or self._pub_hi
        ):
            self._flush_handle = asyncio.get_running_loop().call_soon(self._flush)
        if self._lazy and self._lazy_handle is None:
            self._lazy_handle = asyncio.get_running_loop().call_later(LAZY_WRITE, self._flush)
        self.node.reschedule()

    def _send(self, eff: Send | Publish) -> None:
        node = self.node
        if isinstance(eff, Send):
            if eff.to and eff.to != node.identity.node_id:
                node.send_payload(eff.to, eff.payload)
        else:
            data = node.envelope(eff.payload)
            node.transport.publish(codec.topic_for(PAYLOAD_TYPES[type(eff.payload)]), data)

    def _event(self, eff: Emit) -> None:
        me = self.node.identity.node_id
        record: dict[str, Any] = {"type": eff.kind, **eff.fields, "at": self.node.clock.wall()}
        record.setdefault("node", me)
        if eff.audit:
            self._audit.append(record)
        self.node.events.append(record)
        waiters, self._event_waiters = self._event_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)
        if eff.kind in ("TASK_COMPLETED", "TASK_VERIFIED"):
            if record["node"] == me:
                self.completed_here += 1
        elif eff.kind == "TASK_FAILED" and record["node"] == me:
            self.failed_here += 1

    def _flush(self, final: bool = False) -> None:
        """Commit the batch's writes (one transaction); once durable, send its
        acknowledgements, start its skills and answer its clients.

        The fsync runs in a worker thread, one at a time: while it runs the loop keeps
        taking requests, whose batches then share the next fsync (group commit)."""
        self._flush_handle = None
        if self._pub_hi:
            copies_out, self._pub, hi, self._pub_hi = self._pub, [], self._pub_hi, 0
            for i in range(0, max(1, len(copies_out)), CHUNK):
                self._send(Publish(TaskUpdate(hi, tuple(copies_out[i : i + CHUNK]))))
        if self._lazy_handle is not None:
            self._lazy_handle.cancel()
            self._lazy_handle = None
        lazy, self._lazy = self._lazy, {}
        copies = [*lazy.values(), *self._copies.values()]
        self._copies = {}
        outbox, self._outbox = self._outbox, {}
        audit, self._audit = self._audit, []
        durable, self._durable = self._durable, False
        if audit:
            self._sync_soon()
        store = self.node.store
        if copies or outbox or audit:
            store.write_batch(copies, outbox, audit, durable=final and durable)
        sends, self._sends = self._sends, []
        runs, self._runs = self._runs, []
        fut, self._flushed = self._flushed, None
        batch = (sends, runs, fut)
        if durable and store.fsync and not final:
            self._unsynced.append(batch)
            self._needs_sync = True
            self._sync_next()
        else:
            # Nothing here needs an fsync: out at once, even while an fsync for earlier
            # batches runs (what this batch acknowledges is committed already).
            self._release(batch)

    def _sync_soon(self) -> None:
        """fsync within SYNC_DELAY, holding nothing back (the lead's copies, audit)."""
        if self._soon_handle is None and self.node.store.fsync:
            self._soon_handle = asyncio.get_running_loop().call_later(SYNC_DELAY, self._soon)

    def _soon(self) -> None:
        self._soon_handle = None
        # Queued behind a sync in flight, if any: that one may predate our writes.
        self._unsynced.append(([], [], None))
        self._needs_sync = True
        self._sync_next()

    def _sync_next(self) -> None:
        if self._syncing or not self._unsynced:
            return
        batches, self._unsynced = self._unsynced, []
        if not self._needs_sync:  # only batches that waited for their turn: no fsync
            for batch in batches:
                self._release(batch)
            return
        self._needs_sync = False
        self._syncing = True
        loop = asyncio.get_running_loop()
        job = loop.run_in_executor(None, self.node.store.sync)
        self._sync_job = job

        def synced(job: asyncio.Future[None]) -> None:
            self._syncing = False
            if job.cancelled() or job.exception() is not None:
                _log.error("fsync_failed", error=str(job.exception()))
            for batch in batches:
                self._release(batch)
            self._sync_next()

        job.add_done_callback(synced)

    def _release(
        self, batch: tuple[list[Send | Publish], list[RunSkill], asyncio.Future[None] | None]
    ) -> None:
        sends, runs, fut = batch
        for eff in sends:
            self._send(eff)
        for run in runs:
            self._start_skill(run.task)
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _wake(self, task_id: str) -> None:
        for fut in self._task_waiters.pop(task_id, ()):
            if not fut.done():
                fut.set_result(None)

    async def _wait(self, waiters: list[asyncio.Future[None]], seconds: float) -> None:
        """Wait until a future put in ``waiters`` is set, or ``seconds`` pass."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        waiters.append(fut)

        def expire() -> None:
            if not fut.done():
                fut.set_result(None)

        timer = loop.call_later(seconds, expire)
        try:
            await fut
        finally:
            timer.cancel()
            if fut in waiters:
                waiters.remove(fut)

    async def durable(self) -> None:
        """Return once everything applied so far is committed (and its messages sent)."""
        loop = asyncio.get_running_loop()
        if self._flush_handle is None:
            if not self._unsynced and not self._syncing:
                return
            # Committed already; wait behind the fsyncs queued or running.
            fut: asyncio.Future[None] = loop.create_future()
            self._unsynced.append(([], [], fut))
            self._sync_next()
            await asyncio.shield(fut)
            return
        if self._flushed is None:
            self._flushed = loop.create_future()
        await asyncio.shield(self._flushed)

    # ---- the local skill runner ------------------------------------------------------------

    def _start_skill(self, task: Task) -> None:
        task_id, attempt = task.task_id, task.attempt
        old = self._skill_tasks.get(task_id)
        if old is not None and not old.done():
            self.executor.cancel(task_id)
        last: dict[str, Any] = {"pct": task.progress.pct, "message": task.progress.message}
        clock = self.node.clock

        def on_progress(pct: float, message: str) -> None:
            last["pct"], last["message"] = pct, message
            self.apply(
                self.machine.skill_progress(task_id, attempt, pct, message, None, clock.wall())
            )

        def on_checkpoint(data: bytes) -> None:
            last["ckpt"] = data
            self._last_ckpt[task_id] = data
            self.apply(
                self.machine.skill_progress(
                    task_id, attempt, float(last["pct"]), str(last["message"]), data, clock.wall()
                )
            )

        async def run() -> None:
            if old is not None and not old.done():
                with contextlib.suppress(BaseException):
                    await old  # the superseded attempt must leave the executor first
            result = await self.executor.run(
                task_id,
                task.skill,
                task.params,
                task.checkpoint,
                on_progress=on_progress,
                on_checkpoint=on_checkpoint,
                # The lead's attempt timer fires first and cancels; this is a backstop.
                timeout=task.timeout_s + 1.0,
            )
            if self._skill_tasks.get(task_id) is current:
                del self._skill_tasks[task_id]
            self._last_ckpt.pop(task_id, None)
            stats = self.executor.stats().get(task.skill)
            if stats is not None:  # kept across restarts (describe / list show them)
                self.node.store.kv_put("skill_stats", task.skill, stats.to_dict(), durable=False)
            if task_id in self._revoked_runs:
                self._revoked_runs.discard(task_id)
                result = ExecResult(
                    False, code="revoked", message=f"skill {task.skill!r} was revoked while it ran"
                )
            if result.code == HANDOFF:
                self.apply(
                    self.machine.skill_handoff(
                        task_id, attempt, result.message, last.get("ckpt"), clock.wall()
                    )
                )
                return
            self.apply(
                self.machine.skill_done(
                    task_id,
                    attempt,
                    result.ok,
                    result.result,
                    result.code,
                    result.message,
                    clock.wall(),
                )
            )

        current = asyncio.get_running_loop().create_task(run(), name=f"skill-{task_id[:8]}")
        self._skill_tasks[task_id] = current

    def _runnable(self) -> tuple[str, ...]:
        """Skills this node may run: built-ins, and packs its role is allowed."""
        skills = self.node.skills
        names = self.registry.names()
        return names if skills is None else tuple(n for n in names if skills.runnable_here(n))

    def _needs_approval(self, name: str) -> bool:
        skills = self.node.skills
        return skills is not None and skills.needs_approval(name)

    def _verify(self, task: Task) -> tuple[bool, str]:
        """The verify step, run by the lead: the skill's own ``verify(params, result)``
        when it has one, else the result must be present."""
        try:
            skill = self.registry.get(task.skill)
        except SkillError:
            return (task.result is not None, "no verify step known here; result present")
        verify = getattr(skill, "verify", None)
        if verify is None:
            ok = task.result is not None
            return ok, "result present" if ok else "the skill returned no result"
        try:
            return bool(verify(task.params, task.result)), f"{task.skill}.verify"
        except Exception as exc:
            return False, f"verify raised {type(exc).__name__}: {exc}"

    # ---- control operations ------------------------------------------------------------------

    def names(self, node_id: str) -> str:
        return self.node.name_of(node_id)

    def resolve_task(self, ref: str) -> str:
        ref = ref.strip().lower()
        if not ref:
            raise ControlError("no task id given", code="bad_request")
        if ref in self.machine.copies:
            return ref
        found = [t for t in self.machine.copies if t.startswith(ref)] if len(ref) >= 4 else []
        if len(found) == 1:
            return found[0]
        if not found:
            raise ControlError(f"unknown task id {ref!r}", code="unknown_task")
        raise ControlError(
            f"{ref!r} matches {len(found)} tasks; give more of the id", code="ambiguous"
        )

    def view(self, task_id: str) -> dict[str, Any]:
        task = self.machine.get(task_id)
        assert task is not None
        return task_to_dict(task, self.machine.version(task_id), self.names)

    async def delegate(self, args: dict[str, Any]) -> dict[str, Any]:
        if self.machine.draining:
            raise ControlError(
                "meshd is shutting down: delegate from another node", code="shutting_down"
            )
        task = self.build_task(args)
        try:
            effects = self.machine.submit(task, self.node.clock.wall())
        except TaskError as exc:
            raise ControlError(str(exc), code="bad_request") from None
        self.apply(effects)
        await self.durable()
        wait = float(args.get("wait") or 0.0)
        if wait > 0:
            # Delegate and wait in one call: the answer is the finished task (or the task
            # as it stands when ``wait`` runs out), one control round trip fewer.
            loop = asyncio.get_running_loop()
            end = loop.time() + min(wait, MAX_WAIT)
            view = self.view(task.task_id)
            while not view["terminal"] and loop.time() < end:
                view = await self.watch(task.task_id, view["version"], end - loop.time())
            return view
        return self.view(task.task_id)

    async def delegate_many(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Many tasks in one call: all checked first (the first bad one refuses the whole
        batch, naming its index, and nothing is stored), then stored in one transaction
        (one fsync) and submitted. Returns short views (id, state) in order."""
        if self.machine.draining:
            raise ControlError(
                "meshd is shutting down: delegate from another node", code="shutting_down"
            )
        if not isinstance(items, list) or not items:
            raise ControlError("give a non-empty list of tasks", code="bad_request")
        if len(items) > MAX_BATCH:
            raise ControlError(
                f"{len(items)} tasks in one batch, at most {MAX_BATCH}", code="bad_request"
            )
        tasks = []
        for i, args in enumerate(items):
            if not isinstance(args, dict):
                raise ControlError(f"task {i}: expected a mapping", code="bad_request")
            try:
                tasks.append(self.build_task(args))
            except ControlError as exc:
                raise ControlError(f"task {i}: {exc}", code=exc.code) from None
        now = self.node.clock.wall()
        effects = []
        for task in tasks:
            try:
                effects.extend(self.machine.submit(task, now))
            except TaskError as exc:
                raise ControlError(str(exc), code="bad_request") from None
        self.apply(effects)
        await self.durable()
        return [{"id": t.task_id, "state": t.state.value} for t in tasks]

    def build_task(self, args: dict[str, Any]) -> Task:
        """Check a delegate request before anything is stored (precise errors)."""
        skill_name = args.get("skill")
        if not isinstance(skill_name, str) or not skill_name:
            raise ControlError("no skill given", code="bad_request")
        params = args.get("params") or {}
        if not isinstance(params, dict):
            raise ControlError("params must be a mapping of names to values", "bad_request")
        try:
            spec = self.registry.get(skill_name).spec
        except SkillError:
            skills = self.node.skills
            mesh_spec = skills.spec_for(skill_name) if skills is not None else None
            if mesh_spec is None:
                known = skills.known_names() if skills else sorted(self.registry.names())
                raise ControlError(
                    f"unknown skill {skill_name!r}; known skills: {', '.join(known) or 'none'}",
                    code="unknown_skill",
                ) from None
            spec = mesh_spec
            why = skills.revoked_skill(skill_name) if skills is not None else ""
            if why:
                raise ControlError(
                    f"skill {skill_name!r} cannot run: {why}", code="revoked"
                ) from None
        try:
            valid = dict(validate_params(spec, params))
        except SkillError as exc:
            raise ControlError(str(exc), code="bad_params") from None
        role = args.get("role") or None
        if role is not None and role not in self.roles:
            raise ControlError(
                f"unknown role {role!r}; known roles: {', '.join(sorted(self.roles))}",
                code="unknown_role",
            )
        node_ref = args.get("node") or None
        node_id = None
        if node_ref is not None:
            try:
                node_id = self.node.resolve_peer_or_self(str(node_ref))
            except ControlError as exc:
                raise ControlError(
                    str(exc).replace("peer", "node", 1), code="unknown_node"
                ) from None
        deps = tuple(self.resolve_task(str(d)) for d in args.get("after") or ())
        idempotent = args.get("idempotent")
        try:
            return new_task(
                skill_name,
                valid,
                self.node.identity.node_id,
                self.node.clock.wall(),
                config=self.node.cfg.tasks,
                requirement=Requirement(
                    role=role, capability=args.get("capability") or None, node=node_id
                ),
                priority=int(args.get("priority", 5)),
                timeout_s=None if args.get("timeout") is None else float(args["timeout"]),
                deadline=None if args.get("deadline") is None else float(args["deadline"]),
                idempotent=spec.idempotent if idempotent is None else bool(idempotent),
                verify=bool(args.get("verify", False)),
                parent=args.get("parent") or None,
                depends_on=deps,
                retry_limit=None if args.get("retries") is None else int(args["retries"]),
            )
        except TaskError as exc:
            raise ControlError(str(exc), code="bad_request") from None
        except (TypeError, ValueError) as exc:
            raise ControlError(f"bad request: {exc}", code="bad_request") from None

    async def watch(self, task_id: str, after: list[int] | None, wait: float) -> dict[str, Any]:
        """The task once its version is newer than ``after`` (or it is finished, or
        ``wait`` s passed): the long-poll behind progress bars and ``result()``."""
        wait = max(0.0, min(float(wait), MAX_WAIT))
        key = tuple(after) if after else None
        loop = asyncio.get_running_loop()
        end = loop.time() + wait

        def ready() -> bool:
            version = self.machine.version(task_id)
            task = self.machine.get(task_id)
            return (
                key is None
                or version is None
                or tuple(version) > key
                or (task is not None and is_terminal(task))
            )

        while not ready():
            left = end - loop.time()
            if left <= 0:
                break
            await self._wait(self._task_waiters.setdefault(task_id, []), left)
        return self.view(task_id)

    async def wait_events(self, since: float, wait: float) -> None:
        wait = max(0.0, min(float(wait), MAX_WAIT))
        loop = asyncio.get_running_loop()
        end = loop.time() + wait
        while not any(e["at"] > since for e in reversed(self.node.events)):
            left = end - loop.time()
            if left <= 0:
                return
            await self._wait(self._event_waiters, left)

    async def operator(self, op: str, ref: str, target: str = "") -> dict[str, Any]:
        task_id = self.resolve_task(ref)
        try:
            kind = TaskOpKind(op)
        except ValueError:
            raise ControlError(f"unknown task operation {op!r}", code="bad_request") from None
        if kind is TaskOpKind.HANDOFF and target:
            target = self.node.resolve_peer_or_self(target)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[OpDone] = loop.create_future()
        self._ops[(task_id, kind.value)] = fut
        try:
            try:
                effects = self.machine.operator(
                    kind, task_id, "operator", self.node.clock.wall(), target
                )
            except TaskError as exc:
                raise ControlError(str(exc), code="refused") from None
            self.apply(effects)
            await self.durable()
            try:
                done = await asyncio.wait_for(fut, OP_TIMEOUT)
            except TimeoutError:
                raise ControlError(
                    f"the lead did not answer within {OP_TIMEOUT:g} s", code="timeout"
                ) from None
        finally:
            self._ops.pop((task_id, kind.value), None)
        if not done.ok:
            raise ControlError(done.message, code="refused")
        return self.view(task_id)

    def list(self, state: str | None, limit: int) -> list[dict[str, Any]]:
        if state is not None:
            try:
                TaskState(state)
            except ValueError:
                known = ", ".join(s.value for s in TaskState)
                raise ControlError(
                    f"unknown state {state!r}; states: {known}", code="bad_request"
                ) from None
        tasks = [
            c.task
            for c in self.machine.copies.values()
            if state is None or c.task.state.value == state
        ]
        tasks.sort(key=lambda t: (t.created_at, t.task_id), reverse=True)
        return [self.view(t.task_id) for t in tasks[: max(1, limit)]]

    def status(self) -> dict[str, Any]:
        """Task figures for ``meshctl status``: mesh totals, queue, per-node current task."""
        totals = self.machine.totals()
        done = totals["complete"] + totals["verified"]
        finished = done + totals["failed"]
        per_node: dict[str, dict[str, Any]] = {}
        for copy in self.machine.copies.values():
            task = copy.task
            holder = task.assigned_to
            if holder is None or task.state not in (TaskState.ASSIGNED, TaskState.RUNNING):
                continue
            entry = per_node.setdefault(holder, {"tasks": 0, "current": None})
            entry["tasks"] += 1
            cur = entry["current"]
            if cur is None or task.updated_at > cur["updated_at"]:
                entry["current"] = {
                    "id": task.task_id,
                    "skill": task.skill,
                    "state": task.state.value,
                    "pct": task.progress.pct,
                    "message": task.progress.message,
                    "updated_at": task.updated_at,
                }
        sched = self.machine.scheduler
        return {
            "totals": {
                **totals,
                "total": sum(totals.values()),
                "success_rate": (done / finished) if finished else None,
            },
            "queue": {
                "pending": totals["pending"],
                "retry": totals["retry"],
                "lead_queue": len(sched.queue()) if sched is not None else None,
            },
            "nodes": per_node,
            "here": {
                "running": len(self.machine.running_here()),
                "max_concurrent": self.machine.max_concurrent,
                "completed": self.completed_here,
                "failed": self.failed_here,
                "unacked_submits": self.machine.pending_submits(),
                "unacked_reports": self.machine.pending_reports(),
                "skills": list(self.registry.names()),
                "store_syncs": self.node.store.syncs,
                "skill_stats": {k: v.to_dict() for k, v in self.executor.stats().items()},
            },
        }
