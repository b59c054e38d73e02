"""One node's part in delegation: origin, agent and (when it leads) scheduler. Pure.

:class:`TaskMachine` is the delegation part of :class:`~meshd.core.Core`:
events in (messages, the lead changing, members changing, the local skill runner's
reports, client requests), effects out, with ``now`` (wall epoch seconds) injected. The
same machine runs on the in-memory network in the tests.

Roles of one node, all at once:

- **origin**: :meth:`submit` stores the task (before the client is answered) and sends
  TASK_SUBMIT to the lead until the lead acknowledges it, again to every new lead;
- **agent**: TASK_ASSIGN is checked against the fence (the assignment's term must not be
  older than the newest term seen, and it must name this node), stored, then run
  (:class:`RunSkill`); outcomes go back in reliable TASK_REPORTs, resent until the lead
  acknowledges and again to every new lead until this node holds a copy showing the lead
  took the outcome;
- **replica**: every node keeps a copy of every task (TASK_UPDATE from the lead, TASK_SYNC
  to catch up when a gap shows), newest ``(term, seq)`` wins;
- **lead**: on election it first gathers the freshest copies from every live member,
  then resumes every unfinished task with a :class:`~meshd.tasks.scheduler.Scheduler`,
  stamps every change with ``(term, seq)``, stores it before anything depending on it
  is sent, and publishes it.

Effects must be carried out with every store effect of a batch made durable before any
message of that batch leaves the node (:mod:`meshd.daemon.commit` commits once per batch).
"""

from __future__ import annotations

import enum
import heapq
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

from meshd.config import TaskConfig
from meshd.effects import (
    CancelSkill,
    Emit,
    OpDone,
    Publish,
    Refused,
    RunSkill,
    SaveOutbox,
    Send,
    StoreCopies,
)
from meshd.tasks.assign import AgentView
from meshd.tasks.converge import Digest, bucket_of, copies_in
from meshd.tasks.model import TaskError
from meshd.tasks.scheduler import (
    AssignTask,
    CancelOnAgent,
    RequestVerify,
    Scheduler,
    TaskChanged,
    TaskFinished,
)
from meshd.tasks.scheduler import Effect as SchedulerEffect
from meshd.wire.messages import (
    AgentInfo,
    ReportKind,
    TaskAck,
    TaskAssign,
    TaskCancel,
    TaskDigest,
    TaskKey,
    TaskKeys,
    TaskOp,
    TaskOpKind,
    TaskQuery,
    TaskReport,
    TaskSubmit,
    TaskSync,
    TaskSyncReq,
    TaskUpdate,
)
from meshd.wire.records import ACTIVE_STATES, Task, TaskCopy, TaskFailure, TaskState, is_terminal
from meshd.wire.schema import MAX_COUNTER

#: Copies per TASK_UPDATE / TASK_SYNC frame: ~1-2 KiB each keeps a frame far below 1 MiB.
CHUNK: Final = 200
#: s. First resend of an unsettled submit or outcome (then 2x, 3x..., at most 4 s). The
#: lead's published copy settles them within milliseconds; this covers a lost frame.
RESEND: Final = 1.0
#: Ids per gathering TASK_SYNC_REQ (34 bytes each).
IDS_CHUNK: Final = 5000
#: s. The lead resends a non-idempotent assignment's copy to the voters that have not
#: confirmed holding it yet this often (a lost frame; a follower that was busy).
CONFIRM_RESEND: Final = 0.25
#: s. An assignment no agent report answered this long after it left (then 2x, 4x...,
#: at most 4 s) was lost with a broken connection, or is late: an idempotent one is sent
#: again (the agent takes a repeat as a duplicate); for a non-idempotent one the agent is
#: asked what became of it, and its answer "not started" fences that attempt off there.
ASSIGN_RESEND: Final = 1.0
#: Attempts an agent has answered "not started" for and refuses from then on (oldest
#: forgotten first; a lost assignment frame arrives late by seconds, not by thousands of
#: tasks).
MAX_REFUSED: Final = 10_000
#: s. A lead without a valid lease re-checks its parked assignments this often.
PARK_RETRY: Final = 0.02
#: Keys per TASK_KEYS frame (~45 bytes each: ~90 KiB).
KEYS_CHUNK: Final = 2000
#: Peers whose TASK_KEYS chunks are being collected at once (a bound on that state).
MAX_KEY_PEERS: Final = 64
#: (term, seq) above every real one: a TASK_SYNC_REQ "since" this asks only for ``ids``.
_NOTHING_SINCE: Final = (MAX_COUNTER, MAX_COUNTER)
#: s. A follower asks the lead for a digest exchange at most this often.
DIGEST_ASK_INTERVAL: Final = 1.0

_RELIABLE: Final = frozenset(
    {ReportKind.COMPLETED, ReportKind.FAILED, ReportKind.REJECTED, ReportKind.LOST}
)


# ---- effects ------------------------------------------------------------------------


#: What the task machine returns (see :mod:`meshd.effects`).
TaskEffect = (
    Send | Publish | StoreCopies | SaveOutbox | RunSkill | CancelSkill | Emit | OpDone | Refused
)


@dataclass(frozen=True, slots=True)
class Member:
    """What the task machine needs of one member (this node included)."""

    node_id: str
    name: str
    role: str
    priority: int
    alive: bool


@dataclass(slots=True)
class _Pending:
    """A reliable message waiting for its acknowledgement."""

    next_try: float
    tries: int = 0
    acked_by: str | None = None


@dataclass(slots=True)
class _Gather:
    """A new lead collecting the members' copies before it resumes (from a quorum)."""

    waiting: set[str]
    deadline: float
    sources: int = 0
    responded: set[str] = field(default_factory=set)
    #: Members whose keys came: fetches of theirs still unanswered.
    fetching: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class _Confirm:
    """A non-idempotent assignment waiting until a quorum holds its copy durably."""

    copy: TaskCopy
    to: str
    acks: set[str]
    next_try: float


@dataclass(slots=True)
class _Unstarted:
    """An assignment sent to an agent that has not reported on it yet."""

    copy: TaskCopy
    to: str
    next_try: float
    tries: int = 1


@dataclass(slots=True)
class _Doubt:
    """A task a previous lead assigned to a live agent: what became of it?"""

    holder: str
    attempt: int
    next_try: float


@dataclass(slots=True)
class _Watermark:
    term: int = 0
    hw: int = 0
    above: set[int] = field(default_factory=set)
    hi: int = 0
    asked_at: float = float("-inf")
    asked_hi: int = 0


def _key(copy: TaskCopy) -> tuple[int, int]:
    return (copy.term, copy.seq)


def _event_for(old: Task | None, new: Task) -> str | None:
    """The client event a new copy means (None: nothing worth telling)."""
    s = new.state
    if old is not None and old.state is s:
        if s is TaskState.RUNNING and old.progress != new.progress:
            return "TASK_PROGRESS"
        if s is TaskState.ASSIGNED and old.assigned_to != new.assigned_to:
            return "TASK_ASSIGNED"
        return None
    return {
        TaskState.PENDING: "TASK_SUBMITTED" if old is None else "TASK_REQUEUED",
        TaskState.ASSIGNED: "TASK_ASSIGNED",
        TaskState.RUNNING: "TASK_STARTED",
        TaskState.COMPLETE: "TASK_COMPLETED",
        TaskState.VERIFIED: "TASK_VERIFIED",
        TaskState.FAILED: "TASK_FAILED",
        TaskState.CANCELLED: "TASK_CANCELLED",
        TaskState.RETRY: "TASK_RETRY",
        TaskState.REJECTED: "TASK_REJECTED",
        TaskState.WAITING_APPROVAL: "TASK_WAITING_APPROVAL",
    }.get(s)


class Role(enum.Enum):
    FOLLOWER = "follower"
    GATHERING = "gathering"
    LEAD = "lead"


