"""ZeroMQ transport: the only module that touches mesh sockets.

Per node: one ROUTER (inbound direct messages), one PUB (our broadcasts), one intro
ROUTER (first contact from static seeds), and per peer one DEALER (direct messages out)
and one SUB (the peer's broadcasts). Every link is CURVE-encrypted.

Admission is enforced by a ZAP handler before a single byte of a peer reaches us:

* domain ``mesh`` (ROUTER and PUB): the client's CURVE key must belong to a member whose
  admission proof we verified. A key we do not know yet is *held* (not refused) for up to
  ``admission_wait`` seconds from its first attempt, because the two sides of a new link
  learn about each other at nearly the same moment (mDNS, gossip) and libzmq does not
  retry a refused handshake. A held handshake still ends after ``handshake_timeout``
  (below); the member's libzmq reconnects by itself and that attempt is held in turn, up
  to the same ``admission_wait`` deadline. A key refused stays refused at once for another
  ``admission_wait``, unless it is admitted meanwhile. Each refusal is counted
  (``zap_refused``) and told to :attr:`ZmqTransport.on_refused` once per key and hold.
* domain ``intro``: any client that completes the handshake is accepted - doing so needs
  the intro public key, which only holders of the mesh key can derive. The INTRO message
  that follows must still carry a valid proof for the very key that did the handshake.

The ZAP reply's user id is the member's node id, so every message read from the ROUTER
is checked against the sender id in its envelope: a member cannot speak for another.

Every socket has a handshake timeout (``ZMQ_HANDSHAKE_IVL`` = ``handshake_timeout``): a
connection that has not finished its ZMTP greeting, CURVE handshake and ZAP verdict by
then is closed, so a host that merely reaches the ports cannot hold connections (and file
descriptors) open with partial greetings. The listening sockets' monitors count such
failures (``handshakes_failed``); they never count as frames.

Reading: plain (synchronous) pyzmq sockets whose file descriptor is watched by the
asyncio loop (``loop.add_reader``); when it fires, the socket is drained in a bounded batch
(``_Reader``). pyzmq's asyncio sockets cost one Future, callback and loop turn per frame,
which was most of the CPU an idle mesh node spent; a batch costs one wake-up. The zmq FD
is edge-triggered, so the events are re-checked after every send on the same socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeAlias

import zmq
from zmq.utils import z85
from zmq.utils.monitor import parse_monitor_message

from meshd import clock, log
from meshd.config import TransportConfig
from meshd.identity import Identity, MeshKey
from meshd.net.base import Counters, FrameHandler, IntroHandler, Refusal, RefusalHandler

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
DOMAIN_MESH = b"mesh"
DOMAIN_INTRO = b"intro"
#: Most keys whose handshakes are held at once for admission; beyond it the oldest is refused.
MAX_PENDING_ZAP = 512
#: Handshake failures the listening sockets' monitors count (a ZAP refusal, the AUTH
#: event, is counted by the ZAP handler itself).
HANDSHAKE_FAILED_EVENTS = zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
#: Most frames read from one socket per wake-up before yielding to the loop (fairness).
READ_BATCH = 256
#: ... and most bytes: 256 frames of task copies (up to 1 MiB each) would hold the loop
#: for seconds, past the lead's lease. A catch-up after a partition is a stream of
#: TASK_SYNC chunks of 200 copies (~300 KiB, ~50 ms to take in): one per turn, so timers
#: and heartbeats run between them.
READ_BYTES = 256 * 1024

Socket: TypeAlias = "zmq.Socket[bytes]"

_log = log.get("meshd.net")


class _Reader:
    """Drain a zmq socket from the asyncio loop, without a Future per frame."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: Socket,
        on_frames: Callable[[list[zmq.Frame]], None],
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.on_frames = on_frames
        self.fd = int(sock.getsockopt(zmq.FD))
        self.closed = False
        self._scheduled = False
        loop.add_reader(self.fd, self.drain)
        self.kick()  # frames may already be waiting (the FD is edge-triggered)

    def drain(self) -> None:
        self._scheduled = False
        if self.closed:
            return
        sock = self.sock
        budget = READ_BYTES
        for _ in range(READ_BATCH):
            try:
                if not int(sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                    return
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            except zmq.ZMQError:  # socket closed under us
                return
            self.on_frames(frames)
            if self.closed:
                return
            budget -= sum(len(f) for f in frames)
            if budget <= 0:
                break  # big frames (task syncs): the rest on a later turn
        self.kick()  # more waiting: continue on the next loop turn, after others ran

    def kick(self) -> None:
        """Re-check the socket soon (after a send on it, which may eat the FD's edge)."""
        if not self._scheduled and not self.closed:
            self._scheduled = True
            self.loop.call_soon(self.drain)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            with contextlib.suppress(Exception):
                self.loop.remove_reader(self.fd)


@dataclass
class _Held:
    """The handshakes of one not-yet-admitted key, held for admission."""

    since: float  # monotonic time of the key's first attempt
    address: str  # the client's address, from its latest attempt
    requests: list[tuple[list[bytes], bytes, float]]  # (reply route, request id, asked at)


@dataclass
class _Peer:
    node_id: str
    curve_pk: bytes
    host: str
    router_port: int
    pub_port: int
    dealer: Socket
    sub: Socket
    readers: list[_Reader]


def endpoint(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"tcp://{host}:{port}"


class ZmqTransport:
    """The ZeroMQ transport of one node (see the module docstring and
    :class:`meshd.net.base.Transport`)."""

    def __init__(
        self,
        identity: Identity,
        mesh: MeshKey,
        config: TransportConfig,
        on_frame: FrameHandler,
        on_intro: IntroHandler,
    ) -> None:
        self.identity = identity
        self.mesh = mesh
        self.cfg = config
        self.on_frame = on_frame
        self.on_intro = on_intro
        self.counters = Counters()
        self.on_refused: RefusalHandler | None = None
        self.ctx = zmq.Context()
        self._admitted: dict[bytes, str] = {}  # curve pk -> node id
        self._held: dict[bytes, _Held] = {}  # curve pk -> its handshakes held for admission
        self._refused: dict[bytes, float] = {}  # curve pk -> when its hold ran out
        self._monitors: list[tuple[Socket, Socket]] = []  # (socket, its monitor)
        self._peers: dict[str, _Peer] = {}
        self._readers: dict[int, _Reader] = {}  # by id(socket)
        self._closed = False
        self._intro_pk, self._intro_sk = mesh.intro_keypair()
        self.router_port = self.pub_port = self.intro_port = 0

    # -- sockets ---------------------------------------------------------------
    def _common(self, sock: Socket) -> None:
        sock.setsockopt(zmq.LINGER, self.cfg.linger)
        sock.setsockopt(zmq.SNDHWM, self.cfg.hwm)
        sock.setsockopt(zmq.RCVHWM, self.cfg.hwm)
        sock.setsockopt(zmq.MAXMSGSIZE, self.cfg.max_frame + 64)
        sock.setsockopt(zmq.HEARTBEAT_IVL, self.cfg.zmq_heartbeat_ivl)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, self.cfg.zmq_heartbeat_timeout)
        sock.setsockopt(zmq.HEARTBEAT_TTL, self.cfg.zmq_heartbeat_timeout)
        sock.setsockopt(zmq.HANDSHAKE_IVL, self.cfg.handshake_timeout)

    def _server(self, kind: int, domain: bytes, secret: bytes) -> Socket:
        sock = self.ctx.socket(kind)
        self._common(sock)
        sock.curve_server = True
        sock.curve_secretkey = z85.encode(secret)
        sock.zap_domain = domain
        return sock

    def _client(self, kind: int, server_pk: bytes) -> Socket:
        sock = self.ctx.socket(kind)
        self._common(sock)
        sock.setsockopt(zmq.CONNECT_TIMEOUT, self.cfg.connect_timeout)
        sock.setsockopt(zmq.RECONNECT_IVL, self.cfg.reconnect_ivl)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, self.cfg.reconnect_ivl_max)
        sock.curve_serverkey = z85.encode(server_pk)
        sock.curve_publickey = z85.encode(self.identity.curve_pk)
        sock.curve_secretkey = z85.encode(self.identity.curve_sk)
        return sock

    def _read(self, sock: Socket, on_frames: Callable[[list[zmq.Frame]], None]) -> _Reader:
        reader = _Reader(asyncio.get_running_loop(), sock, on_frames)
        self._readers[id(sock)] = reader
        return reader

    def _unread(self, sock: Socket) -> None:
        reader = self._readers.pop(id(sock), None)
        if reader is not None:
            reader.close()

    def _send_now(self, sock: Socket, frames: list[bytes]) -> None:
        """Send without blocking; raises zmq.ZMQError (EAGAIN, EHOSTUNREACH) at once."""
        try:
            sock.send_multipart(frames, zmq.NOBLOCK)
        finally:
            # A send may consume the FD's edge while input waits: drain then, and only then.
            reader = self._readers.get(id(sock))
            if reader is not None and int(sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                reader.kick()

    def _bind_all(self, host: str, port: int) -> None:
        """Bind ROUTER, PUB and intro on port, port+1, port+2. Port 0: find a free triple
        (seeds are addressed as HOST:PORT, the intro socket is always PORT+2)."""
        tries = 1 if port else 64
        rng = random.Random()
        for attempt in range(tries):
            base = port or rng.randrange(20000, 60000)
            bound: list[tuple[Socket, str]] = []
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
        self._read(self._zap, self._on_zap)
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
        self._read(self.router, self._on_router)
        self._read(self.intro_sock, self._on_intro_frames)
        for sock in (self.router, self.pub, self.intro_sock):
            self._monitor(sock)
        return self.router_port, self.pub_port, self.intro_port

    def _monitor(self, sock: Socket) -> None:
        """Count the failed handshakes of a listening socket (``handshakes_failed``)."""
        mon = sock.get_monitor_socket(HANDSHAKE_FAILED_EVENTS)
        self._monitors.append((sock, mon))

        def on_event(frames: list[zmq.Frame]) -> None:
            try:
                event = parse_monitor_message([f.bytes for f in frames])
            except Exception:
                return
            if event["event"] & HANDSHAKE_FAILED_EVENTS:
                self.counters.handshakes_failed += 1
                _log.debug("handshake_failed", code=int(event["event"]), errno=event["value"])

        self._read(mon, on_event)

    # -- admission (ZAP) -----------------------------------------------------------
    def admit(self, curve_pk: bytes, node_id: str) -> None:
        """Allow this key on our mesh sockets; completes handshakes held for it."""
        self._admitted[curve_pk] = node_id
        self._refused.pop(curve_pk, None)
        held = self._held.pop(curve_pk, None)
        if held is not None:
            for reply_to, req_id, _ in self._live(held, clock.monotonic()):
                self._zap_reply(reply_to, req_id, True, node_id)

    def is_admitted(self, curve_pk: bytes) -> bool:
        return curve_pk in self._admitted

    def _zap_reply(self, reply_to: list[bytes], req_id: bytes, ok: bool, user: str) -> None:
        """Answer one ZAP request (and count the verdict)."""
        if ok:
            self.counters.zap_admitted += 1
            frames = [b"200", b"OK", user.encode(), b""]
        else:
            self.counters.zap_refused += 1
            frames = [b"400", b"not admitted to this mesh", b"", b""]
        with contextlib.suppress(zmq.ZMQError):
            self._send_now(self._zap, [*reply_to, b"", b"1.0", req_id, *frames])

    def _refuse(self, reply_to: list[bytes], req_id: bytes, address: str, key: bytes,
                detail: str) -> None:  # fmt: skip
        """Refuse one handshake and tell :attr:`on_refused`."""
        self._zap_reply(reply_to, req_id, False, "")
        self._tell_refused(address, key, detail)

    def _tell_refused(self, address: str, key: bytes, detail: str) -> None:
        _log.info("admission_refused", address=address, key=key.hex()[:12], reason=detail)
        if self.on_refused is not None:
            self.on_refused(Refusal(address, key.hex(), detail))

    def _live(self, held: _Held, now: float) -> list[tuple[list[bytes], bytes, float]]:
        """The held requests whose connection may still be open: libzmq closed the others
        when their handshake timed out (a reply to them would go nowhere)."""
        ivl = self.cfg.handshake_timeout / 1000.0
        if ivl <= 0:
            return held.requests
        return [r for r in held.requests if now - r[2] < ivl]

    def _on_zap(self, raw: list[zmq.Frame]) -> None:
        frames = [f.bytes for f in raw]
        try:
            sep = frames.index(b"")
            reply_to = frames[:sep]
            _ver, req_id, domain, address_b, _ident, mech = frames[sep + 1 : sep + 7]
            creds = frames[sep + 7 :]
        except ValueError:
            return
        address = address_b.decode(errors="replace")
        if mech != b"CURVE" or not creds or len(creds[0]) != 32:
            mechanism = mech.decode(errors="replace")
            self._refuse(reply_to, req_id, address, b"", f"no CURVE key ({mechanism})")
            return
        key = creds[0]
        if domain == DOMAIN_INTRO:
            self._zap_reply(reply_to, req_id, True, key.hex())
            return
        node_id = self._admitted.get(key)
        if node_id is not None:
            self._zap_reply(reply_to, req_id, True, node_id)
            return
        now = clock.monotonic()
        refused_at = self._refused.get(key)
        if refused_at is not None and now - refused_at < self.cfg.admission_wait:
            # Refused a moment ago (its other socket, or a client that retries): at once,
            # and told again (the daemon's audit is rate-limited per source).
            self._refuse(reply_to, req_id, address, key, "key not admitted to this mesh")
            return
        # Unknown yet: hold the handshake until discovery or gossip vouches for the key.
        held = self._held.get(key)
        if held is None:
            if len(self._held) >= MAX_PENDING_ZAP:
                oldest = min(self._held, key=lambda k: self._held[k].since)
                self._expire(oldest, now)
            held = self._held[key] = _Held(now, address, [])
            asyncio.get_running_loop().call_later(self.cfg.admission_wait + 0.01, self._expire_due)
        held.address = address
        held.requests = [*self._live(held, now), (reply_to, req_id, now)]
        _log.debug("zap_held", address=address, key=key.hex()[:12])

    def _expire_due(self) -> None:
        """Refuse the keys whose ``admission_wait`` ran out."""
        if self._closed:
            return
        now = clock.monotonic()
        for key in [k for k, h in self._held.items() if now - h.since >= self.cfg.admission_wait]:
            self._expire(key, now)
        for key in [k for k, t in self._refused.items() if now - t >= self.cfg.admission_wait]:
            del self._refused[key]

    def _expire(self, key: bytes, now: float) -> None:
        """End a key's hold: refuse its handshakes still open, told once."""
        held = self._held.pop(key)
        self._refused[key] = now
        for reply_to, req_id, _ in self._live(held, now):
            self._zap_reply(reply_to, req_id, False, "")
        wait = self.cfg.admission_wait
        self._tell_refused(held.address, key, f"key not admitted to this mesh within {wait} s")

    # -- reading ---------------------------------------------------------------------
    def _routed(self, frames: list[zmq.Frame]) -> tuple[bytes, bytes, str | None] | None:
        """[routing id, body] from a ROUTER, with the ZAP user id that the CURVE handshake
        bound to that connection; None (counted) when the framing is wrong."""
        if len(frames) != 2:
            self.counters.reject("framing")
            return None
        self.counters.frames_in += 1
        rid, body = frames
        try:
            user: str | None = str(body.get("User-Id"))
        except zmq.ZMQError:
            user = None
        return rid.bytes, body.bytes, user

    def _on_router(self, frames: list[zmq.Frame]) -> None:
        routed = self._routed(frames)
        if routed is not None:
            rid, body, user = routed
            self.on_frame(body, "router", user, rid, None)

    def _on_intro_frames(self, frames: list[zmq.Frame]) -> None:
        routed = self._routed(frames)
        if routed is None:
            return
        rid, body, user = routed
        reply = self.on_intro(body, user)
        if reply is not None:
            try:
                self._send_now(self.intro_sock, [rid, reply])
            except zmq.ZMQError:
                self.counters.dropped_out += 1

    def _peer_reader(self, peer: _Peer, via: str) -> Callable[[list[zmq.Frame]], None]:
        sub = via == "sub"

        def on_frames(frames: list[zmq.Frame]) -> None:
            if sub:
                if len(frames) != 2:  # [topic, envelope]
                    self.counters.reject("framing")
                    return
                self.counters.frames_in += 1
                self.on_frame(frames[1].bytes, via, peer.node_id, None, frames[0].bytes)
            elif len(frames) != 1:
                self.counters.reject("framing")
            else:
                self.counters.frames_in += 1
                self.on_frame(frames[0].bytes, via, peer.node_id, None, None)

        return on_frames

    # -- peers ---------------------------------------------------------------------------
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
        peer.readers.append(self._read(dealer, self._peer_reader(peer, "dealer")))
        peer.readers.append(self._read(sub, self._peer_reader(peer, "sub")))
        self._peers[node_id] = peer
        return True

    def disconnect_peer(self, node_id: str, linger_ms: int = 0) -> None:
        peer = self._peers.pop(node_id, None)
        if peer is None:
            return
        self._unread(peer.dealer)
        self._unread(peer.sub)
        peer.dealer.close(linger=linger_ms)
        peer.sub.close(linger=0)

    # -- writing ---------------------------------------------------------------------------
    def send(self, node_id: str, data: bytes, routing_id: bytes | None = None) -> bool:
        """Direct message: over our DEALER to the peer, else back through our ROUTER to its
        DEALER when it connected to us first. Never blocks: a full queue drops (counted)."""
        peer = self._peers.get(node_id)
        try:
            if peer is not None:
                self._send_now(peer.dealer, [data])
            else:
                if routing_id is None:  # never heard from it on our ROUTER: no way back
                    self.counters.dropped_out += 1
                    return False
                self._send_now(self.router, [routing_id, data])
        except zmq.ZMQError:  # EAGAIN (HWM) or EHOSTUNREACH (ROUTER_MANDATORY)
            self.counters.dropped_out += 1
            return False
        self.counters.frames_out += 1
        return True

    def publish(self, topic: bytes, data: bytes) -> None:
        try:
            self._send_now(self.pub, [topic, data])
            self.counters.frames_out += 1
        except zmq.ZMQError:
            self.counters.dropped_out += 1

    async def intro(self, host: str, port: int, data: bytes, timeout: float) -> bytes | None:
        """One INTRO exchange with a seed's intro socket; None on timeout."""
        sock = self._client(zmq.DEALER, self._intro_pk)
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[bytes] = loop.create_future()

        def on_frames(frames: list[zmq.Frame]) -> None:
            if not reply.done() and len(frames) == 1:
                reply.set_result(frames[0].bytes)

        self._read(sock, on_frames)
        try:
            sock.connect(endpoint(host, port))
            self._send_now(sock, [data])
            return await asyncio.wait_for(reply, timeout)
        except TimeoutError:
            return None
        finally:
            self._unread(sock)
            sock.close(linger=0)

    async def close(self, linger_ms: int = 0) -> None:
        """Close every socket. ``linger_ms`` > 0 on a graceful exit: frames already queued
        (the LEAVE) still go out, for at most that long per socket, before the context ends."""
        if self._closed:
            return
        self._closed = True
        for node_id in list(self._peers):
            self.disconnect_peer(node_id, linger_ms)
        for reader in list(self._readers.values()):
            reader.close()
        self._readers.clear()
        for watched, mon in self._monitors:
            with contextlib.suppress(zmq.ZMQError):
                watched.disable_monitor()
            mon.close(linger=0)
        self._monitors.clear()
        for name in ("router", "pub", "intro_sock", "_zap"):
            sock = getattr(self, name, None)
            if sock is not None:
                sock.close(linger=linger_ms if name in ("router", "pub") else 0)
        await asyncio.sleep(0)
        self.ctx.term()
