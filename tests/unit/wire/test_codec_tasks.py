"""Unit tests of the task messages of the wire codec (PROTOCOL.md, "Tasks"): round trips,
canonical form, every rejection rule, the standalone task copy of the local store."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import msgpack  # type: ignore[import-untyped, unused-ignore]
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshd.errors import DecodeError, LocalProtocolError, MalformedFrame, TruncatedFrame
from meshd.tasks.model import new_task
from meshd.wire import (
    MAX_AGENT_CONCURRENCY,
    MAX_CAPABILITIES,
    MAX_CHECKPOINT_BYTES,
    MAX_SKILLS,
    MAX_SYNC_IDS,
    MAX_TASK_COPIES,
    MAX_TASK_DEPS,
    MAX_TASK_HISTORY,
    MAX_VALUE_DEPTH,
    PAYLOAD_TYPES,
    AgentInfo,
    Envelope,
    MsgType,
    Payload,
    ReportKind,
    TaskAck,
    TaskAssign,
    TaskCancel,
    TaskCopy,
    TaskOp,
    TaskOpKind,
    TaskReport,
    TaskSubmit,
    TaskSync,
    TaskSyncReq,
    TaskUpdate,
    decode,
    decode_payload,
    decode_task_copy,
    encode,
    encode_payload,
    encode_task_copy,
    task_copy_from_wire,
    task_copy_to_wire,
    task_from_wire,
    task_to_wire,
)
from meshd.wire.records import (
    Assignment,
    Progress,
    Requirement,
    Task,
    TaskFailure,
    TaskState,
    Transition,
)

A = "0123456789abcdef0123456789abcdef"
B = "fedcba9876543210fedcba9876543210"
C = "00000000000000000000000000000001"
T1 = "11111111111111111111111111111111"
T2 = "22222222222222222222222222222222"
T3 = "33333333333333333333333333333333"
NOW = 1_767_225_600.0

TASK_KEYS = [
    *("id", "skill", "params", "origin", "req", "pri", "timeout", "deadline", "idem"),
    *("verify", "parent", "deps", "retries", "retry_limit", "state", "hist", "prog"),
    *("ckpt", "result", "error", "to", "fence", "attempt", "created", "updated"),
]

#: Every optional field None / empty: a task as its origin first stores it.
MINIMAL = Task(task_id=T1, skill="e", params={}, origin=C)

#: Every field set, with values of every msgpack kind in params and result.
FULL = Task(
    task_id=T2,
    skill="summarize",
    params={
        "url": "https://example.org/r.pdf",
        "n": 200,
        "neg": -(2**63),
        "big": 2**64 - 1,
        "ratio": 0.25,
        "flag": False,
        "none": None,
        "raw": b"\x00\xff",
        "list": [1, "two", [3.5, None]],
        "map": {"x": {"y": "z"}, "é": 1},
    },
    origin=C,
    requirement=Requirement(role="worker", capability="gpu", node="alpha"),
    priority=9,
    timeout_s=120.5,
    deadline=NOW + 3600.0,
    idempotent=True,
    verify=True,
    parent=T1,
    depends_on=(T1, T3),
    retry_count=2,
    retry_limit=3,
    state=TaskState.RUNNING,
    history=(
        Transition(TaskState.PENDING, NOW, C, "submitted"),
        Transition(TaskState.ASSIGNED, NOW + 1.0, B, "assigned to alpha"),
        Transition(TaskState.RUNNING, NOW + 1.25, A, ""),
    ),
    progress=Progress(33.25, "page 3 of 9"),
    checkpoint=b"\x01\x02\x03",
    result={"partial": ["a", "b"], "raw": b"\x01", "pi": 3.14159},
    error=TaskFailure("timeout", "attempt 1 took too long"),
    assigned_to=A,
    assignment=Assignment(term=8, lead=B),
    attempt=3,
    created_at=NOW,
    updated_at=NOW + 1.25,
)
COPY = TaskCopy(term=8, seq=12, task=FULL)
COPY_MIN = TaskCopy(term=0, seq=0, task=MINIMAL)

PAYLOADS: list[tuple[str, Payload]] = [
    ("submit_full", TaskSubmit(COPY)),
    ("submit_minimal", TaskSubmit(COPY_MIN)),
    ("assign", TaskAssign(COPY)),
    (
        "report_completed",
        TaskReport(T2, 3, ReportKind.COMPLETED, 100.0, "done", None, {"r": [1, 2]}, ""),
    ),
    ("report_progress", TaskReport(T2, 3, ReportKind.PROGRESS, 42.5, "p", b"\x00" * 10)),
    ("report_failed", TaskReport(T2, 3, ReportKind.FAILED, message="boom", code="skill_error")),
    ("report_rejected", TaskReport(T2, 3, ReportKind.REJECTED, code="busy")),
    ("report_started", TaskReport(T2, 3, ReportKind.STARTED)),
    ("report_lost", TaskReport(T2, 0, ReportKind.LOST, result=b"bytes result")),
    ("cancel", TaskCancel(T2, 3, "operator")),
    ("cancel_any_attempt", TaskCancel(T2, 0, "")),
    ("update", TaskUpdate(13, (COPY, COPY_MIN))),
    ("update_beacon", TaskUpdate(0, ())),
    ("ack", TaskAck(T2, True)),
    ("ack_refused", TaskAck("", False, "not_lead", "m" * 1024)),
    ("op_handoff", TaskOp(TaskOpKind.HANDOFF, T2, A, "alpha", b"\x09" * 5)),
    ("op_cancel", TaskOp(TaskOpKind.CANCEL, T2, "operator")),
    ("op_retry", TaskOp(TaskOpKind.RETRY, T2, "", "", None)),
    ("sync_req", TaskSyncReq(8, 12, (T1, T2), True)),
    ("sync_req_plain", TaskSyncReq(0, 0)),
    ("sync", TaskSync((COPY,), True)),
    ("sync_last", TaskSync((), False)),
    ("agent_info", AgentInfo(("echo", "summarize"), ("gpu",), 4)),
    ("agent_info_empty", AgentInfo((), (), 0)),
]


def make(payload: Payload, **kw: Any) -> Envelope:
    fields: dict[str, Any] = {
        "msg_type": PAYLOAD_TYPES[type(payload)],
        "msg_id": bytes(range(16)),
        "sender": A,
        "timestamp_ms": 1_767_225_600_123,
        "payload": payload,
        "term": 8,
    }
    fields.update(kw)
    return Envelope(**fields)


def wire(env: Envelope) -> list[Any]:
    obj: list[Any] = msgpack.unpackb(encode(env), raw=False)
    return obj


def pack(obj: Any) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


# ---- round trips and canonical form -------------------------------------------------


@pytest.mark.parametrize(("name", "payload"), PAYLOADS, ids=[n for n, _ in PAYLOADS])
def test_round_trip(name: str, payload: Payload) -> None:
    env = make(payload, correlation_id=b"\x07" * 16)
    data = encode(env)
    assert decode(data) == env
    assert encode(decode(data)) == data
    msg_type, body = encode_payload(payload)
    assert decode_payload(msg_type, msgpack.unpackb(pack(body), raw=False)) == payload


def test_every_task_message_type_is_covered() -> None:
    covered = {encode_payload(p)[0] for _, p in PAYLOADS}
    assert covered == {t for t in MsgType if MsgType.TASK_SUBMIT <= t <= MsgType.AGENT_INFO}


def test_task_wire_keys_in_order() -> None:
    assert list(task_to_wire(FULL)) == TASK_KEYS
    assert list(task_copy_to_wire(COPY)) == ["term", "seq", "task"]
    obj = msgpack.unpackb(encode(make(TaskSubmit(COPY))), raw=False, object_pairs_hook=list)
    copy = obj[7][0][1]
    assert [k for k, _ in copy] == ["term", "seq", "task"]
    assert [k for k, _ in copy[2][1]] == TASK_KEYS


def test_task_wire_form() -> None:
    w = task_to_wire(FULL)
    assert w["req"] == ["worker", "gpu", "alpha"]
    assert w["state"] == "running"
    assert w["hist"][1] == ["assigned", NOW + 1.0, B, "assigned to alpha"]
    assert w["prog"] == [33.25, "page 3 of 9"]
    assert w["error"] == ["timeout", "attempt 1 took too long"]
    assert w["fence"] == [8, B]
    assert w["deps"] == [T1, T3]
    m = task_to_wire(MINIMAL)
    assert m["req"] == [None, None, None]
    for key in ("deadline", "parent", "ckpt", "result", "error", "to", "fence"):
        assert m[key] is None
    assert m["hist"] == [] and m["deps"] == []


@pytest.mark.parametrize("task", [FULL, MINIMAL], ids=["full", "minimal"])
def test_task_helpers_round_trip(task: Task) -> None:
    assert task_from_wire(task_to_wire(task)) == task
    copy = TaskCopy(5, 6, task)
    assert task_copy_from_wire(task_copy_to_wire(copy)) == copy
    data = encode_task_copy(copy)
    assert decode_task_copy(data) == copy
    assert encode_task_copy(decode_task_copy(data)) == data


def test_new_task_round_trips() -> None:
    task = new_task("echo", {"text": "hi"}, C, NOW, depends_on=(T1,), parent=T3)
    assert task_from_wire(task_to_wire(task)) == task
    assert decode_task_copy(encode_task_copy(TaskCopy(0, 0, task))).task == task


def test_encoding_is_deterministic() -> None:
    env = make(TaskUpdate(13, (COPY, COPY_MIN)))
    rebuilt = dataclasses.replace(COPY, task=dataclasses.replace(FULL, params=dict(FULL.params)))
    assert encode(env) == encode(make(TaskUpdate(13, (rebuilt, COPY_MIN))))


def test_extremes_accepted() -> None:
    big = 2**63 - 1
    top = 2**62 - 1  # counters: terms, seqs, attempts
    task = dataclasses.replace(
        FULL,
        skill="s" * 64,
        priority=0,
        timeout_s=5e-324,
        deadline=0.0,
        depends_on=tuple(f"{i:032x}" for i in range(MAX_TASK_DEPS)),
        retry_count=big,
        retry_limit=0,
        history=tuple(
            Transition(TaskState.RETRY, 0.0, "a" * 64, "r" * 500) for _ in range(MAX_TASK_HISTORY)
        ),
        progress=Progress(100.0, "m" * 500),
        checkpoint=b"\xff" * MAX_CHECKPOINT_BYTES,
        error=TaskFailure("c" * 64, "m" * 1000),
        requirement=Requirement("r" * 64, "c" * 64, "n" * 64),
        assignment=Assignment(top, B),
        attempt=top,
    )
    copy = TaskCopy(top, top, task)
    assert decode(encode(make(TaskAssign(copy)))).payload == TaskAssign(copy)
    assert decode_task_copy(encode_task_copy(copy)) == copy
    envs = [
        make(TaskReport(T1, top, ReportKind.PROGRESS, 0.0, "", b"\x00" * MAX_CHECKPOINT_BYTES)),
        make(TaskReport(T1, 0, ReportKind.COMPLETED, 100.0, "m" * 500, None, None, "c" * 64)),
        make(TaskCancel(T1, top, "r" * 64)),
        make(TaskUpdate(top, tuple(COPY_MIN for _ in range(MAX_TASK_COPIES)))),
        make(TaskAck(T1, False, "c" * 64, "m" * 1024)),
        make(TaskOp(TaskOpKind.HANDOFF, T1, "a" * 64, "t" * 64, b"\x00" * MAX_CHECKPOINT_BYTES)),
        make(TaskSyncReq(top, top, tuple(f"{i:032x}" for i in range(MAX_SYNC_IDS)), False)),
        make(TaskSync(tuple(COPY_MIN for _ in range(MAX_TASK_COPIES)), True)),
        make(
            AgentInfo(
                tuple("s" * 64 for _ in range(MAX_SKILLS)),
                tuple("c" * 64 for _ in range(MAX_CAPABILITIES)),
                MAX_AGENT_CONCURRENCY,
            )
        ),
    ]
    for env in envs:
        assert decode(encode(env)) == env


def nested(depth: int) -> Any:
    """``depth`` arrays around an int."""
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def test_value_nesting_limit() -> None:
    # the params map counts as one level; a result starts at zero
    ok = dataclasses.replace(
        MINIMAL, params={"a": nested(MAX_VALUE_DEPTH - 1)}, result=nested(MAX_VALUE_DEPTH)
    )
    assert task_from_wire(task_to_wire(ok)) == ok
    with pytest.raises(MalformedFrame, match=r"^task\.params\.a(\[0\])*: nested deeper than"):
        task_from_wire(task_to_wire(dataclasses.replace(ok, params={"a": nested(MAX_VALUE_DEPTH)})))
    with pytest.raises(MalformedFrame, match=r"^task\.result(\[0\])*: nested deeper than"):
        task_from_wire(task_to_wire(dataclasses.replace(ok, result=nested(MAX_VALUE_DEPTH + 1))))
    deep = {"d": nested(MAX_VALUE_DEPTH)}
    with pytest.raises(LocalProtocolError):
        encode(make(TaskReport(T1, 1, ReportKind.COMPLETED, result=[deep])))
    w = wire(make(TaskReport(T1, 1, ReportKind.COMPLETED)))
    w[7]["result"] = nested(MAX_VALUE_DEPTH + 1)
    with pytest.raises(MalformedFrame, match=r"^body\.result(\[0\])*: nested deeper"):
        decode(pack(w))


def test_ints_where_floats_are_expected() -> None:
    task = dataclasses.replace(
        FULL,
        timeout_s=60,
        deadline=2,
        created_at=3,
        updated_at=4,
        progress=Progress(50, ""),
        history=(Transition(TaskState.PENDING, 5, C),),
    )
    w = task_to_wire(task)
    for value in (w["timeout"], w["deadline"], w["created"], w["updated"], w["prog"][0]):
        assert type(value) is float
    assert type(w["hist"][0][1]) is float
    # a peer may send ints: accepted, decoded as floats, re-encoded canonically (float64)
    raw = {**w, "timeout": 60, "deadline": 2, "created": 3, "updated": 4, "prog": [50, ""]}
    raw["hist"] = [["pending", 5, C, ""]]
    got = task_from_wire(raw)
    assert got == task
    for value in (got.timeout_s, got.deadline, got.created_at, got.updated_at, got.progress.pct):
        assert type(value) is float
    assert type(got.history[0].at) is float
    env = make(TaskReport(T1, 1, ReportKind.PROGRESS, 100))
    got_report = decode(encode(env)).payload
    assert isinstance(got_report, TaskReport) and type(got_report.pct) is float


def test_bools_are_not_numbers_and_numbers_not_bools() -> None:
    w = task_to_wire(FULL)
    for key, value in (("timeout", True), ("created", False), ("attempt", True), ("pri", True)):
        with pytest.raises(MalformedFrame, match=rf"^task\.{key}:"):
            task_from_wire({**w, key: value})
    for key in ("idem", "verify"):
        with pytest.raises(MalformedFrame, match=rf"^task\.{key}:"):
            task_from_wire({**w, key: 1})


def test_any_values() -> None:
    values: list[Any] = [
        None,
        True,
        0,
        -(2**63),
        2**64 - 1,
        -1.5,
        math.inf,
        "",
        b"",
        [],
        {},
        {"k": [b"v", {"n": None}]},
        {b"bin key": 1},
    ]
    for value in values:
        task = dataclasses.replace(MINIMAL, params={"v": value}, result=value)
        assert decode_task_copy(encode_task_copy(TaskCopy(1, 1, task))).task == task
    # a tuple is an array on the wire: it comes back as a list
    task = dataclasses.replace(MINIMAL, params={"t": (1, (2,))}, result=(3,))
    got = decode_task_copy(encode_task_copy(TaskCopy(1, 1, task))).task
    assert got.params == {"t": [1, [2]]} and got.result == [3]
    nan = decode_task_copy(
        encode_task_copy(TaskCopy(1, 1, dataclasses.replace(task, result=math.nan)))
    )
    assert math.isnan(nan.task.result)


@pytest.mark.parametrize(
    ("params", "result", "match"),
    [
        ({"a": 2**64}, None, r"^task\.params\.a: int out of the msgpack range"),
        ({"a": -(2**63) - 1}, None, r"^task\.params\.a:"),
        ({"a": {1, 2}}, None, r"^task\.params\.a: set is not a msgpack value"),
        ({"a": bytearray(b"x")}, None, r"^task\.params\.a:"),
        ({"a": object()}, None, r"^task\.params\.a:"),
        ({"a": [1, TaskState.PENDING]}, None, r"^task\.params\.a\[1\]:"),
        ({"a b": {"c": {1: 2}}}, None, r"^task\.params\['a b'\]\.c: map key is int 1"),
        ({1: "x"}, None, r"^task\.params: key is int 1, expected str"),
        ({b"k": "x"}, None, r"^task\.params: key is bin of 1 bytes, expected str"),
        ({}, {"ok": [1, 2**70]}, r"^task\.result\.ok\[1\]:"),
        ({}, {(1, 2): 3}, r"^task\.result: map key is tuple"),
    ],
)
def test_bad_values(params: Any, result: Any, match: str) -> None:
    task = dataclasses.replace(MINIMAL, params=params, result=result)
    with pytest.raises(MalformedFrame, match=match):
        task_from_wire(task_to_wire(task))
    with pytest.raises(LocalProtocolError):
        encode_task_copy(TaskCopy(0, 0, task))
    with pytest.raises(LocalProtocolError):
        encode(make(TaskSubmit(TaskCopy(0, 0, task))))


def test_error_paths_of_the_helpers() -> None:
    w = task_to_wire(FULL)
    with pytest.raises(MalformedFrame, match=r"^task\.id:"):
        task_from_wire({**w, "id": "x"})
    with pytest.raises(MalformedFrame, match=r"^stored\.hist\[2\]\.actor:"):
        task_from_wire({**w, "hist": [*w["hist"][:2], ["running", 1.0, None, ""]]}, "stored")
    with pytest.raises(MalformedFrame, match=r"^state:"):
        task_from_wire({**w, "state": "nope"}, "")
    with pytest.raises(MalformedFrame, match=r"^task:"):
        task_from_wire([], "")
    with pytest.raises(MalformedFrame, match=r"^task: expected map"):
        task_from_wire(None)
    cw = task_copy_to_wire(COPY)
    with pytest.raises(MalformedFrame, match=r"^task\.fence\.lead:"):
        task_copy_from_wire({**cw, "task": {**w, "fence": [1, "x"]}})
    with pytest.raises(MalformedFrame, match=r"^seq:"):
        task_copy_from_wire({**cw, "seq": -1})
    with pytest.raises(MalformedFrame, match=r"^task copy:"):
        task_copy_from_wire([8, 12, w])


def test_unknown_keys_are_ignored() -> None:
    env = make(TaskUpdate(13, (COPY,)))
    w = wire(env)
    w[7] = {"zz": 1, **w[7], "future": [1]}
    w[7]["copies"][0]["later"] = {"x": b""}
    w[7]["copies"][0]["task"]["new_field"] = None
    w[7]["copies"][0]["task"][b"id"] = "bin key: unknown too"
    assert decode(pack(w)) == env
    cw = task_copy_to_wire(COPY)
    assert decode_task_copy(pack({**cw, "extra": 1})) == COPY


def test_plain_strings_for_enums_on_encode() -> None:
    task = dataclasses.replace(
        MINIMAL,
        state="running",  # type: ignore[arg-type]
        history=(Transition("pending", 1.0, C),),  # type: ignore[arg-type]
    )
    got = decode_task_copy(encode_task_copy(TaskCopy(0, 0, task))).task
    assert got.state is TaskState.RUNNING and got.history[0].state is TaskState.PENDING
    report = TaskReport(T1, 1, "progress", 1.0)  # type: ignore[arg-type]
    got_report = decode(encode(make(report))).payload
    assert isinstance(got_report, TaskReport) and got_report.kind is ReportKind.PROGRESS
    op = TaskOp("handoff", T1, "me")  # type: ignore[arg-type]
    got_op = decode(encode(make(op))).payload
    assert isinstance(got_op, TaskOp) and got_op.op is TaskOpKind.HANDOFF


# ---- rejection rules ------------------------------------------------------------------

DELETE = object()
SUB, REP, CAN, UPD, ACK, OP, SRQ, SYN, AGI = (
    TaskSubmit(COPY),
    TaskReport(T2, 3, ReportKind.COMPLETED, 100.0, "done", None, {"r": 1}, ""),
    TaskCancel(T2, 3, "operator"),
    TaskUpdate(13, (COPY, COPY_MIN)),
    TaskAck(T2, True),
    TaskOp(TaskOpKind.HANDOFF, T2, A, "alpha", b"\x09"),
    TaskSyncReq(8, 12, (T1, T2), True),
    TaskSync((COPY,), True),
    AgentInfo(("echo",), ("gpu",), 4),
)
TK = ["copy", "task"]
CP = "body.copy.task"
BIG_CKPT = b"\x00" * (MAX_CHECKPOINT_BYTES + 1)


def hist(*entry: Any) -> list[Any]:
    return [list(entry)]


CASES: list[tuple[Payload, list[Any], Any, str]] = [
    # the task map, inside TASK_SUBMIT
    (SUB, [*TK, "id"], "x", f"{CP}.id"),
    (SUB, [*TK, "id"], A.upper(), f"{CP}.id"),
    (SUB, [*TK, "id"], "g" * 32, f"{CP}.id"),
    (SUB, [*TK, "id"], T1.encode(), f"{CP}.id"),
    (SUB, [*TK, "skill"], "", f"{CP}.skill"),
    (SUB, [*TK, "skill"], "s" * 65, f"{CP}.skill"),
    (SUB, [*TK, "skill"], None, f"{CP}.skill"),
    (SUB, [*TK, "params"], [], f"{CP}.params"),
    (SUB, [*TK, "params"], None, f"{CP}.params"),
    (SUB, [*TK, "params"], {b"k": 1}, f"{CP}.params"),
    (SUB, [*TK, "params"], {"a": nested(MAX_VALUE_DEPTH)}, f"{CP}.params.a" + "[0]" * 31),
    (SUB, [*TK, "origin"], "alpha", f"{CP}.origin"),
    (SUB, [*TK, "origin"], None, f"{CP}.origin"),
    (SUB, [*TK, "req"], [None, None], f"{CP}.req"),
    (SUB, [*TK, "req"], None, f"{CP}.req"),
    (SUB, [*TK, "req"], {"role": None}, f"{CP}.req"),
    (SUB, [*TK, "req"], ["r" * 65, None, None], f"{CP}.req.role"),
    (SUB, [*TK, "req"], [None, 5, None], f"{CP}.req.capability"),
    (SUB, [*TK, "req"], [None, None, "n" * 65], f"{CP}.req.node"),
    (SUB, [*TK, "pri"], 10, f"{CP}.pri"),
    (SUB, [*TK, "pri"], -1, f"{CP}.pri"),
    (SUB, [*TK, "pri"], 5.0, f"{CP}.pri"),
    (SUB, [*TK, "timeout"], 0, f"{CP}.timeout"),
    (SUB, [*TK, "timeout"], 0.0, f"{CP}.timeout"),
    (SUB, [*TK, "timeout"], -1.0, f"{CP}.timeout"),
    (SUB, [*TK, "timeout"], math.inf, f"{CP}.timeout"),
    (SUB, [*TK, "timeout"], math.nan, f"{CP}.timeout"),
    (SUB, [*TK, "timeout"], "60", f"{CP}.timeout"),
    (SUB, [*TK, "timeout"], None, f"{CP}.timeout"),
    (SUB, [*TK, "deadline"], -1.0, f"{CP}.deadline"),
    (SUB, [*TK, "deadline"], -1, f"{CP}.deadline"),
    (SUB, [*TK, "deadline"], True, f"{CP}.deadline"),
    (SUB, [*TK, "deadline"], math.inf, f"{CP}.deadline"),
    (SUB, [*TK, "idem"], 1, f"{CP}.idem"),
    (SUB, [*TK, "idem"], None, f"{CP}.idem"),
    (SUB, [*TK, "verify"], 0, f"{CP}.verify"),
    (SUB, [*TK, "parent"], "x", f"{CP}.parent"),
    (SUB, [*TK, "parent"], "", f"{CP}.parent"),
    (SUB, [*TK, "deps"], ["x"], f"{CP}.deps[0]"),
    (SUB, [*TK, "deps"], [T1, 5], f"{CP}.deps[1]"),
    (SUB, [*TK, "deps"], [T1] * (MAX_TASK_DEPS + 1), f"{CP}.deps"),
    (SUB, [*TK, "deps"], T1, f"{CP}.deps"),
    (SUB, [*TK, "deps"], None, f"{CP}.deps"),
    (SUB, [*TK, "retries"], -1, f"{CP}.retries"),
    (SUB, [*TK, "retries"], 2**63, f"{CP}.retries"),
    (SUB, [*TK, "retries"], True, f"{CP}.retries"),
    (SUB, [*TK, "retry_limit"], None, f"{CP}.retry_limit"),
    (SUB, [*TK, "state"], "zombie", f"{CP}.state"),
    (SUB, [*TK, "state"], "RUNNING", f"{CP}.state"),
    (SUB, [*TK, "state"], 1, f"{CP}.state"),
    (SUB, [*TK, "state"], None, f"{CP}.state"),
    (SUB, [*TK, "hist"], {}, f"{CP}.hist"),
    (SUB, [*TK, "hist"], hist("pending", 1.0, "a"), f"{CP}.hist[0]"),
    (SUB, [*TK, "hist"], [{"state": "pending"}], f"{CP}.hist[0]"),
    (SUB, [*TK, "hist"], hist("zombie", 1.0, "a", ""), f"{CP}.hist[0].state"),
    (SUB, [*TK, "hist"], hist("pending", -1.0, "a", ""), f"{CP}.hist[0].at"),
    (SUB, [*TK, "hist"], hist("pending", None, "a", ""), f"{CP}.hist[0].at"),
    (SUB, [*TK, "hist"], hist("pending", 1.0, "a" * 65, ""), f"{CP}.hist[0].actor"),
    (SUB, [*TK, "hist"], hist("pending", 1.0, "a", "r" * 501), f"{CP}.hist[0].reason"),
    (SUB, [*TK, "hist"], hist("pending", 1, "a", "") * 1001, f"{CP}.hist"),
    (SUB, [*TK, "prog"], [100.5, ""], f"{CP}.prog.pct"),
    (SUB, [*TK, "prog"], [-0.5, ""], f"{CP}.prog.pct"),
    (SUB, [*TK, "prog"], [50.0, "m" * 501], f"{CP}.prog.message"),
    (SUB, [*TK, "prog"], [50.0], f"{CP}.prog"),
    (SUB, [*TK, "prog"], None, f"{CP}.prog"),
    (SUB, [*TK, "ckpt"], BIG_CKPT, f"{CP}.ckpt"),
    (SUB, [*TK, "ckpt"], "abc", f"{CP}.ckpt"),
    (SUB, [*TK, "error"], ["c" * 65, ""], f"{CP}.error.code"),
    (SUB, [*TK, "error"], ["c", "m" * 1001], f"{CP}.error.message"),
    (SUB, [*TK, "error"], ["c"], f"{CP}.error"),
    (SUB, [*TK, "error"], "timeout", f"{CP}.error"),
    (SUB, [*TK, "to"], "alpha", f"{CP}.to"),
    (SUB, [*TK, "to"], "", f"{CP}.to"),
    (SUB, [*TK, "fence"], [1], f"{CP}.fence"),
    (SUB, [*TK, "fence"], [-1, A], f"{CP}.fence.term"),
    (SUB, [*TK, "fence"], [True, A], f"{CP}.fence.term"),
    (SUB, [*TK, "fence"], [1, "bravo"], f"{CP}.fence.lead"),
    (SUB, [*TK, "attempt"], -1, f"{CP}.attempt"),
    (SUB, [*TK, "attempt"], True, f"{CP}.attempt"),
    (SUB, [*TK, "attempt"], 1.0, f"{CP}.attempt"),
    (SUB, [*TK, "created"], -1.0, f"{CP}.created"),
    (SUB, [*TK, "created"], None, f"{CP}.created"),
    (SUB, [*TK, "updated"], "now", f"{CP}.updated"),
    *[(SUB, [*TK, key], DELETE, f"{CP}.{key}") for key in TASK_KEYS],
    # the copy
    (SUB, ["copy"], DELETE, "body.copy"),
    (SUB, ["copy"], None, "body.copy"),
    (SUB, ["copy"], [8, 12, {}], "body.copy"),
    (SUB, ["copy", "term"], -1, "body.copy.term"),
    (SUB, ["copy", "term"], DELETE, "body.copy.term"),
    (SUB, ["copy", "seq"], True, "body.copy.seq"),
    (SUB, ["copy", "seq"], 2**63, "body.copy.seq"),
    (SUB, ["copy", "task"], DELETE, "body.copy.task"),
    (SUB, ["copy", "task"], [], "body.copy.task"),
    (TaskAssign(COPY), ["copy", "task", "fence"], [8, B.upper()], f"{CP}.fence.lead"),
    # TASK_REPORT
    (REP, ["task_id"], "", "body.task_id"),
    (REP, ["task_id"], "x", "body.task_id"),
    (REP, ["attempt"], True, "body.attempt"),
    (REP, ["attempt"], -1, "body.attempt"),
    (REP, ["kind"], "done", "body.kind"),
    (REP, ["kind"], "COMPLETED", "body.kind"),
    (REP, ["kind"], None, "body.kind"),
    (REP, ["pct"], 150.0, "body.pct"),
    (REP, ["pct"], 101, "body.pct"),
    (REP, ["pct"], -1, "body.pct"),
    (REP, ["pct"], True, "body.pct"),
    (REP, ["pct"], math.nan, "body.pct"),
    (REP, ["pct"], "50", "body.pct"),
    (REP, ["message"], "m" * 501, "body.message"),
    (REP, ["ckpt"], BIG_CKPT, "body.ckpt"),
    (REP, ["ckpt"], "x", "body.ckpt"),
    (REP, ["result"], {"a": nested(MAX_VALUE_DEPTH)}, "body.result.a" + "[0]" * 31),
    (REP, ["code"], "c" * 65, "body.code"),
    (REP, ["code"], None, "body.code"),
    *[(REP, [k], DELETE, f"body.{k}") for k in ("task_id", "attempt", "kind", "pct")],
    *[(REP, [k], DELETE, f"body.{k}") for k in ("message", "ckpt", "result", "code")],
    # TASK_CANCEL
    (CAN, ["task_id"], None, "body.task_id"),
    (CAN, ["attempt"], True, "body.attempt"),
    (CAN, ["reason"], "r" * 65, "body.reason"),
    (CAN, ["reason"], DELETE, "body.reason"),
    # TASK_UPDATE
    (UPD, ["seq_hi"], -1, "body.seq_hi"),
    (UPD, ["seq_hi"], DELETE, "body.seq_hi"),
    (UPD, ["copies"], {}, "body.copies"),
    (UPD, ["copies"], DELETE, "body.copies"),
    (UPD, ["copies"], [None], "body.copies[0]"),
    (UPD, ["copies"], [task_copy_to_wire(COPY_MIN)] * 1001, "body.copies"),
    (UPD, ["copies", 1, "task", "state"], "zombie", "body.copies[1].task.state"),
    (UPD, ["copies", 0, "task", "hist", 1, 1], "1.0", "body.copies[0].task.hist[1].at"),
    # TASK_ACK
    (ACK, ["task_id"], "x", "body.task_id"),
    (ACK, ["task_id"], None, "body.task_id"),
    (ACK, ["ok"], 1, "body.ok"),
    (ACK, ["ok"], DELETE, "body.ok"),
    (ACK, ["code"], "c" * 65, "body.code"),
    (ACK, ["message"], "m" * 1025, "body.message"),
    (ACK, ["message"], DELETE, "body.message"),
    # TASK_OP
    (OP, ["op"], "delete", "body.op"),
    (OP, ["op"], "CANCEL", "body.op"),
    (OP, ["task_id"], "", "body.task_id"),
    (OP, ["actor"], "a" * 65, "body.actor"),
    (OP, ["actor"], None, "body.actor"),
    (OP, ["target"], "t" * 65, "body.target"),
    (OP, ["target"], None, "body.target"),
    (OP, ["ckpt"], BIG_CKPT, "body.ckpt"),
    (OP, ["ckpt"], DELETE, "body.ckpt"),
    # TASK_SYNC_REQ
    (SRQ, ["since_term"], -1, "body.since_term"),
    (SRQ, ["since_seq"], True, "body.since_seq"),
    (SRQ, ["ids"], [T1, "x"], "body.ids[1]"),
    (SRQ, ["ids"], [T1] * (MAX_SYNC_IDS + 1), "body.ids"),
    (SRQ, ["ids"], T1, "body.ids"),
    (SRQ, ["ids"], DELETE, "body.ids"),
    (SRQ, ["unfinished"], 0, "body.unfinished"),
    (SRQ, ["unfinished"], DELETE, "body.unfinished"),
    # TASK_SYNC
    (SYN, ["copies"], None, "body.copies"),
    (SYN, ["copies", 0, "seq"], -1, "body.copies[0].seq"),
    (SYN, ["more"], 1, "body.more"),
    (SYN, ["more"], DELETE, "body.more"),
    # AGENT_INFO
    (AGI, ["skills"], ["s" * 65], "body.skills[0]"),
    (AGI, ["skills"], ["ok", 1], "body.skills[1]"),
    (AGI, ["skills"], ["s"] * (MAX_SKILLS + 1), "body.skills"),
    (AGI, ["skills"], "echo", "body.skills"),
    (AGI, ["caps"], ["c" * 65], "body.caps[0]"),
    (AGI, ["caps"], ["c"] * (MAX_CAPABILITIES + 1), "body.caps"),
    (AGI, ["caps"], DELETE, "body.caps"),
    (AGI, ["max_concurrent"], MAX_AGENT_CONCURRENCY + 1, "body.max_concurrent"),
    (AGI, ["max_concurrent"], -1, "body.max_concurrent"),
    (AGI, ["max_concurrent"], True, "body.max_concurrent"),
]


def body_case(payload: Payload, path: list[Any], value: Any) -> bytes:
    """The frame of ``payload`` with the body item at ``path`` replaced (or deleted)."""
    w = wire(make(payload))
    target = w[7]
    for step in path[:-1]:
        target = target[step]
    if value is DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return pack(w)


@pytest.mark.parametrize(
    ("payload", "path", "value", "field"),
    CASES,
    ids=[f"{encode_payload(c[0])[0].name}-{c[3][:40]}-{i}" for i, c in enumerate(CASES)],
)
def test_bad_body_field(payload: Payload, path: list[Any], value: Any, field: str) -> None:
    with pytest.raises(MalformedFrame) as info:
        decode(body_case(payload, path, value))
    assert str(info.value).startswith(field + ":"), str(info.value)


def test_task_id_may_be_empty_only_in_ack() -> None:
    assert decode(encode(make(TaskAck("", False, "not_lead")))).payload == TaskAck(
        "", False, "not_lead"
    )
    for payload in (
        TaskReport("", 1, ReportKind.STARTED),
        TaskCancel("", 1, ""),
        TaskOp(TaskOpKind.CANCEL, "", "me"),
    ):
        with pytest.raises(LocalProtocolError, match="task_id"):
            encode(make(payload))


@pytest.mark.parametrize(
    "task",
    [
        dataclasses.replace(MINIMAL, task_id="x"),
        dataclasses.replace(MINIMAL, skill=""),
        dataclasses.replace(MINIMAL, origin="alpha"),
        dataclasses.replace(MINIMAL, params=[]),  # type: ignore[arg-type]
        dataclasses.replace(MINIMAL, priority=10),
        dataclasses.replace(MINIMAL, priority=True),
        dataclasses.replace(MINIMAL, timeout_s=0.0),
        dataclasses.replace(MINIMAL, timeout_s=math.nan),
        dataclasses.replace(MINIMAL, timeout_s=10**400),
        dataclasses.replace(MINIMAL, deadline=-5.0),
        dataclasses.replace(MINIMAL, idempotent=1),  # type: ignore[arg-type]
        dataclasses.replace(MINIMAL, parent="p"),
        dataclasses.replace(MINIMAL, depends_on=("x",)),
        dataclasses.replace(MINIMAL, depends_on=(T1,) * 65),
        dataclasses.replace(MINIMAL, retry_count=-1),
        dataclasses.replace(MINIMAL, state="zombie"),  # type: ignore[arg-type]
        dataclasses.replace(MINIMAL, state=ReportKind.STARTED),  # type: ignore[arg-type]
        dataclasses.replace(MINIMAL, history=(Transition(TaskState.PENDING, -1.0, C),)),
        dataclasses.replace(MINIMAL, history=("pending",)),  # type: ignore[arg-type]
        dataclasses.replace(MINIMAL, progress=Progress(100.01)),
        dataclasses.replace(MINIMAL, checkpoint=bytearray(3)),  # type: ignore[arg-type]
        dataclasses.replace(MINIMAL, checkpoint=b"\x00" * (MAX_CHECKPOINT_BYTES + 1)),
        dataclasses.replace(MINIMAL, error=TaskFailure("c" * 65)),
        dataclasses.replace(MINIMAL, assigned_to="alpha"),
        dataclasses.replace(MINIMAL, assignment=Assignment(-1, B)),
        dataclasses.replace(MINIMAL, attempt=2**63),
        dataclasses.replace(MINIMAL, requirement=Requirement(role="r" * 65)),
        dataclasses.replace(MINIMAL, created_at=math.inf),
        dataclasses.replace(MINIMAL, skill="\ud800"),
    ],
)
def test_encode_rejects_invalid_tasks(task: Task) -> None:
    with pytest.raises(LocalProtocolError):
        encode(make(TaskSubmit(TaskCopy(0, 0, task))))
    with pytest.raises(LocalProtocolError):
        encode(make(TaskUpdate(1, (COPY_MIN, TaskCopy(1, 1, task)))))
    with pytest.raises(LocalProtocolError):
        encode_task_copy(TaskCopy(0, 0, task))


@pytest.mark.parametrize(
    "payload",
    [
        TaskSubmit(TaskCopy(-1, 0, MINIMAL)),
        TaskSubmit(TaskCopy(0, True, MINIMAL)),
        TaskSubmit("not a copy"),  # type: ignore[arg-type]
        TaskUpdate(1, ("not a copy",)),  # type: ignore[arg-type]
        TaskUpdate(1, tuple(COPY_MIN for _ in range(MAX_TASK_COPIES + 1))),
        TaskReport(T1, 1, "finished"),  # type: ignore[arg-type]
        TaskReport(T1, 1, ReportKind.PROGRESS, 100.5),
        TaskReport(T1, 1, ReportKind.PROGRESS, checkpoint=b"\x00" * (MAX_CHECKPOINT_BYTES + 1)),
        TaskReport(T1, 1, ReportKind.COMPLETED, result={1, 2}),
        TaskCancel(T1, True, "x"),
        TaskAck("x", True),
        TaskAck(T1, 1),  # type: ignore[arg-type]
        TaskOp("nuke", T1, "me"),  # type: ignore[arg-type]
        TaskOp(TaskOpKind.CANCEL, T1, "a" * 65),
        TaskSyncReq(0, 0, ("x",)),
        TaskSyncReq(0, 0, (), 1),  # type: ignore[arg-type]
        TaskSync((), None),  # type: ignore[arg-type]
        AgentInfo(("s" * 65,), (), 1),
        AgentInfo((), (), MAX_AGENT_CONCURRENCY + 1),
    ],
)
def test_encode_rejects_invalid_payloads(payload: Payload) -> None:
    with pytest.raises(LocalProtocolError):
        encode(make(payload))


# ---- the standalone task copy (local store) -------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",
        b"\x00",
        b"\x90",
        pack({"term": 1}),
        pack([1, 2, 3]),
        pack(None),
        pack({"term": 1, "seq": 2, "task": None}),
        pack({"term": 1, "seq": 2, "task": {**task_to_wire(MINIMAL), "state": "zombie"}}),
        encode_task_copy(COPY) + b"\x00",
        encode_task_copy(COPY)[:-1],
        b"\x83" + b"\x91" * 5000,
        b"\x81\x01\x02",  # int map key
        b"\x81\xa1a\xd4\x05\x00",  # ext type
        b"\xa2\xff\xfe",  # invalid UTF-8
    ],
)
def test_decode_task_copy_garbage(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_task_copy(data)


def test_decode_task_copy_not_bytes() -> None:
    for bad in (None, 12, object()):
        with pytest.raises(DecodeError):
            decode_task_copy(bad)  # type: ignore[arg-type]


def test_decode_task_copy_names_the_field() -> None:
    cw = task_copy_to_wire(COPY)
    bad = {**cw, "task": {**cw["task"], "hist": [*cw["task"]["hist"], ["done", 1.0, "", ""]]}}
    with pytest.raises(MalformedFrame, match=r"^task\.hist\[3\]\.state:"):
        decode_task_copy(pack(bad))
    with pytest.raises(MalformedFrame, match=r"^term: missing"):
        decode_task_copy(pack({"seq": 1, "task": cw["task"]}))


def test_every_prefix_of_a_task_copy_is_truncated() -> None:
    data = encode_task_copy(TaskCopy(1, 2, dataclasses.replace(FULL, params={"a": [1]})))
    for end in range(len(data)):
        with pytest.raises(DecodeError) as info:
            decode_task_copy(data[:end])
        assert isinstance(info.value, TruncatedFrame), (end, str(info.value))


def test_every_prefix_of_a_task_frame_is_truncated() -> None:
    data = encode(make(TaskUpdate(2, (COPY_MIN,))))
    for end in range(len(data)):
        with pytest.raises(TruncatedFrame):
            decode(data[:end])


# ---- property tests -------------------------------------------------------------------

PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

IDS = st.text(alphabet="0123456789abcdef", min_size=32, max_size=32)
U63 = st.integers(0, 2**63 - 1)
#: Terms, seqs, attempts (MAX_COUNTER).
CTR = st.integers(0, 2**62 - 1)
TIMES = st.one_of(
    st.floats(min_value=0.0, allow_nan=False, allow_infinity=False), st.integers(0, 2**53)
)
SHORT = st.text(max_size=64)
#: msgpack values that compare equal after a round trip (no NaN, lists not tuples).
VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**64 - 1),
        st.floats(allow_nan=False),
        st.text(max_size=20),
        st.binary(max_size=20),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=8), st.binary(max_size=4)), inner, max_size=4),
    ),
    max_leaves=12,
)


@st.composite
def tasks(draw: st.DrawFn) -> Task:
    maybe_id = st.one_of(st.none(), IDS)
    return Task(
        task_id=draw(IDS),
        skill=draw(st.text(min_size=1, max_size=64)),
        params=draw(st.dictionaries(st.text(max_size=10), VALUES, max_size=4)),
        origin=draw(IDS),
        requirement=Requirement(
            draw(st.one_of(st.none(), SHORT)),
            draw(st.one_of(st.none(), SHORT)),
            draw(st.one_of(st.none(), SHORT)),
        ),
        priority=draw(st.integers(0, 9)),
        timeout_s=draw(
            st.floats(min_value=0.0, exclude_min=True, allow_nan=False, allow_infinity=False)
        ),
        deadline=draw(st.one_of(st.none(), TIMES)),
        idempotent=draw(st.booleans()),
        verify=draw(st.booleans()),
        parent=draw(maybe_id),
        depends_on=tuple(draw(st.lists(IDS, max_size=3))),
        retry_count=draw(U63),
        retry_limit=draw(U63),
        state=draw(st.sampled_from(list(TaskState))),
        history=tuple(
            draw(
                st.lists(
                    st.builds(
                        Transition,
                        st.sampled_from(list(TaskState)),
                        TIMES,
                        SHORT,
                        st.text(max_size=500),
                    ),
                    max_size=3,
                )
            )
        ),
        progress=Progress(
            draw(st.floats(min_value=0.0, max_value=100.0)), draw(st.text(max_size=500))
        ),
        checkpoint=draw(st.one_of(st.none(), st.binary(max_size=64))),
        result=draw(VALUES),
        error=draw(st.one_of(st.none(), st.builds(TaskFailure, SHORT, st.text(max_size=1000)))),
        assigned_to=draw(maybe_id),
        assignment=draw(st.one_of(st.none(), st.builds(Assignment, CTR, IDS))),
        attempt=draw(CTR),
        created_at=draw(TIMES),
        updated_at=draw(TIMES),
    )


def floats_of(task: Task) -> Task:
    """``task`` as it decodes: ints where floats are expected become floats."""
    return task_from_wire(task_to_wire(task))


COPIES = st.builds(TaskCopy, CTR, CTR, tasks())
TASK_PAYLOADS: st.SearchStrategy[Payload] = st.one_of(
    st.builds(TaskSubmit, COPIES),
    st.builds(TaskAssign, COPIES),
    st.builds(
        TaskReport,
        IDS,
        CTR,
        st.sampled_from(list(ReportKind)),
        st.floats(min_value=0.0, max_value=100.0),
        st.text(max_size=500),
        st.one_of(st.none(), st.binary(max_size=64)),
        VALUES,
        SHORT,
    ),
    st.builds(TaskCancel, IDS, CTR, SHORT),
    st.builds(TaskUpdate, CTR, st.lists(COPIES, max_size=2).map(tuple)),
    st.builds(TaskAck, st.one_of(st.just(""), IDS), st.booleans(), SHORT, st.text(max_size=1024)),
    st.builds(
        TaskOp,
        st.sampled_from(list(TaskOpKind)),
        IDS,
        SHORT,
        SHORT,
        st.one_of(st.none(), st.binary(max_size=64)),
    ),
    st.builds(TaskSyncReq, CTR, CTR, st.lists(IDS, max_size=3).map(tuple), st.booleans()),
    st.builds(TaskSync, st.lists(COPIES, max_size=2).map(tuple), st.booleans()),
    st.builds(
        AgentInfo,
        st.lists(SHORT, max_size=3).map(tuple),
        st.lists(SHORT, max_size=3).map(tuple),
        st.integers(0, MAX_AGENT_CONCURRENCY),
    ),
)


@PROPS
@given(tasks(), CTR, CTR)
def test_generated_tasks_round_trip(task: Task, term: int, seq: int) -> None:
    expected = TaskCopy(term, seq, floats_of(task))
    data = encode_task_copy(TaskCopy(term, seq, task))
    assert decode_task_copy(data) == expected
    assert encode_task_copy(expected) == data
    env = make(TaskAssign(TaskCopy(term, seq, task)))
    frame = encode(env)
    assert decode(frame) == dataclasses.replace(env, payload=TaskAssign(expected))
    assert encode(decode(frame)) == frame


@PROPS
@given(TASK_PAYLOADS)
def test_generated_payloads_round_trip(payload: Payload) -> None:
    frame = encode(make(payload))
    again = decode(frame)
    assert encode(again) == frame
    assert decode(encode(again)) == again


MUTATIONS = st.sampled_from(["flip", "truncate", "insert", "delete", "replace"])


@PROPS
@given(
    TASK_PAYLOADS,
    st.lists(
        st.tuples(MUTATIONS, st.integers(0, 2**16), st.binary(min_size=1, max_size=8)),
        min_size=1,
        max_size=3,
    ),
)
def test_mutated_task_frames(payload: Payload, mutations: list[tuple[str, int, bytes]]) -> None:
    data = bytearray(encode(make(payload)))
    for kind, where, blob in mutations:
        if not data:
            break
        pos = where % len(data)
        if kind == "flip":
            data[pos] ^= 1 << (blob[0] % 8)
        elif kind == "truncate":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = blob
        elif kind == "delete":
            del data[pos : pos + len(blob)]
        else:
            data[pos] = blob[0]
    try:
        got = decode(bytes(data))
    except DecodeError as exc:
        assert "unexpected decoder failure" not in str(exc), str(exc)
        return
    # whatever decodes re-encodes, canonically (compared as bytes: a flipped bit may
    # have made a NaN, which is not equal to itself)
    again = encode(got)
    assert encode(decode(again)) == again


@PROPS
@given(st.binary(max_size=256))
def test_random_bytes_as_task_copy(data: bytes) -> None:
    try:
        got = decode_task_copy(data)
    except DecodeError as exc:
        assert "unexpected decoder failure" not in str(exc), str(exc)
        return
    again = encode_task_copy(got)
    assert encode_task_copy(decode_task_copy(again)) == again
