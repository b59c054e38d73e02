"""Write the golden wire vectors of ``proto/PROTOCOL.md`` (deterministic, fixed inputs).

Usage (from the repository root)::

    python proto/vectors/generate.py          # (re)write proto/vectors/*.json
    python proto/vectors/generate.py --check  # exit 1 if a committed file differs

The vectors are golden: once committed, a change to one of them is a wire format
change and needs a protocol version decision (see PROTOCOL.md, "Versioning"). Tests
read the committed files; they never call this script.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import msgpack  # type: ignore[import-untyped, unused-ignore]  # noqa: E402
from nacl.signing import SigningKey  # noqa: E402

from meshd.wire import (  # noqa: E402
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
    encode,
)
from meshd.wire.records import (  # noqa: E402
    Assignment,
    Progress,
    Requirement,
    Revocation,
    RevocationKind,
    Task,
    TaskFailure,
    TaskState,
    Transition,
)

OUT_DIR = Path(__file__).resolve().parent

# ---- fixed inputs -------------------------------------------------------------------


def node_id(label: str) -> str:
    return hashlib.blake2b(label.encode(), digest_size=16).hexdigest()


def fixed_bytes(label: str, size: int) -> bytes:
    return hashlib.blake2b(label.encode(), digest_size=size).digest()


NODE_A = node_id("node-a")
NODE_B = node_id("node-b")
NODE_C = node_id("node-c")
TS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def info(label: str, nid: str, *, name: str, role: str, priority: int, tier: int) -> MemberInfo:
    return MemberInfo(
        node_id=nid,
        name=name,
        role=role,
        priority=priority,
        ed25519_pk=fixed_bytes(f"{label}/ed25519", 32),
        curve_pk=fixed_bytes(f"{label}/curve", 32),
        proof=fixed_bytes(f"{label}/proof", 32),
        addresses=("192.168.1.10", "fe80::1c2a:3bff:fe4d:5e6f"),
        router_port=7790,
        pub_port=7791,
        intro_port=7792,
        incarnation=3,
        tier=tier,
        started_at=1767225000.25,
        sig=fixed_bytes(f"{label}/sig", 64),
    )


INFO_A = info("node-a", NODE_A, name="alpha", role="worker", priority=10, tier=1)
INFO_B = dataclasses.replace(
    info("node-b", NODE_B, name="bravo", role="lead", priority=100, tier=0),
    addresses=("10.0.0.2",),
    incarnation=0,
)
INFO_C = dataclasses.replace(
    info("node-c", NODE_C, name="", role="", priority=0, tier=0),
    addresses=(),
    router_port=17790,
    pub_port=17791,
    intro_port=17792,
    incarnation=2**40,
    started_at=0.0,
)
RECORDS = (
    MemberRecord(INFO_A, MemberState.ALIVE),
    MemberRecord(INFO_B, MemberState.SUSPECT),
    MemberRecord(INFO_C, MemberState.DEAD),
)


# tasks: ids are made like node ids (32 lowercase hex chars); times are epoch seconds
TASK_ECHO = node_id("task-echo")
TASK_SUM = node_id("task-summarize")
TASK_PARENT = node_id("task-parent")
TASK_DEP_1 = node_id("task-dep-1")
TASK_DEP_2 = node_id("task-dep-2")
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z

#: A new task as its origin C stores and submits it: optional fields unset.
TASK_NEW = Task(
    task_id=TASK_ECHO,
    skill="echo",
    params={"text": "hello", "times": 3},
    origin=NODE_C,
    timeout_s=60.0,
    history=(Transition(TaskState.PENDING, T0, NODE_C, "submitted"),),
    created_at=T0,
    updated_at=T0,
)
#: The same task once agent A completed it (lead B, term 8).
TASK_DONE = dataclasses.replace(
    TASK_NEW,
    state=TaskState.COMPLETE,
    history=(
        *TASK_NEW.history,
        Transition(TaskState.ASSIGNED, T0 + 0.5, NODE_B, "assigned to alpha"),
        Transition(TaskState.RUNNING, T0 + 0.75, NODE_A, "started"),
        Transition(TaskState.COMPLETE, T0 + 2.25, NODE_A, "completed"),
    ),
    progress=Progress(100.0, "done"),
    result={"echo": "hello hello hello", "lines": [1, 2, 3], "ok": True, "warning": None},
    assigned_to=NODE_A,
    assignment=Assignment(8, NODE_B),
    attempt=1,
    updated_at=T0 + 2.25,
)
#: A task with every optional field set: second attempt, assigned to A by lead B.
TASK_FULL = Task(
    task_id=TASK_SUM,
    skill="summarize",
    params={
        "url": "https://example.org/report.pdf",
        "max_words": 200,
        "ratio": 0.25,
        "opts": {"lang": "en", "bullets": True, "tags": ["q1", "finance"]},
        "seed": None,
    },
    origin=NODE_C,
    requirement=Requirement(role="worker", capability="gpu", node="alpha"),
    priority=7,
    timeout_s=120.5,
    deadline=T0 + 3600.0,
    idempotent=True,
    verify=True,
    parent=TASK_PARENT,
    depends_on=(TASK_DEP_1, TASK_DEP_2),
    retry_count=1,
    retry_limit=3,
    state=TaskState.ASSIGNED,
    history=(
        Transition(TaskState.PENDING, T0, NODE_C, "submitted"),
        Transition(TaskState.ASSIGNED, T0 + 1.0, NODE_B, "assigned to alpha"),
        Transition(TaskState.RUNNING, T0 + 1.5, NODE_A, "started"),
        Transition(TaskState.RETRY, T0 + 121.5, NODE_B, "timeout"),
        Transition(TaskState.ASSIGNED, T0 + 122.0, NODE_B, "assigned to alpha"),
    ),
    progress=Progress(12.5, "fetched the document"),
    checkpoint=fixed_bytes("task-summarize/ckpt-1", 24),
    result=None,
    error=TaskFailure("timeout", "attempt 1 took longer than 120.5 s"),
    assigned_to=NODE_A,
    assignment=Assignment(8, NODE_B),
    attempt=2,
    created_at=T0,
    updated_at=T0 + 122.0,
)
#: TASK_FULL once A reported it started the second attempt.
TASK_FULL_RUNNING = dataclasses.replace(
    TASK_FULL,
    state=TaskState.RUNNING,
    history=(*TASK_FULL.history, Transition(TaskState.RUNNING, T0 + 122.25, NODE_A, "started")),
    updated_at=T0 + 122.25,
)


# skill packs: archives are fixed bytes, pack ids their SHA-256, signers fixed keys


def fixed_blob(label: str, size: int) -> bytes:
    """``size`` deterministic bytes (BLAKE2b blocks of ``label/i``)."""
    blocks = [fixed_bytes(f"{label}/{i}", 64) for i in range(size // 64 + 1)]
    return b"".join(blocks)[:size]


ARCHIVE_SCAN = fixed_blob("pack/port-scan-1.2.0", 512)
ARCHIVE_ECHO = fixed_blob("pack/echo-0.3.1", 200)
ARCHIVE_OLD = fixed_blob("pack/port-scan-1.1.0", 480)
PACK_SCAN = hashlib.sha256(ARCHIVE_SCAN).hexdigest()
PACK_ECHO = hashlib.sha256(ARCHIVE_ECHO).hexdigest()
PACK_OLD = hashlib.sha256(ARCHIVE_OLD).hexdigest()
SIGNER = fixed_bytes("signer/ops-team/ed25519", 32)


def revocation(kind: RevocationKind, target: str, seed_label: str, at_ms: int) -> Revocation:
    """A revocation signed by the Ed25519 key whose seed is ``fixed_bytes(seed_label)``,
    over the signing bytes of PROTOCOL.md 13.4 (Ed25519 signatures are deterministic)."""
    key = SigningKey(fixed_bytes(seed_label, 32))
    by = bytes(key.verify_key)
    signed = (
        b"meshd/skill-revoke/v1\x00"
        + kind.value.encode("ascii")
        + b"\x00"
        + target.encode("ascii")
        + by
        + at_ms.to_bytes(8, "big")
    )
    return Revocation(kind, target, by, at_ms, key.sign(signed).signature)


SIGNER_LEAKED = bytes(SigningKey(fixed_bytes("signer/leaked/seed", 32)).verify_key)
#: The leaked key revoked by its holder; an old pack revoked by a revoker's key.
REVOKE_LEAKED = revocation(
    RevocationKind.KEY, SIGNER_LEAKED.hex(), "signer/leaked/seed", int(T0 * 1000) + 46
)
REVOKE_OLD_PACK = revocation(
    RevocationKind.PACK, PACK_OLD, "signer/revoker/seed", int(T0 * 1000) + 47
)

#: A manifest as a pack's holder announces it (``SkillSpec.to_dict`` plus limits and
#: permissions), written out here so that the vector does not follow later changes.
MANIFEST_SCAN: dict[str, Any] = {
    "name": "port-scan",
    "description": "TCP connect scan of one host",
    "version": "1.2.0",
    "idempotent": True,
    "capabilities": [],
    "params": [
        {
            "name": "host",
            "type": "str",
            "description": "address to scan",
            "default": None,
            "required": True,
            "minimum": None,
            "maximum": None,
        },
        {
            "name": "timeout",
            "type": "float",
            "description": "seconds per port",
            "default": 0.5,
            "required": False,
            "minimum": 0.01,
            "maximum": 10.0,
        },
    ],
    "limits": {"cpu_seconds": 30, "memory_mb": 256, "wall_seconds": 120},
    "permissions": {"network": True, "internet": False, "read": [], "write": []},
}
MANIFEST_ECHO: dict[str, Any] = {
    "name": "echo",
    "description": "",
    "version": "0.3.1",
    "idempotent": True,
    "capabilities": [],
    "params": [],
}
PACK_INFO_SCAN = PackInfo("port-scan", "1.2.0", PACK_SCAN, len(ARCHIVE_SCAN), SIGNER, MANIFEST_SCAN)
PACK_INFO_ECHO = PackInfo("echo", "0.3.1", PACK_ECHO, len(ARCHIVE_ECHO), SIGNER, MANIFEST_ECHO)


def msg_id(n: int) -> bytes:
    return bytes([n]) * 16


def env(
    msg_type: MsgType,
    payload: Any,
    *,
    n: int,
    sender: str = NODE_A,
    corr: int | None = None,
    term: int = 0,
) -> Envelope:
    return Envelope(
        msg_type=msg_type,
        msg_id=msg_id(n),
        sender=sender,
        timestamp_ms=TS + n,
        payload=payload,
        correlation_id=None if corr is None else msg_id(corr),
        term=term,
    )


VALID: list[tuple[str, str, Envelope]] = [
    ("hello", "HELLO from node A with full member info", env(MsgType.HELLO, Hello(INFO_A), n=1)),
    (
        "heartbeat",
        "HEARTBEAT published on PUB, term 7",
        env(MsgType.HEARTBEAT, Heartbeat(3, fixed_bytes("digest", 16), 3), n=2, term=7),
    ),
    ("ping", "PING seq 42", env(MsgType.PING, Ping(42), n=3)),
    (
        "ack",
        "ACK to a plain PING (empty target, ok)",
        env(MsgType.ACK, Ack(42, "", True), n=4, sender=NODE_B, corr=3),
    ),
    (
        "ack_indirect_failed",
        "ACK from a helper: indirect probe of node C got no answer",
        env(MsgType.ACK, Ack(43, NODE_C, False), n=5, sender=NODE_B, corr=6),
    ),
    ("ping_req", "PING_REQ: ask B to probe C", env(MsgType.PING_REQ, PingReq(43, NODE_C), n=6)),
    (
        "sync_req",
        "SYNC_REQ with the asker's digest",
        env(MsgType.SYNC_REQ, SyncReq(fixed_bytes("digest", 16)), n=7),
    ),
    (
        "sync",
        "SYNC reply with three records (alive, suspect, dead)",
        env(MsgType.SYNC, Sync(RECORDS), n=8, sender=NODE_B, corr=7),
    ),
    (
        "sync_empty",
        "SYNC reply with no members",
        env(MsgType.SYNC, Sync(()), n=9, sender=NODE_B, corr=7),
    ),
    (
        "member_update",
        "MEMBER_UPDATE gossip: C left",
        env(MsgType.MEMBER_UPDATE, MemberUpdate((MemberRecord(INFO_C, MemberState.LEFT),)), n=10),
    ),
    ("leave", "LEAVE at incarnation 4", env(MsgType.LEAVE, Leave(4), n=11)),
    (
        "intro",
        "INTRO to a seed's intro socket",
        env(MsgType.INTRO, Intro(INFO_C), n=12, sender=NODE_C),
    ),
    (
        "intro_ack",
        "INTRO_ACK from seed B: its info and the members it knows",
        env(MsgType.INTRO_ACK, IntroAck(INFO_B, RECORDS[:1]), n=13, sender=NODE_B, corr=12),
    ),
    (
        "error",
        "ERROR refusing an INTRO",
        env(
            MsgType.ERROR,
            Error("not_admitted", "admission proof does not verify"),
            n=14,
            sender=NODE_B,
            corr=12,
        ),
    ),
    # ---- election (appended: the vectors above never change) ----
    (
        "vote_req",
        "VOTE_REQ: B (priority 100) asks for a real vote in term 8",
        env(MsgType.VOTE_REQ, VoteReq(8, False, 100), n=15, sender=NODE_B, term=7),
    ),
    (
        "vote_req_pre",
        "VOTE_REQ pre-vote: A would take term 8 (its own term stays 7)",
        env(MsgType.VOTE_REQ, VoteReq(8, True, 10), n=16, term=7),
    ),
    (
        "vote",
        "VOTE: A grants B its real vote for term 8",
        env(MsgType.VOTE, Vote(8, True, False, "", fixed_bytes("vote-a", 64)), n=17, term=8),
    ),
    (
        "vote_denied",
        "VOTE: C denies A's pre-vote, it still hears its lead (its own term 7)",
        env(MsgType.VOTE, Vote(7, False, True, "have_lead"), n=18, sender=NODE_C, term=7),
    ),
    (
        "lead_heartbeat",
        "LEAD_HEARTBEAT published by lead B, term 8, seq 1",
        env(MsgType.LEAD_HEARTBEAT, LeadHeartbeat(8, NODE_B, 1), n=19, sender=NODE_B, term=8),
    ),
    (
        "lead_ack",
        "LEAD_ACK from A for heartbeat 1 of term 8",
        env(MsgType.LEAD_ACK, LeadAck(8, 1, True, 3), n=20, term=8),
    ),
    (
        "lead_ack_refused",
        "LEAD_ACK refusing a stale lead: C is at term 9",
        env(MsgType.LEAD_ACK, LeadAck(9, 1, False), n=21, sender=NODE_C, term=9),
    ),
    (
        "step_down",
        "STEP_DOWN: lead B hands over to A (operator transfer)",
        env(MsgType.STEP_DOWN, StepDown(8, NODE_A, "transfer"), n=22, sender=NODE_B, term=8),
    ),
    (
        "step_down_none",
        "STEP_DOWN: lead B steps down with no successor (shutdown)",
        env(MsgType.STEP_DOWN, StepDown(8, "", "shutdown"), n=23, sender=NODE_B, term=8),
    ),
    (
        "transfer_req",
        "TRANSFER_REQ: C asks the lead to hand over to A",
        env(MsgType.TRANSFER_REQ, TransferReq(NODE_A), n=24, sender=NODE_C, term=8),
    ),
    (
        "transfer_req_step_down",
        "TRANSFER_REQ with an empty target: the lead is asked to step down",
        env(MsgType.TRANSFER_REQ, TransferReq(""), n=25, sender=NODE_C, term=8),
    ),
    # ---- tasks (appended: the vectors above never change) ----
    (
        "task_submit",
        "TASK_SUBMIT: origin C submits a new echo task to lead B (origin copy, term 0 seq 0)",
        env(
            MsgType.TASK_SUBMIT,
            TaskSubmit(TaskCopy(0, 0, TASK_NEW)),
            n=26,
            sender=NODE_C,
            term=8,
        ),
    ),
    (
        "task_ack",
        "TASK_ACK: lead B stored C's task",
        env(MsgType.TASK_ACK, TaskAck(TASK_ECHO, True), n=27, sender=NODE_B, corr=26, term=8),
    ),
    (
        "task_ack_refused",
        "TASK_ACK refusing a TASK_SUBMIT sent to A, which is not the lead (empty task id)",
        env(
            MsgType.TASK_ACK,
            TaskAck("", False, "not_lead", "this node is not the lead"),
            n=28,
            corr=26,
            term=8,
        ),
    ),
    (
        "task_assign",
        "TASK_ASSIGN: lead B assigns attempt 2 of a task with every field set to agent A",
        env(
            MsgType.TASK_ASSIGN, TaskAssign(TaskCopy(8, 5, TASK_FULL)), n=29, sender=NODE_B, term=8
        ),
    ),
    (
        "task_report",
        "TASK_REPORT: A completed attempt 1 of the echo task, with a result",
        env(
            MsgType.TASK_REPORT,
            TaskReport(
                TASK_ECHO,
                1,
                ReportKind.COMPLETED,
                100.0,
                "done",
                None,
                {"echo": "hello hello hello", "lines": [1, 2, 3], "ok": True, "warning": None},
                "",
            ),
            n=30,
            term=8,
        ),
    ),
    (
        "task_report_progress",
        "TASK_REPORT: progress of attempt 2 with a checkpoint (best effort)",
        env(
            MsgType.TASK_REPORT,
            TaskReport(
                TASK_SUM,
                2,
                ReportKind.PROGRESS,
                42.5,
                "page 17 of 40",
                fixed_bytes("task-summarize/ckpt-2", 32),
            ),
            n=31,
            term=8,
        ),
    ),
    (
        "task_report_failed",
        "TASK_REPORT: attempt 2 failed with a skill error code",
        env(
            MsgType.TASK_REPORT,
            TaskReport(
                TASK_SUM,
                2,
                ReportKind.FAILED,
                message="upstream answered 503",
                code="fetch_failed",
            ),
            n=32,
            term=8,
        ),
    ),
    (
        "task_cancel",
        "TASK_CANCEL: lead B stops attempt 2 on agent A",
        env(
            MsgType.TASK_CANCEL,
            TaskCancel(TASK_SUM, 2, "operator"),
            n=33,
            sender=NODE_B,
            term=8,
        ),
    ),
    (
        "task_update",
        "TASK_UPDATE: two new copies from lead B (seq 6 and 7 of term 8)",
        env(
            MsgType.TASK_UPDATE,
            TaskUpdate(7, (TaskCopy(8, 6, TASK_DONE), TaskCopy(8, 7, TASK_FULL_RUNNING))),
            n=34,
            sender=NODE_B,
            term=8,
        ),
    ),
    (
        "task_update_beacon",
        "TASK_UPDATE beacon: no copies, newest seq 7",
        env(MsgType.TASK_UPDATE, TaskUpdate(7, ()), n=35, sender=NODE_B, term=8),
    ),
    (
        "task_op",
        "TASK_OP: agent A hands its running task off to C, with its checkpoint",
        env(
            MsgType.TASK_OP,
            TaskOp(
                TaskOpKind.HANDOFF,
                TASK_SUM,
                "alice",
                NODE_C,
                fixed_bytes("task-summarize/ckpt-3", 32),
            ),
            n=36,
            term=8,
        ),
    ),
    (
        "task_op_cancel",
        "TASK_OP: an operator on C cancels the echo task",
        env(
            MsgType.TASK_OP,
            TaskOp(TaskOpKind.CANCEL, TASK_ECHO, "operator"),
            n=37,
            sender=NODE_C,
            term=8,
        ),
    ),
    (
        "task_sync_req",
        "TASK_SYNC_REQ: new lead A (term 9) gathers: its unfinished ids, unfinished set",
        env(
            MsgType.TASK_SYNC_REQ,
            TaskSyncReq(8, 3, (TASK_SUM, TASK_PARENT), True),
            n=38,
            term=9,
        ),
    ),
    (
        "task_sync",
        "TASK_SYNC: C answers A with its one copy, last chunk",
        env(
            MsgType.TASK_SYNC,
            TaskSync((TaskCopy(8, 7, TASK_FULL_RUNNING),), False),
            n=39,
            sender=NODE_C,
            corr=38,
            term=9,
        ),
    ),
    (
        "agent_info",
        "AGENT_INFO: A runs echo and summarize, has a GPU, 4 tasks at a time",
        env(
            MsgType.AGENT_INFO,
            AgentInfo(("echo", "summarize"), ("gpu", "cuda12"), 4),
            n=40,
            term=9,
        ),
    ),
    # ---- skill packs (appended: the vectors above never change) ----
    (
        "skill_announce",
        "SKILL_ANNOUNCE: B sends its whole inventory (two signed packs) to A, which joined",
        env(
            MsgType.SKILL_ANNOUNCE,
            SkillAnnounce((PACK_INFO_SCAN, PACK_INFO_ECHO), True),
            n=41,
            sender=NODE_B,
            term=9,
        ),
    ),
    (
        "skill_announce_delta",
        "SKILL_ANNOUNCE delta published by B: it installed echo, removed old-scan",
        env(
            MsgType.SKILL_ANNOUNCE,
            SkillAnnounce((PACK_INFO_ECHO,), False, ("old-scan",)),
            n=42,
            sender=NODE_B,
            term=9,
        ),
    ),
    (
        "skill_fetch",
        "SKILL_FETCH: A asks B for up to 256 KiB of the port-scan pack from byte 256",
        env(MsgType.SKILL_FETCH, SkillFetch(PACK_SCAN, 256, 256 * 1024), n=43, term=9),
    ),
    (
        "skill_chunk",
        "SKILL_CHUNK: B answers with the last 256 bytes of the 512-byte archive",
        env(
            MsgType.SKILL_CHUNK,
            SkillChunk(PACK_SCAN, 256, len(ARCHIVE_SCAN), ARCHIVE_SCAN[256:]),
            n=44,
            sender=NODE_B,
            corr=43,
            term=9,
        ),
    ),
    (
        "skill_chunk_error",
        "SKILL_CHUNK: C does not hold the pack A asked it for (error set, no data)",
        env(
            MsgType.SKILL_CHUNK,
            SkillChunk(PACK_SCAN, 0, 0, b"", "pack not held"),
            n=45,
            sender=NODE_C,
            corr=43,
            term=9,
        ),
    ),
    (
        "skill_revoke",
        "SKILL_REVOKE published by C: a leaked signer key revoked by its holder, and a pack "
        "id revoked by another key (a revoker)",
        env(
            MsgType.SKILL_REVOKE,
            SkillRevoke((REVOKE_LEAKED, REVOKE_OLD_PACK)),
            n=46,
            sender=NODE_C,
            term=9,
        ),
    ),
    (
        "task_digest",
        "TASK_DIGEST published by lead A (term 9): its root only, taken at seq 212",
        env(MsgType.TASK_DIGEST, TaskDigest(9, bytes(range(16)), (), 212), n=47, term=9),
    ),
    (
        "task_digest_buckets",
        "TASK_DIGEST from C to A: its 256 buckets (bucket 0x1f holds one copy)",
        env(
            MsgType.TASK_DIGEST,
            TaskDigest(
                9,
                bytes(range(16, 32)),
                tuple(0x0123456789ABCDEF if b == 0x1F else 0 for b in range(256)),
            ),
            n=48,
            sender=NODE_C,
            term=9,
        ),
    ),
    (
        "task_query",
        "TASK_QUERY: new lead A (term 9) asks C about attempt 2 of the sum task",
        env(MsgType.TASK_QUERY, TaskQuery(TASK_SUM, 2, 9), n=49, term=9),
    ),
    (
        "task_keys",
        "TASK_KEYS: A answers C's buckets: bucket 0x1f differs, A holds the sum task there",
        env(
            MsgType.TASK_KEYS,
            TaskKeys((0x1F,), (TaskKey(TASK_SUM, 9, 212),), False),
            n=50,
            term=9,
        ),
    ),
    (
        "lead_cert",
        "LEAD_CERT: B proves its lead of term 8 with the signed votes of B and A",
        env(
            MsgType.LEAD_CERT,
            LeadCert(
                8,
                NODE_B,
                (
                    CertVote(NODE_B, fixed_bytes("vote-b", 64)),
                    CertVote(NODE_A, fixed_bytes("vote-a", 64)),
                ),
            ),
            n=51,
            sender=NODE_B,
            term=8,
        ),
    ),
    (
        "lead_cert_req",
        "LEAD_CERT_REQ: C asks B for its certificate of term 8",
        env(MsgType.LEAD_CERT_REQ, LeadCertReq(8), n=52, sender=NODE_C, term=7),
    ),
    (
        "voters",
        "VOTERS: lead B's voter set of term 8, version 3: A, B and C",
        env(MsgType.VOTERS, Voters(8, 3, (NODE_A, NODE_B, NODE_C)), n=53, sender=NODE_B, term=8),
    ),
]

# ---- JSON forms ---------------------------------------------------------------------


def to_json(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, enum.Enum):
        return value.value if isinstance(value.value, str) else value.name
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    return value


def envelope_json(e: Envelope) -> dict[str, Any]:
    return {
        "version": e.version,
        "type": e.msg_type.name,
        "msg_id": e.msg_id.hex(),
        "sender": e.sender,
        "timestamp_ms": e.timestamp_ms,
        "correlation_id": None if e.correlation_id is None else e.correlation_id.hex(),
        "term": e.term,
        "payload": to_json(e.payload),
    }


def wire_of(e: Envelope) -> list[Any]:
    """The decoded msgpack array of a valid envelope (to derive invalid frames from)."""
    obj: list[Any] = msgpack.unpackb(encode(e), raw=False)
    return obj


def pack(obj: Any) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def invalid_vectors() -> list[dict[str, Any]]:
    by_name = {name: e for name, _, e in VALID}
    hb = encode(by_name["heartbeat"])
    vectors: list[dict[str, Any]] = []

    def add(name: str, description: str, data: bytes, error: str, field: str | None = None) -> None:
        v: dict[str, Any] = {"name": name, "description": description, "hex": data.hex()}
        v["error"] = error
        if field is not None:
            v["field"] = field
        vectors.append(v)

    w = wire_of(by_name["heartbeat"])
    add(
        "invalid_version",
        "version 2, otherwise a valid HEARTBEAT",
        pack([2, *w[1:]]),
        "UnsupportedVersion",
    )
    add(
        "invalid_version_other_shape",
        "version 2 with a 3-item array: version is checked first",
        pack([2, "future", {"x": 1}]),
        "UnsupportedVersion",
    )
    add(
        "invalid_version_truncated",
        "a version 3 frame cut after its version",
        pack([3, *w[1:]])[:2],
        "UnsupportedVersion",
    )
    add(
        "invalid_unknown_type",
        "type code 999 with the supported version",
        pack([w[0], 999, *w[2:]]),
        "UnknownMessageType",
    )
    add("invalid_empty", "empty frame", b"", "TruncatedFrame")
    add(
        "invalid_truncated", "a valid HEARTBEAT missing its last 3 bytes", hb[:-3], "TruncatedFrame"
    )
    add("invalid_truncated_header", "array header and version only", hb[:2], "TruncatedFrame")
    add(
        "invalid_trailing_bytes",
        "a valid HEARTBEAT followed by one nil byte",
        hb + b"\xc0",
        "MalformedFrame",
    )
    add(
        "invalid_not_array",
        "a map instead of the envelope array",
        pack({"v": 1}),
        "MalformedFrame",
        "envelope",
    )
    add(
        "invalid_wrong_length",
        "envelope array of 7 items",
        pack(w[:7]),
        "MalformedFrame",
        "envelope",
    )
    add(
        "invalid_bad_sender",
        "sender in uppercase hex",
        pack([*w[:3], w[3].upper(), *w[4:]]),
        "MalformedFrame",
        "sender",
    )
    add(
        "invalid_short_msg_id",
        "msg_id of 15 bytes",
        pack([*w[:2], w[2][:15], *w[3:]]),
        "MalformedFrame",
        "msg_id",
    )
    add(
        "invalid_msg_id_str",
        "msg_id as a msgpack str instead of bin",
        pack([*w[:2], w[2].hex()[:16], *w[3:]]),
        "MalformedFrame",
        "msg_id",
    )
    add("invalid_negative_term", "term -1", pack([*w[:6], -1, w[7]]), "MalformedFrame", "term")
    body = dict(w[7])
    del body["n"]
    add(
        "invalid_missing_field",
        "HEARTBEAT body without its 'n' key",
        pack([*w[:7], body]),
        "MalformedFrame",
        "body.n",
    )
    a = wire_of(by_name["ack"])
    add(
        "invalid_bool_as_int",
        "ACK with ok = 1 (int) instead of true",
        pack([*a[:7], {**a[7], "ok": 1}]),
        "MalformedFrame",
        "body.ok",
    )
    s = wire_of(by_name["sync"])
    members = [dict(m) for m in s[7]["members"]]
    members[1] = {**members[1], "s": "zombie"}
    add(
        "invalid_member_state",
        "SYNC whose second record has state 'zombie'",
        pack([*s[:7], {"members": members}]),
        "MalformedFrame",
        "body.members[1].s",
    )
    h = wire_of(by_name["hello"])
    bad_info = {**h[7]["info"], "ck": h[7]["info"]["ck"][:31]}
    add(
        "invalid_key_length",
        "HELLO whose curve key is 31 bytes",
        pack([*h[:7], {"info": bad_info}]),
        "MalformedFrame",
        "body.info.ck",
    )
    bad_info = {**h[7]["info"], "rp": 70000}
    add(
        "invalid_port",
        "HELLO whose router port is 70000",
        pack([*h[:7], {"info": bad_info}]),
        "MalformedFrame",
        "body.info.rp",
    )
    v = wire_of(by_name["vote"])
    add(
        "invalid_vote_granted_as_int",
        "VOTE with granted = 1 (int) instead of true",
        pack([*v[:7], {**v[7], "granted": 1}]),
        "MalformedFrame",
        "body.granted",
    )
    lh = wire_of(by_name["lead_heartbeat"])
    add(
        "invalid_lead_heartbeat_lead",
        "LEAD_HEARTBEAT whose lead is not a node id",
        pack([*lh[:7], {**lh[7], "lead": "bravo"}]),
        "MalformedFrame",
        "body.lead",
    )
    sd = wire_of(by_name["step_down"])
    add(
        "invalid_step_down_reason",
        "STEP_DOWN whose reason is 65 chars long",
        pack([*sd[:7], {**sd[7], "reason": "r" * 65}]),
        "MalformedFrame",
        "body.reason",
    )
    tu = wire_of(by_name["task_update"])
    copies = [dict(cp) for cp in tu[7]["copies"]]
    copies[1] = {**copies[1], "task": {**copies[1]["task"], "state": "zombie"}}
    add(
        "invalid_task_state",
        "TASK_UPDATE whose second copy has task state 'zombie'",
        pack([*tu[:7], {**tu[7], "copies": copies}]),
        "MalformedFrame",
        "body.copies[1].task.state",
    )
    tr = wire_of(by_name["task_report"])
    add(
        "invalid_task_id",
        "TASK_REPORT whose task id is not hex",
        pack([*tr[:7], {**tr[7], "task_id": "g" + TASK_ECHO[1:]}]),
        "MalformedFrame",
        "body.task_id",
    )
    tp = wire_of(by_name["task_report_progress"])
    add(
        "invalid_task_pct",
        "TASK_REPORT with progress 150 %",
        pack([*tp[:7], {**tp[7], "pct": 150.0}]),
        "MalformedFrame",
        "body.pct",
    )
    tc = wire_of(by_name["task_cancel"])
    add(
        "invalid_task_attempt_bool",
        "TASK_CANCEL with attempt = true instead of an int",
        pack([*tc[:7], {**tc[7], "attempt": True}]),
        "MalformedFrame",
        "body.attempt",
    )
    ta = wire_of(by_name["task_assign"])
    bad_copy = {**ta[7]["copy"], "task": {**ta[7]["copy"]["task"], "fence": [8, "bravo"]}}
    add(
        "invalid_task_fence_lead",
        "TASK_ASSIGN whose fence names the lead by name instead of node id",
        pack([*ta[:7], {"copy": bad_copy}]),
        "MalformedFrame",
        "body.copy.task.fence.lead",
    )
    sf = wire_of(by_name["skill_fetch"])
    add(
        "invalid_pack_id",
        "SKILL_FETCH whose pack id is in uppercase hex",
        pack([*sf[:7], {**sf[7], "pack_id": PACK_SCAN.upper()}]),
        "MalformedFrame",
        "body.pack_id",
    )
    add(
        "invalid_fetch_length",
        "SKILL_FETCH asking for 0 bytes",
        pack([*sf[:7], {**sf[7], "length": 0}]),
        "MalformedFrame",
        "body.length",
    )
    sa = wire_of(by_name["skill_announce"])
    packs = [dict(p) for p in sa[7]["packs"]]
    packs[1] = {**packs[1], "signer": packs[1]["signer"][:31]}
    add(
        "invalid_pack_signer",
        "SKILL_ANNOUNCE whose second pack has a signer key of 31 bytes",
        pack([*sa[:7], {**sa[7], "packs": packs}]),
        "MalformedFrame",
        "body.packs[1].signer",
    )
    add(
        "invalid_int_map_key",
        "envelope body map with an int key",
        hb[: -len(pack(w[7]))] + b"\x81\x01\x02",
        "MalformedFrame",
    )
    return vectors


def compat_vectors() -> list[tuple[str, str, bytes, Envelope]]:
    """Valid frames that are not in canonical form: they decode, re-encode differently."""
    hb = next(e for n, _, e in VALID if n == "heartbeat")
    w = wire_of(hb)
    body = {"zz_future": [1, 2, 3], **w[7], "extra": {"nested": b"\x00"}}
    submit = next(e for n, _, e in VALID if n == "task_submit")
    s = wire_of(submit)
    task = dict(s[7]["copy"]["task"])
    task.update(
        timeout=60,
        created=int(T0),
        updated=int(T0),
        hist=[["pending", int(T0), NODE_C, "submitted"]],
    )
    task["future"] = {"x": 1}
    return [
        (
            "heartbeat_unknown_keys",
            "HEARTBEAT with unknown body keys before and after the known ones: ignored",
            pack([*w[:7], body]),
            hb,
        ),
        (
            "task_submit_int_times",
            "TASK_SUBMIT with ints where floats are expected (accepted, re-encoded as "
            "float64) and an unknown task key (ignored)",
            pack([*s[:7], {"copy": {**s[7]["copy"], "task": task}}]),
            submit,
        ),
    ]


def render(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def documents() -> dict[str, str]:
    docs: dict[str, str] = {}
    for name, description, e in VALID:
        docs[f"{name}.json"] = render(
            {
                "name": name,
                "description": description,
                "hex": encode(e).hex(),
                "envelope": envelope_json(e),
            }
        )
    for name, description, data, e in compat_vectors():
        docs[f"{name}.json"] = render(
            {
                "name": name,
                "description": description,
                "hex": data.hex(),
                "canonical_hex": encode(e).hex(),
                "envelope": envelope_json(e),
            }
        )
    for v in invalid_vectors():
        docs[f"{v['name']}.json"] = render(v)
    return docs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    docs = documents()
    if args.check:
        stale = [n for n, text in docs.items() if _read(OUT_DIR / n) != text]
        extra = sorted(p.name for p in OUT_DIR.glob("*.json") if p.name not in docs)
        for n in stale:
            print(f"differs: {n}")
        for n in extra:
            print(f"not generated: {n}")
        return 1 if stale or extra else 0
    for name, text in docs.items():
        (OUT_DIR / name).write_text(text, encoding="utf-8")
    print(f"wrote {len(docs)} vectors to {OUT_DIR}")
    return 0


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


if __name__ == "__main__":
    raise SystemExit(main())
