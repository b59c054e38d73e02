"""The committed golden vectors of proto/vectors/ decode, compare and re-encode exactly.

The vectors are read as committed: this test never regenerates them. The expected
envelope is rebuilt from the JSON here, independently of the generator.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import meshd.errors
from meshd.errors import DecodeError
from meshd.wire import (
    PAYLOAD_TYPES,
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
    Payload,
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
    encode,
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

VECTOR_DIR = Path(__file__).resolve().parents[3] / "proto" / "vectors"
FILES = sorted(VECTOR_DIR.glob("*.json"))


def load(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return doc


DOCS = {p.name: load(p) for p in FILES}
VALID = [n for n, d in DOCS.items() if "envelope" in d]
INVALID = [n for n, d in DOCS.items() if "error" in d]


def info_from_json(j: dict[str, Any]) -> MemberInfo:
    return MemberInfo(
        node_id=j["node_id"],
        name=j["name"],
        role=j["role"],
        priority=j["priority"],
        ed25519_pk=bytes.fromhex(j["ed25519_pk"]),
        curve_pk=bytes.fromhex(j["curve_pk"]),
        proof=bytes.fromhex(j["proof"]),
        addresses=tuple(j["addresses"]),
        router_port=j["router_port"],
        pub_port=j["pub_port"],
        intro_port=j["intro_port"],
        incarnation=j["incarnation"],
        protocol_version=j["protocol_version"],
        tier=j["tier"],
        started_at=j["started_at"],
        sig=bytes.fromhex(j["sig"]),
    )


def records_from_json(items: list[dict[str, Any]]) -> tuple[MemberRecord, ...]:
    return tuple(MemberRecord(info_from_json(r["info"]), MemberState(r["state"])) for r in items)


def hex_or_none(value: str | None) -> bytes | None:
    return None if value is None else bytes.fromhex(value)


def task_from_json(j: dict[str, Any]) -> Task:
    err, fence = j["error"], j["assignment"]
    return Task(
        task_id=j["task_id"],
        skill=j["skill"],
        params=j["params"],
        origin=j["origin"],
        requirement=Requirement(**j["requirement"]),
        priority=j["priority"],
        timeout_s=j["timeout_s"],
        deadline=j["deadline"],
        idempotent=j["idempotent"],
        verify=j["verify"],
        parent=j["parent"],
        depends_on=tuple(j["depends_on"]),
        retry_count=j["retry_count"],
        retry_limit=j["retry_limit"],
        state=TaskState(j["state"]),
        history=tuple(
            Transition(TaskState(h["state"]), h["at"], h["actor"], h["reason"])
            for h in j["history"]
        ),
        progress=Progress(j["progress"]["pct"], j["progress"]["message"]),
        checkpoint=hex_or_none(j["checkpoint"]),
        result=j["result"],
        error=None if err is None else TaskFailure(err["code"], err["message"]),
        assigned_to=j["assigned_to"],
        assignment=None if fence is None else Assignment(fence["term"], fence["lead"]),
        attempt=j["attempt"],
        created_at=j["created_at"],
        updated_at=j["updated_at"],
    )


def copy_from_json(j: dict[str, Any]) -> TaskCopy:
    return TaskCopy(j["term"], j["seq"], task_from_json(j["task"]))


def copies_from_json(items: list[dict[str, Any]]) -> tuple[TaskCopy, ...]:
    return tuple(copy_from_json(c) for c in items)


def pack_from_json(j: dict[str, Any]) -> PackInfo:
    return PackInfo(
        name=j["name"],
        version=j["version"],
        pack_id=j["pack_id"],
        size=j["size"],
        signer=bytes.fromhex(j["signer"]),
        manifest=j["manifest"],
    )


def payload_from_json(msg_type: MsgType, p: dict[str, Any]) -> Payload:
    builders: dict[MsgType, Any] = {
        MsgType.HELLO: lambda: Hello(info_from_json(p["info"])),
        MsgType.HEARTBEAT: lambda: Heartbeat(
            p["incarnation"], bytes.fromhex(p["digest"]), p["members"]
        ),
        MsgType.PING: lambda: Ping(p["seq"]),
        MsgType.ACK: lambda: Ack(p["seq"], p["target"], p["ok"]),
        MsgType.PING_REQ: lambda: PingReq(p["seq"], p["target"]),
        MsgType.SYNC_REQ: lambda: SyncReq(bytes.fromhex(p["digest"])),
        MsgType.SYNC: lambda: Sync(records_from_json(p["members"])),
        MsgType.MEMBER_UPDATE: lambda: MemberUpdate(records_from_json(p["members"])),
        MsgType.LEAVE: lambda: Leave(p["incarnation"]),
        MsgType.INTRO: lambda: Intro(info_from_json(p["info"])),
        MsgType.INTRO_ACK: lambda: IntroAck(
            info_from_json(p["info"]), records_from_json(p["members"])
        ),
        MsgType.ERROR: lambda: Error(p["code"], p["message"]),
        MsgType.VOTE_REQ: lambda: VoteReq(p["term"], p["pre"], p["priority"]),
        MsgType.VOTE: lambda: Vote(
            p["term"], p["granted"], p["pre"], p["reason"], bytes.fromhex(p["sig"])
        ),
        MsgType.LEAD_HEARTBEAT: lambda: LeadHeartbeat(p["term"], p["lead"], p["seq"]),
        MsgType.LEAD_ACK: lambda: LeadAck(p["term"], p["seq"], p["ok"], p["voters_version"]),
        MsgType.STEP_DOWN: lambda: StepDown(p["term"], p["successor"], p["reason"]),
        MsgType.TRANSFER_REQ: lambda: TransferReq(p["target"]),
        MsgType.LEAD_CERT: lambda: LeadCert(
            p["term"],
            p["lead"],
            tuple(CertVote(v["voter"], bytes.fromhex(v["sig"])) for v in p["votes"]),
            p["pre"],
        ),
        MsgType.LEAD_CERT_REQ: lambda: LeadCertReq(p["term"]),
        MsgType.VOTERS: lambda: Voters(p["term"], p["version"], tuple(p["voters"])),
        MsgType.TASK_SUBMIT: lambda: TaskSubmit(copy_from_json(p["copy"])),
        MsgType.TASK_ASSIGN: lambda: TaskAssign(copy_from_json(p["copy"])),
        MsgType.TASK_REPORT: lambda: TaskReport(
            p["task_id"],
            p["attempt"],
            ReportKind(p["kind"]),
            p["pct"],
            p["message"],
            hex_or_none(p["checkpoint"]),
            p["result"],
            p["code"],
        ),
        MsgType.TASK_CANCEL: lambda: TaskCancel(p["task_id"], p["attempt"], p["reason"]),
        MsgType.TASK_UPDATE: lambda: TaskUpdate(p["seq_hi"], copies_from_json(p["copies"])),
        MsgType.TASK_ACK: lambda: TaskAck(p["task_id"], p["ok"], p["code"], p["message"]),
        MsgType.TASK_OP: lambda: TaskOp(
            TaskOpKind(p["op"]),
            p["task_id"],
            p["actor"],
            p["target"],
            hex_or_none(p["checkpoint"]),
        ),
        MsgType.TASK_SYNC_REQ: lambda: TaskSyncReq(
            p["since_term"], p["since_seq"], tuple(p["ids"]), p["unfinished"]
        ),
        MsgType.TASK_SYNC: lambda: TaskSync(copies_from_json(p["copies"]), p["more"]),
        MsgType.TASK_DIGEST: lambda: TaskDigest(
            p["term"], bytes.fromhex(p["root"]), tuple(p["buckets"]), p["seq"]
        ),
        MsgType.TASK_QUERY: lambda: TaskQuery(p["task_id"], p["attempt"], p["term"]),
        MsgType.TASK_KEYS: lambda: TaskKeys(
            tuple(p["buckets"]), tuple(TaskKey(**k) for k in p["keys"]), p["more"]
        ),
        MsgType.AGENT_INFO: lambda: AgentInfo(
            tuple(p["skills"]), tuple(p["capabilities"]), p["max_concurrent"]
        ),
        MsgType.SKILL_ANNOUNCE: lambda: SkillAnnounce(
            tuple(pack_from_json(x) for x in p["packs"]), p["full"], tuple(p["removed"])
        ),
        MsgType.SKILL_FETCH: lambda: SkillFetch(p["pack_id"], p["offset"], p["length"]),
        MsgType.SKILL_CHUNK: lambda: SkillChunk(
            p["pack_id"], p["offset"], p["total"], bytes.fromhex(p["data"]), p["error"]
        ),
        MsgType.SKILL_REVOKE: lambda: SkillRevoke(
            tuple(
                Revocation(
                    RevocationKind(r["kind"]),
                    r["target"],
                    bytes.fromhex(r["by"]),
                    r["at_ms"],
                    bytes.fromhex(r["sig"]),
                )
                for r in p["records"]
            )
        ),
    }
    payload: Payload = builders[msg_type]()
    return payload


def envelope_from_json(j: dict[str, Any]) -> Envelope:
    msg_type = MsgType[j["type"]]
    corr = j["correlation_id"]
    return Envelope(
        msg_type=msg_type,
        msg_id=bytes.fromhex(j["msg_id"]),
        sender=j["sender"],
        timestamp_ms=j["timestamp_ms"],
        payload=payload_from_json(msg_type, j["payload"]),
        correlation_id=None if corr is None else bytes.fromhex(corr),
        term=j["term"],
        version=j["version"],
    )


def test_vector_set_is_complete() -> None:
    assert FILES, f"no vectors in {VECTOR_DIR}"
    covered = {MsgType[DOCS[n]["envelope"]["type"]] for n in VALID}
    assert covered == set(MsgType)
    for t in MsgType:
        assert f"{t.name.lower()}.json" in DOCS
    errors = {DOCS[n]["error"] for n in INVALID}
    assert {
        "UnsupportedVersion",
        "UnknownMessageType",
        "TruncatedFrame",
        "MalformedFrame",
    } <= errors
    for name in (
        "invalid_version",
        "invalid_unknown_type",
        "invalid_truncated",
        "invalid_trailing_bytes",
        "invalid_bad_sender",
    ):
        assert f"{name}.json" in DOCS
    assert set(VALID) | set(INVALID) == set(DOCS)
    assert not set(VALID) & set(INVALID)


@pytest.mark.parametrize("name", VALID)
def test_valid_vector(name: str) -> None:
    doc = DOCS[name]
    assert doc["name"] == name.removesuffix(".json")
    data = bytes.fromhex(doc["hex"])
    expected = envelope_from_json(doc["envelope"])
    got = decode(data)
    assert got == expected
    assert PAYLOAD_TYPES[type(got.payload)] is got.msg_type
    canonical = bytes.fromhex(doc.get("canonical_hex", doc["hex"]))
    assert encode(got) == canonical
    assert encode(expected) == canonical
    if "canonical_hex" in doc:
        assert canonical != data
        assert decode(canonical) == expected


@pytest.mark.parametrize("name", INVALID)
def test_invalid_vector(name: str) -> None:
    doc = DOCS[name]
    assert doc["name"] == name.removesuffix(".json")
    error_class = getattr(meshd.errors, doc["error"])
    assert issubclass(error_class, DecodeError)
    with pytest.raises(DecodeError) as info:
        decode(bytes.fromhex(doc["hex"]))
    assert type(info.value) is error_class, str(info.value)
    if "field" in doc:
        assert str(info.value).startswith(doc["field"] + ":"), str(info.value)
