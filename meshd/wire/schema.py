"""The mesh wire format as data: size limits, and one field table per message family.

Every map that travels inside an envelope body is declared here, once, as a
:class:`~meshd.wire.fields.Record`: its dataclass and its fields in wire order, each a row
``(wire key, dataclass attribute, field type)`` (``(key, type)`` when the attribute has the
key's name) whose type holds the field's bounds. A message body's dataclass is the payload
class of its type (:data:`~meshd.wire.messages.PAYLOAD_TYPES`), so its table is just its
rows. :mod:`meshd.wire.codec` derives encoding, decoding and the checks of both from these
tables; ``proto/PROTOCOL.md`` documents them (sections 5, 6, 12 and 13) and
``tests/unit/wire/test_protocol_doc.py`` checks that the document and the tables agree.

* records: :data:`MEMBER_INFO`, :data:`MEMBER_RECORD`, :data:`TASK` (with its parts
  :data:`REQUIREMENT`, :data:`TRANSITION`, :data:`PROGRESS`, :data:`TASK_FAILURE` and
  :data:`ASSIGNMENT`, which travel as fixed-length arrays), :data:`TASK_COPY`,
  :data:`PACK_INFO`, :data:`REVOCATION` (a fixed-length array);
* message bodies, by family: :data:`MEMBERSHIP`, :data:`ELECTION`, :data:`TASKS`,
  :data:`SKILL_PACKS`; all of them in :data:`BODIES`.
"""

from __future__ import annotations

from typing import Final

from meshd.wire.fields import (
    Bin,
    Bool,
    Choice,
    Float,
    FreeMap,
    HexId,
    Int,
    List,
    Number,
    Pattern,
    Record,
    Row,
    Str,
    Value,
)
from meshd.wire.messages import (
    DIGEST_BUCKETS,
    MSG_ID_BYTES,
    NODE_ID_CHARS,
    PAYLOAD_TYPES,
    CertVote,
    MsgType,
    ReportKind,
    TaskKey,
    TaskOpKind,
)
from meshd.wire.records import (
    Assignment,
    MemberInfo,
    MemberRecord,
    MemberState,
    PackInfo,
    Progress,
    Requirement,
    Revocation,
    RevocationKind,
    Task,
    TaskCopy,
    TaskFailure,
    TaskState,
    Transition,
)

# ---- limits (see proto/PROTOCOL.md, "Size limits") ---------------------------------

#: Largest value of a generic unsigned field (timestamps, terms, seq, incarnations...).
U63_MAX: Final = 2**63 - 1
#: Largest counter: terms, sequence numbers, incarnations, attempts. Half the unsigned
#: range, so that no arithmetic a state machine does on a counter it accepted (+1 on a
#: refutation, a new term, the next seq) can leave the range the wire can carry: a value
#: above it is malformed on receipt.
MAX_COUNTER: Final = 2**62 - 1
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
#: Keys per TASK_KEYS frame (~45 bytes each).
MAX_TASK_KEYS: Final = 5000
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
#: Revocation records in one SKILL_REVOKE (about 180 bytes each: 4096 fit a 1 MiB frame).
MAX_REVOKED: Final = 4096
#: Length of a revocation's ``sig`` (an Ed25519 signature).
SIGNATURE_BYTES: Final = 64

# ---- field types used more than once -------------------------------------------------


def _item_str(max_chars: int) -> Str:
    """A str item of an array (its errors say "at most")."""
    return Str(max_chars, expected=f"str of at most {max_chars} chars")


