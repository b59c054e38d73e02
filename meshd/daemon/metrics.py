"""Metrics: per-agent and mesh-wide task figures, this node's counters, Prometheus export.

Two parts (the HTTP server that serves them is :mod:`meshd.net.http`):

- :func:`collect` builds a JSON-ready dict from a node's core, transport counters and
  skill statistics (what ``meshctl status --json`` shows under ``"metrics"``).
  Per-agent and mesh-wide figures come from the task copies this node holds (every node
  holds a copy of every task, so every node reports the same mesh figures, give or take
  replication lag); the figures of this node come from its transport counters, its
  skill executor and its election.
  One pass over the tasks, a few dict updates per task: cheap enough for every status
  call and every scrape (about 16 ms for 10k tasks on one slow core).
- :func:`prometheus_text` renders such a dict in the Prometheus text exposition format
  0.0.4 (names prefixed ``meshd_``; counters end in ``_total``).

Definitions (per agent = the node a task is or was ``assigned_to``):

- *completed*: tasks whose result stands (COMPLETE without a verify step, or VERIFIED);
  *failed*: tasks in FAILED. A task counts for the agent it was assigned to last; a task
  that failed before any assignment (deadline, dependency, denied) counts only mesh-wide.
- *success rate*: completed / (completed + failed); None before any finished.
- *duration* of a completed task: from the first ASSIGNED/RUNNING entry of its last
  attempt (the run of consecutive ASSIGNED/RUNNING history entries just before COMPLETE:
  a hand-off stays in it, an earlier timed-out attempt and its retry backoff do not) to
  its COMPLETE entry; *mean duration* is over the completed tasks. None before any.
- *completed per hour*: completed tasks whose COMPLETE entry is less than an hour old.
- *load*: tasks ASSIGNED or RUNNING now.
- *queue depth* (mesh): tasks PENDING, RETRY or WAITING_APPROVAL.

History timestamps are wall-clock seconds of the node that recorded each step, so a
duration is only as good as the mesh's clock agreement; negative ones count as 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, Final

from meshd import __version__
from meshd.core import Core
from meshd.net.base import Counters
from meshd.skills.executor import SkillStats
from meshd.wire.records import ACTIVE_STATES, TaskState, Transition

#: s. Window of the "completed per hour" figures.
THROUGHPUT_WINDOW: Final = 3600.0

_COMPLETE = TaskState.COMPLETE
_VERIFIED = TaskState.VERIFIED
_FAILED = TaskState.FAILED
_QUEUED: Final = frozenset({TaskState.PENDING, TaskState.RETRY, TaskState.WAITING_APPROVAL})


# ---- collection ---------------------------------------------------------------------------


class _Tally:
    """Running figures of one agent (or of the whole mesh)."""

    __slots__ = ("completed", "duration_n", "duration_sum", "failed", "load", "recent")

    def __init__(self) -> None:
        self.completed = 0
        self.failed = 0
        self.duration_sum = 0.0
        self.duration_n = 0
        self.recent = 0
        self.load = 0

    def to_dict(self) -> dict[str, Any]:
        finished = self.completed + self.failed
        return {
            "completed": self.completed,
            "failed": self.failed,
            "success_rate": self.completed / finished if finished else None,
            "mean_duration_s": self.duration_sum / self.duration_n if self.duration_n else None,
            "completed_last_hour": self.recent,
            "load": self.load,
        }


def completion(history: tuple[Transition, ...]) -> tuple[float | None, float | None]:
    """``(duration, completed_at)`` of a task from its history: the COMPLETE entry's time,
    and the seconds from the first ASSIGNED/RUNNING entry of the run just before it (see
    the module docstring); ``(None, None)`` without a COMPLETE entry."""
    for i, step in enumerate(history):
        if step.state is _COMPLETE:
            j = i
            while j > 0 and history[j - 1].state in ACTIVE_STATES:
                j -= 1
            if j == i:
                return None, step.at
            return max(0.0, step.at - history[j].at), step.at
    return None, None


def task_figures(
    tasks: Iterable[Any], now: float
) -> tuple[dict[str, _Tally], _Tally, dict[str, int]]:
    """One pass over ``tasks`` (:class:`~meshd.wire.records.Task`): per-agent tallies,
    the mesh tally, and the task count by state (every state present, 0 or more)."""
    agents: dict[str, _Tally] = {}
    mesh = _Tally()
    by_state = {s: 0 for s in TaskState}
    since = now - THROUGHPUT_WINDOW
    for task in tasks:
        state = task.state
        by_state[state] += 1
        holder = task.assigned_to
        if state is _FAILED:
            mesh.failed += 1
            if holder is not None:
                agent = agents.get(holder)
                if agent is None:
                    agent = agents[holder] = _Tally()
                agent.failed += 1
        elif state in ACTIVE_STATES:
            mesh.load += 1
            if holder is not None:
                agent = agents.get(holder)
                if agent is None:
                    agent = agents[holder] = _Tally()
                agent.load += 1
        elif state is _VERIFIED or (state is _COMPLETE and not task.verify):
            duration, at = completion(task.history)
            if at is None:
                at = task.updated_at
            recent = at >= since
            tallies = [mesh]
            if holder is not None:
                agent = agents.get(holder)
                if agent is None:
                    agent = agents[holder] = _Tally()
                tallies.append(agent)
            for t in tallies:
                t.completed += 1
                if recent:
                    t.recent += 1
                if duration is not None:
                    t.duration_sum += duration
                    t.duration_n += 1
    return agents, mesh, {s.value: n for s, n in by_state.items()}


def collect(
    core: Core,
    counters: Counters,
    skills: Mapping[str, SkillStats],
    *,
    done_here: int,
    failed_here: int,
    started_wall: float,
    now: float,
    now_wall: float,
    loop: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """JSON-ready metrics of a started node (schema in the module docstring and README):
    ``{"schema", "at", "node": {...}, "agents": {node_id: {...}}, "mesh": {...}}``.

    ``core``: the node's core (members, election, task copies); ``counters``: its
    transport's; ``skills``: its runner's statistics; ``done_here`` / ``failed_here``:
    tasks that ended on this node since it started; ``now`` monotonic, ``now_wall`` wall.
    """
    me = core.self_info
    st = core.status(now)

    # Members: this node counts as alive; names and roles for the agent table.
    members = {"alive": 1, "suspect": 0, "dead": 0, "left": 0}
    known: dict[str, tuple[str, str, str]] = {me.node_id: (me.name, me.role, "alive")}
    for view in core.members():
        info = view.info
        state = view.state.value
        members[state] = members.get(state, 0) + 1
        known[info.node_id] = (info.name, info.role, state)

    tasks: Iterable[Any] = ()
    if core.tasks is not None:
        tasks = (copy.task for copy in core.tasks.copies.values())
    per_skill = {
        skill: {
            "runs": stats.runs,
            "failures": stats.failures,
            "total_duration_s": stats.total_duration,
            "mean_duration_s": stats.mean_duration,
        }
        for skill, stats in skills.items()
    }
    tallies, mesh, by_state = task_figures(tasks, now_wall)

    agents: dict[str, dict[str, Any]] = {}
    for node_id in sorted(known.keys() | tallies.keys()):
        name, role, state = known.get(node_id) or (core.name_of(node_id), "", "unknown")
        tally = tallies.get(node_id) or _Tally()
        agents[node_id] = {"name": name, "role": role, "state": state, **tally.to_dict()}

    c = counters
    return {
        "schema": 1,
        "at": now_wall,
        "node": {
            "id": me.node_id,
            "name": me.name,
            "role": me.role,
            "version": __version__,
            "uptime_s": round(max(0.0, now_wall - started_wall), 3),
            "term": st.term,
            "election_role": st.role.value,
            "lead": st.lead,
            "is_lead": st.lead == me.node_id,
            "members": members,
            "messages_in": c.frames_in,
            "messages_out": c.frames_out,
            "dropped_out": c.dropped_out,
            "zap_admitted": c.zap_admitted,
            "zap_refused": c.zap_refused,
            "handshakes_failed": c.handshakes_failed,
            "rejected": dict(c.rejected),
            "skills": per_skill,
            "tasks_completed": done_here,
            "tasks_failed": failed_here,
            "loop": dict(loop or {}),
        },
        "agents": agents,
        "mesh": {
            **mesh.to_dict(),
            "queue_depth": sum(by_state[s.value] for s in _QUEUED),
            "tasks": by_state,
            "total": sum(by_state.values()),
        },
    }


# ---- Prometheus text format ----------------------------------------------------------------

_Sample = tuple[dict[str, str], Any]


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    f = float(value)
    if math.isnan(f):
        return "NaN"
    if math.isinf(f):
        return "+Inf" if f > 0 else "-Inf"
    return repr(f)


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str, samples: Iterable[_Sample]) -> None:
        """One family: HELP, TYPE, then its samples (those with a None value are left
        out: an undefined ratio or mean has no sample rather than a made-up one)."""
        full = f"meshd_{name}"
        self.lines.append(f"# HELP {full} {_escape_help(help_text)}")
        self.lines.append(f"# TYPE {full} {kind}")
        for labels, value in samples:
            if value is None:
                continue
            if labels:
                inner = ",".join(f'{k}="{_escape_label(str(v))}"' for k, v in labels.items())
                self.lines.append(f"{full}{{{inner}}} {_number(value)}")
            else:
                self.lines.append(f"{full} {_number(value)}")

    def gauge(self, name: str, help_text: str, samples: Iterable[_Sample]) -> None:
        self.family(name, "gauge", help_text, samples)

    def counter(self, name: str, help_text: str, samples: Iterable[_Sample]) -> None:
        assert name.endswith("_total"), name
        self.family(name, "counter", help_text, samples)


def _ms(value: Any) -> float | None:
    return None if value is None else float(value) / 1000.0


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def prometheus_text(metrics: Mapping[str, Any]) -> str:
    """``metrics`` (as :func:`collect` returns it; missing parts are left out) in the
    Prometheus text exposition format 0.0.4. Per-agent series carry ``node`` (id) and
    ``name`` labels; this node's own series carry none (the scrape target names it)."""
    node = _map(metrics.get("node"))
    agents = _map(metrics.get("agents"))
    mesh = _map(metrics.get("mesh"))
    w = _Writer()
    one: dict[str, str] = {}

    w.gauge("up", "1 while the daemon answers.", [(one, 1)])
    if node:
        info = {
            "node": str(node.get("id", "")),
            "name": str(node.get("name", "")),
            "role": str(node.get("role", "")),
            "version": str(node.get("version", "")),
        }
        w.gauge("info", "This node: id, name, agent role and version (value 1).", [(info, 1)])
        w.gauge(
            "uptime_seconds", "Seconds since this daemon started.", [(one, node.get("uptime_s"))]
        )
        w.gauge("term", "Election term as this node sees it.", [(one, node.get("term"))])
        w.gauge("is_lead", "1 if this node is the mesh's lead.", [(one, node.get("is_lead"))])
        w.gauge(
            "has_lead",
            "1 if this node sees a lead (what /healthz reports).",
            [(one, node.get("lead") is not None)],
        )
        w.gauge(
            "members",
            "Mesh members by membership state, this node included (as alive).",
            [({"state": str(s)}, n) for s, n in sorted(_map(node.get("members")).items())],
        )
        w.counter(
            "messages_in_total",
            "Frames received from peers and handed to the node (handshakes never count).",
            [(one, node.get("messages_in"))],
        )
        w.counter(
            "messages_out_total",
            "Frames sent by this node's transport.",
            [(one, node.get("messages_out"))],
        )
        w.counter(
            "messages_dropped_total",
            "Outgoing frames dropped (peer unreachable or over its high-water mark).",
            [(one, node.get("dropped_out"))],
        )
        w.counter(
            "frames_rejected_total",
            "Incoming frames or records refused, by reason.",
            [({"reason": str(r)}, n) for r, n in sorted(_map(node.get("rejected")).items())],
        )
        w.counter(
            "zap_admitted_total",
            "CURVE handshakes admitted by the ZAP handler.",
            [(one, node.get("zap_admitted"))],
        )
        w.counter(
            "zap_refused_total",
            "CURVE handshakes refused by the ZAP handler.",
            [(one, node.get("zap_refused"))],
        )
        w.counter(
            "handshakes_failed_total",
            "Handshakes on the listening sockets that failed otherwise (timed out, "
            "malformed, wrong server key, client hung up).",
            [(one, node.get("handshakes_failed"))],
        )
        skills = sorted(_map(node.get("skills")).items())
        w.counter(
            "skill_runs_total",
            "Skill runs started on this node, by skill.",
            [({"skill": str(k)}, _map(v).get("runs")) for k, v in skills],
        )
        w.counter(
            "skill_failures_total",
            "Skill runs on this node that did not succeed, by skill.",
            [({"skill": str(k)}, _map(v).get("failures")) for k, v in skills],
        )
        w.counter(
            "skill_duration_seconds_total",
            "Seconds spent running each skill on this node.",
            [({"skill": str(k)}, _map(v).get("total_duration_s")) for k, v in skills],
        )
        w.counter(
            "local_tasks_completed_total",
            "Tasks this node completed since it started.",
            [(one, node.get("tasks_completed"))],
        )
        w.counter(
            "local_tasks_failed_total",
            "Tasks that failed on this node since it started.",
            [(one, node.get("tasks_failed"))],
        )
        loop = _map(node.get("loop"))
        if loop:
            w.gauge(
                "loop_lag_seconds_max",
                "Worst lateness of the event loop over the last minute.",
                [(one, _ms(loop.get("lag_ms_max")))],
            )
            w.gauge(
                "loop_lag_seconds_p99",
                "99th percentile lateness of the event loop over the last minute.",
                [(one, _ms(loop.get("lag_ms_p99")))],
            )
            w.counter(
                "loop_stalls_total",
                "Event loop stalls of 100 ms or more since the node started.",
                [(one, loop.get("stalls"))],
            )

    rows = sorted(agents.items())

    def per_agent(key: str) -> list[_Sample]:
        out: list[_Sample] = []
        for node_id, row in rows:
            row = _map(row)
            out.append(({"node": str(node_id), "name": str(row.get("name", ""))}, row.get(key)))
        return out

    if agents:
        w.gauge(
            "agent_info",
            "Every known agent: agent role and membership state (value 1).",
            [
                (
                    {
                        "node": str(node_id),
                        "name": str(_map(row).get("name", "")),
                        "role": str(_map(row).get("role", "")),
                        "state": str(_map(row).get("state", "")),
                    },
                    1,
                )
                for node_id, row in rows
            ],
        )
        w.counter(
            "tasks_completed_total",
            "Tasks completed by each agent (held task copies).",
            per_agent("completed"),
        )
        w.counter(
            "tasks_failed_total",
            "Tasks failed on each agent (held task copies).",
            per_agent("failed"),
        )
        w.gauge(
            "task_duration_seconds_mean",
            "Mean duration of each agent's completed tasks (assignment to completion).",
            per_agent("mean_duration_s"),
        )
        w.gauge(
            "task_success_ratio",
            "Completed / (completed + failed) tasks of each agent.",
            per_agent("success_rate"),
        )
        w.gauge(
            "tasks_completed_per_hour",
            "Tasks each agent completed in the last hour.",
            per_agent("completed_last_hour"),
        )
        w.gauge("agent_load", "Tasks assigned to or running on each agent.", per_agent("load"))

    if mesh:
        w.counter(
            "mesh_tasks_completed_total",
            "Tasks completed in the whole mesh.",
            [(one, mesh.get("completed"))],
        )
        w.counter(
            "mesh_tasks_failed_total",
            "Tasks failed in the whole mesh.",
            [(one, mesh.get("failed"))],
        )
        w.gauge(
            "mesh_task_duration_seconds_mean",
            "Mean duration of the mesh's completed tasks.",
            [(one, mesh.get("mean_duration_s"))],
        )
        w.gauge(
            "mesh_task_success_ratio",
            "Completed / (completed + failed) tasks in the whole mesh.",
            [(one, mesh.get("success_rate"))],
        )
        w.gauge(
            "mesh_tasks_completed_per_hour",
            "Tasks completed in the whole mesh in the last hour.",
            [(one, mesh.get("completed_last_hour"))],
        )
        w.gauge(
            "mesh_load", "Tasks assigned or running in the whole mesh.", [(one, mesh.get("load"))]
        )
        w.gauge(
            "queue_depth",
            "Tasks waiting: pending, retry backoff or operator approval.",
            [(one, mesh.get("queue_depth"))],
        )
        w.gauge(
            "tasks",
            "Tasks held by this node (the whole mesh's), by state.",
            [({"state": str(s)}, n) for s, n in sorted(_map(mesh.get("tasks")).items())],
        )
    return "\n".join(w.lines) + "\n"
