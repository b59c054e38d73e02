"""The records that travel: what members say about themselves, tasks and their copies,
pack descriptions.

They sit below the messages (:mod:`meshd.wire.messages`) that carry them and below every
machine that reasons about them (membership, election, tasks, skills), so that the codec
(:mod:`meshd.wire.codec`) and the store can encode them without importing any machine.
Every record is a frozen dataclass: a change makes a new one, so a record can be stored,
sent and compared without copies or locks. Task times are wall-clock epoch seconds,
because a task's ``created_at`` and ``deadline`` must mean the same on every node that
holds a copy of it.

Enum values are stable strings (stored and sent on the wire): append new states, never
rename or reuse one.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Final

#: The protocol version every envelope and member record carries.
PROTOCOL_VERSION = 1


class MemberState(enum.StrEnum):
    """A peer as one node sees it. ``left`` is a graceful exit, ``dead`` a detected failure."""

    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"
    LEFT = "left"


@dataclass(frozen=True, slots=True)
class MemberInfo:
    """What a node says about itself: identity, admission proof, how to reach it.

    ``incarnation`` is owned by the node itself: it only ever increases, and a node
    bumps it to refute a suspicion or after a restart. ``proof`` is the admission
    HMAC (see ``meshd.identity``); it binds the node's Ed25519 key to the mesh and is
    not secret. ``sig`` is the node's own Ed25519 signature of every other field
    (:func:`meshd.wire.signing.info_signing_bytes`): relayed by anyone, the info still says
    only what its node said. Empty only in a candidate learnt from an mDNS record (TXT
    records carry no signature; such info is replaced by the node's HELLO).
    """

    node_id: str
    name: str
    role: str
    priority: int
    ed25519_pk: bytes
    curve_pk: bytes
    proof: bytes
    addresses: tuple[str, ...]
    router_port: int
    pub_port: int
    intro_port: int
    incarnation: int = 0
    protocol_version: int = PROTOCOL_VERSION
    tier: int = 0
    started_at: float = 0.0
    sig: bytes = b""


@dataclass(frozen=True, slots=True)
class MemberRecord:
    """One member and the state the sender believes it is in (for gossip and sync)."""

    info: MemberInfo
    state: MemberState


# ---- tasks ------------------------------------------------------------------------------


class TaskState(enum.Enum):
    """Where a task is in its lifecycle. Values are stable strings (stored and sent on
    the wire): append new states, never rename or reuse one."""

    #: Waiting in the lead's queue: for its dependencies, for a capable free agent, or
    #: for a lead.
    PENDING = "pending"
    #: Sent to an agent (with the lead's term); not reported started yet.
    ASSIGNED = "assigned"
    #: The agent reported it started.
    RUNNING = "running"
    #: The agent returned a result. Terminal unless a verify step was asked for.
    COMPLETE = "complete"
    #: The verify step accepted the result. Terminal.
    VERIFIED = "verified"
    #: The agent refused it (transient: the lead tries the next agent or requeues).
    REJECTED = "rejected"
    #: Given up: ``error`` says why. Terminal; only an operator retry re-runs it.
    FAILED = "failed"
    #: Waiting for its retry backoff to elapse.
    RETRY = "retry"
    #: Cancelled by the origin or an operator. Terminal.
    CANCELLED = "cancelled"
    #: Its skill declares ``internet`` or ``privileged``: held until an operator approves
    #: (back to PENDING) or denies (FAILED, ``denied``) it.
    WAITING_APPROVAL = "waiting_approval"


#: States a task is never moved out of automatically (COMPLETE counts only when no verify
#: step was asked for: see :func:`is_terminal`).
FINAL_STATES: Final = frozenset({TaskState.VERIFIED, TaskState.FAILED, TaskState.CANCELLED})


#: A task in one of these states is held by an agent (it counts towards the agent's load).
ACTIVE_STATES: Final = frozenset({TaskState.ASSIGNED, TaskState.RUNNING})


@dataclass(frozen=True, slots=True)
class Requirement:
    """Who may run a task: a role, a capability and/or one named node (all optional;
    every one given must hold)."""

    role: str | None = None
    capability: str | None = None
    node: str | None = None


@dataclass(frozen=True, slots=True)
class Transition:
    """One entry of a task's history: the state entered, when, by whom and why."""

    state: TaskState
    at: float
    actor: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Progress:
    """The last progress the running skill reported."""

    pct: float = 0.0
    message: str = ""


@dataclass(frozen=True, slots=True)
class TaskFailure:
    """Why a task failed: a short stable ``code`` (``timeout``, ``agent_lost``,
    ``deadline``, ``dependency_failed:<id>``, ``rejected``, a skill's own code...) and a
    human message."""

    code: str
    message: str = ""


@dataclass(frozen=True, slots=True)
class Assignment:
    """The fence on an assignment: the lead's term and id. Agents refuse an older term."""

    term: int
    lead: str


@dataclass(frozen=True, slots=True)
class Task:
    """A delegated piece of work. Build new ones with :func:`new_task`."""

    task_id: str
    skill: str
    params: dict[str, Any]
    origin: str
    requirement: Requirement = field(default_factory=Requirement)
    #: 0..9, higher runs first.
    priority: int = 5
    #: s. Time one attempt may take, from assignment to result.
    timeout_s: float = 300.0
    #: Wall epoch seconds after which the task fails with ``deadline``; None: none.
    deadline: float | None = None
    #: True if running it twice is harmless: it may then be re-run after a crash.
    idempotent: bool = False
    #: A verify step was asked for: COMPLETE waits for VERIFY_OK / VERIFY_FAIL.
    verify: bool = False
    parent: str | None = None
    depends_on: tuple[str, ...] = ()
    retry_count: int = 0
    retry_limit: int = 3
    state: TaskState = TaskState.PENDING
    history: tuple[Transition, ...] = ()
    progress: Progress = field(default_factory=Progress)
    #: Opaque data from the running skill to resume from (passed on reassignment).
    checkpoint: bytes | None = None
    result: Any = None
    error: TaskFailure | None = None
    assigned_to: str | None = None
    assignment: Assignment | None = None
    #: Attempt number, bumped on every assignment: an agent's report about an older
    #: attempt is stale and ignored.
    attempt: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0


def is_terminal(task: Task) -> bool:
    """True once nothing more will happen to the task without an operator."""
    if task.state is TaskState.COMPLETE:
        return not task.verify
    return task.state in FINAL_STATES


def succeeded(task: Task) -> bool:
    """True if the task's result stands (COMPLETE without verify, or VERIFIED): what a
    dependency must reach before its dependents start."""
    return task.state is TaskState.VERIFIED or (
        task.state is TaskState.COMPLETE and not task.verify
    )


@dataclass(frozen=True, slots=True)
class TaskCopy:
    """One copy of a task record, stamped by the lead that wrote it: ``term`` is that
    lead's term and ``seq`` its running number within the term (both 0 for the origin's
    own copy before any lead took it). Of two copies of a task, the one with the higher
    ``(term, seq)`` is the newer."""

    term: int
    seq: int
    task: Task


# ---- skill packs ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PackInfo:
    """One installed pack as its holder announces it: enough to validate a task's
    parameters anywhere (``manifest``: the manifest's msgpack-ready dict) and to fetch,
    verify and install the pack (``pack_id``: SHA-256 hex of the archive bytes)."""

    name: str
    version: str
    pack_id: str
    size: int
    signer: bytes
    manifest: dict[str, Any]


class RevocationKind(enum.StrEnum):
    """What a revocation names: a signer key or one pack."""

    KEY = "key"
    PACK = "pack"


@dataclass(frozen=True, slots=True)
class Revocation:
    """One revocation as it travels (SKILL_REVOKE) and is kept: ``target`` (a signer's
    Ed25519 public key, or a pack id, as 64 lowercase hex chars) is revoked by the holder
    of key ``by``, at ``at_ms`` (wall-clock epoch milliseconds, the revoker's), and
    ``sig`` is ``by``'s Ed25519 signature of the record (see
    :mod:`meshd.skills.revocation`). Whether ``by`` was entitled to revoke ``target`` is
    for each receiver to judge: the record is self-contained, so a relayed copy is checked
    as the original."""

    kind: RevocationKind
    target: str
    by: bytes
    at_ms: int
    sig: bytes
