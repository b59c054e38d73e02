"""Network interfaces: which ones a node announces on and advertises.

Kept apart from discovery so that a node without mDNS never imports zeroconf.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import ifaddr

from meshd.config import DiscoveryConfig
from meshd.errors import ConfigError

#: Interface name prefixes skipped by default: container and VM bridges and their veths.
VIRTUAL_PREFIXES = (
    "docker",
    "br-",
    "veth",
    "virbr",
    "lxcbr",
    "lxdbr",
    "cni",
    "flannel",
    "cali",
    "vnet",
    "podman",
    "kube",
    "tun",
    "tap",
    "zt",
    "tailscale",
    "wg",
)


@dataclass(frozen=True, slots=True)
class Interface:
    name: str
    ip: str
    network: ipaddress.IPv4Network


def list_interfaces() -> list[Interface]:
    out: list[Interface] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str):  # IPv4 (IPv6 link-local needs scope ids: later)
                net = ipaddress.IPv4Network(f"{ip.ip}/{ip.network_prefix}", strict=False)
                out.append(Interface(adapter.nice_name, ip.ip, net))
    return out


def choose_interfaces(cfg: DiscoveryConfig) -> list[Interface]:
    """The interfaces to announce on: the named ones, else every usable one."""
    all_ifs = list_interfaces()
    if cfg.interfaces:
        chosen = [i for i in all_ifs if i.name in cfg.interfaces or i.ip in cfg.interfaces]
        missing = set(cfg.interfaces) - {i.name for i in chosen} - {i.ip for i in chosen}
        if missing:
            names = ", ".join(sorted({i.name for i in all_ifs}))
            raise ConfigError(
                f"no IPv4 interface named {', '.join(sorted(missing))}; available: {names}"
            )
        return chosen
    chosen = []
    for iface in all_ifs:
        loop = ipaddress.IPv4Address(iface.ip).is_loopback
        if loop and not cfg.allow_loopback:
            continue
        if iface.name.startswith(VIRTUAL_PREFIXES):
            continue
        if ipaddress.IPv4Address(iface.ip).is_link_local:
            continue
        chosen.append(iface)
    return chosen
