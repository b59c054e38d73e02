"""A live node (real sockets, in-process) facing bad input: counted, dropped, nothing lost."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import msgpack
import pytest

from meshd import config
from meshd.client import Client
from meshd.daemon.node import Node
from meshd.errors import ControlError
from meshd.roles import get_role
from meshd.wire import codec
from meshd.wire.messages import Envelope, Heartbeat, Hello, MsgType, Ping

pytestmark = pytest.mark.integration


def node_config(peers: tuple[str, ...] = (), token: str | None = None) -> config.Config:
    cfg = config.test()
    return replace(
        cfg,
        node=replace(
            cfg.node, listen_host="127.0.0.1", listen_port=0, peers=peers, join_token=token
        ),
        discovery=replace(cfg.discovery, mdns=False),
    )


async def until(pred: Callable[[], bool], timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():
        assert loop.time() < end, "condition not reached in time"
        await asyncio.sleep(0.02)


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[Node, Node]]:
    a = Node(node_config(), tmp_path / "a", get_role("devops"))
    await a.start()
    token = a.mesh.token()
    seed = f"127.0.0.1:{a.self_info.router_port}"
    b = Node(node_config((seed,), token), tmp_path / "b", get_role("observer"))
    await b.start()
    try:
        await until(lambda: _alive(a, b) and _alive(b, a))
        yield a, b
    finally:
        await b.shutdown()
        await a.shutdown()


def _alive(x: Node, y: Node) -> bool:
    view = x.core.get(y.identity.node_id)
    return view is not None and view.state.value == "alive"


def envelope(sender: Node, payload: object, msg_type: MsgType | None = None) -> bytes:
    from meshd.wire.messages import PAYLOAD_TYPES

    env = Envelope(
        msg_type=msg_type or PAYLOAD_TYPES[type(payload)],
        msg_id=os.urandom(16),
        sender=sender.identity.node_id,
        timestamp_ms=1,
        payload=payload,  # type: ignore[arg-type]
    )
    return codec.encode(env)


async def test_bad_frames_are_counted_and_dropped(pair: tuple[Node, Node]) -> None:
    a, b = pair
    a_id = a.identity.node_id
    stored_before = {p.record.info.node_id for p in a.store.load_peers()}
    good = envelope(b, Ping(seq=0))
    bad = {
        "truncated": good[:-3],
        "malformed": b"\x93\x01\x02\x03",
        "oversized": b"\x00" * (a.cfg.transport.max_frame + 1),
        "version": msgpack.packb([2, 1, b"x" * 16]),
        "unknown_type": msgpack.packb(
            [1, 999, os.urandom(16), b.identity.node_id, 1, None, 0, {}], use_bin_type=True
        ),
    }
    for data in bad.values():
        assert b.transport.send(a_id, data)
    await until(lambda: all(a.transport.counters.rejected.get(r, 0) >= 1 for r in bad))
    # Still linked and alive both ways; a valid message after the garbage still works.
    assert _alive(a, b) and _alive(b, a)
    rtt = await b.peer_ping(a_id)
    assert rtt > 0
    assert {p.record.info.node_id for p in a.store.load_peers()} >= stored_before


async def test_a_member_cannot_speak_for_another(pair: tuple[Node, Node]) -> None:
    a, b = pair
    forged = Envelope(
        msg_type=MsgType.PING,
        msg_id=os.urandom(16),
        sender="f" * 32,  # somebody else
        timestamp_ms=1,
        payload=Ping(seq=0),
    )
    b.transport.send(a.identity.node_id, codec.encode(forged))
    await until(lambda: a.transport.counters.rejected.get("spoofed_sender", 0) >= 1)
    # HELLO carrying info with a broken proof is refused too.
    bad_info = replace(b.core.self_info, proof=b"\x00" * 32)
    b.transport.send(a.identity.node_id, envelope(b, Hello(bad_info)))
    await until(lambda: a.transport.counters.rejected.get("admission", 0) >= 1)
    assert _alive(a, b)


async def test_published_frame_under_the_wrong_topic_is_dropped(pair: tuple[Node, Node]) -> None:
    a, b = pair
    hb = envelope(b, Heartbeat(incarnation=1, digest=b"", members=1))

    async def spam() -> None:
        while a.transport.counters.rejected.get("topic_mismatch", 0) < 1:
            b.transport.publish(codec.topic_for(MsgType.LEAVE), hb)
            await asyncio.sleep(0.02)

    await asyncio.wait_for(spam(), 20)
    assert _alive(a, b)  # the mislabelled frame was not taken as a LEAVE


async def test_control_socket_rejects_garbage_and_unknown_ops(pair: tuple[Node, Node]) -> None:
    a, _ = pair
    path = a.state_dir / "control.sock"
    assert (path.stat().st_mode & 0o777) == 0o600

    def raw(payload: bytes) -> dict[str, object]:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(path))
            s.sendall(struct.pack(">I", len(payload)) + payload)
            (n,) = struct.unpack(">I", s.recv(4))
            data = b""
            while len(data) < n:
                data += s.recv(n - len(data))
        reply: dict[str, object] = msgpack.unpackb(data, raw=False)
        return reply

    loop = asyncio.get_running_loop()
    reply = await loop.run_in_executor(None, raw, b"\xc1garbage")
    assert reply["ok"] is False and reply["error"]["code"] == "bad_request"  # type: ignore[index]
    reply = await loop.run_in_executor(None, raw, msgpack.packb({"v": 9, "op": "status"}))
    assert reply["error"]["code"] == "bad_version"  # type: ignore[index]

    def call(op: str, **kw: object) -> object:
        with Client(a.state_dir) as c:
            return c.call(op, **kw)

    with pytest.raises(ControlError, match="unknown operation"):
        await loop.run_in_executor(None, call, "format_disk")
    with pytest.raises(ControlError, match="unknown peer"):
        await loop.run_in_executor(None, lambda: call("peer_ping", peer="nobody"))
    status = await loop.run_in_executor(None, call, "status")
    assert status["peers"][0]["state"] == "alive"  # type: ignore[index]


async def test_restart_keeps_identity_and_rejoins_from_stored_peers(tmp_path: Path) -> None:
    a = Node(node_config(), tmp_path / "a", get_role("devops"))
    await a.start()
    seed = f"127.0.0.1:{a.self_info.router_port}"
    b = Node(node_config((seed,), a.mesh.token()), tmp_path / "b", get_role("observer"))
    await b.start()
    try:
        await until(lambda: _alive(a, b) and _alive(b, a))
        b_id, b_inc = b.identity.node_id, b.self_info.incarnation
        await b.shutdown()
        await until(lambda: a.core.get(b_id) is not None and not _alive(a, b))
        # Restart WITHOUT the seed: the stored peers are enough to rejoin.
        b = Node(node_config(), tmp_path / "b", get_role("observer"))
        await b.start()
        assert b.identity.node_id == b_id
        assert b.self_info.incarnation > b_inc
        await until(lambda: _alive(a, b) and _alive(b, a))
    finally:
        await b.shutdown()
        await a.shutdown()


async def test_mdns_record_with_a_copied_proof_is_refused(pair: tuple[Node, Node]) -> None:
    from meshd.identity import Identity

    a, b = pair
    thief = Identity.generate()
    # b's genuine admission proof, pasted into a record with the thief's own keys.
    forged = replace(
        b.core.self_info,
        node_id=thief.node_id,
        ed25519_pk=thief.ed25519_pk,
        curve_pk=thief.curve_pk,
        name="thief",
    )
    before = a.transport.counters.rejected.get("admission", 0)
    a._on_mdns(forged)
    assert a.transport.counters.rejected.get("admission", 0) == before + 1
    assert not a.transport.is_admitted(thief.curve_pk)
    assert a.core.get(thief.node_id) is None
    assert thief.node_id not in {i.node_id for i in a.core.candidates()}


async def test_a_refused_admission_is_audited_once_per_source(pair: tuple[Node, Node]) -> None:
    a, b = pair
    # b's own record with a forged proof, as a host that is not a member might advertise.
    forged = replace(b.self_info, proof=bytes(32))
    a._on_mdns(forged)
    a._on_mdns(forged)  # a retry within the minute: counted, not recorded again
    await a.commit.durable()  # audit records are written with the loop turn's batch
    records = a.store.read_audit(kind="ADMISSION_REFUSED")
    assert len(records) == 1
    assert records[0]["via"] == "mdns" and records[0]["claimed"] == b.identity.node_id
    assert a.transport.counters.rejected.get("admission") == 2
    # The real member is still there, nothing lost.
    assert _alive(a, b)
