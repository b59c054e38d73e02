"""Delegation requests on a live node: what ``meshctl delegate`` / ``task ...`` and
:class:`meshd.client.TaskHandle` ask, checked, handed to the core, and answered.

A request is checked completely before anything is stored (skill known, parameters
valid against its spec, role known, node known, dependencies known): a bad one raises
:class:`~meshd.errors.RequestError` with a precise message and code, and nothing
changes. A good one is submitted to the core; the answer waits until the new task is
durable (:meth:`meshd.daemon.commit.Commit.durable`). Watches are long-polls woken by
every stored change of their task.

Ports: :class:`Driver` (the core and a way to feed it), :class:`SkillCatalog` (what
skills the mesh knows), a :class:`~meshd.daemon.events.Waiters` for task watches, and a
resolver of peer names.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final, Protocol

from meshd.config import TaskConfig
from meshd.core import Core
from meshd.daemon.events import Waiters
from meshd.effects import Effect, OpDone
from meshd.errors import RequestError
from meshd.roles import Role
from meshd.skills.spec import SkillError, SkillSpec, validate_params
from meshd.tasks.machine import TaskMachine
from meshd.tasks.model import TaskError, new_task
from meshd.wire.messages import TaskOpKind
from meshd.wire.records import Requirement, Task, TaskState, is_terminal

#: s. Longest a control long-poll (task_watch, events) may wait.
MAX_WAIT: Final = 30.0
#: Most tasks in one ``delegate_many`` call (one control frame, one transaction).
MAX_BATCH: Final = 1000
#: s. How long a relayed operator command waits for the lead's answer.
OP_TIMEOUT: Final = 5.0


class Driver(Protocol):
    """The node as delegation sees it: its core, its clock, and a way to carry out what
    a core call returned."""

    @property
    def core(self) -> Core: ...

    def now(self) -> float: ...

    def apply(self, effects: Sequence[Effect]) -> None: ...


class SkillCatalog(Protocol):
    """The skills this node knows of: its own and those the mesh announced."""

    def skill_spec(self, name: str) -> SkillSpec | None: ...

    def known_names(self) -> list[str]: ...

    def revoked_skill(self, name: str) -> str: ...


def task_to_dict(
    task: Task, version: tuple[int, int] | None, names: Callable[[str], str]
) -> dict[str, Any]:
    """A task as ``meshctl``/the client show it (JSON-ready)."""
    req = task.requirement
    return {
        "id": task.task_id,
        "skill": task.skill,
        "params": task.params,
        "state": task.state.value,
        "terminal": is_terminal(task),
        "origin": task.origin,
        "origin_name": names(task.origin),
        "requirement": {"role": req.role, "capability": req.capability, "node": req.node},
        "priority": task.priority,
        "timeout_s": task.timeout_s,
        "deadline": task.deadline,
        "idempotent": task.idempotent,
        "verify": task.verify,
        "parent": task.parent,
        "depends_on": list(task.depends_on),
        "retry_count": task.retry_count,
        "retry_limit": task.retry_limit,
        "progress": {"pct": task.progress.pct, "message": task.progress.message},
        "has_checkpoint": task.checkpoint is not None,
        "result": task.result,
        "error": None
        if task.error is None
        else {"code": task.error.code, "message": task.error.message},
        "assigned_to": task.assigned_to,
        "assigned_name": names(task.assigned_to) if task.assigned_to else None,
        "attempt": task.attempt,
        "term": task.assignment.term if task.assignment else None,
        "created_at": task.created_at,
        "updated_at": task.updated_at,
        "history": [
            {"state": h.state.value, "at": h.at, "actor": h.actor, "reason": h.reason}
            for h in task.history
        ],
        "version": list(version) if version else None,
    }


def _opt_float(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, int | float | str):
        return float(value)
    raise TypeError(f"expected a number, got {type(value).__name__}")


class Delegation:
    """The delegation requests of one node (see the module docstring)."""

    def __init__(
        self,
        driver: Driver,
        config: TaskConfig,
        skills: SkillCatalog,
        roles: Mapping[str, Role],
        resolve_node: Callable[[str], str],
        durable: Callable[[], Awaitable[None]],
    ) -> None:
        self._driver = driver
        self._cfg = config
        self._skills = skills
        self._roles = roles
        self._resolve_node = resolve_node
        self._durable = durable
        self.watchers = Waiters()
        self._ops: dict[tuple[str, str], asyncio.Future[OpDone]] = {}

    @property
    def machine(self) -> TaskMachine:
        tasks = self._driver.core.tasks
        assert tasks is not None, "the node's core runs a task machine"
        return tasks

    # ---- what the interpreter tells us -----------------------------------------------------

    def changed(self, task_id: str) -> None:
        """A copy of ``task_id`` was stored: wake its watches."""
        self.watchers.wake(task_id)

    def op_done(self, eff: OpDone) -> None:
        fut = self._ops.pop((eff.task_id, eff.op), None)
        if fut is not None and not fut.done():
            fut.set_result(eff)

    # ---- queries -------------------------------------------------------------------------

    def resolve_task(self, ref: str) -> str:
        """A task by full id or a unique prefix of at least 4 characters."""
        ref = ref.strip().lower()
        if not ref:
            raise RequestError("no task id given", "bad_request")
        copies = self.machine.copies
        if ref in copies:
            return ref
        found = [t for t in copies if t.startswith(ref)] if len(ref) >= 4 else []
        if len(found) == 1:
            return found[0]
        if not found:
            raise RequestError(f"unknown task id {ref!r}", "unknown_task")
        raise RequestError(f"{ref!r} matches {len(found)} tasks; give more of the id", "ambiguous")

    def view(self, task_id: str) -> dict[str, Any]:
        task = self.machine.get(task_id)
        if task is None:
            raise RequestError(f"unknown task id {task_id!r}", "unknown_task")
        return task_to_dict(task, self.machine.version(task_id), self._driver.core.name_of)

    def listing(self, state: str | None, limit: int) -> list[dict[str, Any]]:
        """Tasks this node holds, newest first (optionally only those in ``state``)."""
        if state is not None:
            try:
                TaskState(state)
            except ValueError:
                known = ", ".join(s.value for s in TaskState)
                raise RequestError(f"unknown state {state!r}; states: {known}") from None
        tasks = [
            c.task
            for c in self.machine.copies.values()
            if state is None or c.task.state.value == state
        ]
        tasks.sort(key=lambda t: (t.created_at, t.task_id), reverse=True)
        return [self.view(t.task_id) for t in tasks[: max(1, limit)]]

    async def watch(self, task_id: str, after: list[int] | None, wait: float) -> dict[str, Any]:
        """The task once its version is newer than ``after`` (or it is finished, or
        ``wait`` s passed): the long-poll behind progress bars and ``result()``."""
        wait = max(0.0, min(float(wait), MAX_WAIT))
        key = tuple(after) if after else None
        clock = self._driver
        end = clock.now() + wait

        def ready() -> bool:
            version = self.machine.version(task_id)
            task = self.machine.get(task_id)
            return (
                key is None
                or version is None
                or tuple(version) > key
                or (task is not None and is_terminal(task))
            )

        while not ready():
            left = end - clock.now()
            if left <= 0:
                break
            await self.watchers.wait(task_id, left)
        return self.view(task_id)

    # ---- requests ------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self.machine.draining:
            raise RequestError(
                "meshd is shutting down: delegate from another node", "shutting_down"
            )

    async def delegate(self, args: Mapping[str, Any], wait: float = 0.0) -> dict[str, Any]:
        """Check, store and submit one task; with ``wait``, also wait (at most
        :data:`MAX_WAIT` s) for it to finish and answer the finished task."""
        self._check_open()
        task = self.build_task(args)
        core = self._driver.core
        try:
            effects = core.submit(task, self._driver.now())
        except TaskError as exc:
            raise RequestError(str(exc)) from None
        self._driver.apply(effects)
        await self._durable()
        view = self.view(task.task_id)
        if wait > 0:
            # Delegate and wait in one call: the answer is the finished task (or the task
            # as it stands when ``wait`` runs out), one control round trip fewer.
            end = self._driver.now() + min(wait, MAX_WAIT)
            while not view["terminal"] and self._driver.now() < end:
                view = await self.watch(task.task_id, view["version"], end - self._driver.now())
        return view

    async def delegate_many(self, items: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Many tasks in one call: all checked first (the first bad one refuses the whole
        batch, naming its index, and nothing is stored), then stored in one transaction
        (one fsync) and submitted. Returns short views (id, state) in order."""
        self._check_open()
        if not items:
            raise RequestError("give a non-empty list of tasks")
        if len(items) > MAX_BATCH:
            raise RequestError(f"{len(items)} tasks in one batch, at most {MAX_BATCH}")
        tasks = []
        for i, args in enumerate(items):
            try:
                tasks.append(self.build_task(args))
            except RequestError as exc:
                raise RequestError(f"task {i}: {exc}", exc.code) from None
        core, now = self._driver.core, self._driver.now()
        effects: list[Effect] = []
        for task in tasks:
            try:
                effects.extend(core.submit(task, now))
            except TaskError as exc:
                raise RequestError(str(exc)) from None
        self._driver.apply(effects)
        await self._durable()
        return [{"id": t.task_id, "state": t.state.value} for t in tasks]

    def _spec(self, skill_name: str) -> SkillSpec:
        spec = self._skills.skill_spec(skill_name)
        if spec is None:
            known = ", ".join(self._skills.known_names()) or "none"
            raise RequestError(
                f"unknown skill {skill_name!r}; known skills: {known}", "unknown_skill"
            )
        why = self._skills.revoked_skill(skill_name)
        if why:
            raise RequestError(f"skill {skill_name!r} cannot run: {why}", "revoked")
        return spec

    def build_task(self, args: Mapping[str, Any]) -> Task:
        """Check a delegate request before anything is stored (precise errors)."""
        skill_name = args.get("skill")
        if not isinstance(skill_name, str) or not skill_name:
            raise RequestError("no skill given")
        spec = self._spec(skill_name)
        params = self._params(spec, args.get("params") or {})
        requirement = self._requirement(args)
        deps = tuple(self.resolve_task(str(d)) for d in args.get("after") or ())
        idempotent = args.get("idempotent")
        core = self._driver.core
        try:
            return new_task(
                skill_name,
                params,
                core.self_id,
                core.wall(self._driver.now()),
                config=self._cfg,
                requirement=requirement,
                priority=int(args.get("priority", 5)),
                timeout_s=_opt_float(args.get("timeout")),
                deadline=_opt_float(args.get("deadline")),
                idempotent=spec.idempotent if idempotent is None else bool(idempotent),
                verify=bool(args.get("verify", False)),
                parent=args.get("parent") or None,
                depends_on=deps,
                retry_limit=None if args.get("retries") is None else int(args["retries"]),
            )
        except TaskError as exc:
            raise RequestError(str(exc)) from None
        except (TypeError, ValueError) as exc:
            raise RequestError(f"bad request: {exc}") from None

    @staticmethod
    def _params(spec: SkillSpec, params: object) -> dict[str, Any]:
        if not isinstance(params, dict):
            raise RequestError("params must be a mapping of names to values")
        try:
            return dict(validate_params(spec, params))
        except SkillError as exc:
            raise RequestError(str(exc), "bad_params") from None

    def _requirement(self, args: Mapping[str, Any]) -> Requirement:
        """Who may run it: a known role, a capability, a known node (all optional)."""
        role = args.get("role") or None
        if role is not None and role not in self._roles:
            known = ", ".join(sorted(self._roles))
            raise RequestError(f"unknown role {role!r}; known roles: {known}", "unknown_role")
        node_ref = args.get("node") or None
        node_id = None
        if node_ref is not None:
            try:
                node_id = self._resolve_node(str(node_ref))
            except RequestError as exc:
                raise RequestError(str(exc).replace("peer", "node", 1), "unknown_node") from None
        return Requirement(role=role, capability=args.get("capability") or None, node=node_id)

    async def operator(self, op: str, ref: str, target: str = "") -> dict[str, Any]:
        """Cancel / retry / hand off / approve / deny, done by the lead (relayed to it when
        this node does not lead); answers the task as it then stands."""
        task_id = self.resolve_task(ref)
        try:
            kind = TaskOpKind(op)
        except ValueError:
            raise RequestError(f"unknown task operation {op!r}") from None
        if kind is TaskOpKind.HANDOFF and target:
            target = self._resolve_node(target)
        fut: asyncio.Future[OpDone] = asyncio.get_running_loop().create_future()
        self._ops[(task_id, kind.value)] = fut
        try:
            try:
                effects = self._driver.core.operator(
                    kind, task_id, "operator", self._driver.now(), target
                )
            except TaskError as exc:
                raise RequestError(str(exc), "refused") from None
            self._driver.apply(effects)
            await self._durable()
            try:
                done = await asyncio.wait_for(fut, OP_TIMEOUT)
            except TimeoutError:
                raise RequestError(
                    f"the lead did not answer within {OP_TIMEOUT:g} s", "timeout"
                ) from None
        finally:
            self._ops.pop((task_id, kind.value), None)
        if not done.ok:
            raise RequestError(done.message, "refused")
        return self.view(task_id)

    # ---- figures --------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Task figures for ``meshctl status``: mesh totals, queue, per-node current task."""
        machine = self.machine
        totals = machine.totals()
        done = totals["complete"] + totals["verified"]
        finished = done + totals["failed"]
        per_node: dict[str, dict[str, Any]] = {}
        for copy in machine.copies.values():
            task = copy.task
            holder = task.assigned_to
            if holder is None or task.state not in (TaskState.ASSIGNED, TaskState.RUNNING):
                continue
            entry = per_node.setdefault(holder, {"tasks": 0, "current": None})
            entry["tasks"] += 1
            cur = entry["current"]
            if cur is None or task.updated_at > cur["updated_at"]:
                entry["current"] = {
                    "id": task.task_id,
                    "skill": task.skill,
                    "state": task.state.value,
                    "pct": task.progress.pct,
                    "message": task.progress.message,
                    "updated_at": task.updated_at,
                }
        sched = machine.scheduler
        return {
            "totals": {
                **totals,
                "total": sum(totals.values()),
                "success_rate": (done / finished) if finished else None,
            },
            "queue": {
                "pending": totals["pending"],
                "retry": totals["retry"],
                "lead_queue": len(sched.queue()) if sched is not None else None,
            },
            "nodes": per_node,
        }
