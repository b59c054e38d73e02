"""The whole pure node: membership + election + delegation, composed (no I/O).

:class:`Core` is what the daemon (:mod:`meshd.daemon.node`) and the simulator
(:mod:`meshd.sim`) both drive, so the scenarios tested in simulated time are the very code
that runs on sockets. Events go in (a message from an authenticated peer, a discovery,
the passage of time, a local request, a skill run's outcome) with ``now``; one list of
effects (:mod:`meshd.effects`) comes out, in the order it must be carried out.

Routing: every message counts as contact for the election (:meth:`Election.heard`) and as
proof of life for membership (election and task messages included: membership ignores
what it does not know, beyond the liveness it proves); election payloads then go to the
election, task payloads to the task machine.

Keeping the machines in step is internal: whenever membership's view changes, the
election gets the new voters and the task machine the new agents; whenever the lead or
the term moves, the task machine follows (it gathers state when this node became lead).

Time: ``now`` is monotonic seconds everywhere. The task machine stamps histories and
checks deadlines in wall-clock seconds, because a task's times must mean the same on every
node that holds a copy: Core gives it ``now + wall_offset``, a wall clock anchored once
(when the daemon starts) that advances with the monotonic clock and so never jumps.

Reach window: the election counts a peer reachable while it was heard recently. Peers
that are not the lead speak mostly through membership heartbeats, whose period grows
with the mesh beyond ``heartbeat_budget * heartbeat_interval`` members (see
:class:`~meshd.config.MembershipConfig`); Core keeps the election's window at two such
periods (never below ``election_timeout``), so that big meshes do not look unreachable.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

from meshd.config import ElectionConfig, MembershipConfig, TaskConfig
from meshd.effects import Effect, MemberChanged
from meshd.election import Election, LeadStatus, Voter
from meshd.election.cert import Signer
from meshd.membership import Membership, MemberView
from meshd.tasks.machine import Member, TaskMachine
from meshd.wire.messages import (
    LeadAck,
    LeadCert,
    LeadCertReq,
    LeadHeartbeat,
    Payload,
    StepDown,
    TaskOpKind,
    TaskPayloads,
    TaskReport,
    TransferReq,
    Vote,
    VoteReq,
    Voters,
)
from meshd.wire.records import MemberInfo, MemberRecord, MemberState, Task, TaskCopy
from meshd.wire.signing import sign_info, verify_signature

__all__ = ["ELECTION_PAYLOADS", "AgentSetup", "Core", "CoreEffect"]

#: Payload types the election machine handles.
ELECTION_PAYLOADS: Final = (
    VoteReq, Vote, LeadHeartbeat, LeadAck, StepDown, TransferReq, LeadCert, LeadCertReq,
    Voters,
)  # fmt: skip

#: Everything a Core step may return: the whole effect vocabulary.
CoreEffect: TypeAlias = Effect

_LIVE: Final = (MemberState.ALIVE, MemberState.SUSPECT)


def _accept_all(info: MemberInfo) -> bool:
    return True


@dataclass(frozen=True, slots=True)
class AgentSetup:
    """What this node's task machine needs to know about it as an agent.

    ``skills``: the skills it can run now (asked at each assignment: packs come and go).
    ``role_defaults``: capabilities and concurrency limit of a role, for members that
    have not told the lead theirs yet. ``verifier``: the verify step of a finished task
    (run when this node leads). ``needs_approval``: whether a skill needs an operator's
    approval per task.
    """

    config: TaskConfig
    skills: Callable[[], tuple[str, ...]]
    role_defaults: Callable[[str], tuple[tuple[str, ...], int]]
    max_concurrent: int
    capabilities: tuple[str, ...] = ()
    verifier: Callable[[Task], tuple[bool, str]] | None = None
    needs_approval: Callable[[str], bool] | None = None


class Core:
    """Membership, election and (with ``agent``) delegation of one node: events in,
    effects out.

    ``term`` / ``voted_for``: the durable election state read back from the store (the
    last :class:`~meshd.effects.Persist` carried out); ``term_known`` False: the stored
    term was lost (see :class:`~meshd.election.machine.Election`). ``rng`` seeds the machines.
    ``wall_offset``: wall-clock seconds minus monotonic seconds at start (see the module
    docstring). Without ``agent`` there is no task machine (membership and election only).
    ``sign``: this node's key (signs its member info and its votes; the daemon and the
    simulator always pass it). ``verify``: checks a member's info as it arrives (admission
    proof and signature); ``admit``: the check for discovered candidates (mDNS records
    carry no signature; default ``verify``).
    """

    def __init__(
        self,
        self_info: MemberInfo,
        membership_config: MembershipConfig,
        election_config: ElectionConfig,
        now: float,
        rng: random.Random,
        verify: Callable[[MemberInfo], bool] = _accept_all,
        term: int = 0,
        voted_for: str | None = None,
        *,
        term_known: bool = True,
        agent: AgentSetup | None = None,
        wall_offset: float = 0.0,
        sign: Signer | None = None,
        admit: Callable[[MemberInfo], bool] | None = None,
        voters: tuple[int, tuple[str, ...]] = (0, ()),
    ) -> None:
        self._mcfg = membership_config
        self.wall_offset = wall_offset
        self.membership = Membership(
            self_info,
            membership_config,
            now,
            rng,
            verify,
            admit=admit,
            sign=functools.partial(sign_info, sign) if sign is not None else None,
        )
        self.election = Election(
            self_info.node_id,
            self_info.priority,
            election_config,
            now,
            random.Random(rng.getrandbits(64)),
            term,
            voted_for,
            term_known,
            sign=sign,
            check_vote=self._check_vote if sign is not None else None,
            voters=voters,
        )
        #: The ``now`` of the step in progress (the task machine asks for the lease).
        self._now = now
        self.tasks: TaskMachine | None = None
        if agent is not None:
            self.tasks = TaskMachine(
                self_info.node_id,
                agent.config,
                skills=agent.skills,
                role_defaults=agent.role_defaults,
                max_concurrent=agent.max_concurrent,
                capabilities=agent.capabilities,
                verifier=agent.verifier,
                needs_approval=agent.needs_approval,
                quorum=self.election.quorum,
                lease=self._has_lease,
            )

    def _check_vote(self, node_id: str, data: bytes, sig: bytes) -> bool:
        """A vote's signature, checked with the voter's key from its member info."""
        if node_id == self.self_id:
            key = self.membership.self_info.ed25519_pk
        else:
            view = self.membership.get(node_id)
            if view is None:
                return False
            key = view.info.ed25519_pk
        return verify_signature(key, data, sig)

    # ---- queries -----------------------------------------------------------------------

    @property
    def self_id(self) -> str:
        return self.membership.self_id

    @property
    def self_info(self) -> MemberInfo:
        return self.membership.self_info

    @property
    def has_left(self) -> bool:
        return self.membership.has_left

    def members(self) -> list[MemberView]:
        return self.membership.members()

    def candidates(self) -> list[MemberInfo]:
        return self.membership.candidates()

    def digest(self) -> bytes:
        return self.membership.digest()

    def get(self, node_id: str) -> MemberView | None:
        return self.membership.get(node_id)

    def snapshot(self) -> list[MemberRecord]:
        return self.membership.snapshot()

    def status(self, now: float) -> LeadStatus:
        return self.election.status(now)

    def name_of(self, node_id: str) -> str:
        """A member's name (this node's own too); the id's first 12 digits if unknown."""
        if node_id == self.self_id:
            return self.self_info.name
        view = self.membership.get(node_id)
        return view.info.name if view is not None else node_id[:12]

    def _has_lease(self) -> bool:
        return self.election.has_lease(self._now)

    def wall(self, now: float) -> float:
        """The task machine's time at monotonic ``now`` (see the module docstring)."""
        return now + self.wall_offset

    def next_deadline(self) -> float:
        due = min(self.membership.next_deadline(), self.election.next_deadline())
        if self.tasks is not None:
            due = min(due, self.tasks.next_deadline() - self.wall_offset)
        return due

    def voters(self) -> list[Voter]:
        """The election's view of the members (this node included; restored members that
        have not answered yet count as DEAD)."""
        members = self.membership.members()
        out = [
            Voter(v.info.node_id, v.info.priority, v.state, v.state_since, v.last_heard is not None)
            for v in members
        ]
        # Members before a restart that have not answered yet count, as DEAD ones do: a
        # node restarted while cut off must not lead a mesh of one.
        dead = MemberState.DEAD
        out += [Voter(i.node_id, i.priority, dead, self._now) for i in self.membership.restored()]
        out.append(Voter(self.self_id, self.election.priority, MemberState.ALIVE))
        return out

    def agents(self) -> list[Member]:
        """The task machine's view of the members (this node included, alive)."""
        me = self.self_info
        out = [Member(me.node_id, me.name, me.role, me.priority, True)]
        for view in self.membership.members():
            info = view.info
            out.append(
                Member(info.node_id, info.name, info.role, info.priority, view.state in _LIVE)
            )
        return out

    # ---- events: the mesh --------------------------------------------------------------

    def receive(
        self, sender: str, payload: Payload, now: float, msg_id: bytes = b""
    ) -> list[CoreEffect]:
        """A message from ``sender`` (authenticated by the transport)."""
        self._now = now
        if sender == self.self_id:
            return []
        self.election.heard(sender, now)
        out: list[CoreEffect] = list(self.membership.receive(sender, payload, now, msg_id))
        self._sync(out, now)
        if isinstance(payload, ELECTION_PAYLOADS):
            out.extend(self.election.receive(sender, payload, now))
        self._follow(out, now)
        if self.tasks is not None and isinstance(payload, TaskPayloads):
            out.extend(self.tasks.receive(sender, payload, self.wall(now)))
        return out

    def tick(self, now: float) -> list[CoreEffect]:
        """Let time pass (call at :meth:`next_deadline`, or earlier: early calls are cheap)."""
        self._now = now
        out: list[CoreEffect] = list(self.membership.tick(now))
        self._sync(out, now)
        out.extend(self.election.tick(now))
        self._follow(out, now)
        if self.tasks is not None:
            out.extend(self.tasks.tick(self.wall(now)))
        return out

    def discovered(self, info: MemberInfo, now: float, source: str) -> list[CoreEffect]:
        """mDNS or a static seed proposes ``info`` (a candidate until it speaks)."""
        self._now = now
        out: list[CoreEffect] = list(self.membership.discovered(info, now, source))
        self._sync(out, now)
        self._follow(out, now)
        return out

    def restore(self, records: Iterable[MemberRecord], now: float) -> list[CoreEffect]:
        """The member records read back from the store at start."""
        self._now = now
        out: list[CoreEffect] = list(self.membership.restore(records, now))
        self._sync(out, now, force=True)  # restored members are voters even unlisted
        self._follow(out, now)
        return out

    def leave(self, now: float) -> list[CoreEffect]:
        """Graceful exit: a lead steps down first (so the others elect at once), then the
        LEAVEs go out."""
        self._now = now
        out: list[CoreEffect] = list(self.election.leave(now))
        out.extend(self.membership.leave(now))
        return out

    def set_priority(self, priority: int, now: float) -> list[CoreEffect]:
        """This node's lead priority changed (see :meth:`Election.set_priority`).

        Voters read a candidate's priority from its member info, so the new priority
        goes out as a new incarnation of this node's info (signed, published).
        """
        self._now = now
        out: list[CoreEffect] = list(self.membership.update_self(now, priority=priority))
        self._sync(out, now)
        out.extend(self.election.set_priority(priority, now))
        return out

    def request_transfer(self, target: str, now: float) -> list[CoreEffect]:
        """Hand the lead to ``target`` ("": step down), here or through the lead
        (raises LocalProtocolError when there is no lead to ask)."""
        self._now = now
        out: list[CoreEffect] = list(self.election.request_transfer(target, now))
        self._follow(out, now)
        return out

    # ---- events: delegation (only with an agent setup) ------------------------------------

    def _tm(self) -> TaskMachine:
        if self.tasks is None:
            raise RuntimeError("this Core has no task machine (no AgentSetup)")
        return self.tasks

    def load_tasks(
        self,
        copies: Iterable[TaskCopy],
        submits: Iterable[str],
        reports: Iterable[TaskReport],
        now: float,
    ) -> list[CoreEffect]:
        """Task state read back from the store at start (see :meth:`TaskMachine.load`)."""
        self._now = now
        tm = self._tm()
        out: list[CoreEffect] = list(tm.load(copies, submits, reports, self.wall(now)))
        out.extend(tm.members_changed(self.agents(), self.wall(now)))
        self._follow(out, now)
        return out

    def submit(self, task: Task, now: float) -> list[CoreEffect]:
        """A new task from a local client (raises TaskError when it is refused)."""
        self._now = now
        return list(self._tm().submit(task, self.wall(now)))

    def operator(
        self, op: TaskOpKind, task_id: str, actor: str, now: float, target: str = ""
    ) -> list[CoreEffect]:
        """An operator command (raises TaskError when it is refused now)."""
        self._now = now
        return list(self._tm().operator(op, task_id, actor, self.wall(now), target))

    def skill_progress(
        self,
        task_id: str,
        attempt: int,
        pct: float,
        message: str,
        checkpoint: bytes | None,
        now: float,
    ) -> list[CoreEffect]:
        """The local run of ``task_id`` reports progress (and maybe a checkpoint)."""
        self._now = now
        tm = self._tm()
        return list(tm.skill_progress(task_id, attempt, pct, message, checkpoint, self.wall(now)))

    def skill_done(
        self, task_id: str, attempt: int, ok: bool, result: Any, code: str, message: str, now: float
    ) -> list[CoreEffect]:
        """The local run of ``task_id`` ended with a result or an error."""
        self._now = now
        tm = self._tm()
        return list(tm.skill_done(task_id, attempt, ok, result, code, message, self.wall(now)))

    def skill_handoff(
        self, task_id: str, attempt: int, target: str, checkpoint: bytes | None, now: float
    ) -> list[CoreEffect]:
        """The local run asked to hand its task to ``target`` ("" = the best other agent)."""
        self._now = now
        return list(self._tm().skill_handoff(task_id, attempt, target, checkpoint, self.wall(now)))

    def skill_lost(self, task_id: str, attempt: int, why: str, now: float) -> list[CoreEffect]:
        """The local run is given up without an outcome (shutdown)."""
        self._now = now
        return list(self._tm().skill_lost(task_id, attempt, why, self.wall(now)))

    def skills_changed(self, now: float) -> list[CoreEffect]:
        """The skills this node can run changed (a pack installed, removed, revoked)."""
        self._now = now
        return list(self._tm().skills_changed(self.wall(now)))

    def drain(self, now: float) -> list[CoreEffect]:
        """Shutting down: take no more tasks."""
        self._now = now
        return list(self._tm().drain(self.wall(now)))

    # ---- internals ---------------------------------------------------------------------

    def reach_window(self) -> float:
        """Two membership heartbeat periods at the current mesh size."""
        return 2 * self.membership.heartbeat_period()

    def _sync(self, out: list[CoreEffect], now: float, *, force: bool = False) -> None:
        """Membership's view changed: tell the election and the task machine."""
        if force or any(isinstance(e, MemberChanged) for e in out):
            self.election.set_reach_window(self.reach_window())
            out.extend(self.election.update_members(self.voters(), now))
            if self.tasks is not None:
                out.extend(self.tasks.members_changed(self.agents(), self.wall(now)))

    def _follow(self, out: list[CoreEffect], now: float) -> None:
        """The lead or the term moved: the task machine follows (the election holds the
        truth; the task machine's copy is what it last followed)."""
        tasks = self.tasks
        if tasks is None:
            return
        lead, term = self.election.lead, self.election.term
        if (lead, term) != (tasks.lead, tasks.term):
            out.extend(tasks.lead_changed(lead, term, self.wall(now)))
