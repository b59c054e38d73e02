"""An in-process transport: several daemons' links in one event loop, no sockets.

:class:`MemoryNetwork` is the "LAN": transports register their endpoints on it by
``(host, port)``. :class:`MemoryTransport` implements :class:`meshd.net.base.Transport`
with the real transport's semantics, minus encryption:

- a frame is delivered on a later loop turn (``loop.call_soon``), never inside the
  sender's call;
- admission works like the ZAP handler: a peer's frames are delivered, authenticated as
  the node id it was admitted under, only once the receiver :meth:`admitted
  <MemoryTransport.admit>` its key; until then they are held for up to
  ``admission_wait`` seconds (the two sides of a new link learn of each other at about
  the same moment), then dropped, counted (``zap_refused``) and told to ``on_refused``;
- a PUB frame reaches every transport that connected to the publisher and whose key the
  publisher admitted;
- the intro endpoint answers anyone (as the real one answers anyone holding the mesh key)
  and tells the handler the caller's key.

Used by the daemon's unit tests to run whole nodes in one process. Not a simulator:
time is the real loop's (see :mod:`meshd.sim` for simulated time).
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from typing import Final

from meshd import clock
from meshd.net.base import Counters, FrameHandler, IntroHandler, Refusal, RefusalHandler

#: s. How long frames from a key not admitted yet are held before they are dropped.
ADMISSION_WAIT: Final = 2.0


@dataclass
class MemoryNetwork:
    """Endpoints of in-process transports, by ``(host, port)``."""

    _routers: dict[tuple[str, int], MemoryTransport] = field(default_factory=dict)
    _intros: dict[tuple[str, int], MemoryTransport] = field(default_factory=dict)
    _ports: itertools.count[int] = field(default_factory=lambda: itertools.count(30000, 3))
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def transport(
        self,
        curve_pk: bytes,
        on_frame: FrameHandler,
        on_intro: IntroHandler,
        admission_wait: float = ADMISSION_WAIT,
    ) -> MemoryTransport:
        """A new transport on this network for the node whose CURVE key is ``curve_pk``."""
        rid = next(self._ids).to_bytes(5, "big")
        return MemoryTransport(self, curve_pk, rid, on_frame, on_intro, admission_wait)


class MemoryTransport:
    """One node's links on a :class:`MemoryNetwork` (see the module docstring)."""

    def __init__(
        self,
        net: MemoryNetwork,
        curve_pk: bytes,
        rid: bytes,
        on_frame: FrameHandler,
        on_intro: IntroHandler,
        admission_wait: float,
    ) -> None:
        self._net = net
        self.curve_pk = curve_pk
        self.rid = rid
        self._on_frame = on_frame
        self._on_intro = on_intro
        self._wait = admission_wait
        self._counters = Counters()
        self.on_refused: RefusalHandler | None = None
        self._admitted: dict[bytes, str] = {}
        #: node id -> (peer transport or None for a dead/wrong endpoint, key, host, port)
        self._links: dict[str, tuple[MemoryTransport | None, bytes, str, int]] = {}
        #: transports subscribed to our broadcasts
        self._subscribers: dict[bytes, MemoryTransport] = {}
        self._by_rid: dict[bytes, MemoryTransport] = {}
        self._address: tuple[str, int] | None = None
        self._closed = False

    @property
    def counters(self) -> Counters:
        return self._counters

    async def start(self, host: str, port: int) -> tuple[int, int, int]:
        base = port or next(self._net._ports)
        if (host, base) in self._net._routers:
            raise OSError(f"{host}:{base} is in use")
        self._address = (host, base)
        self._net._routers[(host, base)] = self
        self._net._intros[(host, base + 2)] = self
        return base, base + 1, base + 2

    def admit(self, curve_pk: bytes, node_id: str) -> None:
        self._admitted[curve_pk] = node_id

    def connect_peer(
        self, node_id: str, curve_pk: bytes, host: str, router_port: int, pub_port: int
    ) -> bool:
        if self._links.get(node_id, (None, b"", "", 0))[1:] == (curve_pk, host, router_port):
            return False  # already linked the same way
        self.disconnect_peer(node_id)
        peer = self._net._routers.get((host, router_port))
        if peer is None or peer.curve_pk != curve_pk:
            # A link to nowhere, as a zmq connect to a dead or wrong endpoint: frames sent
            # over it are queued and never delivered.
            self._links[node_id] = (None, curve_pk, host, router_port)
            return True
        self._links[node_id] = (peer, curve_pk, host, router_port)
        peer._subscribers[self.curve_pk] = self
        peer._by_rid[self.rid] = self
        return True

    def disconnect_peer(self, node_id: str, linger_ms: int = 0) -> None:
        old = self._links.pop(node_id, None)
        if old is not None and old[0] is not None:
            old[0]._subscribers.pop(self.curve_pk, None)

    def send(self, node_id: str, data: bytes, routing_id: bytes | None = None) -> bool:
        if self._closed:
            return False
        link = self._links.get(node_id)
        if link is not None:
            if link[0] is not None:  # else queued on a link to nowhere: never delivered
                self._deliver(link[0], data, "router", None)
        else:
            back = self._by_rid.get(routing_id or b"")
            if back is None:
                self._counters.dropped_out += 1
                return False
            self._deliver(back, data, "dealer", None)
        self._counters.frames_out += 1
        return True

    def publish(self, topic: bytes, data: bytes) -> None:
        if self._closed:
            return
        for key, sub in list(self._subscribers.items()):
            if key in self._admitted:
                self._deliver(sub, data, "sub", topic)
        self._counters.frames_out += 1

    def _deliver(self, to: MemoryTransport, data: bytes, via: str, topic: bytes | None) -> None:
        loop = asyncio.get_running_loop()
        loop.call_soon(to._receive, self, data, via, topic, clock.monotonic() + to._wait)

    def _receive(
        self, sender: MemoryTransport, data: bytes, via: str, topic: bytes | None, until: float
    ) -> None:
        if self._closed:
            return
        if via == "router":
            # Our ROUTER authenticates the sender's key (ZAP); a DEALER or SUB reply comes
            # over a link we opened to a peer we know.
            user = self._admitted.get(sender.curve_pk)
            if user is None:
                loop = asyncio.get_running_loop()
                if clock.monotonic() < until:
                    loop.call_later(0.01, self._receive, sender, data, via, topic, until)
                else:
                    self._counters.zap_refused += 1
                    if self.on_refused is not None:
                        host = sender._address[0] if sender._address else ""
                        key = sender.curve_pk.hex()
                        self.on_refused(Refusal(host, key, "key not admitted to this mesh"))
                return
            rid: bytes | None = sender.rid
        else:
            user = next((nid for nid, link in self._links.items() if link[0] is sender), None)
            if user is None:
                return
            rid = None
        self._counters.frames_in += 1
        self._on_frame(data, via, user, rid, topic)

    async def intro(self, host: str, port: int, data: bytes, timeout: float) -> bytes | None:
        target = self._net._intros.get((host, port))
        await asyncio.sleep(0)
        if target is None or target._closed:
            await asyncio.sleep(timeout)
            return None
        target._counters.frames_in += 1
        return target._on_intro(data, self.curve_pk.hex())

    async def close(self, linger_ms: int = 0) -> None:
        if self._closed:
            return
        self._closed = True
        for node_id in list(self._links):
            self.disconnect_peer(node_id)
        if self._address is not None:
            host, base = self._address
            self._net._routers.pop((host, base), None)
            self._net._intros.pop((host, base + 2), None)
        await asyncio.sleep(0)
