"""mDNS discovery with python-zeroconf: announce ``_meshd._tcp.local.`` and browse for it.

One zeroconf responder per chosen interface, each announcing only that interface's own
address, so every host on a link learns an address that is reachable from that link.
A multi-homed host therefore shows up once per link with one address each; peers key
members by node id, never by address, and keep the address they connected to while it
stays advertised, so extra interfaces never make a member flap.

The TXT record carries nothing secret: node id, name, role, priority, tier, public keys,
ports, the admission proof (an HMAC that only proves membership, bound to this node's
key) and the protocol version. mDNS is never a liveness signal (a crashed host's record
lingers for ~19 minutes); it only introduces candidates, which must then speak for
themselves over the admitted CURVE links.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from zeroconf import IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from meshd import log
from meshd.config import DiscoveryConfig
from meshd.net.interfaces import Interface
from meshd.wire.records import PROTOCOL_VERSION, MemberInfo

SERVICE_TYPE = "_meshd._tcp.local."

_log = log.get("meshd.discovery")


def txt_for(info: MemberInfo, mesh_id: str) -> dict[str, str]:
    return {
        "v": str(info.protocol_version),
        "mesh": mesh_id,
        "id": info.node_id,
        "name": info.name,
        "role": info.role,
        "pri": str(info.priority),
        "tier": str(info.tier),
        "ek": info.ed25519_pk.hex(),
        "ck": info.curve_pk.hex(),
        "proof": info.proof.hex(),
        "rp": str(info.router_port),
        "pp": str(info.pub_port),
        "ip": str(info.intro_port),
        "inc": str(info.incarnation),
    }


def info_from_txt(props: dict[bytes, bytes | None], addresses: list[str]) -> MemberInfo:
    """Parse a TXT record; raises ValueError/KeyError on anything malformed."""
    p = {k.decode(): (v or b"").decode() for k, v in props.items()}
    return MemberInfo(
        node_id=p["id"],
        name=p["name"][:64],
        role=p["role"][:64],
        priority=int(p["pri"]),
        tier=int(p.get("tier", "0")),
        ed25519_pk=bytes.fromhex(p["ek"]),
        curve_pk=bytes.fromhex(p["ck"]),
        proof=bytes.fromhex(p["proof"]),
        addresses=tuple(addresses[:16]),
        router_port=int(p["rp"]),
        pub_port=int(p["pp"]),
        intro_port=int(p["ip"]),
        incarnation=int(p.get("inc", "0")),
        protocol_version=int(p.get("v", str(PROTOCOL_VERSION))),
    )


class Discovery:
    """Announces this node and reports members found on every chosen interface."""

    def __init__(
        self,
        cfg: DiscoveryConfig,
        mesh_id: str,
        on_found: Callable[[MemberInfo], None],
    ) -> None:
        self.cfg = cfg
        self.mesh_id = mesh_id
        self.on_found = on_found
        self._zcs: list[tuple[Interface, AsyncZeroconf, AsyncServiceInfo]] = []
        self._browsers: list[AsyncServiceBrowser] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.foreign_records = 0
        self.bad_records = 0

    async def start(self, info: MemberInfo, interfaces: list[Interface]) -> None:
        host = f"meshd-{info.node_id[:16]}.local."
        instance = f"{info.name[:40]}-{info.node_id[:8]}.{SERVICE_TYPE}"
        for iface in interfaces:
            azc = AsyncZeroconf(interfaces=[iface.ip], ip_version=IPVersion.V4Only)
            sinfo = AsyncServiceInfo(
                SERVICE_TYPE,
                instance,
                addresses=[socket.inet_aton(iface.ip)],
                port=info.router_port,
                properties=txt_for(info, self.mesh_id),
                server=host,
            )
            await azc.async_register_service(
                sinfo, cooperating_responders=self.cfg.cooperating_responders
            )
            self._zcs.append((iface, azc, sinfo))
            self._browsers.append(
                AsyncServiceBrowser(azc.zeroconf, [SERVICE_TYPE], handlers=[self._on_change])
            )
        _log.info("mdns_announced", interfaces=[f"{i.name}={i.ip}" for i in interfaces])

    async def update(self, info: MemberInfo) -> None:
        """Re-announce after our info changed (e.g. incarnation)."""
        updated = []
        for iface, azc, old in self._zcs:
            sinfo = AsyncServiceInfo(
                SERVICE_TYPE,
                old.name,
                addresses=[socket.inet_aton(iface.ip)],
                port=info.router_port,
                properties=txt_for(info, self.mesh_id),
                server=old.server,
            )
            await azc.async_update_service(sinfo)
            updated.append((iface, azc, sinfo))
        self._zcs = updated

    def _on_change(
        self,
        zeroconf: Zeroconf,
        service_type: str,
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        if state_change is ServiceStateChange.Removed:
            return  # never a liveness signal
        task = asyncio.get_running_loop().create_task(self._resolve(zeroconf, service_type, name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resolve(self, zc: Zeroconf, service_type: str, name: str) -> None:
        sinfo = AsyncServiceInfo(service_type, name)
        if not await sinfo.async_request(zc, 3000):
            return
        props = sinfo.properties or {}
        if (props.get(b"mesh") or b"").decode(errors="replace") != self.mesh_id:
            self.foreign_records += 1
            return
        try:
            info = info_from_txt(props, sinfo.parsed_addresses(IPVersion.V4Only))
        except (KeyError, ValueError, UnicodeDecodeError):
            self.bad_records += 1
            _log.debug("mdns_bad_record", name=name)
            return
        self.on_found(info)

    async def close(self) -> None:
        for browser in self._browsers:
            await browser.async_cancel()
        for task in list(self._tasks):
            task.cancel()
        for _iface, azc, sinfo in self._zcs:
            try:
                await azc.async_unregister_service(sinfo)
            finally:
                await azc.async_close()
        self._zcs.clear()
