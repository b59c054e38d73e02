"""A discrete-event network that drives many sans-I/O nodes on one fake clock.

No sockets, no threads, no sleeps: a single event queue ordered by simulated time. Nodes
are any objects with ``self_id``, ``receive``, ``tick`` and ``next_deadline`` (see
:class:`SimNode`) that return effects (:mod:`meshd.effects`): a bare
:class:`~meshd.membership.Membership`, a :class:`~meshd.core.Core`, or a whole simulated
node around a Core. Used by the unit tests and by the scale simulations (hundreds of
nodes in one process). The network carries out the message and link effects and models
the real transport's semantics:

* ``Connect(info)`` opens our links to that peer: our DEALER (so we can ``Send`` to it)
  and our SUB (so we receive what it ``Publish``es). ``Disconnect`` closes both.
* ``Send(to, payload)`` is delivered to ``to`` after the link latency, if the sender has a
  link to it (``require_link``; a real DEALER cannot send without one).
* ``Publish(payload)`` reaches every node currently subscribed to the publisher.
* Anything else (``MemberChanged``, ``Persist``...) is appended to :attr:`FakeNetwork.log`
  and given to the watchers.

Faults: per-link latency, random loss (seeded), partitions and one-way blocks, a custom
drop rule, crash (the node stops, no LEAVE), restart (a new process for the same
identity with incarnation + 1, built by the factory the node was added with, optionally
restoring what the old one knew; :meth:`FakeNetwork.replace` for any other kind of node),
and an mDNS model: :meth:`FakeNetwork.announce` calls ``discovered(info, now, "mdns")`` on
live nodes, also for crashed nodes whose records linger.

Each delivery is checked (partition, drop rule, loss, target up) at delivery time; the
link check is done at send time. Ticks happen exactly at each node's ``next_deadline()``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import heapq
import itertools
import math
import random
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

from meshd.clock import FakeClock
from meshd.config import ElectionConfig, MembershipConfig, TaskConfig
from meshd.core import AgentSetup, Core
from meshd.effects import (
    CancelSkill,
    Connect,
    Disconnect,
    Effect,
    ElectionEvent,
    Persist,
    Publish,
    RunSkill,
    SaveOutbox,
    Send,
    StoreCopies,
)
from meshd.election.cert import Signer
from meshd.identity import Identity
from meshd.membership import Membership
from meshd.tasks.machine import TaskMachine
from meshd.tasks.model import new_task
from meshd.wire.messages import TaskOpKind, TaskReport
from meshd.wire.records import MemberInfo, MemberRecord, Task, TaskCopy, is_terminal

__all__ = [
    "Discoverer",
    "Disk",
    "Factory",
    "FakeNetwork",
    "Host",
    "Leaver",
    "Restartable",
    "SimHost",
    "SimMesh",
    "SimNode",
    "SimSkills",
    "fake_info",
]


class SimNode(Protocol):
    """What the fake network can drive: a sans-I/O machine returning effects."""

    @property
    def self_id(self) -> str: ...

    def receive(
        self, sender: str, payload: Any, now: float, msg_id: bytes = b""
    ) -> Sequence[object]: ...

    def tick(self, now: float) -> Sequence[object]: ...

    def next_deadline(self) -> float: ...


@runtime_checkable
class Discoverer(Protocol):
    """A node that takes discovery announcements (for :meth:`FakeNetwork.announce`)."""

    def discovered(self, info: MemberInfo, now: float, source: str) -> Sequence[object]: ...


@runtime_checkable
class Restartable(SimNode, Protocol):
    """A node :meth:`FakeNetwork.restart` can replace: it tells its own info, gives a
    snapshot of its member view, and restores one."""

    @property
    def self_info(self) -> MemberInfo: ...

    def snapshot(self) -> list[MemberRecord]: ...

    def restore(self, records: Iterable[MemberRecord], now: float) -> Sequence[object]: ...


N = TypeVar("N", bound=Restartable)


@runtime_checkable
class Leaver(Protocol):
    """A node that can exit gracefully (for :meth:`FakeNetwork.leave`)."""

    def leave(self, now: float) -> Sequence[object]: ...


Watcher = Callable[[float, str, object], None]
#: Builds a node process for ``info`` started at ``now`` (see :meth:`FakeNetwork.restart`).
Factory = Callable[[MemberInfo, float, random.Random], "Restartable"]
DropRule = Callable[[str, str, object], bool]


#: Signers of the keys :func:`fake_info` handed out (public key -> sign).
_SIM_SIGNERS: dict[bytes, Signer] = {}


@functools.lru_cache(maxsize=4096)
def sim_identity(name: str) -> Identity:
    """The deterministic node key of simulated node ``name`` (seed: BLAKE2b of the name):
    :func:`fake_info` carries its public key, and :meth:`FakeNetwork.add_host` signs the
    node's votes with it, so simulated elections check real Ed25519 signatures."""
    return Identity.from_seed(hashlib.blake2b(b"ed" + name.encode(), digest_size=32).digest())