U63: Final = Int(U63_MAX)
COUNTER: Final = Int(MAX_COUNTER)
U31: Final = Int(U31_MAX)
PORT: Final = Int(PORT_MAX)
BOOL: Final = Bool()
KEY: Final = Bin(KEY_BYTES, KEY_BYTES)
MSG_ID: Final = Bin(MSG_ID_BYTES, MSG_ID_BYTES)
DIGEST: Final = Bin(MAX_DIGEST_BYTES)
NODE_ID: Final = HexId("node id", NODE_ID_CHARS)
#: ``""`` (none) or a node id.
NODE_ID_OR_EMPTY: Final = HexId("node id", NODE_ID_CHARS, empty=True)
TASK_ID: Final = HexId("task id", TASK_ID_CHARS)
PACK_ID: Final = HexId("pack id", PACK_ID_CHARS)
#: A pack's size, or an offset into it.
PACK_BYTES: Final = Int(MAX_PACK_BYTES)
#: ``meshd.skills.spec.SKILL_NAME`` with its length bound (not imported: the codec stays
#: free of the skills package).
SKILL_NAME: Final = Pattern(
    "skill name",
    f"[A-Za-z][A-Za-z0-9_.-]{{0,{MAX_SKILL_CHARS - 1}}}",
    "skill name (a letter, then letters, digits, '-', '_' or '.'; "
    f"at most {MAX_SKILL_CHARS} chars)",
    1,
    MAX_SKILL_CHARS,
)
NAME: Final = Str(MAX_NAME_CHARS)
REASON: Final = Str(MAX_REASON_CHARS)
CODE: Final = Str(MAX_CODE_CHARS)
ERROR_MESSAGE: Final = Str(MAX_ERROR_MESSAGE_CHARS)
TASK_TEXT: Final = Str(MAX_TASK_TEXT_CHARS)
#: Wall-clock epoch seconds: a finite number >= 0.
TIME: Final = Number()
CHECKPOINT: Final = Bin(MAX_CHECKPOINT_BYTES, nil=True)
#: A task's ``params``, a pack's ``manifest``: a map with str keys and free values.
PARAMS: Final = FreeMap(MAX_VALUE_DEPTH)
TASK_STATE: Final = Choice(TaskState)

# ---- records -----------------------------------------------------------------------

MEMBER_INFO: Final = Record(
    MemberInfo,
    ("id", "node_id", NODE_ID),
    ("name", "name", NAME),
    ("role", "role", Str(MAX_ROLE_CHARS)),
    ("pri", "priority", U31),
    ("tier", "tier", U31),
    ("ek", "ed25519_pk", KEY),
    ("ck", "curve_pk", KEY),
    ("proof", "proof", KEY),
    ("addrs", "addresses", List(_item_str(MAX_ADDRESS_CHARS), MAX_ADDRESSES)),
    ("rp", "router_port", PORT),
    ("pp", "pub_port", PORT),
    ("ip", "intro_port", PORT),
    ("inc", "incarnation", COUNTER),
    ("pv", "protocol_version", U63),
    ("start", "started_at", Float()),
    ("sig", "sig", Bin(SIGNATURE_BYTES)),
    label="member info",
)

MEMBER_RECORD: Final = Record(
    MemberRecord,
    ("m", "info", MEMBER_INFO),
    # strict: an unknown state fails already in member_record_to_wire (ValueError)
    ("s", "state", Choice(MemberState, strict=True)),
    label="member record",
)

REQUIREMENT: Final = Record(
    Requirement,
    ("role", Str(MAX_ROLE_CHARS, nil=True)),
    ("capability", Str(MAX_NAME_CHARS, nil=True)),
    ("node", Str(MAX_NAME_CHARS, nil=True)),
    array=True,
)
TRANSITION: Final = Record(
    Transition,
    ("state", TASK_STATE),
    ("at", TIME),
    ("actor", NAME),
    ("reason", TASK_TEXT),
    array=True,
)
PROGRESS: Final = Record(
    Progress,
    ("pct", Number(MAX_PROGRESS_PCT)),
    ("message", TASK_TEXT),
    array=True,
)
TASK_FAILURE: Final = Record(
    TaskFailure,
    ("code", CODE),
    ("message", Str(MAX_TASK_ERROR_CHARS)),
    array=True,
    nil=True,
)
ASSIGNMENT: Final = Record(Assignment, ("term", COUNTER), ("lead", NODE_ID), array=True, nil=True)

TASK: Final = Record(
    Task,
    ("id", "task_id", TASK_ID),
    ("skill", "skill", Str(MAX_SKILL_CHARS, 1)),
    ("params", "params", PARAMS),
    ("origin", "origin", NODE_ID),
    ("req", "requirement", REQUIREMENT),
    ("pri", "priority", Int(MAX_TASK_PRIORITY)),
    ("timeout", "timeout_s", Number(positive=True)),
    ("deadline", "deadline", Number(nil=True)),
    ("idem", "idempotent", BOOL),
    ("verify", "verify", BOOL),
    ("parent", "parent", HexId("task id", TASK_ID_CHARS, nil=True)),
    ("deps", "depends_on", List(TASK_ID, MAX_TASK_DEPS)),
    ("retries", "retry_count", U63),
    ("retry_limit", "retry_limit", U63),
    ("state", "state", TASK_STATE),
    ("hist", "history", List(TRANSITION, MAX_TASK_HISTORY)),
    ("prog", "progress", PROGRESS),
    ("ckpt", "checkpoint", CHECKPOINT),
    ("result", "result", Value(MAX_VALUE_DEPTH)),
    ("error", "error", TASK_FAILURE),
    ("to", "assigned_to", HexId("node id", NODE_ID_CHARS, nil=True)),
    ("fence", "assignment", ASSIGNMENT),
    ("attempt", "attempt", COUNTER),
    ("created", "created_at", TIME),
    ("updated", "updated_at", TIME),
    label="task",
)

