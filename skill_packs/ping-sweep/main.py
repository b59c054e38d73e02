"""ping-sweep: which hosts of an address range answer?

The skill runs unprivileged (no raw sockets), so it probes with:

- ``icmp``: an ICMP echo through a *ping socket* (``SOCK_DGRAM``/``IPPROTO_ICMP``), which
  the kernel allows when the process's group is inside ``net.ipv4.ping_group_range``
  (that one setting covers ICMPv6 too);
- ``tcp``: otherwise, non-blocking connects to a few ports (``tcp_ports``): a host is up
  when any of them is accepted or refused (a reset is an answer too). A host that drops
  every probe reads as down.

The result says which ``method`` was used and why. Hosts are probed in batches by a
thread pool; after each batch the skill reports progress and checkpoints the index
reached and the hosts found up, so a reassigned sweep resumes after the last full batch.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import os
import selectors
import socket
import struct
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from typing import Any

try:
    from meshd.skill import SkillFailure
except ImportError:  # meshd.skill not there yet: same signature

    class SkillFailure(Exception):  # type: ignore[no-redef]
        """A failure the skill understands: a short stable ``code`` and a message."""

        def __init__(self, code: str, message: str) -> None:
            super().__init__(f"{code}: {message}")
            self.code = code
            self.message = message


MAX_HOSTS = 1024
MAX_CONCURRENCY = 12
THREAD_STACK = 512 * 1024
PING_GROUP_RANGE = "/proc/sys/net/ipv4/ping_group_range"
CHECKPOINT_VERSION = 1
PAYLOAD = b"meshd-ping-sweep"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_network(cidr: str) -> Network:
    try:
        return ipaddress.ip_network(cidr.strip(), strict=False)
    except ValueError as exc:
        raise SkillFailure("bad_params", f"bad cidr {cidr!r}: {exc}") from None


def host_count(net: Network) -> int:
    """Number of addresses :func:`hosts` yields (computed, not enumerated)."""
    if net.version == 4 and net.prefixlen < 31:
        return net.num_addresses - 2
    if net.version == 6 and net.prefixlen < 127:
        return net.num_addresses - 1  # hosts() skips the subnet-router anycast address
    return net.num_addresses


def hosts(net: Network) -> Iterator[str]:
    if net.num_addresses == 1:
        return iter([str(net.network_address)])
    return (str(a) for a in net.hosts())


def ping_groups(path: str = PING_GROUP_RANGE) -> tuple[int, int] | None:
    try:
        with open(path, encoding="ascii") as f:
            lo, hi = f.read().split()[:2]
        return int(lo), int(hi)
    except (OSError, ValueError):
        return None


def icmp_available(family: int) -> tuple[bool, str]:
    """Whether this process may open a ping socket for ``family``, and why (not)."""
    proto = socket.IPPROTO_ICMP if family == socket.AF_INET else socket.IPPROTO_ICMPV6
    try:
        sock = socket.socket(family, socket.SOCK_DGRAM, proto)
    except OSError as exc:
        groups = ping_groups()
        where = f"net.ipv4.ping_group_range = {groups[0]} {groups[1]}" if groups else "?"
        reason = errno.errorcode.get(exc.errno or 0, str(exc))
        return False, f"ping socket refused ({reason}) for gid {os.getgid()} ({where})"
    sock.close()
    return True, "ping socket allowed"


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(int(word) for word in struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def icmp_probe(family: int, address: str, timeout: float, seq: int) -> float | None:
    """Round trip in ms of one ICMP echo through a ping socket, or None (no answer)."""
    v4 = family == socket.AF_INET
    proto = socket.IPPROTO_ICMP if v4 else socket.IPPROTO_ICMPV6
    request, reply = (8, 0) if v4 else (128, 129)
    seq &= 0xFFFF
    packet = struct.pack("!BBHHH", request, 0, 0, 0, seq) + PAYLOAD
    if v4:  # the kernel fills in the identifier (and the ICMPv6 checksum)
        packet = packet[:2] + struct.pack("!H", _checksum(packet)) + packet[4:]
    sock = socket.socket(family, socket.SOCK_DGRAM, proto)
    try:
        sock.connect((address, 0))
        start = time.perf_counter()
        deadline = start + timeout
        sock.send(packet)
        while True:
            left = deadline - time.perf_counter()
            if left <= 0:
                return None
            sock.settimeout(left)
            data = sock.recv(2048)
            if len(data) >= 8 and data[0] == reply and struct.unpack("!H", data[6:8])[0] == seq:
                return (time.perf_counter() - start) * 1000.0
    except OSError:  # timeout, unreachable, an ICMP error reported on the socket
        return None
    finally:
        sock.close()


_ANSWERED = (0, errno.ECONNREFUSED)


def tcp_probe(family: int, address: str, timeout: float, ports: list[int]) -> float | None:
    """ms until the first of ``ports`` accepted or refused a connection, or None."""
    start = time.perf_counter()
    socks: list[socket.socket] = []
    sel = selectors.DefaultSelector()
    try:
        for port in ports:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setblocking(False)
            socks.append(sock)
            code = sock.connect_ex((address, port))
            if code in _ANSWERED:
                return (time.perf_counter() - start) * 1000.0
            if code in (errno.EINPROGRESS, errno.EAGAIN):
                sel.register(sock, selectors.EVENT_WRITE)
        deadline = start + timeout
        while sel.get_map():
            left = deadline - time.perf_counter()
            if left <= 0:
                return None
            for key, _ in sel.select(left):
                sock = key.fileobj  # type: ignore[assignment]
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code in _ANSWERED:
                    return (time.perf_counter() - start) * 1000.0
                sel.unregister(sock)
        return None
    finally:
        sel.close()
        for sock in socks:
            sock.close()


def load_checkpoint(data: bytes | None, net: Network) -> tuple[int, list[str], dict[str, float]]:
    """(next index, up hosts, their latencies) from a checkpoint of a sweep of the same
    range; (0, [], {}) for none, another range's, or an unreadable one."""
    if not data:
        return 0, [], {}
    try:
        state = json.loads(data.decode("utf-8"))
        if state.get("v") != CHECKPOINT_VERSION or state.get("cidr") != str(net):
            return 0, [], {}
        index = int(state["next"])
        up = [str(a) for a in state.get("up", [])]
        latency = {str(k): float(v) for k, v in state.get("latency_ms", {}).items()}
    except (ValueError, TypeError, KeyError, AttributeError):
        return 0, [], {}
    return max(0, index), up, latency