def fake_info(
    name: str, *, incarnation: int = 0, role: str = "worker", port: int = 7790
) -> MemberInfo:
    """A deterministic, well-formed MemberInfo for tests (id = BLAKE2b-128 of the name;
    Ed25519 key: :func:`sim_identity`)."""
    node_id = hashlib.blake2b(name.encode(), digest_size=16).hexdigest()
    ident = sim_identity(name)
    _SIM_SIGNERS[ident.ed25519_pk] = ident.sign
    return ident.sign_info(
        MemberInfo(
            node_id=node_id,
            name=name,
            role=role,
            priority=0,
            ed25519_pk=ident.ed25519_pk,
            curve_pk=hashlib.blake2b(b"cv" + name.encode(), digest_size=32).digest(),
            proof=hashlib.blake2b(b"pf" + name.encode(), digest_size=32).digest(),
            addresses=("10.0.0.1",),
            router_port=port,
            pub_port=port + 1,
            intro_port=port + 2,
            incarnation=incarnation,
        )
    )


@dataclass(eq=False)
class Host:
    """One node on the fake network and what the network knows about it."""

    node_id: str
    node: SimNode
    #: The info announced over mDNS (kept after a crash: the record lingers).
    info: MemberInfo | None = None
    up: bool = True
    #: Peers we hold a link to (processed Connect, no Disconnect since).
    links: set[str] = field(default_factory=set)
    #: Bumped on restart so timers of the previous process are dropped.
    gen: int = 0
    tick_at: float = math.inf
    #: How to start a new process for this identity on :meth:`FakeNetwork.restart`:
    #: ``factory(info, now, rng)`` (None: the node cannot be restarted that way).
    factory: Factory | None = None
    #: Stopped (SIGSTOP): deliveries wait in :attr:`held`, no timer fires, until resumed.
    paused: bool = False
    held: list[tuple[str, object, bytes]] = field(default_factory=list)


_DELIVER = 0
_TICK = 1


def _accept_all(info: MemberInfo) -> bool:
    return True


@dataclass
class Disk:
    """What survives a crash of a simulated node: the election's durable state, its task
    copies and its outbox (what the daemon keeps in LMDB)."""

    persist: Persist = field(default_factory=lambda: Persist(0, None))
    copies: dict[str, TaskCopy] = field(default_factory=dict)
    submits: set[str] = field(default_factory=set)
    reports: dict[str, TaskReport] = field(default_factory=dict)

    def write(self, eff: object) -> bool:
        """Carry out ``eff`` if it is a store effect (True), else do nothing (False)."""
        if isinstance(eff, Persist):
            self.persist = eff
        elif isinstance(eff, StoreCopies):
            for copy in eff.copies:
                self.copies[copy.task.task_id] = copy
        elif isinstance(eff, SaveOutbox):
            kind, _, task_id = eff.key.partition(":")
            if kind == "submit":
                (self.submits.add if eff.pending else self.submits.discard)(task_id)
            elif eff.pending and eff.report is not None:
                self.reports[task_id] = eff.report
            else:
                self.reports.pop(task_id, None)
        else:
            return False
        return True


@dataclass
class _Run:
    task: Task
    elapsed: float
    next_at: float


