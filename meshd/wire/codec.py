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
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any, Final

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
    PROTOCOL_VERSION,
    Ack,
    Envelope,
    Error,
    Heartbeat,
    Hello,
    Intro,
    IntroAck,
    LeadAck,
    LeadHeartbeat,
    Leave,
    MemberInfo,
    MemberRecord,
    MemberState,
    MemberUpdate,
    MsgType,
    Payload,
    Ping,
    PingReq,
    StepDown,
    Sync,
    SyncReq,
    TransferReq,
    Vote,
    VoteReq,
)

__all__ = [
    "ENVELOPE_ITEMS",
    "KEY_BYTES",
    "MAX_ADDRESSES",
    "MAX_ADDRESS_CHARS",
    "MAX_CODE_CHARS",
    "MAX_DIGEST_BYTES",
    "MAX_ERROR_MESSAGE_CHARS",
    "MAX_MEMBERS",
    "MAX_NAME_CHARS",
    "MAX_REASON_CHARS",
    "MAX_ROLE_CHARS",
    "PORT_MAX",
    "TOPIC_BYTES",
    "U31_MAX",
    "U63_MAX",
    "decode",
    "decode_member_info",
    "decode_member_record",
    "decode_payload",
    "encode",
    "encode_member_info",
    "encode_member_record",
    "encode_payload",
    "is_node_id",
    "member_info_from_wire",
    "member_info_to_wire",
    "member_record_from_wire",
    "member_record_to_wire",
    "msg_type_from_topic",
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

_NODE_ID_RE: Final = re.compile(f"[0-9a-f]{{{NODE_ID_CHARS}}}")
_MISSING: Final = object()
_MSG_TYPES: Final[dict[int, MsgType]] = {int(t): t for t in MsgType}
_STATES: Final[dict[str, MemberState]] = {s.value: s for s in MemberState}
_TOPICS: Final[dict[int, bytes]] = {int(t): int(t).to_bytes(TOPIC_BYTES, "big") for t in MsgType}

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


def _int(v: object, path: str, name: str, hi: int = U63_MAX) -> int:
    if type(v) is int and 0 <= v <= hi:
        return v
    raise _bad(path, name, v, f"int in 0..{hi}")


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
