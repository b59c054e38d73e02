"""Typed messages of the mesh protocol (see ``proto/PROTOCOL.md``).

Every message is a frozen dataclass. The envelope carries the protocol version,
type code, message id, sender node id, wall timestamp, correlation id and term;
the body is one of the payload classes below. Type codes are append-only: a code,
once released, never changes meaning; retired codes are never reused.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from meshd.wire.records import (
    PROTOCOL_VERSION,
    MemberInfo,
    MemberRecord,
    PackInfo,
    Revocation,
    TaskCopy,
)

#: Largest frame a node accepts on a mesh link (bytes). Big enough for a full
#: membership SYNC of a few hundred nodes; chunked transfers (skill packs) stay below it.
MAX_FRAME_BYTES = 1024 * 1024

#: Length of a message id in bytes (random, unique per sender).
MSG_ID_BYTES = 16

#: Node ids are 32 lowercase hex characters (BLAKE2b-128 of the Ed25519 public key).
NODE_ID_CHARS = 32


class MsgType(enum.IntEnum):
    """Message type codes. APPEND-ONLY: never renumber, never reuse a retired code."""

    HELLO = 1
    HEARTBEAT = 2
    PING = 3
    ACK = 4
    PING_REQ = 5
    SYNC_REQ = 6
    SYNC = 7
    MEMBER_UPDATE = 8
    LEAVE = 9
    INTRO = 10
    INTRO_ACK = 11
    ERROR = 12
    VOTE_REQ = 13
    VOTE = 14
    LEAD_HEARTBEAT = 15
    LEAD_ACK = 16
    STEP_DOWN = 17
    TRANSFER_REQ = 18
    TASK_SUBMIT = 19
    TASK_ASSIGN = 20
    TASK_REPORT = 21
    TASK_CANCEL = 22
    TASK_UPDATE = 23
    TASK_ACK = 24
    TASK_OP = 25
    TASK_SYNC_REQ = 26
    TASK_SYNC = 27
    AGENT_INFO = 28
    SKILL_ANNOUNCE = 29
    SKILL_FETCH = 30
    SKILL_CHUNK = 31
    SKILL_REVOKE = 32
    TASK_DIGEST = 33
    TASK_QUERY = 34
    TASK_KEYS = 35
    LEAD_CERT = 36
    LEAD_CERT_REQ = 37
    VOTERS = 38


# ---- payloads ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    """First message on a new direct link, both ways. Body: the sender's own info."""

    info: MemberInfo


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Published periodically on PUB. ``digest`` summarises the sender's member view so
    a receiver whose view differs can ask for a SYNC (anti-entropy)."""

    incarnation: int
    digest: bytes
    members: int


@dataclass(frozen=True, slots=True)
class Ping:
    """Direct liveness probe. Answered by ACK with ``correlation_id`` = the ping's id."""

    seq: int


@dataclass(frozen=True, slots=True)
class Ack:
    """Reply to PING or PING_REQ. ``target`` is the probed node (empty for a plain ping);
    ``ok`` is False when an indirect probe got no answer from the target."""

    seq: int
    target: str = ""
    ok: bool = True


@dataclass(frozen=True, slots=True)
class PingReq:
    """Ask a helper to probe ``target`` on our behalf (SWIM indirect probe)."""

    seq: int
    target: str


@dataclass(frozen=True, slots=True)
class SyncReq:
    """Ask a peer for its full member list (sent when digests differ)."""

    digest: bytes


@dataclass(frozen=True, slots=True)
class Sync:
    """Full member list of the sender (including itself)."""

    members: tuple[MemberRecord, ...]


@dataclass(frozen=True, slots=True)
class MemberUpdate:
    """Gossip of changed members, published on PUB (and sent directly when it matters)."""

    members: tuple[MemberRecord, ...]


@dataclass(frozen=True, slots=True)
class Leave:
    """Graceful exit: receivers mark the sender ``left`` at once."""

    incarnation: int


@dataclass(frozen=True, slots=True)
class Intro:
    """First contact through the intro socket (static seeds, peers learned by gossip)."""

    info: MemberInfo