TASK_COPY: Final = Record(
    TaskCopy, ("term", COUNTER), ("seq", COUNTER), ("task", TASK), label="task copy"
)

PACK_INFO: Final = Record(
    PackInfo,
    ("name", SKILL_NAME),
    ("version", Str(MAX_PACK_VERSION_CHARS, 1)),
    ("pack_id", PACK_ID),
    ("size", PACK_BYTES),
    ("signer", KEY),
    ("manifest", FreeMap(MAX_VALUE_DEPTH, MAX_MANIFEST_BYTES)),
    label="pack",
)

REVOCATION: Final = Record(
    Revocation,
    ("kind", Choice(RevocationKind)),
    ("target", HexId("signer key or pack id", PACK_ID_CHARS)),
    ("by", KEY),
    ("at", "at_ms", U63),
    ("sig", Bin(SIGNATURE_BYTES, SIGNATURE_BYTES)),
    label="revocation",
    array=True,
)

# ---- message bodies, by family --------------------------------------------------------

_PAYLOAD_CLASSES: Final = {msg_type: cls for cls, msg_type in PAYLOAD_TYPES.items()}


def _bodies(rows: dict[MsgType, list[Row]]) -> dict[MsgType, Record]:
    """The body tables of a family: each type's payload class, with the type's rows."""
    return {t: Record(_PAYLOAD_CLASSES[t], *r, label=t.name) for t, r in rows.items()}


MEMBERS: Final = List(MEMBER_RECORD, MAX_MEMBERS)

MEMBERSHIP: Final = _bodies(
    {
        MsgType.HELLO: [("info", MEMBER_INFO)],
        MsgType.HEARTBEAT: [
            ("inc", "incarnation", COUNTER),
            ("digest", DIGEST),
            ("n", "members", U63),
        ],
        MsgType.PING: [("seq", U63)],
        MsgType.ACK: [("seq", U63), ("target", NODE_ID_OR_EMPTY), ("ok", BOOL)],
        MsgType.PING_REQ: [("seq", U63), ("target", NODE_ID)],
        MsgType.SYNC_REQ: [("digest", DIGEST)],
        MsgType.SYNC: [("members", MEMBERS)],
        MsgType.MEMBER_UPDATE: [("members", MEMBERS)],
        MsgType.LEAVE: [("inc", "incarnation", COUNTER)],
        MsgType.INTRO: [("info", MEMBER_INFO)],
        MsgType.INTRO_ACK: [("info", MEMBER_INFO), ("members", MEMBERS)],
        MsgType.ERROR: [("code", Str(MAX_CODE_CHARS, 1)), ("message", ERROR_MESSAGE)],
    }
)

#: Signed votes in one LEAD_CERT (a quorum of at most MAX_MEMBERS voters; ~100 bytes each).
MAX_CERT_VOTES: Final = MAX_MEMBERS
SIG: Final = Bin(SIGNATURE_BYTES)
CERT_VOTE: Final = Record(
    CertVote, ("voter", NODE_ID), ("sig", Bin(SIGNATURE_BYTES, SIGNATURE_BYTES)),
    label="cert vote", array=True,
)  # fmt: skip

ELECTION: Final = _bodies(
    {
        MsgType.VOTE_REQ: [("term", COUNTER), ("pre", BOOL), ("pri", "priority", U31)],
        MsgType.VOTE: [
            ("term", COUNTER),
            ("granted", BOOL),
            ("pre", BOOL),
            ("reason", REASON),
            ("sig", SIG),
        ],
        MsgType.LEAD_HEARTBEAT: [("term", COUNTER), ("lead", NODE_ID), ("seq", COUNTER)],
        MsgType.LEAD_ACK: [
            ("term", COUNTER),
            ("seq", COUNTER),
            ("ok", BOOL),
            ("vv", "voters_version", COUNTER),
        ],
        MsgType.STEP_DOWN: [("term", COUNTER), ("successor", NODE_ID_OR_EMPTY), ("reason", REASON)],
        MsgType.TRANSFER_REQ: [("target", NODE_ID_OR_EMPTY)],
        MsgType.LEAD_CERT: [
            ("term", COUNTER),
            ("lead", NODE_ID),
            ("votes", List(CERT_VOTE, MAX_CERT_VOTES)),
            ("pre", BOOL),
        ],
        MsgType.LEAD_CERT_REQ: [("term", COUNTER)],
        MsgType.VOTERS: [
            ("term", COUNTER),
            ("version", COUNTER),
            ("voters", List(NODE_ID, MAX_MEMBERS)),
        ],
    }
)

