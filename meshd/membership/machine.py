"""The membership state machine and failure detector, sans I/O.

:class:`Membership` never touches a socket, a clock or the global random generator:
it is fed events (a message from a peer, a discovery, the passage of time) together with
``now`` (monotonic seconds) and answers with a list of effects (send this, publish that,
connect there, this member changed; see :mod:`meshd.effects`). :class:`meshd.core.Core`
composes it with the election and the task machine; the daemon
(:mod:`meshd.daemon.node`) carries the effects out, and tests drive many machines on one
fake clock (:mod:`meshd.sim`).

Protocol summary (SWIM with heartbeats; timings in :class:`~meshd.config.MembershipConfig`):

* Every node publishes a HEARTBEAT every ``heartbeat_interval`` carrying a digest of its
  member view. Any message from a peer is proof of life. A receiver whose digest differs
  asks the sender for a SYNC (anti-entropy), rate-limited.
* A peer silent for ``suspect_after`` becomes SUSPECT: we gossip the suspicion (so the
  suspect can refute at once) and PING it. No ACK within ``probe_timeout``: we ask up to
  ``indirect_probes`` other live peers to probe it (PING_REQ) and ping it once more. No
  evidence of life within ``indirect_timeout`` after that: DEAD, gossiped, disconnected.
* Each node owns its ``incarnation``. A node that hears itself called SUSPECT/DEAD/LEFT at
  its current (or a newer) incarnation refutes by bumping it and gossiping ALIVE. Between
  two records about the same member, the higher incarnation wins; at equal incarnation
  DEAD/LEFT beat ALIVE/SUSPECT. A DEAD member is never revived by an old-incarnation
  message: it gets a "you are dead" notice and must refute.
* Members learned from mDNS, a static seed or the restore file are *candidates*: connected
  to but not listed until they answer or a live member vouches for them, and dropped
  after ``candidate_timeout`` otherwise (mDNS records of crashed hosts linger for minutes).
* The peer-state transitions are the table in :mod:`meshd.membership.table`; how a
  gossiped record about a member is merged is the table in :mod:`meshd.membership.merge`.

Choices beyond plain SWIM, all in the timings' spirit of "one bad link never kills":

* PING_REQ helpers answer ``ok=False`` when the target stays silent for ``probe_timeout``
  (one small message; it tells the requester which paths failed). A helper's ``ok=True``
  clears the suspicion and restarts the suspicion timer, but does not set ``last_heard``
  (that stays "heard by us directly", which the dead guard relies on).
* A DEAD verdict disconnects. Soon after (``reconnect_first``, then at most twice that
  apart for ``reconnect_fast_for``, then doubling up to every ``reconnect_interval``,
  jittered) we open a short
  contact window (Connect + HELLO for ``reconnect_window``) to members *we* declared dead
  or learned dead while they were live to us: after a partition both sides hold the other
  dead, and this is how they find each other again. A peer that is alive answers with
  anything, gets a "you are dead" MEMBER_UPDATE, refutes, and is revived everywhere by its
  newer incarnation (directly and by anti-entropy).
* A refutation goes to PUB *and* directly to the accuser (which may have dropped our PUB).
* SYNC_REQs are rate-limited per peer (``sync_interval``) and overall (one per
  ``heartbeat_interval``).
* INTRO is handled like HELLO; the INTRO_ACK reply (``self_info`` + :meth:`snapshot`) is
  the daemon's to build, since it travels on the intro socket.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import itertools
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final, TypeAlias

from meshd.config import MembershipConfig
from meshd.effects import Connect, Disconnect, MemberChanged, Publish, Refused, Send
from meshd.errors import ConfigError
from meshd.membership.merge import Action, Order, merge_action, order_of
from meshd.membership.table import Event, PeerState, transition
from meshd.wire.messages import (
    Ack,
    Heartbeat,
    Hello,
    Intro,
    IntroAck,
    Leave,
    MemberUpdate,
    Payload,
    Ping,
    PingReq,
    Sync,
    SyncReq,
)
from meshd.wire.records import MemberInfo, MemberRecord, MemberState
from meshd.wire.schema import MAX_COUNTER

__all__ = [
    "Connect",
    "Disconnect",
    "Effect",
    "MemberChanged",
    "MemberView",
    "Membership",
    "Publish",
    "Send",
    "digest_of",
]

_INF = math.inf
_UNKNOWN = PeerState.UNKNOWN
_ALIVE = PeerState.ALIVE
_SUSPECT = PeerState.SUSPECT
_CANDIDATE = PeerState.CANDIDATE
_DEAD = PeerState.DEAD
_LEFT = PeerState.LEFT
_LIVE = (_ALIVE, _SUSPECT)
_DOWN = (_DEAD, _LEFT)
#: How far above the incarnation we hold a claim may move it unless the member itself says
#: so: a member raises its own by one per refutation or restart (a start after a lost
#: incarnation record takes the wall clock in seconds, and says so itself).
MAX_INCARNATION_JUMP: Final = 1000

_DOWN_EVENT = {MemberState.DEAD: Event.GOSSIP_DEAD, MemberState.LEFT: Event.GOSSIP_LEFT}


# ---- effects ---------------------------------------------------------------------------


Effect: TypeAlias = Send | Publish | Connect | Disconnect | MemberChanged | Refused


@dataclass(frozen=True, slots=True)
class MemberView:
    """A confirmed peer as this node sees it.

    ``last_heard``: monotonic time of the last message received from the peer itself
    (None if it was only vouched for by others so far). ``state_since``: monotonic time of
    the last state change.
    """

    info: MemberInfo
    state: MemberState
    last_heard: float | None
    state_since: float


def digest_of(entries: Iterable[tuple[str, int]]) -> bytes:
    """BLAKE2b-128 over ``"<node_id>:<incarnation>\\n"`` for each entry, sorted by node id.

    This exact encoding is part of the protocol: nodes compare digests from HEARTBEATs.
    """
    h = hashlib.blake2b(digest_size=16)
    for node_id, incarnation in sorted(entries):
        h.update(f"{node_id}:{incarnation}\n".encode())
    return h.digest()


# ---- internal peer record --------------------------------------------------------------


@dataclass(slots=True)
class _Relay:
    """A PING_REQ we serve: tell ``requester`` (with its ``seq``) whether the target answered."""

    requester: str
    seq: int
    deadline: float


@dataclass(slots=True, eq=False)
class _Peer:
    info: MemberInfo
    state: PeerState
    state_since: float
    #: Last message from the peer itself (drives the dead guard; shown as last_heard).
    last_heard: float | None = None
    #: Last evidence of life, direct or indirect (an ACK relayed by a helper) or the time
    #: it was vouched for: the suspicion timer runs from here.
    last_evidence: float = 0.0
    #: We emitted Connect and no Disconnect since.
    connected: bool = False
    #: CANDIDATE: when it expires. DEAD/LEFT with a link open: when that link is closed.
    contact_deadline: float = _INF
    #: DEAD: next reconnect attempt, and how many were made since the verdict.
    next_reconnect: float = _INF
    reconnects: int = 0
    #: CANDIDATE read back from the store: a member before the restart. It is not dropped
    #: after candidate_timeout (only after forget_after), it is contacted again like a
    #: DEAD member, and it counts toward the election's quorum (see restored()).
    restored: bool = False
    #: SUSPECT: the probe in progress.
    probe_seq: int = 0
    probe_indirect: bool = False
    probe_deadline: float = _INF
    #: PING_REQs we serve with this peer as the target.
    relays: list[_Relay] = field(default_factory=list)
    #: Rate limits (monotonic times of the last one sent).
    last_sync_req: float = -_INF
    last_notice: float = -_INF
    last_self_notice: float = -_INF
    #: Earliest timer-heap entry for this peer (lazy timers, see Membership._touch).
    scheduled: float = _INF

    @property
    def node_id(self) -> str:
        return self.info.node_id

    def record(self) -> MemberRecord:
        ms = self.state.member_state
        assert ms is not None, "candidates have no wire record"
        return MemberRecord(self.info, ms)


def _endpoints(info: MemberInfo) -> tuple[tuple[str, ...], int, int]:
    return (info.addresses, info.router_port, info.pub_port)


def _validate(config: MembershipConfig) -> None:
    positive = (
        "heartbeat_interval",
        "suspect_after",
        "probe_timeout",
        "indirect_timeout",
        "sync_interval",
        "candidate_timeout",
        "reconnect_interval",
        "reconnect_first",
        "reconnect_fast_for",
        "reconnect_window",
        "max_unheard_links",
    )
    for name in positive:
        if not getattr(config, name) > 0:
            raise ConfigError(f"[membership] {name} must be > 0")
    if config.forget_after < 0 or config.dead_guard < 0 or config.indirect_probes < 0:
        raise ConfigError("[membership] forget_after, dead_guard, indirect_probes must be >= 0")


# ---- the machine -----------------------------------------------------------------------


class Membership:
    """Membership view and failure detector of one node (pure: events in, effects out).

    ``now`` arguments are monotonic seconds and must never go backwards. ``rng`` is the
    only source of randomness (heartbeat phase, probe helpers, reconnect jitter, probe
    sequence numbers). ``verify`` checks a peer's admission proof; info that fails it is
    ignored wherever it appears.

    After :meth:`leave`, the machine is finished: every event method returns ``[]`` and
    :meth:`next_deadline` returns infinity.
    """

    def __init__(
        self,
        self_info: MemberInfo,
        config: MembershipConfig,
        now: float,
        rng: random.Random,
        verify: Callable[[MemberInfo], bool] = lambda i: True,
        *,
        admit: Callable[[MemberInfo], bool] | None = None,
        sign: Callable[[MemberInfo], MemberInfo] | None = None,
    ) -> None:
        _validate(config)
        self._sign = sign
        self._info = sign(self_info) if sign is not None else self_info
        self._cfg = config
        self._rng = rng
        self._verify_fn = verify
        # Discovered candidates (mDNS records carry no signature): the proof only.
        self._admit_fn = admit if admit is not None else verify
        self._peers: dict[str, _Peer] = {}
        #: Peers linked while known only by gossip (see _ensure_link).
        self._unheard_links: set[str] = set()
        self._left = False
        # Random phase: nodes started together do not heartbeat in lockstep.
        self._next_hb = now + rng.uniform(0.0, config.heartbeat_interval)
        # Lazy timer heap: (due, tiebreak, node_id); see _touch.
        self._timers: list[tuple[float, int, str]] = []
        self._tiebreak = itertools.count()
        # Random start: an ACK meant for a previous process of ours never matches.
        self._seq = rng.randrange(1, 1 << 30)
        self._last_sync_any = -_INF
        self._digest: bytes | None = None
        self._live_count = 0
        self._snapshot: tuple[MemberRecord, ...] | None = None

    # ---- queries -----------------------------------------------------------------------

    @property
    def self_id(self) -> str:
        """Our node id."""
        return self._info.node_id

    @property
    def self_info(self) -> MemberInfo:
        """Our current info (the incarnation may have been bumped by a refutation)."""
        return self._info

    @property
    def has_left(self) -> bool:
        """True once :meth:`leave` was called."""
        return self._left

    def members(self) -> list[MemberView]:
        """Confirmed peers in every state (not self, not candidates), by name then id."""
        views = [self._view(p) for p in self._peers.values() if p.state is not _CANDIDATE]
        views.sort(key=lambda v: (v.info.name, v.info.node_id))
        return views

    def get(self, node_id: str) -> MemberView | None:
        """One confirmed peer, or None (unknown, a candidate, or ourselves)."""
        p = self._peers.get(node_id)
        if p is None or p.state is _CANDIDATE:
            return None
        return self._view(p)

    def restored(self) -> list[MemberInfo]:
        """Members read back from the store at start that have not answered yet: not
        listed, but voters for the election's quorum (see :meth:`restore`)."""
        return sorted(
            (p.info for p in self._peers.values() if p.state is _CANDIDATE and p.restored),
            key=lambda i: i.node_id,
        )

    def candidates(self) -> list[MemberInfo]:
        """Peers we connect to but do not list yet (never heard from, not vouched for)."""
        return sorted(
            (p.info for p in self._peers.values() if p.state is _CANDIDATE),
            key=lambda i: i.node_id,
        )

    def digest(self) -> bytes:
        """Digest of our view: :func:`digest_of` over self and the ALIVE/SUSPECT peers."""
        if self._digest is None:
            live = [
                (p.node_id, p.info.incarnation) for p in self._peers.values() if p.state in _LIVE
            ]
            live.append((self._info.node_id, self._info.incarnation))
            self._digest = digest_of(live)
            self._live_count = len(live)
        return self._digest

    def snapshot(self) -> list[MemberRecord]:
        """Every known member incl. dead/left (not candidates), ourselves first, then by id.

        This is what SYNC carries and what the node persists.
        """
        if self._snapshot is None:
            me = MemberRecord(self._info, MemberState.LEFT if self._left else MemberState.ALIVE)
            others = sorted(
                (p for p in self._peers.values() if p.state is not _CANDIDATE),
                key=lambda p: p.node_id,
            )
            self._snapshot = (me, *(p.record() for p in others))
        return list(self._snapshot)

    def _snapshot_tuple(self) -> tuple[MemberRecord, ...]:
        if self._snapshot is None:
            self.snapshot()
        assert self._snapshot is not None
        return self._snapshot

    def next_deadline(self) -> float:
        """The earliest ``now`` at which :meth:`tick` has something to do.

        May be early (a timer that turns out to have nothing due), never late.
        """
        if self._left:
            return _INF
        timers = self._timers
        while timers:
            due, _, node_id = timers[0]
            p = self._peers.get(node_id)
            if p is not None and p.scheduled == due:
                return min(self._next_hb, due)
            heapq.heappop(timers)  # stale entry
        return self._next_hb

    # ---- events ------------------------------------------------------------------------

    def discovered(self, info: MemberInfo, now: float, source: str) -> list[Effect]:
        """A peer announced by mDNS, a static seed or the restore file (``source``:
        ``"mdns"`` | ``"seed"`` | ``"restore"``; informational).

        Unknown peer: becomes a candidate (Connect + HELLO). A DEAD/LEFT peer announced
        with a newer incarnation is contacted (it restarted; its HELLO will revive it).
        Known live peers and our own id are ignored.
        """
        if self._left or info.node_id == self._info.node_id:
            return []
        out: list[Effect] = []
        self._discover(info, now, out, self._peers.get(info.node_id))
        return out

    def restore(self, records: Iterable[MemberRecord], now: float) -> list[Effect]:
        """Last known members, read back from disk at start (fast rejoin after a restart).

        ALIVE/SUSPECT records become candidates (connected to, listed once they answer);
        unlike a discovered candidate they are kept (and contacted again, like a DEAD
        member) until forget_after, and they count toward the quorum (:meth:`restored`):
        a node that restarts cut off from the others must not elect itself lead of a mesh
        of one in a term the others may already use. DEAD/LEFT records are listed as such
        without connecting. A record about ourselves with an incarnation >= ours raises
        our incarnation above it.
        """
        if self._left:
            return []
        out: list[Effect] = []
        for rec in records:
            info = rec.info
            if info.node_id == self._info.node_id:
                if info.incarnation >= self._info.incarnation:
                    self._set_self(
                        dataclasses.replace(self._info, incarnation=info.incarnation + 1)
                    )
                continue
            p = self._peers.get(info.node_id)
            if rec.state in (MemberState.ALIVE, MemberState.SUSPECT):
                self._discover(info, now, out, p)
                q = self._peers.get(info.node_id)
                if q is not None and q.state is _CANDIDATE:
                    q.restored = True
                    q.contact_deadline = now + self._cfg.forget_after
                    q.reconnects = 0
                    q.next_reconnect = now + self._reconnect_delay(q, now)
                    self._touch(q)
            elif p is None and self._verify_fn(info):
                event = (
                    Event.RESTORED_DEAD if rec.state is MemberState.DEAD else Event.RESTORED_LEFT
                )
                self._create_down(info, event, "restored", now, out)
        return out

    def receive(
        self, sender: str, payload: Payload, now: float, msg_id: bytes = b""
    ) -> list[Effect]:
        """A message from ``sender`` (already authenticated as that node by the transport).

        ``msg_id`` is the envelope's message id (a PING's ACK carries it as correlation id).
        Messages from unknown senders are ignored unless they carry the sender's own info
        (HELLO, INTRO, INTRO_ACK).
        """
        if self._left or sender == self._info.node_id:
            return []
        p = self._peers.get(sender)
        out: list[Effect] = []
        # Fast path: the steady-state flood is heartbeats from live members.
        if type(payload) is Heartbeat and p is not None and p.state is _ALIVE:
            p.last_heard = now
            p.last_evidence = now
            if p.relays:
                self._resolve_relays(p, now, out)
            self._on_heartbeat(p, payload, now, out)
            return out

        if isinstance(payload, Hello | Intro | IntroAck):
            info = payload.info
            if info.node_id != sender or not self._verify(info, p):
                return []
            p = self._heard_info(p, info, now, out)
        elif p is None:
            return []
        elif p.state in _DOWN:
            self._from_down_peer(p, payload, now, out)
            self._touch(p)
            return out
        elif not isinstance(payload, Leave):
            # A LEAVE is handled below without first counting it as a sign of life.
            self._heard(p, now, out)

        if isinstance(payload, Heartbeat):
            self._on_heartbeat(p, payload, now, out)
        elif isinstance(payload, Ping):
            self._send(p, Ack(payload.seq), now, out, msg_id or None)
        elif isinstance(payload, Ack):
            self._on_ack(payload, now, out)
        elif isinstance(payload, PingReq):
            self._on_ping_req(p, payload, now, out)
        elif isinstance(payload, SyncReq):
            self._send(p, Sync(self._snapshot_tuple()), now, out)
        elif isinstance(payload, Sync | MemberUpdate | IntroAck):
            self._merge(p, payload.members, now, out)
        elif isinstance(payload, Leave):
            self._on_leave(p, payload, now, out)
        # Hello, Intro: nothing beyond the info handled above. Error: proof of life only.
        if self._peers.get(p.node_id) is p:
            self._touch(p)
        return out

    def tick(self, now: float) -> list[Effect]:
        """Let time pass: heartbeats, suspicion, probes, expiry. Call at :meth:`next_deadline`."""
        if self._left:
            return []
        out: list[Effect] = []
        timers = self._timers
        while timers and timers[0][0] <= now:
            due, _, node_id = heapq.heappop(timers)
            p = self._peers.get(node_id)
            if p is None or p.scheduled != due:
                continue
            p.scheduled = _INF
            self._check(p, now, out)
            if self._peers.get(node_id) is p:
                self._touch(p)
        if now >= self._next_hb:
            # Publish after the timers so the digest reflects this instant's changes.
            digest = self.digest()
            out.append(Publish(Heartbeat(self._info.incarnation, digest, self._live_count)))
            interval = self.heartbeat_period()
            self._next_hb += interval
            if self._next_hb <= now:  # we were not called for a while: do not burst
                self._next_hb = now + interval
        return out

    def leave(self, now: float) -> list[Effect]:
        """Graceful exit: LEAVE on PUB and directly to every live peer (PUB may drop)."""
        if self._left:
            return []
        self._left = True
        self._changed()
        inc = self._info.incarnation
        out: list[Effect] = [
            MemberChanged(MemberRecord(self._info, MemberState.LEFT), MemberState.ALIVE, "left"),
            Publish(Leave(inc)),
        ]
        for p in self._peers.values():
            if p.state in _LIVE and p.connected:
                out.append(Send(p.node_id, Leave(inc)))
        return out

    # ---- internals: bookkeeping --------------------------------------------------------

    def _view(self, p: _Peer) -> MemberView:
        ms = p.state.member_state
        assert ms is not None
        return MemberView(p.info, ms, p.last_heard, p.state_since)

    def _changed(self) -> None:
        self._digest = None
        self._snapshot = None

    def _verify(self, info: MemberInfo, p: _Peer | None) -> bool:
        # Admission proofs cost an HMAC; info identical to what we stored passed already.
        if p is not None and p.info == info:
            return True
        return self._verify_fn(info)

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _scale(self) -> float:
        """Stretch of the heartbeat period and the silence thresholds for large meshes.

        Every node hears every other node's heartbeats, so the receive load per node is
        (N-1) / interval. Past ``heartbeat_budget`` per second the interval grows with N
        (and suspect_after / dead_guard with it, so detection stays free of false
        positives): 0.2 s up to ~50 nodes, ~0.4 s at 100, ~1.2 s at 300.
        """
        budget = self._cfg.heartbeat_budget
        if budget <= 0:
            return 1.0
        self.digest()  # cached; refreshes the live count after a membership change
        return max(1.0, self._live_count / (budget * self._cfg.heartbeat_interval))

    def heartbeat_period(self) -> float:
        """The current heartbeat period (s): ``heartbeat_interval`` stretched for big meshes."""
        return self._cfg.heartbeat_interval * self._scale()

    def _jitter(self, base: float) -> float:
        return base * (0.5 + self._rng.random())

    def _reconnect_delay(self, p: _Peer, now: float) -> float:
        """``reconnect_first`` doubled per attempt made, capped at twice
        ``reconnect_first`` for ``reconnect_fast_for`` after the verdict (a partition that
        heals is noticed within about a second), then at ``reconnect_interval``."""
        cfg = self._cfg
        first = min(cfg.reconnect_first, cfg.reconnect_interval)
        cap = cfg.reconnect_interval
        if now - p.state_since < cfg.reconnect_fast_for:
            cap = min(cap, 2 * first)
        return self._jitter(min(cap, first * 2 ** min(p.reconnects, 16)))

    def _due(self, p: _Peer) -> float:
        s = p.state
        if s is _ALIVE:
            due = p.last_evidence + self._cfg.suspect_after * self._scale()
        elif s is _SUSPECT:
            due = p.probe_deadline
        elif s is _CANDIDATE:
            due = p.contact_deadline
            if p.restored:
                due = min(due, p.next_reconnect)
        else:
            due = p.state_since + self._cfg.forget_after
            if p.connected:
                due = min(due, p.contact_deadline)
            if s is _DEAD:
                due = min(due, p.next_reconnect)
        for r in p.relays:
            due = min(due, r.deadline)
        return due

    def _touch(self, p: _Peer) -> None:
        """Make sure a timer entry exists no later than p's next due time.

        Lazy timers: messages only ever push a peer's due time later (more evidence), so
        they need no heap work; the entry fires early, finds nothing due and re-arms.
        State changes that bring the due time earlier call this.
        """
        due = self._due(p)
        if due < p.scheduled:
            p.scheduled = due
            heapq.heappush(self._timers, (due, next(self._tiebreak), p.node_id))

    def _move(self, p: _Peer, event: Event, now: float, reason: str, out: list[Effect]) -> None:
        """Apply a table transition; emit MemberChanged when the listed state changes."""
        prev = p.state
        new = transition(prev, event)
        if new is prev:
            return
        p.state = new
        p.state_since = now
        self._changed()
        ms = new.member_state
        if ms is not None:
            out.append(MemberChanged(MemberRecord(p.info, ms), prev.member_state, reason))

    def _set_info(self, p: _Peer, info: MemberInfo, out: list[Effect]) -> bool:
        """Store newer info; refresh the links if the endpoints moved. True if anything
        beyond the incarnation changed."""
        old = p.info
        if old == info:
            return False
        if not info.sig and old.sig and old.incarnation >= info.incarnation:
            return False  # never trade a node's signed info for an unsigned (mDNS) copy
        p.info = info
        self._changed()
        if p.connected and _endpoints(old) != _endpoints(info):
            out.append(Connect(info))
        return dataclasses.replace(old, incarnation=info.incarnation) != info

    def _set_self(self, info: MemberInfo) -> None:
        self._info = self._sign(info) if self._sign is not None else info
        self._changed()

    def update_self(self, now: float, **changes: object) -> list[Effect]:
        """Change this node's own info (e.g. ``priority``): a new incarnation, signed,
        published so that every member (and every voter) sees it."""
        if self._left:
            return []
        info = dataclasses.replace(self._info, **changes)  # type: ignore[arg-type]
        if info == self._info:
            return []
        self._set_self(dataclasses.replace(info, incarnation=self._info.incarnation + 1))
        mine = MemberRecord(self._info, MemberState.ALIVE)
        return [MemberChanged(mine, MemberState.ALIVE, "updated"), Publish(MemberUpdate((mine,)))]

    def _ensure_link(self, p: _Peer, now: float, out: list[Effect]) -> bool:
        """Connect (+ HELLO) if not connected. A link to a DEAD/LEFT peer is a contact
        window: closed again after ``reconnect_window`` unless the peer comes back.

        Links to members known only from others' gossip (never heard, not discovered or
        restored) are bounded by ``max_unheard_links``: a member holding the mesh key can
        gossip any number of members, and none of them costs more than one of those
        slots. Beyond, the link is not opened now (the retry timers try it again when a
        slot is free). Returns whether the peer is linked."""
        if not p.connected:
            unheard = p.last_heard is None and p.state is not _CANDIDATE and not p.restored
            if unheard and not self._unheard_slot(p.node_id):
                return False
            p.connected = True
            out.append(Connect(p.info))
            out.append(Send(p.node_id, Hello(self._info)))
        if p.state in _DOWN:
            end = now + self._cfg.reconnect_window
            if p.contact_deadline == _INF or p.contact_deadline < end:
                p.contact_deadline = end
        return True

    def _unheard_slot(self, node_id: str) -> bool:
        """Take one of the ``max_unheard_links`` slots for ``node_id`` (freed once the
        peer is heard, disconnected or removed)."""
        held = self._unheard_links
        for n in list(held):
            q = self._peers.get(n)
            if q is None or not q.connected or q.last_heard is not None:
                held.discard(n)
        if len(held) >= self._cfg.max_unheard_links:
            return False
        held.add(node_id)
        return True

    def _send(
        self,
        p: _Peer,
        payload: Payload,
        now: float,
        out: list[Effect],
        correlation_id: bytes | None = None,
    ) -> None:
        if self._ensure_link(p, now, out):
            out.append(Send(p.node_id, payload, correlation_id))

    def _disconnect(self, p: _Peer, out: list[Effect]) -> None:
        if p.connected:
            p.connected = False
            out.append(Disconnect(p.node_id))
        p.contact_deadline = _INF

    def _clear_probe(self, p: _Peer) -> None:
        p.probe_seq = 0
        p.probe_indirect = False
        p.probe_deadline = _INF

    def _went_down(self, p: _Peer, now: float, out: list[Effect], *, retry: bool = False) -> None:
        """Common tail of every move to DEAD/LEFT.

        ``retry``: it was a live member of ours, so a DEAD verdict gets periodic reconnect
        attempts (partition healing). Members we only ever knew as dead (restored, or
        learned dead by gossip) are not chased: if they come back they find us.
        """
        self._clear_probe(p)
        self._disconnect(p, out)
        # Messages already in flight when it went down are not worth a notice.
        p.last_notice = now
        p.next_reconnect = _INF
        p.reconnects = 0
        if retry and p.state is _DEAD:
            p.next_reconnect = now + self._reconnect_delay(p, now)

    def _came_back(self, p: _Peer, now: float) -> None:
        """Common tail of every move from DEAD/LEFT/CANDIDATE to ALIVE."""
        p.last_evidence = max(p.last_evidence, now)
        p.contact_deadline = _INF
        p.next_reconnect = _INF

    def _add(self, info: MemberInfo, now: float) -> _Peer:
        p = _Peer(info=info, state=PeerState.UNKNOWN, state_since=now, last_evidence=now)
        self._peers[info.node_id] = p
        return p

    def _remove(self, p: _Peer, out: list[Effect]) -> None:
        self._disconnect(p, out)
        del self._peers[p.node_id]
        self._changed()

    def _create_down(
        self, info: MemberInfo, event: Event, reason: str, now: float, out: list[Effect]
    ) -> None:
        p = self._add(info, now)
        self._move(p, event, now, reason, out)
        self._went_down(p, now, out)
        self._touch(p)

    # ---- internals: discovery and direct contact ---------------------------------------

    def _discover(self, info: MemberInfo, now: float, out: list[Effect], p: _Peer | None) -> None:
        if p is None:
            if not self._admit_fn(info):
                return
            p = self._add(info, now)
            self._move(p, Event.DISCOVERED, now, "discovered", out)
            # Fixed from the first sighting: re-announcing a stale record must not keep a
            # ghost alive forever.
            p.contact_deadline = now + self._cfg.candidate_timeout
            self._ensure_link(p, now, out)
        elif p.state is _CANDIDATE:
            if info.incarnation < p.info.incarnation or not self._admit_fn(info):
                return
            self._move(p, Event.DISCOVERED, now, "discovered", out)
            self._set_info(p, info, out)
        elif p.state in _DOWN:
            # A stale mDNS record of a crashed host carries the old incarnation: ignore it.
            # A newer one means the host restarted: open a contact window so its HELLO
            # (with that newer incarnation) can revive it. The stored record keeps the old
            # incarnation until then, or the revival would not look newer.
            if info.incarnation <= p.info.incarnation or not self._admit_fn(info):
                return
            self._move(p, Event.DISCOVERED, now, "discovered", out)
            if not p.connected:
                p.connected = True
                out.append(Connect(info))
                out.append(Send(p.node_id, Hello(self._info)))
            elif _endpoints(info) != _endpoints(p.info):
                out.append(Connect(info))
            p.contact_deadline = now + self._cfg.candidate_timeout
        else:
            return  # a live member: its own messages keep its info current
        self._touch(p)

    def _heard_info(
        self, p: _Peer | None, info: MemberInfo, now: float, out: list[Effect]
    ) -> _Peer:
        """HELLO / INTRO / INTRO_ACK: the sender's own, verified info."""
        if p is None:
            p = self._add(info, now)
            self._move(p, Event.HEARD, now, "joined", out)
            p.last_heard = now
            self._ensure_link(p, now, out)
            self._gossip_join(p, out)
            return p
        if p.state in _DOWN:
            if info.incarnation > p.info.incarnation:
                self._set_info(p, info, out)
                self._move(p, Event.RESTARTED, now, "restarted", out)
                p.last_heard = now
                self._came_back(p, now)
                self._ensure_link(p, now, out)
                self._gossip_join(p, out)
            else:
                self._notice(p, now, out)
            return p
        # Candidate or live. A candidate's info came from mDNS/seed/disk: the peer's own
        # wins. A live member's info is replaced only by a newer incarnation.
        if p.state is _CANDIDATE or info.incarnation > p.info.incarnation:
            updated = self._set_info(p, info, out)
            if updated and p.state in _LIVE:
                out.append(MemberChanged(p.record(), p.state.member_state, "updated"))
        self._heard(p, now, out)
        return p

    def _gossip_join(self, p: _Peer, out: list[Effect]) -> None:
        """Tell everyone at once about a member we just heard from first-hand (new, or back
        with a newer incarnation). Without it the others would learn of it only through
        digest anti-entropy, one heartbeat later, and would hold its handshakes meanwhile.
        Members learned by gossip are not re-gossiped: no cascades."""
        out.append(Publish(MemberUpdate((p.record(),))))

    def _heard(self, p: _Peer, now: float, out: list[Effect]) -> None:
        """Any message from a candidate or live peer: proof of life."""
        p.last_heard = now
        p.last_evidence = now
        if p.state is _CANDIDATE:
            self._move(p, Event.HEARD, now, "joined", out)
            self._came_back(p, now)
            self._gossip_join(p, out)
        elif p.state is _SUSPECT:
            self._move(p, Event.HEARD, now, "recovered", out)
            self._clear_probe(p)
        if p.relays:
            self._resolve_relays(p, now, out)

    def _from_down_peer(self, p: _Peer, payload: Payload, now: float, out: list[Effect]) -> None:
        """A message from a peer we hold DEAD or LEFT (HELLO & co. are handled before).

        It is alive after all, but an old-incarnation message must not revive it silently
        (other nodes would disagree forever): we tell it it is dead, it refutes with a newer
        incarnation, and that revives it everywhere.
        """
        if isinstance(payload, Leave):
            self._on_leave(p, payload, now, out)
            return
        if isinstance(payload, Sync | MemberUpdate):
            # Only its records about itself (a refutation) and about us count.
            self._merge(p, payload.members, now, out)
            if p.state not in _DOWN:
                return
        elif isinstance(payload, Ping):
            # Answer anyway: it is probing us, and our silence would make it declare us dead.
            self._send(p, Ack(payload.seq), now, out)
        elif isinstance(payload, SyncReq):
            # Our SYNC carries its DEAD record: it will refute.
            self._send(p, Sync(self._snapshot_tuple()), now, out)
        elif isinstance(payload, Heartbeat) and payload.incarnation > p.info.incarnation:
            # Newer than our verdict: fetch its record (digests differ) instead of nagging.
            self._on_heartbeat(p, payload, now, out)
            return
        self._notice(p, now, out)

    def _notice(self, p: _Peer, now: float, out: list[Effect]) -> None:
        """Tell a DEAD/LEFT peer that writes to us what we hold about it, so it refutes."""
        if now - p.last_notice < self._cfg.sync_interval:
            return
        p.last_notice = now
        self._send(p, MemberUpdate((p.record(),)), now, out)

    # ---- internals: message handlers ---------------------------------------------------

    def _on_heartbeat(self, p: _Peer, hb: Heartbeat, now: float, out: list[Effect]) -> None:
        if hb.digest == self.digest():
            return
        # Anti-entropy, rate-limited twice: per peer (sync_interval) and overall (one per
        # heartbeat interval), so a view in flux does not turn into a SYNC storm.
        if now - p.last_sync_req < self._cfg.sync_interval:
            return
        if now - self._last_sync_any < self._cfg.heartbeat_interval:
            return
        p.last_sync_req = now
        self._last_sync_any = now
        self._send(p, SyncReq(self.digest()), now, out)

    def _on_ack(self, ack: Ack, now: float, out: list[Effect]) -> None:
        # A plain ACK (target "") from the suspect itself already counted as proof of life.
        if not ack.target or not ack.ok:
            return
        t = self._peers.get(ack.target)
        if t is None or t.state is not _SUSPECT or t.probe_seq != ack.seq:
            return
        # Indirect evidence: it resets the suspicion timer (last_evidence) but not
        # last_heard, which stays "heard by us directly" (the dead guard relies on that).
        t.last_evidence = now
        self._move(t, Event.INDIRECT_ACK, now, "recovered", out)
        self._clear_probe(t)
        self._touch(t)

    def _on_ping_req(self, p: _Peer, req: PingReq, now: float, out: list[Effect]) -> None:
        if req.target == self._info.node_id:
            self._send(p, Ack(req.seq, req.target, True), now, out)
            return
        t = self._peers.get(req.target)
        if t is None or t.state not in (_ALIVE, _SUSPECT, _CANDIDATE):
            # We cannot probe what we do not hold live: say so at once.
            self._send(p, Ack(req.seq, req.target, False), now, out)
            return
        # We answer ok=False on timeout (rather than staying silent): it costs one small
        # message and tells the requester's logs which paths failed.
        t.relays.append(_Relay(p.node_id, req.seq, now + self._cfg.probe_timeout))
        self._send(t, Ping(self._next_seq()), now, out)
        self._touch(t)

    def _resolve_relays(self, t: _Peer, now: float, out: list[Effect]) -> None:
        """The target of PING_REQs we serve spoke (any message): report success."""
        relays, t.relays = t.relays, []
        for r in relays:
            self._relay_answer(r, t.node_id, True, now, out)

    def _relay_answer(
        self, r: _Relay, target: str, ok: bool, now: float, out: list[Effect]
    ) -> None:
        q = self._peers.get(r.requester)
        if q is not None and q.state in _LIVE and q.connected:
            self._send(q, Ack(r.seq, target, ok), now, out)

    def _on_leave(self, p: _Peer, msg: Leave, now: float, out: list[Effect]) -> None:
        if p.state is _LEFT or msg.incarnation < p.info.incarnation:
            return  # duplicate (PUB and direct), or a stale one from an older incarnation
        if msg.incarnation > p.info.incarnation:
            self._set_info(p, dataclasses.replace(p.info, incarnation=msg.incarnation), out)
        self._move(p, Event.LEAVE, now, "left", out)
        self._went_down(p, now, out)

    # ---- internals: gossip -------------------------------------------------------------

    def _merge(
        self, sender: _Peer, records: Iterable[MemberRecord], now: float, out: list[Effect]
    ) -> None:
        """Merge gossiped records. Only a live sender vouches for third parties; from a
        sender we hold DEAD/LEFT we take only its records about itself and about us."""
        trusted = sender.state in _LIVE
        me = self._info.node_id
        for rec in records:
            node_id = rec.info.node_id
            if rec.state is MemberState.LEFT and node_id not in (sender.node_id, me):
                held = self._peers.get(node_id)
                if held is not None and held.state in _LIVE:
                    # Only a node itself may say it left (LEAVE, or its own record):
                    # relayed about a member we hold live, "left" is a verdict like
                    # "dead" - the dead guard applies and the subject can refute it.
                    rec = MemberRecord(rec.info, MemberState.DEAD)
            if node_id != me and not (trusted or node_id == sender.node_id):
                continue
            q = self._peers.get(node_id)
            # About us: our own incarnation rules (bounded in _merge_self), so even a
            # record carrying an unsigned copy of our info (an mDNS one) gets refuted.
            if node_id != me and not self._verify(rec.info, q):
                # Not what that member said (no valid signature or proof): refused.
                out.append(Refused("bad_member_info", sender.node_id, f"about {node_id}"))
                continue
            if node_id == me:
                self._merge_self(rec, sender, now, out)
            else:
                if (
                    q is not None
                    and node_id != sender.node_id
                    and rec.info.incarnation > q.info.incarnation + MAX_INCARNATION_JUMP
                ):
                    # A third party cannot move a member's incarnation far: only the
                    # member raises it, by one at a time.
                    out.append(Refused("incarnation_jump", sender.node_id, f"about {node_id}"))
                    continue
                self._merge_one(q, rec, now, out)
                q = self._peers.get(node_id)
                if q is not None:
                    self._touch(q)

    def _merge_self(self, rec: MemberRecord, sender: _Peer, now: float, out: list[Effect]) -> None:
        inc = rec.info.incarnation
        ours = self._info.incarnation
        if inc > ours or (inc == ours and rec.state is not MemberState.ALIVE):
            # Refute: a strictly newer incarnation of ourselves, ALIVE. We own our
            # incarnation: a claim far above it (nobody but us raises it, by one per
            # refutation or restart) is not believed beyond MAX_INCARNATION_JUMP, so a
            # forged number cannot push us to the counter's bound.
            if inc > ours + MAX_INCARNATION_JUMP or inc >= MAX_COUNTER:
                out.append(Refused("incarnation_jump", sender.node_id, f"about us: {inc}"))
                inc = ours
            self._set_self(dataclasses.replace(self._info, incarnation=inc + 1))
            mine = MemberRecord(self._info, MemberState.ALIVE)
            out.append(MemberChanged(mine, MemberState.ALIVE, "refuted"))
            out.append(Publish(MemberUpdate((mine,))))
            # Also directly to the accuser: it may not be subscribed to us (a node that
            # declared us dead dropped our PUB), and its bad link may be the PUB one.
            sender.last_self_notice = now
            self._send(sender, MemberUpdate((mine,)), now, out)
        elif (
            rec.state is not MemberState.ALIVE
            and now - sender.last_self_notice >= self._cfg.sync_interval
        ):
            # The sender holds an outdated verdict about us; correct it (rate-limited).
            sender.last_self_notice = now
            mine = MemberRecord(self._info, MemberState.ALIVE)
            self._send(sender, MemberUpdate((mine,)), now, out)

    def _merge_one(self, q: _Peer | None, rec: MemberRecord, now: float, out: list[Effect]) -> None:
        """SWIM merge of one record about a third party (or the sender itself): the action
        is looked up in :data:`~meshd.membership.merge.MERGE` and carried out."""
        if q is None:
            action = merge_action(_UNKNOWN, rec.state, Order.NEWER)
            _ADD_ACTIONS[action](self, rec, now, out)
        else:
            order = order_of(q.info.incarnation, rec.info.incarnation)
            action = merge_action(q.state, rec.state, order)
            _MERGE_ACTIONS[action](self, q, rec, now, out)

    # The actions of the merge table. Each one but IGNORE first checks the admission proof
    # of the record's info (GUARDED_DEAD after the dead guard): info that fails it is
    # ignored. Unknown members (ADD_*) have no _Peer yet.

    def _add_alive(self, rec: MemberRecord, now: float, out: list[Effect]) -> None:
        if not self._verify_fn(rec.info):
            return
        q = self._add(rec.info, now)
        self._move(q, Event.GOSSIP_ALIVE, now, "joined", out)
        self._ensure_link(q, now, out)

    def _add_down(self, rec: MemberRecord, now: float, out: list[Effect]) -> None:
        if not self._verify_fn(rec.info):
            return
        self._create_down(rec.info, _DOWN_EVENT[rec.state], "gossip", now, out)

    def _ignore(self, q: _Peer, rec: MemberRecord, now: float, out: list[Effect]) -> None:
        return

    def _vouched(self, q: _Peer, rec: MemberRecord, now: float, out: list[Effect]) -> None:
        if not self._verify(rec.info, q):
            return
        self._set_info(q, rec.info, out)
        self._move(q, Event.GOSSIP_ALIVE, now, "joined", out)
        self._came_back(q, now)

    def _update_info(self, q: _Peer, rec: MemberRecord, now: float, out: list[Effect]) -> None:
        if not self._verify(rec.info, q):
            return
        if self._set_info(q, rec.info, out):
            out.append(MemberChanged(q.record(), q.state.member_state, "updated"))

    def _refuted(self, q: _Peer, rec: MemberRecord, now: float, out: list[Effect]) -> None:
        if not self._verify(rec.info, q):
            return
        self._set_info(q, rec.info, out)
        q.last_evidence = now
        self._move(q, Event.GOSSIP_ALIVE, now, "refuted", out)
        self._clear_probe(q)

    def _gossip_down(self, q: _Peer, rec: MemberRecord, now: float, out: list[Effect]) -> None:
        self._take_down(q, rec, now, out, retry=False)

    def _guarded_dead(self, q: _Peer, rec: MemberRecord, now: float, out: list[Effect]) -> None:
        if q.last_heard is not None and now - q.last_heard < self._cfg.dead_guard * self._scale():
            # Dead guard: we heard it ourselves just now, so one node's verdict (maybe one
            # bad link) does not override us. Tell the peer, so it refutes and the node
            # that accused it learns the newer incarnation.
            if now - q.last_notice >= self._cfg.sync_interval:
                q.last_notice = now
                self._send(q, MemberUpdate((rec,)), now, out)
            return
        self._take_down(q, rec, now, out, retry=True)

    def _restarted(self, q: _Peer, rec: MemberRecord, now: float, out: list[Effect]) -> None:
        if not self._verify(rec.info, q):
            return
        self._set_info(q, rec.info, out)
        self._move(q, Event.RESTARTED, now, "restarted", out)
        self._came_back(q, now)
        self._ensure_link(q, now, out)

    def _newer_down_info(self, q: _Peer, rec: MemberRecord, now: float, out: list[Effect]) -> None:
        if self._verify(rec.info, q):
            self._set_info(q, rec.info, out)

    def _take_down(
        self, q: _Peer, rec: MemberRecord, now: float, out: list[Effect], *, retry: bool
    ) -> None:
        """Apply a winning DEAD/LEFT record (``retry``: see :meth:`_went_down`)."""
        if not self._verify(rec.info, q):
            return
        self._set_info(q, rec.info, out)
        self._move(q, _DOWN_EVENT[rec.state], now, "gossip", out)
        self._went_down(q, now, out, retry=retry)

    # ---- internals: timers -------------------------------------------------------------

    def _check(self, p: _Peer, now: float, out: list[Effect]) -> None:
        """Do whatever is due for ``p`` at ``now`` (idempotent: early calls do nothing)."""
        if p.relays:
            keep: list[_Relay] = []
            for r in p.relays:
                if r.deadline <= now:
                    self._relay_answer(r, p.node_id, False, now, out)
                else:
                    keep.append(r)
            p.relays = keep
        s = p.state
        cfg = self._cfg
        if s is _ALIVE:
            if now >= p.last_evidence + cfg.suspect_after * self._scale():
                self._suspect(p, now, out)
        elif s is _SUSPECT:
            if now >= p.probe_deadline:
                if p.probe_indirect:
                    self._move(p, Event.PROBE_FAILED, now, "probe_failed", out)
                    out.append(Publish(MemberUpdate((p.record(),))))
                    self._went_down(p, now, out, retry=True)
                else:
                    self._probe_indirect(p, now, out)
        elif s is _CANDIDATE:
            if now >= p.contact_deadline:
                # Never heard from, never vouched for: a stale announcement. Not a member,
                # so no MemberChanged.
                transition(s, Event.EXPIRED)
                self._remove(p, out)
            elif p.restored and now >= p.next_reconnect:
                p.reconnects += 1
                p.next_reconnect = now + self._reconnect_delay(p, now)
                if p.connected:
                    out.append(Send(p.node_id, Hello(self._info)))
                else:
                    self._ensure_link(p, now, out)
        else:  # DEAD / LEFT
            if now >= p.state_since + cfg.forget_after:
                rec = p.record()
                transition(s, Event.FORGOTTEN)
                self._remove(p, out)
                out.append(MemberChanged(rec, rec.state, "forgotten"))
                return
            if p.connected and now >= p.contact_deadline:
                self._disconnect(p, out)
            if s is _DEAD and now >= p.next_reconnect:
                # Partition healing: try it again. If it is alive and still holds our old
                # incarnation, our HELLO makes it notify us and the refutations flow.
                p.reconnects += 1
                p.next_reconnect = now + self._reconnect_delay(p, now)
                if p.connected:  # a contact window still open: say HELLO again
                    out.append(Send(p.node_id, Hello(self._info)))
                self._ensure_link(p, now, out)

    def _suspect(self, p: _Peer, now: float, out: list[Effect]) -> None:
        self._move(p, Event.SILENT, now, "heartbeat_timeout", out)
        # Gossip the suspicion so the suspect can refute before the probes run out.
        out.append(Publish(MemberUpdate((p.record(),))))
        p.probe_seq = self._next_seq()
        p.probe_indirect = False
        p.probe_deadline = now + self._cfg.probe_timeout
        self._send(p, Ping(p.probe_seq), now, out)

    def _probe_indirect(self, p: _Peer, now: float, out: list[Effect]) -> None:
        helpers = [q for q in self._peers.values() if q.state is _ALIVE and q is not p]
        k = min(self._cfg.indirect_probes, len(helpers))
        for h in self._rng.sample(helpers, k):
            self._send(h, PingReq(p.probe_seq, p.node_id), now, out)
        # One more direct try: the first PING or its ACK may just have been lost.
        self._send(p, Ping(p.probe_seq), now, out)
        p.probe_indirect = True
        p.probe_deadline = now + self._cfg.indirect_timeout


# ---- the merge table's actions -------------------------------------------------------

_AddAction: TypeAlias = Callable[[Membership, MemberRecord, float, list[Effect]], None]
_MergeAction: TypeAlias = Callable[[Membership, _Peer, MemberRecord, float, list[Effect]], None]

#: The actions of the merge table's UNKNOWN rows (no _Peer yet).
_ADD_ACTIONS: dict[Action, _AddAction] = {
    Action.ADD_ALIVE: Membership._add_alive,
    Action.ADD_DOWN: Membership._add_down,
}
#: The actions of every other row.
_MERGE_ACTIONS: dict[Action, _MergeAction] = {
    Action.IGNORE: Membership._ignore,
    Action.VOUCHED: Membership._vouched,
    Action.UPDATE_INFO: Membership._update_info,
    Action.REFUTED: Membership._refuted,
    Action.GOSSIP_DOWN: Membership._gossip_down,
    Action.GUARDED_DEAD: Membership._guarded_dead,
    Action.RESTARTED: Membership._restarted,
    Action.NEWER_DOWN_INFO: Membership._newer_down_info,
}
