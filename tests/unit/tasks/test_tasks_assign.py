"""The assignment order as table tests: each criterion decides only when the earlier tie."""

from __future__ import annotations

from dataclasses import replace

import pytest

from meshd.tasks.assign import AgentView, choose_agent, rank_agents
from meshd.tasks.model import new_task
from meshd.wire.records import Requirement, Task

NOW = 1_700_000_000.0


def agent(node_id: str, **kw: object) -> AgentView:
    base = AgentView(
        node_id=node_id,
        name=f"host-{node_id}",
        role="worker",
        capabilities=frozenset({"compute"}),
        skills=frozenset({"echo"}),
        priority=10,
        load=0,
        max_concurrent=2,
        last_assigned_at=None,
        alive=True,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def task(**kw: object) -> Task:
    return new_task("echo", {}, "origin", NOW, **kw)  # type: ignore[arg-type]


# (case, requirement, agents, expected winner). In each row the earlier criteria tie, so the
# named criterion decides; agents are listed in an order that would mislead a naive pick.
ORDER_CASES: list[tuple[str, Requirement, list[AgentView], str | None]] = [
    ("skill installed", Requirement(), [agent("a", skills=frozenset()), agent("b")], "b"),
    ("role", Requirement(role="gpu"), [agent("a", priority=99), agent("b", role="gpu")], "b"),
    (
        "capability",
        Requirement(capability="camera"),
        [agent("a"), agent("b", capabilities=frozenset({"camera"}))],
        "b",
    ),
    ("node by id", Requirement(node="b"), [agent("a", priority=99), agent("b")], "b"),
    ("node by name", Requirement(node="host-b"), [agent("a"), agent("b")], "b"),
    ("alive", Requirement(), [agent("a", alive=False, priority=99), agent("b")], "b"),
    ("under limit", Requirement(), [agent("a", load=2, priority=99), agent("b", load=1)], "b"),
    ("priority", Requirement(), [agent("a", priority=5), agent("b", priority=6, load=1)], "b"),
    (
        "lowest load",
        Requirement(),
        [agent("a", load=1, last_assigned_at=1.0), agent("b", load=0, last_assigned_at=9.0)],
        "b",
    ),
    (
        "least recently used",
        Requirement(),
        [agent("a", last_assigned_at=NOW - 1), agent("b", last_assigned_at=NOW - 5)],
        "b",
    ),
    (
        "never used first",
        Requirement(),
        [agent("a", last_assigned_at=NOW - 100), agent("b", last_assigned_at=None)],
        "b",
    ),
    ("node id tie-break", Requirement(), [agent("c"), agent("b")], "b"),
    ("none capable", Requirement(role="gpu"), [agent("a"), agent("b")], None),
    ("none available", Requirement(), [agent("a", load=2), agent("b", alive=False)], None),
    ("no agents", Requirement(), [], None),
]


@pytest.mark.parametrize(
    ("requirement", "agents", "winner"),
    [c[1:] for c in ORDER_CASES],
    ids=[c[0] for c in ORDER_CASES],
)
def test_assignment_order(
    requirement: Requirement, agents: list[AgentView], winner: str | None
) -> None:
    chosen = choose_agent(task(requirement=requirement), agents, NOW)
    assert (chosen.node_id if chosen else None) == winner
    # The order never depends on the order the views arrive in.
    chosen_rev = choose_agent(task(requirement=requirement), agents[::-1], NOW)
    assert chosen_rev == chosen


def test_full_ranking_and_exclusion_reasons() -> None:
    agents = [
        agent("a", priority=1),
        agent("b", skills=frozenset({"ocr"})),
        agent("c", role="gpu"),
        agent("d", load=2),
        agent("e", alive=False),
        agent("f", priority=3),
        agent("g"),
    ]
    r = rank_agents(task(requirement=Requirement(role="worker")), agents, NOW, exclude={"g"})
    assert [a.node_id for a in r.order] == ["f", "a"]
    reasons = {e.agent.node_id: (e.reason, e.capable) for e in r.excluded}
    assert reasons == {
        "b": ("skill 'echo' not installed", False),
        "c": ("role 'worker' required (has 'gpu')", False),
        "d": ("busy (2/2 tasks)", True),
        "e": ("not alive", True),
        "g": ("rejected this attempt", True),
    }
    assert r.best is not None and r.best.node_id == "f" and r.explain() == ""


def test_explain_no_capable_vs_no_available() -> None:
    r = rank_agents(task(requirement=Requirement(capability="camera")), [agent("a")], NOW)
    assert not r.any_capable
    assert r.explain() == "no capable agent: host-a: capability 'camera' missing"
    r = rank_agents(task(), [agent("a", load=2), agent("b", skills=frozenset())], NOW)
    assert r.any_capable
    assert r.explain() == (
        "no available agent: host-a: busy (2/2 tasks); host-b: skill 'echo' not installed"
    )
    assert rank_agents(task(), [], NOW).explain() == "no agents known"


def test_excluded_rejecters_are_skipped() -> None:
    agents = [agent("a", priority=99), agent("b")]
    chosen = choose_agent(task(), agents, NOW, exclude={"a"})
    assert chosen is not None and chosen.node_id == "b"
    assert choose_agent(task(), agents, NOW, exclude={"a", "b"}) is None
