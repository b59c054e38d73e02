"""net-info: interfaces, routes and default gateways of this host.

Interfaces and their addresses come from ``ifaddr`` (getifaddrs) when it can be
imported, else from ``socket.if_nameindex`` with the ``SIOCGIFADDR``/``SIOCGIFNETMASK``
ioctls (one IPv4 address per interface) and ``/proc/net/if_inet6``. MAC, MTU and
operational state come from ``/sys/class/net``. Routes are parsed from
``/proc/net/route`` and ``/proc/net/ipv6_route`` (:func:`parse_route`,
:func:`parse_ipv6_route`); the default gateway of each family is its ``0/0`` route with a
gateway and the lowest metric.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import struct
from pathlib import Path
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


PROC_NET = Path("/proc/net")
SYS_NET = Path("/sys/class/net")

#: Route flags (linux/route.h, linux/ipv6_route.h) and the letters `route -n` shows.
RTF_UP = 0x0001
RTF_GATEWAY = 0x0002
RTF_REJECT = 0x0200
_FLAG_NAMES = (
    (0x0001, "U"),
    (0x0002, "G"),
    (0x0004, "H"),
    (0x0008, "R"),
    (0x0010, "D"),
    (0x0020, "M"),
    (0x0200, "!"),
    (0x00040000, "A"),  # IPv6: from address autoconfiguration
    (0x01000000, "C"),  # IPv6: cache entry
    (0x80000000, "L"),  # IPv6: local address (RTF_LOCAL)
)
RTF_LOCAL = 0x80000000

SIOCGIFADDR = 0x8915
SIOCGIFNETMASK = 0x891B


def _flags(value: int) -> str:
    return "".join(letter for bit, letter in _FLAG_NAMES if value & bit)


def _ipv4_le(hex_text: str) -> str:
    """An address as /proc/net/route writes it: 8 hex digits, little-endian."""
    return socket.inet_ntoa(struct.pack("<I", int(hex_text, 16)))


def parse_route(text: str) -> list[dict[str, Any]]:
    """The IPv4 routes of a ``/proc/net/route`` text: ``interface``, ``destination``
    (CIDR), ``gateway`` (None when directly connected), ``flags`` (``route -n`` letters),
    ``metric``, ``mtu``, ``up``. Lines it cannot read are skipped."""
    routes: list[dict[str, Any]] = []
    for line in text.splitlines()[1:]:
        cols = line.split()
        if len(cols) < 8:
            continue
        try:
            iface, dest, gateway, flags = cols[0], cols[1], cols[2], int(cols[3], 16)
            metric, mask = int(cols[6]), int(cols[7], 16)
            mtu = int(cols[8]) if len(cols) > 8 else 0
            prefix = bin(mask).count("1")
            destination = f"{_ipv4_le(dest)}/{prefix}"
            via = _ipv4_le(gateway) if flags & RTF_GATEWAY else None
        except (ValueError, struct.error, OSError):
            continue
        routes.append(
            {
                "interface": iface,
                "destination": destination,
                "gateway": via,
                "flags": _flags(flags),
                "metric": metric,
                "mtu": mtu,
                "up": bool(flags & RTF_UP),
            }
        )
    return routes


def _ipv6_hex(hex_text: str) -> str:
    return str(ipaddress.IPv6Address(bytes.fromhex(hex_text)))


def parse_ipv6_route(text: str) -> list[dict[str, Any]]:
    """The IPv6 routes of a ``/proc/net/ipv6_route`` text, with the keys of
    :func:`parse_route` plus ``local`` (a route to one of this host's own addresses).
    ``gateway`` is None when the next hop is ``::``."""
    routes: list[dict[str, Any]] = []
    for line in text.splitlines():
        cols = line.split()
        if len(cols) < 10:
            continue
        try:
            destination = f"{_ipv6_hex(cols[0])}/{int(cols[1], 16)}"
            next_hop = _ipv6_hex(cols[4])
            metric, flags = int(cols[5], 16), int(cols[8], 16)
        except ValueError:
            continue
        routes.append(
            {
                "interface": cols[9],
                "destination": destination,
                "gateway": None if next_hop == "::" else next_hop,
                "flags": _flags(flags),
                "metric": metric,
                "mtu": 0,
                "up": bool(flags & RTF_UP),
                "local": bool(flags & RTF_LOCAL),
            }
        )
    return routes


def default_gateway(routes: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The usable default route (``0.0.0.0/0`` or ``::/0``, up, with a gateway, not a
    reject route) with the lowest metric: ``{"gateway", "interface", "metric"}``."""
    best: dict[str, Any] | None = None
    for r in routes:
        if r["destination"] not in ("0.0.0.0/0", "::/0") or not r["up"] or not r["gateway"]:
            continue
        if "!" in r["flags"]:
            continue
        if best is None or r["metric"] < best["metric"]:
            best = r
    if best is None:
        return None
    return {"gateway": best["gateway"], "interface": best["interface"], "metric": best["metric"]}


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None


def _sys_facts(name: str) -> dict[str, Any]:
    base = SYS_NET / name
    mtu = _read(base / "mtu")
    return {
        "mac": _read(base / "address"),
        "mtu": int(mtu) if mtu and mtu.isdigit() else None,
        "state": _read(base / "operstate"),
    }


def interfaces_ifaddr() -> dict[str, dict[str, Any]]:
    import ifaddr  # type: ignore[import-untyped,unused-ignore]

    out: dict[str, dict[str, Any]] = {}
    for adapter in ifaddr.get_adapters():
        name = str(adapter.name).split(":")[0]
        entry = out.setdefault(name, {"index": adapter.index, "ipv4": [], "ipv6": []})
        for ip in adapter.ips:
            if isinstance(ip.ip, tuple):
                addr = {"address": ip.ip[0], "prefix": ip.network_prefix}
                if addr not in entry["ipv6"]:
                    entry["ipv6"].append(addr)
            else:
                addr = {"address": ip.ip, "prefix": ip.network_prefix}
                if addr not in entry["ipv4"]:
                    entry["ipv4"].append(addr)
    return out


def interfaces_proc(proc_net: Path = PROC_NET) -> dict[str, dict[str, Any]]:
    import fcntl

    out: dict[str, dict[str, Any]] = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for index, name in socket.if_nameindex():
            entry = out.setdefault(name, {"index": index, "ipv4": [], "ipv6": []})
            req = struct.pack("256s", name.encode()[:15])
            with contextlib.suppress(OSError):
                addr = socket.inet_ntoa(fcntl.ioctl(sock.fileno(), SIOCGIFADDR, req)[20:24])
                mask = fcntl.ioctl(sock.fileno(), SIOCGIFNETMASK, req)[20:24]
                prefix = bin(int.from_bytes(mask, "big")).count("1")
                entry["ipv4"].append({"address": addr, "prefix": prefix})
    for line in (_read(proc_net / "if_inet6") or "").splitlines():
        cols = line.split()
        if len(cols) < 6:
            continue
        try:
            address, prefix = _ipv6_hex(cols[0]), int(cols[2], 16)
        except ValueError:
            continue
        entry = out.setdefault(cols[5], {"index": int(cols[1], 16), "ipv4": [], "ipv6": []})
        entry["ipv6"].append({"address": address, "prefix": prefix})
    return out


def run(ctx: Any) -> dict[str, Any]:
    include_down = bool(ctx.params.get("include_down", True))
    ctx.progress(0.0, "reading interfaces")
    try:
        found, source = interfaces_ifaddr(), "ifaddr"
    except Exception:  # ifaddr missing or failing: fall back on ioctls and /proc
        found, source = interfaces_proc(), "proc"
    with contextlib.suppress(OSError):  # interfaces without addresses (ifaddr skips them)
        for index, name in socket.if_nameindex():
            entry = found.setdefault(name, {"index": index, "ipv4": [], "ipv6": []})
            if entry.get("index") is None:
                entry["index"] = index
    interfaces = []
    for name in sorted(found, key=lambda n: (found[n].get("index") or 0, n)):
        facts = _sys_facts(name)
        if not include_down and facts["state"] == "down":
            continue
        interfaces.append({"name": name, **found[name], **facts})

    ctx.progress(50.0, "reading routes")
    route_text = _read(PROC_NET / "route")
    route6_text = _read(PROC_NET / "ipv6_route")
    if route_text is None and route6_text is None and not interfaces:
        raise SkillFailure("unavailable", "no interfaces found and /proc/net is unreadable")
    routes4 = parse_route(route_text or "")
    routes6 = parse_ipv6_route(route6_text or "")
    ctx.progress(100.0, f"{len(interfaces)} interface(s)")
    return {
        "hostname": socket.gethostname(),
        "source": source,
        "interfaces": interfaces,
        "routes": {"ipv4": routes4, "ipv6": routes6},
        "default_gateway": {"ipv4": default_gateway(routes4), "ipv6": default_gateway(routes6)},
    }