@dataclass
class SimSkills:
    """Skills in simulated time, shared by every node of a simulation, with books.

    ``echo`` and ``sleep`` both run ``params["seconds"]`` (0 by default) in steps of
    :attr:`step`, each step reporting progress and a checkpoint (the seconds done, as
    text), and return ``{"message": params.get("message"), "slept": seconds}``. A run
    resumes from its task's checkpoint. ``params["handoff_at"]``: the first attempt hands
    its task to ``params.get("to", "")`` once that many seconds are done.
    """

    names: tuple[str, ...] = ("echo", "sleep")
    step: float = 0.1
    #: Runs started, per task id.
    executions: Counter[str] = field(default_factory=Counter)
    #: Where the last run of each task started from (seconds already done).
    resumed_from: dict[str, float] = field(default_factory=dict)

    def start(self, task: Task, now: float) -> _Run:
        self.executions[task.task_id] += 1
        start = float(task.checkpoint.decode()) if task.checkpoint else 0.0
        self.resumed_from[task.task_id] = start
        return _Run(task, start, now)

    def advance(self, core: Core, run: _Run, now: float) -> tuple[bool, list[Effect]]:
        """One step of ``run``: (finished?, the core's effects)."""
        task = run.task
        total = float(task.params.get("seconds", 0.0))
        if run.elapsed >= total:
            result = {"message": task.params.get("message"), "slept": total}
            return True, core.skill_done(task.task_id, task.attempt, True, result, "", "", now)
        handoff_at = task.params.get("handoff_at")
        if handoff_at is not None and run.elapsed >= float(handoff_at) and task.attempt == 1:
            to = str(task.params.get("to", ""))
            ckpt = repr(run.elapsed).encode()
            return True, core.skill_handoff(task.task_id, task.attempt, to, ckpt, now)
        run.elapsed = min(total, run.elapsed + self.step)
        run.next_at = now + self.step
        pct = 100.0 * run.elapsed / total
        ckpt = repr(run.elapsed).encode()
        return False, core.skill_progress(task.task_id, task.attempt, pct, "", ckpt, now)


class SimHost:
    """A whole node in simulated time: a :class:`~meshd.core.Core`, its :class:`Disk`
    and its skills (:class:`SimSkills`) — the daemon's wiring, minus sockets.

    It carries out the store and skill effects itself (what the daemon's commit and
    runner do) and returns every other effect to the network (the election's ``Persist``
    too, after writing it, so that invariant taps see it). At start it loads its task
    state from the disk, as the daemon does from LMDB.
    """

    def __init__(self, core: Core, disk: Disk, skills: SimSkills | None, now: float) -> None:
        self.core = core
        self.disk = disk
        self.skills = skills
        self.runs: dict[str, _Run] = {}
        self._pending: list[object] = []
        if core.tasks is not None:
            loaded = core.load_tasks(disk.copies.values(), disk.submits, disk.reports.values(), now)
            self._pending = self.local(loaded, now)

    @property
    def self_id(self) -> str:
        return self.core.self_id

    @property
    def self_info(self) -> MemberInfo:
        return self.core.self_info

    def snapshot(self) -> list[MemberRecord]:
        return self.core.snapshot()

    def restore(self, records: Iterable[MemberRecord], now: float) -> list[object]:
        return self.local(self.core.restore(records, now), now)

    def discovered(self, info: MemberInfo, now: float, source: str) -> list[object]:
        return self.local(self.core.discovered(info, now, source), now)

    def leave(self, now: float) -> list[object]:
        return self.local(self.core.leave(now), now)

    def receive(self, sender: str, payload: Any, now: float, msg_id: bytes = b"") -> list[object]:
        return self.local(self.core.receive(sender, payload, now, msg_id), now)

    def tick(self, now: float) -> list[object]:
        out = self.local(self.core.tick(now), now)
        if self.skills is not None:
            for task_id, run in list(self.runs.items()):
                if run.next_at <= now and self.runs.get(task_id) is run:
                    finished, effects = self.skills.advance(self.core, run, now)
                    if finished:
                        del self.runs[task_id]
                    out += self.local(effects, now)
        if self._pending:
            out, self._pending = self._pending + out, []
        return out

    def next_deadline(self) -> float:
        times = [self.core.next_deadline(), *(r.next_at for r in self.runs.values())]
        if self._pending:
            times.append(0.0)
        return min(times)

    def submit(self, task: Task, now: float) -> list[object]:
        """A new task from a local client (carry the result out with ``net.apply``)."""
        return self.local(self.core.submit(task, now), now)

    def operator(self, op: TaskOpKind, task_id: str, now: float) -> list[object]:
        """An operator command given on this node (``net.apply`` the result)."""
        return self.local(self.core.operator(op, task_id, "operator", now), now)

    def local(self, effects: Iterable[Effect], now: float) -> list[object]:
        """Carry out the store and skill effects of a step of this node's core (its disk,
        its runs); return the others, for the network (``net.apply``)."""
        out: list[object] = []
        for eff in effects:
            if isinstance(eff, Persist):
                self.disk.write(eff)
                out.append(eff)
            elif self.disk.write(eff):
                continue
            elif isinstance(eff, RunSkill):
                if self.skills is not None:
                    self.runs[eff.task.task_id] = self.skills.start(eff.task, now)
            elif isinstance(eff, CancelSkill):
                self.runs.pop(eff.task_id, None)
            else:
                out.append(eff)
        return out


