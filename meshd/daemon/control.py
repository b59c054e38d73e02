"""The control operations of a live node: one table from op name to a typed request
and its handler.

``meshctl`` and :class:`meshd.client.Client` send ``{"op": NAME, "args": {...}}`` over
the control socket (:mod:`meshd.net.control`). :func:`dispatch` looks ``NAME`` up in
:data:`OPS`, builds the op's request dataclass from ``args`` (every field type-checked
and bounded: a wrong one is a ``bad_request`` naming the field, and nothing happens),
and calls the handler with the node's :class:`Services`.

Errors are mapped to control codes here, at this edge only: a
:class:`~meshd.errors.RequestError` keeps its code; a task refusal
(:class:`~meshd.tasks.model.TaskError`) is ``refused``; any other
:class:`~meshd.errors.MeshError` is ``error``. The client turns the code back into a
:class:`~meshd.errors.ControlError` and ``meshctl`` into an exit code.
"""

from __future__ import annotations

import dataclasses
import os
import types
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Union, get_args, get_origin, get_type_hints

from meshd.daemon.delegation import MAX_WAIT, Delegation
from meshd.daemon.events import EventLog
from meshd.daemon.packs import PackManager
from meshd.errors import ControlError, MeshError, RequestError
from meshd.tasks.model import TaskError

#: Longest text accepted in a string argument (names, ids, paths, notes).
MAX_TEXT: Final = 4096
#: Most items in a list argument (keys, pack ids, dependencies).
MAX_ITEMS: Final = 1000


@dataclass(frozen=True, slots=True)
class Services:
    """What the handlers reach of the node: its parts, and a few node-level calls."""

    status: Callable[[], dict[str, Any]]
    ping: Callable[[], dict[str, Any]]
    peer_ping: Callable[[str, float], Awaitable[float]]
    resolve_peer: Callable[[str], str]
    lead_request: Callable[[str], dict[str, Any]]
    audit: Callable[[float, str | None], list[dict[str, Any]]]
    #: The records the store quarantined (``Store.quarantine_list``), and clearing them.
    quarantine: Callable[[], list[dict[str, Any]]]
    quarantine_clear: Callable[[], int]
    events: EventLog
    delegation: Delegation
    packs: PackManager


# ---- requests --------------------------------------------------------------------------
# Each op's arguments as a frozen dataclass. Field types allowed: str, int, float, bool,
# list[str], list[int], dict[str, Any], list[dict[str, Any]], and those | None. Defaults
# are what an absent (or None) argument means.


@dataclass(frozen=True, slots=True)
class NoArgs:
    pass


@dataclass(frozen=True, slots=True)
class PeerPingReq:
    peer: str = ""
    count: int = 1
    timeout: float = 2.0


@dataclass(frozen=True, slots=True)
class EventsReq:
    since: float = 0.0
    wait: float = 0.0


@dataclass(frozen=True, slots=True)
class AuditReq:
    since: float = 0.0
    type: str | None = None


@dataclass(frozen=True, slots=True)
class LeadTransferReq:
    target: str = ""


@dataclass(frozen=True, slots=True)
class DelegateReq:
    skill: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    role: str | None = None
    node: str | None = None
    capability: str | None = None
    priority: int = 5
    timeout: float | None = None
    deadline: float | None = None
    after: list[str] = field(default_factory=list)
    idempotent: bool | None = None
    verify: bool = False
    retries: int | None = None
    parent: str | None = None
    wait: float = 0.0


@dataclass(frozen=True, slots=True)
class DelegateManyReq:
    tasks: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class TaskReq:
    id: str = ""


@dataclass(frozen=True, slots=True)
class TaskRetryReq:
    id: str = ""
    force: bool = False


@dataclass(frozen=True, slots=True)
class TaskWatchReq:
    id: str = ""
    after: list[int] | None = None
    wait: float = 10.0


@dataclass(frozen=True, slots=True)
class TaskListReq:
    state: str | None = None
    limit: int = 100


