"""Pure msgpack codec for mesh envelopes (spec: ``proto/PROTOCOL.md``).

No sockets, no clock, no randomness: :func:`encode` turns an :class:`Envelope` into
bytes, :func:`decode` turns bytes back into an :class:`Envelope` or raises a
:class:`~meshd.errors.DecodeError` subclass, and nothing else, whatever the input.

Wire form: one msgpack array of exactly 8 items::

    [version, type, msg_id, sender, timestamp_ms, correlation_id, term, body]

``body`` is a map with short string keys. Its fields are declared once, in the field tables
of :mod:`meshd.wire.schema`: for every message type and every record that travels (member
info and records, tasks and their copies, packs) an ordered list of ``(wire key, dataclass
attribute, field type with its bounds)``. Each table is compiled at import time
(:mod:`meshd.wire.fields`) into the three functions this module calls: ``read`` (check a
decoded value, build the dataclass), ``write`` (the wire form, checked by the same tests)
and ``to_wire`` (the wire form, unchecked). Keys are written in table order, so that
encoding is deterministic (golden vectors re-encode byte for byte), and checked in that
order; unknown keys are ignored on decode (forward compatibility); every key a table lists
is required.

:func:`encode` validates with the very rules :func:`decode` applies (the same field types,
and the same envelope checks), so a frame this node sends is a frame every node of the same
version accepts; a violation raises :class:`~meshd.errors.LocalProtocolError`.

Tasks (:class:`~meshd.wire.records.Task`) travel as maps inside the task messages and are
stored the same way (:func:`encode_task_copy` / :func:`decode_task_copy`); their free
``params`` and ``result`` values are checked to be plain msgpack data (see
:data:`MAX_VALUE_DEPTH`).

Skill packs (:class:`~meshd.wire.messages.PackInfo`) travel inside SKILL_ANNOUNCE; a pack's
``manifest`` is checked like a task's ``params`` and to be at most
:data:`MAX_MANIFEST_BYTES` once msgpack-encoded.
"""

