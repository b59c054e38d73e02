"""Which agent runs a task: the assignment order, as pure functions.

The order, each criterion deciding only when all earlier ones tie:

1. **capable**: the task's required node, role and capability match, and the skill is
   installed on the agent;
2. **available**: the agent is alive and under its concurrency limit;
3. highest agent **priority**;
4. lowest **load** (tasks it holds now);
5. **least recently used** (an agent never assigned anything comes first);
6. node id, so every lead makes the same choice from the same views.

:func:`rank_agents` also says why each other agent was left out, for messages such as
``no capable agent: a: skill 'ocr' not installed; b: role 'gpu' required``.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from meshd.wire.records import Task


@dataclass(frozen=True, slots=True)
class AgentView:
    """What the lead knows of one agent when it assigns."""

    node_id: str
    name: str
    role: str
    capabilities: frozenset[str]
    skills: frozenset[str]
    priority: int
    #: Tasks the agent holds now (assigned or running).
    load: int
    max_concurrent: int
    #: Wall epoch seconds of its last assignment; None: never assigned anything.
    last_assigned_at: float | None = None
    alive: bool = True


@dataclass(frozen=True, slots=True)
class Exclusion:
    """An agent left out, and why. ``capable`` False: it can never run this task (as
    things stand); True: it could, but not now (dead, busy, rejected this attempt)."""

    agent: AgentView
    reason: str
    capable: bool


@dataclass(frozen=True, slots=True)
class Ranking:
    """The result of :func:`rank_agents`: the usable agents, best first, and the others."""

    order: tuple[AgentView, ...]
    excluded: tuple[Exclusion, ...]

    @property
    def best(self) -> AgentView | None:
        return self.order[0] if self.order else None

    @property
    def any_capable(self) -> bool:
        """True if some agent could run the task, now or later."""
        return bool(self.order) or any(e.capable for e in self.excluded)

    def explain(self) -> str:
        """Why no agent was chosen, e.g. for ``meshctl`` ('' when there is one)."""
        if self.order:
            return ""
        if not self.excluded:
            return "no agents known"
        head = "no available agent" if self.any_capable else "no capable agent"
        parts = "; ".join(f"{e.agent.name or e.agent.node_id}: {e.reason}" for e in self.excluded)
        return f"{head}: {parts}"


def incapable_reason(task: Task, agent: AgentView) -> str | None:
    """Why ``agent`` can never run ``task`` (None if it can)."""
    req = task.requirement
    if req.node is not None and req.node not in (agent.node_id, agent.name):
        return f"not node {req.node!r}"
    if req.role is not None and agent.role != req.role:
        return f"role {req.role!r} required (has {agent.role!r})"
    if req.capability is not None and req.capability not in agent.capabilities:
        return f"capability {req.capability!r} missing"
    if task.skill not in agent.skills:
        return f"skill {task.skill!r} not installed"
    return None


def unavailable_reason(agent: AgentView) -> str | None:
    """Why a capable ``agent`` cannot take a task now (None if it can)."""
    if not agent.alive:
        return "not alive"
    if agent.load >= agent.max_concurrent:
        return f"busy ({agent.load}/{agent.max_concurrent} tasks)"
    return None


def _order_key(agent: AgentView) -> tuple[int, int, float, str]:
    last = agent.last_assigned_at
    return (-agent.priority, agent.load, float("-inf") if last is None else last, agent.node_id)


def rank_agents(
    task: Task,
    agents: Sequence[AgentView],
    now: float,
    *,
    exclude: Collection[str] = (),
) -> Ranking:
    """Every agent that may take ``task`` now, best first, and the others with reasons.
    ``exclude``: node ids left out on purpose (they rejected this attempt)."""
    del now  # part of the signature: views are a snapshot taken at ``now``
    usable: list[AgentView] = []
    excluded: list[Exclusion] = []
    for agent in agents:
        why = incapable_reason(task, agent)
        if why is not None:
            excluded.append(Exclusion(agent, why, capable=False))
            continue
        if agent.node_id in exclude:
            excluded.append(Exclusion(agent, "rejected this attempt", capable=True))
            continue
        why = unavailable_reason(agent)
        if why is not None:
            excluded.append(Exclusion(agent, why, capable=True))
            continue
        usable.append(agent)
    usable.sort(key=_order_key)
    excluded.sort(key=lambda e: e.agent.node_id)
    return Ranking(tuple(usable), tuple(excluded))


def choose_agent(
    task: Task,
    agents: Sequence[AgentView],
    now: float,
    *,
    exclude: Collection[str] = (),
) -> AgentView | None:
    """The agent that should run ``task`` now, or None (see :func:`rank_agents`)."""
    return rank_agents(task, agents, now, exclude=exclude).best
