"""What the daemon needs of a transport: the :class:`Transport` protocol, its callbacks
and its counters.

Two transports implement it: :class:`meshd.net.transport.ZmqTransport` (the real one:
CURVE-encrypted ZeroMQ sockets, ZAP admission) and :class:`meshd.net.memory.MemoryTransport`
(in-process, for tests of the daemon's parts without sockets). A transport knows frames
and peers' keys, not protocols: it never decodes what it carries.

Per node: a ROUTER-like inbound endpoint (direct messages), a PUB-like one (broadcasts)
and an intro endpoint (first contact from static seeds), on ports ``base``, ``base + 1``
and ``base + 2``; per peer, a DEALER-like link out and a SUB-like link to its broadcasts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

#: Called for every frame read: ``(data, via, authenticated node id or None, routing id
#: or None, PUB/SUB topic or None)``; ``via`` is ``router``, ``dealer`` or ``sub``.
FrameHandler = Callable[[bytes, str, "str | None", "bytes | None", "bytes | None"], None]
#: Called for an INTRO frame on the intro endpoint: ``(data, handshake key hex or None)``;
#: returns the reply frame, or None for no reply.
IntroHandler = Callable[[bytes, "str | None"], "bytes | None"]


@dataclass(frozen=True, slots=True)
class Refusal:
    """A CURVE handshake the ZAP handler refused (already counted in ``zap_refused``).

    ``source``: the client's address as the transport saw it (an IP address for TCP);
    ``key``: the CURVE public key it presented, hex ('' when it presented none);
    ``detail``: why, in words."""

    source: str
    key: str
    detail: str


#: Told of every :class:`Refusal` (to log and audit it, rate-limited).
RefusalHandler = Callable[[Refusal], None]


@dataclass
class Counters:
    """What a transport counts.

    ``frames_in``: frames handed to the node (well framed, after a completed handshake:
    what the node then decodes); ``frames_out``: frames queued to a peer;
    ``dropped_out``: frames that could not be queued; ``zap_admitted`` / ``zap_refused``:
    CURVE handshakes the ZAP handler admitted / refused; ``handshakes_failed``:
    handshakes on the listening sockets that ended without completing for another reason
    (timed out after ``handshake_timeout`` - a partial greeting, or a handshake held for
    admission -, a malformed greeting, a CURVE failure such as a wrong server key, or the
    client hung up); ``rejected``: frames and records refused, by reason. A refused or
    failed handshake never counts as a frame."""

    frames_in: int = 0
    frames_out: int = 0
    dropped_out: int = 0
    zap_admitted: int = 0
    zap_refused: int = 0
    handshakes_failed: int = 0
    rejected: dict[str, int] = field(default_factory=dict)

    def reject(self, reason: str) -> None:
        """Count one refused frame or record under ``reason`` (a short stable token)."""
        self.rejected[reason] = self.rejected.get(reason, 0) + 1


class Transport(Protocol):
    """A node's links to its peers (see the module docstring)."""

    #: Told of refused handshakes (set by the daemon; None: nobody is told).
    on_refused: RefusalHandler | None

    @property
    def counters(self) -> Counters: ...

    async def start(self, host: str, port: int) -> tuple[int, int, int]:
        """Listen on ``host`` (ports base, base + 1, base + 2; 0 = any free triple);
        returns the three ports."""
        ...

    def admit(self, curve_pk: bytes, node_id: str) -> None:
        """Let the peer with this CURVE key in (its frames are authenticated as
        ``node_id``)."""
        ...

    def connect_peer(
        self, node_id: str, curve_pk: bytes, host: str, router_port: int, pub_port: int
    ) -> bool:
        """Open the links to a peer; False when already linked the same way."""
        ...

    def disconnect_peer(self, node_id: str, linger_ms: int = 0) -> None: ...

    def send(self, node_id: str, data: bytes, routing_id: bytes | None = None) -> bool:
        """A direct frame (over our link, else back through our inbound endpoint by
        ``routing_id``); never blocks: False (counted) when it cannot go."""
        ...

    def publish(self, topic: bytes, data: bytes) -> None: ...

    async def intro(self, host: str, port: int, data: bytes, timeout: float) -> bytes | None:
        """One INTRO exchange with a seed's intro endpoint; None on timeout."""
        ...

    async def close(self, linger_ms: int = 0) -> None: ...
