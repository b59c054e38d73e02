"""ZeroMQ transport: the only module that touches mesh sockets.

Per node: one ROUTER (inbound direct messages), one PUB (our broadcasts), one intro
ROUTER (first contact from static seeds), and per peer one DEALER (direct messages out)
and one SUB (the peer's broadcasts). Every link is CURVE-encrypted.

Admission is enforced by a ZAP handler before a single byte of a peer reaches us:

* domain ``mesh`` (ROUTER and PUB): the client's CURVE key must belong to a member whose
  admission proof we verified. A key we do not know yet is *held* (not refused) for up to
  ``admission_wait`` seconds, because the two sides of a new link learn about each other at
  nearly the same moment (mDNS, gossip) and libzmq does not retry a refused handshake.
* domain ``intro``: any client that completes the handshake is accepted - doing so needs
  the intro public key, which only holders of the mesh key can derive. The INTRO message
  that follows must still carry a valid proof for the very key that did the handshake.

The ZAP reply's user id is the member's node id, so every message read from the ROUTER
is checked against the sender id in its envelope: a member cannot speak for another.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import zmq
import zmq.asyncio
from zmq.utils import z85

from meshd import log
from meshd.config import TransportConfig
from meshd.identity import Identity, MeshKey

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
DOMAIN_MESH = b"mesh"
DOMAIN_INTRO = b"intro"
#: Most handshakes held at once waiting for admission; beyond it the oldest is refused.
MAX_PENDING_ZAP = 512

#: Callback for every frame read: (data, via, authenticated node id or None, routing id,
#: PUB/SUB topic or None).
FrameHandler = Callable[[bytes, str, "str | None", "bytes | None", "bytes | None"], None]

_log = log.get("meshd.net")


@dataclass
class Counters:
    frames_in: int = 0
    frames_out: int = 0
    dropped_out: int = 0
    zap_admitted: int = 0
    zap_refused: int = 0
    rejected: dict[str, int] = field(default_factory=dict)

    def reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1


@dataclass
class _Peer:
    node_id: str
    curve_pk: bytes
    host: str
    router_port: int
    pub_port: int
    dealer: zmq.asyncio.Socket
    sub: zmq.asyncio.Socket
    tasks: list[asyncio.Task[None]]


def _send_now(sock: zmq.asyncio.Socket, frames: list[bytes]) -> None:
    """Send without blocking; raise zmq.ZMQError (EAGAIN, EHOSTUNREACH) at once.

    pyzmq's asyncio socket tries a NOBLOCK send immediately and returns an already
    finished Future (and reschedules waiting receivers, which a raw sync send on the
    same socket would not - that could stall a reader on edge-triggered events).
    """
    fut = cast("asyncio.Future[object]", sock.send_multipart(frames, flags=zmq.NOBLOCK))
    if fut.done():
        exc = fut.exception()
        if exc is not None:
            raise exc
    else:  # queued behind an earlier blocking send: never happens here, but never leak
        fut.add_done_callback(lambda f: f.exception())


def endpoint(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"tcp://{host}:{port}"


class Transport:
    def __init__(
        self,
        identity: Identity,
        mesh: MeshKey,
        config: TransportConfig,
        on_frame: FrameHandler,
        on_intro: Callable[[bytes, str | None], bytes | None],
    ) -> None:
        self.identity = identity
        self.mesh = mesh
        self.cfg = config
        self.on_frame = on_frame
        self.on_intro = on_intro
        self.counters = Counters()
        self.ctx = zmq.asyncio.Context()
        self._admitted: dict[bytes, str] = {}  # curve pk -> node id
        self._pending: dict[bytes, list[tuple[list[bytes], bytes, float]]] = {}
        self._peers: dict[str, _Peer] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._intro_pk, self._intro_sk = mesh.intro_keypair()
        self.router_port = self.pub_port = self.intro_port = 0

    # -- sockets ---------------------------------------------------------------
    def _common(self, sock: zmq.asyncio.Socket) -> None:
        sock.setsockopt(zmq.LINGER, self.cfg.linger)
        sock.setsockopt(zmq.SNDHWM, self.cfg.hwm)
        sock.setsockopt(zmq.RCVHWM, self.cfg.hwm)
        sock.setsockopt(zmq.MAXMSGSIZE, self.cfg.max_frame + 64)
        sock.setsockopt(zmq.HEARTBEAT_IVL, self.cfg.zmq_heartbeat_ivl)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, self.cfg.zmq_heartbeat_timeout)
        sock.setsockopt(zmq.HEARTBEAT_TTL, self.cfg.zmq_heartbeat_timeout)

    def _server(self, kind: int, domain: bytes, secret: bytes) -> zmq.asyncio.Socket:
        sock = self.ctx.socket(kind)
        self._common(sock)
        sock.curve_server = True
        sock.curve_secretkey = z85.encode(secret)
        sock.zap_domain = domain
        return sock

    def _client(self, kind: int, server_pk: bytes) -> zmq.asyncio.Socket:
        sock = self.ctx.socket(kind)
        self._common(sock)
        sock.setsockopt(zmq.CONNECT_TIMEOUT, self.cfg.connect_timeout)
        sock.setsockopt(zmq.RECONNECT_IVL, self.cfg.reconnect_ivl)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, self.cfg.reconnect_ivl_max)
        sock.curve_serverkey = z85.encode(server_pk)
        sock.curve_publickey = z85.encode(self.identity.curve_pk)
        sock.curve_secretkey = z85.encode(self.identity.curve_sk)
        return sock

    def _bind_all(self, host: str, port: int) -> None:
        """Bind ROUTER, PUB and intro on port, port+1, port+2. Port 0: find a free triple
        (seeds are addressed as HOST:PORT, the intro socket is always PORT+2)."""
        tries = 1 if port else 64
        rng = random.Random()
        for attempt in range(tries):
            base = port or rng.randrange(20000, 60000)
            bound: list[tuple[zmq.asyncio.Socket, str]] = []
            try:
                for offset, sock in enumerate((self.router, self.pub, self.intro_sock)):
                    ep = endpoint(host, base + offset)
                    sock.bind(ep)
                    bound.append((sock, ep))
            except zmq.ZMQError as exc:
                for sock, ep in bound:
                    with contextlib.suppress(zmq.ZMQError):
                        sock.unbind(ep)
                if attempt == tries - 1:
                    raise exc
                continue
            self.router_port, self.pub_port, self.intro_port = base, base + 1, base + 2
            return

    async def start(self, host: str, port: int) -> tuple[int, int, int]:
        """Bind ROUTER/PUB/intro on ``host`` (ports base, base+1, base+2; 0 = any free)."""
        self._zap = self.ctx.socket(zmq.ROUTER)
        self._zap.setsockopt(zmq.LINGER, 0)
        self._zap.bind(ZAP_ENDPOINT)
        self._tasks.append(asyncio.create_task(self._zap_loop(), name="zap"))
        sk = self.identity.curve_sk
        self.router = self._server(zmq.ROUTER, DOMAIN_MESH, sk)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # No ROUTER_HANDOVER: DEALERs set no routing id, each connection gets its own.
        # Handing a routing id over to a new connection while ZMTP heartbeats run aborts
        # libzmq 4.3.5 (assert !_io_error, zeromq/libzmq#4364) - seen in the lab after
        # short link outages.
        self.pub = self._server(zmq.PUB, DOMAIN_MESH, sk)
        self.intro_sock = self._server(zmq.ROUTER, DOMAIN_INTRO, self._intro_sk)
        self.intro_sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        try:
            self._bind_all(host, port)
        except zmq.ZMQError as exc:
            await self.close()
            from meshd.errors import ConfigError

            raise ConfigError(
                f"cannot listen on {host}:{port}-{port + 2}: {exc.strerror}; "
                "is another meshd using these ports? choose others with --listen HOST:PORT"
            ) from None
        self._tasks.append(asyncio.create_task(self._router_loop(), name="router"))
        self._tasks.append(asyncio.create_task(self._intro_loop(), name="intro"))
        return self.router_port, self.pub_port, self.intro_port

    # -- admission (ZAP) -----------------------------------------------------------
    def admit(self, curve_pk: bytes, node_id: str) -> None:
        """Allow this key on our mesh sockets; completes handshakes held for it."""
        self._admitted[curve_pk] = node_id
        for reply_to, req_id, _ in self._pending.pop(curve_pk, []):
            self._zap_reply(reply_to, req_id, True, node_id)

    def revoke(self, curve_pk: bytes) -> None:
        self._admitted.pop(curve_pk, None)

    def is_admitted(self, curve_pk: bytes) -> bool:
        return curve_pk in self._admitted

    def _zap_reply(self, reply_to: list[bytes], req_id: bytes, ok: bool, user: str) -> None:
        if ok:
            self.counters.zap_admitted += 1
            frames = [b"200", b"OK", user.encode(), b""]
        else:
            self.counters.zap_refused += 1
            frames = [b"400", b"not admitted to this mesh", b"", b""]
        with contextlib.suppress(zmq.ZMQError):
            _send_now(self._zap, [*reply_to, b"", b"1.0", req_id, *frames])

    async def _zap_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                frames = await self._zap.recv_multipart()
            except (asyncio.CancelledError, zmq.ZMQError):
                return
            try:
                sep = frames.index(b"")
                reply_to = frames[:sep]
                _ver, req_id, domain, address, _ident, mech = frames[sep + 1 : sep + 7]
                creds = frames[sep + 7 :]
            except ValueError:
                continue
            if mech != b"CURVE" or not creds or len(creds[0]) != 32:
                self._zap_reply(reply_to, req_id, False, "")
                continue
            key = creds[0]
            if domain == DOMAIN_INTRO:
                self._zap_reply(reply_to, req_id, True, key.hex())
                continue
            node_id = self._admitted.get(key)
            if node_id is not None:
                self._zap_reply(reply_to, req_id, True, node_id)
                continue
            # Unknown yet: hold the handshake until discovery or gossip vouches for the key.
            if sum(len(v) for v in self._pending.values()) >= MAX_PENDING_ZAP:
                self._expire_pending(float("inf"))
            deadline = loop.time() + self.cfg.admission_wait
            self._pending.setdefault(key, []).append((reply_to, req_id, deadline))
            loop.call_later(
                self.cfg.admission_wait + 0.01, lambda: self._expire_pending(loop.time())
            )
            _log.debug("zap_held", address=address.decode(errors="replace"), key=key.hex()[:12])

    def _expire_pending(self, now: float) -> None:
        for key in list(self._pending):
            keep = []
            for reply_to, req_id, deadline in self._pending[key]:
                if deadline <= now or now == float("inf"):
                    self._zap_reply(reply_to, req_id, False, "")
                    _log.info("admission_refused", key=key.hex()[:12])
                else:
                    keep.append((reply_to, req_id, deadline))
            if keep:
                self._pending[key] = keep
            else:
                del self._pending[key]

    # -- reading ---------------------------------------------------------------------
    async def _recv_routed(self, sock: zmq.asyncio.Socket) -> tuple[bytes, bytes, str | None]:
        """Next well-framed [routing id, body] on a ROUTER, with the ZAP user id that the
        CURVE handshake bound to that connection. Raises CancelledError/ZMQError to stop."""
        while True:
            frames = await sock.recv_multipart(copy=False)
            self.counters.frames_in += 1
            if len(frames) != 2:
                self.counters.reject("framing")
                continue
            rid, body = frames
            try:
                user: str | None = str(body.get("User-Id"))
            except zmq.ZMQError:
                user = None
            return rid.bytes, body.bytes, user

    async def _router_loop(self) -> None:
        while True:
            try:
                rid, body, user = await self._recv_routed(self.router)
            except (asyncio.CancelledError, zmq.ZMQError):
                return
            self.on_frame(body, "router", user, rid, None)

    async def _peer_loop(self, peer: _Peer, sock: zmq.asyncio.Socket, via: str) -> None:
        multipart = via == "sub"
        while True:
            try:
                frames = await sock.recv_multipart()
            except (asyncio.CancelledError, zmq.ZMQError):
                return
            self.counters.frames_in += 1
            if multipart:
                if len(frames) != 2:  # [topic, envelope]
                    self.counters.reject("framing")
                    continue
                topic, body = frames
            else:
                topic = None
                if len(frames) != 1:
                    self.counters.reject("framing")
                    continue
                body = frames[0]
            self.on_frame(body, via, peer.node_id, None, topic)

    async def _intro_loop(self) -> None:
        while True:
            try:
                rid, body, user = await self._recv_routed(self.intro_sock)
            except (asyncio.CancelledError, zmq.ZMQError):
                return
            reply = self.on_intro(body, user)
            if reply is not None:
                try:
                    _send_now(self.intro_sock, [rid, reply])
                except zmq.ZMQError:
                    self.counters.dropped_out += 1

    # -- peers ---------------------------------------------------------------------------
    def has_peer(self, node_id: str) -> bool:
        return node_id in self._peers

    def peer_address(self, node_id: str) -> str | None:
        peer = self._peers.get(node_id)
        return peer.host if peer else None

    def connect_peer(
        self, node_id: str, curve_pk: bytes, host: str, router_port: int, pub_port: int
    ) -> bool:
        """Open the DEALER and SUB to a peer; a no-op when already linked the same way."""
        old = self._peers.get(node_id)
        if old is not None:
            same = (old.curve_pk, old.host, old.router_port, old.pub_port) == (
                curve_pk,
                host,
                router_port,
                pub_port,
            )
            if same:
                return False
            self.disconnect_peer(node_id)
        dealer = self._client(zmq.DEALER, curve_pk)
        # No ROUTING_ID: the peer's ROUTER gives every TCP connection a fresh one, so a
        # reconnect never collides with the old connection. Who sent a frame is proven by
        # the CURVE key (ZAP User-Id); the routing id only addresses replies.
        sub = self._client(zmq.SUB, curve_pk)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        dealer.connect(endpoint(host, router_port))
        sub.connect(endpoint(host, pub_port))
        peer = _Peer(node_id, curve_pk, host, router_port, pub_port, dealer, sub, [])
        peer.tasks.append(asyncio.create_task(self._peer_loop(peer, dealer, "dealer")))
        peer.tasks.append(asyncio.create_task(self._peer_loop(peer, sub, "sub")))
        self._peers[node_id] = peer
        return True

    def disconnect_peer(self, node_id: str, linger_ms: int = 0) -> None:
        peer = self._peers.pop(node_id, None)
        if peer is None:
            return
        for task in peer.tasks:
            task.cancel()
        peer.dealer.close(linger=linger_ms)
        peer.sub.close(linger=0)

    # -- writing ---------------------------------------------------------------------------
    def send(self, node_id: str, data: bytes, routing_id: bytes | None = None) -> bool:
        """Direct message: over our DEALER to the peer, else back through our ROUTER to its
        DEALER when it connected to us first. Never blocks: a full queue drops (counted)."""
        peer = self._peers.get(node_id)
        try:
            if peer is not None:
                _send_now(peer.dealer, [data])
            else:
                if routing_id is None:  # never heard from it on our ROUTER: no way back
                    self.counters.dropped_out += 1
                    return False
                _send_now(self.router, [routing_id, data])
        except zmq.ZMQError:  # EAGAIN (HWM) or EHOSTUNREACH (ROUTER_MANDATORY)
            self.counters.dropped_out += 1
            return False
        self.counters.frames_out += 1
        return True

    def publish(self, topic: bytes, data: bytes) -> None:
        try:
            _send_now(self.pub, [topic, data])
            self.counters.frames_out += 1
        except zmq.ZMQError:
            self.counters.dropped_out += 1

    async def intro(self, host: str, port: int, data: bytes, timeout: float) -> bytes | None:
        """One INTRO exchange with a seed's intro socket; None on timeout."""
        sock = self._client(zmq.DEALER, self._intro_pk)
        try:
            sock.connect(endpoint(host, port))
            await sock.send(data)
            if await sock.poll(timeout=int(timeout * 1000)):
                return bytes(await sock.recv())
            return None
        finally:
            sock.close(linger=0)

    async def close(self, linger_ms: int = 0) -> None:
        """Close every socket. ``linger_ms`` > 0 on a graceful exit: frames already queued
        (the LEAVE) still go out, for at most that long per socket, before the context ends."""
        if self._closed:
            return
        self._closed = True
        for node_id in list(self._peers):
            self.disconnect_peer(node_id, linger_ms)
        for task in self._tasks:
            task.cancel()
        for name in ("router", "pub", "intro_sock", "_zap"):
            sock = getattr(self, name, None)
            if sock is not None:
                sock.close(linger=linger_ms if name in ("router", "pub") else 0)
        await asyncio.sleep(0)
        self.ctx.term()
