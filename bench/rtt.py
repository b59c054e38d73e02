"""Direct round trip through the full stack vs a raw pyzmq CURVE round trip, same run.

Full stack: node A's ``ping`` - envelope encode, CURVE DEALER -> B's ROUTER, ZAP-bound
sender check, decode, B's membership machine answers ACK, encode, B's DEALER -> A's ROUTER,
decode, match by correlation id. Raw: a pyzmq DEALER -> ROUTER echo with CURVE, bytes in,
same bytes back. Both run in one asyncio loop in one process; batches are interleaved so
both see the same machine noise.

    python bench/rtt.py --rounds 2000 --batches 10
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import zmq
import zmq.asyncio

from meshd import config, log
from meshd.daemon.node import Node
from meshd.roles import get_role


def cfg(peers: tuple[str, ...] = (), token: str | None = None) -> config.Config:
    c = config.test()
    return replace(
        c,
        node=replace(c.node, listen_host="127.0.0.1", listen_port=0, peers=peers, join_token=token),
        discovery=replace(c.discovery, mdns=False),
    )


async def raw_pair() -> tuple[zmq.asyncio.Context, zmq.asyncio.Socket, zmq.asyncio.Socket]:
    ctx = zmq.asyncio.Context()
    spk, ssk = zmq.curve_keypair()
    cpk, csk = zmq.curve_keypair()
    router = ctx.socket(zmq.ROUTER)
    router.curve_server = True
    router.curve_secretkey = ssk
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer = ctx.socket(zmq.DEALER)
    dealer.curve_serverkey = spk
    dealer.curve_publickey, dealer.curve_secretkey = cpk, csk
    dealer.connect(f"tcp://127.0.0.1:{port}")
    return ctx, router, dealer


async def raw_rounds(router: zmq.asyncio.Socket, dealer: zmq.asyncio.Socket, n: int) -> list[float]:
    payload = b"\x98" + b"x" * 90  # about the size of an encoded PING envelope
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await dealer.send(payload)
        rid, msg = await router.recv_multipart()
        await router.send_multipart([rid, msg])
        await dealer.recv()
        out.append(time.perf_counter() - t0)
    return out


async def main_async(rounds: int, batches: int) -> None:
    log.setup("warning", json=True)
    with tempfile.TemporaryDirectory(prefix="meshd-bench-") as tmp:
        a = Node(cfg(), Path(tmp) / "a", get_role("devops"))
        await a.start()
        b = Node(
            cfg((f"127.0.0.1:{a.self_info.router_port}",), a.mesh.token()),
            Path(tmp) / "b",
            get_role("observer"),
        )
        await b.start()
        ctx, router, dealer = await raw_pair()
        try:
            while a.core.get(b.identity.node_id) is None:
                await asyncio.sleep(0.01)
            b_id = b.identity.node_id
            for _ in range(200):  # warm up both paths
                await a.peer_ping(b_id)
            await raw_rounds(router, dealer, 200)
            full: list[float] = []
            raw: list[float] = []
            for _ in range(batches):
                for _ in range(rounds // batches):
                    full.append(await a.peer_ping(b_id))
                raw += await raw_rounds(router, dealer, rounds // batches)
        finally:
            dealer.close(0)
            router.close(0)
            ctx.term()
            await b.shutdown()
            await a.shutdown()

    def q(v: list[float], p: float) -> float:
        s = sorted(v)
        return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))] * 1e6

    print(f"raw pyzmq CURVE round trip:   p50 {q(raw, 50):6.1f} us  p99 {q(raw, 99):6.1f} us")
    print(f"meshd full-stack round trip:  p50 {q(full, 50):6.1f} us  p99 {q(full, 99):6.1f} us")
    p50, p99 = q(full, 50) / q(raw, 50), q(full, 99) / q(raw, 99)
    print(f"ratio full/raw: p50 {p50:.2f}x  p99 {p99:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2000)
    ap.add_argument("--batches", type=int, default=10)
    args = ap.parse_args()
    asyncio.run(main_async(args.rounds, args.batches))


if __name__ == "__main__":
    main()