COPIES: Final = List(TASK_COPY, MAX_TASK_COPIES)
TASK_KEY: Final = Record(
    TaskKey,
    ("id", "task_id", TASK_ID),
    ("term", COUNTER),
    ("seq", COUNTER),
    label="task key",
    array=True,
)

TASKS: Final = _bodies(
    {
        MsgType.TASK_SUBMIT: [("copy", TASK_COPY)],
        MsgType.TASK_ASSIGN: [("copy", TASK_COPY)],
        MsgType.TASK_REPORT: [
            ("task_id", TASK_ID),
            ("attempt", COUNTER),
            ("kind", Choice(ReportKind)),
            ("pct", Number(MAX_PROGRESS_PCT)),
            ("message", TASK_TEXT),
            ("ckpt", "checkpoint", CHECKPOINT),
            ("result", Value(MAX_VALUE_DEPTH)),
            ("code", CODE),
        ],
        MsgType.TASK_CANCEL: [("task_id", TASK_ID), ("attempt", COUNTER), ("reason", REASON)],
        MsgType.TASK_UPDATE: [("seq_hi", COUNTER), ("copies", COPIES)],
        MsgType.TASK_ACK: [
            ("task_id", HexId("task id", TASK_ID_CHARS, empty=True)),
            ("ok", BOOL),
            ("code", CODE),
            ("message", ERROR_MESSAGE),
        ],
        MsgType.TASK_OP: [
            ("op", Choice(TaskOpKind)),
            ("task_id", TASK_ID),
            ("actor", NAME),
            ("target", NAME),
            ("ckpt", "checkpoint", CHECKPOINT),
        ],
        MsgType.TASK_SYNC_REQ: [
            ("since_term", COUNTER),
            ("since_seq", COUNTER),
            ("ids", List(TASK_ID, MAX_SYNC_IDS)),
            ("unfinished", BOOL),
        ],
        MsgType.TASK_SYNC: [("copies", COPIES), ("more", BOOL)],
        MsgType.TASK_DIGEST: [
            ("term", COUNTER),
            ("root", DIGEST),
            ("buckets", List(U63, DIGEST_BUCKETS)),
            ("seq", COUNTER),
        ],
        MsgType.TASK_QUERY: [("task_id", TASK_ID), ("attempt", COUNTER), ("term", COUNTER)],
        MsgType.TASK_KEYS: [
            ("buckets", List(Int(DIGEST_BUCKETS - 1), DIGEST_BUCKETS)),
            ("keys", List(TASK_KEY, MAX_TASK_KEYS)),
            ("more", BOOL),
        ],
        MsgType.AGENT_INFO: [
            ("skills", List(_item_str(MAX_SKILL_CHARS), MAX_SKILLS)),
            ("caps", "capabilities", List(_item_str(MAX_ROLE_CHARS), MAX_CAPABILITIES)),
            ("max_concurrent", Int(MAX_AGENT_CONCURRENCY)),
        ],
    }
)

SKILL_PACKS: Final = _bodies(
    {
        MsgType.SKILL_ANNOUNCE: [
            ("packs", List(PACK_INFO, MAX_ANNOUNCED_PACKS)),
            ("full", BOOL),
            ("removed", List(SKILL_NAME, MAX_ANNOUNCED_PACKS)),
        ],
        MsgType.SKILL_FETCH: [
            ("pack_id", PACK_ID),
            ("offset", PACK_BYTES),
            ("length", Int(MAX_FETCH_BYTES, 1)),
        ],
        MsgType.SKILL_CHUNK: [
            ("pack_id", PACK_ID),
            ("offset", PACK_BYTES),
            ("total", PACK_BYTES),
            ("data", Bin(MAX_CHUNK_BYTES)),
            ("error", Str(MAX_CHUNK_ERROR_CHARS)),
        ],
        MsgType.SKILL_REVOKE: [("records", List(REVOCATION, MAX_REVOKED))],
    }
)

#: The body table of every message type.
BODIES: Final[dict[MsgType, Record]] = {**MEMBERSHIP, **ELECTION, **TASKS, **SKILL_PACKS}
