"""Whole daemons in one process, on the in-memory transport (no sockets between them).

The same :class:`~meshd.daemon.node.Node` as ``meshd start`` (LMDB store, control socket,
skill runner, packs), wired to :class:`~meshd.net.memory.MemoryTransport`: a fast check
that the shell's parts work together through their ports — a mesh forms through a seed,
a task delegated on one node runs and its result comes back, events reach a waiting
long-poll as they happen, and a node that disappears is declared dead.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import pytest

from meshd import config
from meshd.client import Client
from meshd.daemon.node import Node
from meshd.identity import Identity, MeshKey
from meshd.net.base import FrameHandler, IntroHandler, Transport
from meshd.net.memory import MemoryNetwork
from meshd.roles import get_role


def node_config(peers: tuple[str, ...] = (), token: str | None = None) -> config.Config:
    cfg = config.test()
    return replace(
        cfg,
        node=replace(
            cfg.node, listen_host="127.0.0.1", listen_port=0, peers=peers, join_token=token
        ),
        discovery=replace(cfg.discovery, mdns=False),
        store=replace(cfg.store, fsync=False),
    )


def on(net: MemoryNetwork) -> Callable[..., Transport]:
    def make(
        identity: Identity,
        mesh: MeshKey,
        cfg: config.TransportConfig,
        on_frame: FrameHandler,
        on_intro: IntroHandler,
    ) -> Transport:
        return net.transport(identity.curve_pk, on_frame, on_intro)

    return make


async def until(pred: Callable[[], bool], timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():
        assert loop.time() < end, "condition not reached in time"
        await asyncio.sleep(0.01)


def alive(x: Node, y: Node) -> bool:
    view = x.core.get(y.identity.node_id)
    return view is not None and view.state.value == "alive"


@pytest.fixture
async def trio(tmp_path: Path) -> AsyncIterator[list[Node]]:
    net = MemoryNetwork()
    a = Node(node_config(), tmp_path / "a", get_role("team-lead"), transport=on(net))
    await a.start()
    seed = f"127.0.0.1:{a.self_info.router_port}"
    token = a.mesh.token()
    rest = [
        Node(node_config((seed,), token), tmp_path / n, get_role("observer"), transport=on(net))
        for n in ("b", "c")
    ]
    for n in rest:
        await n.start()
    nodes = [a, *rest]
    try:
        await until(lambda: all(alive(x, y) for x in nodes for y in nodes if x is not y))
        await until(lambda: all(n.core.election.lead == a.identity.node_id for n in nodes))
        yield nodes
    finally:
        for n in nodes:
            if getattr(n, "store", None) is not None:
                await n.shutdown()


async def test_a_mesh_forms_and_a_delegated_task_comes_back(trio: list[Node]) -> None:
    a, b, _ = trio
    view = await b.delegation.delegate({"skill": "echo", "params": {"message": "hi"}})
    tid = view["id"]
    machine = b.delegation.machine

    def complete() -> bool:
        task = machine.get(tid)
        return task is not None and task.state.value == "complete"

    await until(complete)
    done = b.delegation.view(tid)
    assert done["result"]["message"] == "hi"
    # Every node holds the same copy; the lead assigned it to an agent.
    await until(lambda: all((n.delegation.machine.get(tid) is not None) for n in trio))
    assert done["assigned_to"] in {n.identity.node_id for n in trio}
    assert a.status()["tasks"]["totals"]["complete"] >= 1


async def test_every_event_kind_reaches_a_waiting_long_poll(trio: list[Node]) -> None:
    a, _, c = trio
    cursor = a.events.newest_at()
    waiting = asyncio.create_task(a.events.wait(cursor, 10.0))
    await asyncio.sleep(0)
    # c vanishes without a word (its links drop, it sends no LEAVE).
    await c._teardown()
    events = await asyncio.wait_for(waiting, 10.0)
    assert events, "the long-poll returned nothing"
    # The first events after the cursor: suspicion or failure of c, whatever comes first.
    kinds = {e["type"] for e in events}
    assert kinds & {"AGENT_SUSPECT", "AGENT_FAILED"}, kinds
    await until(lambda: not alive(a, c))
    await until(lambda: a.core.get(c.identity.node_id).state.value == "dead")  # type: ignore[union-attr]
    failed = [e for e in a.events.since(cursor) if e["type"] == "AGENT_FAILED"]
    assert failed and failed[0]["node"] == c.identity.node_id


async def test_the_control_socket_answers_typed_calls(trio: list[Node]) -> None:
    a = trio[0]

    def call() -> dict[str, object]:
        with Client(a.state_dir) as client:
            return client.status()

    status = await asyncio.get_running_loop().run_in_executor(None, call)
    assert status["self"]["id"] == a.identity.node_id  # type: ignore[index]
    assert status["counts"]["alive"] == 2  # type: ignore[index]