@dataclass(frozen=True, slots=True)
class TaskHandoffReq:
    id: str = ""
    to: str = ""


@dataclass(frozen=True, slots=True)
class TaskDenyReq:
    id: str = ""
    reason: str = ""


@dataclass(frozen=True, slots=True)
class SkillListReq:
    mesh: bool = False


@dataclass(frozen=True, slots=True)
class SkillRef:
    """A skill by ``name``, or a pack ``file`` on this host."""

    name: str = ""
    file: str | None = None


@dataclass(frozen=True, slots=True)
class SkillPackReq:
    dir: str = ""
    out: str | None = None
    cwd: str | None = None


@dataclass(frozen=True, slots=True)
class NameReq:
    name: str = ""


@dataclass(frozen=True, slots=True)
class TrustAddReq:
    key: str = ""
    note: str = ""
    revoker: bool = False


@dataclass(frozen=True, slots=True)
class KeyReq:
    key: str = ""


@dataclass(frozen=True, slots=True)
class RevokeReq:
    keys: list[str] = field(default_factory=list)
    packs: list[str] = field(default_factory=list)


class _Mismatch(Exception):
    """The value is not of the expected type (turned into a RequestError by _check)."""


def _bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise _Mismatch
    return value


def _int(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or abs(value) >= 2**63:
        raise _Mismatch
    return value


def _float(value: Any, name: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise _Mismatch
    number = float(value)
    if number != number or abs(number) == float("inf"):
        raise _Mismatch
    return number


def _str(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise _Mismatch
    if len(value) > MAX_TEXT:
        raise RequestError(f"argument {name!r}: {len(value)} characters, at most {MAX_TEXT}")
    return value


_SCALARS: Final[dict[Any, Callable[[Any, str], Any]]] = {
    bool: _bool,
    int: _int,
    float: _float,
    str: _str,
}


def _check(value: Any, hint: Any, name: str) -> Any:
    """``value`` as type ``hint`` (see the comment above the requests), or RequestError."""
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        options = [a for a in get_args(hint) if a is not type(None)]
        return None if value is None else _check(value, options[0], name)
    try:
        scalar = _SCALARS.get(hint)
        if scalar is not None:
            return scalar(value, name)
        if origin is list and isinstance(value, list | tuple):
            if len(value) > MAX_ITEMS:
                raise RequestError(f"argument {name!r}: {len(value)} items, at most {MAX_ITEMS}")
            (item,) = get_args(hint)
            return [_check(v, item, f"{name}[{i}]") for i, v in enumerate(value)]
        if origin is dict and isinstance(value, dict) and all(isinstance(k, str) for k in value):
            return value
    except _Mismatch:
        pass
    expected = getattr(hint, "__name__", str(hint))
    raise RequestError(f"argument {name!r}: expected {expected}, got {type(value).__name__}")


_FIELDS: dict[type[Any], dict[str, Any]] = {}


def _fields(cls: type[Any]) -> dict[str, Any]:
    """A request type's fields and their types (resolved once: get_type_hints is slow)."""
    fields = _FIELDS.get(cls)
    if fields is None:
        hints = get_type_hints(cls)
        fields = _FIELDS[cls] = {f.name: hints[f.name] for f in dataclasses.fields(cls)}
    return fields


def parse(cls: type[Any], args: Mapping[str, Any]) -> Any:
    """Build request ``cls`` from ``args`` (absent or None: the field's default); an
    argument the op does not take is refused (a misspelt option must not pass as its
    default)."""
    fields = _fields(cls)
    values: dict[str, Any] = {}
    for name, raw in args.items():
        hint = fields.get(name)
        if hint is None:
            takes = ", ".join(fields) or "no arguments"
            raise RequestError(f"unknown argument {str(name)!r} (takes: {takes})")
        if raw is not None:
            values[name] = _check(raw, hint, name)
    return cls(**values)


# ---- handlers -------------------------------------------------------------------------------


async def _status(s: Services, r: NoArgs) -> Any:
    return s.status()


async def _ping(s: Services, r: NoArgs) -> Any:
    return s.ping()


async def _peer_ping(s: Services, r: PeerPingReq) -> Any:
    if not 1 <= r.count <= 10_000:
        raise RequestError("count must be 1..10000")
    if not 0 < r.timeout <= 60:
        raise RequestError("timeout must be in (0, 60] seconds")
    peer = s.resolve_peer(r.peer)
    return {"peer": peer, "rtt_s": [await s.peer_ping(peer, r.timeout) for _ in range(r.count)]}


async def _events(s: Services, r: EventsReq) -> Any:
    return await s.events.wait(r.since, min(max(r.wait, 0.0), MAX_WAIT))


async def _audit(s: Services, r: AuditReq) -> Any:
    return s.audit(r.since, r.type)


async def _quarantine_list(s: Services, r: NoArgs) -> Any:
    return s.quarantine()


async def _quarantine_clear(s: Services, r: NoArgs) -> Any:
    return {"cleared": s.quarantine_clear()}


async def _lead_transfer(s: Services, r: LeadTransferReq) -> Any:
    return s.lead_request(r.target)


async def _lead_step_down(s: Services, r: NoArgs) -> Any:
    return s.lead_request("")


async def _delegate(s: Services, r: DelegateReq) -> Any:
    args = dataclasses.asdict(r)
    return await s.delegation.delegate(args, wait=max(0.0, r.wait))


async def _delegate_many(s: Services, r: DelegateManyReq) -> Any:
    return await s.delegation.delegate_many(r.tasks)


async def _task_get(s: Services, r: TaskReq) -> Any:
    d = s.delegation
    return d.view(d.resolve_task(r.id))


async def _task_watch(s: Services, r: TaskWatchReq) -> Any:
    d = s.delegation
    return await d.watch(d.resolve_task(r.id), r.after, r.wait)


async def _task_list(s: Services, r: TaskListReq) -> Any:
    return s.delegation.listing(r.state, r.limit)


def _task_op(op: str) -> Callable[[Services, TaskReq], Awaitable[Any]]:
    async def handler(s: Services, r: TaskReq) -> Any:
        return await s.delegation.operator(op, r.id)

    return handler


async def _task_retry(s: Services, r: TaskRetryReq) -> Any:
    return await s.delegation.operator("retry_force" if r.force else "retry", r.id)


async def _task_handoff(s: Services, r: TaskHandoffReq) -> Any:
    return await s.delegation.operator("handoff", r.id, r.to)


async def _task_deny(s: Services, r: TaskDenyReq) -> Any:
    return await s.delegation.operator("deny", r.id, r.reason)


async def _skill_list(s: Services, r: SkillListReq) -> Any:
    return s.packs.listing(r.mesh)


async def _skill_describe(s: Services, r: SkillRef) -> Any:
    packs = s.packs
    if not r.file:
        return packs.describe(r.name)
    pack = packs.inspect_file(packs.read_file(r.file))
    return {
        **pack.manifest.spec.to_dict(),
        "pack_id": pack.pack_id,
        "signer": pack.signer.hex(),
        "signer_trusted": packs.trusted(pack.signer),
        "files": sorted(pack.files),
    }


async def _skill_pack(s: Services, r: SkillPackReq) -> Any:
    packs = s.packs
    data = packs.build(r.dir)
    pack = packs.inspect_file(data)
    spec = pack.manifest.spec
    out = Path(r.out) if r.out else Path(r.cwd or ".") / f"{spec.name}-{spec.version}.pack"
    try:
        out.write_bytes(data)
    except OSError as exc:
        raise RequestError(f"cannot write {out}: {exc.strerror}") from None
    return {
        "path": str(out),
        "name": spec.name,
        "size": len(data),
        "version": spec.version,
        "pack_id": pack.pack_id,
    }


async def _skill_install(s: Services, r: SkillRef) -> Any:
    packs = s.packs
    if r.file:
        return packs.install_bytes(packs.read_file(r.file), source=f"file {r.file}")
    return await packs.install_from_mesh(r.name)


async def _skill_remove(s: Services, r: NameReq) -> Any:
    return s.packs.remove(r.name)


async def _skill_publish(s: Services, r: NameReq) -> Any:
    return s.packs.publish(r.name)


async def _skill_trust_add(s: Services, r: TrustAddReq) -> Any:
    return s.packs.trust_add(r.key, r.note, r.revoker)


async def _skill_trust_remove(s: Services, r: KeyReq) -> Any:
    return s.packs.trust_remove(r.key)


async def _skill_trust_list(s: Services, r: NoArgs) -> Any:
    return s.packs.trust_list()


async def _skill_revoke(s: Services, r: RevokeReq) -> Any:
    return s.packs.revoke(r.keys, r.packs)


@dataclass(frozen=True, slots=True)
class Op:
    """One control operation: its request type and handler."""

    request: type[Any]
    handler: Callable[[Services, Any], Awaitable[Any]]


#: Every control operation, by name.
OPS: Final[Mapping[str, Op]] = {
    "status": Op(NoArgs, _status),
    "ping": Op(NoArgs, _ping),
    "peer_ping": Op(PeerPingReq, _peer_ping),
    "events": Op(EventsReq, _events),
    "audit": Op(AuditReq, _audit),
    "quarantine_list": Op(NoArgs, _quarantine_list),
    "quarantine_clear": Op(NoArgs, _quarantine_clear),
    "lead_transfer": Op(LeadTransferReq, _lead_transfer),
    "lead_step_down": Op(NoArgs, _lead_step_down),
    "delegate": Op(DelegateReq, _delegate),
    "delegate_many": Op(DelegateManyReq, _delegate_many),
    "task_get": Op(TaskReq, _task_get),
    "task_watch": Op(TaskWatchReq, _task_watch),
    "task_list": Op(TaskListReq, _task_list),
    "task_cancel": Op(TaskReq, _task_op("cancel")),
    "task_retry": Op(TaskRetryReq, _task_retry),
    "task_approve": Op(TaskReq, _task_op("approve")),
    "task_handoff": Op(TaskHandoffReq, _task_handoff),
    "task_deny": Op(TaskDenyReq, _task_deny),
    "skill_list": Op(SkillListReq, _skill_list),
    "skill_describe": Op(SkillRef, _skill_describe),
    "skill_pack": Op(SkillPackReq, _skill_pack),
    "skill_install": Op(SkillRef, _skill_install),
    "skill_remove": Op(NameReq, _skill_remove),
    "skill_publish": Op(NameReq, _skill_publish),
    "skill_trust_add": Op(TrustAddReq, _skill_trust_add),
    "skill_trust_remove": Op(KeyReq, _skill_trust_remove),
    "skill_trust_list": Op(NoArgs, _skill_trust_list),
    "skill_revoke": Op(RevokeReq, _skill_revoke),
}


async def dispatch(services: Services, op: str, args: Mapping[str, Any]) -> Any:
    """Run control operation ``op``; errors leave as :class:`ControlError` with a code."""
    entry = OPS.get(op)
    if entry is None:
        raise ControlError(f"unknown operation {op!r}", code="unknown_op")
    try:
        return await entry.handler(services, parse(entry.request, args))
    except RequestError as exc:
        raise ControlError(str(exc), code=exc.code) from None
    except TaskError as exc:
        raise ControlError(str(exc), code="refused") from None
    except ControlError:
        raise
    except MeshError as exc:
        raise ControlError(str(exc), code="error") from None


def process_info(node_id: str) -> dict[str, Any]:
    """The ``ping`` answer: this daemon is there, with its pid and node id."""
    return {"pong": True, "pid": os.getpid(), "node": node_id}