def make_checkpoint(net: Network, index: int, up: list[str], latency: dict[str, float]) -> bytes:
    state = {"v": CHECKPOINT_VERSION, "cidr": str(net), "next": index, "up": up}
    state["latency_ms"] = latency
    return json.dumps(state, separators=(",", ":")).encode("utf-8")


def _tcp_ports(items: Any) -> list[int]:
    if isinstance(items, str | int):
        items = [items]
    ports: list[int] = []
    for item in items:
        try:
            port = int(str(item).strip(), 10)
        except ValueError:
            raise SkillFailure("bad_params", f"bad tcp port {item!r}") from None
        if not 1 <= port <= 65535:
            raise SkillFailure("bad_params", f"bad tcp port {item!r}: ports are 1..65535")
        if port not in ports:
            ports.append(port)
    if not 1 <= len(ports) <= 8:
        raise SkillFailure("bad_params", "tcp_ports takes 1 to 8 ports")
    return ports


def run(ctx: Any) -> dict[str, Any]:
    params = ctx.params
    net = parse_network(str(params["cidr"]))
    timeout = float(params.get("timeout", 1.0))
    max_hosts = min(int(params.get("max_hosts", 256)), MAX_HOSTS)
    workers = max(1, min(int(params.get("concurrency", 8)), MAX_CONCURRENCY))
    wanted = str(params.get("method", "auto")).strip().lower()
    ports = _tcp_ports(params.get("tcp_ports", ["22", "80", "443"]))
    if wanted not in ("auto", "icmp", "tcp"):
        raise SkillFailure("bad_params", f"method must be auto, icmp or tcp, not {wanted!r}")

    total = host_count(net)
    if total > max_hosts:
        raise SkillFailure(
            "too_many_hosts", f"{net} has {total} hosts, more than max_hosts={max_hosts}"
        )

    family = socket.AF_INET if net.version == 4 else socket.AF_INET6
    if wanted == "tcp":
        method, note = "tcp", "tcp probe asked for"
    else:
        allowed, why = icmp_available(family)
        if allowed:
            method, note = "icmp", why
        elif wanted == "icmp":
            raise SkillFailure("icmp_unavailable", why)
        else:
            method, note = "tcp", f"{why}; fell back to a tcp connect probe"

    start_index, up, latency = load_checkpoint(ctx.checkpoint_data, net)
    start_index = min(start_index, total)

    def probe(item: tuple[int, str]) -> tuple[str, float | None]:
        index, address = item
        if method == "icmp":
            return address, icmp_probe(family, address, timeout, index)
        return address, tcp_probe(family, address, timeout, ports)

    batch = max(workers * 2, 16)
    pending = islice(enumerate(hosts(net)), start_index, None)
    index = start_index
    ctx.progress(100.0 * index / max(total, 1), f"{method} sweep of {net} from host {index}")
    previous_stack = threading.stack_size(THREAD_STACK)
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            while index < total:
                if ctx.cancelled:
                    raise SkillFailure("cancelled", f"cancelled at host {index} of {total}")
                chunk = list(islice(pending, batch))
                if not chunk:
                    break
                for address, ms in pool.map(probe, chunk):
                    if ms is not None and address not in latency:
                        up.append(address)
                        latency[address] = round(ms, 3)
                index = chunk[-1][0] + 1
                ctx.checkpoint(make_checkpoint(net, index, up, latency))
                ctx.progress(100.0 * index / total, f"{index}/{total} hosts, {len(up)} up")
    finally:
        with contextlib.suppress(ValueError):
            threading.stack_size(previous_stack)

    return {
        "cidr": str(net),
        "method": method,
        "method_note": note,
        "tcp_ports": ports if method == "tcp" else [],
        "hosts": total,
        "scanned": index - start_index,
        "resumed_from": start_index,
        "up": up,
        "up_count": len(up),
        "latency_ms": latency,
    }
