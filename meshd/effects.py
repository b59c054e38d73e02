"""The one effect vocabulary: what the pure machines ask the I/O shell to do.

The machines (:mod:`meshd.membership`, :mod:`meshd.election`, :mod:`meshd.tasks`, and
:class:`meshd.core.Core`, which composes them) never touch a socket, a disk, a process or
the event loop. Each step takes an event and ``now`` and returns a list of these effects,
in the order they must be carried out. The daemon (:mod:`meshd.daemon.node`) carries
them out in one dispatch table; the simulator (:mod:`meshd.sim`) carries out the message
and link effects on an in-memory network and records the rest.

Ordering rules the interpreter keeps:

- a :class:`Persist` is written synchronously (and fsync'd) before any later effect of
  the same list: a vote leaves the node only once it would survive a crash;
- the store effects of one event-loop turn (:class:`StoreCopies`, :class:`SaveOutbox`,
  audited :class:`Emit`) are committed together before that turn's acknowledgements
  leave, its skills start and its clients are answered (:mod:`meshd.daemon.commit`).

Groups: messages (:class:`Send`, :class:`Publish`), links (:class:`Connect`,
:class:`Disconnect`), durable state (:class:`Persist`, :class:`StoreCopies`,
:class:`SaveOutbox`), local work (:class:`RunSkill`, :class:`CancelSkill`), what happened
(:class:`MemberChanged`, :class:`ElectionEvent`, :class:`Emit`, :class:`Refused`) and
answers to local requests (:class:`OpDone`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from meshd.wire.messages import Payload, TaskReport
from meshd.wire.records import MemberInfo, MemberRecord, MemberState, Task, TaskCopy

__all__ = [
    "CancelSkill",
    "Connect",
    "Disconnect",
    "Effect",
    "ElectionEvent",
    "Emit",
    "MemberChanged",
    "OpDone",
    "Persist",
    "Publish",
    "Refused",
    "RunSkill",
    "SaveOutbox",
    "Send",
    "StoreCopies",
]


# ---- messages -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``payload`` directly to ``to`` (over the DEALER link to that peer).

    Membership only emits it for a peer it has emitted :class:`Connect` for and not
    disconnected since. ``correlation_id`` is set on replies (ACK to a PING).
    """

    to: str
    payload: Payload
    correlation_id: bytes | None = None


@dataclass(frozen=True, slots=True)
class Publish:
    """Broadcast ``payload`` on our PUB socket (reaches peers subscribed to us; may drop)."""

    payload: Payload


# ---- links ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Connect:
    """Open (or refresh, when the endpoints changed) the DEALER + SUB links to this peer.

    The first Connect to a peer is always followed by ``Send(peer, Hello(self_info))``.
    """

    info: MemberInfo


@dataclass(frozen=True, slots=True)
class Disconnect:
    """Close the links to this peer."""

    node_id: str


# ---- durable state --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Persist:
    """Store the election's ``term``, ``voted_for`` and voter set (``voters``: version
    and node ids; version 0: none decided yet) durably (synchronously) before carrying
    out the effects that follow it in the same list: a vote or a term adoption is only
    answered once it would survive a crash. Always the full durable state."""

    term: int
    voted_for: str | None
    voters: tuple[int, tuple[str, ...]] = (0, ())


@dataclass(frozen=True, slots=True)
class StoreCopies:
    """Write these task copies to the store (durable before the batch's messages leave)."""

    copies: tuple[TaskCopy, ...]
    #: fsync'd before the batch's acknowledgements leave, its skills start and its
    #: clients are answered (the origin's new task). False for a replica's copies (from
    #: TASK_UPDATE / TASK_SYNC): written lazily, never fsync'd.
    durable: bool = True
    #: The lead's own copies: committed now, fsync'd within a few tens of milliseconds
    #: without holding anything back (every copy is also published to, and held by, the
    #: members at once, so a lead that dies loses nothing the next lead cannot gather).
    sync_soon: bool = False