class FakeNetwork:
    """Many sans-I/O nodes, one clock, one event queue. Deterministic for a given seed.

    ``latency``: default one-way delay in seconds (override per link with
    :meth:`set_latency`); ``jitter``: extra uniform random delay per delivery (breaks
    per-link FIFO, like PUB vs DEALER do); ``loss``: probability that a delivery is
    dropped; ``require_link``: drop (and count) a Send without a prior Connect.
    """

    def __init__(
        self,
        clock: FakeClock | None = None,
        *,
        seed: int = 0,
        latency: float = 0.001,
        jitter: float = 0.0,
        loss: float = 0.0,
        require_link: bool = True,
    ) -> None:
        self.clock = clock or FakeClock(start=0.0)
        self.rng = random.Random(seed)
        self.latency = latency
        self.jitter = jitter
        self.loss = loss
        self.require_link = require_link
        #: Custom drop rule ``(sender, target, payload) -> drop?``, checked at delivery.
        self.drop: DropRule | None = None
        #: Counters: sent, delivered, dropped_{loss,partition,rule,down,unlinked,unknown},
        #: and ``sent.<PayloadType>``.
        self.stats: Counter[str] = Counter()
        #: Non-network effects in order: ``(time, node_id, effect)``.
        self.log: list[tuple[float, str, object]] = []
        self.watchers: list[Watcher] = []
        #: Called with ``(time, node_id, effect)`` for EVERY effect a node returns (network
        #: ones included), in order, before it is carried out: for invariant checks.
        self.taps: list[Watcher] = []
        self.hosts: dict[str, Host] = {}
        self._subscribers: dict[str, dict[str, None]] = {}
        self._blocked: set[tuple[str, str]] = set()
        self._link_latency: dict[tuple[str, str], float] = {}
        self._queue: list[tuple[float, int, int, Any]] = []
        self._seq = itertools.count()
        self._msg_ids = itertools.count(1)

    # ---- nodes -------------------------------------------------------------------------

    @property
    def now(self) -> float:
        """Current simulated time."""
        return self.clock.monotonic()

    def add(self, node: SimNode, info: MemberInfo | None = None) -> Host:
        """Add a running node."""
        node_id = node.self_id
        if node_id in self.hosts:
            raise ValueError(f"node {node_id} already on the network")
        host = Host(node_id, node, info)
        self.hosts[node_id] = host
        self._subscribers.setdefault(node_id, {})
        self._reschedule(host)
        return host

    def add_member(
        self,
        info: MemberInfo,
        config: MembershipConfig | None = None,
        *,
        verify: Callable[[MemberInfo], bool] | None = None,
    ) -> Membership:
        """Start a :class:`Membership` for ``info`` now (its rng seeded from ours)."""
        cfg = config or MembershipConfig()
        check = verify or _accept_all

        def factory(info: MemberInfo, now: float, rng: random.Random) -> Membership:
            return Membership(info, cfg, now, rng, check)

        return self.add_process(info, factory)

    def add_process(
        self, info: MemberInfo, factory: Callable[[MemberInfo, float, random.Random], N]
    ) -> N:
        """Start ``factory(info, now, rng)`` now (its rng seeded from ours); the same
        factory builds the new process on :meth:`restart`."""
        node = factory(info, self.now, random.Random(self.rng.getrandbits(64)))
        host = self.add(node, info)
        host.factory = factory
        return node

    def add_host(
        self,
        info: MemberInfo,
        *,
        membership: MembershipConfig | None = None,
        election: ElectionConfig | None = None,
        agent: AgentSetup | None = None,
        skills: SimSkills | None = None,
        disk: Disk | None = None,
        verify: Callable[[MemberInfo], bool] | None = None,
        sign: Signer | None = None,
    ) -> SimHost:
        """Start a whole simulated node (:class:`SimHost`) for ``info`` now: a Core (with
        a task machine when ``agent`` is given), its :class:`Disk` and simulated skills.
        :meth:`restart` brings it back from the same disk, as the daemon from LMDB."""
        mcfg = membership or MembershipConfig()
        ecfg = election or ElectionConfig()
        check = verify or _accept_all
        store = disk if disk is not None else Disk()
        signer = sign if sign is not None else _SIM_SIGNERS.get(info.ed25519_pk)

        def factory(info: MemberInfo, now: float, rng: random.Random) -> SimHost:
            p = store.persist
            core = Core(
                info,
                mcfg,
                ecfg,
                now,
                rng,
                check,
                p.term,
                p.voted_for,
                agent=agent,
                sign=signer,
                voters=p.voters,
            )
            return SimHost(core, store, skills, now)

        return self.add_process(info, factory)

    def host(self, node_id: str) -> Host:
        return self.hosts[node_id]

    def node(self, node_id: str) -> SimNode:
        return self.hosts[node_id].node

    def membership(self, node_id: str) -> Membership:
        """The node as a Membership (TypeError if it is something else)."""
        node = self.hosts[node_id].node
        if not isinstance(node, Membership):
            raise TypeError(f"node {node_id} is not a Membership")
        return node

    def ids(self, *, up_only: bool = False) -> list[str]:
        """Node ids in insertion order (optionally only running ones)."""
        return [h.node_id for h in self.hosts.values() if h.up or not up_only]

    def links(self, node_id: str) -> frozenset[str]:
        """Peers ``node_id`` currently holds a link to."""
        return frozenset(self.hosts[node_id].links)

    # ---- driving a node from outside ---------------------------------------------------

    def apply(self, node_id: str, effects: Iterable[object]) -> None:
        """Carry out effects a node returned from a call made by the test at ``now``."""
        self._apply(self.hosts[node_id], effects)

    def call(self, node_id: str, fn: Callable[[SimNode, float], Iterable[object]]) -> None:
        """Run ``fn(node, now)`` and carry out the effects it returns."""
        host = self.hosts[node_id]
        self._apply(host, fn(host.node, self.now))

    def announce(
        self, node_id: str, to: Iterable[str] | None = None, *, source: str = "mdns"
    ) -> None:
        """mDNS: every other running node (or those in ``to``) discovers ``node_id``.

        Works for a crashed node too: its last record lingers in mDNS caches.
        """
        host = self.hosts[node_id]
        info = host.info
        current = getattr(host.node, "self_info", None)
        if host.up and isinstance(current, MemberInfo):
            info = current
        if info is None:
            raise ValueError(f"node {node_id} has no info to announce")
        self.announce_info(info, to, source=source)

    def announce_info(
        self, info: MemberInfo, to: Iterable[str] | None = None, *, source: str = "mdns"
    ) -> None:
        """Announce any record (e.g. a ghost that never ran) to running nodes."""
        targets = list(to) if to is not None else self.ids(up_only=True)
        for target in targets:
            host = self.hosts[target]
            if target == info.node_id or not host.up:
                continue
            node = host.node
            if not isinstance(node, Discoverer):
                raise TypeError(f"node {target} takes no discovery announcements")
            self._apply(host, node.discovered(info, self.now, source))

    def seed(self, node_id: str, seed_id: str) -> None:
        """``node_id`` learns ``seed_id`` as a static seed (``discovered(..., "seed")``)."""
        self.announce(seed_id, [node_id], source="seed")

    def crash(self, node_id: str) -> None:
        """The node stops dead: no LEAVE, nothing sent or received any more."""
        self.hosts[node_id].up = False

    def pause(self, node_id: str) -> None:
        """The process is stopped (SIGSTOP): it neither runs its timers nor reads what
        arrives, which waits (in its socket buffers) until :meth:`resume`."""
        self.hosts[node_id].paused = True

    def resume(self, node_id: str) -> None:
        """The process runs again (SIGCONT): it reads what arrived meanwhile, in order,
        then its timers fire (late)."""
        host = self.hosts[node_id]
        host.paused = False
        held, host.held = host.held, []
        for sender, payload, msg_id in held:
            if host.up:
                self.stats["delivered"] += 1
                self._apply(host, host.node.receive(sender, payload, self.now, msg_id))
        host.tick_at = math.inf
        self._reschedule(host)

    def leave(self, node_id: str) -> None:
        """Graceful exit (a node with ``leave(now)``): its LEAVEs go out, then it stops."""
        host = self.hosts[node_id]
        node = host.node
        if not isinstance(node, Leaver):
            raise TypeError(f"node {node_id} cannot leave")
        self._apply(host, node.leave(self.now))
        host.up = False

    def replace(self, node_id: str, node: SimNode, info: MemberInfo | None = None) -> Host:
        """A new process ``node`` for the same identity, started now (any node kind).

        Like :meth:`restart`: the new process has no links yet (others keep theirs to it)
        and timers of the old one are dropped. Carry out its start effects with
        :meth:`apply`.
        """
        host = self.hosts[node_id]
        if node.self_id != node_id:
            raise ValueError(f"node {node.self_id} cannot replace {node_id}")
        for peer in host.links:
            self._subscribers.get(peer, {}).pop(node_id, None)
        host.links.clear()
        host.node = node
        if info is not None:
            host.info = info
        host.up = True
        host.gen += 1
        host.tick_at = math.inf
        self._reschedule(host)
        return host

    def restart(self, node_id: str, *, restore: bool = True, **changes: Any) -> Restartable:
        """A new process for the same identity with incarnation + 1 (started now), built
        by the factory the node was added with (:meth:`add_member`, :meth:`add_host`,
        :meth:`add_process`).

        ``restore``: it first restores the old process's snapshot, as the daemon does
        from its store. ``changes``: other fields of its info that change (a new
        priority...). The new process has no links yet; others keep theirs to it.
        """
        host = self.hosts[node_id]
        old = host.node
        if host.factory is None or not isinstance(old, Restartable):
            raise TypeError(f"node {node_id} was not added with a factory: use replace()")
        records = old.snapshot() if restore else []
        info = dataclasses.replace(
            old.self_info,
            incarnation=old.self_info.incarnation + 1,
            started_at=self.now,
            **changes,
        )
        new = host.factory(info, self.now, random.Random(self.rng.getrandbits(64)))
        self.replace(node_id, new, info)
        self._apply(host, new.restore(records, self.now) if restore else [])
        return new

    # ---- faults ------------------------------------------------------------------------

    def partition(self, *groups: Iterable[str]) -> None:
        """Nodes in different groups cannot talk (both ways) until :meth:`heal`."""
        sets = [list(g) for g in groups]
        for i, a_group in enumerate(sets):
            for b_group in sets[i + 1 :]:
                for a in a_group:
                    for b in b_group:
                        self._blocked.add((a, b))
                        self._blocked.add((b, a))

    def block(self, a: str, b: str, *, both: bool = True) -> None:
        """Cut the link a -> b (and b -> a unless ``both`` is False)."""
        self._blocked.add((a, b))
        if both:
            self._blocked.add((b, a))

    def unblock(self, a: str, b: str, *, both: bool = True) -> None:
        self._blocked.discard((a, b))
        if both:
            self._blocked.discard((b, a))

    def heal(self) -> None:
        """Remove every partition and block (not the drop rule, not the loss rate)."""
        self._blocked.clear()

    def set_latency(self, a: str, b: str, seconds: float, *, both: bool = True) -> None:
        """One-way delay a -> b (and b -> a unless ``both`` is False)."""
        self._link_latency[(a, b)] = seconds
        if both:
            self._link_latency[(b, a)] = seconds

    # ---- time --------------------------------------------------------------------------

    def advance(self, seconds: float) -> None:
        """Process every event up to ``now + seconds``; the clock ends there."""
        self._run_to(self.now + seconds)

    def run_until(
        self, predicate: Callable[[], bool], max_time: float, *, poll: float = 0.01
    ) -> float | None:
        """Run until ``predicate()`` holds (checked every ``poll`` simulated seconds).

        Returns the simulated time it took (a multiple of ``poll``, 0.0 if it already
        held), or None if it did not hold within ``max_time`` (the clock is then at
        start + max_time).
        """
        start = self.now
        end = start + max_time
        if predicate():
            return 0.0
        k = 0
        while True:
            k += 1
            check = min(start + k * poll, end)  # no accumulated rounding
            self._run_to(check)
            if predicate():
                return self.now - start
            if check >= end:
                return None

    def pending(self) -> int:
        """Events in the queue (deliveries in flight and scheduled ticks)."""
        return len(self._queue)

    # ---- internals ---------------------------------------------------------------------

    def _run_to(self, end: float) -> None:
        queue = self._queue
        spins = 0
        last = -math.inf
        while queue and queue[0][0] <= end:
            t, _, kind, data = heapq.heappop(queue)
            if t > self.clock.monotonic():
                self.clock.set(t)
            if t == last:
                spins += 1
                if spins > 1_000_000:
                    raise RuntimeError(f"no progress at t={t}: a node keeps asking for ticks")
            else:
                spins = 0
                last = t
            if kind == _TICK:
                self._do_tick(t, data)
            else:
                self._deliver(t, data)
        if end > self.clock.monotonic():
            self.clock.set(end)

    def _do_tick(self, t: float, data: tuple[str, int]) -> None:
        node_id, gen = data
        host = self.hosts[node_id]
        if not host.up or host.gen != gen or host.tick_at != t or host.paused:
            return
        host.tick_at = math.inf
        self._apply(host, host.node.tick(t))

    def _deliver(self, t: float, data: tuple[str, list[str], object, bytes]) -> None:
        sender, targets, payload, msg_id = data
        stats = self.stats
        for target in targets:
            host = self.hosts.get(target)
            if host is None:
                stats["dropped_unknown"] += 1
                continue
            if not host.up:
                stats["dropped_down"] += 1
                continue
            if (sender, target) in self._blocked:
                stats["dropped_partition"] += 1
                continue
            if self.drop is not None and self.drop(sender, target, payload):
                stats["dropped_rule"] += 1
                continue
            if self.loss and self.rng.random() < self.loss:
                stats["dropped_loss"] += 1
                continue
            if host.paused:
                host.held.append((sender, payload, msg_id))
                continue
            stats["delivered"] += 1
            self._apply(host, host.node.receive(sender, payload, t, msg_id))

    def _apply(self, host: Host, effects: Iterable[object]) -> None:
        node_id = host.node_id
        taps = self.taps
        for eff in effects:
            for tap in taps:
                tap(self.now, node_id, eff)
            if isinstance(eff, Send):
                if self.require_link and eff.to not in host.links:
                    self.stats["dropped_unlinked"] += 1
                    continue
                self._transmit(node_id, [eff.to], eff.payload)
            elif isinstance(eff, Publish):
                subs = self._subscribers.get(node_id)
                if subs:
                    self._transmit(node_id, list(subs), eff.payload)
            elif isinstance(eff, Connect):
                peer = eff.info.node_id
                host.links.add(peer)
                self._subscribers.setdefault(peer, {})[node_id] = None
            elif isinstance(eff, Disconnect):
                host.links.discard(eff.node_id)
                self._subscribers.get(eff.node_id, {}).pop(node_id, None)
            else:
                now = self.now
                self.log.append((now, node_id, eff))
                for watch in self.watchers:
                    watch(now, node_id, eff)
        self._reschedule(host)

    def _transmit(self, sender: str, targets: list[str], payload: object) -> None:
        now = self.now
        msg_id = next(self._msg_ids).to_bytes(16, "big")
        self.stats["sent"] += len(targets)
        self.stats["sent." + type(payload).__name__] += len(targets)
        if not self._link_latency and not self.jitter:
            self._push(now + self.latency, _DELIVER, (sender, targets, payload, msg_id))
            return
        by_time: dict[float, list[str]] = {}
        for target in targets:
            delay = self._link_latency.get((sender, target), self.latency)
            if self.jitter:
                delay += self.rng.uniform(0.0, self.jitter)
            by_time.setdefault(now + delay, []).append(target)
        for at, group in by_time.items():
            self._push(at, _DELIVER, (sender, group, payload, msg_id))

    def _reschedule(self, host: Host) -> None:
        if not host.up or host.paused:
            return
        due = max(host.node.next_deadline(), self.now)
        if due < host.tick_at:
            host.tick_at = due
            self._push(due, _TICK, (host.node_id, host.gen))

    def _push(self, at: float, kind: int, data: object) -> None:
        heapq.heappush(self._queue, (at, next(self._seq), kind, data))


