"""A LAN on one machine: network namespaces on a bridge (recipe: /work/shared/LAB.md).

Layout of one :class:`Lab`::

    namespace <prefix>b          bridge namespace: br0 (10.77.0.0/24), br1 (10.78.0.0/24)
       v<I>b<K>  <-- veth -->    namespace <prefix>n<I>: eth<K> = 10.(77+K).0.<I>/24

Every node namespace gets loopback up and the 224.0.0.0/4 route on each of its
interfaces (without it mDNS is silent). The bridge lives in a namespace of its own,
so nothing touches the machine's real interfaces.

Privilege: as root the lab uses ``ip netns`` directly. Otherwise (or when that fails) it
keeps one holder process in a user + mount + net namespace (``unshare -rmn``, a tmpfs on
/run for ``ip netns``'s files) and runs every lab command through ``nsenter`` into it;
``MESHD_LAB_USERNS=1`` forces that mode as root too, to test it. :func:`probe` tries the
real operation once and says why the lab cannot run when it cannot.

Cleanup is by exact name or pid: :meth:`Lab.close` stops the processes started in the
lab (tracked by pid), then deletes the node namespaces and the bridge namespace it
created. Every wait is bounded in count and time.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import itertools
import os
import select
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

#: s. One ``ip``/``nft`` invocation; they take milliseconds, this only bounds a hang.
CMD_TIMEOUT = 20.0
#: The first octets of bridge K's subnet: 10.77.0.0/24, 10.78.0.0/24, ...
SUBNET_BASE = 77
MAX_BRIDGES = 4
MAX_NODES = 200
#: Interface names are limited to 15 characters (IFNAMSIZ - 1).
IFNAMSIZ_MAX = 15

_counter = itertools.count()


class LabError(RuntimeError):
    """A lab command failed (the message carries the command and its stderr)."""


def _set_pdeathsig() -> None:  # pragma: no cover - runs in the child before exec
    """Children die with the test process (a killed pytest leaves no holder behind)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class Host:
    """How lab commands run on this machine: directly as root, or through a holder."""

    mode: str  # "root" or "userns"
    #: Prepended to every lab command (``ip``, ``nft``, daemons).
    prefix: tuple[str, ...] = ()
    holder: subprocess.Popen[bytes] | None = None

    def run(
        self, *args: str, check: bool = True, input_text: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        cmd = [*self.prefix, *args]
        try:
            out = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                timeout=CMD_TIMEOUT,
                input=input_text,
                stdin=None if input_text is not None else subprocess.DEVNULL,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise LabError(f"{' '.join(cmd)}: {exc}") from exc
        if check and out.returncode != 0:
            raise LabError(f"{' '.join(cmd)} exited {out.returncode}: {out.stderr.strip()}")
        return out

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("ip", *args, check=check)

    def netns_names(self) -> set[str]:
        out = self.ip("netns", "list", check=False).stdout
        return {line.split()[0] for line in out.splitlines() if line.strip()}

    def close(self) -> None:
        if self.holder is not None and self.holder.poll() is None:
            self.holder.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.holder.wait(timeout=10)
        self.holder = None


def _start_holder() -> Host:
    """A user + mount + net namespace whose /run is our own tmpfs, kept alive by ``sleep``."""
    script = (
        "mount -t tmpfs -o mode=0755 meshdlab /run && mkdir -p /run/netns && echo ready"
        " && exec sleep 86400"
    )
    proc = subprocess.Popen(
        ["unshare", "--user", "--map-root-user", "--mount", "--net", "sh", "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        preexec_fn=_set_pdeathsig,
    )
    assert proc.stdout is not None and proc.stderr is not None
    ready, _, _ = select.select([proc.stdout], [], [], CMD_TIMEOUT)
    line = proc.stdout.readline() if ready else b""
    if line.strip() != b"ready":
        proc.kill()
        proc.wait(timeout=10)
        err = proc.stderr.read().decode(errors="replace").strip()
        raise LabError(f"unshare -rmn (user namespace) failed: {err or 'no answer'}")
    prefix = (
        "nsenter",
        "-t",
        str(proc.pid),
        "--user",
        "--mount",
        "--net",
        "--preserve-credentials",
    )
    return Host("userns", prefix, proc)


@dataclass
class Support:
    ok: bool
    reason: str
    host: Host | None = None


def _try_lab(host: Host) -> str | None:
    """Build and remove a probe namespace with a bridge, a veth and ``ip netns exec``."""
    name = f"mlab{os.getpid()}probe"
    try:
        host.ip("netns", "add", name)
        try:
            host.ip("-n", name, "link", "add", "pbr", "type", "bridge")
            host.ip("-n", name, "link", "add", "pv0", "type", "veth", "peer", "name", "pv1")
            host.ip("-n", name, "link", "set", "pv0", "master", "pbr")
            host.run("ip", "netns", "exec", name, "ip", "-o", "link", "show", "pv0")
        finally:
            host.ip("netns", "delete", name, check=False)
    except LabError as exc:
        return str(exc)
    return None


def probe() -> Support:
    """Can this machine build the lab? Tries the real operation once rather than guessing:
    as root directly, else (or if that fails) in a user namespace."""
    if not sys.platform.startswith("linux"):
        return Support(False, f"network namespaces need Linux (this is {sys.platform})")
    if shutil.which("ip") is None:
        return Support(False, "iproute2's `ip` is not installed (apt-get install iproute2)")
    failures = []
    if os.geteuid() == 0 and os.environ.get("MESHD_LAB_USERNS") != "1":
        error = _try_lab(Host("root"))
        if error is None:
            return Support(True, "namespace lab available (root)", Host("root"))
        failures.append(f"as root: {error}")
    else:
        failures.append("not root")
    missing = [t for t in ("unshare", "nsenter") if shutil.which(t) is None]
    if missing:
        failures.append(f"no user namespace fallback: {', '.join(missing)} missing (util-linux)")
        return Support(False, "; ".join(failures))
    try:
        host = _start_holder()
    except LabError as exc:
        failures.append(f"no user namespace fallback: {exc}")
        return Support(False, "; ".join(failures))
    error = _try_lab(host)
    if error is not None:
        host.close()
        failures.append(f"in a user namespace: {error}")
        return Support(False, "; ".join(failures))
    return Support(True, "namespace lab available (user namespace)", host)


def nft_usable(host: Host, ns: str) -> str | None:
    """None if nft works inside ``ns``, else why not."""
    if shutil.which("nft") is None:
        return "nft is not installed (apt-get install nftables)"
    out = host.run("ip", "netns", "exec", ns, "nft", "list", "tables", check=False)
    if out.returncode != 0:
        return f"nft does not work in a lab namespace: {out.stderr.strip()}"
    return None


@functools.cache
def _setpriv_pdeathsig() -> bool:
    """util-linux >= 2.33 has ``setpriv --pdeathsig``."""
    if shutil.which("setpriv") is None:
        return False
    try:
        out = subprocess.run(
            ["setpriv", "--help"], capture_output=True, text=True, timeout=CMD_TIMEOUT
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "--pdeathsig" in out.stdout


@dataclass
class Node:
    index: int
    ns: str
    #: interface name -> IPv4 address, e.g. {"eth0": "10.77.0.3"}
    addrs: dict[str, str] = field(default_factory=dict)

    @property
    def ip(self) -> str:
        """The node's address on its first interface."""
        return next(iter(self.addrs.values()))

    @property
    def ifaces(self) -> list[str]:
        return list(self.addrs)


class Lab:
    """Namespaces for one test; :meth:`close` removes everything it made, by exact name."""

    def __init__(self, host: Host, bridges: int = 1) -> None:
        if not 1 <= bridges <= MAX_BRIDGES:
            raise ValueError(f"bridges must be 1..{MAX_BRIDGES}")
        self.host = host
        self.prefix = f"mlab{os.getpid()}x{next(_counter)}"
        self.bridge_ns = f"{self.prefix}b"
        self.nodes: dict[int, Node] = {}
        self._made_ns: list[str] = []
        self._procs: list[subprocess.Popen[Any]] = []
        self._stoppers: list[Callable[[], object]] = []
        self.bridges = bridges
        try:
            self._add_ns(self.bridge_ns)
            for k in range(bridges):
                self.host.ip(
                    *("-n", self.bridge_ns, "link", "add", f"br{k}", "type", "bridge"),
                    *("mcast_snooping", "0", "stp_state", "0", "forward_delay", "0"),
                )
                self.host.ip("-n", self.bridge_ns, "link", "set", f"br{k}", "up")
        except BaseException:
            self.close()
            raise

    # -- building ---------------------------------------------------------------------

    def _add_ns(self, name: str) -> None:
        if name in self.host.netns_names():
            raise LabError(f"namespace {name} already exists (left over from another run?)")
        self.host.ip("netns", "add", name)
        self._made_ns.append(name)
        self.host.ip("-n", name, "link", "set", "lo", "up")

    def add_node(self, index: int, bridges: Sequence[int] = (0,)) -> Node:
        """Namespace ``<prefix>n<index>`` with eth<K> = 10.(77+K).0.<index>/24 per bridge K."""
        if not 1 <= index <= MAX_NODES or index in self.nodes:
            raise ValueError(f"bad or duplicate node index {index}")
        ns = f"{self.prefix}n{index}"
        self._add_ns(ns)
        node = Node(index, ns)
        self.nodes[index] = node
        for k in bridges:
            if not 0 <= k < self.bridges:
                raise ValueError(f"bridge {k} does not exist in this lab")
            veth, eth = f"v{index}b{k}", f"eth{k}"
            assert len(veth) <= IFNAMSIZ_MAX
            addr = f"10.{SUBNET_BASE + k}.0.{index}"
            ip = self.host.ip
            ip(
                *("link", "add", veth, "netns", self.bridge_ns, "type", "veth"),
                *("peer", "name", eth, "netns", ns),
            )
            ip("-n", self.bridge_ns, "link", "set", veth, "master", f"br{k}", "up")
            ip("-n", ns, "addr", "add", f"{addr}/24", "dev", eth)
            ip("-n", ns, "link", "set", eth, "up")
            node.addrs[eth] = addr
        # Without a multicast route mDNS is silent (LAB.md); one per link, the first
        # interface preferred for sockets that do not pick one.
        for k, eth in enumerate(node.ifaces):
            self.host.ip("-n", ns, "route", "add", "224.0.0.0/4", "dev", eth, "metric", str(k * 10))
        return node

    def add_nodes(self, count: int, bridges: Sequence[int] = (0,), start: int = 1) -> list[Node]:
        return [self.add_node(i, bridges) for i in range(start, start + count)]

    def exec_prefix(self, node: Node) -> tuple[str, ...]:
        """Run a command inside ``node``: ``(*lab.exec_prefix(n), "cmd", ...)``.

        ``setpriv --pdeathsig KILL`` makes the process die with the test process even if
        pytest itself is killed; ``ip netns exec`` and ``nsenter`` exec, so the pid of the
        Popen is the command's own pid.
        """
        pre = ("setpriv", "--pdeathsig", "KILL") if _setpriv_pdeathsig() else ()
        return (*pre, *self.host.prefix, "ip", "netns", "exec", node.ns)

    def track(
        self, proc: subprocess.Popen[Any] | None, stop: Callable[[], object] | None = None
    ) -> None:
        """Remember a process started in the lab (killed by pid on close); ``stop`` is
        tried first for a graceful stop."""
        if stop is not None:
            self._stoppers.append(stop)
        if proc is not None:
            self._procs.append(proc)

    def exec(self, node: Node, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.host.run("ip", "netns", "exec", node.ns, *args, check=check)

    # -- faults -----------------------------------------------------------------------

    def cut(self, node: Node, ifaces: Iterable[str] | None = None) -> None:
        """Silent cut: drop everything in and out on the node's interfaces; links stay up."""
        names = list(ifaces) if ifaces is not None else node.ifaces
        rules_in = "\n".join(f'    iifname "{i}" drop' for i in names)
        rules_out = "\n".join(f'    oifname "{i}" drop' for i in names)
        ruleset = (
            "table inet lab {\n"
            "  chain in {\n    type filter hook input priority -10; policy accept;\n"
            f"{rules_in}\n  }}\n"
            "  chain out {\n    type filter hook output priority -10; policy accept;\n"
            f"{rules_out}\n  }}\n"
            "}\n"
        )
        self.host.run("ip", "netns", "exec", node.ns, "nft", "-f", "-", input_text=ruleset)

    def heal(self, node: Node) -> None:
        self.exec(node, "nft", "delete", "table", "inet", "lab")

    # -- teardown ---------------------------------------------------------------------

    def close(self) -> None:
        """Stop tracked processes (gracefully, then SIGKILL by pid), delete namespaces."""
        for stop in self._stoppers:
            with contextlib.suppress(Exception):
                stop()
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        self._stoppers.clear()
        self._procs.clear()
        errors = []
        for ns in reversed(self._made_ns):
            try:
                out = self.host.ip("netns", "delete", ns, check=False)
                if out.returncode != 0 and ns in self.host.netns_names():
                    errors.append(f"{ns}: {out.stderr.strip()}")
            except LabError as exc:  # a hung `ip`: go on with the other namespaces
                errors.append(str(exc))
        self._made_ns.clear()
        self.nodes.clear()
        if errors:
            raise LabError("could not delete namespaces: " + "; ".join(errors))

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