@dataclass(frozen=True, slots=True)
class SaveOutbox:
    """Durable outbox entry ``key`` (``submit:<id>`` / ``report:<id>``): ``report`` for a
    pending report, None to delete; a submit entry stores ``TaskReport`` None and
    ``pending`` True."""

    key: str
    pending: bool
    report: TaskReport | None = None
    #: fsync'd before the batch's acknowledgements leave (a submit: the client was told
    #: the task is stored). An outcome needs no fsync (see the task machine's reports).
    durable: bool = True


# ---- local work -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunSkill:
    """Run ``task`` (attempt ``task.attempt``) on this node's skill runner, once the
    batch that assigned it is durable."""

    task: Task


@dataclass(frozen=True, slots=True)
class CancelSkill:
    """Stop the local run of ``task_id`` (any attempt)."""

    task_id: str
    reason: str


# ---- what happened --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MemberChanged:
    """A listed member's state (or its info) changed: persist it, tell subscribers.

    ``previous`` is None for a member that was not listed before (new, or a candidate).
    ``reason`` is a stable token: ``joined``, ``heartbeat_timeout``, ``probe_failed``,
    ``recovered`` (a suspect proved alive), ``refuted`` (a newer incarnation cleared a
    suspicion; for our own record: we refuted), ``left``, ``gossip`` (another node's
    verdict), ``restarted`` (a newer incarnation of a dead/left member), ``updated`` (new
    info, same state), ``restored`` (dead/left record read back by
    :meth:`meshd.membership.Membership.restore`) and ``forgotten``: the member was dropped
    after ``forget_after`` (``record`` is its last record; delete it from the store).

    Records about this node itself use reasons ``refuted`` and ``left``.
    """

    record: MemberRecord
    previous: MemberState | None
    reason: str


@dataclass(frozen=True, slots=True)
class ElectionEvent:
    """This node's view of the lead changed (always a durable audit record too).

    ``kind``: ``LEAD_ELECTED`` (``lead`` is the new lead; reason ``won`` on the winner,
    ``heartbeat`` on the others), ``LEAD_LOST`` (a follower lost its lead ``lead``;
    reason ``lead_silent``, ``lead_left``, ``lead_dead``, ``higher_term`` or
    ``stepped_down``) or ``STEPPED_DOWN`` (this node stopped leading; reason
    ``lost_quorum``, ``higher_term``, ``transfer``, ``operator``, ``priority_takeover`` or
    ``shutdown``). ``term`` is the term the event is about.
    """

    kind: str
    term: int
    lead: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class Emit:
    """Tell subscribers (``meshctl events``, :meth:`meshd.client.Client.listen`) that
    ``kind`` happened, with ``fields`` (JSON-ready; the event log adds ``at`` and
    ``node``). ``audit``: a coordination decision of this node that also goes to the
    durable audit log, committed with the batch that made it."""

    kind: str
    fields: Mapping[str, Any] = field(default_factory=dict)
    audit: bool = False


@dataclass(frozen=True, slots=True)
class Refused:
    """A message from ``sender`` was refused because the sender is not entitled to what
    it claims (a lead without a certificate, a copy from a non-lead, a claim about another
    member): nothing changed. The shell counts it by ``reason`` (``frames_rejected_total``)
    and logs the first of each reason per sender per minute with the sender's name."""

    reason: str
    sender: str
    detail: str = ""


# ---- answers to local requests -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OpDone:
    """An operator command relayed to the lead was answered (``ok`` or refused)."""

    task_id: str
    op: str
    ok: bool
    message: str = ""


Effect: TypeAlias = (
    Send
    | Publish
    | Connect
    | Disconnect
    | Persist
    | StoreCopies
    | SaveOutbox
    | RunSkill
    | CancelSkill
    | MemberChanged
    | ElectionEvent
    | Emit
    | Refused
    | OpDone
)