@dataclass(frozen=True, slots=True)
class IntroAck:
    """Reply to INTRO: the seed's own info and every member it knows, so one seed is enough."""

    info: MemberInfo
    members: tuple[MemberRecord, ...] = ()


@dataclass(frozen=True, slots=True)
class Error:
    """A refusal or failure report. ``code`` is a stable token, ``message`` for humans."""

    code: str
    message: str


# ---- election (see PROTOCOL.md, "Election") -------------------------------------------


@dataclass(frozen=True, slots=True)
class VoteReq:
    """Ask for a vote for the sender as lead of ``term``.

    ``pre``: a pre-vote (asked with the term the sender *would* take, before it bumps its
    own); receivers answer without changing any state. ``priority`` is the sender's
    current lead priority (receivers rank candidates with it).
    """

    term: int
    pre: bool
    priority: int


@dataclass(frozen=True, slots=True)
class Vote:
    """Answer to VOTE_REQ. A grant carries the requested term; a denial carries the
    voter's own term (so a stale candidate catches up) and a ``reason`` token."""

    term: int
    granted: bool
    pre: bool
    reason: str = ""
    #: A granted real vote: the voter's Ed25519 signature of
    #: :func:`meshd.election.cert.vote_bytes` (term, candidate); empty otherwise.
    sig: bytes = b""


@dataclass(frozen=True, slots=True)
class LeadHeartbeat:
    """Published by the lead every ``lead_heartbeat_interval``: renews its lease.

    ``lead`` MUST be the sender (fencing: every lead message carries term and lead id).
    """

    term: int
    lead: str
    seq: int


@dataclass(frozen=True, slots=True)
class LeadAck:
    """A follower's direct answer to LEAD_HEARTBEAT ``seq``. ``ok`` False: the follower
    is at a newer ``term`` and refuses the sender as lead (it moves on only with a proof of
    that term). ``voters_version``: the version of the voter set the follower holds (the
    lead commits a change once a majority of the new set holds it)."""

    term: int
    seq: int
    ok: bool
    voters_version: int = 0


@dataclass(frozen=True, slots=True)
class StepDown:
    """The lead of ``term`` (the sender) gives up its lead. ``successor``: the node it
    hands over to (campaigns at once, voters grant it), or ``""`` for none."""

    term: int
    successor: str
    reason: str


@dataclass(frozen=True, slots=True)
class CertVote:
    """One signed real vote in a :class:`LeadCert`: ``voter`` granted the lead the term,
    ``sig`` is its Ed25519 signature of :func:`meshd.election.cert.vote_bytes`."""

    voter: str
    sig: bytes


@dataclass(frozen=True, slots=True)
class LeadCert:
    """Proof that ``lead`` was elected lead of ``term``: the signed real votes it won, a
    quorum of the voters at least (with ``pre``: the signed pre-votes that let it start
    the term). Sent directly by a new lead to every live member, to any member that asks
    (LEAD_CERT_REQ), and to a stale lead that a node refuses. A node follows a lead, and
    takes a term, only once it has verified a certificate for it; a certificate proves
    itself whoever relays it."""

    term: int
    lead: str
    votes: tuple[CertVote, ...]
    #: True: a term certificate — pre-votes that let candidate ``lead`` start ``term``
    #: (proof of the term, not of a lead).
    pre: bool = False


@dataclass(frozen=True, slots=True)
class LeadCertReq:
    """Ask the sender of a LEAD_HEARTBEAT for its certificate of ``term`` (the asker has
    not verified one yet and does not follow it meanwhile)."""

    term: int


@dataclass(frozen=True, slots=True)
class Voters:
    """The voter set the lead of ``term`` decided: the members whose votes and
    acknowledgements count, at ``version`` (one member added or removed per version). Sent
    by the lead to every live member (again to one whose LEAD_ACK shows an older version);
    a node takes a newer version only from its proven lead."""

    term: int
    version: int
    voters: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TransferReq:
    """An operator request relayed to the lead: hand the lead to ``target`` (a node
    id), or step down when ``target`` is ``""``."""

    target: str


# ---- tasks (see PROTOCOL.md, "Tasks") ------------------------------------------------


