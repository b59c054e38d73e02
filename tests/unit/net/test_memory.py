"""The in-process transport (meshd.net.memory): delivery, admission, replies,
broadcasts, intro, close."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from meshd.net.base import Transport
from meshd.net.memory import ADMISSION_WAIT, MemoryNetwork, MemoryTransport

HOST = "10.0.0.1"
#: s. Bound on every wait for something that must happen (never reached when it does).
PATIENCE = 5.0

Frame = tuple[bytes, str, "str | None", "bytes | None", "bytes | None"]


@dataclass
class Peer:
    """One node on the network: its transport, ports and what it received."""

    node_id: str
    key: bytes
    transport: MemoryTransport = field(init=False)
    ports: tuple[int, int, int] = (0, 0, 0)
    frames: list[Frame] = field(default_factory=list)
    intros: list[tuple[bytes, str | None]] = field(default_factory=list)

    def on_frame(
        self, data: bytes, via: str, user: str | None, rid: bytes | None, topic: bytes | None
    ) -> None:
        self.frames.append((data, via, user, rid, topic))

    def on_intro(self, data: bytes, key_hex: str | None) -> bytes | None:
        self.intros.append((data, key_hex))
        return b"welcome:" + data

    def link_to(self, other: Peer) -> bool:
        return self.transport.connect_peer(
            other.node_id, other.key, HOST, other.ports[0], other.ports[1]
        )

    def admit(self, other: Peer) -> None:
        self.transport.admit(other.key, other.node_id)


class Net:
    def __init__(self) -> None:
        self.net = MemoryNetwork()
        self.peers: list[Peer] = []

    async def peer(self, name: str, admission_wait: float = ADMISSION_WAIT) -> Peer:
        n = len(self.peers) + 1
        p = Peer(f"{name}-{n:02d}", bytes([n]) * 32)
        p.transport = self.net.transport(p.key, p.on_frame, p.on_intro, admission_wait)
        p.ports = await p.transport.start(HOST, 0)
        self.peers.append(p)
        return p

    async def close(self) -> None:
        for p in self.peers:
            await p.transport.close()


@pytest.fixture
async def net() -> AsyncIterator[Net]:
    n = Net()
    yield n
    await n.close()


async def until(cond: Callable[[], bool], timeout: float = PATIENCE) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        if loop.time() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.001)


async def turns(n: int = 3) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def linked(net: Net) -> tuple[Peer, Peer]:
    """a linked to b, each admitting the other."""
    a, b = await net.peer("a"), await net.peer("b")
    a.admit(b)
    b.admit(a)
    assert a.link_to(b) is True
    return a, b


# ---- basics ------------------------------------------------------------------------------------


def test_memory_transport_is_a_transport() -> None:
    net = MemoryNetwork()
    t: Transport = net.transport(b"k" * 32, lambda *a: None, lambda d, k: None)
    assert t.counters.frames_in == 0


async def test_start_hands_out_three_consecutive_ports(net: Net) -> None:
    a = await net.peer("a")
    b = await net.peer("b")
    base = a.ports[0]
    assert a.ports == (base, base + 1, base + 2)
    assert b.ports[0] not in a.ports


async def test_a_port_in_use_is_refused(net: Net) -> None:
    a = await net.peer("a")
    other = net.net.transport(b"z" * 32, lambda *x: None, lambda d, k: None)
    with pytest.raises(OSError, match="in use"):
        await other.start(HOST, a.ports[0])


# ---- direct frames ------------------------------------------------------------------------------


async def test_a_frame_is_delivered_on_a_later_turn_never_inside_send(net: Net) -> None:
    a, b = await linked(net)
    assert a.transport.send(b.node_id, b"hello") is True
    assert b.frames == []  # not inside send()
    await asyncio.sleep(0)
    assert b.frames == [(b"hello", "router", a.node_id, a.transport.rid, None)]
    assert a.transport.counters.frames_out == 1
    assert b.transport.counters.frames_in == 1


async def test_frames_keep_their_order(net: Net) -> None:
    a, b = await linked(net)
    for i in range(5):
        a.transport.send(b.node_id, bytes([i]))
    await turns()
    assert [f[0] for f in b.frames] == [bytes([i]) for i in range(5)]


async def test_the_sender_is_authenticated_as_the_admitted_node_id(net: Net) -> None:
    a, b = await net.peer("a"), await net.peer("b")
    b.transport.admit(a.key, "the-name-b-knows")
    a.link_to(b)
    a.transport.send(b.node_id, b"x")
    await turns()
    assert [f[2] for f in b.frames] == ["the-name-b-knows"]


async def test_a_frame_from_an_unadmitted_key_waits_for_admission(net: Net) -> None:
    a, b = await net.peer("a"), await net.peer("b")
    a.link_to(b)
    a.transport.send(b.node_id, b"early")
    await turns(5)
    await asyncio.sleep(0.03)  # a few retries: still held, not dropped
    assert b.frames == []
    assert b.transport.counters.zap_refused == 0
    b.admit(a)
    await until(lambda: bool(b.frames))
    assert b.frames == [(b"early", "router", a.node_id, a.transport.rid, None)]
    assert b.transport.counters.zap_refused == 0


async def test_a_frame_not_admitted_in_time_is_dropped_and_counted(net: Net) -> None:
    a = await net.peer("a")
    b = await net.peer("b", admission_wait=0.05)
    a.link_to(b)
    a.transport.send(b.node_id, b"never")
    await until(lambda: b.transport.counters.zap_refused == 1)
    b.admit(a)  # too late for that frame
    await turns(5)
    assert b.frames == []
    assert b.transport.counters.frames_in == 0
    a.transport.send(b.node_id, b"now")  # the next one goes through
    await until(lambda: bool(b.frames))
    assert [f[0] for f in b.frames] == [b"now"]


async def test_a_reply_by_routing_id_reaches_the_sender_via_dealer(net: Net) -> None:
    a, b = await linked(net)
    a.transport.send(b.node_id, b"ping")
    await until(lambda: bool(b.frames))
    rid = b.frames[0][3]
    assert rid is not None
    # b has no link to a: the reply goes back through b's inbound endpoint
    assert b.transport.send(a.node_id, b"pong", routing_id=rid) is True
    assert a.frames == []
    await asyncio.sleep(0)
    assert a.frames == [(b"pong", "dealer", b.node_id, None, None)]


async def test_send_with_no_link_and_no_routing_id_is_dropped(net: Net) -> None:
    a = await net.peer("a")
    assert a.transport.send("nobody", b"x") is False
    assert a.transport.send("nobody", b"x", routing_id=b"\x00\x00\x00\x00\x63") is False
    assert a.transport.counters.dropped_out == 2
    assert a.transport.counters.frames_out == 0


# ---- publish ------------------------------------------------------------------------------------


async def test_publish_reaches_only_subscribers_the_publisher_admitted(net: Net) -> None:
    pub = await net.peer("pub")
    ok = await net.peer("ok")
    stranger = await net.peer("stranger")
    pub.admit(ok)  # pub never admits the stranger
    ok.link_to(pub)
    stranger.link_to(pub)
    pub.transport.publish(b"members", b"news")
    assert ok.frames == []  # never inside publish()
    await asyncio.sleep(0)
    assert ok.frames == [(b"news", "sub", pub.node_id, None, b"members")]
    await turns()
    assert stranger.frames == []


async def test_publish_does_not_reach_a_peer_that_did_not_subscribe(net: Net) -> None:
    pub = await net.peer("pub")
    quiet = await net.peer("quiet")
    pub.admit(quiet)  # admitted, but never connected to pub
    pub.transport.publish(b"t", b"news")
    await turns()
    assert quiet.frames == []


async def test_disconnect_ends_the_subscription(net: Net) -> None:
    pub = await net.peer("pub")
    sub = await net.peer("sub")
    pub.admit(sub)
    sub.link_to(pub)
    sub.transport.disconnect_peer(pub.node_id)
    pub.transport.publish(b"t", b"news")
    await turns()
    assert sub.frames == []


# ---- intro --------------------------------------------------------------------------------------


async def test_intro_answers_with_the_handlers_reply_and_the_callers_key(net: Net) -> None:
    a, seed = await net.peer("a"), await net.peer("seed")
    reply = await a.transport.intro(HOST, seed.ports[2], b"INTRO", timeout=PATIENCE)
    assert reply == b"welcome:INTRO"
    assert seed.intros == [(b"INTRO", a.key.hex())]
    assert seed.transport.counters.frames_in == 1


async def test_intro_to_no_endpoint_times_out_with_none(net: Net) -> None:
    a = await net.peer("a")
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await a.transport.intro(HOST, 9, b"INTRO", timeout=0.02) is None
    assert loop.time() - start >= 0.015


# ---- links to nowhere and close -----------------------------------------------------------------


async def test_connect_to_a_wrong_key_returns_true_but_delivers_nothing(net: Net) -> None:
    a, b = await net.peer("a"), await net.peer("b")
    b.admit(a)
    wrong = b"\xee" * 32
    assert a.transport.connect_peer(b.node_id, wrong, HOST, b.ports[0], b.ports[1]) is True
    a.transport.send(b.node_id, b"x")
    await turns(5)
    assert b.frames == []
    assert b.transport.counters.frames_in == 0


async def test_connect_to_no_endpoint_returns_true_but_delivers_nothing(net: Net) -> None:
    a, b = await net.peer("a"), await net.peer("b")
    b.admit(a)
    assert a.transport.connect_peer(b.node_id, b.key, HOST, 9, 10) is True
    a.transport.send(b.node_id, b"x")
    await turns(5)
    assert b.frames == []


async def test_connect_to_a_dead_endpoint_again_the_same_way_returns_false(net: Net) -> None:
    a = await net.peer("a")
    assert a.transport.connect_peer("ghost", b"\xee" * 32, HOST, 9, 10) is True
    assert a.transport.connect_peer("ghost", b"\xee" * 32, HOST, 9, 10) is False


async def test_send_over_a_link_to_a_dead_endpoint_is_queued_like_zmq(net: Net) -> None:
    a = await net.peer("a")
    a.transport.connect_peer("ghost", b"\xee" * 32, HOST, 9, 10)
    assert a.transport.send("ghost", b"x") is True
    assert a.transport.counters.dropped_out == 0


async def test_connect_again_the_same_way_returns_false(net: Net) -> None:
    a, b = await linked(net)
    assert a.link_to(b) is False


async def test_connect_to_moved_endpoints_relinks(net: Net) -> None:
    a, b = await linked(net)
    c = await net.peer("c")
    c.admit(a)
    # b's node id now answers at c's address with c's key (a restart elsewhere)
    assert a.transport.connect_peer(b.node_id, c.key, HOST, c.ports[0], c.ports[1]) is True
    a.transport.send(b.node_id, b"x")
    await turns()
    assert b.frames == []
    assert [f[0] for f in c.frames] == [b"x"]


async def test_close_unregisters_the_endpoints(net: Net) -> None:
    a, b = await linked(net)
    port = b.ports[0]
    await b.transport.close()
    assert await a.transport.intro(HOST, b.ports[2], b"INTRO", timeout=0.01) is None
    again = net.net.transport(b"\x77" * 32, lambda *x: None, lambda d, k: None)
    assert await again.start(HOST, port) == (port, port + 1, port + 2)  # free again
    await again.close()


async def test_a_closed_transport_neither_sends_nor_receives(net: Net) -> None:
    a, b = await linked(net)
    await b.transport.close()
    a.transport.send(b.node_id, b"to-closed")
    await turns()
    assert b.frames == []
    assert b.transport.send(a.node_id, b"from-closed") is False
    b.transport.publish(b"t", b"x")
    await turns()
    assert a.frames == []


async def test_frames_in_flight_to_a_closing_transport_are_dropped(net: Net) -> None:
    a, b = await linked(net)
    a.transport.send(b.node_id, b"in-flight")
    await b.transport.close()
    await turns()
    assert b.frames == []


async def test_close_twice_is_harmless(net: Net) -> None:
    a = await net.peer("a")
    await a.transport.close()
    await a.transport.close()
