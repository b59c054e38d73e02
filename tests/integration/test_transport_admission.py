"""Admission on real CURVE sockets: members talk, outsiders get nothing in and nothing out;
half-done handshakes are cut after the handshake timeout; refusals are audited, rate-limited,
and never counted as frames."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import pytest
import zmq
import zmq.asyncio
from zmq.utils import z85

from meshd.clock import SystemClock
from meshd.config import TransportConfig
from meshd.daemon.admission import Admission
from meshd.daemon.events import EventLog
from meshd.identity import Identity, MeshKey
from meshd.net.transport import ZmqTransport as Transport

pytestmark = pytest.mark.integration

CFG = replace(TransportConfig(), admission_wait=0.5, intro_timeout=1.0)


class Inbox:
    def __init__(self) -> None:
        self.frames: list[tuple[bytes, str, str | None]] = []
        self.intros: list[tuple[bytes, str | None]] = []

    def on_frame(
        self, data: bytes, via: str, auth: str | None, rid: bytes | None, topic: bytes | None
    ) -> None:
        self.frames.append((data, via, auth))

    def on_intro(self, data: bytes, user: str | None) -> bytes | None:
        self.intros.append((data, user))
        return b"welcome"


@asynccontextmanager
async def transport(
    mesh: MeshKey, cfg: TransportConfig = CFG
) -> AsyncIterator[tuple[Transport, Inbox, Identity]]:
    ident = Identity.generate()
    inbox = Inbox()
    t = Transport(ident, mesh, cfg, inbox.on_frame, inbox.on_intro)
    await t.start("127.0.0.1", 0)
    try:
        yield t, inbox, ident
    finally:
        await t.close()


async def until(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    end = asyncio.get_running_loop().time() + timeout
    while not pred():
        if asyncio.get_running_loop().time() > end:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.01)


def link(a: Transport, a_id: Identity, b: Transport, b_id: Identity) -> None:
    a.admit(b_id.curve_pk, b_id.node_id)
    a.connect_peer(b_id.node_id, b_id.curve_pk, "127.0.0.1", b.router_port, b.pub_port)


async def test_members_exchange_direct_and_published_messages() -> None:
    mesh = MeshKey.generate()
    async with transport(mesh) as (t1, in1, id1), transport(mesh) as (t2, in2, id2):
        link(t1, id1, t2, id2)
        link(t2, id2, t1, id1)
        assert t1.send(id2.node_id, b"direct-1-to-2")
        await until(lambda: any(f[0] == b"direct-1-to-2" for f in in2.frames))
        _, via, auth = next(f for f in in2.frames if f[0] == b"direct-1-to-2")
        # The ROUTER tells us who really sent it: the node id bound to the CURVE key.
        assert via == "router" and auth == id1.node_id

        async def published() -> None:
            while not any(f[0] == b"broadcast" for f in in1.frames):
                t2.publish(b"\x00\x02", b"broadcast")
                await asyncio.sleep(0.02)

        await asyncio.wait_for(published(), 10)
        assert next(f for f in in1.frames if f[0] == b"broadcast")[1:] == ("sub", id2.node_id)


async def test_handshake_is_held_until_the_key_is_vouched_for() -> None:
    mesh = MeshKey.generate()
    async with transport(mesh) as (t1, _, id1), transport(mesh) as (t2, in2, id2):
        # t1 knows t2, but t2 does not know t1 yet: the handshake waits (not refused).
        link(t1, id1, t2, id2)
        t1.send(id2.node_id, b"early")
        await asyncio.sleep(0.1)
        assert in2.frames == []
        t2.admit(id1.curve_pk, id1.node_id)  # e.g. gossip arrives
        await until(lambda: [f[0] for f in in2.frames] == [b"early"])


async def test_outsider_gets_nothing_in_and_nothing_out() -> None:
    mesh, other = MeshKey.generate(), MeshKey.generate()
    async with transport(mesh) as (t1, in1, id1), transport(other) as (t3, in3, id3):
        # The outsider knows t1's public CURVE key (it is in the mDNS record) and tries
        # both directions: sending to t1's ROUTER and listening on t1's PUB.
        link(t3, id3, t1, id1)
        for _ in range(5):
            t3.send(id1.node_id, b"inject")
        await until(lambda: t1.counters.zap_refused >= 2)  # ROUTER and PUB handshakes
        for _ in range(20):
            t1.publish(b"\x00\x02", b"secret-heartbeat")
            await asyncio.sleep(0.01)
        assert in1.frames == []
        assert in3.frames == []
        assert not t1.is_admitted(id3.curve_pk)


async def test_intro_socket_needs_the_mesh_key() -> None:
    mesh, other = MeshKey.generate(), MeshKey.generate()
    async with transport(mesh) as (t1, in1, _), transport(mesh) as (t2, _, id2):
        reply = await t2.intro("127.0.0.1", t1.intro_port, b"hello", timeout=5)
        assert reply == b"welcome"
        # The handshake key is reported with the message, so the INTRO's claimed key
        # can be checked against it.
        assert in1.intros == [(b"hello", id2.curve_pk.hex())]
    async with transport(mesh) as (t1, in1, _), transport(other) as (t3, _, _):
        assert await t3.intro("127.0.0.1", t1.intro_port, b"hello", timeout=1.0) is None
        assert in1.intros == []


async def test_raw_client_with_random_key_reads_nothing_from_pub() -> None:
    mesh = MeshKey.generate()
    async with transport(mesh) as (t1, _, id1):
        ctx = zmq.asyncio.Context()
        sub = ctx.socket(zmq.SUB)
        pk, sk = zmq.curve_keypair()
        sub.curve_serverkey = z85.encode(id1.curve_pk)
        sub.curve_publickey, sub.curve_secretkey = pk, sk
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(f"tcp://127.0.0.1:{t1.pub_port}")
        try:
            await until(lambda: t1.counters.zap_refused >= 1)
            for _ in range(20):
                t1.publish(b"\x00\x02", b"secret")
                await asyncio.sleep(0.01)
            assert await sub.poll(200) == 0
        finally:
            sub.close(0)
            ctx.term()


async def test_full_send_queue_drops_instead_of_blocking() -> None:
    mesh = MeshKey.generate()
    cfg = replace(CFG, hwm=10)
    ident = Identity.generate()
    t = Transport(ident, mesh, cfg, lambda *a: None, lambda *a: None)
    await t.start("127.0.0.1", 0)
    try:
        # A peer that never answers (nothing listens there): sends must not block.
        dead = Identity.generate()
        t.connect_peer(dead.node_id, dead.curve_pk, "127.0.0.1", 9, 9)
        results = [t.send(dead.node_id, b"x" * 100) for _ in range(1000)]
        assert results.count(True) <= 100
        assert t.counters.dropped_out == results.count(False) > 0
    finally:
        await t.close()


# ---- handshake timeout ---------------------------------------------------------------------

#: A ZMTP 3 greeting is 64 bytes; this is its signature and major version only.
PARTIAL_GREETING = b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03"


async def until_closed(reader: asyncio.StreamReader) -> None:
    """Read (the node's own greeting) until the node closes the connection."""
    with contextlib.suppress(ConnectionError):
        while await reader.read(4096):
            pass


async def test_a_partial_greeting_is_cut_after_the_handshake_timeout() -> None:
    mesh = MeshKey.generate()
    cfg = replace(CFG, handshake_timeout=300)
    async with transport(mesh, cfg) as (t1, in1, _):
        for port in (t1.router_port, t1.pub_port, t1.intro_port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            started = time.monotonic()
            try:
                writer.write(PARTIAL_GREETING)
                await writer.drain()

                await asyncio.wait_for(until_closed(reader), 10)
            finally:
                writer.close()
            elapsed = time.monotonic() - started
            assert 0.2 <= elapsed < 10, elapsed  # held no longer than the timeout, give or take
        await until(lambda: t1.counters.handshakes_failed >= 3)
        assert t1.counters.frames_in == 0 and in1.frames == [] and in1.intros == []
        assert t1.counters.zap_refused == 0  # never reached the ZAP handler


async def test_a_handshake_held_past_the_timeout_still_gets_in_once_admitted() -> None:
    # The admission hold outlives one handshake: the member's libzmq reconnects after the
    # timeout and the new attempt is held (and then admitted) in turn.
    mesh = MeshKey.generate()
    cfg = replace(CFG, handshake_timeout=200, admission_wait=10.0)
    async with transport(mesh, cfg) as (t1, _, id1), transport(mesh, cfg) as (t2, in2, id2):
        link(t1, id1, t2, id2)
        t1.send(id2.node_id, b"early")
        await until(lambda: t2.counters.handshakes_failed >= 1)  # a held attempt timed out
        assert in2.frames == [] and t2.counters.zap_refused == 0
        t2.admit(id1.curve_pk, id1.node_id)
        await until(lambda: [f[0] for f in in2.frames] == [b"early"])
        assert t2.counters.zap_refused == 0


async def test_a_held_key_is_refused_admission_wait_after_its_first_attempt() -> None:
    mesh = MeshKey.generate()
    cfg = replace(CFG, handshake_timeout=200, admission_wait=1.0)
    async with transport(mesh, cfg) as (t1, _, id1), transport(mesh, cfg) as (t2, in2, id2):
        started = time.monotonic()
        link(t1, id1, t2, id2)  # t2 never learns of t1
        t1.send(id2.node_id, b"never")
        await until(lambda: t2.counters.zap_refused >= 1)
        assert 0.9 <= time.monotonic() - started < 10
        await until(lambda: t2.counters.handshakes_failed >= 1)  # timed out while held
        assert in2.frames == [] and t2.counters.frames_in == 0


# ---- refused handshakes: audited, rate-limited, not frames -------------------------------------


class _Gate:
    def __init__(self, t: Transport) -> None:
        self.t = t

    def admit(self, curve_pk: bytes, node_id: str) -> None:
        self.t.admit(curve_pk, node_id)

    def reject(self, reason: str) -> None:
        self.t.counters.reject(reason)


async def test_a_refused_curve_client_is_audited_once_a_minute_and_never_counted_in() -> None:
    mesh = MeshKey.generate()
    async with transport(mesh) as (t1, in1, id1):
        audit: list[dict[str, Any]] = []
        events = EventLog(SystemClock(), id1.node_id, audit=audit.append)
        admission = Admission(id1.node_id, mesh, _Gate(t1), events, SystemClock())
        t1.on_refused = admission.handshake_refused
        ctx = zmq.asyncio.Context()
        tries = 4
        try:
            for i in range(tries):  # an outsider retrying, a fresh key on every try
                dealer = ctx.socket(zmq.DEALER)
                pk, sk = zmq.curve_keypair()
                dealer.curve_serverkey = z85.encode(id1.curve_pk)
                dealer.curve_publickey, dealer.curve_secretkey = pk, sk
                dealer.setsockopt(zmq.LINGER, 0)
                dealer.connect(f"tcp://127.0.0.1:{t1.router_port}")
                await dealer.send(b"inject", zmq.NOBLOCK)
                try:
                    await until(lambda i=i: t1.counters.zap_refused >= i + 1)
                finally:
                    dealer.close(0)
        finally:
            ctx.term()
        refusals = [r for r in audit if r["type"] == "ADMISSION_REFUSED"]
        assert len(refusals) == 1, refusals
        (rec,) = refusals
        assert (rec["via"], rec["address"]) == ("handshake", "127.0.0.1")
        assert len(rec["key"]) == 64
        assert t1.counters.zap_refused == tries
        assert t1.counters.frames_in == 0 and in1.frames == []
        assert t1.counters.rejected == {}