class ReportKind(enum.StrEnum):
    """What an agent reports about an attempt (TASK_REPORT ``kind``)."""

    #: The agent stored the assignment and started the skill.
    STARTED = "started"
    #: Progress (and maybe a checkpoint) from the running skill. Best effort.
    PROGRESS = "progress"
    #: The skill returned ``result``. Reliable (resent until the lead stored it).
    COMPLETED = "completed"
    #: The skill failed with ``code`` / ``message``. Reliable.
    FAILED = "failed"
    #: The agent refused the assignment (``code``: busy, unknown_skill...). Reliable.
    REJECTED = "rejected"
    #: The agent restarted and lost the run (idempotent tasks are reassigned). Reliable.
    LOST = "lost"


@dataclass(frozen=True, slots=True)
class TaskSubmit:
    """Origin -> lead: take this new task (the origin stored it first). Answered by
    TASK_ACK; the origin resends until acknowledged, to the current lead."""

    copy: TaskCopy


@dataclass(frozen=True, slots=True)
class TaskAssign:
    """Lead -> agent: run this attempt. ``copy.task.assignment`` is the fence
    ``(term, lead)``: an agent refuses a term older than the newest it has seen."""

    copy: TaskCopy


@dataclass(frozen=True, slots=True)
class TaskReport:
    """Agent -> lead: news about attempt ``attempt`` of ``task_id``. Reliable kinds are
    answered by TASK_ACK (``ok`` once the lead stored the outcome)."""

    task_id: str
    attempt: int
    kind: ReportKind
    pct: float = 0.0
    message: str = ""
    checkpoint: bytes | None = None
    result: Any = None
    code: str = ""


@dataclass(frozen=True, slots=True)
class TaskCancel:
    """Lead -> agent: stop attempt ``attempt`` of ``task_id`` (0: any attempt)."""

    task_id: str
    attempt: int
    reason: str


@dataclass(frozen=True, slots=True)
class TaskUpdate:
    """Lead -> all (PUB), and direct to a task's origin when it finishes: new copies.
    ``seq_hi`` is the lead's newest ``seq`` in its term, so a node that missed copies
    notices the gap and asks for them (TASK_SYNC_REQ). Empty ``copies``: a beacon."""

    seq_hi: int
    copies: tuple[TaskCopy, ...]


@dataclass(frozen=True, slots=True)
class TaskAck:
    """Answer to TASK_SUBMIT, a reliable TASK_REPORT or TASK_OP (``correlation_id`` =
    the request's ``msg_id``). ``ok`` False: refused, ``code``/``message`` say why."""

    task_id: str
    ok: bool
    code: str = ""
    message: str = ""


class TaskOpKind(enum.StrEnum):
    """Operator commands relayed to the lead (TASK_OP ``op``)."""

    CANCEL = "cancel"
    RETRY = "retry"
    #: Retry a non-idempotent task that may have run already (it failed ``agent_lost``).
    RETRY_FORCE = "retry_force"
    HANDOFF = "handoff"
    APPROVE = "approve"
    DENY = "deny"


@dataclass(frozen=True, slots=True)
class TaskOp:
    """A node -> lead: an operator command on ``task_id`` by ``actor``. ``target``: the
    node to hand off to (HANDOFF; ``""`` = the best other agent). ``checkpoint``: the
    running agent's latest resume data (HANDOFF from the agent)."""

    op: TaskOpKind
    task_id: str
    actor: str
    target: str = ""
    checkpoint: bytes | None = None


@dataclass(frozen=True, slots=True)
class TaskSyncReq:
    """Ask for copies: every copy newer than ``(since_term, since_seq)``; plus, when
    ``ids`` is given or ``unfinished`` is set (a new lead gathering state), the copies of
    those tasks and of every task the receiver holds unfinished, whatever their age."""

    since_term: int
    since_seq: int
    ids: tuple[str, ...] = ()
    unfinished: bool = False


@dataclass(frozen=True, slots=True)
class TaskSync:
    """Answer to TASK_SYNC_REQ, in chunks: ``more`` True until the last one."""

    copies: tuple[TaskCopy, ...]
    more: bool