from __future__ import annotations

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
from meshd.wire.fields import Reader, Record, bad, packb
from meshd.wire.messages import MAX_FRAME_BYTES, PAYLOAD_TYPES, Envelope, MsgType, Payload
from meshd.wire.records import PROTOCOL_VERSION, MemberInfo, MemberRecord, Task, TaskCopy
from meshd.wire.schema import (
    BODIES,
    COUNTER,
    KEY_BYTES,
    MAX_ADDRESS_CHARS,
    MAX_ADDRESSES,
    MAX_AGENT_CONCURRENCY,
    MAX_ANNOUNCED_PACKS,
    MAX_CAPABILITIES,
    MAX_CHECKPOINT_BYTES,
    MAX_CHUNK_BYTES,
    MAX_CHUNK_ERROR_CHARS,
    MAX_CODE_CHARS,
    MAX_COUNTER,
    MAX_DIGEST_BYTES,
    MAX_ERROR_MESSAGE_CHARS,
    MAX_FETCH_BYTES,
    MAX_MANIFEST_BYTES,
    MAX_MEMBERS,
    MAX_NAME_CHARS,
    MAX_PACK_BYTES,
    MAX_PACK_VERSION_CHARS,
    MAX_PROGRESS_PCT,
    MAX_REASON_CHARS,
    MAX_REVOKED,
    MAX_ROLE_CHARS,
    MAX_SKILL_CHARS,
    MAX_SKILLS,
    MAX_SYNC_IDS,
    MAX_TASK_COPIES,
    MAX_TASK_DEPS,
    MAX_TASK_ERROR_CHARS,
    MAX_TASK_HISTORY,
    MAX_TASK_PRIORITY,
    MAX_TASK_TEXT_CHARS,
    MAX_VALUE_DEPTH,
    MEMBER_INFO,
    MEMBER_RECORD,
    MSG_ID,
    NODE_ID,
    PACK_ID_CHARS,
    PORT_MAX,
    TASK,
    TASK_COPY,
    TASK_ID_CHARS,
    U31_MAX,
    U63,
    U63_MAX,
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
    "MAX_COUNTER",
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

#: Items in the envelope array.
ENVELOPE_ITEMS: Final = 8
#: Length of the PUB/SUB topic frame (big-endian message type code).
TOPIC_BYTES: Final = 2

_MSG_TYPES: Final[dict[int, MsgType]] = {int(t): t for t in MsgType}
_TOPICS: Final[dict[int, bytes]] = {int(t): int(t).to_bytes(TOPIC_BYTES, "big") for t in MsgType}
#: ``read`` of every body table, by type code.
_READ_BODY: Final[dict[MsgType, Reader]] = {t: body.read for t, body in BODIES.items()}
_BODY: Final = "body"
_node_id_match = NODE_ID.pattern.fullmatch
_read_msg_id: Final = MSG_ID.read
_read_node_id: Final = NODE_ID.read
_read_u63: Final = U63.read
_read_counter: Final = COUNTER.read

WireMap = dict[str, Any]


def is_node_id(value: object) -> bool:
    """True when ``value`` is a node id: a str of 32 lowercase hex characters."""
    return type(value) is str and _node_id_match(value) is not None


# ---- records (the maps of the local store too) ---------------------------------------


def member_info_to_wire(info: MemberInfo) -> WireMap:
    """The wire map of a :class:`MemberInfo` (keys in canonical order; not validated)."""
    wire: WireMap = MEMBER_INFO.to_wire(info)
    return wire


def member_info_from_wire(obj: object) -> MemberInfo:
    """Validate a decoded wire map and build a :class:`MemberInfo`.

    Raises :class:`MalformedFrame` (naming the field) on any violation.
    """
    info: MemberInfo = MEMBER_INFO.read(obj, "", "")
    return info


def member_record_to_wire(record: MemberRecord) -> WireMap:
    """The wire map ``{"m": <member info>, "s": <state>}`` of a :class:`MemberRecord`
    (not validated; a state that is not a :class:`MemberState` raises ValueError)."""
    wire: WireMap = MEMBER_RECORD.to_wire(record)
    return wire


def member_record_from_wire(obj: object) -> MemberRecord:
    """Validate a decoded wire map and build a :class:`MemberRecord`."""
    record: MemberRecord = MEMBER_RECORD.read(obj, "", "")
    return record


def task_to_wire(task: Task) -> WireMap:
    """The wire map of a :class:`~meshd.wire.records.Task` (keys in canonical order; not
    validated: :func:`task_from_wire` of it does that)."""
    wire: WireMap = TASK.to_wire(task)
    return wire


def task_from_wire(obj: object, path: str = "task") -> Task:
    """Validate a decoded task map and build a :class:`~meshd.wire.records.Task`.

    Raises :class:`MalformedFrame` naming the bad field, prefixed with ``path``
    (``task.hist[2].at``). Checks the wire rules only (types, lengths, ranges), not the
    task rules of :func:`meshd.tasks.model.validate_task`.
    """
    task: Task = TASK.read(obj, path, "")
    return task


def task_copy_to_wire(copy: TaskCopy) -> WireMap:
    """The wire map ``{"term", "seq", "task"}`` of a :class:`TaskCopy` (not validated)."""
    wire: WireMap = TASK_COPY.to_wire(copy)
    return wire


def task_copy_from_wire(obj: object) -> TaskCopy:
    """Validate a decoded task copy map and build a :class:`TaskCopy`."""
    copy: TaskCopy = TASK_COPY.read(obj, "", "")
    return copy


# ---- payloads -----------------------------------------------------------------------


def encode_payload(payload: Payload) -> tuple[MsgType, WireMap]:
    """The type code and wire body map of a payload (keys in canonical order; not
    validated).

    Raises :class:`LocalProtocolError` for an object that is not a payload class.
    """
    msg_type = PAYLOAD_TYPES.get(type(payload))
    if msg_type is None:
        raise LocalProtocolError(f"not a payload: {type(payload).__name__}")
    body: WireMap = BODIES[msg_type].to_wire(payload)
    return msg_type, body


def decode_payload(msg_type: MsgType, body: object) -> Payload:
    """Validate a decoded body map of ``msg_type`` and build its payload object.

    Unknown keys are ignored. Raises :class:`MalformedFrame` naming the bad field.
    """
    read = _READ_BODY.get(msg_type)
    if read is None:
        raise UnknownMessageType(f"unknown message type {msg_type!r}")
    payload: Payload = read(body, "", _BODY)
    return payload


# ---- envelope -----------------------------------------------------------------------


def _envelope_to_wire(env: Envelope) -> list[Any]:
    """The envelope array, its body written with the checks of its table."""
    msg_type = PAYLOAD_TYPES.get(type(env.payload))
    if msg_type is None:
        raise LocalProtocolError(f"not a payload: {type(env.payload).__name__}")
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
        BODIES[msg_type].write(env.payload, "", _BODY),
    ]


