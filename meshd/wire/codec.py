"""Pure msgpack codec for mesh envelopes (spec: ``proto/PROTOCOL.md``).

No sockets, no clock, no randomness: :func:`encode` turns an :class:`Envelope` into
bytes, :func:`decode` turns bytes back into an :class:`Envelope` or raises a
:class:`~meshd.errors.DecodeError` subclass, and nothing else, whatever the input.

Wire form: one msgpack array of exactly 8 items::

    [version, type, msg_id, sender, timestamp_ms, correlation_id, term, body]

``body`` is a map with short string keys, written in the fixed order documented in
``proto/PROTOCOL.md`` so that encoding is deterministic (golden vectors re-encode byte
for byte). Unknown body keys are ignored on decode (forward compatibility); every key
this version defines is required.

:func:`encode` validates with the very same rules :func:`decode` applies, so a frame
this node sends is a frame every node of the same version accepts; a violation raises
:class:`~meshd.errors.LocalProtocolError`.

Tasks (:class:`~meshd.wire.records.Task`) travel as maps inside the task messages and are
stored the same way (:func:`encode_task_copy` / :func:`decode_task_copy`); their free
``params`` and ``result`` values are checked to be plain msgpack data (see
:data:`MAX_VALUE_DEPTH`).

Skill packs (:class:`~meshd.wire.messages.PackInfo`) travel inside SKILL_ANNOUNCE; a pack's
``manifest`` is checked like a task's ``params`` and to be at most
:data:`MAX_MANIFEST_BYTES` once msgpack-encoded.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Callable
from typing import Any, Final, TypeVar

import msgpack  # type: ignore[import-untyped, unused-ignore]

from meshd.errors import (
    DecodeError,
    LocalProtocolError,
    MalformedFrame,
    OversizedFrame,
    TruncatedFrame,
    UnknownMessageType,
    UnsupportedVersion,
)
from meshd.wire.messages import (
    MAX_FRAME_BYTES,
    MSG_ID_BYTES,
    NODE_ID_CHARS,
    PAYLOAD_TYPES,
    Ack,
    AgentInfo,
    Envelope,
    Error,
    Heartbeat,
    Hello,
    Intro,
    IntroAck,
    LeadAck,
    LeadHeartbeat,
    Leave,
    MemberUpdate,
    MsgType,
    Payload,
    Ping,
    PingReq,
    ReportKind,
    SkillAnnounce,
    SkillChunk,
    SkillFetch,
    SkillRevoke,
    StepDown,
    Sync,
    SyncReq,
    TaskAck,
    TaskAssign,
    TaskCancel,
    TaskOp,
    TaskOpKind,
    TaskReport,
    TaskSubmit,
    TaskSync,
    TaskSyncReq,
    TaskUpdate,
    TransferReq,
    Vote,
    VoteReq,
)
from meshd.wire.records import (
    PROTOCOL_VERSION,
    Assignment,
    MemberInfo,
    MemberRecord,
    MemberState,
    PackInfo,
    Progress,
    Requirement,
    Task,
    TaskCopy,
    TaskFailure,
    TaskState,
    Transition,
)

__all__ = [
    "ENVELOPE_ITEMS",
    "KEY_BYTES",
    "MAX_ADDRESSES",
    "MAX_ADDRESS_CHARS",
    "MAX_AGENT_CONCURRENCY",
    "MAX_ANNOUNCED_PACKS",
    "MAX_CAPABILITIES",
    "MAX_CHECKPOINT_BYTES",
    "MAX_CHUNK_BYTES",
    "MAX_CHUNK_ERROR_CHARS",
    "MAX_CODE_CHARS",
    "MAX_DIGEST_BYTES",
    "MAX_ERROR_MESSAGE_CHARS",
    "MAX_FETCH_BYTES",
    "MAX_MANIFEST_BYTES",
    "MAX_MEMBERS",
    "MAX_NAME_CHARS",
    "MAX_PACK_BYTES",
    "MAX_PACK_VERSION_CHARS",
    "MAX_PROGRESS_PCT",
    "MAX_REASON_CHARS",
    "MAX_REVOKED",
    "MAX_ROLE_CHARS",
    "MAX_SKILLS",
    "MAX_SKILL_CHARS",
    "MAX_SYNC_IDS",
    "MAX_TASK_COPIES",
    "MAX_TASK_DEPS",
    "MAX_TASK_ERROR_CHARS",
    "MAX_TASK_HISTORY",
    "MAX_TASK_PRIORITY",
    "MAX_TASK_TEXT_CHARS",
    "MAX_VALUE_DEPTH",
    "PACK_ID_CHARS",
    "PORT_MAX",
    "TASK_ID_CHARS",
    "TOPIC_BYTES",
    "U31_MAX",
    "U63_MAX",
    "decode",
    "decode_member_info",
    "decode_member_record",
    "decode_payload",
    "decode_task_copy",
    "encode",
    "encode_member_info",
    "encode_member_record",
    "encode_payload",
    "encode_task_copy",
    "is_node_id",
    "member_info_from_wire",
    "member_info_to_wire",
    "member_record_from_wire",
    "member_record_to_wire",
    "msg_type_from_topic",
    "task_copy_from_wire",
    "task_copy_to_wire",
    "task_from_wire",
    "task_to_wire",
    "topic_for",
]

# ---- limits (see proto/PROTOCOL.md, "Size limits") ---------------------------------

#: Items in the envelope array.
ENVELOPE_ITEMS: Final = 8
#: Largest value of a generic unsigned field (timestamps, terms, seq, incarnations...).
U63_MAX: Final = 2**63 - 1
#: Largest priority / tier.
U31_MAX: Final = 2**31 - 1
#: Largest TCP port.
PORT_MAX: Final = 65535
#: Length of ``ek`` (Ed25519 public key), ``ck`` (Curve25519 public key) and ``proof``.
KEY_BYTES: Final = 32
MAX_NAME_CHARS: Final = 64
MAX_ROLE_CHARS: Final = 64
MAX_CODE_CHARS: Final = 64
MAX_ERROR_MESSAGE_CHARS: Final = 1024
MAX_ADDRESSES: Final = 16
MAX_ADDRESS_CHARS: Final = 64
MAX_MEMBERS: Final = 4096
MAX_DIGEST_BYTES: Final = 64
#: Length of an election reason token (VOTE, STEP_DOWN).
MAX_REASON_CHARS: Final = 64
#: Length of the PUB/SUB topic frame (big-endian message type code).
TOPIC_BYTES: Final = 2

# tasks (PROTOCOL.md, "Tasks")
#: Task ids are 32 lowercase hex characters, like node ids.
TASK_ID_CHARS: Final = 32
#: Length of a skill name (a task's ``skill``, AGENT_INFO ``skills``).
MAX_SKILL_CHARS: Final = 64
#: Task priorities are 0..9 (higher runs first).
MAX_TASK_PRIORITY: Final = 9
#: Progress and report messages, history reasons.
MAX_TASK_TEXT_CHARS: Final = 500
#: A task's error message.
MAX_TASK_ERROR_CHARS: Final = 1000
#: A skill's checkpoint (resume data).
MAX_CHECKPOINT_BYTES: Final = 256 * 1024
#: Dependencies of one task (``TaskConfig.max_depends``).
MAX_TASK_DEPS: Final = 64
#: History entries of one task.
MAX_TASK_HISTORY: Final = 1000
#: Task copies in one TASK_UPDATE / TASK_SYNC.
MAX_TASK_COPIES: Final = 1000
#: Task ids in one TASK_SYNC_REQ.
MAX_SYNC_IDS: Final = 10000
#: Skills and capabilities in one AGENT_INFO.
MAX_SKILLS: Final = 1000
MAX_CAPABILITIES: Final = 256
#: Largest AGENT_INFO ``max_concurrent``.
MAX_AGENT_CONCURRENCY: Final = 100_000
#: Progress is a percentage.
MAX_PROGRESS_PCT: Final = 100.0
#: Arrays/maps nested in a task's ``params`` (the params map included) or a ``result``.
MAX_VALUE_DEPTH: Final = 32

# skill packs (PROTOCOL.md, "Skill packs")
#: Pack ids are the SHA-256 of the pack archive as 64 lowercase hex characters.
PACK_ID_CHARS: Final = 64
#: A pack's version string (at least 1 char).
MAX_PACK_VERSION_CHARS: Final = 64
#: Largest pack archive: SKILL_ANNOUNCE ``size``, SKILL_FETCH / SKILL_CHUNK ``offset``,
#: SKILL_CHUNK ``total``.
MAX_PACK_BYTES: Final = 64 * 1024 * 1024
#: Largest SKILL_FETCH ``length`` (at least 1).
MAX_FETCH_BYTES: Final = 1024 * 1024
#: Largest SKILL_CHUNK ``data``: leaves 4 KiB of a 1 MiB frame to the envelope.
MAX_CHUNK_BYTES: Final = 1024 * 1024 - 4 * 1024
#: A pack's ``manifest``, msgpack-encoded.
MAX_MANIFEST_BYTES: Final = 64 * 1024
#: SKILL_CHUNK ``error``.
MAX_CHUNK_ERROR_CHARS: Final = 500
#: Packs, and removed names, in one SKILL_ANNOUNCE.
MAX_ANNOUNCED_PACKS: Final = 1000
#: Signer keys, and pack ids, in one SKILL_REVOKE.
MAX_REVOKED: Final = 10000

_NODE_ID_RE: Final = re.compile(f"[0-9a-f]{{{NODE_ID_CHARS}}}")
_TASK_ID_RE: Final = re.compile(f"[0-9a-f]{{{TASK_ID_CHARS}}}")
_PACK_ID_RE: Final = re.compile(f"[0-9a-f]{{{PACK_ID_CHARS}}}")
#: ``meshd.skills.spec.SKILL_NAME`` with its length bound, for ``fullmatch`` (not
#: imported: the codec stays free of the skills package).
_SKILL_NAME_RE: Final = re.compile(f"[A-Za-z][A-Za-z0-9_.-]{{0,{MAX_SKILL_CHARS - 1}}}")
_MISSING: Final = object()
_MSG_TYPES: Final[dict[int, MsgType]] = {int(t): t for t in MsgType}
_STATES: Final[dict[str, MemberState]] = {s.value: s for s in MemberState}
_TOPICS: Final[dict[int, bytes]] = {int(t): int(t).to_bytes(TOPIC_BYTES, "big") for t in MsgType}
_TASK_STATES: Final[dict[str, TaskState]] = {s.value: s for s in TaskState}
_REPORT_KINDS: Final[dict[str, ReportKind]] = {k.value: k for k in ReportKind}
_OP_KINDS: Final[dict[str, TaskOpKind]] = {k.value: k for k in TaskOpKind}
_SCALAR_TYPES: Final = frozenset({bool, float, str, bytes})
_I64_MIN: Final = -(2**63)
_U64_MAX: Final = 2**64 - 1
_E = TypeVar("_E", bound=enum.Enum)

WireMap = dict[str, Any]


def is_node_id(value: object) -> bool:
    """True when ``value`` is a node id: a str of 32 lowercase hex characters."""
    return type(value) is str and _NODE_ID_RE.fullmatch(value) is not None


# ---- error helpers (only run on the failure path) ----------------------------------


def _where(path: str, name: str) -> str:
    if not path:
        return name
    return f"{path}.{name}" if name else path


def _describe(v: object) -> str:
    if v is None:
        return "nil"
    if type(v) is bool:
        return f"bool {v}"
    if type(v) is int:
        return f"int {v}" if -(10**20) < v < 10**20 else "int (huge)"
    if type(v) is float:
        return f"float {v!r}"
    if type(v) is str:
        return f"str of {len(v)} chars"
    if type(v) is bytes:
        return f"bin of {len(v)} bytes"
    if type(v) is list:
        return f"array of {len(v)} items"
    if type(v) is dict:
        return f"map of {len(v)} entries"
    return type(v).__name__


def _bad(path: str, name: str, v: object, expected: str) -> MalformedFrame:
    where = _where(path, name)
    if v is _MISSING:
        return MalformedFrame(f"{where}: missing")
    return MalformedFrame(f"{where}: expected {expected}, got {_describe(v)}")


# ---- field checkers: return the value or raise MalformedFrame ----------------------


def _int(v: object, path: str, name: str, hi: int = U63_MAX, lo: int = 0) -> int:
    if type(v) is int and lo <= v <= hi:
        return v
    raise _bad(path, name, v, f"int in {lo}..{hi}")


def _bool(v: object, path: str, name: str) -> bool:
    if type(v) is bool:
        return v
    raise _bad(path, name, v, "bool")


def _float(v: object, path: str, name: str) -> float:
    if type(v) is float and math.isfinite(v) and v >= 0.0:
        return v
    raise _bad(path, name, v, "finite float >= 0")


def _str(v: object, path: str, name: str, max_chars: int, min_chars: int = 0) -> str:
    if type(v) is str and min_chars <= len(v) <= max_chars:
        return v
    raise _bad(path, name, v, f"str of {min_chars}..{max_chars} chars")


def _bin_exact(v: object, path: str, name: str, size: int) -> bytes:
    if type(v) is bytes and len(v) == size:
        return v
    raise _bad(path, name, v, f"bin of {size} bytes")


def _bin_max(v: object, path: str, name: str, max_size: int) -> bytes:
    if type(v) is bytes and len(v) <= max_size:
        return v
    raise _bad(path, name, v, f"bin of at most {max_size} bytes")


def _node_id(v: object, path: str, name: str) -> str:
    if type(v) is str and _NODE_ID_RE.fullmatch(v) is not None:
        return v
    raise _bad(path, name, v, f"node id ({NODE_ID_CHARS} lowercase hex chars)")


def _map(v: object, path: str, name: str) -> dict[Any, Any]:
    if type(v) is dict:
        return v
    raise _bad(path, name, v, "map")


def _list(v: object, path: str, name: str, max_items: int) -> list[Any]:
    if type(v) is list and len(v) <= max_items:
        return v
    raise _bad(path, name, v, f"array of at most {max_items} items")


# ---- member info / record -----------------------------------------------------------


def member_info_to_wire(info: MemberInfo) -> WireMap:
    """The wire map of a :class:`MemberInfo` (keys in canonical order; not validated)."""
    started = info.started_at
    return {
        "id": info.node_id,
        "name": info.name,
        "role": info.role,
        "pri": info.priority,
        "tier": info.tier,
        "ek": info.ed25519_pk,
        "ck": info.curve_pk,
        "proof": info.proof,
        "addrs": list(info.addresses),
        "rp": info.router_port,
        "pp": info.pub_port,
        "ip": info.intro_port,
        "inc": info.incarnation,
        "pv": info.protocol_version,
        "start": float(started) if type(started) is int else started,
    }


def _member_info(obj: object, path: str) -> MemberInfo:
    d = _map(obj, path, "") if path else _map(obj, "", "member info")
    g = d.get
    addrs = _list(g("addrs", _MISSING), path, "addrs", MAX_ADDRESSES)
    for i, a in enumerate(addrs):
        if type(a) is not str or len(a) > MAX_ADDRESS_CHARS:
            raise _bad(path, f"addrs[{i}]", a, f"str of at most {MAX_ADDRESS_CHARS} chars")
    return MemberInfo(
        node_id=_node_id(g("id", _MISSING), path, "id"),
        name=_str(g("name", _MISSING), path, "name", MAX_NAME_CHARS),
        role=_str(g("role", _MISSING), path, "role", MAX_ROLE_CHARS),
        priority=_int(g("pri", _MISSING), path, "pri", U31_MAX),
        tier=_int(g("tier", _MISSING), path, "tier", U31_MAX),
        ed25519_pk=_bin_exact(g("ek", _MISSING), path, "ek", KEY_BYTES),
        curve_pk=_bin_exact(g("ck", _MISSING), path, "ck", KEY_BYTES),
        proof=_bin_exact(g("proof", _MISSING), path, "proof", KEY_BYTES),
        addresses=tuple(addrs),
        router_port=_int(g("rp", _MISSING), path, "rp", PORT_MAX),
        pub_port=_int(g("pp", _MISSING), path, "pp", PORT_MAX),
        intro_port=_int(g("ip", _MISSING), path, "ip", PORT_MAX),
        incarnation=_int(g("inc", _MISSING), path, "inc"),
        protocol_version=_int(g("pv", _MISSING), path, "pv"),
        started_at=_float(g("start", _MISSING), path, "start"),
    )


def member_info_from_wire(obj: object) -> MemberInfo:
    """Validate a decoded wire map and build a :class:`MemberInfo`.

    Raises :class:`MalformedFrame` (naming the field) on any violation.
    """
    return _member_info(obj, "")


def member_record_to_wire(record: MemberRecord) -> WireMap:
    """The wire map ``{"m": <member info>, "s": <state>}`` of a :class:`MemberRecord`."""
    return {"m": member_info_to_wire(record.info), "s": MemberState(record.state).value}


def _member_record(obj: object, path: str) -> MemberRecord:
    d = _map(obj, path, "") if path else _map(obj, "", "member record")
    s = d.get("s", _MISSING)
    state = _STATES.get(s) if type(s) is str else None
    if state is None:
        raise _bad(path, "s", s, "one of " + "|".join(_STATES))
    return MemberRecord(info=_member_info(d.get("m", _MISSING), _where(path, "m")), state=state)


def member_record_from_wire(obj: object) -> MemberRecord:
    """Validate a decoded wire map and build a :class:`MemberRecord`."""
    return _member_record(obj, "")


def _records(v: object, path: str, name: str) -> tuple[MemberRecord, ...]:
    items = _list(v, path, name, MAX_MEMBERS)
    where = _where(path, name)
    return tuple([_member_record(item, f"{where}[{i}]") for i, item in enumerate(items)])


def _info(v: object, path: str, name: str) -> MemberInfo:
    return _member_info(v, _where(path, name))


# ---- tasks ------------------------------------------------------------------------


def _task_id(v: object, path: str, name: str) -> str:
    if type(v) is str and _TASK_ID_RE.fullmatch(v) is not None:
        return v
    raise _bad(path, name, v, f"task id ({TASK_ID_CHARS} lowercase hex chars)")


def _task_id_or_empty(v: object, path: str, name: str) -> str:
    if type(v) is str and v == "":
        return ""
    return _task_id(v, path, name)


def _opt_task_id(v: object, path: str, name: str) -> str | None:
    if v is None:
        return None
    if type(v) is str and _TASK_ID_RE.fullmatch(v) is not None:
        return v
    raise _bad(path, name, v, f"nil or task id ({TASK_ID_CHARS} lowercase hex chars)")


def _opt_node_id(v: object, path: str, name: str) -> str | None:
    if v is None:
        return None
    if type(v) is str and _NODE_ID_RE.fullmatch(v) is not None:
        return v
    raise _bad(path, name, v, f"nil or node id ({NODE_ID_CHARS} lowercase hex chars)")


def _opt_str(v: object, path: str, name: str, max_chars: int) -> str | None:
    if v is None or (type(v) is str and len(v) <= max_chars):
        return v
    raise _bad(path, name, v, f"nil or str of 0..{max_chars} chars")


def _opt_bin(v: object, path: str, name: str, max_size: int) -> bytes | None:
    if v is None or (type(v) is bytes and len(v) <= max_size):
        return v
    raise _bad(path, name, v, f"nil or bin of at most {max_size} bytes")


def _number(
    v: object, path: str, name: str, *, hi: float = math.inf, positive: bool = False
) -> float:
    """A float (an int is accepted and made a float): finite, >= 0 (> 0 if ``positive``)
    and <= ``hi``. Bool is not a number."""
    f = -1.0
    if type(v) is float:
        f = v
    elif type(v) is int and 0 <= v <= _U64_MAX:
        f = float(v)
    if math.isfinite(f) and (f > 0.0 if positive else f >= 0.0) and f <= hi:
        return f
    if positive:
        expected = "finite number > 0"
    elif math.isfinite(hi):
        expected = f"number in 0..{hi:g}"
    else:
        expected = "finite number >= 0"
    raise _bad(path, name, v, expected)


def _opt_number(v: object, path: str, name: str) -> float | None:
    if v is None:
        return None
    if type(v) in (int, float):
        return _number(v, path, name)
    raise _bad(path, name, v, "nil or finite number >= 0")


def _tuple(v: object, path: str, name: str, size: int) -> list[Any]:
    if type(v) is list and len(v) == size:
        return v
    raise _bad(path, name, v, f"array of {size} items")


def _choice(v: object, path: str, name: str, table: dict[str, _E]) -> _E:
    found = table.get(v) if type(v) is str else None
    if found is None:
        raise _bad(path, name, v, "one of " + "|".join(table))
    return found


def _str_list(v: object, path: str, name: str, max_items: int, max_chars: int) -> tuple[str, ...]:
    items = _list(v, path, name, max_items)
    for i, s in enumerate(items):
        if type(s) is not str or len(s) > max_chars:
            raise _bad(path, f"{name}[{i}]", s, f"str of at most {max_chars} chars")
    return tuple(items)


def _key_path(where: str, key: str | bytes) -> str:
    if type(key) is str and key.isidentifier() and len(key) <= MAX_NAME_CHARS:
        return f"{where}.{key}"
    return f"{where}[{key[:MAX_NAME_CHARS]!r}]"


def _value(v: object, where: str, depth: int) -> None:
    """Check that ``v`` is a msgpack value this codec round-trips: nil, bool, int in
    -2**63..2**64-1, float, str, bin, array, or map with str/bin keys, nested at most
    :data:`MAX_VALUE_DEPTH` arrays/maps deep (``depth``: the containers around ``v``).
    A tuple is accepted as an array (it decodes as a list)."""
    if v is None or type(v) in _SCALAR_TYPES:
        return
    if type(v) is int:
        if _I64_MIN <= v <= _U64_MAX:
            return
        raise MalformedFrame(f"{where}: int out of the msgpack range")
    if type(v) is dict:
        _check_depth(where, depth)
        for k, item in v.items():
            if type(k) is not str and type(k) is not bytes:
                raise MalformedFrame(f"{where}: map key is {_describe(k)}, expected str or bin")
            _value(item, _key_path(where, k), depth + 1)
        return
    if type(v) is list or type(v) is tuple:
        _check_depth(where, depth)
        for i, item in enumerate(v):
            _value(item, f"{where}[{i}]", depth + 1)
        return
    if v is _MISSING:
        raise MalformedFrame(f"{where}: missing")
    raise MalformedFrame(f"{where}: {type(v).__name__} is not a msgpack value")


def _check_depth(where: str, depth: int) -> None:
    if depth >= MAX_VALUE_DEPTH:
        raise MalformedFrame(f"{where}: nested deeper than {MAX_VALUE_DEPTH} arrays/maps")


def _any(v: object, path: str, name: str) -> Any:
    _value(v, _where(path, name), 0)
    return v


def _params(v: object, path: str, name: str) -> dict[str, Any]:
    d = _map(v, path, name)
    where = _where(path, name)
    for k, item in d.items():
        if type(k) is not str:
            raise MalformedFrame(f"{where}: key is {_describe(k)}, expected str")
        _value(item, _key_path(where, k), 1)
    return d


def _requirement(v: object, path: str, name: str) -> Requirement:
    role, capability, node = _tuple(v, path, name, 3)
    where = _where(path, name)
    return Requirement(
        role=_opt_str(role, where, "role", MAX_ROLE_CHARS),
        capability=_opt_str(capability, where, "capability", MAX_NAME_CHARS),
        node=_opt_str(node, where, "node", MAX_NAME_CHARS),
    )


def _history(v: object, path: str, name: str) -> tuple[Transition, ...]:
    items = _list(v, path, name, MAX_TASK_HISTORY)
    where = _where(path, name)
    out: list[Transition] = []
    for i, item in enumerate(items):
        at = f"{where}[{i}]"
        state, when, actor, reason = _tuple(item, at, "", 4)
        out.append(
            Transition(
                state=_choice(state, at, "state", _TASK_STATES),
                at=_number(when, at, "at"),
                actor=_str(actor, at, "actor", MAX_NAME_CHARS),
                reason=_str(reason, at, "reason", MAX_TASK_TEXT_CHARS),
            )
        )
    return tuple(out)


def _progress(v: object, path: str, name: str) -> Progress:
    pct, message = _tuple(v, path, name, 2)
    where = _where(path, name)
    return Progress(
        pct=_number(pct, where, "pct", hi=MAX_PROGRESS_PCT),
        message=_str(message, where, "message", MAX_TASK_TEXT_CHARS),
    )


def _failure(v: object, path: str, name: str) -> TaskFailure | None:
    if v is None:
        return None
    if type(v) is not list or len(v) != 2:
        raise _bad(path, name, v, "nil or array of 2 items")
    where = _where(path, name)
    return TaskFailure(
        code=_str(v[0], where, "code", MAX_CODE_CHARS),
        message=_str(v[1], where, "message", MAX_TASK_ERROR_CHARS),
    )


def _fence(v: object, path: str, name: str) -> Assignment | None:
    if v is None:
        return None
    if type(v) is not list or len(v) != 2:
        raise _bad(path, name, v, "nil or array of 2 items")
    where = _where(path, name)
    return Assignment(term=_int(v[0], where, "term"), lead=_node_id(v[1], where, "lead"))


def _task_ids(v: object, path: str, name: str, max_items: int) -> tuple[str, ...]:
    items = _list(v, path, name, max_items)
    return tuple([_task_id(t, path, f"{name}[{i}]") for i, t in enumerate(items)])


def _enum_value(v: object) -> object:
    return v.value if isinstance(v, enum.Enum) else v


def _float_of(v: object) -> object:
    """An int where a float is expected becomes a float (canonical form); anything else
    is left for the checks to judge."""
    if type(v) is int and 0 <= v <= _U64_MAX:
        return float(v)
    return v


def task_to_wire(task: Task) -> WireMap:
    """The wire map of a :class:`~meshd.wire.records.Task` (keys in canonical order; not
    validated: :func:`task_from_wire` of it does that)."""
    req = task.requirement
    prog = task.progress
    err = task.error
    fence = task.assignment
    return {
        "id": task.task_id,
        "skill": task.skill,
        "params": task.params,
        "origin": task.origin,
        "req": [req.role, req.capability, req.node],
        "pri": task.priority,
        "timeout": _float_of(task.timeout_s),
        "deadline": _float_of(task.deadline),
        "idem": task.idempotent,
        "verify": task.verify,
        "parent": task.parent,
        "deps": list(task.depends_on),
        "retries": task.retry_count,
        "retry_limit": task.retry_limit,
        "state": _enum_value(task.state),
        "hist": [[_enum_value(t.state), _float_of(t.at), t.actor, t.reason] for t in task.history],
        "prog": [_float_of(prog.pct), prog.message],
        "ckpt": task.checkpoint,
        "result": task.result,
        "error": None if err is None else [err.code, err.message],
        "to": task.assigned_to,
        "fence": None if fence is None else [fence.term, fence.lead],
        "attempt": task.attempt,
        "created": _float_of(task.created_at),
        "updated": _float_of(task.updated_at),
    }


def _task(obj: object, path: str) -> Task:
    d = _map(obj, path, "") if path else _map(obj, "", "task")
    g = d.get
    return Task(
        task_id=_task_id(g("id", _MISSING), path, "id"),
        skill=_str(g("skill", _MISSING), path, "skill", MAX_SKILL_CHARS, min_chars=1),
        params=_params(g("params", _MISSING), path, "params"),
        origin=_node_id(g("origin", _MISSING), path, "origin"),
        requirement=_requirement(g("req", _MISSING), path, "req"),
        priority=_int(g("pri", _MISSING), path, "pri", MAX_TASK_PRIORITY),
        timeout_s=_number(g("timeout", _MISSING), path, "timeout", positive=True),
        deadline=_opt_number(g("deadline", _MISSING), path, "deadline"),
        idempotent=_bool(g("idem", _MISSING), path, "idem"),
        verify=_bool(g("verify", _MISSING), path, "verify"),
        parent=_opt_task_id(g("parent", _MISSING), path, "parent"),
        depends_on=_task_ids(g("deps", _MISSING), path, "deps", MAX_TASK_DEPS),
        retry_count=_int(g("retries", _MISSING), path, "retries"),
        retry_limit=_int(g("retry_limit", _MISSING), path, "retry_limit"),
        state=_choice(g("state", _MISSING), path, "state", _TASK_STATES),
        history=_history(g("hist", _MISSING), path, "hist"),
        progress=_progress(g("prog", _MISSING), path, "prog"),
        checkpoint=_opt_bin(g("ckpt", _MISSING), path, "ckpt", MAX_CHECKPOINT_BYTES),
        result=_any(g("result", _MISSING), path, "result"),
        error=_failure(g("error", _MISSING), path, "error"),
        assigned_to=_opt_node_id(g("to", _MISSING), path, "to"),
        assignment=_fence(g("fence", _MISSING), path, "fence"),
        attempt=_int(g("attempt", _MISSING), path, "attempt"),
        created_at=_number(g("created", _MISSING), path, "created"),
        updated_at=_number(g("updated", _MISSING), path, "updated"),
    )


def task_from_wire(obj: object, path: str = "task") -> Task:
    """Validate a decoded task map and build a :class:`~meshd.wire.records.Task`.

    Raises :class:`MalformedFrame` naming the bad field, prefixed with ``path``
    (``task.hist[2].at``). Checks the wire rules only (types, lengths, ranges), not the
    task rules of :func:`meshd.tasks.model.validate_task`.
    """
    return _task(obj, path)


def task_copy_to_wire(copy: TaskCopy) -> WireMap:
    """The wire map ``{"term", "seq", "task"}`` of a :class:`TaskCopy` (not validated)."""
    return {"term": copy.term, "seq": copy.seq, "task": task_to_wire(copy.task)}


def _task_copy(obj: object, path: str) -> TaskCopy:
    d = _map(obj, path, "") if path else _map(obj, "", "task copy")
    return TaskCopy(
        term=_int(d.get("term", _MISSING), path, "term"),
        seq=_int(d.get("seq", _MISSING), path, "seq"),
        task=_task(d.get("task", _MISSING), _where(path, "task")),
    )


def task_copy_from_wire(obj: object) -> TaskCopy:
    """Validate a decoded task copy map and build a :class:`TaskCopy`."""
    return _task_copy(obj, "")


def _copies(v: object, path: str, name: str) -> tuple[TaskCopy, ...]:
    items = _list(v, path, name, MAX_TASK_COPIES)
    where = _where(path, name)
    return tuple([_task_copy(item, f"{where}[{i}]") for i, item in enumerate(items)])


# ---- skill packs --------------------------------------------------------------------


def _pack_id(v: object, path: str, name: str) -> str:
    if type(v) is str and _PACK_ID_RE.fullmatch(v) is not None:
        return v
    raise _bad(path, name, v, f"pack id ({PACK_ID_CHARS} lowercase hex chars)")


def _skill_name(v: object, path: str, name: str) -> str:
    if type(v) is str and _SKILL_NAME_RE.fullmatch(v) is not None:
        return v
    raise _bad(
        path,
        name,
        v,
        f"skill name (a letter, then letters, digits, '-', '_' or '.'; "
        f"at most {MAX_SKILL_CHARS} chars)",
    )


def _manifest(v: object, path: str, name: str) -> dict[str, Any]:
    """A map with str keys and plain msgpack values (as a task's ``params``), at most
    :data:`MAX_MANIFEST_BYTES` msgpack-encoded."""
    d = _params(v, path, name)
    where = _where(path, name)
    try:
        size = len(_packb(d))
    except Exception as exc:  # e.g. a str that is not valid Unicode (encode side only)
        raise MalformedFrame(f"{where}: not encodable as msgpack: {exc!r}") from None
    if size > MAX_MANIFEST_BYTES:
        raise MalformedFrame(f"{where}: {size} bytes msgpack-encoded, at most {MAX_MANIFEST_BYTES}")
    return d


def _pack_info_to_wire(p: PackInfo) -> WireMap:
    return {
        "name": p.name,
        "version": p.version,
        "pack_id": p.pack_id,
        "size": p.size,
        "signer": p.signer,
        "manifest": p.manifest,
    }


def _pack_info(obj: object, path: str) -> PackInfo:
    g = _map(obj, path, "").get
    return PackInfo(
        name=_skill_name(g("name", _MISSING), path, "name"),
        version=_str(g("version", _MISSING), path, "version", MAX_PACK_VERSION_CHARS, 1),
        pack_id=_pack_id(g("pack_id", _MISSING), path, "pack_id"),
        size=_int(g("size", _MISSING), path, "size", MAX_PACK_BYTES),
        signer=_bin_exact(g("signer", _MISSING), path, "signer", KEY_BYTES),
        manifest=_manifest(g("manifest", _MISSING), path, "manifest"),
    )


def _packs(v: object, path: str, name: str) -> tuple[PackInfo, ...]:
    items = _list(v, path, name, MAX_ANNOUNCED_PACKS)
    where = _where(path, name)
    return tuple([_pack_info(item, f"{where}[{i}]") for i, item in enumerate(items)])


def _skill_names(v: object, path: str, name: str, max_items: int) -> tuple[str, ...]:
    items = _list(v, path, name, max_items)
    return tuple([_skill_name(s, path, f"{name}[{i}]") for i, s in enumerate(items)])


def _pack_ids(v: object, path: str, name: str, max_items: int) -> tuple[str, ...]:
    items = _list(v, path, name, max_items)
    return tuple([_pack_id(p, path, f"{name}[{i}]") for i, p in enumerate(items)])


def _keys(v: object, path: str, name: str, max_items: int) -> tuple[bytes, ...]:
    items = _list(v, path, name, max_items)
    return tuple([_bin_exact(k, path, f"{name}[{i}]", KEY_BYTES) for i, k in enumerate(items)])


# ---- payloads -----------------------------------------------------------------------


def encode_payload(payload: Payload) -> tuple[MsgType, WireMap]:
    """The type code and wire body map of a payload (keys in canonical order).

    Raises :class:`LocalProtocolError` for an object that is not a payload class.
    """
    msg_type = PAYLOAD_TYPES.get(type(payload))
    if msg_type is None:
        raise LocalProtocolError(f"not a payload: {type(payload).__name__}")
    return msg_type, _BODY_ENCODERS[msg_type](payload)


def _records_to_wire(records: tuple[MemberRecord, ...]) -> list[WireMap]:
    return [member_record_to_wire(r) for r in records]


def _enc_hello(p: Any) -> WireMap:
    return {"info": member_info_to_wire(p.info)}


def _enc_heartbeat(p: Any) -> WireMap:
    return {"inc": p.incarnation, "digest": p.digest, "n": p.members}


def _enc_ping(p: Any) -> WireMap:
    return {"seq": p.seq}


def _enc_ack(p: Any) -> WireMap:
    return {"seq": p.seq, "target": p.target, "ok": p.ok}


def _enc_ping_req(p: Any) -> WireMap:
    return {"seq": p.seq, "target": p.target}


def _enc_sync_req(p: Any) -> WireMap:
    return {"digest": p.digest}


def _enc_members(p: Any) -> WireMap:
    return {"members": _records_to_wire(p.members)}


def _enc_leave(p: Any) -> WireMap:
    return {"inc": p.incarnation}


def _enc_intro_ack(p: Any) -> WireMap:
    return {"info": member_info_to_wire(p.info), "members": _records_to_wire(p.members)}


def _enc_error(p: Any) -> WireMap:
    return {"code": p.code, "message": p.message}


def _enc_vote_req(p: Any) -> WireMap:
    return {"term": p.term, "pre": p.pre, "pri": p.priority}


def _enc_vote(p: Any) -> WireMap:
    return {"term": p.term, "granted": p.granted, "pre": p.pre, "reason": p.reason}


def _enc_lead_heartbeat(p: Any) -> WireMap:
    return {"term": p.term, "lead": p.lead, "seq": p.seq}


def _enc_lead_ack(p: Any) -> WireMap:
    return {"term": p.term, "seq": p.seq, "ok": p.ok}


def _enc_step_down(p: Any) -> WireMap:
    return {"term": p.term, "successor": p.successor, "reason": p.reason}


def _enc_transfer_req(p: Any) -> WireMap:
    return {"target": p.target}


def _enc_task_copy_msg(p: Any) -> WireMap:
    return {"copy": task_copy_to_wire(p.copy)}


def _enc_task_report(p: Any) -> WireMap:
    return {
        "task_id": p.task_id,
        "attempt": p.attempt,
        "kind": _enum_value(p.kind),
        "pct": _float_of(p.pct),
        "message": p.message,
        "ckpt": p.checkpoint,
        "result": p.result,
        "code": p.code,
    }


def _enc_task_cancel(p: Any) -> WireMap:
    return {"task_id": p.task_id, "attempt": p.attempt, "reason": p.reason}


def _enc_task_update(p: Any) -> WireMap:
    return {"seq_hi": p.seq_hi, "copies": [task_copy_to_wire(c) for c in p.copies]}


def _enc_task_ack(p: Any) -> WireMap:
    return {"task_id": p.task_id, "ok": p.ok, "code": p.code, "message": p.message}


def _enc_task_op(p: Any) -> WireMap:
    return {
        "op": _enum_value(p.op),
        "task_id": p.task_id,
        "actor": p.actor,
        "target": p.target,
        "ckpt": p.checkpoint,
    }


def _enc_task_sync_req(p: Any) -> WireMap:
    return {
        "since_term": p.since_term,
        "since_seq": p.since_seq,
        "ids": list(p.ids),
        "unfinished": p.unfinished,
    }


def _enc_task_sync(p: Any) -> WireMap:
    return {"copies": [task_copy_to_wire(c) for c in p.copies], "more": p.more}


def _enc_agent_info(p: Any) -> WireMap:
    return {
        "skills": list(p.skills),
        "caps": list(p.capabilities),
        "max_concurrent": p.max_concurrent,
    }


def _enc_skill_announce(p: Any) -> WireMap:
    return {
        "packs": [_pack_info_to_wire(x) for x in p.packs],
        "full": p.full,
        "removed": list(p.removed),
    }


def _enc_skill_fetch(p: Any) -> WireMap:
    return {"pack_id": p.pack_id, "offset": p.offset, "length": p.length}


def _enc_skill_chunk(p: Any) -> WireMap:
    return {
        "pack_id": p.pack_id,
        "offset": p.offset,
        "total": p.total,
        "data": p.data,
        "error": p.error,
    }


def _enc_skill_revoke(p: Any) -> WireMap:
    return {"keys": list(p.keys), "packs": list(p.packs)}


_BODY_ENCODERS: Final[dict[MsgType, Callable[[Any], WireMap]]] = {
    MsgType.HELLO: _enc_hello,
    MsgType.HEARTBEAT: _enc_heartbeat,
    MsgType.PING: _enc_ping,
    MsgType.ACK: _enc_ack,
    MsgType.PING_REQ: _enc_ping_req,
    MsgType.SYNC_REQ: _enc_sync_req,
    MsgType.SYNC: _enc_members,
    MsgType.MEMBER_UPDATE: _enc_members,
    MsgType.LEAVE: _enc_leave,
    MsgType.INTRO: _enc_hello,
    MsgType.INTRO_ACK: _enc_intro_ack,
    MsgType.ERROR: _enc_error,
    MsgType.VOTE_REQ: _enc_vote_req,
    MsgType.VOTE: _enc_vote,
    MsgType.LEAD_HEARTBEAT: _enc_lead_heartbeat,
    MsgType.LEAD_ACK: _enc_lead_ack,
    MsgType.STEP_DOWN: _enc_step_down,
    MsgType.TRANSFER_REQ: _enc_transfer_req,
    MsgType.TASK_SUBMIT: _enc_task_copy_msg,
    MsgType.TASK_ASSIGN: _enc_task_copy_msg,
    MsgType.TASK_REPORT: _enc_task_report,
    MsgType.TASK_CANCEL: _enc_task_cancel,
    MsgType.TASK_UPDATE: _enc_task_update,
    MsgType.TASK_ACK: _enc_task_ack,
    MsgType.TASK_OP: _enc_task_op,
    MsgType.TASK_SYNC_REQ: _enc_task_sync_req,
    MsgType.TASK_SYNC: _enc_task_sync,
    MsgType.AGENT_INFO: _enc_agent_info,
    MsgType.SKILL_ANNOUNCE: _enc_skill_announce,
    MsgType.SKILL_FETCH: _enc_skill_fetch,
    MsgType.SKILL_CHUNK: _enc_skill_chunk,
    MsgType.SKILL_REVOKE: _enc_skill_revoke,
}

_B: Final = "body"


def _dec_hello(b: dict[Any, Any]) -> Payload:
    return Hello(info=_info(b.get("info", _MISSING), _B, "info"))


def _dec_heartbeat(b: dict[Any, Any]) -> Payload:
    return Heartbeat(
        incarnation=_int(b.get("inc", _MISSING), _B, "inc"),
        digest=_bin_max(b.get("digest", _MISSING), _B, "digest", MAX_DIGEST_BYTES),
        members=_int(b.get("n", _MISSING), _B, "n"),
    )


def _dec_ping(b: dict[Any, Any]) -> Payload:
    return Ping(seq=_int(b.get("seq", _MISSING), _B, "seq"))


def _dec_ack(b: dict[Any, Any]) -> Payload:
    target = b.get("target", _MISSING)
    if target != "":
        target = _node_id(target, _B, "target")
    return Ack(
        seq=_int(b.get("seq", _MISSING), _B, "seq"),
        target=target,  # "" (plain ping) or a checked node id
        ok=_bool(b.get("ok", _MISSING), _B, "ok"),
    )


def _dec_ping_req(b: dict[Any, Any]) -> Payload:
    return PingReq(
        seq=_int(b.get("seq", _MISSING), _B, "seq"),
        target=_node_id(b.get("target", _MISSING), _B, "target"),
    )


def _dec_sync_req(b: dict[Any, Any]) -> Payload:
    return SyncReq(digest=_bin_max(b.get("digest", _MISSING), _B, "digest", MAX_DIGEST_BYTES))


def _dec_sync(b: dict[Any, Any]) -> Payload:
    return Sync(members=_records(b.get("members", _MISSING), _B, "members"))


def _dec_member_update(b: dict[Any, Any]) -> Payload:
    return MemberUpdate(members=_records(b.get("members", _MISSING), _B, "members"))


def _dec_leave(b: dict[Any, Any]) -> Payload:
    return Leave(incarnation=_int(b.get("inc", _MISSING), _B, "inc"))


def _dec_intro(b: dict[Any, Any]) -> Payload:
    return Intro(info=_info(b.get("info", _MISSING), _B, "info"))


def _dec_intro_ack(b: dict[Any, Any]) -> Payload:
    return IntroAck(
        info=_info(b.get("info", _MISSING), _B, "info"),
        members=_records(b.get("members", _MISSING), _B, "members"),
    )


def _dec_error(b: dict[Any, Any]) -> Payload:
    return Error(
        code=_str(b.get("code", _MISSING), _B, "code", MAX_CODE_CHARS, min_chars=1),
        message=_str(b.get("message", _MISSING), _B, "message", MAX_ERROR_MESSAGE_CHARS),
    )


def _node_id_or_empty(v: object, path: str, name: str) -> str:
    if type(v) is str and v == "":
        return ""
    return _node_id(v, path, name)


def _dec_vote_req(b: dict[Any, Any]) -> Payload:
    return VoteReq(
        term=_int(b.get("term", _MISSING), _B, "term"),
        pre=_bool(b.get("pre", _MISSING), _B, "pre"),
        priority=_int(b.get("pri", _MISSING), _B, "pri", U31_MAX),
    )


def _dec_vote(b: dict[Any, Any]) -> Payload:
    return Vote(
        term=_int(b.get("term", _MISSING), _B, "term"),
        granted=_bool(b.get("granted", _MISSING), _B, "granted"),
        pre=_bool(b.get("pre", _MISSING), _B, "pre"),
        reason=_str(b.get("reason", _MISSING), _B, "reason", MAX_REASON_CHARS),
    )


def _dec_lead_heartbeat(b: dict[Any, Any]) -> Payload:
    return LeadHeartbeat(
        term=_int(b.get("term", _MISSING), _B, "term"),
        lead=_node_id(b.get("lead", _MISSING), _B, "lead"),
        seq=_int(b.get("seq", _MISSING), _B, "seq"),
    )


def _dec_lead_ack(b: dict[Any, Any]) -> Payload:
    return LeadAck(
        term=_int(b.get("term", _MISSING), _B, "term"),
        seq=_int(b.get("seq", _MISSING), _B, "seq"),
        ok=_bool(b.get("ok", _MISSING), _B, "ok"),
    )


def _dec_step_down(b: dict[Any, Any]) -> Payload:
    return StepDown(
        term=_int(b.get("term", _MISSING), _B, "term"),
        successor=_node_id_or_empty(b.get("successor", _MISSING), _B, "successor"),
        reason=_str(b.get("reason", _MISSING), _B, "reason", MAX_REASON_CHARS),
    )


def _dec_transfer_req(b: dict[Any, Any]) -> Payload:
    return TransferReq(target=_node_id_or_empty(b.get("target", _MISSING), _B, "target"))


def _dec_task_submit(b: dict[Any, Any]) -> Payload:
    return TaskSubmit(copy=_task_copy(b.get("copy", _MISSING), _where(_B, "copy")))


def _dec_task_assign(b: dict[Any, Any]) -> Payload:
    return TaskAssign(copy=_task_copy(b.get("copy", _MISSING), _where(_B, "copy")))


def _dec_task_report(b: dict[Any, Any]) -> Payload:
    return TaskReport(
        task_id=_task_id(b.get("task_id", _MISSING), _B, "task_id"),
        attempt=_int(b.get("attempt", _MISSING), _B, "attempt"),
        kind=_choice(b.get("kind", _MISSING), _B, "kind", _REPORT_KINDS),
        pct=_number(b.get("pct", _MISSING), _B, "pct", hi=MAX_PROGRESS_PCT),
        message=_str(b.get("message", _MISSING), _B, "message", MAX_TASK_TEXT_CHARS),
        checkpoint=_opt_bin(b.get("ckpt", _MISSING), _B, "ckpt", MAX_CHECKPOINT_BYTES),
        result=_any(b.get("result", _MISSING), _B, "result"),
        code=_str(b.get("code", _MISSING), _B, "code", MAX_CODE_CHARS),
    )


def _dec_task_cancel(b: dict[Any, Any]) -> Payload:
    return TaskCancel(
        task_id=_task_id(b.get("task_id", _MISSING), _B, "task_id"),
        attempt=_int(b.get("attempt", _MISSING), _B, "attempt"),
        reason=_str(b.get("reason", _MISSING), _B, "reason", MAX_REASON_CHARS),
    )


def _dec_task_update(b: dict[Any, Any]) -> Payload:
    return TaskUpdate(
        seq_hi=_int(b.get("seq_hi", _MISSING), _B, "seq_hi"),
        copies=_copies(b.get("copies", _MISSING), _B, "copies"),
    )


def _dec_task_ack(b: dict[Any, Any]) -> Payload:
    return TaskAck(
        task_id=_task_id_or_empty(b.get("task_id", _MISSING), _B, "task_id"),
        ok=_bool(b.get("ok", _MISSING), _B, "ok"),
        code=_str(b.get("code", _MISSING), _B, "code", MAX_CODE_CHARS),
        message=_str(b.get("message", _MISSING), _B, "message", MAX_ERROR_MESSAGE_CHARS),
    )


def _dec_task_op(b: dict[Any, Any]) -> Payload:
    return TaskOp(
        op=_choice(b.get("op", _MISSING), _B, "op", _OP_KINDS),
        task_id=_task_id(b.get("task_id", _MISSING), _B, "task_id"),
        actor=_str(b.get("actor", _MISSING), _B, "actor", MAX_NAME_CHARS),
        target=_str(b.get("target", _MISSING), _B, "target", MAX_NAME_CHARS),
        checkpoint=_opt_bin(b.get("ckpt", _MISSING), _B, "ckpt", MAX_CHECKPOINT_BYTES),
    )


def _dec_task_sync_req(b: dict[Any, Any]) -> Payload:
    return TaskSyncReq(
        since_term=_int(b.get("since_term", _MISSING), _B, "since_term"),
        since_seq=_int(b.get("since_seq", _MISSING), _B, "since_seq"),
        ids=_task_ids(b.get("ids", _MISSING), _B, "ids", MAX_SYNC_IDS),
        unfinished=_bool(b.get("unfinished", _MISSING), _B, "unfinished"),
    )


def _dec_task_sync(b: dict[Any, Any]) -> Payload:
    return TaskSync(
        copies=_copies(b.get("copies", _MISSING), _B, "copies"),
        more=_bool(b.get("more", _MISSING), _B, "more"),
    )


def _dec_agent_info(b: dict[Any, Any]) -> Payload:
    return AgentInfo(
        skills=_str_list(b.get("skills", _MISSING), _B, "skills", MAX_SKILLS, MAX_SKILL_CHARS),
        capabilities=_str_list(
            b.get("caps", _MISSING), _B, "caps", MAX_CAPABILITIES, MAX_ROLE_CHARS
        ),
        max_concurrent=_int(
            b.get("max_concurrent", _MISSING), _B, "max_concurrent", MAX_AGENT_CONCURRENCY
        ),
    )


def _dec_skill_announce(b: dict[Any, Any]) -> Payload:
    return SkillAnnounce(
        packs=_packs(b.get("packs", _MISSING), _B, "packs"),
        full=_bool(b.get("full", _MISSING), _B, "full"),
        removed=_skill_names(b.get("removed", _MISSING), _B, "removed", MAX_ANNOUNCED_PACKS),
    )


def _dec_skill_fetch(b: dict[Any, Any]) -> Payload:
    return SkillFetch(
        pack_id=_pack_id(b.get("pack_id", _MISSING), _B, "pack_id"),
        offset=_int(b.get("offset", _MISSING), _B, "offset", MAX_PACK_BYTES),
        length=_int(b.get("length", _MISSING), _B, "length", MAX_FETCH_BYTES, lo=1),
    )


def _dec_skill_chunk(b: dict[Any, Any]) -> Payload:
    return SkillChunk(
        pack_id=_pack_id(b.get("pack_id", _MISSING), _B, "pack_id"),
        offset=_int(b.get("offset", _MISSING), _B, "offset", MAX_PACK_BYTES),
        total=_int(b.get("total", _MISSING), _B, "total", MAX_PACK_BYTES),
        data=_bin_max(b.get("data", _MISSING), _B, "data", MAX_CHUNK_BYTES),
        error=_str(b.get("error", _MISSING), _B, "error", MAX_CHUNK_ERROR_CHARS),
    )


def _dec_skill_revoke(b: dict[Any, Any]) -> Payload:
    return SkillRevoke(
        keys=_keys(b.get("keys", _MISSING), _B, "keys", MAX_REVOKED),
        packs=_pack_ids(b.get("packs", _MISSING), _B, "packs", MAX_REVOKED),
    )


_BODY_DECODERS: Final[dict[MsgType, Callable[[dict[Any, Any]], Payload]]] = {
    MsgType.HELLO: _dec_hello,
    MsgType.HEARTBEAT: _dec_heartbeat,
    MsgType.PING: _dec_ping,
    MsgType.ACK: _dec_ack,
    MsgType.PING_REQ: _dec_ping_req,
    MsgType.SYNC_REQ: _dec_sync_req,
    MsgType.SYNC: _dec_sync,
    MsgType.MEMBER_UPDATE: _dec_member_update,
    MsgType.LEAVE: _dec_leave,
    MsgType.INTRO: _dec_intro,
    MsgType.INTRO_ACK: _dec_intro_ack,
    MsgType.ERROR: _dec_error,
    MsgType.VOTE_REQ: _dec_vote_req,
    MsgType.VOTE: _dec_vote,
    MsgType.LEAD_HEARTBEAT: _dec_lead_heartbeat,
    MsgType.LEAD_ACK: _dec_lead_ack,
    MsgType.STEP_DOWN: _dec_step_down,
    MsgType.TRANSFER_REQ: _dec_transfer_req,
    MsgType.TASK_SUBMIT: _dec_task_submit,
    MsgType.TASK_ASSIGN: _dec_task_assign,
    MsgType.TASK_REPORT: _dec_task_report,
    MsgType.TASK_CANCEL: _dec_task_cancel,
    MsgType.TASK_UPDATE: _dec_task_update,
    MsgType.TASK_ACK: _dec_task_ack,
    MsgType.TASK_OP: _dec_task_op,
    MsgType.TASK_SYNC_REQ: _dec_task_sync_req,
    MsgType.TASK_SYNC: _dec_task_sync,
    MsgType.AGENT_INFO: _dec_agent_info,
    MsgType.SKILL_ANNOUNCE: _dec_skill_announce,
    MsgType.SKILL_FETCH: _dec_skill_fetch,
    MsgType.SKILL_CHUNK: _dec_skill_chunk,
    MsgType.SKILL_REVOKE: _dec_skill_revoke,
}


def decode_payload(msg_type: MsgType, body: object) -> Payload:
    """Validate a decoded body map of ``msg_type`` and build its payload object.

    Unknown keys are ignored. Raises :class:`MalformedFrame` naming the bad field.
    """
    decoder = _BODY_DECODERS.get(msg_type)
    if decoder is None:
        raise UnknownMessageType(f"unknown message type {msg_type!r}")
    return decoder(_map(body, "", _B))


# ---- envelope -----------------------------------------------------------------------


def _envelope_to_wire(env: Envelope) -> list[Any]:
    msg_type, body = encode_payload(env.payload)
    if env.msg_type != msg_type:
        raise LocalProtocolError(
            f"payload {type(env.payload).__name__} does not match message type "
            f"{env.msg_type!r} (expected {msg_type.name})"
        )
    return [
        env.version,
        int(msg_type),
        env.msg_id,
        env.sender,
        env.timestamp_ms,
        env.correlation_id,
        env.term,
        body,
    ]


def _envelope_from_wire(obj: object) -> Envelope:
    if type(obj) is not list:
        raise _bad("", "envelope", obj, f"array of {ENVELOPE_ITEMS} items")
    if not obj:
        raise MalformedFrame(f"envelope: expected array of {ENVELOPE_ITEMS} items, got 0")
    version = obj[0]
    if type(version) is not int:
        raise _bad("", "version", version, "int")
    if version != PROTOCOL_VERSION:
        shown = version if -(10**20) < version < 10**20 else "(huge)"
        raise UnsupportedVersion(
            f"protocol version {shown} not supported (this node speaks {PROTOCOL_VERSION})"
        )
    if len(obj) != ENVELOPE_ITEMS:
        raise _bad("", "envelope", obj, f"array of {ENVELOPE_ITEMS} items")
    _, code, msg_id, sender, timestamp_ms, correlation_id, term, body = obj
    if type(code) is not int:
        raise _bad("", "type", code, "int")
    msg_type = _MSG_TYPES.get(code)
    if msg_type is None:
        shown = code if -(10**20) < code < 10**20 else "(huge)"
        raise UnknownMessageType(f"unknown message type {shown}")
    if correlation_id is not None:
        correlation_id = _bin_exact(correlation_id, "", "correlation_id", MSG_ID_BYTES)
    return Envelope(
        msg_type=msg_type,
        msg_id=_bin_exact(msg_id, "", "msg_id", MSG_ID_BYTES),
        sender=_node_id(sender, "", "sender"),
        timestamp_ms=_int(timestamp_ms, "", "timestamp_ms"),
        payload=_BODY_DECODERS[msg_type](_map(body, "", _B)),
        correlation_id=correlation_id,
        term=_int(term, "", "term"),
        version=version,
    )


def _packb(obj: object) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def encode(env: Envelope, max_size: int | None = None) -> bytes:
    """Encode ``env`` into one frame (deterministic: same envelope, same bytes).

    The envelope is checked with the rules :func:`decode` applies; any violation
    (payload class not matching ``msg_type``, a bad field, an unsupported version, a
    frame larger than ``max_size`` when given) raises :class:`LocalProtocolError`.
    """
    try:
        wire = _envelope_to_wire(env)
        _envelope_from_wire(wire)
        data = _packb(wire)
    except LocalProtocolError:
        raise
    except DecodeError as exc:
        raise LocalProtocolError(f"cannot encode {_type_name(env)}: {exc}") from None
    except Exception as exc:  # packer errors, non-payload attributes, ...
        raise LocalProtocolError(f"cannot encode {_type_name(env)}: {exc!r}") from exc
    if max_size is not None and len(data) > max_size:
        raise LocalProtocolError(
            f"encoded {_type_name(env)} is {len(data)} bytes, over the limit of {max_size}"
        )
    return data


def _type_name(env: object) -> str:
    t = getattr(env, "msg_type", None)
    return t.name if isinstance(t, MsgType) else repr(t)


def _peek_version(data: Any) -> int | None:
    """The version of a frame from its first bytes alone, or None if it has none.

    Reads a msgpack array header and an integer first item; used on the failure path
    so that a frame of another version is reported as such whatever follows.
    """
    try:
        b = bytes(data[:16])
    except Exception:
        return None
    if not b:
        return None
    head = b[0]
    if 0x91 <= head <= 0x9F:
        pos = 1
    elif head == 0xDC and len(b) >= 3 and b[1:3] != b"\0\0":
        pos = 3
    elif head == 0xDD and len(b) >= 5 and b[1:5] != b"\0\0\0\0":
        pos = 5
    else:
        return None
    if pos >= len(b):
        return None
    c = b[pos]
    if c <= 0x7F:
        return c
    if c >= 0xE0:
        return c - 0x100
    sizes = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8, 0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8}
    n = sizes.get(c)
    if n is None or pos + 1 + n > len(b):
        return None
    return int.from_bytes(b[pos + 1 : pos + 1 + n], "big", signed=c >= 0xD0)


def _raise_unpack_failure(data: Any, exc: BaseException) -> None:
    version = _peek_version(data)
    if version is not None and version != PROTOCOL_VERSION:
        raise UnsupportedVersion(
            f"protocol version {version} not supported (this node speaks {PROTOCOL_VERSION})"
        ) from None
    if isinstance(exc, msgpack.ExtraData):
        raise MalformedFrame("trailing bytes after the envelope") from None
    if isinstance(exc, msgpack.OutOfData):
        raise TruncatedFrame("frame ends inside a msgpack object") from None
    if type(exc) is ValueError:
        text = str(exc)
        # unpackb caps every length at the frame size: a length above it, or running
        # out of input, both mean the frame was cut off.
        if "incomplete input" in text or "exceeds max_" in text:
            raise TruncatedFrame("frame ends inside a msgpack object") from None
    raise MalformedFrame(f"not valid msgpack: {type(exc).__name__}") from None


def decode(data: bytes | bytearray | memoryview, max_size: int = MAX_FRAME_BYTES) -> Envelope:
    """Decode one frame into an :class:`Envelope`.

    Raises only :class:`DecodeError` subclasses: :class:`OversizedFrame` (checked
    before unpacking), :class:`TruncatedFrame`, :class:`UnsupportedVersion` (the
    version is checked before anything else about the array), :class:`UnknownMessageType`
    and :class:`MalformedFrame` (message names the field).
    """
    try:
        size = len(data)
    except Exception:
        raise MalformedFrame("frame is not a bytes-like object") from None
    if size > max_size:
        raise OversizedFrame(f"frame of {size} bytes exceeds the limit of {max_size}")
    if size == 0:
        raise TruncatedFrame("empty frame")
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:
        _raise_unpack_failure(data, exc)
        raise  # unreachable: _raise_unpack_failure always raises
    try:
        return _envelope_from_wire(obj)
    except DecodeError:
        raise
    except Exception as exc:  # safety net: the contract is DecodeError only
        raise MalformedFrame(f"unexpected decoder failure: {exc!r}") from None


# ---- standalone member maps (storage) -------------------------------------------


def encode_member_info(info: MemberInfo) -> bytes:
    """msgpack bytes of one member info map (e.g. for the local store)."""
    return _encode_standalone(member_info_to_wire, member_info_from_wire, info)


def decode_member_info(data: bytes) -> MemberInfo:
    """Inverse of :func:`encode_member_info`; raises :class:`DecodeError` only."""
    return member_info_from_wire(_unpack_standalone(data))


def encode_member_record(record: MemberRecord) -> bytes:
    """msgpack bytes of one member record map (e.g. for the local store)."""
    return _encode_standalone(member_record_to_wire, member_record_from_wire, record)


def decode_member_record(data: bytes) -> MemberRecord:
    """Inverse of :func:`encode_member_record`; raises :class:`DecodeError` only."""
    return member_record_from_wire(_unpack_standalone(data))


def encode_task_copy(copy: TaskCopy, check: bool = True) -> bytes:
    """msgpack bytes of one task copy map (the local task store); checked like a frame,
    raises :class:`LocalProtocolError`. ``check=False`` skips the check (the store's hot
    path: a copy it writes was built or decoded by this node, and every read decodes it
    with the full checks anyway)."""
    if not check:
        try:
            return _packb(task_copy_to_wire(copy))
        except Exception as exc:
            raise LocalProtocolError(f"cannot encode TaskCopy: {exc!r}") from exc
    return _encode_standalone(task_copy_to_wire, task_copy_from_wire, copy)


def decode_task_copy(data: bytes) -> TaskCopy:
    """Inverse of :func:`encode_task_copy`; raises :class:`DecodeError` only."""
    obj = _unpack_standalone(data)
    try:
        return task_copy_from_wire(obj)
    except DecodeError:
        raise
    except Exception as exc:  # safety net: the contract is DecodeError only
        raise MalformedFrame(f"unexpected decoder failure: {exc!r}") from None


def _encode_standalone(
    to_wire: Callable[[Any], WireMap], from_wire: Callable[[object], object], value: object
) -> bytes:
    try:
        wire = to_wire(value)
        from_wire(wire)
        return _packb(wire)
    except DecodeError as exc:
        raise LocalProtocolError(f"cannot encode {type(value).__name__}: {exc}") from None
    except Exception as exc:
        raise LocalProtocolError(f"cannot encode {type(value).__name__}: {exc!r}") from exc


def _unpack_standalone(data: bytes) -> object:
    try:
        if len(data) == 0:
            raise TruncatedFrame("empty data")
        return msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except DecodeError:
        raise
    except Exception as exc:
        _raise_unpack_failure(b"", exc)
        raise  # unreachable


# ---- PUB/SUB topics -----------------------------------------------------------------


def topic_for(msg_type: MsgType) -> bytes:
    """The PUB/SUB topic frame of ``msg_type``: its code as 2 big-endian bytes."""
    topic = _TOPICS.get(msg_type)
    if topic is None:
        raise LocalProtocolError(f"unknown message type {msg_type!r}")
    return topic


def msg_type_from_topic(topic: bytes) -> MsgType:
    """Inverse of :func:`topic_for`; raises :class:`DecodeError` for a bad topic frame."""
    if len(topic) != TOPIC_BYTES:
        raise MalformedFrame(f"topic: expected {TOPIC_BYTES} bytes, got {len(topic)}")
    code = int.from_bytes(topic, "big")
    msg_type = _MSG_TYPES.get(code)
    if msg_type is None:
        raise UnknownMessageType(f"unknown message type {code}")
    return msg_type