#: Buckets of a TASK_DIGEST: task copies grouped by the first byte of the task id.
DIGEST_BUCKETS = 256


@dataclass(frozen=True, slots=True)
class TaskDigest:
    """A summary of the copies the sender holds that a lead stamped (term > 0), so two
    nodes find the tasks on which they differ without listing them all.

    ``buckets``: the copies grouped by the first byte of the task id, each bucket the XOR
    of a 63-bit hash of every copy's (task id, term, seq) (see
    :func:`meshd.tasks.machine.copy_hash`); ``root``: BLAKE2b-128 of the buckets. Empty
    ``buckets``: only the root (the lead's periodic announcement; a follower whose root
    differs answers with its buckets). With ``buckets``: the receiver answers with a
    TASK_SYNC of every copy it holds in the buckets that differ (the lead also sends its
    own buckets back, so that it gets the copies it lacks).

    ``seq``: the lead's newest sequence number of ``term`` when it took the root (its
    periodic announcement; 0 otherwise). A follower compares roots only when it holds
    exactly the lead's copies up to ``seq`` and none newer, so updates still in flight
    during a burst are not mistaken for a divergence."""

    term: int
    root: bytes
    buckets: tuple[int, ...] = ()
    seq: int = 0


@dataclass(frozen=True, slots=True)
class TaskKey:
    """Which copy of a task a node holds: the task id and the lead stamp (term, seq)."""

    task_id: str
    term: int
    seq: int


@dataclass(frozen=True, slots=True)
class TaskKeys:
    """Answer to a TASK_DIGEST with buckets: the keys of every copy the sender holds in
    ``buckets`` (those whose values differ), in chunks (``more`` True until the last).
    The receiver then fetches the copies that are newer on the sender's side (TASK_SYNC_REQ
    by ids) and sends the sender the copies that are newer (or only) on its own side: the
    exchange costs the keys of those buckets plus the copies that really differ."""

    buckets: tuple[int, ...]
    keys: tuple[TaskKey, ...]
    more: bool


@dataclass(frozen=True, slots=True)
class TaskQuery:
    """Lead -> agent: what became of attempt ``attempt`` of a non-idempotent task assigned
    to it in an earlier term? The agent answers (only once it follows the lead of
    ``term``, so an older assignment can no longer start on it) with a TASK_REPORT:
    ``started`` if it runs it, its outcome if it finished it, or ``rejected`` with code
    ``not_started`` (it never will)."""

    task_id: str
    attempt: int
    term: int


@dataclass(frozen=True, slots=True)
class AgentInfo:
    """What a node can run, published when it changes and sent to each new lead:
    installed ``skills``, role ``capabilities`` and its concurrency limit."""

    skills: tuple[str, ...]
    capabilities: tuple[str, ...]
    max_concurrent: int


# ---- skill packs (see PROTOCOL.md, "Skill packs") -------------------------------------


@dataclass(frozen=True, slots=True)
class SkillAnnounce:
    """The sender's installed packs. ``full``: this is its whole inventory (replaces what
    it announced before); else ``packs`` were just installed or updated. Published on
    change, and sent directly to a member that joins."""

    packs: tuple[PackInfo, ...]
    full: bool
    #: Pack names the sender removed (only when ``full`` is False).
    removed: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SkillFetch:
    """Ask a holder for ``length`` bytes of pack ``pack_id`` from ``offset``."""

    pack_id: str
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class SkillChunk:
    """Answer to SKILL_FETCH (``correlation_id`` = its ``msg_id``): bytes ``offset`` ..
    ``offset + len(data)`` of an archive of ``total`` bytes; ``error`` non-empty: the
    holder does not have it (``data`` empty)."""

    pack_id: str
    offset: int
    total: int
    data: bytes
    error: str = ""


@dataclass(frozen=True, slots=True)
class SkillRevoke:
    """Signed revocations of signer keys and pack ids. Published when an operator
    revokes, and the whole list sent to a member that joins; a receiver applies each
    record whose signature verifies and whose signer was entitled to it (PROTOCOL.md
    13.4), then refuses to install or run what is revoked."""

    records: tuple[Revocation, ...]


