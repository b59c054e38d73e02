"""Heartbeat load stays bounded in big meshes: the period stretches with the mesh size."""

from __future__ import annotations

from dataclasses import replace

from meshd.config import MembershipConfig
from meshd.effects import MemberChanged
from meshd.sim import FakeNetwork, fake_info
from meshd.wire.records import MemberState


def heartbeats_per_node_per_second(n: int, cfg: MembershipConfig, seconds: float = 10.0) -> float:
    net = FakeNetwork(seed=3)
    ids = []
    for i in range(n):
        m = net.add_member(fake_info(f"n{i:02d}"), config=cfg)
        ids.append(m.self_id)
        net.announce(m.self_id)
    net.advance(2.0)
    before = net.stats["sent.Heartbeat"]
    deaths_before = sum(
        1
        for _, _, e in net.log
        if isinstance(e, MemberChanged) and e.record.state is MemberState.DEAD
    )
    net.advance(seconds)
    sent = net.stats["sent.Heartbeat"] - before  # one delivery per subscriber
    deaths = sum(
        1
        for _, _, e in net.log
        if isinstance(e, MemberChanged) and e.record.state is MemberState.DEAD
    )
    assert deaths == deaths_before, "a stretched period must not cause false DEAD verdicts"
    return sent / n / seconds


def test_small_mesh_keeps_the_configured_period() -> None:
    cfg = MembershipConfig()
    received = heartbeats_per_node_per_second(10, cfg)
    # 9 peers x 5 heartbeats/s each
    assert 40 <= received <= 50


def test_big_mesh_stays_within_the_receive_budget() -> None:
    budget = 20.0
    cfg = replace(MembershipConfig(), heartbeat_budget=budget)
    unscaled = replace(cfg, heartbeat_budget=0.0)
    received = heartbeats_per_node_per_second(20, cfg)
    assert received <= budget * 1.2
    assert heartbeats_per_node_per_second(20, unscaled) > 3 * budget
