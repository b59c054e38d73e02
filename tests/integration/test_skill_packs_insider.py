"""A compromised member (it holds the mesh key and its own node key) against real daemons:
it cannot revoke another member's key, an announce flood does not grow the catalog, and a
large pack served as garbage is refused with bounded memory.

The insider is a :class:`~meshd.daemon.node.Node` run in this test's process (so that it
can send crafted messages); the daemons it attacks are real ``meshd`` processes. Every
blocking call to a daemon runs in a thread, so the insider keeps its links alive.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from harness import DEADLINE, Daemon, Mesh, all_see_all, run_meshctl

from meshd import config
from meshd.daemon.node import Node
from meshd.identity import Identity
from meshd.roles import get_role
from meshd.skills import revocation as rev
from meshd.wire.messages import SkillAnnounce, SkillChunk, SkillFetch, SkillRevoke
from meshd.wire.records import PackInfo, RevocationKind

pytestmark = pytest.mark.integration

MIB = 1024 * 1024


def ctl(d: Daemon, *args: str) -> Any:
    return run_meshctl("--state-dir", str(d.state_dir), *args, timeout=60)


def proc_status(d: Daemon) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of the daemon's process, in bytes."""
    assert d.proc is not None
    out = {}
    for line in Path(f"/proc/{d.proc.pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


async def until(pred: Callable[[], Any], what: str, timeout: float = DEADLINE) -> Any:
    """Poll ``pred`` (run in a thread: it may call a daemon) until it is truthy."""
    end = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(pred)
        if value:
            return value
        assert time.monotonic() < end, f"timed out after {timeout:.0f} s waiting for {what}"
        await asyncio.sleep(0.1)


def rejected(d: Daemon) -> dict[str, int]:
    return dict(d.status()["counters"]["rejected"])


def names(d: Daemon) -> dict[str, str]:
    rows = json.loads(ctl(d, "skill", "list", "--json").stdout)
    return {r["name"]: r["version"] for r in rows if r["node"] == d.name}


def audit(d: Daemon, kind: str) -> list[dict[str, Any]]:
    with d.client() as c:
        records: list[dict[str, Any]] = c.audit(kind=kind)
    return records


async def start_daemons(mesh: Mesh, roles: list[tuple[str, str]]) -> list[Daemon]:
    name, role = roles[0]
    first = mesh.add(name, role=role).start()
    await asyncio.to_thread(first.wait_ready)
    nodes = [first] + [mesh.add(n, role=r, peers=(first.seed,)).start() for n, r in roles[1:]]
    for d in nodes:
        await asyncio.to_thread(d.wait_ready)
    await until(lambda: all_see_all(nodes), "mesh to form")
    return nodes


@asynccontextmanager
async def insider(mesh: Mesh, seed: Daemon, daemons: list[Daemon]) -> AsyncIterator[Node]:
    """A member started from the mesh's join token, in this process, seen alive by every
    daemon; shut down (by this fixture) at the end."""
    cfg = config.test()
    cfg = replace(
        cfg,
        node=replace(
            cfg.node,
            name="mallory",
            listen_host="127.0.0.1",
            listen_port=0,
            peers=(seed.seed,),
            join_token=mesh.token,
        ),
        discovery=replace(cfg.discovery, mdns=False),
    )
    node = Node(cfg, mesh.root / "mallory", get_role("observer"))
    await node.start()
    try:
        me = node.identity.node_id
        await until(
            lambda: all(d.peer_states().get(me) == "alive" for d in daemons),
            "the daemons to see the insider",
        )
        yield node
    finally:
        await node.shutdown()


SLOW = """
import time


def run(ctx):
    time.sleep(0.1)
    return {"done": True}
"""


async def test_a_member_cannot_revoke_another_members_key(mesh: Mesh, tmp_path: Path) -> None:
    a, b = await start_daemons(mesh, [("a", "team-lead"), ("b", "network-admin")])
    # a publishes a pack it signed; b installs it.
    folder = tmp_path / "tool"
    out = await asyncio.to_thread(run_meshctl, "skill", "new", "tool", "--dir", str(folder))
    assert out.returncode == 0, out.stderr
    (folder / "main.py").write_text(SLOW)
    archive = tmp_path / "tool.pack"
    assert (
        await asyncio.to_thread(ctl, a, "skill", "pack", str(folder), "-o", str(archive))
    ).returncode == 0
    assert (await asyncio.to_thread(ctl, a, "skill", "install", str(archive))).returncode == 0
    assert (await asyncio.to_thread(ctl, a, "skill", "publish", "tool")).returncode == 0
    await until(lambda: "tool" in names(b), "b to install a's pack")
    described = json.loads(
        (await asyncio.to_thread(ctl, b, "skill", "describe", "tool", "--json")).stdout
    )
    a_key = bytes.fromhex(described["signer"])
    pack_id = described["pack_id"]

    async with insider(mesh, a, [a, b]) as mallory:
        me = mallory.identity
        before = await asyncio.to_thread(rejected, b)
        # Signed by the insider: well-formed, but it may revoke only its own key and packs.
        not_entitled = SkillRevoke(
            (
                rev.sign(RevocationKind.KEY, a_key.hex(), 1, me.ed25519_pk, me.sign),
                rev.sign(RevocationKind.PACK, pack_id, 1, me.ed25519_pk, me.sign),
            )
        )
        # Claiming to be a's key, signed with the insider's: the signature fails.
        forged = rev.sign(RevocationKind.KEY, a_key.hex(), 1, me.ed25519_pk, me.sign)
        forged = replace(forged, by=a_key)
        # A key nobody trusts revoking itself: not kept (it would fill the list).
        stranger = Identity.generate()
        unknown = rev.sign(
            RevocationKind.KEY, stranger.ed25519_pk.hex(), 1, stranger.ed25519_pk, stranger.sign
        )
        b_id = b.node_id
        mallory.send(b_id, not_entitled)
        mallory.send(b_id, SkillRevoke((forged, unknown)))
        mallory.publish(not_entitled)

        def counted() -> bool:
            now = rejected(b)
            return (
                now.get(rev.NOT_ENTITLED, 0) - before.get(rev.NOT_ENTITLED, 0) >= 2
                and now.get(rev.BAD_SIGNATURE, 0) - before.get(rev.BAD_SIGNATURE, 0) >= 1
                and now.get(rev.UNKNOWN_SIGNER, 0) - before.get(rev.UNKNOWN_SIGNER, 0) >= 1
            )

        await until(counted, "b to count the refused revocations")
        await until(lambda: rejected(a).get(rev.NOT_ENTITLED, 0) >= 2, "a to count them too")
        # Nothing changed: the pack is installed and runs on both.
        assert "tool" in await asyncio.to_thread(names, b)
        assert "tool" in await asyncio.to_thread(names, a)
        out = await asyncio.to_thread(ctl, a, "delegate", "tool", "--node", "b", "--json")
        assert out.returncode == 0, out.stderr
        assert not await asyncio.to_thread(audit, b, "SKILL_KEY_REVOKED")
        # Audited (at most once a minute per member and reason), naming who sent it.
        refused = await asyncio.to_thread(audit, b, "SKILL_REVOKE_REFUSED")
        reasons = {r["reason"] for r in refused if r["sent_by"] == me.node_id}
        assert reasons == {rev.NOT_ENTITLED, rev.BAD_SIGNATURE, rev.UNKNOWN_SIGNER}
        assert {r["sent_by_name"] for r in refused} == {"mallory"}

        # The key's holder may revoke it: a signs the revocation of its own key.
        out = await asyncio.to_thread(ctl, a, "skill", "revoke", "--key", a_key.hex())
        assert out.returncode == 0, out.stderr
        await until(lambda: "tool" not in names(b), "b to disable the pack of the revoked key")
        done = await asyncio.to_thread(audit, b, "SKILL_KEY_REVOKED")
        assert done[-1]["key"] == a_key.hex() and done[-1]["by"] == a_key.hex()
        assert done[-1]["by_name"] == "a" and done[-1]["sent_by_name"] == "a"


def flood(names_from: int, count: int, signer: bytes) -> SkillAnnounce:
    packs = tuple(
        PackInfo(
            f"flood-{names_from + i}",
            "1.0.0",
            hashlib.sha256(f"{names_from + i}".encode()).hexdigest(),
            10,
            signer,
            {"name": f"flood-{names_from + i}", "version": "1.0.0", "description": "x" * 200},
        )
        for i in range(count)
    )
    return SkillAnnounce(packs, False)


async def test_an_announce_flood_does_not_grow_the_catalog(mesh: Mesh) -> None:
    (a,) = await start_daemons(mesh, [("a", "team-lead")])
    async with insider(mesh, a, [a]) as mallory:
        a_id = a.node_id
        untrusted = Identity.generate().ed25519_pk
        rss_before = await asyncio.to_thread(proc_status, a)
        # 150 deltas of 1,000 new names each, signed by a key nobody trusts; sent in
        # batches, each counted before the next (so none is lost to a full queue).
        for batch in range(15):
            for i in range(10):
                mallory.send(a_id, flood((batch * 10 + i) * 1000, 1000, untrusted))
            want = (batch + 1) * 10 * 1000
            await until(
                lambda w=want: rejected(a).get("announce_untrusted_signer", 0) >= w,  # type: ignore[misc]
                f"a to refuse {want} announced packs",
            )
        rss_after = await asyncio.to_thread(proc_status, a)
        rows = json.loads(
            (await asyncio.to_thread(ctl, a, "skill", "list", "--mesh", "--json")).stdout
        )
        assert not [r for r in rows if r["name"].startswith("flood-")]
        growth = rss_after["VmRSS"] - rss_before["VmRSS"]
        print(
            f"announce flood: VmRSS {rss_before['VmRSS'] / MIB:.1f} -> "
            f"{rss_after['VmRSS'] / MIB:.1f} MiB, VmHWM {rss_after['VmHWM'] / MIB:.1f} MiB"
        )
        assert growth < 32 * MIB, growth
        # Signed by the insider's own (trusted) key: kept up to max_packs_per_member.
        limit = config.SkillsConfig().max_packs_per_member
        mallory.send(a_id, flood(10**6, 1000, mallory.identity.ed25519_pk))
        await until(
            lambda: rejected(a).get("announce_over_member_limit", 0) >= 1000 - limit,
            "a to refuse the packs over the member limit",
        )
        rows = json.loads(
            (await asyncio.to_thread(ctl, a, "skill", "list", "--mesh", "--json")).stdout
        )
        # (the insider's own inventory counts against the same limit)
        assert len([r for r in rows if r["node"] == "mallory"]) == limit


async def test_a_large_pack_served_as_garbage_is_refused_with_bounded_memory(
    mesh: Mesh,
) -> None:
    (a,) = await start_daemons(mesh, [("a", "team-lead")])
    size = config.SkillsConfig().max_pack_bytes  # 32 MiB: the largest a pack may be
    async with insider(mesh, a, [a]) as mallory:
        served = {"bytes": 0}

        def garbage(sender: str, req: SkillFetch, msg_id: bytes) -> None:
            n = max(0, min(req.length, size - req.offset))
            served["bytes"] += n
            chunk = SkillChunk(req.pack_id, req.offset, size, b"\xee" * n)
            mallory.send(sender, chunk, correlation_id=msg_id)

        mallory.packs._on_fetch = garbage  # type: ignore[method-assign]
        ids = [os.urandom(32).hex() for _ in range(3)]
        big = tuple(
            PackInfo(
                f"big{i}", "1.0.0", pid, size, mallory.identity.ed25519_pk, {"name": f"big{i}"}
            )
            for i, pid in enumerate(ids)
        )
        before = await asyncio.to_thread(proc_status, a)
        # A publication of three 32 MiB packs: two are fetched at once (max_fetch_bytes
        # 64 MiB), the third is refused as busy.
        mallory.publish(SkillAnnounce(big, False))
        await until(
            lambda: rejected(a).get("fetch_hash_mismatch", 0) >= 2,
            "a to refuse both fetched packs",
            timeout=max(DEADLINE, 120),
        )
        after = await asyncio.to_thread(proc_status, a)
        counts = await asyncio.to_thread(rejected, a)
        assert counts.get("fetch_busy", 0) >= 1, counts
        assert served["bytes"] == 2 * size  # the two were streamed in whole
        growth = after["VmHWM"] - before["VmRSS"]
        print(
            f"garbage fetch: VmRSS before {before['VmRSS'] / MIB:.1f} MiB, VmHWM after "
            f"{after['VmHWM'] / MIB:.1f} MiB (peak growth {growth / MIB:.1f} MiB for "
            f"{2 * size / MIB:.0f} MiB fetched)"
        )
        assert growth < 64 * MIB, growth
        # Nothing installed, no partial file left, the refusal audited with its sender.
        assert not [n for n in await asyncio.to_thread(names, a) if n.startswith("big")]
        fetch_dir = a.state_dir / "skills" / ".fetch"
        assert not fetch_dir.exists() or not list(fetch_dir.iterdir())
        refused = await asyncio.to_thread(audit, a, "SKILL_REFUSED")
        assert {r["code"] for r in refused} == {"hash_mismatch"}
        assert {r["source_name"] for r in refused} == {"mallory"}