class SimMesh:
    """A mesh of :class:`SimHost` nodes on one :class:`FakeNetwork`, sharing one
    :class:`SimSkills` (whose books count every skill run): the harness of the delegation
    and fault simulations. Node ``i`` is named ``n<i>`` and has ``priorities[i]``; every
    node is an agent (``lead_runs`` False: the first node runs nothing, so a lead's crash
    never loses a run of its own).

    It watches every node's effects: :attr:`winners` maps each term to the node(s) that won
    it (an invariant check: never two), and the queries below answer what a scenario
    needs (the lead all running nodes agree on, a task's state on a node, whether every
    node holds the same final copy of a set of tasks).
    """

    def __init__(
        self,
        priorities: Sequence[int],
        *,
        seed: int = 0,
        lead_runs: bool = False,
        config: TaskConfig | None = None,
        approval: frozenset[str] = frozenset(),
        loss: float = 0.0,
        jitter: float = 0.0,
        stagger: float = 0.02,
    ) -> None:
        self.net = FakeNetwork(seed=seed, loss=loss, jitter=jitter)
        self.skills = SimSkills()
        self.config = config or TaskConfig(default_timeout=30.0)
        self.ids: list[str] = []
        self.rng = random.Random(seed)
        self.winners: dict[int, set[str]] = {}
        self.net.taps.append(self._tap)
        skills = self.skills
        for i, prio in enumerate(priorities):
            info = dataclasses.replace(fake_info(f"n{i}"), priority=prio)
            agent = AgentSetup(
                config=self.config,
                skills=lambda: skills.names,
                role_defaults=lambda role: ((), 2),
                max_concurrent=2 if (lead_runs or i > 0) else 0,
                needs_approval=lambda name: name in approval,
            )
            self.net.add_host(info, agent=agent, skills=self.skills)
            self.net.announce(info.node_id)
            self.ids.append(info.node_id)
            if stagger:
                self.net.advance(stagger)

    def _tap(self, now: float, node: str, eff: object) -> None:
        if isinstance(eff, ElectionEvent) and eff.kind == "LEAD_ELECTED" and eff.reason == "won":
            self.winners.setdefault(eff.term, set()).add(node)

    # ---- nodes ------------------------------------------------------------------------

    def node(self, node_id: str) -> SimHost:
        n = self.net.node(node_id)
        if not isinstance(n, SimHost):
            raise TypeError(f"node {node_id} is not a SimHost")
        return n

    def tasks(self, node_id: str) -> TaskMachine:
        machine = self.node(node_id).core.tasks
        if machine is None:
            raise TypeError(f"node {node_id} runs no task machine")
        return machine

    def up(self) -> list[str]:
        return self.net.ids(up_only=True)

    def restart(self, node_id: str) -> None:
        """A new process from the node's disk; it knows the members it knew (as the daemon
        from LMDB) and announces itself."""
        self.net.restart(node_id)
        self.net.announce(node_id)

    # ---- requests -----------------------------------------------------------------------

    def submit(self, origin: str, skill: str, params: dict[str, Any], **kw: Any) -> str:
        """A new task from a client of ``origin``; returns its id."""
        node = self.node(origin)
        now = self.net.now
        task = new_task(skill, params, origin, node.core.wall(now), config=self.config, **kw)
        self.net.apply(origin, node.submit(task, now))
        return task.task_id

    # ---- queries --------------------------------------------------------------------------

    def lead(self, among: Iterable[str] | None = None) -> str | None:
        """The lead every given running node follows (default: all running), or None."""
        nodes = list(self.up() if among is None else among)
        leads = {self.node(n).core.election.lead for n in nodes}
        terms = {self.node(n).core.election.term for n in nodes}
        if len(leads) != 1 or len(terms) != 1:
            return None
        lead = leads.pop()
        return lead if lead in nodes else None

    def settled_lead(self, among: Iterable[str] | None = None) -> str | None:
        """:meth:`lead`, once that lead holds its lease and has resumed every task."""
        nodes = list(self.up() if among is None else among)
        lead = self.lead(nodes)
        if lead is None or not self.node(lead).core.election.has_lease(self.net.now):
            return None
        return lead if self.tasks(lead).role.value == "lead" else None

    def task(self, node_id: str, task_id: str) -> Task | None:
        return self.tasks(node_id).get(task_id)

    def terminal_everywhere(self, task_ids: Iterable[str], nodes: Iterable[str]) -> bool:
        """Every task is terminal on every given node."""
        ids = list(task_ids)
        for n in nodes:
            machine = self.tasks(n)
            for t in ids:
                task = machine.get(t)
                if task is None or not is_terminal(task):
                    return False
        return True

    def disagreements(self, task_ids: Iterable[str], nodes: Iterable[str]) -> dict[str, Any]:
        """Tasks whose copies differ between the given nodes: id -> {node: (version,
        state)} (empty when every node holds the same copy of every task)."""
        out: dict[str, Any] = {}
        nodes = list(nodes)
        for t in task_ids:
            seen = {}
            for n in nodes:
                machine = self.tasks(n)
                task = machine.get(t)
                seen[n] = (machine.version(t), task.state.value if task else None)
            if len(set(seen.values())) > 1:
                out[t] = seen
        return out
