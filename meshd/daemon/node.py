"""The daemon: its lifecycle, and THE effect interpreter.

:class:`Node` starts the parts of a live node, feeds the pure :class:`~meshd.core.Core`
what the network, the clock, the clients and the skill runs deliver (with ``now`` from
the clock), and carries out the effects it returns through one dispatch table
(:meth:`Node.apply`). It holds no protocol logic of its own. Its parts each take narrow
ports, never the node:

- the transport (:mod:`meshd.net`): frames to and from peers;
- :class:`~meshd.daemon.admission.Admission`: proofs, ZAP admissions, refusal records;
- :class:`~meshd.daemon.commit.Commit`: durable before acknowledged (group commit);
- :class:`~meshd.daemon.runner.Runner`: local skill runs;
- :class:`~meshd.daemon.packs.PackManager`: skill packs, trust, the mesh catalog;
- :class:`~meshd.daemon.delegation.Delegation`: delegate / task requests;
- :class:`~meshd.daemon.events.EventLog`: events and the audit trail (every append wakes
  the long-polls);
- :mod:`meshd.daemon.control`: the control operations, served on the control socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import math
import os
import random
import signal
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Final

from meshd import __version__, clock, log
from meshd.clock import Clock, SystemClock
from meshd.config import DEFAULT_PORT, Config, TransportConfig, parse_hostport
from meshd.control_proto import SOCKET_NAME
from meshd.core import AgentSetup, Core
from meshd.daemon import control
from meshd.daemon.admission import Admission
from meshd.daemon.commit import Commit
from meshd.daemon.delegation import Delegation
from meshd.daemon.events import EventLog
from meshd.daemon.lag import LagMonitor
from meshd.daemon.metrics import collect, prometheus_text
from meshd.daemon.packs import PackManager
from meshd.daemon.runner import Runner
from meshd.daemon.state import ensure_state_dir, prepare_state
from meshd.effects import (
    CancelSkill,
    Connect,
    Disconnect,
    Effect,
    ElectionEvent,
    Emit,
    MemberChanged,
    OpDone,
    Persist,
    Publish,
    Refused,
    RunSkill,
    SaveOutbox,
    Send,
    StoreCopies,
)
from meshd.errors import AdmissionError, DecodeError, LocalProtocolError, RequestError
from meshd.identity import Identity, MeshKey
from meshd.net import sd_notify
from meshd.net.base import FrameHandler, IntroHandler, Transport
from meshd.net.control import ControlServer
from meshd.roles import Role, load_roles
from meshd.skills.builtin import default_registry
from meshd.skills.executor import Executor, ExecutorConfig
from meshd.skills.spec import SkillError
from meshd.store.db import StateLock, Store, StoredPeer
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
    ReportKind,
    SkillPayloads,
    TaskAck,
    TaskDigest,
    TaskReport,
    TaskUpdate,
)
from meshd.wire.records import MemberInfo, MemberRecord, MemberState, Task, TaskCopy

_log = log.get("meshd.node")

#: s. How often the full member view is written to LMDB (state changes are written at once).
PERSIST_INTERVAL: Final = 30.0
#: ms. On a graceful exit, how long sockets may keep flushing the LEAVE to live peers.
LEAVE_LINGER_MS: Final = 300
#: s. After a member joins, when it is sent our pack inventory (once its links are up).
INVENTORY_DELAY: Final = 0.2
#: s. Poll period of a graceful drain waiting for the running skills to finish.
DRAIN_POLL: Final = 0.05
#: Copies per merged TASK_UPDATE publication (~1-2 KiB each: far below one frame).
UPDATE_CHUNK: Final = 200
#: s. A refused message is logged once per reason and sender in this interval (all are
#: counted: ``frames_rejected_total{reason=...}``).
REFUSAL_LOG_INTERVAL: Final = 60.0
#: (reason, sender) pairs remembered for that rate limit.
MAX_REFUSAL_KEYS: Final = 4096

#: Builds the node's transport: ``(identity, mesh, config, on_frame, on_intro)``.
TransportFactory = Callable[
    [Identity, MeshKey, TransportConfig, FrameHandler, IntroHandler], Transport
]


def zmq_transport(
    identity: Identity,
    mesh: MeshKey,
    config: TransportConfig,
    on_frame: FrameHandler,
    on_intro: IntroHandler,
) -> Transport:
    """The real transport (imported here: pyzmq loads only in a daemon)."""
    from meshd.net.transport import ZmqTransport

    return ZmqTransport(identity, mesh, config, on_frame, on_intro)


def _is_ack(payload: object) -> bool:
    """Acknowledgements promise durability: they leave only after the batch's commit
    (TASK_ACK, and STARTED, the agent's acknowledgement of an assignment). Everything
    else may go at once: a copy or an outcome sent before it is durable here is still
    held by its sender (an unacknowledged submit or report is resent), so a crash in
    between loses nothing."""
    if isinstance(payload, TaskAck):
        return True
    return isinstance(payload, TaskReport) and payload.kind is ReportKind.STARTED


def _event_name(state: MemberState, previous: MemberState | None) -> str:
    if state is MemberState.ALIVE:
        if previous in (None, MemberState.DEAD, MemberState.LEFT):
            return "AGENT_JOINED"
        return "AGENT_ALIVE"
    return {
        MemberState.SUSPECT: "AGENT_SUSPECT",
        MemberState.DEAD: "AGENT_FAILED",
        MemberState.LEFT: "AGENT_LEFT",
    }[state]


def _default_name(node_id: str) -> str:
    import socket

    host = socket.gethostname().split(".")[0][:40] or "node"
    return f"{host}-{node_id[:4]}"


class _MeshPort:
    """The members and links of a node, as its pack manager sees them."""

    def __init__(self, node: Node) -> None:
        self._node = node

    def members(self) -> list[MemberInfo]:
        return [v.info for v in self._node.core.members()]

    def name_of(self, node_id: str) -> str:
        return self._node.core.name_of(node_id)

    def send(self, to: str, payload: Payload) -> None:
        self._node.send(to, payload)

    def publish(self, payload: Payload) -> None:
        self._node.publish(payload)

    def reply(self, to: str, payload: Payload, correlation_id: bytes) -> None:
        self._node.send(to, payload, correlation_id=correlation_id)

    def request(self, to: str, payload: Payload, msg_id: bytes) -> None:
        self._node.send(to, payload, msg_id=msg_id)

    def reject(self, reason: str) -> None:
        self._node.transport.counters.reject(reason)


class _Gate:
    """The transport's admission side, for :class:`Admission`."""

    def __init__(self, node: Node) -> None:
        self._node = node

    def admit(self, curve_pk: bytes, node_id: str) -> None:
        self._node.transport.admit(curve_pk, node_id)

    def reject(self, reason: str) -> None:
        self._node.transport.counters.reject(reason)


class Node:
    """One meshd daemon (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        state_dir: Path,
        role: Role,
        clock: Clock | None = None,
        on_ready: Callable[[MeshKey, bool], None] | None = None,
        transport: TransportFactory = zmq_transport,
    ) -> None:
        self.cfg = config
        self.state_dir = state_dir
        self.role = role
        self.clock = clock or SystemClock()
        self.on_ready = on_ready
        self._make_transport = transport
        self.started_wall = self.clock.wall()
        self.ready_wall: float | None = None
        self._stop = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._bg: set[asyncio.Task[Any]] = set()
        self._routing: dict[str, bytes] = {}
        self._connected_addr: dict[str, str] = {}
        self._last_seen_wall: dict[str, float] = {}
        self._dirty: dict[str, MemberRecord] = {}
        self._pings: dict[bytes, asyncio.Future[float]] = {}
        # The one timer of the node: a loop.call_later handle for the core's next
        # deadline, moved only when a deadline comes earlier (no task per tick).
        self._next_tick = float("inf")
        self._tick_handle: asyncio.TimerHandle | None = None
        self.lag = LagMonitor(self.clock)
        self._ticking = False
        # TASK_UPDATE copies of this loop turn, merged into one publication.
        self._updates: list[TaskCopy] = []
        self._update_hi = 0
        self._update_handle: asyncio.Handle | None = None
        self.completed_here = 0
        self.failed_here = 0
        self.discovery: Any = None  # meshd.net.discovery.Discovery, with mDNS only
        self.metrics_server: Any = None  # meshd.net.http.MetricsServer, with a port
        self._handlers: dict[type, Callable[[Any], None]] = {
            Send: self._do_send,
            Publish: self._do_publish,
            Connect: self._do_connect,
            Disconnect: self._do_disconnect,
            MemberChanged: self._do_member_changed,
            Persist: self._do_persist,
            ElectionEvent: self._do_election_event,
            StoreCopies: self._do_store_copies,
            SaveOutbox: self._do_save_outbox,
            RunSkill: self._do_run_skill,
            CancelSkill: self._do_cancel_skill,
            Emit: self._do_emit,
            Refused: self._do_refused,
            OpDone: self._do_op_done,
        }
        #: (reason, sender) -> when a refusal of that kind from that peer was last logged.
        self._refusal_logged: dict[tuple[str, str], float] = {}

    # ---- life cycle --------------------------------------------------------------------

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
        cfg, clock = self.cfg, self.clock
        setup = prepare_state(self.state_dir, cfg.node.join_token)
        self.identity, self.mesh = setup.identity, setup.mesh
        self.created_mesh = setup.created_mesh
        node_id = self.identity.node_id
        self.store = Store(self.state_dir, cfg.store.map_size, cfg.store.fsync)
        self.store.set_meta("mesh_id", self.mesh.mesh_id)
        # A bad stored incarnation (quarantined) gives way to the wall clock in seconds.
        incarnation = self.store.next_incarnation(fallback=int(clock.wall()))
        self.commit = Commit(self.store)
        self.events = EventLog(clock, node_id, self.commit.audit)

        self.transport = self._make_transport(
            self.identity, self.mesh, cfg.transport, self._on_frame, self._on_intro
        )
        self.admission = Admission(node_id, self.mesh, _Gate(self), self.events, clock)
        self.transport.on_refused = self.admission.handshake_refused
        rp, pp, ip = await self.transport.start(cfg.node.listen_host, cfg.node.listen_port)

        from meshd.net.interfaces import choose_interfaces

        self.interfaces = choose_interfaces(cfg.discovery) if cfg.discovery.mdns else []
        addresses = self._advertised_addresses()
        name = cfg.node.name or _default_name(node_id)
        priority = cfg.node.priority if cfg.node.priority is not None else self.role.priority
        self_info = MemberInfo(
            node_id=node_id,
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

        self.registry = default_registry()
        self.roles = load_roles()
        limit = self.role.limits.max_concurrent_tasks
        executor = Executor(
            self.registry, config=ExecutorConfig(max_concurrent=max(1, limit)), clock=clock
        )
        self.runner = Runner(executor, self, self.store)
        self.runner.load_stats()
        roles = self.roles

        def role_defaults(name: str) -> tuple[tuple[str, ...], int]:
            r = roles.get(name)
            return (r.capabilities, r.limits.max_concurrent_tasks) if r else ((), 2)

        election = self.store.load_election(node_id)
        self.core = Core(
            self_info,
            cfg.membership,
            cfg.election,
            clock.monotonic(),
            random.Random(int.from_bytes(os.urandom(8), "big")),
            verify=self.mesh.verify,
            admit=self.mesh.verify_proof,
            term=election.term,
            voted_for=election.voted_for,
            term_known=election.term_known,
            voters=election.voters,
            sign=self.identity.sign,
            agent=AgentSetup(
                config=cfg.tasks,
                skills=self._runnable,
                role_defaults=role_defaults,
                max_concurrent=limit,
                capabilities=self.role.capabilities,
                verifier=self._verify,
                needs_approval=self._needs_approval,
            ),
            wall_offset=clock.wall() - clock.monotonic(),
        )
        stored = self.store.load_peers()
        for peer in stored:
            if peer.last_seen is not None:
                self._last_seen_wall[peer.record.info.node_id] = peer.last_seen
            self.admission.admit(peer.record.info)
        self.apply(self.core.restore([p.record for p in stored], clock.monotonic()))

        self.packs = PackManager(
            self.state_dir / "skills",
            self.registry,
            identity=self.identity,
            role=self.role,
            config=cfg.skills,
            store=self.store,
            events=self.events,
            clock=clock,
            mesh=_MeshPort(self),
            runs=self.runner,
        )
        self.packs.on_change = self._skills_changed
        self.packs.start()
        copies, submits, reports = self.store.load_tasks()
        self.apply(self.core.load_tasks(copies, submits, reports, clock.monotonic()))
        for q in self.store.quarantined:  # bad durable records, set aside by the loaders
            _log.warning("state_quarantined", table=q.table, key=q.key[:40], reason=q.reason)
            self.events.append(
                "STATE_QUARANTINED",
                {"table": q.table, "key": q.key, "reason": q.reason},
                audit=True,
            )
        self.delegation = Delegation(
            self,
            cfg.tasks,
            self.packs,
            self.roles,
            self.resolve_peer_or_self,
            self.commit.durable,
        )

        services = control.Services(
            status=self.status,
            ping=lambda: control.process_info(node_id),
            peer_ping=self.peer_ping,
            resolve_peer=lambda ref: self.resolve_peer(ref).node_id,
            lead_request=lambda ref: self.lead_request(
                self.resolve_peer_or_self(ref) if ref else ""
            ),
            audit=self.store.read_audit,
            quarantine=self.store.quarantine_list,
            quarantine_clear=self.clear_quarantine,
            events=self.events,
            delegation=self.delegation,
            packs=self.packs,
        )

        async def handle(op: str, args: dict[str, Any]) -> Any:
            return await control.dispatch(services, op, args)

        self.control = ControlServer(self.state_dir / SOCKET_NAME, handle)
        await self.control.start()
        if cfg.node.metrics_port is not None:
            from meshd.net.http import MetricsServer

            self.metrics_server = MetricsServer(self.metrics_text, self.healthy)
            mport = await self.metrics_server.start(cfg.node.metrics_host, cfg.node.metrics_port)
            _log.info("metrics_listening", host=cfg.node.metrics_host, port=mport)

        if cfg.discovery.mdns and self.interfaces:
            from meshd.net.discovery import Discovery

            self.discovery = Discovery(cfg.discovery, self.mesh.mesh_id, self._on_mdns)
            await self.discovery.start(self_info, self.interfaces)
        elif cfg.discovery.mdns:
            _log.warning("mdns_no_interface", hint="use --interface or --peer HOST:PORT")

        self._on_tick()
        self.lag.start()
        self._loops.append(asyncio.create_task(self._persist_loop(), name="persist"))
        for text in cfg.node.peers:
            host, port = parse_hostport(text, cfg.node.listen_port or DEFAULT_PORT)
            self._loops.append(asyncio.create_task(self._seed_loop(host, port), name="seed"))
        _log.info(
            "node_started",
            node=node_id[:12],
            name=name,
            role=self.role.name,
            mesh=self.mesh.mesh_id,
            ports=[rp, pp, ip],
            addresses=list(addresses),
            incarnation=incarnation,
            peers_restored=len(stored),
        )
        self.ready_wall = clock.wall()
        if self.on_ready is not None:
            self.on_ready(self.mesh, self.created_mesh)
        # systemd (Type=notify): READY=1 + watchdog; else a no-op.
        status = f"{name} ({self.role.name}) in mesh {self.mesh.mesh_id}, port {rp}"
        self.keep(sd_notify.node_ready(status))

    @property
    def self_info(self) -> MemberInfo:
        """This node's current member info (the core owns it: incarnation bumps)."""
        return self.core.self_info

    def now(self) -> float:
        """Monotonic seconds (the core's ``now``)."""
        return self.clock.monotonic()

    def keep(self, task: asyncio.Task[Any] | None) -> None:
        """Hold a background task until it ends (cancelled at shutdown)."""
        if task is not None:
            self._bg.add(task)
            task.add_done_callback(self._bg.discard)

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
        sd_notify.node_stopping()  # STOPPING=1 (a no-op without $NOTIFY_SOCKET)
        if getattr(self, "core", None) is not None:
            with contextlib.suppress(Exception):
                await self.drain(self.cfg.node.shutdown_grace)
            await self.runner.close()
            await self.packs.stop()
            self.apply(self.core.leave(self.now()))
        await self._teardown(linger_ms=LEAVE_LINGER_MS)

    async def drain(self, grace: float) -> dict[str, int]:
        """Graceful shutdown, first half: take no more tasks, let the running ones finish
        for up to ``grace`` s, then hand back the idempotent ones (with their last
        checkpoint: another agent resumes them) and report the others lost (the lead
        fails them ``agent_lost``; an operator may retry them). Returns counts."""
        machine = self.delegation.machine
        if machine.draining:
            return {"finished": 0, "handed_back": 0, "lost": 0}
        self.apply(self.core.drain(self.now()))
        running = machine.running_here()
        end = self.now() + max(0.0, grace)
        while machine.running_here() and self.now() < end:
            await asyncio.sleep(min(DRAIN_POLL, max(0.0, end - self.now())))
        left = machine.running_here()
        handed = lost = 0
        for task_id, attempt in left.items():
            task = machine.get(task_id)
            ckpt = self.runner.checkpoint(task_id)
            if task is not None and ckpt is not None:
                # The freshest resume point first (same link, so it arrives first).
                prog = task.progress
                self.apply(
                    self.core.skill_progress(
                        task_id, attempt, prog.pct, prog.message, ckpt, self.now()
                    )
                )
            # LOST: the lead requeues an idempotent task (it resumes elsewhere from its
            # checkpoint) and fails a non-idempotent one with agent_lost.
            why = "the agent shut down before the task finished"
            self.apply(self.core.skill_lost(task_id, attempt, why, self.now()))
            if task is not None and task.idempotent:
                handed += 1
            else:
                lost += 1
            self.runner.cancel(task_id)
        await self.commit.durable()
        finished = len(running) - len(left)
        _log.info("drained", finished=finished, handed_back=handed, lost=lost)
        return {"finished": finished, "handed_back": handed, "lost": lost}

    async def _teardown(self, linger_ms: int = 0) -> None:
        self._stop.set()
        self.lag.stop()
        if self._tick_handle is not None:
            self._tick_handle.cancel()
            self._tick_handle = None
        pending = [*self._loops, *self._bg]
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(BaseException):
                await task
        self._loops.clear()
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
        if getattr(self, "events", None) is not None:
            self.events.close()
        if getattr(self, "commit", None) is not None:
            self._publish_updates()
            await self.commit.close()
        if getattr(self, "core", None) is not None and getattr(self, "store", None):
            with contextlib.suppress(Exception):
                self._persist_all()
        if getattr(self, "transport", None) is not None:
            await self.transport.close(linger_ms)
        if getattr(self, "store", None) is not None:
            self.store.close()
            del self.store
        self.lock.release()
        _log.info("node_stopped")

    # ---- the effect interpreter ---------------------------------------------------------

    def apply(self, effects: Sequence[Effect]) -> None:
        """Carry out a core step's effects, in order (see :mod:`meshd.effects`)."""
        handlers = self._handlers
        for eff in effects:
            handlers[type(eff)](eff)
        # Move the timer only if the core now needs it earlier than planned.
        if not self._ticking:
            self._schedule_tick(self.core.next_deadline())

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
            term=self.core.election.term,
        )
        return codec.encode(env)

    def send(
        self,
        to: str,
        payload: Payload,
        correlation_id: bytes | None = None,
        msg_id: bytes | None = None,
    ) -> None:
        """A direct message to ``to`` (dropped once shutdown began)."""
        if self._stop.is_set() or to == self.identity.node_id:
            return
        data = self._envelope(payload, correlation_id, msg_id)
        self.transport.send(to, data, self._routing.get(to))

    def publish(self, payload: Payload) -> None:
        """A broadcast to every subscribed peer (dropped once shutdown began)."""
        if self._stop.is_set():
            return
        data = self._envelope(payload)
        self.transport.publish(codec.topic_for(PAYLOAD_TYPES[type(payload)]), data)

    def _do_send(self, eff: Send) -> None:
        if _is_ack(eff.payload):
            self.commit.hold(lambda: self._send_now(eff))  # after the batch is durable
        else:
            self._send_now(eff)

    def _send_now(self, eff: Send) -> None:
        if eff.to == self.identity.node_id:
            return
        data = self._envelope(eff.payload, eff.correlation_id)
        self.transport.send(eff.to, data, self._routing.get(eff.to))

    def _do_publish(self, eff: Publish) -> None:
        payload = eff.payload
        if isinstance(payload, TaskUpdate):
            # Merged into one publication per loop turn (fewer, larger frames).
            self._updates.extend(payload.copies)
            self._update_hi = max(self._update_hi, payload.seq_hi)
            if self._update_handle is None:
                self._update_handle = asyncio.get_running_loop().call_soon(self._publish_updates)
            return
        if isinstance(payload, TaskDigest) and (self._updates or self._update_hi):
            # A TASK_DIGEST covers the updates the core made before it: they must not
            # trail it (other publications need no such order, and merging matters).
            if self._update_handle is not None:
                self._update_handle.cancel()
            self._publish_updates()
        data = self._envelope(payload)
        self.transport.publish(codec.topic_for(PAYLOAD_TYPES[type(payload)]), data)

    def _publish_updates(self) -> None:
        self._update_handle = None
        if not self._update_hi and not self._updates:
            return
        copies, self._updates, hi, self._update_hi = self._updates, [], self._update_hi, 0
        topic = codec.topic_for(MsgType.TASK_UPDATE)
        for i in range(0, max(1, len(copies)), UPDATE_CHUNK):
            update = TaskUpdate(hi, tuple(copies[i : i + UPDATE_CHUNK]))
            self.transport.publish(topic, self._envelope(update))

    def _do_connect(self, eff: Connect) -> None:
        info = eff.info
        if info.node_id == self.identity.node_id:
            return
        if not self.admission.admit(info):
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

    def _do_disconnect(self, eff: Disconnect) -> None:
        self.transport.disconnect_peer(eff.node_id)
        self._connected_addr.pop(eff.node_id, None)

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

    def _do_member_changed(self, eff: MemberChanged) -> None:
        rec = eff.record
        node_id = rec.info.node_id
        if node_id == self.identity.node_id:
            self.store.save_incarnation(rec.info.incarnation)
            if self.discovery is not None and rec.state is MemberState.ALIVE:
                self.keep(asyncio.get_running_loop().create_task(self.discovery.update(rec.info)))
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
        kind = _event_name(rec.state, eff.previous)
        self.events.append(
            kind,
            {
                "node": node_id,
                "name": rec.info.name,
                "state": rec.state.value,
                "previous": prev,
                "reason": eff.reason,
            },
        )
        packs = getattr(self, "packs", None)
        if packs is not None:
            if kind == "AGENT_JOINED":
                # Once its links are up: our inventory and revocations.
                asyncio.get_running_loop().call_later(INVENTORY_DELAY, packs.member_joined, node_id)
            elif rec.state in (MemberState.DEAD, MemberState.LEFT):
                packs.member_gone(node_id)
        _log.info(
            "member_" + rec.state.value,
            peer=node_id[:12],
            name=rec.info.name,
            previous=prev,
            reason=eff.reason,
        )
        self._flush_dirty()

    def _do_persist(self, eff: Persist) -> None:
        # Synchronous and durable before the next effect (a vote) is sent.
        self.store.save_election(eff.term, eff.voted_for, eff.voters)

    def _do_election_event(self, eff: ElectionEvent) -> None:
        lead_name = self.core.name_of(eff.lead) if eff.lead else None
        self.events.append(
            eff.kind,
            {"term": eff.term, "lead": eff.lead, "lead_name": lead_name, "reason": eff.reason},
            audit=True,
        )
        _log.info(eff.kind.lower(), term=eff.term, lead=lead_name, reason=eff.reason)

    def _do_store_copies(self, eff: StoreCopies) -> None:
        self.commit.copies(eff)
        delegation = getattr(self, "delegation", None)
        if delegation is not None:
            for copy in eff.copies:
                delegation.changed(copy.task.task_id)

    def _do_save_outbox(self, eff: SaveOutbox) -> None:
        self.commit.outbox(eff)

    def _do_run_skill(self, eff: RunSkill) -> None:
        task = eff.task
        self.commit.hold(lambda: self.runner.start(task))

    def _do_cancel_skill(self, eff: CancelSkill) -> None:
        self.runner.cancel(eff.task_id)

    def _do_emit(self, eff: Emit) -> None:
        record = self.events.append(eff.kind, eff.fields, audit=eff.audit)
        if record["node"] == self.identity.node_id:
            if eff.kind in ("TASK_COMPLETED", "TASK_VERIFIED"):
                self.completed_here += 1
            elif eff.kind == "TASK_FAILED":
                self.failed_here += 1
        if eff.kind == "TASKS_RESUMED":
            _log.info("tasks_resumed", **{k: eff.fields[k] for k in ("unfinished", "sources")})

    def _voters_status(self) -> dict[str, Any]:
        """The voter set as this node holds it (``version`` 0: none decided yet, every
        member counts), how many votes make a quorum, and the voters' names."""
        election = self.core.election
        version, ids = election.voter_set
        return {
            "version": version,
            "count": election.member_count(),
            "quorum": election.quorum(),
            "names": sorted(self.core.name_of(n) for n in ids),
        }

    def _do_refused(self, eff: Refused) -> None:
        self.transport.counters.reject(eff.reason)
        now = self.clock.monotonic()
        key = (eff.reason, eff.sender)
        if now - self._refusal_logged.get(key, -math.inf) < REFUSAL_LOG_INTERVAL:
            return
        if len(self._refusal_logged) >= MAX_REFUSAL_KEYS:
            cutoff = now - REFUSAL_LOG_INTERVAL
            self._refusal_logged = {k: t for k, t in self._refusal_logged.items() if t > cutoff}
            if len(self._refusal_logged) >= MAX_REFUSAL_KEYS:
                return
        self._refusal_logged[key] = now
        _log.warning(
            "message_refused",
            reason=eff.reason,
            sender=self.core.name_of(eff.sender),
            sender_id=eff.sender,
            detail=eff.detail,
        )

    def _do_op_done(self, eff: OpDone) -> None:
        self.delegation.op_done(eff)

    # ---- what the skill runs report (the runner's Outcomes port) -----------------------------

    def progress(
        self, task_id: str, attempt: int, pct: float, message: str, checkpoint: bytes | None
    ) -> None:
        self.apply(self.core.skill_progress(task_id, attempt, pct, message, checkpoint, self.now()))

    def done(
        self, task_id: str, attempt: int, ok: bool, result: Any, code: str, message: str
    ) -> None:
        self.apply(self.core.skill_done(task_id, attempt, ok, result, code, message, self.now()))

    def handoff(self, task_id: str, attempt: int, target: str, checkpoint: bytes | None) -> None:
        self.apply(self.core.skill_handoff(task_id, attempt, target, checkpoint, self.now()))

    def _skills_changed(self) -> None:
        self.apply(self.core.skills_changed(self.now()))

    def _runnable(self) -> tuple[str, ...]:
        """Skills this node may run: built-ins, and packs its role is allowed."""
        packs = getattr(self, "packs", None)
        names = self.registry.names()
        return names if packs is None else tuple(n for n in names if packs.runnable_here(n))

    def _needs_approval(self, name: str) -> bool:
        packs = getattr(self, "packs", None)
        return packs is not None and packs.needs_approval(name)

    def _verify(self, task: Task) -> tuple[bool, str]:
        """The verify step, run by the lead: the skill's own ``verify(params, result)``
        when it has one, else the result must be present."""
        try:
            skill = self.registry.get(task.skill)
        except SkillError:
            return (task.result is not None, "no verify step known here; result present")
        verify = getattr(skill, "verify", None)
        if verify is None:
            ok = task.result is not None
            return ok, "result present" if ok else "the skill returned no result"
        try:
            return bool(verify(task.params, task.result)), f"{task.skill}.verify"
        except Exception as exc:
            return False, f"verify raised {type(exc).__name__}: {exc}"

    # ---- incoming ----------------------------------------------------------------------

    def _on_frame(
        self, data: bytes, via: str, auth: str | None, rid: bytes | None, topic: bytes | None
    ) -> None:
        counters = self.transport.counters
        try:
            env = codec.decode(data, self.cfg.transport.max_frame)
        except DecodeError as exc:
            counters.reject(exc.reason)
            _log.debug("frame_rejected", via=via, reason=exc.reason, error=str(exc))
            return
        sender = env.sender
        if auth is None or sender != auth:
            # A member may only speak for itself: the sender id must be the one the CURVE
            # handshake authenticated.
            counters.reject("spoofed_sender")
            _log.warning("frame_rejected", via=via, reason="spoofed_sender", claimed=sender)
            return
        if topic is not None and topic != codec.topic_for(env.msg_type):
            counters.reject("topic_mismatch")
            return
        if rid is not None:
            self._routing[sender] = rid
        self._last_seen_wall[sender] = self.clock.wall()
        payload = env.payload
        if isinstance(payload, Hello):
            if not self.admission.check_hello(payload.info, sender):
                return
        elif env.msg_type in (MsgType.INTRO, MsgType.INTRO_ACK):
            counters.reject("wrong_socket")
            return
        if isinstance(payload, Ack) and env.correlation_id in self._pings:
            fut = self._pings.pop(env.correlation_id)
            if not fut.done():
                fut.set_result(clock.precise())
        self.apply(self.core.receive(sender, payload, self.now(), env.msg_id))
        if isinstance(payload, SkillPayloads):
            self.packs.receive(sender, payload, env.msg_id, env.correlation_id)

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
        if not self.admission.check_intro(payload.info, env.sender, user):
            return None
        self._last_seen_wall[env.sender] = self.clock.wall()
        self.apply(self.core.receive(env.sender, Hello(payload.info), self.now(), env.msg_id))
        ack = IntroAck(self.core.self_info, tuple(self.core.snapshot()))
        return self._envelope(ack, env.msg_id)

    def _on_mdns(self, info: MemberInfo) -> None:
        if self.admission.check_mdns(info):
            self.apply(self.core.discovered(info, self.now(), "mdns"))

    # ---- time ----------------------------------------------------------------------------

    def _schedule_tick(self, at: float) -> None:
        """Make sure the core is ticked at ``at`` (monotonic) or earlier."""
        if at >= self._next_tick or self._stop.is_set():
            return
        if self._tick_handle is not None:
            self._tick_handle.cancel()
        self._next_tick = at
        delay = max(at - self.now(), 0.0)
        self._tick_handle = asyncio.get_running_loop().call_later(delay, self._on_tick)

    def _on_tick(self) -> None:
        self._tick_handle = None
        self._next_tick = float("inf")
        now = self.now()
        self._ticking = True  # effects of this tick must not reschedule us one by one
        try:
            self.apply(self.core.tick(now))
        finally:
            self._ticking = False
        # At least once a second, even when the core needs nothing.
        self._schedule_tick(min(self.core.next_deadline(), now + 1.0))

    # ---- static seeds ------------------------------------------------------------------------

    async def _seed_loop(self, host: str, port: int) -> None:
        """Introduce ourselves to a static seed; retry until it answers, and again
        whenever we are alone (seed restarted, partition healed)."""
        retry = self.cfg.discovery.seed_retry
        intro_port = port + 2
        first = True
        while True:
            alone = not any(m.state is MemberState.ALIVE for m in self.core.members())
            if first or alone:
                ok = await self._introduce(host, intro_port)
                if ok:
                    first = False
            await asyncio.sleep(retry if first else max(retry, 5.0))

    async def _introduce(self, host: str, intro_port: int) -> bool:
        data = self._envelope(Intro(self.core.self_info))
        seed = f"{host}:{intro_port - 2}"
        try:
            reply = await self.transport.intro(
                host, intro_port, data, self.cfg.transport.intro_timeout
            )
        except Exception as exc:
            _log.warning("seed_failed", seed=seed, error=str(exc))
            return False
        if reply is None:
            _log.info("seed_silent", seed=seed)
            return False
        try:
            env = codec.decode(reply, self.cfg.transport.max_frame)
            if not isinstance(env.payload, IntroAck):
                raise AdmissionError("seed answered with something other than INTRO_ACK")
            self.admission.check_seed(env.payload.info, env.sender)
        except (DecodeError, AdmissionError) as exc:
            self.transport.counters.reject("seed_reply")
            _log.warning("seed_rejected", seed=seed, error=str(exc))
            return False
        ack = env.payload
        # Reach the seed where we reached it, whatever it advertises.
        info = replace(ack.info, addresses=(host, *[a for a in ack.info.addresses if a != host]))
        self.admission.admit(info)
        for rec in ack.members:
            self.admission.admit(rec.info)
        self._last_seen_wall[info.node_id] = self.clock.wall()
        now = self.now()
        self.apply(self.core.discovered(info, now, "seed"))
        self.apply(self.core.receive(info.node_id, IntroAck(info, ack.members), now))
        return True

    # ---- the member view on disk ---------------------------------------------------------

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
        for rec in self.core.snapshot():
            if rec.info.node_id != self.identity.node_id:
                self._dirty[rec.info.node_id] = rec
        self._flush_dirty()

    # ---- requests --------------------------------------------------------------------------

    def resolve_peer(self, ref: str) -> MemberInfo:
        """A peer by name, full id or unique id prefix (RequestError otherwise)."""
        views = self.core.members()
        exact = [v.info for v in views if ref in (v.info.node_id, v.info.name)]
        found = exact or [v.info for v in views if v.info.node_id.startswith(ref.lower())]
        if len(found) == 1:
            return found[0]
        known = ", ".join(sorted(v.info.name for v in views)) or "none"
        if not found:
            raise RequestError(f"unknown peer {ref!r}; known peers: {known}", "unknown_peer")
        raise RequestError(f"{ref!r} matches {len(found)} peers; give more of the id", "ambiguous")

    def resolve_peer_or_self(self, ref: str) -> str:
        me = self.core.self_info
        if ref in (me.node_id, me.name) or (len(ref) >= 4 and me.node_id.startswith(ref)):
            return me.node_id
        return self.resolve_peer(ref).node_id

    def _lead_request_ref(self, ref: str) -> dict[str, Any]:
        return self.lead_request(self.resolve_peer_or_self(ref) if ref else "")

    def lead_request(self, target: str) -> dict[str, Any]:
        """Transfer the lead to ``target`` ('' = step down): done here when we lead,
        else forwarded to the lead. The caller confirms through status."""
        lead = self.core.election.lead
        if target and target != self.identity.node_id:
            view = self.core.get(target)
            if view is None or view.info.priority == 0:
                raise RequestError(
                    f"{self.core.name_of(target)} cannot lead (priority 0 or not a live member)",
                    "not_eligible",
                )
        try:
            self.apply(self.core.request_transfer(target, self.now()))
        except LocalProtocolError as exc:
            raise RequestError(str(exc), "no_lead") from None
        return {
            "lead": lead,
            "forwarded": lead != self.identity.node_id,
            "term": self.core.election.term,
        }

    async def peer_ping(self, node_id: str, timeout: float = 2.0) -> float:
        """Round trip of a PING to a peer through the full stack (codec, CURVE), in seconds."""
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
        start = clock.precise()
        try:
            self.transport.send(node_id, data, self._routing.get(node_id))
            end = await fut
        except TimeoutError:
            name = self.core.name_of(node_id)
            raise RequestError(f"{name} did not answer within {timeout} s", "timeout") from None
        finally:
            timer.cancel()
            self._pings.pop(msg_id, None)
        return end - start

    # ---- figures ------------------------------------------------------------------------------

    def clear_quarantine(self) -> int:
        """An operator dealt with the quarantined records: delete them (audited)."""
        n = self.store.quarantine_clear()
        self.events.append("STATE_QUARANTINE_CLEARED", {"count": n}, audit=True)
        return n

    def healthy(self) -> bool:
        """What ``/healthz`` answers: this node sees a lead (as ``meshctl health``)."""
        return self.core.status(self.now()).lead is not None

    def metrics(self) -> dict[str, Any]:
        return collect(
            self.core,
            self.transport.counters,
            self.runner.stats(),
            done_here=self.completed_here,
            failed_here=self.failed_here,
            started_wall=self.started_wall,
            now=self.now(),
            now_wall=self.clock.wall(),
            loop=self.lag.figures(),
        )

    def metrics_text(self) -> str:
        """The ``/metrics`` page (Prometheus text format)."""
        return prometheus_text(self.metrics())

    def _task_status(self) -> dict[str, Any]:
        machine = self.delegation.machine
        out = self.delegation.status()
        out["here"] = {
            "running": len(machine.running_here()),
            "max_concurrent": machine.max_concurrent,
            "completed": self.completed_here,
            "failed": self.failed_here,
            "unacked_submits": machine.pending_submits(),
            "unacked_reports": machine.pending_reports(),
            "skills": list(self.registry.names()),
            "store_syncs": self.store.syncs,
            "skill_stats": {k: v.to_dict() for k, v in self.runner.stats().items()},
        }
        return out

    def status(self) -> dict[str, Any]:
        """What ``meshctl status`` shows (schema: README, "meshctl status --json")."""
        now_wall = self.clock.wall()
        now = self.now()
        me = self.core.self_info
        peers = []
        counts = {s.value: 0 for s in MemberState}
        for view in self.core.members():
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
        task_status = self._task_status()
        per_node = task_status["nodes"]
        for peer in peers:
            held = per_node.get(peer["id"])
            peer["task"] = held["current"] if held else None
            peer["tasks"] = held["tasks"] if held else 0
        mine = per_node.get(me.node_id)
        c = self.transport.counters
        st = self.core.status(now)
        lead: dict[str, Any] | None = None
        lead_reason: str | None = None
        if st.lead is not None:
            since = None if st.since is None else now_wall - (now - st.since)
            lead = {
                "id": st.lead,
                "name": self.core.name_of(st.lead),
                "term": st.term,
                "since": since,
            }
        else:
            lead_reason = f"no lead: {st.reason}" if st.reason else "no lead"
        discovery = self.discovery
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
            "term_known": self.core.election.term_known,
            "voters": self._voters_status(),
            "role": st.role.value.lower(),
            "quarantine": self.store.quarantine_list(),
            "peers": peers,
            "tasks": task_status,
            "metrics": self.metrics(),
            "counts": {**counts, "total": len(peers) + 1},
            "counters": {
                "frames_in": c.frames_in,
                "frames_out": c.frames_out,
                "dropped_out": c.dropped_out,
                "zap_admitted": c.zap_admitted,
                "zap_refused": c.zap_refused,
                "handshakes_failed": c.handshakes_failed,
                "rejected": dict(c.rejected),
                "mdns_foreign_records": discovery.foreign_records if discovery else 0,
                "mdns_bad_records": discovery.bad_records if discovery else 0,
            },
        }


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
