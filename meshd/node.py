"""The daemon: wires the pure state machines to sockets, discovery, store and clock.

Nothing else in the package mixes I/O and logic. The pure :class:`~meshd.core.Core`
(membership + election) decides; this module only carries its effects out (send, publish,
connect, persist) and feeds it what the network delivers, with ``now`` from the clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import random
import signal
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meshd import __version__, log, metrics
from meshd.clock import Clock, SystemClock
from meshd.config import DEFAULT_PORT, Config, parse_hostport
from meshd.control_proto import SOCKET_NAME
from meshd.core import Core, CoreEffect
from meshd.effects import Connect, Disconnect, ElectionEvent, MemberChanged, Persist, Publish, Send
from meshd.errors import AdmissionError, ConfigError, ControlError, DecodeError
from meshd.identity import (
    Identity,
    MeshKey,
    ensure_state_dir,
    load_mesh_key,
    load_or_create_identity,
    save_mesh_key,
)
from meshd.net.control import ControlServer
from meshd.net.transport import Transport
from meshd.roles import Role
from meshd.store.db import StateLock, Store, StoredPeer
from meshd.tasks.runtime import TaskRuntime
from meshd.wire import codec
from meshd.wire.messages import (
    PAYLOAD_TYPES,
    Ack,
    Envelope,
    Hello,
    Intro,
    IntroAck,
    MsgType,
    Payload,
    Ping,
    SkillPayloads,
    TaskPayloads,
)
from meshd.wire.records import MemberInfo, MemberRecord, MemberState

if TYPE_CHECKING:
    from meshd.net.discovery import Discovery
    from meshd.skills.manager import PackManager

_log = log.get("meshd.node")

#: s. How often the full member view is written to LMDB (state changes are written at once).
PERSIST_INTERVAL = 30.0
#: events. How many recent events the node keeps in memory for the `events` control op.
EVENT_HISTORY = 1000
#: s. Least time between two ADMISSION_REFUSED audit records for the same source.
AUDIT_REFUSAL_INTERVAL = 60.0
#: ms. On a graceful exit, how long sockets may keep flushing the LEAVE to live peers.
LEAVE_LINGER_MS = 300


@dataclass(frozen=True, slots=True)
class MeshSetup:
    identity: Identity
    mesh: MeshKey
    created_mesh: bool
    created_identity: bool


def prepare_state(state_dir: Path, join_token: str | None) -> MeshSetup:
    """Create or load identity and mesh key (``meshd init`` and first ``meshd start``)."""
    ensure_state_dir(state_dir)
    identity, created_identity = load_or_create_identity(state_dir)
    current = load_mesh_key(state_dir)
    if join_token is not None:
        wanted = MeshKey.from_token(join_token)
        if current is not None and current != wanted:
            raise ConfigError(
                f"state dir {state_dir} already belongs to mesh {current.mesh_id}; the token is "
                f"for mesh {wanted.mesh_id}. Use another --state-dir, or remove "
                f"{state_dir / 'mesh.key'} to leave the old mesh for good"
            )
        if current is None:
            save_mesh_key(state_dir, wanted)
        return MeshSetup(identity, wanted, False, created_identity)
    if current is None:
        mesh = MeshKey.generate()
        save_mesh_key(state_dir, mesh)
        return MeshSetup(identity, mesh, True, created_identity)
    return MeshSetup(identity, current, False, created_identity)


class Node:
    def __init__(
        self,
        config: Config,
        state_dir: Path,
        role: Role,
        clock: Clock | None = None,
        on_ready: Callable[[Node], None] | None = None,
    ) -> None:
        self.cfg = config
        self.state_dir = state_dir
        self.role = role
        self.clock = clock or SystemClock()
        self.on_ready = on_ready
        self.started_wall = self.clock.wall()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._routing: dict[str, bytes] = {}
        self._connected_addr: dict[str, str] = {}
        self._last_seen_wall: dict[str, float] = {}
        self._dirty: dict[str, MemberRecord] = {}
        #: Recent membership and election events for `meshctl`/client subscribers.
        self.events: deque[dict[str, Any]] = deque(maxlen=EVENT_HISTORY)
        self.discovery: Discovery | None = None  # only with mDNS (zeroconf loads lazily)
        self._pings: dict[bytes, asyncio.Future[float]] = {}
        # The one timer of the node: a loop.call_later handle for the machine's next
        # deadline, moved only when a deadline comes earlier (no task per tick).
        self._next_tick = float("inf")
        self._tick_handle: asyncio.TimerHandle | None = None
        self._ticking = False
        self._bg: set[asyncio.Task[None]] = set()
        self.ready_wall: float | None = None
        self.tasks: TaskRuntime | None = None
        self.metrics_server: metrics.MetricsServer | None = None
        self._refusals: dict[tuple[str, str], float] = {}
        self.skills: PackManager | None = None

    # -- life cycle ------------------------------------------------------------------
    async def start(self) -> None:
        ensure_state_dir(self.state_dir)
        self.lock = StateLock(self.state_dir)
        self.lock.acquire()
        try:
            await self._start_locked()
        except BaseException:
            await self._teardown()
            raise

    async def _start_locked(self) -> None:
        cfg = self.cfg
        setup = prepare_state(self.state_dir, cfg.node.join_token)
        self.identity, self.mesh = setup.identity, setup.mesh
        self.created_mesh = setup.created_mesh
        self.store = Store(self.state_dir, cfg.store.map_size, cfg.store.fsync)
        self.store.set_meta("mesh_id", self.mesh.mesh_id)
        incarnation = self.store.next_incarnation()

        self.transport = Transport(
            self.identity, self.mesh, cfg.transport, self._on_frame, self._on_intro
        )
        rp, pp, ip = await self.transport.start(cfg.node.listen_host, cfg.node.listen_port)

        from meshd.net.interfaces import choose_interfaces

        self.interfaces = choose_interfaces(cfg.discovery) if cfg.discovery.mdns else []
        addresses = self._advertised_addresses()
        name = cfg.node.name or _default_name(self.identity.node_id)
        priority = cfg.node.priority if cfg.node.priority is not None else self.role.priority
        self_info = MemberInfo(
            node_id=self.identity.node_id,
            name=name,
            role=self.role.name,
            priority=priority,
            tier=self.role.tier,
            ed25519_pk=self.identity.ed25519_pk,
            curve_pk=self.identity.curve_pk,
            proof=self.mesh.proof_for(self.identity.ed25519_pk),
            addresses=addresses,
            router_port=rp,
            pub_port=pp,
            intro_port=ip,
            incarnation=incarnation,
            started_at=self.started_wall,
        )
        seed = int.from_bytes(os.urandom(8), "big")
        term, voted_for = self.store.load_election()
        self.machine = Core(
            self_info,
            cfg.membership,
            cfg.election,
            self.clock.monotonic(),
            random.Random(seed),
            verify=self.mesh.verify,
            term=term,
            voted_for=voted_for,
        )
        stored = self.store.load_peers()
        for peer in stored:
            if peer.last_seen is not None:
                self._last_seen_wall[peer.record.info.node_id] = peer.last_seen
            self._admit(peer.record.info)
        self._apply(self.machine.restore([p.record for p in stored], self.clock.monotonic()))

        self.tasks = TaskRuntime(self)
        from meshd.skills.manager import PackManager

        self.skills = PackManager(self, self.tasks.registry)
        self.skills.on_change = self._skills_changed
        self.skills.start()
        self.tasks.start()
        self.tasks.election_changed()

        self.control = ControlServer(self.state_dir / SOCKET_NAME, self._control)
        await self.control.start()
        if cfg.node.metrics_port is not None:
            self.metrics_server = metrics.MetricsServer(
                lambda: metrics.render(self), lambda: metrics.is_healthy(self)
            )
            mport = await self.metrics_server.start(cfg.node.metrics_host, cfg.node.metrics_port)
            _log.info("metrics_listening", host=cfg.node.metrics_host, port=mport)

        if cfg.discovery.mdns and self.interfaces:
            from meshd.net.discovery import Discovery

            self.discovery = Discovery(cfg.discovery, self.mesh.mesh_id, self._on_mdns)
            await self.discovery.start(self_info, self.interfaces)
        elif cfg.discovery.mdns:
            _log.warning("mdns_no_interface", hint="use --interface or --peer HOST:PORT")

        self._on_tick()
        self._tasks.append(asyncio.create_task(self._persist_loop(), name="persist"))
        for text in cfg.node.peers:
            host, port = parse_hostport(text, cfg.node.listen_port or DEFAULT_PORT)
            self._tasks.append(asyncio.create_task(self._seed_loop(host, port), name="seed"))
        _log.info(
            "node_started",
            node=self.identity.node_id[:12],
            name=name,
            role=self.role.name,
            mesh=self.mesh.mesh_id,
            ports=[rp, pp, ip],
            addresses=list(addresses),
            incarnation=incarnation,
            peers_restored=len(stored),
        )
        self.ready_wall = self.clock.wall()
        if self.on_ready is not None:
            self.on_ready(self)
        from meshd import notify  # systemd (Type=notify): READY=1 + watchdog; else a no-op

        notify.node_ready(self)

    @property
    def self_info(self) -> MemberInfo:
        """This node's current member info (the machine owns it: incarnation bumps)."""
        return self.machine.self_info

    def _advertised_addresses(self) -> tuple[str, ...]:
        host = self.cfg.node.listen_host
        if host not in ("0.0.0.0", "::", ""):
            return (host,)
        addrs = [i.ip for i in self.interfaces]
        if not addrs:
            from meshd.net.interfaces import choose_interfaces, list_interfaces

            usable = choose_interfaces(replace(self.cfg.discovery, interfaces=()))
            addrs = [i.ip for i in usable] or [i.ip for i in list_interfaces()][:1]
        return tuple(dict.fromkeys(addrs))[:16]

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Run until ``request_stop`` (SIGTERM/SIGINT in ``meshd start``)."""
        await self._stop.wait()
        await self.shutdown()

    async def shutdown(self) -> None:
        """Graceful exit: stop taking tasks and finish or hand back the running ones
        (``[node] shutdown_grace``), then tell every peer we leave, persist, close."""
        from meshd import notify

        notify.node_stopping()  # systemd: STOPPING=1 (a no-op without $NOTIFY_SOCKET)
        if self.tasks is not None:
            with contextlib.suppress(Exception):
                await self.tasks.drain(self.cfg.node.shutdown_grace)
            await self.tasks.stop()
        if self.skills is not None:
            self.skills.stop()
        if getattr(self, "machine", None) is not None:
            self._apply(self.machine.leave(self.clock.monotonic()))
        await self._teardown(linger_ms=LEAVE_LINGER_MS)

    async def _teardown(self, linger_ms: int = 0) -> None:
        self._stop.set()
        if self._tick_handle is not None:
            self._tick_handle.cancel()
            self._tick_handle = None
        pending = [*self._tasks, *self._bg]
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(BaseException):
                await task
        self._tasks.clear()
        self._bg.clear()
        if self.discovery is not None:
            with contextlib.suppress(Exception):
                await self.discovery.close()
            self.discovery = None
        if self.metrics_server is not None:
            await self.metrics_server.close()
            self.metrics_server = None
        if getattr(self, "control", None) is not None:
            await self.control.close()
        if getattr(self, "machine", None) is not None and getattr(self, "store", None):
            with contextlib.suppress(Exception):
                self._persist_all()
        if getattr(self, "transport", None) is not None:
            await self.transport.close(linger_ms)
        if getattr(self, "store", None) is not None:
            self.store.close()
            del self.store
        self.lock.release()
        _log.info("node_stopped")

    # -- effects -----------------------------------------------------------------------
    def _envelope(
        self, payload: Payload, correlation_id: bytes | None = None, msg_id: bytes | None = None
    ) -> bytes:
        env = Envelope(
            msg_type=PAYLOAD_TYPES[type(payload)],
            msg_id=msg_id or os.urandom(16),
            sender=self.identity.node_id,
            timestamp_ms=int(self.clock.wall() * 1000),
            payload=payload,
            correlation_id=correlation_id,
            # Every message carries our term: lead-only messages are fenced by it.
            term=self.machine.election.term,
        )
        return codec.encode(env)

    def envelope(self, payload: Payload) -> bytes:
        """An encoded envelope from this node (a fresh message id, our term)."""
        return self._envelope(payload)

    def send_payload(self, to: str, payload: Payload) -> None:
        self.transport.send(to, self._envelope(payload), self._routing.get(to))

    def send_reply(self, to: str, payload: Payload, correlation_id: bytes) -> None:
        data = self._envelope(payload, correlation_id)
        self.transport.send(to, data, self._routing.get(to))

    def send_request(self, to: str, payload: Payload, msg_id: bytes) -> None:
        data = self._envelope(payload, msg_id=msg_id)
        self.transport.send(to, data, self._routing.get(to))

    def apply_skill_effects(self, effects: Sequence[Send | Publish]) -> None:
        if self._stop.is_set():
            return  # a delayed announcement after shutdown began: the sockets are going
        for eff in effects:
            if isinstance(eff, Send):
                self.send_payload(eff.to, eff.payload)
            else:
                data = self._envelope(eff.payload)
                self.transport.publish(codec.topic_for(PAYLOAD_TYPES[type(eff.payload)]), data)

    def _skills_changed(self) -> None:
        if self.tasks is not None:
            self.tasks.apply(self.tasks.machine.skills_changed(self.clock.wall()))

    def name_of(self, node_id: str) -> str:
        return self._name_of(node_id)

    def keep(self, task: asyncio.Task[None]) -> None:
        """Hold a background task until it ends (cancelled at shutdown)."""
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    def reschedule(self) -> None:
        if not self._ticking:
            self._schedule_tick(self._next_deadline())

    def _next_deadline(self) -> float:
        """The earliest of the machines' deadlines, on the monotonic clock."""
        due = self.machine.next_deadline()
        if self.tasks is not None:
            wall_due = self.tasks.next_deadline_wall()
            if wall_due != float("inf"):
                due = min(due, self.clock.monotonic() + (wall_due - self.clock.wall()))
        return due

    def _apply(self, effects: Sequence[CoreEffect]) -> None:
        members = False
        for eff in effects:
            if isinstance(eff, Send):
                data = self._envelope(eff.payload, eff.correlation_id)
                self.transport.send(eff.to, data, self._routing.get(eff.to))
            elif isinstance(eff, Publish):
                data = self._envelope(eff.payload)
                self.transport.publish(codec.topic_for(PAYLOAD_TYPES[type(eff.payload)]), data)
            elif isinstance(eff, Connect):
                self._connect(eff.info)
            elif isinstance(eff, Disconnect):
                self.transport.disconnect_peer(eff.node_id)
                self._connected_addr.pop(eff.node_id, None)
            elif isinstance(eff, MemberChanged):
                members = True
                self._member_changed(eff)
            elif isinstance(eff, Persist):
                # Synchronous and durable before the next effect (a vote) is sent.
                self.store.save_election(eff.term, eff.voted_for)
            elif isinstance(eff, ElectionEvent):
                self._election_event(eff)
        tasks = self.tasks
        if tasks is not None:
            if members:
                tasks.members_changed()
            tasks.election_changed()
        # Move the timer only if the machine now needs it earlier than planned.
        if not self._ticking:
            self._schedule_tick(self._next_deadline())

    def _admit(self, info: MemberInfo) -> bool:
        """Let this member's CURVE key through our ZAP handler, if its proof verifies."""
        if info.node_id == self.identity.node_id or not self.mesh.verify(info):
            return False
        self.transport.admit(info.curve_pk, info.node_id)
        return True

    def _connect(self, info: MemberInfo) -> None:
        if info.node_id == self.identity.node_id:
            return
        if not self._admit(info):
            self.transport.counters.reject("admission")
            return
        host = self._pick_address(info)
        if host is None:
            _log.warning("peer_unreachable", peer=info.node_id[:12], reason="no address")
            return
        if self.transport.connect_peer(
            info.node_id, info.curve_pk, host, info.router_port, info.pub_port
        ):
            self._connected_addr[info.node_id] = host
            _log.debug("peer_link", peer=info.node_id[:12], name=info.name, address=host)

    def _pick_address(self, info: MemberInfo) -> str | None:
        """Stable choice: keep the current address while the peer still advertises it
        (no flapping on multi-homed hosts); else prefer one on a subnet of ours."""
        current = self._connected_addr.get(info.node_id)
        if current is not None and current in info.addresses:
            return current
        for addr in info.addresses:
            with contextlib.suppress(ValueError):
                ip = ipaddress.ip_address(addr)
                if any(ip in iface.network for iface in self.interfaces):
                    return addr
        return info.addresses[0] if info.addresses else None

    def _member_changed(self, eff: MemberChanged) -> None:
        rec = eff.record
        node_id = rec.info.node_id
        if node_id == self.identity.node_id:
            self.store.save_incarnation(rec.info.incarnation)
            if self.discovery is not None and rec.state is MemberState.ALIVE:
                task = asyncio.get_running_loop().create_task(self.discovery.update(rec.info))
                self._bg.add(task)
                task.add_done_callback(self._bg.discard)
            return
        if eff.reason == "forgotten":
            # Dead or left for longer than forget_after: drop it from disk as well.
            self._dirty.pop(node_id, None)
            self.store.delete_peer(node_id)
            self._last_seen_wall.pop(node_id, None)
            _log.info("member_forgotten", peer=node_id[:12], name=rec.info.name)
            return
        self._dirty[node_id] = rec
        prev = eff.previous.value if eff.previous is not None else None
        event = {
            "type": _event_name(rec.state, eff.previous),
            "node": node_id,
            "name": rec.info.name,
            "state": rec.state.value,
            "previous": prev,
            "reason": eff.reason,
            "at": self.clock.wall(),
        }
        self.events.append(event)
        skills = self.skills
        if skills is not None:
            if event["type"] == "AGENT_JOINED":
                # Once its links are up: our inventory and revocations.
                asyncio.get_running_loop().call_later(0.2, skills.member_joined, node_id)
            elif rec.state in (MemberState.DEAD, MemberState.LEFT):
                skills.member_gone(node_id)
        _log.info(
            "member_" + rec.state.value,
            peer=node_id[:12],
            name=rec.info.name,
            previous=prev,
            reason=eff.reason,
        )
        self._flush_dirty()

    def _election_event(self, eff: ElectionEvent) -> None:
        lead_name = self._name_of(eff.lead) if eff.lead else None
        record = {
            "type": eff.kind,
            "node": self.identity.node_id,
            "term": eff.term,
            "lead": eff.lead,
            "lead_name": lead_name,
            "reason": eff.reason,
            "at": self.clock.wall(),
        }
        self.store.append_audit(record)
        self.events.append(record)
        _log.info(eff.kind.lower(), term=eff.term, lead=lead_name, reason=eff.reason)

    def _name_of(self, node_id: str) -> str:
        if node_id == self.identity.node_id:
            return self.machine.self_info.name
        view = self.machine.get(node_id)
        return view.info.name if view is not None else node_id[:12]

    # -- incoming ----------------------------------------------------------------------
    def _on_frame(
        self, data: bytes, via: str, auth: str | None, rid: bytes | None, topic: bytes | None
    ) -> None:
        try:
            env = codec.decode(data, self.cfg.transport.max_frame)
        except DecodeError as exc:
            self.transport.counters.reject(exc.reason)
            _log.debug("frame_rejected", via=via, reason=exc.reason, error=str(exc))
            return
        if auth is None or env.sender != auth:
            # A member may only speak for itself: the sender id must be the one the CURVE
            # handshake authenticated.
            self.transport.counters.reject("spoofed_sender")
            _log.warning("frame_rejected", via=via, reason="spoofed_sender", claimed=env.sender)
            return
        if topic is not None and topic != codec.topic_for(env.msg_type):
            self.transport.counters.reject("topic_mismatch")
            return
        if rid is not None:
            self._routing[env.sender] = rid
        self._last_seen_wall[env.sender] = self.clock.wall()
        payload = env.payload
        if isinstance(payload, Hello):
            try:
                self.mesh.check(payload.info)
            except AdmissionError as exc:
                self.transport.counters.reject("admission")
                _log.warning("hello_rejected", reason=str(exc))
                self._audit_refusal("hello", env.sender, str(exc))
                return
            if payload.info.node_id != env.sender:
                self.transport.counters.reject("spoofed_sender")
                return
        elif env.msg_type in (MsgType.INTRO, MsgType.INTRO_ACK):
            self.transport.counters.reject("wrong_socket")
            return
        if isinstance(payload, Ack) and env.correlation_id in self._pings:
            fut = self._pings.pop(env.correlation_id)
            if not fut.done():
                fut.set_result(time.perf_counter())
        self._apply(self.machine.receive(env.sender, payload, self.clock.monotonic(), env.msg_id))
        if isinstance(payload, TaskPayloads) and self.tasks is not None:
            self.tasks.receive(env.sender, payload)
        elif isinstance(payload, SkillPayloads) and self.skills is not None:
            self.skills.receive(env.sender, payload, env.msg_id, env.correlation_id)

    def _audit_refusal(self, via: str, who: str, reason: str) -> None:
        """A durable ADMISSION_REFUSED record, at most one per (source, claimed node)
        every AUDIT_REFUSAL_INTERVAL s: a misconfigured host retrying must not flood it."""
        now = self.clock.monotonic()
        key = (via, who)
        last = self._refusals.get(key)
        if last is not None and now - last < AUDIT_REFUSAL_INTERVAL:
            return
        if len(self._refusals) > 1024:
            self._refusals.clear()
        self._refusals[key] = now
        record = {
            "type": "ADMISSION_REFUSED",
            "node": self.identity.node_id,
            "via": via,
            "claimed": who,
            "reason": reason,
            "at": self.clock.wall(),
        }
        self.store.append_audit(record)
        self.events.append(record)

    def _on_intro(self, data: bytes, user: str | None) -> bytes | None:
        try:
            env = codec.decode(data, self.cfg.transport.max_frame)
        except DecodeError as exc:
            self.transport.counters.reject(exc.reason)
            return None
        payload = env.payload
        if not isinstance(payload, Intro):
            self.transport.counters.reject("wrong_socket")
            return None
        try:
            self.mesh.check(payload.info)
            if user is None or payload.info.curve_pk.hex() != user:
                raise AdmissionError("INTRO key differs from the handshake key")
            if env.sender != payload.info.node_id:
                raise AdmissionError("INTRO sender differs from its info")
        except AdmissionError as exc:
            self.transport.counters.reject("admission")
            _log.warning("intro_rejected", reason=str(exc))
            self._audit_refusal("intro", env.sender, str(exc))
            return None
        self._admit(payload.info)
        self._last_seen_wall[env.sender] = self.clock.wall()
        now = self.clock.monotonic()
        self._apply(self.machine.receive(env.sender, Hello(payload.info), now, env.msg_id))
        ack = IntroAck(self.machine.self_info, tuple(self.machine.snapshot()))
        return self._envelope(ack, env.msg_id)

    def _on_mdns(self, info: MemberInfo) -> None:
        if info.node_id == self.identity.node_id:
            return
        if not self._admit(info):
            self.transport.counters.reject("admission")
            _log.warning("mdns_record_rejected", peer=info.node_id[:12], reason="bad proof")
            self._audit_refusal("mdns", info.node_id, "bad admission proof")
            return
        self._apply(self.machine.discovered(info, self.clock.monotonic(), "mdns"))

    # -- loops ---------------------------------------------------------------------------
    def _schedule_tick(self, at: float) -> None:
        """Make sure the machine is ticked at ``at`` (monotonic) or earlier."""
        if at >= self._next_tick or self._stop.is_set():
            return
        if self._tick_handle is not None:
            self._tick_handle.cancel()
        self._next_tick = at
        delay = max(at - self.clock.monotonic(), 0.0)
        self._tick_handle = asyncio.get_running_loop().call_later(delay, self._on_tick)

    def _on_tick(self) -> None:
        self._tick_handle = None
        self._next_tick = float("inf")
        now = self.clock.monotonic()
        self._ticking = True  # effects of this tick must not reschedule us one by one
        try:
            self._apply(self.machine.tick(now))
            if self.tasks is not None:
                self.tasks.tick()
        finally:
            self._ticking = False
        # At least once a second, even when the machines need nothing.
        self._schedule_tick(min(self._next_deadline(), now + 1.0))

    async def _seed_loop(self, host: str, port: int) -> None:
        """Introduce ourselves to a static seed; retry until it answers, and again
        whenever we are alone (seed restarted, partition healed)."""
        retry = self.cfg.discovery.seed_retry
        intro_port = port + 2
        first = True
        while True:
            alone = not any(m.state is MemberState.ALIVE for m in self.machine.members())
            if first or alone:
                ok = await self._introduce(host, intro_port)
                if ok:
                    first = False
            await asyncio.sleep(retry if first else max(retry, 5.0))

    async def _introduce(self, host: str, intro_port: int) -> bool:
        data = self._envelope(Intro(self.machine.self_info))
        try:
            reply = await self.transport.intro(
                host, intro_port, data, self.cfg.transport.intro_timeout
            )
        except Exception as exc:
            _log.warning("seed_failed", seed=f"{host}:{intro_port - 2}", error=str(exc))
            return False
        if reply is None:
            _log.info("seed_silent", seed=f"{host}:{intro_port - 2}")
            return False
        try:
            env = codec.decode(reply, self.cfg.transport.max_frame)
            if not isinstance(env.payload, IntroAck):
                raise AdmissionError("seed answered with something other than INTRO_ACK")
            self.mesh.check(env.payload.info)
            if env.sender != env.payload.info.node_id:
                raise AdmissionError("seed's sender id differs from its info")
        except (DecodeError, AdmissionError) as exc:
            self.transport.counters.reject("seed_reply")
            _log.warning("seed_rejected", seed=f"{host}:{intro_port - 2}", error=str(exc))
            return False
        ack = env.payload
        # Reach the seed where we reached it, whatever it advertises.
        info = replace(ack.info, addresses=(host, *[a for a in ack.info.addresses if a != host]))
        self._admit(info)
        for rec in ack.members:
            self._admit(rec.info)
        self._last_seen_wall[info.node_id] = self.clock.wall()
        now = self.clock.monotonic()
        self._apply(self.machine.discovered(info, now, "seed"))
        self._apply(self.machine.receive(info.node_id, IntroAck(info, ack.members), now))
        return True

    async def _persist_loop(self) -> None:
        while True:
            await asyncio.sleep(PERSIST_INTERVAL)
            self._persist_all()

    def _flush_dirty(self) -> None:
        if not self._dirty:
            return
        batch = [
            StoredPeer(rec, self._last_seen_wall.get(node_id))
            for node_id, rec in self._dirty.items()
        ]
        self._dirty.clear()
        self.store.save_peers(batch)

    def _persist_all(self) -> None:
        for rec in self.machine.snapshot():
            if rec.info.node_id != self.identity.node_id:
                self._dirty[rec.info.node_id] = rec
        self._flush_dirty()

    def resolve_peer(self, ref: str) -> MemberInfo:
        """A peer by name, full id or unique id prefix (ControlError otherwise)."""
        views = self.machine.members()
        exact = [v.info for v in views if ref in (v.info.node_id, v.info.name)]
        found = exact or [v.info for v in views if v.info.node_id.startswith(ref.lower())]
        if len(found) == 1:
            return found[0]
        known = ", ".join(sorted(v.info.name for v in views)) or "none"
        if not found:
            raise ControlError(f"unknown peer {ref!r}; known peers: {known}", code="unknown_peer")
        raise ControlError(f"{ref!r} matches {len(found)} peers; give more of the id", "ambiguous")

    def resolve_peer_or_self(self, ref: str) -> str:
        me = self.machine.self_info
        if ref in (me.node_id, me.name) or (len(ref) >= 4 and me.node_id.startswith(ref)):
            return me.node_id
        return self.resolve_peer(ref).node_id

    def _lead_request(self, target: str) -> dict[str, Any]:
        """Transfer the lead to ``target`` ('' = step down): done here when we lead,
        else forwarded to the lead. The caller confirms through status."""
        from meshd.errors import LocalProtocolError

        now = self.clock.monotonic()
        lead = self.machine.election.lead
        if target and target != self.identity.node_id:
            view = self.machine.get(target)
            if view is None or view.info.priority == 0:
                raise ControlError(
                    f"{self._name_of(target)} cannot lead (priority 0 or not a live member)",
                    code="not_eligible",
                )
        try:
            self._apply(self.machine.election.request_transfer(target, now))
        except LocalProtocolError as exc:
            raise ControlError(str(exc), code="no_lead") from None
        return {
            "lead": lead,
            "forwarded": lead != self.identity.node_id,
            "term": self.machine.election.term,
        }

    async def ping(self, ref: str, timeout: float = 2.0) -> float:
        """Round trip of a PING to a peer through the full stack (codec, CURVE), in seconds."""
        info = self.resolve_peer(ref)
        msg_id = os.urandom(16)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[float] = loop.create_future()
        self._pings[msg_id] = fut
        # seq 0 is never used by the failure detector's own probes.
        data = self._envelope(Ping(seq=0), msg_id=msg_id)

        # A timer that fails the future itself: asyncio.wait_for would add a waiter and one
        # more loop iteration to every round trip.
        def expire() -> None:
            if not fut.done():
                fut.set_exception(TimeoutError())

        timer = loop.call_later(timeout, expire)
        start = time.perf_counter()
        try:
            self.transport.send(info.node_id, data, self._routing.get(info.node_id))
            end = await fut
        except TimeoutError:
            raise ControlError(
                f"{info.name} did not answer within {timeout} s", "timeout"
            ) from None
        finally:
            timer.cancel()
            self._pings.pop(msg_id, None)
        return end - start

    # -- control ---------------------------------------------------------------------------
    async def _control(self, op: str, args: dict[str, Any]) -> Any:
        if op == "status":
            return self.status()
        if op == "ping":
            return {"pong": True, "pid": os.getpid(), "node": self.identity.node_id}
        if op == "peer_ping":
            count = int(args.get("count", 1))
            if not 1 <= count <= 10_000:
                raise ControlError("count must be 1..10000", code="bad_request")
            rtts = [await self.ping(str(args.get("peer", "")), float(args.get("timeout", 2.0)))]
            for _ in range(count - 1):
                rtts.append(await self.ping(str(args["peer"]), float(args.get("timeout", 2.0))))
            return {"peer": self.resolve_peer(str(args["peer"])).node_id, "rtt_s": rtts}
        if op == "events":
            since = float(args.get("since", 0.0))
            if args.get("wait") and self.tasks is not None:
                await self.tasks.wait_events(since, float(args["wait"]))
            return [e for e in self.events if e["at"] > since]
        if op == "audit":
            kind = args.get("type")
            return self.store.read_audit(float(args.get("since", 0.0)), kind and str(kind))
        if op == "lead_transfer":
            return self._lead_request(self.resolve_peer_or_self(str(args.get("target", ""))))
        if op == "lead_step_down":
            return self._lead_request("")
        if op.startswith("task") or op.startswith("delegate"):
            return await self._task_control(op, args)
        if op.startswith("skill_"):
            return await self._skill_control(op, args)
        raise ControlError(f"unknown operation {op!r}", code="unknown_op")

    async def _skill_control(self, op: str, args: dict[str, Any]) -> Any:
        skills = self.skills
        assert skills is not None
        if op == "skill_list":
            return skills.listing(bool(args.get("mesh")))
        if op == "skill_describe":
            if args.get("file"):
                pack = skills.inspect_file(skills.read_file(str(args["file"])))
                return {
                    **pack.manifest.spec.to_dict(),
                    "pack_id": pack.pack_id,
                    "signer": pack.signer.hex(),
                    "signer_trusted": skills.trusted(pack.signer),
                    "files": sorted(pack.files),
                }
            return skills.describe(str(args.get("name", "")))
        if op == "skill_pack":
            data = skills.build(str(args.get("dir", "")))
            pack = skills.inspect_file(data)
            out = Path(str(args.get("out") or "")) if args.get("out") else None
            if out is None:
                spec = pack.manifest.spec
                out = Path(str(args.get("cwd") or ".")) / f"{spec.name}-{spec.version}.pack"
            try:
                out.write_bytes(data)
            except OSError as exc:
                raise ControlError(f"cannot write {out}: {exc.strerror}", "bad_request") from None
            return {
                "path": str(out),
                "name": pack.manifest.spec.name,
                "size": len(data),
                "version": pack.manifest.spec.version,
                "pack_id": pack.pack_id,
            }
        if op == "skill_install":
            if args.get("file"):
                path = str(args["file"])
                return skills.install_bytes(skills.read_file(path), source=f"file {path}")
            return await skills.install_from_mesh(str(args.get("name", "")))
        if op == "skill_remove":
            return skills.remove(str(args.get("name", "")))
        if op == "skill_publish":
            return skills.publish(str(args.get("name", "")))
        if op == "skill_trust_add":
            return skills.trust_add(str(args.get("key", "")), str(args.get("note", "")))
        if op == "skill_trust_remove":
            return skills.trust_remove(str(args.get("key", "")))
        if op == "skill_trust_list":
            return skills.trust_list()
        if op == "skill_revoke":
            keys = [str(k) for k in args.get("keys") or []]
            packs = [str(p) for p in args.get("packs") or []]
            return skills.revoke(keys, packs)
        raise ControlError(f"unknown operation {op!r}", code="unknown_op")

    async def _task_control(self, op: str, args: dict[str, Any]) -> Any:
        tasks = self.tasks
        assert tasks is not None
        if op == "delegate":
            return await tasks.delegate(args)
        if op == "delegate_many":
            return await tasks.delegate_many(args.get("tasks"))  # type: ignore[arg-type]
        if op == "task_get":
            return tasks.view(tasks.resolve_task(str(args.get("id", ""))))
        if op == "task_watch":
            task_id = tasks.resolve_task(str(args.get("id", "")))
            after = args.get("after")
            return await tasks.watch(task_id, after, float(args.get("wait", 10.0)))
        if op == "task_list":
            state = args.get("state")
            return tasks.list(state and str(state), int(args.get("limit", 100)))
        if op in ("task_cancel", "task_retry", "task_handoff", "task_approve", "task_deny"):
            extra = str(args.get("to") or args.get("reason") or "")
            return await tasks.operator(op.removeprefix("task_"), str(args.get("id", "")), extra)
        raise ControlError(f"unknown operation {op!r}", code="unknown_op")

    def status(self) -> dict[str, Any]:
        now_wall = self.clock.wall()
        now = self.clock.monotonic()
        me = self.machine.self_info
        peers = []
        counts = {s.value: 0 for s in MemberState}
        for view in self.machine.members():
            info = view.info
            counts[view.state.value] += 1
            peers.append(
                {
                    "id": info.node_id,
                    "name": info.name,
                    "role": info.role,
                    "state": view.state.value,
                    "priority": info.priority,
                    "tier": info.tier,
                    "address": self._connected_addr.get(info.node_id)
                    or (info.addresses[0] if info.addresses else None),
                    "last_seen": self._last_seen_wall.get(info.node_id),
                    "incarnation": info.incarnation,
                    "state_since": now_wall - (now - view.state_since),
                }
            )
        task_status = self.tasks.status() if self.tasks is not None else None
        per_node = task_status["nodes"] if task_status else {}
        for peer in peers:
            held = per_node.get(peer["id"])
            peer["task"] = held["current"] if held else None
            peer["tasks"] = held["tasks"] if held else 0
        mine = per_node.get(me.node_id)
        c = self.transport.counters
        st = self.machine.status(now)
        lead: dict[str, Any] | None = None
        lead_reason: str | None = None
        if st.lead is not None:
            since = None if st.since is None else now_wall - (now - st.since)
            lead = {"id": st.lead, "name": self._name_of(st.lead), "term": st.term, "since": since}
        else:
            lead_reason = f"no lead: {st.reason}" if st.reason else "no lead"
        return {
            "schema": 1,
            "self": {
                "id": me.node_id,
                "name": me.name,
                "role": me.role,
                "state": "alive",
                "priority": me.priority,
                "tier": me.tier,
                "address": me.addresses[0] if me.addresses else None,
                "addresses": list(me.addresses),
                "ports": {"router": me.router_port, "pub": me.pub_port, "intro": me.intro_port},
                "incarnation": me.incarnation,
                "mesh_id": self.mesh.mesh_id,
                "version": __version__,
                "pid": os.getpid(),
                "started_at": self.started_wall,
                "ready_at": self.ready_wall,
                "uptime_s": round(now_wall - self.started_wall, 3),
                "task": mine["current"] if mine else None,
                "tasks": mine["tasks"] if mine else 0,
            },
            "lead": lead,
            "lead_reason": lead_reason,
            "term": st.term,
            "role": st.role.value.lower(),
            "peers": peers,
            "tasks": task_status,
            "metrics": metrics.collect(self),
            "counts": {**counts, "total": len(peers) + 1},
            "counters": {
                "frames_in": c.frames_in,
                "frames_out": c.frames_out,
                "dropped_out": c.dropped_out,
                "zap_admitted": c.zap_admitted,
                "zap_refused": c.zap_refused,
                "rejected": dict(c.rejected),
                "mdns_foreign_records": self.discovery.foreign_records if self.discovery else 0,
                "mdns_bad_records": self.discovery.bad_records if self.discovery else 0,
            },
        }


def _event_name(state: MemberState, previous: MemberState | None) -> str:
    if state is MemberState.ALIVE:
        return (
            "AGENT_JOINED"
            if previous in (None, MemberState.DEAD, MemberState.LEFT)
            else ("AGENT_ALIVE")
        )
    return {
        MemberState.SUSPECT: "AGENT_SUSPECT",
        MemberState.DEAD: "AGENT_FAILED",
        MemberState.LEFT: "AGENT_LEFT",
    }[state]


def _default_name(node_id: str) -> str:
    import socket

    host = socket.gethostname().split(".")[0][:40] or "node"
    return f"{host}-{node_id[:4]}"


async def run_node(node: Node) -> int:
    """Start, run until SIGTERM/SIGINT, stop gracefully. A second signal exits at once."""
    loop = asyncio.get_running_loop()
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals > 1:
            os._exit(130)
        node.request_stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    await node.start()
    await node.run()
    return 0