class TaskMachine:
    """Delegation logic of one node (see the module docstring)."""

    def __init__(
        self,
        self_id: str,
        config: TaskConfig,
        *,
        skills: Callable[[], tuple[str, ...]],
        role_defaults: Callable[[str], tuple[tuple[str, ...], int]],
        max_concurrent: int,
        capabilities: tuple[str, ...],
        verifier: Callable[[Task], tuple[bool, str]] | None = None,
        needs_approval: Callable[[str], bool] | None = None,
        quorum: Callable[[], int] | None = None,
        lease: Callable[[], bool] | None = None,
    ) -> None:
        self.self_id = self_id
        #: Votes that make a majority of the mesh (the election's), and whether this
        #: node's lead lease holds now: assignments leave only under a valid lease, and a
        #: non-idempotent one only once a quorum holds it.
        self._quorum = quorum or (lambda: 1)
        self._lease = lease or (lambda: True)
        self.cfg = config
        self._skills = skills
        self._role_defaults = role_defaults
        self.max_concurrent = max_concurrent
        #: Shutting down: no new tasks (see :meth:`drain`).
        self.draining = False
        self.capabilities = capabilities
        self._verifier = verifier
        #: Whether a skill (by name) needs an operator's approval per task.
        self._needs_approval = needs_approval
        self.copies: dict[str, TaskCopy] = {}
        self.lead: str | None = None
        self.term = 0
        #: Newest lead term seen on any assignment or message: older fences are refused.
        self.max_term = 0
        self.role = Role.FOLLOWER
        self.scheduler: Scheduler | None = None
        self._seq = 0
        self._members: dict[str, Member] = {}
        self._infos: dict[str, AgentInfo] = {}
        self._submits: dict[str, _Pending] = {}
        self._reports: dict[str, tuple[TaskReport, _Pending]] = {}
        self._runs: dict[str, int] = {}  # task id -> attempt running here
        self._starting: dict[str, tuple[int, float]] = {}  # STARTED not sent yet
        self._handoffs: dict[str, int] = {}  # handoffs asked of the lead, unanswered
        self._gather: _Gather | None = None
        self._held_submits: list[tuple[str, TaskCopy]] = []
        self._wm = _Watermark()
        self._updates: list[TaskCopy] = []
        self._next_beacon = 0.0
        #: The bucket digest of the lead-stamped copies held (see meshd.tasks.converge).
        self.digest = Digest()
        #: The newest (term, seq) of any copy held (see _on_digest).
        self._top: tuple[int, int] = (0, 0)
        self._next_digest = 0.0
        self._digest_asked = float("-inf")
        self._confirming: dict[str, _Confirm] = {}
        self._parked: dict[str, tuple[TaskCopy, str]] = {}
        self._park_due = float("inf")
        self._doubt: dict[str, _Doubt] = {}
        #: Peers' TASK_KEYS being collected: peer -> (buckets, task id -> (term, seq)).
        self._keys_in: dict[str, tuple[tuple[int, ...], dict[str, tuple[int, int]]]] = {}
        self._unstarted: dict[str, _Unstarted] = {}
        #: (next try, task id) of every entry above, soonest first (stale pairs skipped).
        self._unstarted_due: list[tuple[float, str]] = []
        #: task id -> attempt this agent answered "not started" for: refused from now on.
        self._not_started: dict[str, int] = {}
        #: Terminal copies that lost to a newer copy with another outcome, to be noted in
        #: the winner's history by the lead.
        self._conflicts: dict[str, TaskCopy] = {}

    # ---- queries ----------------------------------------------------------------------

    def get(self, task_id: str) -> Task | None:
        copy = self.copies.get(task_id)
        return None if copy is None else copy.task

    def version(self, task_id: str) -> tuple[int, int] | None:
        copy = self.copies.get(task_id)
        return None if copy is None else _key(copy)

    def running_here(self) -> dict[str, int]:
        return dict(self._runs)

    def pending_submits(self) -> int:
        return len(self._submits)

    def pending_reports(self) -> int:
        return len(self._reports)

    def agent_info(self) -> AgentInfo:
        limit = 0 if self.draining else self.max_concurrent
        return AgentInfo(tuple(sorted(self._skills())), self.capabilities, limit)

    def drain(self, now: float) -> list[TaskEffect]:
        """Shutting down: take no more tasks (the lead is told this node's limit is 0,
        and an assignment still in flight is rejected)."""
        self.draining = True
        return self.skills_changed(now)

    def skill_lost(self, task_id: str, attempt: int, why: str, now: float) -> list[TaskEffect]:
        """Give up a local run without a result (shutdown): reported LOST, so the lead
        requeues an idempotent task and fails a non-idempotent one (``agent_lost``)."""
        self._starting.pop(task_id, None)
        if self._runs.get(task_id) != attempt:
            return []
        del self._runs[task_id]
        out: list[TaskEffect] = []
        self._report(task_id, attempt, ReportKind.LOST, now, out, message=why[:500])
        self._flush_updates(out)
        return out

    def next_deadline(self) -> float:
        times = [p.next_try for p in self._submits.values()]
        times += [due for _, due in self._starting.values()]
        times += [p.next_try for _, p in self._reports.values() if p.acked_by is None]
        if self._gather is not None:
            times.append(self._gather.deadline)
        times += [c.next_try for c in self._confirming.values()]
        times += [d.next_try for d in self._doubt.values()]
        if self._unstarted_due:
            times.append(self._unstarted_due[0][0])
        if self._parked:
            times.append(self._park_due)
        if self.scheduler is not None:
            times.append(self._next_beacon)
            times.append(self._next_digest)
            due = self.scheduler.next_deadline()
            if due is not None:
                times.append(due)
        return min(times, default=float("inf"))

    # ---- start ------------------------------------------------------------------------

    def load(
        self,
        copies: Iterable[TaskCopy],
        submits: Iterable[str],
        reports: Iterable[TaskReport],
        now: float,
    ) -> list[TaskEffect]:
        """Restore from the store at start: copies, unacknowledged submits and reports.
        Runs this node held when it stopped are lost: reported LOST (the lead reassigns an
        idempotent task and fails a non-idempotent one)."""
        for copy in copies:
            self._hold(copy)
        for task_id in submits:
            if task_id in self.copies:
                self._submits[task_id] = _Pending(now)
        out: list[TaskEffect] = []
        for report in reports:
            self._reports[report.task_id] = (report, _Pending(now))
        for copy in self.copies.values():
            task = copy.task
            if (
                task.assigned_to == self.self_id
                and task.state in ACTIVE_STATES
                and task.task_id not in self._reports
            ):
                self._report(
                    task.task_id,
                    task.attempt,
                    ReportKind.LOST,
                    now,
                    out,
                    message="the agent restarted and lost the run",
                )
        return out

    # ---- origin -----------------------------------------------------------------------

    def submit(self, task: Task, now: float) -> list[TaskEffect]:
        """A new task from a local client (validated by the caller). Stored before the
        caller answers the client; sent to the lead until acknowledged."""
        if task.task_id in self.copies:
            raise TaskError(f"task id {task.task_id} is already in use")
        for dep in task.depends_on:
            if dep not in self.copies:
                raise TaskError(f"unknown dependency {dep}: no such task in this mesh")
        copy = TaskCopy(0, 0, task)
        self._hold(copy)
        out: list[TaskEffect] = [
            StoreCopies((copy,)),
            SaveOutbox(f"submit:{task.task_id}", True),
        ]
        self._event("TASK_SUBMITTED", task, out)
        self._submits[task.task_id] = _Pending(now)
        self._send_submit(task.task_id, now, out)
        return out

    def _send_submit(self, task_id: str, now: float, out: list[TaskEffect]) -> None:
        pending = self._submits[task_id]
        copy = self.copies[task_id]
        pending.tries += 1
        pending.next_try = now + min(4.0, RESEND * pending.tries)
        if self.lead is None:
            return
        if self.lead == self.self_id:
            self._lead_submit(self.self_id, copy, now, out)
        else:
            out.append(Send(self.lead, TaskSubmit(copy)))

    # ---- operator commands ---------------------------------------------------------------

    def operator(
        self,
        op: TaskOpKind,
        task_id: str,
        actor: str,
        now: float,
        target: str = "",
        checkpoint: bytes | None = None,
    ) -> list[TaskEffect]:
        """Cancel / retry / hand off: done here when leading, else relayed to the lead
        (answered later by :class:`OpDone`). Raises TaskError for what is refused now."""
        if task_id not in self.copies:
            raise TaskError(f"unknown task id {task_id}")
        out: list[TaskEffect] = []
        if self.role is Role.LEAD:
            self._lead_op(TaskOp(op, task_id, actor, target, checkpoint), now, out)
            return out
        if self.lead is None or self.role is Role.GATHERING:
            raise TaskError("no lead right now: try again in a moment")
        out.append(Send(self.lead, TaskOp(op, task_id, actor, target, checkpoint)))
        return out

    def _lead_op(
        self, op: TaskOp, now: float, out: list[TaskEffect], origin: str | None = None
    ) -> None:
        sched = self.scheduler
        assert sched is not None
        # Who decided, for the history and the audit: "operator@<node id>".
        who = f"{op.actor}@{origin or self.self_id}" if op.actor == "operator" else op.actor
        if sched.get(op.task_id) is None and op.task_id in self.copies:
            # A task submitted but not yet taken (its submit is in flight): take it now.
            self._lead_submit(
                self.copies[op.task_id].task.origin, self.copies[op.task_id], now, out, ack=False
            )
        if op.op is TaskOpKind.CANCEL:
            effects = sched.cancel(op.task_id, now, actor=who)
        elif op.op is TaskOpKind.APPROVE:
            effects = sched.approve(op.task_id, now, actor=who)
        elif op.op is TaskOpKind.DENY:
            effects = sched.deny(op.task_id, now, actor=who, reason=op.target)
        elif op.op in (TaskOpKind.RETRY, TaskOpKind.RETRY_FORCE):
            force = op.op is TaskOpKind.RETRY_FORCE
            effects = sched.operator_retry(op.task_id, now, actor=who, force=force)
        else:
            effects = sched.handoff(
                op.task_id,
                op.target or None,
                now,
                from_node=None if op.actor == "operator" else op.actor,
                checkpoint=op.checkpoint,
            )
        self._lead_effects(effects, now, out)
        out.append(OpDone(op.task_id, op.op.value, True))

    # ---- messages ---------------------------------------------------------------------

    def receive(self, sender: str, payload: object, now: float) -> list[TaskEffect]:
        """A task message from ``sender`` (authenticated by the transport)."""
        out: list[TaskEffect] = []
        if isinstance(payload, TaskUpdate):
            self._on_update(sender, payload, now, out)
        elif isinstance(payload, TaskAssign):
            self._on_assign(sender, payload.copy, now, out)
        elif isinstance(payload, TaskReport):
            self._on_report(sender, payload, now, out)
        elif isinstance(payload, TaskAck):
            self._on_ack(sender, payload, now, out)
        elif isinstance(payload, TaskSubmit):
            self._lead_submit(sender, payload.copy, now, out)
        elif isinstance(payload, TaskCancel):
            self._on_cancel(sender, payload, out)
        elif isinstance(payload, TaskOp):
            self._on_op(sender, payload, now, out)
        elif isinstance(payload, TaskSyncReq):
            self._on_sync_req(sender, payload, out)
        elif isinstance(payload, TaskSync):
            self._on_sync(sender, payload, now, out)
        elif isinstance(payload, AgentInfo):
            self._infos[sender] = payload
            self._agents_changed(now, out)
        elif isinstance(payload, TaskDigest):
            self._on_digest(sender, payload, now, out)
        elif isinstance(payload, TaskQuery):
            self._on_query(sender, payload, now, out)
        elif isinstance(payload, TaskKeys):
            self._on_keys(sender, payload, now, out)
        self._flush_updates(out)
        return out

    def _entitled(
        self, sender: str, copies: Sequence[TaskCopy], out: list[TaskEffect]
    ) -> list[TaskCopy]:
        """The copies ``sender`` may tell us about: copies of the current term only from
        its (proven) lead, never one of a term ahead of ours; older terms' copies from
        anyone (a new lead gathers them; digests repair them). The rest is refused and
        counted, whatever its seq."""
        term, lead = self.term, self.lead
        ok = [c for c in copies if c.term < term or (c.term == term and sender == lead)]
        if len(ok) < len(copies):
            bad = next(c for c in copies if c not in ok)
            why = "copy_term_ahead" if bad.term > term else "copy_not_from_lead"
            out.append(Refused(why, sender, f"task {bad.task.task_id} term {bad.term}"))
        return ok

    def _on_update(self, sender: str, msg: TaskUpdate, now: float, out: list[TaskEffect]) -> None:
        if sender != self.lead or self.role is not Role.FOLLOWER:
            # Only the lead of our term publishes task copies.
            out.append(Refused("task_update_not_lead", sender, f"{len(msg.copies)} copies"))
            return
        copies = self._entitled(sender, msg.copies, out)
        if len(copies) < len(msg.copies):
            msg = TaskUpdate(msg.seq_hi, tuple(copies))
        fresh = [c for c in msg.copies if self._newer(c)]
        for copy in fresh:
            self._take(copy, out)
        held = [c for c in msg.copies if self._to_confirm(c)]
        lazy = [c for c in fresh if c not in held]
        if lazy:
            out.append(StoreCopies(tuple(lazy), durable=False))
        if held:
            # A non-idempotent assignment of our lead's term: durable here before we say
            # we hold it (the TASK_ACK leaves after the commit).
            out.append(StoreCopies(tuple(c for c in held if c in fresh), durable=True))
            for copy in held:
                out.append(Send(sender, TaskAck(copy.task.task_id, True, f"held:{copy.seq}")))
        wm = self._wm
        if wm.term != self.term:
            self._wm = wm = _Watermark(self.term)
        for copy in msg.copies:
            if copy.term == self.term:
                self._mark(copy.seq)
        wm.hi = max(wm.hi, msg.seq_hi)
        if not msg.copies and now - wm.asked_at > 1.0:
            # A beacon: ask for what we missed in this term (a gap below seq_hi),
            # and for unfinished tasks whose copies are from an older term.
            stale = self._stale_ids()
            if wm.hi > wm.hw or stale:
                wm.asked_at = now if wm.hi > wm.hw else now + 4.0
                wm.asked_hi = wm.hi
                out.append(Send(sender, TaskSyncReq(self.term, wm.hw, stale)))

    def _to_confirm(self, copy: TaskCopy) -> bool:
        """A non-idempotent assignment of the current term that we hold (this copy or a
        newer one): the lead waits for a quorum to hold it before it lets it run."""
        task = copy.task
        fence = task.assignment
        if task.idempotent or task.state is not TaskState.ASSIGNED or fence is None:
            return False
        if fence.term != self.term or copy.term != self.term:
            return False
        held = self.copies.get(task.task_id)
        return held is not None and _key(held) >= _key(copy)

    def _stale_ids(self) -> tuple[str, ...]:
        """Unfinished tasks whose newest copy here predates the current lead's term."""
        return tuple(
            c.task.task_id
            for c in self.copies.values()
            if c.term < self.term and not is_terminal(c.task)
        )[:IDS_CHUNK]

    def _mark(self, seq: int) -> None:
        wm = self._wm
        if seq <= wm.hw:
            return
        wm.above.add(seq)
        while wm.hw + 1 in wm.above:
            wm.hw += 1
            wm.above.discard(wm.hw)

    def _hold(self, copy: TaskCopy) -> None:
        """Hold ``copy`` as this node's copy of its task (the digest follows)."""
        task_id = copy.task.task_id
        self.digest.replace(self.copies.get(task_id), copy)
        self.copies[task_id] = copy
        key = _key(copy)
        if key > self._top:
            self._top = key

    def _newer(self, copy: TaskCopy) -> bool:
        known = self.copies.get(copy.task.task_id)
        return known is None or _key(copy) > _key(known)

    def _take(self, copy: TaskCopy, out: list[TaskEffect]) -> None:
        """Hold a newer copy: events, and clear the outboxes it settles."""
        task = copy.task
        old = self.copies.get(task.task_id)
        self._hold(copy)
        kind = _event_for(old.task if old else None, task)
        if kind is not None:
            self._event(kind, task, out)
        entry = self._reports.get(task.task_id)
        if entry is not None:
            report = entry[0]
            settled = task.attempt > report.attempt or (
                task.attempt == report.attempt
                and (task.state not in ACTIVE_STATES or task.assigned_to != self.self_id)
            )
            if settled:
                del self._reports[task.task_id]
                out.append(SaveOutbox(f"report:{task.task_id}", False))
        if copy.term > 0 and task.task_id in self._submits:
            del self._submits[task.task_id]  # the lead has it (it wrote this copy)
            out.append(SaveOutbox(f"submit:{task.task_id}", False))
        # The lead moved the task off this node: stop a run that is no longer ours.
        run = self._runs.get(task.task_id)
        if run is not None and (
            task.attempt > run or task.assigned_to != self.self_id or is_terminal(task)
        ):
            del self._runs[task.task_id]
            out.append(CancelSkill(task.task_id, "moved off this node"))

    # ---- agent ------------------------------------------------------------------------

    def _on_assign(self, sender: str, copy: TaskCopy, now: float, out: list[TaskEffect]) -> None:
        task = copy.task
        fence = task.assignment
        refuse = ""
        if sender != self.lead or fence is None or fence.term > self.term:
            # Only the proven lead of our term assigns: anyone else's claim (whatever term
            # it names) is refused and moves nothing, not even the newest term seen.
            out.append(Refused("assign_not_lead", sender, f"task {task.task_id}"))
            return
        if fence.lead != sender or task.assigned_to != self.self_id:
            refuse = "assignment does not name this node and its sender as lead"
        elif fence.term < self.max_term:
            refuse = f"stale lead term {fence.term} (newest seen {self.max_term})"
        elif self._not_started.get(task.task_id) == task.attempt:
            refuse = f"attempt {task.attempt} was answered 'not started' here: refused"
        if refuse:
            if fence is not None and fence.lead == sender:
                out.append(
                    Send(
                        sender,
                        TaskReport(
                            task.task_id,
                            task.attempt,
                            ReportKind.REJECTED,
                            code="fenced",
                            message=refuse,
                        ),
                    )
                )
            return
        assert fence is not None
        self.max_term = max(self.max_term, fence.term)
        running = self._runs.get(task.task_id)
        if running == task.attempt:
            self._deliver(TaskReport(task.task_id, task.attempt, ReportKind.STARTED), now, out)
            return  # a resent assignment: already running
        entry = self._reports.get(task.task_id)
        if entry is not None and entry[0].attempt == task.attempt:
            self._resend(entry[0], now, out)  # already finished here: tell it again
            return
        if running is not None:
            del self._runs[task.task_id]
            out.append(CancelSkill(task.task_id, "superseded by a newer attempt"))
        if self._newer(copy):
            self._take(copy, out)
            # Committed before the run starts and STARTED leaves, so a restarted agent
            # knows what it lost; not fsync'd: a host that dies is declared dead by
            # membership, and the lead handles its tasks as lost anyway.
            out.append(StoreCopies((copy,), durable=False))
        why = ""
        if self.draining:
            why = "busy: this agent is shutting down"
        elif task.skill not in self._skills():
            why = f"skill {task.skill!r} is not installed here"
        elif len(self._runs) >= self.max_concurrent:
            why = f"busy: {len(self._runs)} tasks running, at most {self.max_concurrent}"
        if why:
            code = "unknown_skill" if "installed" in why else "busy"
            self._report(
                task.task_id, task.attempt, ReportKind.REJECTED, now, out, code=code, message=why
            )
            return
        self._runs[task.task_id] = task.attempt
        out.append(RunSkill(task))
        # STARTED waits a moment: a skill that finishes sooner says COMPLETED instead (it
        # implies the start), which spares a report and a task change per short task.
        self._starting[task.task_id] = (task.attempt, now + self.cfg.started_delay)

    def _on_cancel(self, sender: str, msg: TaskCancel, out: list[TaskEffect]) -> None:
        if sender != self.lead:
            return
        attempt = self._runs.get(msg.task_id)
        if attempt is not None and msg.attempt in (0, attempt):
            del self._runs[msg.task_id]
            out.append(CancelSkill(msg.task_id, msg.reason))

    def skill_progress(
        self,
        task_id: str,
        attempt: int,
        pct: float,
        message: str,
        checkpoint: bytes | None,
        now: float,
    ) -> list[TaskEffect]:
        """The local run reports progress (and maybe a checkpoint). Best effort."""
        if self._runs.get(task_id) != attempt:
            return []
        report = TaskReport(task_id, attempt, ReportKind.PROGRESS, pct, message[:500], checkpoint)
        out: list[TaskEffect] = []
        self._deliver(report, now, out)
        self._flush_updates(out)
        return out

    def skill_done(
        self,
        task_id: str,
        attempt: int,
        ok: bool,
        result: Any,
        code: str,
        message: str,
        now: float,
    ) -> list[TaskEffect]:
        """The local run ended. Its outcome is reported reliably."""
        self._starting.pop(task_id, None)
        if self._runs.get(task_id) != attempt:
            return []  # cancelled or superseded: the lead no longer wants this outcome
        del self._runs[task_id]
        out: list[TaskEffect] = []
        if ok:
            self._report(task_id, attempt, ReportKind.COMPLETED, now, out, result=result)
        else:
            self._report(
                task_id, attempt, ReportKind.FAILED, now, out, code=code, message=message[:1000]
            )
        self._flush_updates(out)
        return out

    def skill_handoff(
        self, task_id: str, attempt: int, target: str, checkpoint: bytes | None, now: float
    ) -> list[TaskEffect]:
        """The local run asked to hand its task to ``target`` ("" = the best other agent)
        with ``checkpoint``. If the lead refuses, the task fails with ``handoff_refused``."""
        self._starting.pop(task_id, None)
        if self._runs.get(task_id) != attempt:
            return []
        del self._runs[task_id]
        self._handoffs[task_id] = attempt
        op = TaskOp(TaskOpKind.HANDOFF, task_id, self.self_id, target, checkpoint)
        out: list[TaskEffect] = []
        if self.role is Role.LEAD:
            try:
                self._lead_op(op, now, out)
                self._handoffs.pop(task_id, None)
            except TaskError as exc:
                self._handoff_refused(task_id, str(exc), now, out)
        elif self.lead is not None:
            out.append(Send(self.lead, op))
        else:
            self._handoff_refused(task_id, "no lead", now, out)
        self._flush_updates(out)
        return [e for e in out if not isinstance(e, OpDone)]

    def _handoff_refused(self, task_id: str, why: str, now: float, out: list[TaskEffect]) -> None:
        attempt = self._handoffs.pop(task_id, None)
        if attempt is not None:
            self._report(
                task_id,
                attempt,
                ReportKind.FAILED,
                now,
                out,
                code="handoff_refused",
                message=why[:500],
            )

    def _report(
        self,
        task_id: str,
        attempt: int,
        kind: ReportKind,
        now: float,
        out: list[TaskEffect],
        **fields: Any,
    ) -> None:
        """Record an outcome in the outbox and send it. The outbox entry is committed but
        not fsync'd: after a meshd crash it is resent; after a host crash the lead has
        already declared the agent dead and handled the task as lost."""
        report = TaskReport(task_id, attempt, kind, **fields)
        self._reports[task_id] = (report, _Pending(now))
        out.append(SaveOutbox(f"report:{task_id}", True, report, durable=False))
        self._resend(report, now, out)

    def _resend(self, report: TaskReport, now: float, out: list[TaskEffect]) -> None:
        entry = self._reports.get(report.task_id)
        if entry is not None:
            pending = entry[1]
            pending.tries += 1
            pending.acked_by = None
            pending.next_try = now + min(4.0, RESEND * pending.tries)
        self._deliver(report, now, out)

    def _deliver(self, report: TaskReport, now: float, out: list[TaskEffect]) -> None:
        if self.lead is None:
            return
        if self.lead == self.self_id:
            if self.role is Role.LEAD:
                self._lead_report(self.self_id, report, now, out)
        else:
            out.append(Send(self.lead, report))

    # ---- acks -------------------------------------------------------------------------

    def _on_ack(self, sender: str, ack: TaskAck, now: float, out: list[TaskEffect]) -> None:
        kind, _, op = ack.code.partition(":")
        if kind == "submit" and ack.task_id in self._submits:
            if ack.ok:
                del self._submits[ack.task_id]
                out.append(SaveOutbox(f"submit:{ack.task_id}", False))
            elif ack.message.startswith("refused"):
                del self._submits[ack.task_id]
                out.append(SaveOutbox(f"submit:{ack.task_id}", False))
                self._refused(ack, out)
            # "not lead": keep it; it goes to the right lead at the next try.
        elif kind == "report":
            entry = self._reports.get(ack.task_id)
            if entry is not None and ack.ok:
                entry[1].acked_by = sender
        elif kind == "held":
            self._on_held(sender, ack, now, out)
        elif kind == "op":
            if op == TaskOpKind.HANDOFF.value and ack.task_id in self._handoffs:
                if ack.ok:
                    del self._handoffs[ack.task_id]
                else:
                    self._handoff_refused(ack.task_id, ack.message, now, out)
                return
            out.append(OpDone(ack.task_id, op, ack.ok, ack.message))

    def _refused(self, ack: TaskAck, out: list[TaskEffect]) -> None:
        """The lead refused a submit for good: fail the origin's copy with the reason."""
        copy = self.copies.get(ack.task_id)
        if copy is None or copy.term > 0:
            return
        task = copy.task
        error = TaskFailure("refused", ack.message)
        failed = replace(task, state=TaskState.FAILED, error=error)
        new = TaskCopy(0, 1, failed)
        self._take(new, out)
        out.append(StoreCopies((new,)))

    # ---- lead -------------------------------------------------------------------------

    def _ack(
        self,
        to: str,
        task_id: str,
        code: str,
        out: list[TaskEffect],
        ok: bool = True,
        message: str = "",
    ) -> None:
        if to != self.self_id:
            out.append(Send(to, TaskAck(task_id, ok, code, message)))

    def _lead_submit(
        self, sender: str, copy: TaskCopy, now: float, out: list[TaskEffect], ack: bool = True
    ) -> None:
        task = copy.task
        if self.role is Role.GATHERING:
            self._held_submits.append((sender, copy))
            return
        if self.role is not Role.LEAD or self.scheduler is None:
            if ack:
                self._ack(sender, task.task_id, "submit", out, False, "not lead")
            return
        if task.origin != sender:
            self._ack(sender, task.task_id, "submit", out, False, "refused: origin mismatch")
            return
        try:
            effects = self.scheduler.submit(task, now)
        except TaskError as exc:
            if ack:
                self._ack(sender, task.task_id, "submit", out, False, f"refused: {exc}")
            return
        self._lead_effects(effects, now, out)
        if ack and not effects:
            # A resent submit of a task already taken: acknowledge it so the origin stops.
            # A first submit needs no ack: the origin settles it when the lead's
            # published copy of the task arrives (one message fewer per task).
            self._ack(sender, task.task_id, "submit", out)

    def _lead_report(self, sender: str, r: TaskReport, now: float, out: list[TaskEffect]) -> None:
        sched = self.scheduler
        if sched is None or self.role is not Role.LEAD:
            return  # gathering or not lead: the agent resends to the lead once there is one
        k = r.kind
        if k is ReportKind.STARTED:
            eff = sched.on_started(r.task_id, sender, now, r.attempt)
        elif k is ReportKind.PROGRESS:
            eff = sched.on_progress(
                r.task_id, sender, r.pct, r.message, now, r.checkpoint, r.attempt
            )
        elif k is ReportKind.COMPLETED:
            eff = sched.on_completed(r.task_id, sender, r.result, now, r.attempt)
        elif k is ReportKind.FAILED:
            failure = TaskFailure(r.code or "error", r.message)
            eff = sched.on_failed(r.task_id, sender, failure, now, r.attempt)
        elif k is ReportKind.REJECTED:
            eff = sched.on_rejected(r.task_id, sender, r.message or r.code, now, r.attempt)
        else:
            eff = sched.on_lost(r.task_id, sender, now, r.attempt)
        self._lead_effects(eff, now, out)
        if k in _RELIABLE and not eff:
            # A duplicate or stale outcome: acknowledge it so the agent stops resending.
            # A new one is settled by the published copy it produced.
            self._ack(sender, r.task_id, "report", out)

    def _on_report(self, sender: str, r: TaskReport, now: float, out: list[TaskEffect]) -> None:
        if self.role is Role.LEAD:
            self._lead_report(sender, r, now, out)
        elif r.kind in _RELIABLE and self.role is Role.FOLLOWER:
            self._ack(sender, r.task_id, "report", out, False, "not lead")

    def _on_op(self, sender: str, op: TaskOp, now: float, out: list[TaskEffect]) -> None:
        code = f"op:{op.op.value}"
        if self.role is not Role.LEAD:
            self._ack(sender, op.task_id, code, out, False, "not lead: try again in a moment")
            return
        if op.op is TaskOpKind.HANDOFF and op.actor != "operator" and op.actor != sender:
            self._ack(sender, op.task_id, code, out, False, "an agent hands off only its own")
            return
        try:
            effects: list[TaskEffect] = []
            self._lead_op(op, now, effects, origin=sender)
        except TaskError as exc:
            self._ack(sender, op.task_id, code, out, False, str(exc))
            return
        out.extend(e for e in effects if not isinstance(e, OpDone))
        self._ack(sender, op.task_id, code, out)

    def _lead_effects(
        self, effects: Sequence[SchedulerEffect], now: float, out: list[TaskEffect]
    ) -> None:
        """Carry out the scheduler's effects: stamp and store copies, assign, cancel..."""
        for eff in effects:
            if isinstance(eff, TaskChanged):
                self._seq += 1
                copy = TaskCopy(self.term, self._seq, eff.task)
                old = self.copies.get(eff.task.task_id)
                self._take(copy, out)
                out.append(StoreCopies((copy,), durable=False, sync_soon=True))
                self._updates.append(copy)
                self._audit(old.task if old else None, eff.task, out)
            elif isinstance(eff, AssignTask):
                copy = self.copies[eff.task.task_id]
                if not copy.task.idempotent and self._quorum() > 1:
                    confirm = _Confirm(copy, eff.to, {self.self_id}, now + CONFIRM_RESEND)
                    self._confirming[copy.task.task_id] = confirm
                else:
                    self._dispatch(copy, eff.to, now, out)
            elif isinstance(eff, CancelOnAgent):
                if eff.node == self.self_id:
                    if self._runs.pop(eff.task_id, None) is not None:
                        out.append(CancelSkill(eff.task_id, eff.reason))
                else:
                    out.append(Send(eff.node, TaskCancel(eff.task_id, 0, eff.reason)))
            elif isinstance(eff, TaskFinished):
                pass  # the origin learns it from the published copy (or catches up)
            elif isinstance(eff, RequestVerify):
                ok, reason = (
                    (True, "no verify step")
                    if self._verifier is None
                    else (self._verifier(eff.task))
                )
                sched = self.scheduler
                assert sched is not None
                self._lead_effects(
                    sched.on_verified(eff.task.task_id, ok, now, self.self_id, reason), now, out
                )

    def _audit(self, old: Task | None, new: Task, out: list[TaskEffect]) -> None:
        """Coordination decisions worth a durable record."""
        if new.state is TaskState.ASSIGNED and (old is None or old.assigned_to != new.assigned_to):
            again = old is not None and old.attempt > 0
            self._event(
                "TASK_REASSIGNED" if again else "TASK_ASSIGNED",
                new,
                out,
                audit=True,
                detail=f"to {new.assigned_to}",
            )
        elif new.state is TaskState.WAITING_APPROVAL and (
            old is None or old.state is not new.state
        ):
            self._event(
                "TASK_WAITING_APPROVAL",
                new,
                out,
                audit=True,
                detail=f"skill {new.skill} needs an operator's approval",
            )
        elif (
            new.state is TaskState.PENDING
            and old is not None
            and old.state is TaskState.WAITING_APPROVAL
        ):
            self._event(
                "TASK_APPROVED",
                new,
                out,
                audit=True,
                detail=new.history[-1].reason if new.history else "",
            )
        elif new.state is TaskState.FAILED and (old is None or old.state is not new.state):
            err = new.error
            if err is not None and err.code == "denied":
                self._event("TASK_DENIED", new, out, audit=True, detail=err.message)
                return
            self._event(
                "TASK_FAILED",
                new,
                out,
                audit=True,
                detail=f"{err.code}: {err.message}" if err else "",
            )

    def _event(
        self, kind: str, task: Task, out: list[TaskEffect], audit: bool = False, detail: str = ""
    ) -> None:
        """An :class:`~meshd.effects.Emit` about ``task`` (``kind`` TASK_SUBMITTED,
        TASK_ASSIGNED, TASK_STARTED, TASK_PROGRESS, TASK_COMPLETED, TASK_VERIFIED,
        TASK_FAILED, TASK_CANCELLED, TASK_RETRY, TASK_REQUEUED...). ``audit``: a
        coordination decision of this node (it leads) for the durable audit log, stamped
        with the lead's term. Progress is told only on the task's origin (its client is
        the one watching)."""
        if kind == "TASK_PROGRESS" and task.origin != self.self_id:
            return
        fields: dict[str, Any] = {
            "task_id": task.task_id,
            "skill": task.skill,
            "state": task.state.value,
            "node": task.assigned_to,
            "origin": task.origin,
        }
        if detail:
            fields["detail"] = detail
        if task.error is not None and task.state is TaskState.FAILED:
            fields["error"] = {"code": task.error.code, "message": task.error.message}
        if audit:
            fields["term"] = self.term
        out.append(Emit(kind, fields, audit))

    def _flush_updates(self, out: list[TaskEffect]) -> None:
        """Publish the copies written in this step (chunked)."""
        if not self._updates:
            return
        ups, self._updates = self._updates, []
        for i in range(0, len(ups), CHUNK):
            out.append(Publish(TaskUpdate(self._seq, tuple(ups[i : i + CHUNK]))))

    # ---- sync -------------------------------------------------------------------------

    def _on_sync_req(self, sender: str, req: TaskSyncReq, out: list[TaskEffect]) -> None:
        since = (req.since_term, req.since_seq)
        if since >= _NOTHING_SINCE and not req.unfinished:
            # A fetch by ids (digest exchange): no scan of every copy.
            found = (self.copies.get(task_id) for task_id in dict.fromkeys(req.ids))
            picked = [c for c in found if c is not None]
        else:
            wanted = set(req.ids)
            picked = [
                c
                for c in self.copies.values()
                if _key(c) > since
                or c.task.task_id in wanted
                or (req.unfinished and not is_terminal(c.task))
            ]
        picked.sort(key=_key)
        if not picked:
            out.append(Send(sender, TaskSync((), False)))
        for i in range(0, len(picked), CHUNK):
            chunk = tuple(picked[i : i + CHUNK])
            out.append(Send(sender, TaskSync(chunk, i + CHUNK < len(picked))))

    def _on_sync(self, sender: str, msg: TaskSync, now: float, out: list[TaskEffect]) -> None:
        copies = self._entitled(sender, msg.copies, out)
        if len(copies) < len(msg.copies):
            msg = TaskSync(tuple(copies), msg.more)
        if self.role is not Role.FOLLOWER:
            self._note_conflicts(msg.copies)
        fresh = [c for c in msg.copies if self._newer(c)]
        for copy in fresh:
            self._take(copy, out)
        wm = self._wm
        for copy in msg.copies:
            if copy.term == wm.term:
                self._mark(copy.seq)
        if not msg.more and sender == self.lead and wm.asked_hi > wm.hw:
            # The lead keeps only the newest copy of a task, so a missed seq may never
            # come; but a complete answer to "everything after hw" brings us up to date
            # as of the seq_hi we had seen when we asked.
            wm.hw = wm.asked_hi
            wm.above = {x for x in wm.above if x > wm.hw}
            while wm.hw + 1 in wm.above:
                wm.hw += 1
                wm.above.discard(wm.hw)
        if fresh:
            # Durable while gathering: the new lead resumes from these copies.
            out.append(StoreCopies(tuple(fresh), durable=self.role is Role.GATHERING))
        gather = self._gather
        if gather is not None and not msg.more and sender in gather.fetching:
            gather.fetching[sender] -= 1
            if gather.fetching[sender] <= 0:
                self._gathered(sender, now, out)
        elif self.role is Role.LEAD:
            self._adopt(fresh, now, out)
            self._annotate(now, out)

    def _adopt(self, fresh: Sequence[TaskCopy], now: float, out: list[TaskEffect]) -> None:
        """Copies newer than ours that reach the lead after it resumed (a node that was
        cut off held them): the scheduler takes them over."""
        sched = self.scheduler
        if sched is None or not fresh:
            return
        for copy in fresh:
            if copy.term > 0:
                self._lead_effects(sched.adopt(copy.task, now), now, out)
        self._find_doubts(now, out)

    def _note_conflicts(self, copies: Iterable[TaskCopy]) -> None:
        """Copies a lead receives from others: where one finished task has two different
        outcomes (a partitioned lead decided one, the majority's the other), the newer
        copy wins everywhere and the lead notes the other outcome in its history."""
        for copy in copies:
            held = self.copies.get(copy.task.task_id)
            if held is None or _key(held) == _key(copy) or held.term == 0 or copy.term == 0:
                continue
            if not (is_terminal(held.task) and is_terminal(copy.task)):
                continue
            if held.task.state is copy.task.state:
                continue
            loser = copy if _key(copy) < _key(held) else held
            self._conflicts[copy.task.task_id] = loser

    def _annotate(self, now: float, out: list[TaskEffect]) -> None:
        sched = self.scheduler
        if sched is None or not self._conflicts:
            return
        conflicts, self._conflicts = self._conflicts, {}
        for task_id, loser in conflicts.items():
            task = loser.task
            other = task.state.value
            if task.error is not None:
                other += f" ({task.error.code})"
            by = f" on {task.assigned_to}" if task.assigned_to else ""
            note = f"note: {other}{by} in term {loser.term}, superseded"
            self._lead_effects(sched.annotate(task_id, note, now, self.self_id), now, out)

    # ---- digests ---------------------------------------------------------------------------

    def _send_digest(self, to: str, out: list[TaskEffect]) -> None:
        """Our buckets: ``to`` answers with the keys of its copies in the buckets that
        differ (TASK_KEYS)."""
        digest = self.digest
        out.append(Send(to, TaskDigest(self.term, digest.root(), tuple(digest.buckets))))

    def _on_digest(self, sender: str, msg: TaskDigest, now: float, out: list[TaskEffect]) -> None:
        if not msg.buckets:
            # The lead's root: a follower that differs asks for an exchange (rate-limited).
            # Compared only when we hold exactly the lead's copies of its term up to the
            # root's seq: not while updates are in flight, nor with a newer copy that
            # reached us directly (an assignment).
            wm = self._wm
            comparable = (
                msg.term == self.term == wm.term
                and wm.hw >= msg.seq
                and self._top <= (msg.term, msg.seq)
            )
            if (
                sender == self.lead
                and self.role is Role.FOLLOWER
                and comparable
                and msg.root != self.digest.root()
                and now - self._digest_asked >= DIGEST_ASK_INTERVAL
            ):
                self._digest_asked = now
                self._send_digest(sender, out)
            return
        differ = sorted(self.digest.differing(msg.buckets))
        keys = [
            TaskKey(c.task.task_id, c.term, c.seq)
            for c in copies_in(self.copies.values(), set(differ))
        ]
        buckets = tuple(differ)
        for i in range(0, max(1, len(keys)), KEYS_CHUNK):
            chunk = tuple(keys[i : i + KEYS_CHUNK])
            out.append(Send(sender, TaskKeys(buckets, chunk, i + KEYS_CHUNK < len(keys))))

    def _on_keys(self, sender: str, msg: TaskKeys, now: float, out: list[TaskEffect]) -> None:
        """The keys of ``sender``'s copies in the buckets where our digests differ: fetch
        what is newer there, send what is newer (or only) here. Both sides then hold the
        newer copy of every task either held in those buckets."""
        entry = self._keys_in.get(sender)
        if entry is None or entry[0] != msg.buckets:
            if len(self._keys_in) >= MAX_KEY_PEERS and sender not in self._keys_in:
                del self._keys_in[next(iter(self._keys_in))]
            entry = (msg.buckets, {})
            self._keys_in[sender] = entry
        buckets, theirs = entry
        wanted = set(buckets)
        limit = 2 * len(self.copies) + KEYS_CHUNK  # more keys than that: not an honest peer
        for key in msg.keys:
            if len(theirs) < limit and bucket_of(key.task_id) in wanted:
                theirs[key.task_id] = (key.term, key.seq)
        if msg.more:
            return
        del self._keys_in[sender]
        fetch = [
            task_id
            for task_id, key in theirs.items()
            if (mine := self.copies.get(task_id)) is None or _key(mine) < key
        ]
        give = [
            c
            for c in copies_in(self.copies.values(), wanted)
            if theirs.get(c.task.task_id, (-1, -1)) < _key(c)
        ]
        for i in range(0, len(give), CHUNK):
            out.append(Send(sender, TaskSync(tuple(give[i : i + CHUNK]), i + CHUNK < len(give))))
        requests = 0
        for i in range(0, len(fetch), IDS_CHUNK):
            out.append(Send(sender, TaskSyncReq(*_NOTHING_SINCE, tuple(fetch[i : i + IDS_CHUNK]))))
            requests += 1
        gather = self._gather
        if gather is not None and sender in gather.waiting:
            if requests:
                gather.fetching[sender] = requests
            else:
                self._gathered(sender, now, out)

    def _gathered(self, sender: str, now: float, out: list[TaskEffect]) -> None:
        """``sender`` answered a gathering lead completely."""
        gather = self._gather
        if gather is None:
            return
        gather.fetching.pop(sender, None)
        if sender in gather.waiting:
            gather.waiting.discard(sender)
            gather.responded.add(sender)
            gather.sources += 1
        self._maybe_resume(now, out)

    # ---- at most once: confirmed assignments, in-doubt tasks --------------------------------

    def _dispatch(self, copy: TaskCopy, to: str, now: float, out: list[TaskEffect]) -> None:
        """Send an assignment to its agent (ourselves included) — only under a valid lead
        lease; without one it is parked until the lease holds again."""
        if not self._lease():
            self._parked[copy.task.task_id] = (copy, to)
            self._park_due = now + PARK_RETRY
            return
        if to == self.self_id:
            self._on_assign(self.self_id, copy, now, out)
        else:
            out.append(Send(to, TaskAssign(copy)))
            self._unstarted[copy.task.task_id] = _Unstarted(copy, to, now + ASSIGN_RESEND)
            heapq.heappush(self._unstarted_due, (now + ASSIGN_RESEND, copy.task.task_id))

    def _current(self, copy: TaskCopy) -> bool:
        held = self.copies.get(copy.task.task_id)
        return held is not None and _key(held) == _key(copy)

    def _on_held(self, sender: str, ack: TaskAck, now: float, out: list[TaskEffect]) -> None:
        confirm = self._confirming.get(ack.task_id)
        if confirm is None or self.role is not Role.LEAD:
            return
        _, _, seq = ack.code.partition(":")
        voter = self._members.get(sender)
        if voter is None or not seq.isdigit() or int(seq) != confirm.copy.seq:
            return
        confirm.acks.add(sender)
        self._release(ack.task_id, now, out)

    def _release(self, task_id: str, now: float, out: list[TaskEffect]) -> None:
        """A quorum holds the assignment durably: any later lead will find it, so the
        agent may start it now."""
        confirm = self._confirming.get(task_id)
        if confirm is None or len(confirm.acks) < self._quorum():
            return
        del self._confirming[task_id]
        if self._current(confirm.copy):
            self._dispatch(confirm.copy, confirm.to, now, out)

    def _on_query(self, sender: str, q: TaskQuery, now: float, out: list[TaskEffect]) -> None:
        """A new lead asks what became of an assignment of an earlier term. Answered only
        once we follow that lead (so that older assignment is fenced off here for good)."""
        if sender != self.lead or q.term != self.term or self.role is not Role.FOLLOWER:
            return
        self._answer_query(q.task_id, q.attempt, now, out)

    def _answer_query(self, task_id: str, attempt: int, now: float, out: list[TaskEffect]) -> None:
        """What became of ``attempt`` here: running, finished (the outcome, from the
        outbox or from a copy a lead wrote of it), lost, or never started."""
        if self._runs.get(task_id) == attempt:
            self._deliver(TaskReport(task_id, attempt, ReportKind.STARTED), now, out)
            return
        entry = self._reports.get(task_id)
        if entry is not None and entry[0].attempt == attempt:
            self._resend(entry[0], now, out)
            return
        outcome = self._outcome_held(task_id, attempt)
        if outcome is not None:
            kind, fields = outcome
            self._report(task_id, attempt, kind, now, out, **fields)
            return
        # From now on this attempt is refused here, should its assignment arrive late.
        self._not_started.pop(task_id, None)
        self._not_started[task_id] = attempt
        if len(self._not_started) > MAX_REFUSED:
            del self._not_started[next(iter(self._not_started))]
        self._report(
            task_id,
            attempt,
            ReportKind.REJECTED,
            now,
            out,
            code="not_started",
            message="never started here; this attempt is refused here from now on",
        )

    def _outcome_held(self, task_id: str, attempt: int) -> tuple[ReportKind, dict[str, Any]] | None:
        """The outcome of our run of ``attempt`` as the copy we hold records it (the lead
        that took our report may be gone, and its copy settled our outbox): None when the
        copy shows no start of that attempt here."""
        task = self.get(task_id)
        if task is None or task.attempt != attempt or task.assigned_to != self.self_id:
            return None
        state = task.state
        if state in (TaskState.COMPLETE, TaskState.VERIFIED):
            return ReportKind.COMPLETED, {"result": task.result}
        if state is TaskState.FAILED and task.error is not None:
            error = task.error
            return ReportKind.FAILED, {"code": error.code, "message": error.message[:1000]}
        if state is TaskState.RUNNING:
            # It started here and is not running any more: the run was lost (a restart).
            return ReportKind.LOST, {"message": "the run was lost (the agent restarted)"}
        return None

    def _find_doubts(self, now: float, out: list[TaskEffect]) -> None:
        """A new lead: tasks an earlier term assigned to a live agent. The agent is asked
        before anything is decided (it may be running it, may have finished it, or never
        got it: the assignment was lost with the old lead's link, and only the answer
        "not started" lets the task move on without waiting for its attempt timer)."""
        for copy in self.copies.values():
            task = copy.task
            fence = task.assignment
            holder = task.assigned_to
            if task.state not in ACTIVE_STATES or holder is None:
                continue
            if fence is None or fence.term >= self.term:
                continue
            member = self._members.get(holder)
            if holder != self.self_id and (member is None or not member.alive):
                continue  # a dead holder: agent_lost ("may have run") at resume
            if task.task_id not in self._doubt:
                self._doubt[task.task_id] = _Doubt(holder, task.attempt, now)
        self._ask_doubts(now, out)

    def _ask_doubts(self, now: float, out: list[TaskEffect]) -> None:
        for task_id, doubt in list(self._doubt.items()):
            task = self.get(task_id)
            if (
                task is None
                or task.assigned_to != doubt.holder
                or task.attempt != doubt.attempt
                or task.state not in ACTIVE_STATES
            ):
                del self._doubt[task_id]  # answered, or decided otherwise meanwhile
                continue
            if doubt.next_try > now:
                continue
            doubt.next_try = now + RESEND
            if doubt.holder == self.self_id:
                self._answer_query(task_id, doubt.attempt, now, out)
            else:
                out.append(Send(doubt.holder, TaskQuery(task_id, doubt.attempt, self.term)))

    # ---- lead changes, members, time ----------------------------------------------------

    def lead_changed(self, lead: str | None, term: int, now: float) -> list[TaskEffect]:
        """The election's lead is now ``lead`` (None: none) at ``term``."""
        out: list[TaskEffect] = []
        self.max_term = max(self.max_term, term)
        if lead == self.lead and term == self.term:
            return out
        was_lead = self.role is not Role.FOLLOWER
        self.lead, self.term = lead, term
        self._confirming.clear()
        self._parked.clear()
        self._doubt.clear()
        self._unstarted.clear()
        self._unstarted_due.clear()
        if was_lead:
            self.scheduler = None
            self._gather = None
            self.role = Role.FOLLOWER
            for sender, copy in self._held_submits:
                self._ack(sender, copy.task.task_id, "submit", out, False, "not lead")
            self._held_submits.clear()
        if lead is None:
            return out
        if lead == self.self_id:
            self._start_gather(now, out)
        else:
            self._wm = _Watermark(term)
            newest = max((_key(c) for c in self.copies.values() if c.term > 0), default=(0, 0))
            out.append(Send(lead, TaskSyncReq(*newest, self._stale_ids())))
            out.append(Send(lead, self.agent_info()))
        self._retarget(now, out)
        self._flush_updates(out)
        return out

    def _retarget(self, now: float, out: list[TaskEffect]) -> None:
        """A new lead: everything unacknowledged goes to it now."""
        for task_id in list(self._submits):
            self._send_submit(task_id, now, out)
        for report, _ in list(self._reports.values()):
            self._resend(report, now, out)

    def _start_gather(self, now: float, out: list[TaskEffect]) -> None:
        """A new lead first brings itself up to date: every live member answers its
        digest with the keys of its copies in the buckets that differ, and the lead fetches
        those newer than its own. It resumes once a
        quorum (itself included) has answered completely: any copy a quorum held — every
        non-idempotent assignment that was allowed to start — is then known to it."""
        alive = {m.node_id for m in self._members.values() if m.alive} - {self.self_id}
        self.role = Role.GATHERING
        self._gather = _Gather(alive, now + self.cfg.gather_timeout)
        self._seq = 0
        for node in sorted(alive):
            self._send_digest(node, out)
        self._maybe_resume(now, out)

    def _maybe_resume(self, now: float, out: list[TaskEffect]) -> None:
        gather = self._gather
        if gather is None:
            return
        quorate = len(gather.responded) + 1 >= self._quorum()
        if quorate and (not gather.waiting or now >= gather.deadline):
            self._resume(now, out)
        elif now >= gather.deadline:
            # No quorum yet: ask the live members that did not answer again.
            gather.deadline = now + self.cfg.gather_timeout
            for node in sorted(gather.waiting):
                gather.fetching.pop(node, None)
                self._send_digest(node, out)

    def _resume(self, now: float, out: list[TaskEffect]) -> None:
        gather = self._gather
        self._gather = None
        self.role = Role.LEAD
        check = self._needs_approval
        sched = Scheduler(self.cfg, now, (lambda t: check(t.skill)) if check else None)
        self.scheduler = sched
        tasks = [c.task for c in self.copies.values() if c.term > 0]
        unfinished = sum(1 for t in tasks if not is_terminal(t))
        self._lead_effects(sched.restore(tasks, now), now, out)
        self._lead_effects(sched.agents_changed(self._views(), now), now, out)
        self._lead_effects(sched.set_term(self.term, self.self_id, now), now, out)
        for task in tasks:
            holder = task.assigned_to
            if (
                task.state in ACTIVE_STATES
                and holder is not None
                and holder != self.self_id
                and not (holder in self._members and self._members[holder].alive)
            ):
                self._lead_effects(sched.agent_lost(holder, now), now, out)
        # Origins' copies the previous lead never took, and submits held while gathering.
        for copy in list(self.copies.values()):
            if (
                copy.term == 0
                and not is_terminal(copy.task)
                and sched.get(copy.task.task_id) is None
                and copy.task.task_id not in self._submits
            ):
                self._lead_submit(copy.task.origin, copy, now, out, ack=False)
        held, self._held_submits = self._held_submits, []
        for sender, copy in held:
            self._lead_submit(sender, copy, now, out)
        self._find_doubts(now, out)
        self._annotate(now, out)
        out.append(
            Emit(
                "TASKS_RESUMED",
                {
                    "unfinished": unfinished,
                    "sources": gather.sources if gather else 0,
                    "term": self.term,
                },
                audit=True,
            )
        )
        self._next_beacon = now
        self._next_digest = now + self.cfg.digest_interval
        self._retarget(now, out)

    def skills_changed(self, now: float) -> list[TaskEffect]:
        """This node's runnable skills changed (a pack installed, removed or revoked):
        tell the lead, which assigns from its agents' views."""
        out: list[TaskEffect] = []
        if self.role is Role.LEAD:
            self._agents_changed(now, out)
        elif self.lead is not None and self.lead != self.self_id:
            out.append(Send(self.lead, self.agent_info()))
        self._flush_updates(out)
        return out

    def members_changed(self, members: Sequence[Member], now: float) -> list[TaskEffect]:
        """The member view changed (this node included in ``members``)."""
        out: list[TaskEffect] = []
        before = self._members
        self._members = {m.node_id: m for m in members}
        gather = self._gather
        if gather is not None:
            gone = {
                n
                for n in gather.waiting
                if not self._members.get(n, Member(n, "", "", 0, False)).alive
            }
            gather.waiting -= gone
            self._maybe_resume(now, out)
        sched = self.scheduler
        if sched is not None and self.role is Role.LEAD:
            self._lead_effects(sched.agents_changed(self._views(), now), now, out)
            for node_id, old in before.items():
                new = self._members.get(node_id)
                if old.alive and (new is None or not new.alive):
                    self._infos.pop(node_id, None)
                    self._lead_effects(sched.agent_lost(node_id, now), now, out)
        self._flush_updates(out)
        return out

    def _agents_changed(self, now: float, out: list[TaskEffect]) -> None:
        sched = self.scheduler
        if sched is not None and self.role is Role.LEAD:
            self._lead_effects(sched.agents_changed(self._views(), now), now, out)

    def _views(self) -> list[AgentView]:
        views = []
        for m in self._members.values():
            if m.node_id == self.self_id:
                info: AgentInfo | None = self.agent_info()
            else:
                info = self._infos.get(m.node_id)
            if info is not None:
                caps, skills, limit = info.capabilities, info.skills, info.max_concurrent
            else:
                caps, limit = self._role_defaults(m.role)
                skills = tuple(self._skills())
            views.append(
                AgentView(
                    node_id=m.node_id,
                    name=m.name,
                    role=m.role,
                    capabilities=frozenset(caps),
                    skills=frozenset(skills),
                    priority=m.priority,
                    load=0,
                    max_concurrent=limit,
                    alive=m.alive,
                )
            )
        return views

    def tick(self, now: float) -> list[TaskEffect]:
        """Let time pass: resends, the gathering deadline, the scheduler's timers, the
        beacon."""
        out: list[TaskEffect] = []
        for task_id, pending in list(self._submits.items()):
            if pending.next_try <= now:
                self._send_submit(task_id, now, out)
        for report, pending in list(self._reports.values()):
            if pending.acked_by is None and pending.next_try <= now:
                self._resend(report, now, out)
        for task_id, (attempt, start_due) in list(self._starting.items()):
            if start_due <= now:
                del self._starting[task_id]
                if self._runs.get(task_id) == attempt:
                    self._deliver(TaskReport(task_id, attempt, ReportKind.STARTED), now, out)
        gather = self._gather
        if gather is not None and gather.deadline <= now:
            self._maybe_resume(now, out)
        sched = self.scheduler
        if sched is not None and self.role is Role.LEAD:
            due = sched.next_deadline()
            if due is not None and due <= now:
                self._lead_effects(sched.tick(now), now, out)
            if self._next_beacon <= now:
                self._next_beacon = now + self.cfg.beacon_interval
                if not self._updates:
                    out.append(Publish(TaskUpdate(self._seq, ())))
            if self._next_digest <= now:
                self._next_digest = now + self.cfg.digest_interval
                # After the updates it covers (the root includes them): a follower gets
                # them first, on the same PUB socket.
                self._flush_updates(out)
                out.append(Publish(TaskDigest(self.term, self.digest.root(), (), self._seq)))
            self._lead_tick(now, out)
        self._flush_updates(out)
        return out

    def _lead_tick(self, now: float, out: list[TaskEffect]) -> None:
        """Assignments waiting for a quorum (resent to those that did not confirm), for
        the lease (parked), and tasks in doubt (asked again)."""
        for task_id, confirm in list(self._confirming.items()):
            if not self._current(confirm.copy):
                del self._confirming[task_id]  # superseded (cancelled, timed out...)
                continue
            if confirm.next_try <= now:
                confirm.next_try = now + CONFIRM_RESEND
                update = TaskUpdate(self._seq, (confirm.copy,))
                for node_id, member in self._members.items():
                    if member.alive and node_id not in confirm.acks:
                        out.append(Send(node_id, update))
        if self._parked and self._park_due <= now:
            parked, self._parked = self._parked, {}
            self._park_due = float("inf")
            for copy, to in parked.values():
                if self._current(copy):
                    self._dispatch(copy, to, now, out)
        if self._doubt:
            self._ask_doubts(now, out)
        self._resend_unstarted(now, out)

    def _resend_unstarted(self, now: float, out: list[TaskEffect]) -> None:
        """Assignments due for another try (a heap: a burst of assignments costs nothing
        per tick)."""
        due = self._unstarted_due
        while due and due[0][0] <= now:
            at, task_id = heapq.heappop(due)
            unstarted = self._unstarted.get(task_id)
            if unstarted is None or unstarted.next_try != at:
                continue  # gone, or rescheduled
            copy = unstarted.copy
            if not self._current(copy):
                del self._unstarted[task_id]  # the agent reported (or the task moved on)
                continue
            unstarted.next_try = now + min(4.0, ASSIGN_RESEND * 2**unstarted.tries)
            unstarted.tries += 1
            heapq.heappush(due, (unstarted.next_try, task_id))
            task = copy.task
            if task.idempotent:
                out.append(Send(unstarted.to, TaskAssign(copy)))
            else:
                out.append(Send(unstarted.to, TaskQuery(task.task_id, task.attempt, self.term)))

    # ---- figures ------------------------------------------------------------------------

    def totals(self) -> dict[str, int]:
        """Tasks by state over every copy held (the mesh totals of ``meshctl status``)."""
        counts = {s.value: 0 for s in TaskState}
        for copy in self.copies.values():
            counts[copy.task.state.value] += 1
        return counts