def _envelope_from_wire(obj: object, payload: Any = None) -> Envelope:
    """Check an envelope array and build its :class:`Envelope`; the body is read with its
    table, unless ``payload`` is given (:func:`encode`: the body was checked as written)."""
    if type(obj) is not list:
        raise bad("", "envelope", obj, f"array of {ENVELOPE_ITEMS} items")
    if not obj:
        raise MalformedFrame(f"envelope: expected array of {ENVELOPE_ITEMS} items, got 0")
    version = obj[0]
    if type(version) is not int:
        raise bad("", "version", version, "int")
    if version != PROTOCOL_VERSION:
        shown = version if -(10**20) < version < 10**20 else "(huge)"
        raise UnsupportedVersion(
            f"protocol version {shown} not supported (this node speaks {PROTOCOL_VERSION})"
        )
    if len(obj) != ENVELOPE_ITEMS:
        raise bad("", "envelope", obj, f"array of {ENVELOPE_ITEMS} items")
    _, code, msg_id, sender, timestamp_ms, correlation_id, term, body = obj
    if type(code) is not int:
        raise bad("", "type", code, "int")
    msg_type = _MSG_TYPES.get(code)
    if msg_type is None:
        shown = code if -(10**20) < code < 10**20 else "(huge)"
        raise UnknownMessageType(f"unknown message type {shown}")
    if correlation_id is not None:
        correlation_id = _read_msg_id(correlation_id, "", "correlation_id")
    return Envelope(  # by position (faster): msg_id, sender, ..., checked in this order
        msg_type,
        _read_msg_id(msg_id, "", "msg_id"),
        _read_node_id(sender, "", "sender"),
        _read_u63(timestamp_ms, "", "timestamp_ms"),
        _READ_BODY[msg_type](body, "", _BODY) if payload is None else payload,
        correlation_id,
        _read_counter(term, "", "term"),
        version,
    )


def encode(env: Envelope, max_size: int | None = None) -> bytes:
    """Encode ``env`` into one frame (deterministic: same envelope, same bytes).

    The envelope is checked with the rules :func:`decode` applies; any violation
    (payload class not matching ``msg_type``, a bad field, an unsupported version, a
    frame larger than ``max_size`` when given) raises :class:`LocalProtocolError`.
    """
    try:
        wire = _envelope_to_wire(env)
        _envelope_from_wire(wire, env.payload)
        data = packb(wire)
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


# ---- standalone member maps and task copies (storage) -------------------------------


def encode_member_info(info: MemberInfo) -> bytes:
    """msgpack bytes of one member info map (e.g. for the local store)."""
    return _encode_standalone(MEMBER_INFO, info)


def decode_member_info(data: bytes) -> MemberInfo:
    """Inverse of :func:`encode_member_info`; raises :class:`DecodeError` only."""
    return member_info_from_wire(_unpack_standalone(data))


def encode_member_record(record: MemberRecord) -> bytes:
    """msgpack bytes of one member record map (e.g. for the local store)."""
    return _encode_standalone(MEMBER_RECORD, record)


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
            return packb(task_copy_to_wire(copy))
        except Exception as exc:
            raise LocalProtocolError(f"cannot encode TaskCopy: {exc!r}") from exc
    return _encode_standalone(TASK_COPY, copy)


def decode_task_copy(data: bytes) -> TaskCopy:
    """Inverse of :func:`encode_task_copy`; raises :class:`DecodeError` only."""
    obj = _unpack_standalone(data)
    try:
        return task_copy_from_wire(obj)
    except DecodeError:
        raise
    except Exception as exc:  # safety net: the contract is DecodeError only
        raise MalformedFrame(f"unexpected decoder failure: {exc!r}") from None


def _encode_standalone(record: Record, value: object) -> bytes:
    try:
        return packb(record.write(value, "", ""))
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