Payload = (
    Hello
    | Heartbeat
    | Ping
    | Ack
    | PingReq
    | SyncReq
    | Sync
    | MemberUpdate
    | Leave
    | Intro
    | IntroAck
    | Error
    | VoteReq
    | Vote
    | LeadHeartbeat
    | LeadAck
    | StepDown
    | TransferReq
    | LeadCert
    | LeadCertReq
    | Voters
    | TaskSubmit
    | TaskAssign
    | TaskReport
    | TaskCancel
    | TaskUpdate
    | TaskAck
    | TaskOp
    | TaskSyncReq
    | TaskSync
    | AgentInfo
    | TaskDigest
    | TaskQuery
    | TaskKeys
    | SkillAnnounce
    | SkillFetch
    | SkillChunk
    | SkillRevoke
)

#: The payloads of skill sharing (handled by :mod:`meshd.daemon.packs`).
SkillPayloads = (SkillAnnounce, SkillFetch, SkillChunk, SkillRevoke)

#: The payloads of task delegation (handled by the task machine, :mod:`meshd.tasks.machine`).
TaskPayloads = (
    TaskSubmit, TaskAssign, TaskReport, TaskCancel, TaskUpdate, TaskAck, TaskOp, TaskSyncReq,
    TaskSync, AgentInfo, TaskDigest, TaskQuery, TaskKeys,
)  # fmt: skip

PAYLOAD_TYPES: dict[type[object], MsgType] = {
    Hello: MsgType.HELLO,
    Heartbeat: MsgType.HEARTBEAT,
    Ping: MsgType.PING,
    Ack: MsgType.ACK,
    PingReq: MsgType.PING_REQ,
    SyncReq: MsgType.SYNC_REQ,
    Sync: MsgType.SYNC,
    MemberUpdate: MsgType.MEMBER_UPDATE,
    Leave: MsgType.LEAVE,
    Intro: MsgType.INTRO,
    IntroAck: MsgType.INTRO_ACK,
    Error: MsgType.ERROR,
    VoteReq: MsgType.VOTE_REQ,
    Vote: MsgType.VOTE,
    LeadHeartbeat: MsgType.LEAD_HEARTBEAT,
    LeadAck: MsgType.LEAD_ACK,
    StepDown: MsgType.STEP_DOWN,
    TransferReq: MsgType.TRANSFER_REQ,
    LeadCert: MsgType.LEAD_CERT,
    LeadCertReq: MsgType.LEAD_CERT_REQ,
    Voters: MsgType.VOTERS,
    TaskSubmit: MsgType.TASK_SUBMIT,
    TaskAssign: MsgType.TASK_ASSIGN,
    TaskReport: MsgType.TASK_REPORT,
    TaskCancel: MsgType.TASK_CANCEL,
    TaskUpdate: MsgType.TASK_UPDATE,
    TaskAck: MsgType.TASK_ACK,
    TaskOp: MsgType.TASK_OP,
    TaskSyncReq: MsgType.TASK_SYNC_REQ,
    TaskSync: MsgType.TASK_SYNC,
    TaskDigest: MsgType.TASK_DIGEST,
    TaskQuery: MsgType.TASK_QUERY,
    TaskKeys: MsgType.TASK_KEYS,
    AgentInfo: MsgType.AGENT_INFO,
    SkillAnnounce: MsgType.SKILL_ANNOUNCE,
    SkillFetch: MsgType.SKILL_FETCH,
    SkillChunk: MsgType.SKILL_CHUNK,
    SkillRevoke: MsgType.SKILL_REVOKE,
}


@dataclass(frozen=True, slots=True)
class Envelope:
    """The one envelope every message travels in.

    ``timestamp_ms`` is the sender's wall clock (informational only: never used for
    timeouts). ``correlation_id`` links a reply to its request. ``term`` is the
    election term the sender is in (carried everywhere so lead-only messages can be
    fenced).
    """

    msg_type: MsgType
    msg_id: bytes
    sender: str
    timestamp_ms: int
    payload: Payload
    correlation_id: bytes | None = None
    term: int = 0
    version: int = field(default=PROTOCOL_VERSION)
