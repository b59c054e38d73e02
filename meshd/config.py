"""Configuration: one frozen dataclass per concern, every default with its unit and reason.

Presets: ``lan()`` for real networks (the defaults), ``test()`` for fast tests on one
machine. A TOML file (``meshd start --config FILE``) may override any field, section
by section (``[membership]``, ``[election]``, ``[transport]``, ``[discovery]``, ``[store]``,
``[node]``).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from meshd.errors import ConfigError

#: Default base TCP port. ROUTER = base, PUB = base + 1, intro = base + 2.
DEFAULT_PORT = 7790


@dataclass(frozen=True, slots=True)
class MembershipConfig:
    #: s. How often a node publishes a heartbeat. 0.2 s keeps crash detection near 1 s
    #: while costing each node N-1 tiny messages per interval (30 nodes: ~150 msg/s).
    heartbeat_interval: float = 0.2
    #: s. Silence (no message of any kind) after which a peer is suspected and probed.
    #: Three heartbeats: one lost or late heartbeat never triggers a probe.
    suspect_after: float = 0.6
    #: s. Wait for the direct PING's ACK before asking others to probe.
    probe_timeout: float = 0.2
    #: count. Peers asked to probe a suspect indirectly (SWIM's k). 3 survives one bad link.
    indirect_probes: int = 3
    #: s. Wait for indirect ACKs before declaring the suspect dead.
    indirect_timeout: float = 0.35
    #: s. A DEAD verdict gossiped by another node is ignored if we heard the peer
    #: ourselves within this window (protects a busy but alive host from one bad link).
    dead_guard: float = 0.6
    #: heartbeats/s. Most heartbeats a node should have to receive per second. Everyone hears
    #: everyone, so beyond budget * heartbeat_interval peers (50 by default) the heartbeat
    #: period, suspect_after and dead_guard grow in proportion to the mesh size: idle CPU
    #: stays bounded (~0.5 % of a core per 50 heartbeats/s here) at the cost of slower
    #: detection in big meshes (~1.7 s at 100 nodes, ~4.5 s at 300). 0 disables scaling.
    heartbeat_budget: float = 250.0
    #: s. Minimum gap between two SYNC_REQs to the same peer (anti-entropy rate limit).
    sync_interval: float = 1.0
    #: s. Dead and left members are kept (shown in status, used for rejoin) this long.
    forget_after: float = 24 * 3600.0
    #: links. Links open at once to members known only from others' gossip (never heard
    #: from, not found by mDNS or a seed): a member holding the mesh key can gossip any
    #: number of members, and this bounds the sockets and file descriptors they cost. A real
    #: member says HELLO itself (its own link) within a heartbeat, so 32 is plenty while a
    #: mesh forms.
    max_unheard_links: int = 32
    #: s. A member learned only from mDNS/a static seed and never heard from is dropped
    #: from the candidate list after this long (mDNS records of crashed hosts linger ~19 min).
    candidate_timeout: float = 5.0
    #: s. A member this node saw alive and then holds DEAD (not LEFT) is contacted again
    #: this often (CONNECT + HELLO, +-50 % jitter) until forgotten. After a partition both
    #: sides hold the other dead and have dropped the links, so without this they would
    #: never hear each other again. A host that is really gone costs one TCP connect
    #: attempt per interval per observer.
    reconnect_interval: float = 5.0
    #: s. The first of those attempts comes this soon after the verdict (+-50 %), the next
    #: ones at most twice that apart for ``reconnect_fast_for``, then twice as late each
    #: time up to ``reconnect_interval``: a partition that heals within a minute is noticed
    #: within about a second of the heal (a lead agreed by all within 2 s), while a host
    #: that is gone for good soon costs only one attempt per ``reconnect_interval``.
    reconnect_first: float = 0.5
    #: s. See ``reconnect_first``: about one connect attempt a second per dead member and
    #: observer for this long after the verdict.
    reconnect_fast_for: float = 60.0
    #: s. How long such a contact link (a reconnect attempt, or a link opened to tell a peer
    #: we hold dead that it must refute) stays open when the peer does not come back. A live
    #: LAN host answers in milliseconds; 2 s also covers several transport.connect_timeout
    #: (0.25 s) attempts.
    reconnect_window: float = 2.0


@dataclass(frozen=True, slots=True)
class ElectionConfig:
    """Lead election timings (see :mod:`meshd.election.machine`). Checked when the
    machine is built (:class:`~meshd.errors.ConfigError`)."""

    #: s. How often the lead publishes LEAD_HEARTBEAT (its lease renewal). Four per
    #: election timeout: one or two lost heartbeats neither lose the lead nor its lease.
    lead_heartbeat_interval: float = 0.1
    #: s. Silence from the lead after which a follower gives it up and (rank permitting)
    #: campaigns; also how long a voter refuses other candidates after hearing its lead,
    #: which is what makes the lead's lease safe. 0.5 s = five heartbeats: the 1 s median
    #: target for "lead killed -> new lead agreed" leaves room for one retried round.
    election_timeout: float = 0.5
    #: s. Uniform random extra wait added to every election timer, so that nodes of the
    #: same rank rarely start together (etcd/Raft-style randomised timeouts).
    election_jitter: float = 0.1
    #: s. Extra wait per reachable eligible node ranked above this one: the best-ranked
    #: survivor normally campaigns alone, with no split vote and no retry.
    rank_step: float = 0.1
    #: s. The lead holds its lease until election_timeout - lease_margin after the send
    #: time of the last heartbeat a majority acknowledged. Covers clock-rate drift and
    #: scheduling delay between hosts; voters wait the full election_timeout.
    lease_margin: float = 0.1
    #: s. A lead whose lease lapsed (no majority acknowledged a heartbeat in time: a stall
    #: of its own event loop on a loaded host, or a cut) keeps heartbeating this long
    #: without assigning anything new, and leads on with a fresh lease if a majority
    #: acknowledges one (nobody else can have been elected meanwhile: that majority has
    #: not moved to a newer term). Only then does it step down (``lost_quorum``). 0.5 s:
    #: a one-second stall costs no election; a real cut is given up within a second.
    lease_grace: float = 0.5
    #: Times a node whose campaign timer fired defers to a reachable eligible node ranked
    #: above it (re-arming its timer) before it campaigns anyway: the best-ranked node
    #: stands alone, yet a better-ranked node that cannot win (cut off from the others)
    #: does not keep the mesh without a lead.
    max_defer: int = 3
    #: s. A candidate without a majority starts a new round after this (x 0.5..1.5 jitter).
    #: Four LAN round trips of slack at 0.2 s, yet a lost vote costs little.
    candidate_retry: float = 0.2
    #: s. A higher-priority node must be continuously reachable this long before the lead
    #: hands over to it: a flapping host or link does not flap the lead.
    stability_window: float = 3.0
    #: s. After `lead step-down`, this node does not campaign (and others do not wait for
    #: it) for this long, so the operator's intent is not undone by its own priority.
    step_down_hold: float = 10.0
    #: s. After `lead transfer`, automatic priority takeover is suspended this long, so the
    #: operator's choice sticks (5 minutes) unless the chosen lead dies.
    manual_hold: float = 300.0
    #: votes. 0 = a majority of the voters: the voter set the lead decided (see
    #: ``voter_dead_after``), or before there is one every member not LEFT, dead ones
    #: included, plus this node. A positive number: exactly that many votes (e.g. 1 lets
    #: any single node lead alone; unsafe against partitions).
    quorum: int = 0
    #: s. A voter that membership has held DEAD this long is removed from the voter set by
    #: the lead (one change at a time, committed by a majority of the new set), so that
    #: it no longer counts toward the quorum. Members heard by gossip only never become
    #: voters: the lead adds a member once it follows the lead. 10 minutes: a reboot or a
    #: network blip never shrinks the quorum, a host that is gone for good stops counting
    #: long before ``[membership] forget_after`` (24 h) forgets it.
    voter_dead_after: float = 600.0


@dataclass(frozen=True, slots=True)
class TransportConfig:
    #: messages. Send/receive high-water mark per peer link; beyond it a slow peer's
    #: messages are dropped (PUB) or refused (ROUTER_MANDATORY -> EAGAIN), never queued forever.
    hwm: int = 10_000
    #: ms. ZMTP heartbeat interval: notices a silently cut TCP link (see LAB.md).
    zmq_heartbeat_ivl: int = 500
    #: ms. ZMTP heartbeat timeout: a link with no traffic for this long is reset.
    zmq_heartbeat_timeout: int = 1500
    #: ms. TCP connect timeout, so a dead address does not hold a connect attempt for
    #: minutes. A LAN host's kernel answers a SYN in well under a millisecond, busy or not;
    #: a short timeout means a new SYN soon after a partition heals (Linux itself would
    #: retransmit a lost SYN only after 1 s, then 3 s), so the heal is noticed in tenths
    #: of a second.
    connect_timeout: int = 250
    #: ms. First reconnect delay, and the cap of its exponential backoff.
    reconnect_ivl: int = 50
    reconnect_ivl_max: int = 500
    #: ms. Linger on close: pending messages to a dead peer must not hold shutdown.
    linger: int = 0
    #: s. How long the ZAP handler holds a CURVE handshake from a not-yet-known key,
    #: waiting for discovery or gossip to vouch for it, before refusing it.
    admission_wait: float = 5.0
    #: s. Timeout of one INTRO exchange with a static seed.
    intro_timeout: float = 2.0
    #: bytes. Largest frame accepted on a mesh link.
    max_frame: int = 1024 * 1024
    #: ms. Longest a connection may take to finish its handshake (ZMTP greeting, CURVE,
    #: ZAP admission) on any of the node's sockets, listening or connecting; the
    #: connection is closed after that. A LAN peer finishes in milliseconds; libzmq's
    #: default (30 s) let any host that can reach the ports hold a half-done connection,
    #: and its file descriptor, for half a minute with a partial greeting. A handshake
    #: held for admission (``admission_wait``) ends here too: the connecting member's
    #: libzmq reconnects by itself and is held again, and its key is refused once
    #: ``admission_wait`` has passed since its first attempt.
    handshake_timeout: int = 2000


@dataclass(frozen=True, slots=True)
class DiscoveryConfig:
    #: Announce and browse over mDNS. Off with --no-mdns (static peers only).
    mdns: bool = True
    #: Interfaces to announce on; empty means every usable one (not loopback-only,
    #: not docker/veth/virtual bridges).
    interfaces: tuple[str, ...] = ()
    #: Skip zeroconf's 3-probe name conflict check (1.5 s). Safe: instance names embed
    #: the node id, so they are unique by construction.
    cooperating_responders: bool = True
    #: s. Retry period for static seed peers that did not answer yet.
    seed_retry: float = 1.0
    #: Include loopback when choosing interfaces (single-machine demos and tests).
    allow_loopback: bool = False


@dataclass(frozen=True, slots=True)
class StoreConfig:
    #: bytes. LMDB map size: the most the store may ever hold. 1 GiB is sparse on disk.
    map_size: int = 1 << 30
    #: fsync every commit. True: an acknowledged task survives the host losing power (each
    #: commit costs an fsync, ~0.3 ms on an SSD; commits are grouped per event-loop
    #: batch). False: it survives a crash of meshd (kill -9) but not of the host.
    fsync: bool = True


@dataclass(frozen=True, slots=True)
class NodeConfig:
    role: str = "observer"
    name: str = ""
    #: None: take the role's default priority.
    priority: int | None = None
    state_dir: Path | None = None
    #: Address to bind; 0.0.0.0 listens on every interface.
    listen_host: str = "0.0.0.0"
    listen_port: int = DEFAULT_PORT
    peers: tuple[str, ...] = ()
    join_token: str | None = None
    log_level: str = "info"
    #: s. On SIGTERM the node stops taking tasks and gives the ones running here this
    #: long to finish; then idempotent ones are handed back (with their checkpoints) and
    #: the others reported lost. 10 s lets a short task end; the systemd unit's
    #: TimeoutStopSec is longer.
    shutdown_grace: float = 10.0
    #: Address of the Prometheus endpoint (``/metrics``, ``/healthz``). It is not
    #: authenticated: bind wider than loopback only on a trusted network.
    metrics_host: str = "127.0.0.1"
    #: None: no metrics endpoint; 0: pick a free port (``meshd start --metrics-port``).
    metrics_port: int | None = None


@dataclass(frozen=True, slots=True)
class TaskConfig:
    """Task delegation: retries, timeouts and input limits (see :mod:`meshd.tasks`)."""

    #: s. Wait before the first retry of a timed-out task. Half a second lets a briefly
    #: overloaded agent or a flapping link settle without making a user wait noticeably.
    retry_backoff_base: float = 0.5
    #: ratio. Each further retry waits this many times longer (exponential backoff), so a
    #: task that keeps failing does not hammer the mesh.
    retry_backoff_factor: float = 2.0
    #: s. Cap of the backoff: a retry is never further away than this, so a task still
    #: finishes within minutes once the cause is gone.
    retry_backoff_max: float = 30.0
    #: count. Retries after a timeout when the task does not say (3: four attempts in all,
    #: enough to ride out one crashed or stuck agent, few enough to surface a real bug).
    retry_limit: int = 3
    #: s. Time one attempt may take, from assignment to result, when the task does not say.
    #: 300 s matches the default role's wall-time limit (RoleLimits.wall_seconds).
    default_timeout: float = 300.0
    #: count. Most dependencies one task may name: bounds the work of checking them on
    #: every scheduling pass and the size of a task record.
    max_depends: int = 64
    #: bytes. Largest msgpack-encoded params accepted: a task travels in one mesh frame
    #: (transport.max_frame, 1 MiB) with room for its history, checkpoint and result.
    max_params_bytes: int = 64 * 1024
    #: s. A new lead waits at most this long for the task copies of the live members
    #: before it resumes unfinished tasks (it resumes at once when all have answered).
    #: One second covers a loaded LAN; a member that answers later is caught up anyway.
    gather_timeout: float = 1.0
    #: s. How often the lead publishes its newest task sequence number when idle, so a
    #: node that missed an update notices within this time and asks for it.
    beacon_interval: float = 1.0
    #: s. How often the lead publishes the root of its task digest (16 bytes): a node
    #: whose copies differ (it missed some, or holds some the lead lacks) finds out within
    #: this time and exchanges the buckets that differ (see meshd.tasks.converge).
    digest_interval: float = 2.0
    #: s. An agent reports STARTED this long after it began a task, unless the task
    #: finished first (its COMPLETED implies the start). 50 ms is invisible to a user
    #: watching progress, and saves a message and a stored change per short task.
    started_delay: float = 0.05


@dataclass(frozen=True, slots=True)
class SkillsConfig:
    """Skill packs (see :mod:`meshd.daemon.packs`)."""

    #: Install a pack another member publishes when its signer is trusted (an admitted
    #: member or a key in the trust store). False: only `meshctl skill install`.
    auto_install: bool = True
    #: bytes. Largest pack archive fetched or installed (the format allows 32 MiB).
    max_pack_bytes: int = 32 * 1024 * 1024
    #: count. Packs one member's announcements may keep in this node's mesh catalog. A
    #: role carries at most a handful of packs; 64 leaves room for site packs, and bounds
    #: what one member can make every node hold (each entry up to its manifest, 64 KiB).
    max_packs_per_member: int = 64
    #: count. Packs in the mesh catalog in all (every member's announcements together).
    max_catalog_packs: int = 4096
    #: bytes. Size of the mesh catalog in all: each entry counts its msgpack-encoded
    #: manifest plus 512 bytes. A real manifest is 1-4 KiB: 16 MiB holds thousands.
    max_catalog_bytes: int = 16 * 1024 * 1024
    #: count. Packs fetched from the mesh at the same time; a publication beyond it is
    #: refused (and counted) until one finishes. Each fetch holds one chunk in memory.
    max_fetches: int = 4
    #: bytes. Announced sizes of the packs being fetched, together: what the partial
    #: files under <state-dir>/skills/.fetch/ may take on disk. Two full-size packs.
    max_fetch_bytes: int = 64 * 1024 * 1024
    #: count. Revocation records this node keeps (signed, about 180 bytes each, sent
    #: whole to every member that joins).
    max_revocations: int = 10000
    #: count. Records one key that is not a revoker here may have in that list (its own
    #: key and its own packs): one member cannot fill the list for everyone.
    max_revocations_per_key: int = 1000

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if type(value) is int and value < 1:
                raise ConfigError(f"[skills] {f.name} must be at least 1, got {value}")


@dataclass(frozen=True, slots=True)
class Config:
    node: NodeConfig = field(default_factory=NodeConfig)
    membership: MembershipConfig = field(default_factory=MembershipConfig)
    election: ElectionConfig = field(default_factory=ElectionConfig)
    transport: TransportConfig = field(default_factory=TransportConfig)
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    tasks: TaskConfig = field(default_factory=TaskConfig)
    skills: SkillsConfig = field(default_factory=SkillsConfig)


def lan() -> Config:
    """Defaults for a real LAN."""
    return Config()


def test() -> Config:
    """Fast timings for tests on one machine; loopback allowed."""
    return Config(
        discovery=DiscoveryConfig(allow_loopback=True, seed_retry=0.3),
        store=StoreConfig(map_size=64 << 20),
    )


def default_state_dir() -> Path:
    """``$XDG_STATE_HOME/meshd``, else ``~/.local/state/meshd``; root (the service) uses
    ``/var/lib/meshd``."""
    env = os.environ.get("MESHD_STATE_DIR")
    if env:
        return Path(env)
    if os.geteuid() == 0 and not os.environ.get("HOME", "").startswith("/root"):
        return Path("/var/lib/meshd")
    xdg = os.environ.get("XDG_STATE_HOME")
    if xdg:
        return Path(xdg) / "meshd"
    return Path.home() / ".local" / "state" / "meshd"


_SECTIONS = {
    "node": NodeConfig,
    "membership": MembershipConfig,
    "election": ElectionConfig,
    "transport": TransportConfig,
    "discovery": DiscoveryConfig,
    "store": StoreConfig,
    "tasks": TaskConfig,
    "skills": SkillsConfig,
}


def _coerce(section: str, cls: type[Any], values: dict[str, Any]) -> Any:
    known = {f.name: f for f in dataclasses.fields(cls)}
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(
                f"unknown setting [{section}] {key}; known: {', '.join(sorted(known))}"
            )
        default = getattr(cls(), key)
        if isinstance(default, tuple):
            if not isinstance(value, list):
                raise ConfigError(f"[{section}] {key} must be a list")
            value = tuple(value)
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"[{section}] {key} must be true or false")
        elif isinstance(default, float):
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise ConfigError(f"[{section}] {key} must be a number")
            value = float(value)
        elif isinstance(default, int) and (not isinstance(value, int) or isinstance(value, bool)):
            raise ConfigError(f"[{section}] {key} must be an integer")
        elif key == "state_dir":
            value = Path(str(value))
        out[key] = value
    return out


def load_file(path: Path, base: Config | None = None) -> Config:
    """Overlay a TOML config file on ``base`` (default ``lan()``)."""
    cfg = base or lan()
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    updates: dict[str, Any] = {}
    for section, values in data.items():
        if section not in _SECTIONS:
            raise ConfigError(
                f"unknown section [{section}] in {path}; known: {', '.join(sorted(_SECTIONS))}"
            )
        if not isinstance(values, dict):
            raise ConfigError(f"[{section}] in {path} must be a table")
        cls = _SECTIONS[section]
        updates[section] = replace(getattr(cfg, section), **_coerce(section, cls, values))
    return replace(cfg, **updates)


def parse_hostport(text: str, default_port: int) -> tuple[str, int]:
    """``HOST``, ``HOST:PORT`` or ``[V6]:PORT``; a clear ConfigError otherwise."""
    host, port_s = text, ""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_s = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, port_s = text.split(":")
    if not host:
        raise ConfigError(f"{text!r}: missing host (use HOST:PORT)")
    try:
        port = int(port_s) if port_s else default_port
    except ValueError:
        raise ConfigError(f"{text!r}: port {port_s!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"{text!r}: port must be 0..65535")
    return host, port
