"""Every event kind wakes the ``events`` long-poll: real daemons, a real client.

Three daemons; a client of one of them listens (``Client.listen``); another daemon is
killed with SIGKILL. The listener must see ``AGENT_FAILED`` for it promptly: within 0.5 s
of the moment its own node marked the peer dead (the event's ``at``), not whenever the
long-poll happens to time out (it waits up to 10 s per call).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import Mesh, all_see_all, wait_for

pytestmark = pytest.mark.integration

#: s. Longest the listener may learn of a death after its node recorded it.
MAX_LAG = 0.5


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    m = Mesh(tmp_path)
    try:
        yield m
    finally:
        m.close()


def test_agent_failed_reaches_a_listener_at_once(mesh: Mesh) -> None:
    a = mesh.add("a", role="team-lead").start()
    a.wait_ready()
    others = [mesh.add(n, peers=(a.seed,)).start() for n in ("b", "c")]
    for d in others:
        d.wait_ready()
    daemons = [a, *others]
    wait_for(lambda: all_see_all(daemons), what="3 nodes to see each other")
    victim = others[1]
    victim_id = victim.node_id

    seen: list[tuple[float, dict[str, Any]]] = []
    started = threading.Event()

    def on_failed(event: dict[str, Any]) -> None:
        if event.get("node") == victim_id:
            seen.append((time.time(), event))

    def listen() -> None:
        with a.client() as c:
            c.on("AGENT_FAILED", on_failed)
            started.set()
            # Each long-poll waits up to 10 s: a listener woken only by its timeout would
            # see the death up to 10 s late.
            c.listen(duration=30.0, until=lambda: bool(seen))

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    assert started.wait(10)
    # Failure detection takes ~1 s: the listener's long-poll is waiting by then.
    victim.kill9()
    listener.join(40)
    assert not listener.is_alive(), "the listener never returned"
    assert seen, f"no AGENT_FAILED for the killed node\n{mesh.logs()}"
    received, event = seen[0]
    lag = received - float(event["at"])
    assert event["type"] == "AGENT_FAILED" and event["state"] == "dead"
    assert lag <= MAX_LAG, f"AGENT_FAILED reached the listener {lag:.3f} s after its node knew"
    # The survivor's status agrees.
    assert a.peer_states()[victim_id] == "dead"
