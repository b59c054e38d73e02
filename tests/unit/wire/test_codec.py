"""Unit tests of the pure wire codec: round trips and every rejection rule."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import msgpack  # type: ignore[import-untyped, unused-ignore]
import pytest

from meshd.errors import (
    DecodeError,
    LocalProtocolError,
    MalformedFrame,
    OversizedFrame,
    TruncatedFrame,
    UnknownMessageType,
    UnsupportedVersion,
)
from meshd.wire import (
    MAX_COUNTER,
    MAX_FRAME_BYTES,
    MAX_MEMBERS,
    PROTOCOL_VERSION,
    Ack,
    AgentInfo,
    CertVote,
    Envelope,
    Error,
    Heartbeat,
    Hello,
    Intro,
    IntroAck,
    LeadAck,
    LeadCert,
    LeadCertReq,
    LeadHeartbeat,
    Leave,
    MemberInfo,
    MemberRecord,
    MemberState,
    MemberUpdate,
    MsgType,
    PackInfo,
    Ping,
    PingReq,
    ReportKind,
    Revocation,
    RevocationKind,
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
    TaskCopy,
    TaskDigest,
    TaskKey,
    TaskKeys,
    TaskOp,
    TaskOpKind,
    TaskQuery,
    TaskReport,
    TaskSubmit,
    TaskSync,
    TaskSyncReq,
    TaskUpdate,
    TransferReq,
    Vote,
    VoteReq,
    Voters,
    decode,
    decode_member_info,
    decode_member_record,
    decode_payload,
    encode,
    encode_member_info,
    encode_member_record,
    encode_payload,
    is_node_id,
    member_info_from_wire,
    member_info_to_wire,
    member_record_from_wire,
    member_record_to_wire,
    msg_type_from_topic,
    topic_for,
)
from meshd.wire.records import Task, TaskState, Transition

A = "0123456789abcdef0123456789abcdef"
B = "fedcba9876543210fedcba9876543210"
C = "00000000000000000000000000000001"

INFO = MemberInfo(
    node_id=A,
    name="alpha",
    role="worker",
    priority=7,
    ed25519_pk=b"\x01" * 32,
    curve_pk=b"\x02" * 32,
    proof=b"\x03" * 32,
    addresses=("192.0.2.10", "fe80::1"),
    router_port=7790,
    pub_port=7791,
    intro_port=7792,
    incarnation=5,
    tier=2,
    started_at=1700000000.5,
)
INFO_B = dataclasses.replace(INFO, node_id=B, name="", role="", addresses=(), started_at=0.0)
RECORDS = (MemberRecord(INFO, MemberState.ALIVE), MemberRecord(INFO_B, MemberState.LEFT))

T = "0123456789abcdef" * 2
TASK = Task(
    task_id=T,
    skill="echo",
    params={"text": "hi"},
    origin=C,
    history=(Transition(TaskState.PENDING, 1.5, C, "submitted"),),
    created_at=1.5,
    updated_at=1.5,
)
COPY = TaskCopy(term=4, seq=2, task=TASK)

PACK_ID = "0123456789abcdef" * 4
PACK = PackInfo("echo", "1.0.0", PACK_ID, 1234, b"\x04" * 32, {"name": "echo", "params": []})

PAYLOADS: dict[MsgType, Any] = {
    MsgType.HELLO: Hello(INFO),
    MsgType.HEARTBEAT: Heartbeat(incarnation=5, digest=b"\xaa" * 16, members=2),
    MsgType.PING: Ping(seq=1),
    MsgType.ACK: Ack(seq=1, target=C, ok=False),
    MsgType.PING_REQ: PingReq(seq=2, target=C),
    MsgType.SYNC_REQ: SyncReq(digest=b""),
    MsgType.SYNC: Sync(RECORDS),
    MsgType.MEMBER_UPDATE: MemberUpdate(RECORDS[:1]),
    MsgType.LEAVE: Leave(incarnation=6),
    MsgType.INTRO: Intro(INFO_B),
    MsgType.INTRO_ACK: IntroAck(INFO, RECORDS),
    MsgType.ERROR: Error(code="not_admitted", message="bad proof"),
    MsgType.VOTE_REQ: VoteReq(term=3, pre=True, priority=10),
    MsgType.VOTE: Vote(term=3, granted=False, pre=True, reason="have_lead"),
    MsgType.LEAD_HEARTBEAT: LeadHeartbeat(term=4, lead=A, seq=17),
    MsgType.LEAD_ACK: LeadAck(term=4, seq=17, ok=True),
    MsgType.STEP_DOWN: StepDown(term=4, successor=B, reason="transfer"),
    MsgType.TRANSFER_REQ: TransferReq(target=C),
    MsgType.LEAD_CERT: LeadCert(
        term=4, lead=A, votes=(CertVote(A, b"\x01" * 64), CertVote(B, b"\x02" * 64))
    ),
    MsgType.LEAD_CERT_REQ: LeadCertReq(term=4),
    MsgType.VOTERS: Voters(4, 2, (A, B, C)),
    MsgType.TASK_SUBMIT: TaskSubmit(COPY),
    MsgType.TASK_ASSIGN: TaskAssign(COPY),
    MsgType.TASK_REPORT: TaskReport(T, 1, ReportKind.COMPLETED, 100.0, "done", None, [1], ""),
    MsgType.TASK_CANCEL: TaskCancel(T, 1, "operator"),
    MsgType.TASK_UPDATE: TaskUpdate(seq_hi=2, copies=(COPY,)),
    MsgType.TASK_ACK: TaskAck(T, True),
    MsgType.TASK_OP: TaskOp(TaskOpKind.RETRY, T, "operator"),
    MsgType.TASK_SYNC_REQ: TaskSyncReq(4, 0, (T,), True),
    MsgType.TASK_SYNC: TaskSync((COPY,), False),
    MsgType.TASK_DIGEST: TaskDigest(3, bytes(16), tuple(range(256))),
    MsgType.TASK_QUERY: TaskQuery("ab" * 16, 2, 5),
    MsgType.TASK_KEYS: TaskKeys((0, 171, 255), (TaskKey("ab" * 16, 2, 5),), True),
    MsgType.AGENT_INFO: AgentInfo(("echo",), ("gpu",), 2),
    MsgType.SKILL_ANNOUNCE: SkillAnnounce((PACK,), False, ("old",)),
    MsgType.SKILL_FETCH: SkillFetch(PACK_ID, 0, 256 * 1024),
    MsgType.SKILL_CHUNK: SkillChunk(PACK_ID, 0, 1234, b"\x05" * 1234),
    MsgType.SKILL_REVOKE: SkillRevoke(
        (Revocation(RevocationKind.PACK, PACK_ID, b"\x06" * 32, 1, b"\x07" * 64),)
    ),
}

BODY_KEYS: dict[MsgType, list[str]] = {
    MsgType.HELLO: ["info"],
    MsgType.HEARTBEAT: ["inc", "digest", "n"],
    MsgType.PING: ["seq"],
    MsgType.ACK: ["seq", "target", "ok"],
    MsgType.PING_REQ: ["seq", "target"],
    MsgType.SYNC_REQ: ["digest"],
    MsgType.SYNC: ["members"],
    MsgType.MEMBER_UPDATE: ["members"],
    MsgType.LEAVE: ["inc"],
    MsgType.INTRO: ["info"],
    MsgType.INTRO_ACK: ["info", "members"],
    MsgType.ERROR: ["code", "message"],
    MsgType.VOTE_REQ: ["term", "pre", "pri"],
    MsgType.VOTE: ["term", "granted", "pre", "reason", "sig"],
    MsgType.LEAD_HEARTBEAT: ["term", "lead", "seq"],
    MsgType.LEAD_ACK: ["term", "seq", "ok", "vv"],
    MsgType.STEP_DOWN: ["term", "successor", "reason"],
    MsgType.TRANSFER_REQ: ["target"],
    MsgType.LEAD_CERT: ["term", "lead", "votes", "pre"],
    MsgType.LEAD_CERT_REQ: ["term"],
    MsgType.VOTERS: ["term", "version", "voters"],
    MsgType.TASK_SUBMIT: ["copy"],
    MsgType.TASK_ASSIGN: ["copy"],
    MsgType.TASK_REPORT: ["task_id", "attempt", "kind", "pct", "message", "ckpt", "result", "code"],
    MsgType.TASK_CANCEL: ["task_id", "attempt", "reason"],
    MsgType.TASK_UPDATE: ["seq_hi", "copies"],
    MsgType.TASK_ACK: ["task_id", "ok", "code", "message"],
    MsgType.TASK_OP: ["op", "task_id", "actor", "target", "ckpt"],
    MsgType.TASK_SYNC_REQ: ["since_term", "since_seq", "ids", "unfinished"],
    MsgType.TASK_SYNC: ["copies", "more"],
    MsgType.TASK_DIGEST: ["term", "root", "buckets", "seq"],
    MsgType.TASK_QUERY: ["task_id", "attempt", "term"],
    MsgType.TASK_KEYS: ["buckets", "keys", "more"],
    MsgType.AGENT_INFO: ["skills", "caps", "max_concurrent"],
    MsgType.SKILL_ANNOUNCE: ["packs", "full", "removed"],
    MsgType.SKILL_FETCH: ["pack_id", "offset", "length"],
    MsgType.SKILL_CHUNK: ["pack_id", "offset", "total", "data", "error"],
    MsgType.SKILL_REVOKE: ["records"],
}
INFO_KEYS = [
    *("id", "name", "role", "pri", "tier", "ek", "ck", "proof"),
    *("addrs", "rp", "pp", "ip", "inc", "pv", "start", "sig"),
]


def make(msg_type: MsgType, payload: Any = None, **kw: Any) -> Envelope:
    fields: dict[str, Any] = {
        "msg_type": msg_type,
        "msg_id": bytes(range(16)),
        "sender": A,
        "timestamp_ms": 1_700_000_000_123,
        "payload": PAYLOADS[msg_type] if payload is None else payload,
    }
    fields.update(kw)
    return Envelope(**fields)


HB = make(MsgType.HEARTBEAT)
HB_BYTES = encode(HB)


def wire(env: Envelope) -> list[Any]:
    obj: list[Any] = msgpack.unpackb(encode(env), raw=False)
    return obj


def pack(obj: Any) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


# ---- round trips --------------------------------------------------------------------


@pytest.mark.parametrize("msg_type", list(MsgType), ids=lambda t: t.name)
def test_round_trip_every_type(msg_type: MsgType) -> None:
    env = make(msg_type, correlation_id=b"\x09" * 16, term=3)
    data = encode(env)
    assert isinstance(data, bytes)
    assert decode(data) == env
    assert encode(decode(data)) == data


@pytest.mark.parametrize("msg_type", list(MsgType), ids=lambda t: t.name)
def test_body_keys_in_documented_order(msg_type: MsgType) -> None:
    obj = msgpack.unpackb(encode(make(msg_type)), raw=False, object_pairs_hook=list)
    assert len(obj) == 8
    assert [k for k, _ in obj[7]] == BODY_KEYS[msg_type]


def test_envelope_layout() -> None:
    env = make(MsgType.PING, correlation_id=b"\x05" * 16, term=9)
    obj = msgpack.unpackb(encode(env), raw=False)
    assert obj == [1, 3, bytes(range(16)), A, 1_700_000_000_123, b"\x05" * 16, 9, {"seq": 1}]
    # bytes are msgpack bin (0xc4), strings msgpack str (0xd9 for 32 chars)
    data = encode(env)
    assert data[0] == 0x98 and data[1] == 0x01 and data[2] == 0x03
    assert data[3:5] == b"\xc4\x10"
    assert data[21:23] == b"\xd9\x20"


def test_member_info_wire_keys_in_order() -> None:
    assert list(member_info_to_wire(INFO)) == INFO_KEYS
    obj = msgpack.unpackb(encode(make(MsgType.HELLO)), raw=False, object_pairs_hook=list)
    assert [k for k, _ in obj[7][0][1]] == INFO_KEYS


def test_encoding_is_deterministic() -> None:
    env = make(MsgType.INTRO_ACK)
    assert encode(env) == encode(env) == encode(dataclasses.replace(env))


def test_extreme_values_round_trip() -> None:
    big = 2**63 - 1
    top = MAX_COUNTER  # terms, seqs, incarnations
    info = dataclasses.replace(
        INFO,
        priority=2**31 - 1,
        tier=2**31 - 1,
        addresses=tuple("x" * 64 for _ in range(16)),
        name="n" * 64,
        role="é" * 64,
        router_port=65535,
        pub_port=0,
        intro_port=0,
        incarnation=top,
        protocol_version=big,
        started_at=0.0,
    )
    envs = [
        make(MsgType.HEARTBEAT, Heartbeat(top, b"\xff" * 64, big), timestamp_ms=big, term=top),
        make(MsgType.HELLO, Hello(info), timestamp_ms=0),
        make(MsgType.ERROR, Error("x" * 64, "m" * 1024)),
        make(MsgType.ACK, Ack(0, "", True)),
        make(MsgType.SYNC, Sync(tuple(MemberRecord(INFO_B, MemberState.DEAD) for _ in range(50)))),
        make(MsgType.VOTE_REQ, VoteReq(top, False, 2**31 - 1), term=top),
        make(MsgType.VOTE, Vote(top, True, False, "r" * 64)),
        make(MsgType.VOTE, Vote(0, False, False, "")),
        make(MsgType.VOTE, Vote(top, True, False, "", b"\xff" * 64)),
        make(
            MsgType.LEAD_CERT,
            LeadCert(top, B, tuple(CertVote(C, bytes(64)) for _ in range(300)), True),
        ),
        make(MsgType.LEAD_CERT_REQ, LeadCertReq(top)),
        make(MsgType.LEAD_HEARTBEAT, LeadHeartbeat(top, B, top)),
        make(MsgType.LEAD_ACK, LeadAck(0, 0, False)),
        make(MsgType.STEP_DOWN, StepDown(top, "", "")),
        make(MsgType.STEP_DOWN, StepDown(1, C, "é" * 64)),
        make(MsgType.TRANSFER_REQ, TransferReq("")),
    ]
    for env in envs:
        assert decode(encode(env)) == env


def test_max_members_accepted() -> None:
    recs = tuple(MemberRecord(INFO_B, MemberState.SUSPECT) for _ in range(MAX_MEMBERS))
    env = make(MsgType.MEMBER_UPDATE, MemberUpdate(recs))
    data = encode(env)
    assert decode(data, max_size=len(data)) == env


def test_int_started_at_is_encoded_as_float() -> None:
    env = make(MsgType.HELLO, Hello(dataclasses.replace(INFO, started_at=12)))
    got = decode(encode(env))
    assert isinstance(got.payload, Hello)
    assert type(got.payload.info.started_at) is float and got.payload.info.started_at == 12.0


def test_decode_accepts_bytes_like() -> None:
    assert decode(bytearray(HB_BYTES)) == HB
    assert decode(memoryview(HB_BYTES)) == HB


# ---- envelope-level rejection rules -------------------------------------------------


def test_oversized_checked_before_unpacking() -> None:
    assert decode(HB_BYTES, max_size=len(HB_BYTES)) == HB
    with pytest.raises(OversizedFrame):
        decode(HB_BYTES, max_size=len(HB_BYTES) - 1)
    with pytest.raises(OversizedFrame):
        decode(b"\xc1" * 100, max_size=99)  # garbage, but too big first
    with pytest.raises(OversizedFrame):
        decode(b"\x00" * (MAX_FRAME_BYTES + 1))


def test_empty_frame_is_truncated() -> None:
    with pytest.raises(TruncatedFrame):
        decode(b"")


@pytest.mark.parametrize("msg_type", list(MsgType), ids=lambda t: t.name)
def test_every_prefix_is_truncated(msg_type: MsgType) -> None:
    data = encode(make(msg_type))
    for end in range(len(data)):
        with pytest.raises(TruncatedFrame):
            decode(data[:end])


def test_trailing_bytes() -> None:
    for extra in (b"\xc0", b"\x00", HB_BYTES):
        with pytest.raises(MalformedFrame, match="trailing"):
            decode(HB_BYTES + extra)


@pytest.mark.parametrize(
    "obj", [{"v": 1}, 1, "x", None, b"\x01", True, 1.5, []], ids=lambda o: type(o).__name__
)
def test_not_an_envelope_array(obj: Any) -> None:
    with pytest.raises(MalformedFrame, match="envelope"):
        decode(pack(obj))


@pytest.mark.parametrize("version", ["1", True, 1.0, None, b"\x01", [1]])
def test_version_of_wrong_type(version: Any) -> None:
    with pytest.raises(MalformedFrame, match="version"):
        decode(pack([version, *wire(HB)[1:]]))


@pytest.mark.parametrize("version", [0, 2, 255, -1, 2**64 - 1, -(2**63)])
def test_unsupported_version(version: int) -> None:
    with pytest.raises(UnsupportedVersion):
        decode(pack([version, *wire(HB)[1:]]))


@pytest.mark.parametrize(
    "data",
    [
        pack([2]),
        pack([2, "future", {"x": 1}]),
        pack([2, *wire(HB)[1:]])[:2],  # truncated after the version
        pack([2, *wire(HB)[1:]])[:-1],
        pack([2, *wire(HB)[1:]]) + b"\xc0",  # trailing bytes
        pack([2, {1: 2}]),  # int map key: invalid in v1 unpacking
        pack([2, "x"])[:-1] + b"\xc1",  # reserved byte after the version
        b"\xdc\x00\x03\x02\xc1",  # array16 header
        b"\xdd\x00\x00\x00\x03\xcd\x01\x00",  # array32 header, uint16 version 256
        pack([-5, 1]),
    ],
)
def test_version_is_checked_first(data: bytes) -> None:
    with pytest.raises(UnsupportedVersion):
        decode(data)


@pytest.mark.parametrize("n", [1, 7, 9, 15])
def test_wrong_array_length(n: int) -> None:
    w = wire(HB)
    items = (w + [None] * 10)[:n]
    with pytest.raises(MalformedFrame, match="envelope"):
        decode(pack(items))


@pytest.mark.parametrize("code", [0, len(MsgType) + 1, 999, 65535, 2**64 - 1, -1])
def test_unknown_message_type(code: int) -> None:
    w = wire(HB)
    with pytest.raises(UnknownMessageType):
        decode(pack([w[0], code, *w[2:]]))


def test_unknown_type_checked_before_other_fields() -> None:
    with pytest.raises(UnknownMessageType):
        decode(pack([1, 99, None, None, None, None, None, None]))


ENVELOPE_CASES: list[tuple[int, Any, str]] = [
    (1, "2", "type"),
    (1, True, "type"),
    (1, 2.0, "type"),
    (2, b"\x00" * 15, "msg_id"),
    (2, b"\x00" * 17, "msg_id"),
    (2, "0" * 16, "msg_id"),
    (2, None, "msg_id"),
    (3, A.upper(), "sender"),
    (3, A[:-1], "sender"),
    (3, A + "0", "sender"),
    (3, "g" * 32, "sender"),
    (3, "\u0660" * 32, "sender"),  # Arabic-Indic digit zero: not ASCII hex
    (3, A.encode(), "sender"),
    (3, "", "sender"),
    (4, -1, "timestamp_ms"),
    (4, 2**63, "timestamp_ms"),
    (4, 1.0, "timestamp_ms"),
    (4, False, "timestamp_ms"),
    (5, b"\x00" * 15, "correlation_id"),
    (5, "x" * 16, "correlation_id"),
    (5, False, "correlation_id"),
    (6, -1, "term"),
    (6, 2**63, "term"),
    (6, MAX_COUNTER + 1, "term"),
    (6, True, "term"),
    (6, None, "term"),
    (7, [], "body"),
    (7, None, "body"),
    (7, b"", "body"),
]


@pytest.mark.parametrize(("index", "value", "field"), ENVELOPE_CASES)
def test_bad_envelope_field(index: int, value: Any, field: str) -> None:
    w = wire(HB)
    w[index] = value
    with pytest.raises(MalformedFrame) as info:
        decode(pack(w))
    assert str(info.value).startswith(field)


def test_extreme_envelope_values_accepted() -> None:
    w = wire(HB)
    w[4], w[6], w[5] = 2**63 - 1, 0, None
    assert decode(pack(w)).timestamp_ms == 2**63 - 1


@pytest.mark.parametrize(
    "data",
    [
        b"\xc1",  # reserved byte
        pack([1, 2, b"", "\x00"])[:-1] + b"\xc1",
        b"\x98\x01\x02\xa2\xff\xfe" + b"\xc0" * 5,  # invalid UTF-8 in a str
        b"\x98\x01\x02" + b"\x81\x01\x02" + b"\xc0" * 5,  # int map key
        b"\x91" * 5000 + b"\xc0",  # nesting deeper than the unpacker allows
        b"\x98\x01\x02\xd4\x05\x00" + b"\xc0" * 5,  # ext type in place of msg_id
        b"\x98\x01\x02\xd6\xff\x00\x00\x00\x00" + b"\xc0" * 5,  # timestamp ext
    ],
)
def test_invalid_msgpack_is_malformed(data: bytes) -> None:
    with pytest.raises(MalformedFrame):
        decode(data)


def test_not_bytes_is_malformed() -> None:
    for bad in (None, 12, "abc", object()):
        with pytest.raises(MalformedFrame):
            decode(bad)  # type: ignore[arg-type]


def test_reasons() -> None:
    assert MalformedFrame("x").reason == "malformed"
    cases: list[tuple[bytes, str]] = [
        (b"", "truncated"),
        (HB_BYTES + b"\x00", "malformed"),
        (pack([7]), "version"),
        (pack([1, 77, *wire(HB)[2:]]), "unknown_type"),
    ]
    for data, reason in cases:
        with pytest.raises(DecodeError) as info:
            decode(data)
        assert info.value.reason == reason
    with pytest.raises(DecodeError) as info:
        decode(HB_BYTES, max_size=3)
    assert info.value.reason == "oversized"


# ---- body-level rejection rules -----------------------------------------------------


def body_case(msg_type: MsgType, path: list[Any], value: Any) -> bytes:
    """The frame of ``make(msg_type)`` with the body item at ``path`` replaced
    (or deleted when value is ``DELETE``)."""
    w = wire(make(msg_type))
    target = w[7]
    for step in path[:-1]:
        target = target[step]
    if value is DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return pack(w)


DELETE = object()
H, HE, AK, PR, SQ, SY, IA, ER = (
    MsgType.HELLO,
    MsgType.HEARTBEAT,
    MsgType.ACK,
    MsgType.PING_REQ,
    MsgType.SYNC_REQ,
    MsgType.SYNC,
    MsgType.INTRO_ACK,
    MsgType.ERROR,
)

VQ, VO, LH, LA, SD, TR = (
    MsgType.VOTE_REQ,
    MsgType.VOTE,
    MsgType.LEAD_HEARTBEAT,
    MsgType.LEAD_ACK,
    MsgType.STEP_DOWN,
    MsgType.TRANSFER_REQ,
)

BODY_CASES: list[tuple[MsgType, list[Any], Any, str]] = [
    (HE, ["inc"], DELETE, "body.inc"),
    (HE, ["inc"], True, "body.inc"),
    (HE, ["inc"], -1, "body.inc"),
    (HE, ["digest"], b"\x00" * 65, "body.digest"),
    (HE, ["digest"], "ab", "body.digest"),
    (HE, ["n"], DELETE, "body.n"),
    (HE, ["n"], 2**63, "body.n"),
    (MsgType.PING, ["seq"], 1.0, "body.seq"),
    (MsgType.PING, ["seq"], DELETE, "body.seq"),
    (AK, ["ok"], 1, "body.ok"),
    (AK, ["ok"], None, "body.ok"),
    (AK, ["ok"], DELETE, "body.ok"),
    (AK, ["target"], "x", "body.target"),
    (AK, ["target"], None, "body.target"),
    (AK, ["target"], DELETE, "body.target"),
    (PR, ["target"], "", "body.target"),
    (PR, ["target"], A.upper(), "body.target"),
    (PR, ["seq"], "1", "body.seq"),
    (SQ, ["digest"], None, "body.digest"),
    (MsgType.LEAVE, ["inc"], DELETE, "body.inc"),
    (SY, ["members"], DELETE, "body.members"),
    (SY, ["members"], {}, "body.members"),
    (SY, ["members"], [None] * (MAX_MEMBERS + 1), "body.members"),
    (SY, ["members", 0], [], "body.members[0]"),
    (SY, ["members", 1, "s"], "zombie", "body.members[1].s"),
    (SY, ["members", 1, "s"], "ALIVE", "body.members[1].s"),
    (SY, ["members", 1, "s"], ["alive"], "body.members[1].s"),
    (SY, ["members", 1, "s"], {"a": 1}, "body.members[1].s"),
    (SY, ["members", 1, "s"], DELETE, "body.members[1].s"),
    (SY, ["members", 1, "m"], DELETE, "body.members[1].m"),
    (SY, ["members", 1, "m"], [], "body.members[1].m"),
    (SY, ["members", 0, "m", "id"], "nope", "body.members[0].m.id"),
    (IA, ["members"], DELETE, "body.members"),
    (IA, ["info"], DELETE, "body.info"),
    (MsgType.MEMBER_UPDATE, ["members", 0, "m", "rp"], 65536, "body.members[0].m.rp"),
    (ER, ["code"], "", "body.code"),
    (ER, ["code"], "c" * 65, "body.code"),
    (ER, ["code"], DELETE, "body.code"),
    (ER, ["message"], "m" * 1025, "body.message"),
    (ER, ["message"], b"m", "body.message"),
    (H, ["info"], None, "body.info"),
    (H, ["info"], [], "body.info"),
    (H, ["info", "name"], "n" * 65, "body.info.name"),
    (H, ["info", "name"], None, "body.info.name"),
    (H, ["info", "role"], "r" * 65, "body.info.role"),
    (H, ["info", "pri"], 2**31, "body.info.pri"),
    (H, ["info", "pri"], -1, "body.info.pri"),
    (H, ["info", "tier"], 2**31, "body.info.tier"),
    (H, ["info", "ek"], b"\x00" * 31, "body.info.ek"),
    (H, ["info", "ck"], b"\x00" * 33, "body.info.ck"),
    (H, ["info", "proof"], "p" * 32, "body.info.proof"),
    (H, ["info", "addrs"], ["a"] * 17, "body.info.addrs"),
    (H, ["info", "addrs"], "10.0.0.1", "body.info.addrs"),
    (H, ["info", "addrs"], ["a" * 65], "body.info.addrs[0]"),
    (H, ["info", "addrs"], ["ok", 5], "body.info.addrs[1]"),
    (H, ["info", "rp"], -1, "body.info.rp"),
    (H, ["info", "pp"], 65536, "body.info.pp"),
    (H, ["info", "ip"], "7792", "body.info.ip"),
    (H, ["info", "inc"], 2**63, "body.info.inc"),
    (H, ["info", "inc"], MAX_COUNTER + 1, "body.info.inc"),
    (H, ["info", "pv"], None, "body.info.pv"),
    (H, ["info", "start"], 5, "body.info.start"),
    (H, ["info", "start"], math.nan, "body.info.start"),
    (H, ["info", "start"], math.inf, "body.info.start"),
    (H, ["info", "start"], -1.0, "body.info.start"),
    *[(H, ["info", key], DELETE, f"body.info.{key}") for key in INFO_KEYS],
    (VQ, ["term"], -1, "body.term"),
    (VQ, ["term"], 2**63, "body.term"),
    (VQ, ["term"], MAX_COUNTER + 1, "body.term"),
    (VQ, ["term"], DELETE, "body.term"),
    (VQ, ["pre"], 1, "body.pre"),
    (VQ, ["pre"], None, "body.pre"),
    (VQ, ["pre"], DELETE, "body.pre"),
    (VQ, ["pri"], 2**31, "body.pri"),
    (VQ, ["pri"], True, "body.pri"),
    (VQ, ["pri"], DELETE, "body.pri"),
    (VO, ["granted"], 0, "body.granted"),
    (VO, ["granted"], DELETE, "body.granted"),
    (VO, ["pre"], "yes", "body.pre"),
    (VO, ["reason"], "r" * 65, "body.reason"),
    (VO, ["reason"], None, "body.reason"),
    (VO, ["reason"], b"x", "body.reason"),
    (VO, ["reason"], DELETE, "body.reason"),
    (VO, ["term"], 1.0, "body.term"),
    (LH, ["lead"], "", "body.lead"),
    (LH, ["lead"], A.upper(), "body.lead"),
    (LH, ["lead"], None, "body.lead"),
    (LH, ["lead"], DELETE, "body.lead"),
    (LH, ["seq"], -1, "body.seq"),
    (LH, ["term"], False, "body.term"),
    (LA, ["ok"], 1, "body.ok"),
    (LA, ["ok"], DELETE, "body.ok"),
    (LA, ["seq"], "1", "body.seq"),
    (LA, ["term"], DELETE, "body.term"),
    (SD, ["successor"], "x", "body.successor"),
    (SD, ["successor"], None, "body.successor"),
    (SD, ["successor"], DELETE, "body.successor"),
    (SD, ["reason"], "r" * 65, "body.reason"),
    (SD, ["reason"], DELETE, "body.reason"),
    (SD, ["term"], -5, "body.term"),
    (TR, ["target"], "x", "body.target"),
    (TR, ["target"], 0, "body.target"),
    (TR, ["target"], DELETE, "body.target"),
]


@pytest.mark.parametrize(
    ("msg_type", "path", "value", "field"),
    BODY_CASES,
    ids=[f"{c[0].name}-{c[3]}-{i}" for i, c in enumerate(BODY_CASES)],
)
def test_bad_body_field(msg_type: MsgType, path: list[Any], value: Any, field: str) -> None:
    with pytest.raises(MalformedFrame) as info:
        decode(body_case(msg_type, path, value))
    assert str(info.value).startswith(field + ":"), str(info.value)


def test_float32_started_at_is_accepted() -> None:
    data = body_case(H, ["info", "start"], 1.5)
    # replace the float64 1.5 (cb 3ff8000000000000) by float32 1.5 (ca 3fc00000)
    data = data.replace(b"\xcb\x3f\xf8\x00\x00\x00\x00\x00\x00", b"\xca\x3f\xc0\x00\x00")
    got = decode(data)
    assert isinstance(got.payload, Hello) and got.payload.info.started_at == 1.5


def test_unknown_keys_are_ignored_everywhere() -> None:
    env = make(MsgType.INTRO_ACK)
    w = wire(env)
    w[7] = {"zz": 1, **w[7], "future": {"x": [1, 2]}}
    w[7]["info"]["new_field"] = b"\x00"
    w[7]["members"][0]["extra"] = "y"
    w[7]["members"][0]["m"]["later"] = None
    assert decode(pack(w)) == env
    # bin keys are unknown keys too
    w = wire(HB)
    w[7][b"inc"] = 99
    assert decode(pack(w)) == HB


def test_member_list_errors_name_the_index() -> None:
    with pytest.raises(MalformedFrame, match=r"^body\.members\[1\]\.m\.ek:"):
        decode(body_case(SY, ["members", 1, "m", "ek"], b""))


# ---- encode-side checks -------------------------------------------------------------


def test_payload_type_mismatch() -> None:
    with pytest.raises(LocalProtocolError, match="does not match"):
        encode(make(MsgType.PING, Heartbeat(1, b"", 1)))
    with pytest.raises(LocalProtocolError):
        encode(make(MsgType.INTRO, Hello(INFO)))  # same body shape, other type


def test_encode_rejects_non_payload() -> None:
    with pytest.raises(LocalProtocolError, match="not a payload"):
        encode(make(MsgType.PING, {"seq": 1}))
    with pytest.raises(LocalProtocolError):
        encode_payload("x")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "env",
    [
        make(MsgType.PING, sender="X" * 32),
        make(MsgType.PING, msg_id=b"\x00" * 15),
        make(MsgType.PING, msg_id=bytearray(16)),
        make(MsgType.PING, correlation_id=b"\x00"),
        make(MsgType.PING, timestamp_ms=-5),
        make(MsgType.PING, term=2**63),
        make(MsgType.PING, version=2),
        make(MsgType.PING, Ping(-1)),
        make(MsgType.PING, Ping(True)),
        make(MsgType.ACK, Ack(1, "bad", True)),
        make(MsgType.ACK, Ack(1, "", 1)),  # type: ignore[arg-type]
        make(MsgType.HELLO, Hello(dataclasses.replace(INFO, name="n" * 65))),
        make(MsgType.HELLO, Hello(dataclasses.replace(INFO, started_at=math.nan))),
        make(MsgType.HELLO, Hello(dataclasses.replace(INFO, addresses=("\ud800",)))),
        make(MsgType.HELLO, Hello(dataclasses.replace(INFO, name="\ud800"))),
        make(MsgType.SYNC, Sync((MemberRecord(INFO, "zombie"),))),  # type: ignore[arg-type]
        make(MsgType.SYNC, Sync(("not a record",))),  # type: ignore[arg-type]
        make(MsgType.ERROR, Error("", "no code")),
    ],
)
def test_encode_rejects_invalid_envelopes(env: Envelope) -> None:
    with pytest.raises(LocalProtocolError):
        encode(env)


def test_encode_accepts_plain_str_state() -> None:
    env = make(MsgType.SYNC, Sync((MemberRecord(INFO, "suspect"),)))  # type: ignore[arg-type]
    got = decode(encode(env)).payload
    assert isinstance(got, Sync) and got.members[0].state is MemberState.SUSPECT


def test_encode_max_size() -> None:
    assert encode(HB, max_size=len(HB_BYTES)) == HB_BYTES
    with pytest.raises(LocalProtocolError, match="over the limit"):
        encode(HB, max_size=len(HB_BYTES) - 1)


# ---- helpers ------------------------------------------------------------------------


def test_encode_decode_payload() -> None:
    for msg_type, payload in PAYLOADS.items():
        t, body = encode_payload(payload)
        assert t is msg_type
        assert list(body) == BODY_KEYS[msg_type]
        assert decode_payload(t, msgpack.unpackb(pack(body), raw=False)) == payload
    with pytest.raises(MalformedFrame):
        decode_payload(MsgType.PING, [])
    with pytest.raises(UnknownMessageType):
        decode_payload(99, {})  # type: ignore[arg-type]


def test_member_wire_helpers() -> None:
    assert member_info_from_wire(member_info_to_wire(INFO)) == INFO
    rec = MemberRecord(INFO, MemberState.DEAD)
    assert member_record_to_wire(rec) == {"m": member_info_to_wire(INFO), "s": "dead"}
    assert member_record_from_wire(member_record_to_wire(rec)) == rec
    assert decode_member_info(encode_member_info(INFO)) == INFO
    assert decode_member_record(encode_member_record(rec)) == rec
    with pytest.raises(MalformedFrame, match=r"^ek:"):
        member_info_from_wire({**member_info_to_wire(INFO), "ek": b""})
    with pytest.raises(MalformedFrame, match=r"^m\.id:"):
        member_record_from_wire({"m": {**member_info_to_wire(INFO), "id": "x"}, "s": "alive"})
    with pytest.raises(MalformedFrame):
        member_info_from_wire([])
    for bad in (b"", b"\xc1", encode_member_info(INFO)[:-1], encode_member_info(INFO) + b"\x00"):
        with pytest.raises(DecodeError):
            decode_member_info(bad)
    with pytest.raises(LocalProtocolError):
        encode_member_info(dataclasses.replace(INFO, node_id="x"))
    with pytest.raises(LocalProtocolError):
        encode_member_record(MemberRecord(INFO, "gone"))  # type: ignore[arg-type]


def test_topics() -> None:
    seen = set()
    for t in MsgType:
        topic = topic_for(t)
        assert topic == int(t).to_bytes(2, "big")
        assert msg_type_from_topic(topic) is t
        seen.add(topic)
    assert topic_for(MsgType.HEARTBEAT) == b"\x00\x02"
    assert len(seen) == len(MsgType)
    with pytest.raises(LocalProtocolError):
        topic_for(99)  # type: ignore[arg-type]
    with pytest.raises(MalformedFrame):
        msg_type_from_topic(b"\x02")
    with pytest.raises(UnknownMessageType):
        msg_type_from_topic(b"\xff\xff")


def test_is_node_id() -> None:
    assert is_node_id(A)
    assert not is_node_id(A.upper())
    assert not is_node_id(A + "\n")
    assert not is_node_id(A.encode())
    assert not is_node_id(None)


def test_protocol_version_constant() -> None:
    assert PROTOCOL_VERSION == 1
    assert HB.version == 1
