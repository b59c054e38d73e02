"""Unit tests of the skill pack messages of the wire codec (PROTOCOL.md, "Skill packs"):
round trips, canonical form, every rejection rule naming its field."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import msgpack  # type: ignore[import-untyped, unused-ignore]
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshd.errors import LocalProtocolError, MalformedFrame, TruncatedFrame
from meshd.skills.spec import SKILL_NAME
from meshd.wire import (
    KEY_BYTES,
    MAX_ANNOUNCED_PACKS,
    MAX_CHUNK_BYTES,
    MAX_CHUNK_ERROR_CHARS,
    MAX_FETCH_BYTES,
    MAX_FRAME_BYTES,
    MAX_MANIFEST_BYTES,
    MAX_PACK_BYTES,
    MAX_PACK_VERSION_CHARS,
    MAX_REVOKED,
    MAX_SKILL_CHARS,
    MAX_VALUE_DEPTH,
    PACK_ID_CHARS,
    PAYLOAD_TYPES,
    Envelope,
    MsgType,
    PackInfo,
    Payload,
    Revocation,
    RevocationKind,
    SkillAnnounce,
    SkillChunk,
    SkillFetch,
    SkillRevoke,
    decode,
    decode_payload,
    encode,
    encode_payload,
)

A = "0123456789abcdef0123456789abcdef"
ARCHIVE = bytes(range(256)) * 3
PID = hashlib.sha256(ARCHIVE).hexdigest()
PID2 = hashlib.sha256(b"other pack").hexdigest()
SIGNER = b"\x11" * KEY_BYTES
REVOKED_KEY = b"\x22" * KEY_BYTES
SIG = b"\x33" * 64
#: A key revoked by its holder, and a pack revoked by (say) a revoker.
REC_KEY = Revocation(RevocationKind.KEY, REVOKED_KEY.hex(), REVOKED_KEY, 1_767_225_600_000, SIG)
REC_PACK = Revocation(RevocationKind.PACK, PID, SIGNER, 2**63 - 1, SIG)
REC_KEYS = ["kind", "target", "by", "at", "sig"]

PACK_KEYS = ["name", "version", "pack_id", "size", "signer", "manifest"]
BODY_KEYS: dict[MsgType, list[str]] = {
    MsgType.SKILL_ANNOUNCE: ["packs", "full", "removed"],
    MsgType.SKILL_FETCH: ["pack_id", "offset", "length"],
    MsgType.SKILL_CHUNK: ["pack_id", "offset", "total", "data", "error"],
    MsgType.SKILL_REVOKE: ["records"],
}

#: A manifest with values of every msgpack kind.
MANIFEST: dict[str, Any] = {
    "name": "port-scan",
    "version": "1.2.0",
    "idempotent": True,
    "params": [{"name": "host", "type": "str", "default": None, "minimum": 0.5}],
    "limits": {"cpu_seconds": 30, "memory_mb": 256},
    "neg": -(2**63),
    "big": 2**64 - 1,
    "raw": b"\x00\xff",
    "nested": {b"bin key": [1, "two", [3.5, None]]},
}
PACK = PackInfo("port-scan", "1.2.0", PID, len(ARCHIVE), SIGNER, MANIFEST)
PACK_MIN = PackInfo("e", "1", PID2, 0, b"\x00" * KEY_BYTES, {})

PAYLOADS: list[tuple[str, Payload]] = [
    ("announce_full", SkillAnnounce((PACK, PACK_MIN), True)),
    ("announce_empty_inventory", SkillAnnounce((), True)),
    ("announce_delta", SkillAnnounce((PACK,), False, ("old-scan", "x.y_z-1"))),
    ("announce_removed_only", SkillAnnounce((), False, ("echo",))),
    ("fetch", SkillFetch(PID, 0, 256 * 1024)),
    ("fetch_tail", SkillFetch(PID, 512, 1)),
    ("chunk", SkillChunk(PID, 256, len(ARCHIVE), ARCHIVE[256:512])),
    ("chunk_last_empty", SkillChunk(PID, len(ARCHIVE), len(ARCHIVE), b"")),
    ("chunk_error", SkillChunk(PID, 0, 0, b"", "pack not held")),
    ("revoke", SkillRevoke((REC_KEY, REC_PACK))),
    ("revoke_empty", SkillRevoke(())),
]


def make(payload: Payload, **kw: Any) -> Envelope:
    fields: dict[str, Any] = {
        "msg_type": PAYLOAD_TYPES[type(payload)],
        "msg_id": bytes(range(16)),
        "sender": A,
        "timestamp_ms": 1_767_225_600_123,
        "payload": payload,
        "term": 9,
    }
    fields.update(kw)
    return Envelope(**fields)


def wire(env: Envelope) -> list[Any]:
    obj: list[Any] = msgpack.unpackb(encode(env), raw=False)
    return obj


def pack(obj: Any) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def nested(depth: int) -> Any:
    """``depth`` arrays around an int."""
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


# ---- round trips and canonical form -------------------------------------------------


@pytest.mark.parametrize(("name", "payload"), PAYLOADS, ids=[n for n, _ in PAYLOADS])
def test_round_trip(name: str, payload: Payload) -> None:
    env = make(payload, correlation_id=b"\x07" * 16)
    data = encode(env)
    assert decode(data) == env
    assert encode(decode(data)) == data
    msg_type, body = encode_payload(payload)
    assert list(body) == BODY_KEYS[msg_type]
    assert decode_payload(msg_type, msgpack.unpackb(pack(body), raw=False)) == payload


def test_every_skill_message_type_is_covered() -> None:
    covered = {encode_payload(p)[0] for _, p in PAYLOADS}
    assert covered == {t for t in MsgType if MsgType.SKILL_ANNOUNCE <= t <= MsgType.SKILL_REVOKE}
    assert covered == set(BODY_KEYS)
    assert [int(t) for t in sorted(covered)] == [29, 30, 31, 32]


def test_wire_keys_in_order() -> None:
    for _, payload in PAYLOADS:
        obj = msgpack.unpackb(encode(make(payload)), raw=False, object_pairs_hook=list)
        assert [k for k, _ in obj[7]] == BODY_KEYS[PAYLOAD_TYPES[type(payload)]]
    obj = msgpack.unpackb(
        encode(make(SkillAnnounce((PACK,), True))), raw=False, object_pairs_hook=list
    )
    packs = obj[7][0][1]
    assert [k for k, _ in packs[0]] == PACK_KEYS
    # the manifest keeps the order it was given in
    assert [k for k, _ in packs[0][5][1]] == list(MANIFEST)


def test_wire_form() -> None:
    _, body = encode_payload(SkillAnnounce((PACK,), False, ("old",)))
    assert body == {
        "packs": [
            {
                "name": "port-scan",
                "version": "1.2.0",
                "pack_id": PID,
                "size": len(ARCHIVE),
                "signer": SIGNER,
                "manifest": MANIFEST,
            }
        ],
        "full": False,
        "removed": ["old"],
    }
    # a revocation travels as a fixed-length array: kind, target, by, at, sig
    assert encode_payload(SkillRevoke((REC_PACK,)))[1] == {
        "records": [["pack", PID, SIGNER, 2**63 - 1, SIG]]
    }
    # bytes are msgpack bin, the pack id a msgpack str of 64 chars
    data = encode(make(SkillFetch(PID, 0, 1)))
    assert b"\xd9\x40" + PID.encode() in data
    data = encode(make(SkillChunk(PID, 0, 3, b"abc")))
    assert b"\xa4data\xc4\x03abc" in data


def test_defaults() -> None:
    assert SkillAnnounce((), True).removed == ()
    assert SkillChunk(PID, 0, 0, b"").error == ""


def test_encoding_is_deterministic() -> None:
    env = make(SkillAnnounce((PACK, PACK_MIN), True))
    rebuilt = dataclasses.replace(PACK, manifest=dict(MANIFEST))
    assert encode(env) == encode(make(SkillAnnounce((rebuilt, PACK_MIN), True)))


def test_tuples_in_a_manifest_come_back_as_lists() -> None:
    p = dataclasses.replace(PACK_MIN, manifest={"t": (1, (2,))})
    got = decode(encode(make(SkillAnnounce((p,), True)))).payload
    assert isinstance(got, SkillAnnounce)
    assert got.packs[0].manifest == {"t": [1, [2]]}


def test_extremes_accepted() -> None:
    name = "s" * MAX_SKILL_CHARS
    big_pack = PackInfo(
        name, "v" * MAX_PACK_VERSION_CHARS, "f" * PACK_ID_CHARS, MAX_PACK_BYTES, SIGNER, {}
    )
    envs = [
        make(SkillAnnounce(tuple(PACK_MIN for _ in range(MAX_ANNOUNCED_PACKS)), True)),
        make(SkillAnnounce((big_pack,), False, tuple(name for _ in range(MAX_ANNOUNCED_PACKS)))),
        make(SkillFetch(PID, MAX_PACK_BYTES, MAX_FETCH_BYTES)),
        make(SkillFetch(PID, 0, 1)),
        make(SkillChunk(PID, MAX_PACK_BYTES, MAX_PACK_BYTES, b"\xff" * MAX_CHUNK_BYTES)),
        make(SkillChunk(PID, 0, 0, b"", "e" * MAX_CHUNK_ERROR_CHARS)),
        make(
            SkillRevoke(
                tuple(
                    Revocation(RevocationKind.PACK, f"{i:064x}", SIGNER, 2**63 - 1, SIG)
                    for i in range(MAX_REVOKED)
                )
            )
        ),
    ]
    for env in envs:
        data = encode(env)
        assert len(data) <= MAX_FRAME_BYTES, env.msg_type
        assert decode(data) == env


def test_a_full_chunk_fits_in_a_frame() -> None:
    # the largest data with the longest error and the largest ints, every field at its
    # widest: still within the 1 MiB frame every node accepts
    env = make(
        SkillChunk(PID, MAX_PACK_BYTES, MAX_PACK_BYTES, b"\x00" * MAX_CHUNK_BYTES, "😀" * 500),
        correlation_id=b"\xff" * 16,
        timestamp_ms=2**63 - 1,
        term=2**62 - 1,
    )
    data = encode(env, max_size=MAX_FRAME_BYTES)
    assert decode(data) == env


def manifest_of_size(size: int) -> dict[str, Any]:
    """A manifest whose msgpack encoding is exactly ``size`` bytes (``size`` >= 300)."""
    m = {"d": b"x" * (size - 6)}  # fixmap 1 + fixstr 2 + bin16 header 3
    assert len(pack(m)) == size
    return m


def test_manifest_size_limit() -> None:
    ok = dataclasses.replace(PACK_MIN, manifest=manifest_of_size(MAX_MANIFEST_BYTES))
    env = make(SkillAnnounce((ok,), True))
    assert decode(encode(env)) == env
    big = dataclasses.replace(PACK_MIN, manifest=manifest_of_size(MAX_MANIFEST_BYTES + 1))
    with pytest.raises(LocalProtocolError, match=r"body\.packs\[0\]\.manifest: 65537 bytes"):
        encode(make(SkillAnnounce((big,), True)))
    w = wire(env)
    w[7]["packs"] = [w[7]["packs"][0], {**w[7]["packs"][0], "manifest": big.manifest}]
    with pytest.raises(MalformedFrame, match=r"^body\.packs\[1\]\.manifest: 65537 bytes"):
        decode(pack(w))


def test_manifest_nesting_limit() -> None:
    # the manifest map counts as one level, like a task's params
    ok = dataclasses.replace(PACK_MIN, manifest={"a": nested(MAX_VALUE_DEPTH - 1)})
    env = make(SkillAnnounce((ok,), True))
    assert decode(encode(env)) == env
    deep = dataclasses.replace(PACK_MIN, manifest={"a": nested(MAX_VALUE_DEPTH)})
    with pytest.raises(LocalProtocolError, match="nested deeper than"):
        encode(make(SkillAnnounce((deep,), True)))
    w = wire(env)
    w[7]["packs"][0]["manifest"] = deep.manifest
    with pytest.raises(MalformedFrame, match=r"^body\.packs\[0\]\.manifest\.a(\[0\])*: nested"):
        decode(pack(w))


@pytest.mark.parametrize(
    ("manifest", "match"),
    [
        ({1: "x"}, r"manifest: key is int 1, expected str"),
        ({b"k": "x"}, r"manifest: key is bin of 1 bytes, expected str"),
        ({"a": {1: 2}}, r"manifest\.a: map key is int 1"),
        ({"a": 2**64}, r"manifest\.a: int out of the msgpack range"),
        ({"a": {1, 2}}, r"manifest\.a: set is not a msgpack value"),
        ({"a": "\ud800"}, r"manifest: not encodable as msgpack"),
        ([], r"manifest: expected map, got array"),
        (None, r"manifest: expected map, got nil"),
    ],
)
def test_bad_manifests_on_encode(manifest: Any, match: str) -> None:
    p = dataclasses.replace(PACK_MIN, manifest=manifest)
    with pytest.raises(LocalProtocolError, match=r"body\.packs\[0\]\." + match):
        encode(make(SkillAnnounce((p,), True)))


def test_unknown_keys_are_ignored() -> None:
    for _, payload in PAYLOADS:
        env = make(payload)
        w = wire(env)
        w[7] = {"zz": 1, **w[7], "future": [1]}
        w[7][b"pack_id"] = "bin keys are unknown keys too"
        assert decode(pack(w)) == env
    env = make(SkillAnnounce((PACK,), True))
    w = wire(env)
    w[7]["packs"][0]["later"] = {"x": b""}
    w[7]["packs"][0][b"name"] = 5
    assert decode(pack(w)) == env


def test_every_prefix_of_a_skill_frame_is_truncated() -> None:
    for payload in (SkillAnnounce((PACK,), False, ("old",)), SkillChunk(PID, 0, 9, b"x" * 9)):
        data = encode(make(payload))
        for end in range(len(data)):
            with pytest.raises(TruncatedFrame):
                decode(data[:end])


# ---- skill names ----------------------------------------------------------------------

GOOD_NAMES = ["a", "Z", "echo", "port-scan", "x.y_z-1", "A1", "a" * MAX_SKILL_CHARS]
BAD_NAMES: list[Any] = [
    "",
    "1abc",
    "-x",
    "_x",
    ".x",
    "a b",
    "a/b",
    "a:b",
    "é",
    "aé",
    "abc\n",
    " abc",
    "a" * (MAX_SKILL_CHARS + 1),
    None,
    5,
    b"abc",
]


def announce_of_names(*names: Any) -> dict[str, Any]:
    return {"packs": [], "full": False, "removed": list(names)}


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_good_skill_names(name: str) -> None:
    got = decode_payload(MsgType.SKILL_ANNOUNCE, announce_of_names(name))
    assert got == SkillAnnounce((), False, (name,))
    p = dataclasses.replace(PACK_MIN, name=name)
    assert decode(encode(make(SkillAnnounce((p,), True)))).payload == SkillAnnounce((p,), True)


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_bad_skill_names(name: Any) -> None:
    with pytest.raises(MalformedFrame, match=r"^body\.removed\[1\]: expected skill name"):
        decode_payload(MsgType.SKILL_ANNOUNCE, announce_of_names("ok", name))
    with pytest.raises(LocalProtocolError, match=r"body\.packs\[0\]\.name"):
        encode(make(SkillAnnounce((dataclasses.replace(PACK_MIN, name=name),), True)))
    with pytest.raises(LocalProtocolError, match=r"body\.removed\[0\]"):
        encode(make(SkillAnnounce((), False, (name,))))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=st.sampled_from("aZ09-_.é /\n"), max_size=70))
def test_skill_names_are_those_of_the_skill_spec(name: str) -> None:
    expected = SKILL_NAME.fullmatch(name) is not None and len(name) <= MAX_SKILL_CHARS
    try:
        decode_payload(MsgType.SKILL_ANNOUNCE, announce_of_names(name))
    except MalformedFrame:
        assert not expected, name
    else:
        assert expected, name


# ---- rejection rules ------------------------------------------------------------------

DELETE = object()
ANN, FET, CHU, REV = (
    SkillAnnounce((PACK, PACK_MIN), False, ("old",)),
    SkillFetch(PID, 256, 1024),
    SkillChunk(PID, 256, len(ARCHIVE), ARCHIVE[256:512]),
    SkillRevoke((REC_KEY, REC_PACK)),
)
P0 = ["packs", 0]
BP = "body.packs[0]"
BAD_PACK_IDS: list[Any] = [
    PID.upper(),
    PID[:-1],
    PID + "0",
    "g" + PID[1:],
    "",
    PID.encode(),
    bytes.fromhex(PID),
    None,
    1,
]
BAD_SIZES: list[Any] = [-1, MAX_PACK_BYTES + 1, True, 1.0, "1", None]

CASES: list[tuple[Payload, list[Any], Any, str]] = [
    # SKILL_ANNOUNCE
    (ANN, ["packs"], None, "body.packs"),
    (ANN, ["packs"], {}, "body.packs"),
    (ANN, ["packs"], [encode_payload(ANN)[1]["packs"][1]] * 1001, "body.packs"),
    (ANN, ["packs"], [None], "body.packs[0]"),
    (ANN, ["packs"], [[]], "body.packs[0]"),
    (ANN, ["packs", 1], "e", "body.packs[1]"),
    (ANN, [*P0, "name"], "", f"{BP}.name"),
    (ANN, [*P0, "name"], "1st", f"{BP}.name"),
    (ANN, [*P0, "name"], "n" * 65, f"{BP}.name"),
    (ANN, [*P0, "name"], b"echo", f"{BP}.name"),
    (ANN, [*P0, "version"], "", f"{BP}.version"),
    (ANN, [*P0, "version"], "v" * 65, f"{BP}.version"),
    (ANN, [*P0, "version"], 1, f"{BP}.version"),
    (ANN, [*P0, "version"], None, f"{BP}.version"),
    *[(ANN, [*P0, "pack_id"], v, f"{BP}.pack_id") for v in BAD_PACK_IDS],
    *[(ANN, [*P0, "size"], v, f"{BP}.size") for v in BAD_SIZES],
    (ANN, [*P0, "signer"], SIGNER[:31], f"{BP}.signer"),
    (ANN, [*P0, "signer"], SIGNER + b"\x00", f"{BP}.signer"),
    (ANN, [*P0, "signer"], b"", f"{BP}.signer"),
    (ANN, [*P0, "signer"], SIGNER.hex(), f"{BP}.signer"),
    (ANN, [*P0, "signer"], None, f"{BP}.signer"),
    (ANN, [*P0, "manifest"], None, f"{BP}.manifest"),
    (ANN, [*P0, "manifest"], [], f"{BP}.manifest"),
    (ANN, [*P0, "manifest"], "{}", f"{BP}.manifest"),
    (ANN, [*P0, "manifest"], {b"k": 1}, f"{BP}.manifest"),
    (ANN, [*P0, "manifest"], {"a": nested(MAX_VALUE_DEPTH)}, f"{BP}.manifest.a" + "[0]" * 31),
    (ANN, [*P0, "manifest"], manifest_of_size(MAX_MANIFEST_BYTES + 1), f"{BP}.manifest"),
    (ANN, ["packs", 1, "signer"], SIGNER[:31], "body.packs[1].signer"),
    *[(ANN, [*P0, k], DELETE, f"{BP}.{k}") for k in PACK_KEYS],
    (ANN, ["full"], 1, "body.full"),
    (ANN, ["full"], None, "body.full"),
    (ANN, ["full"], "true", "body.full"),
    (ANN, ["removed"], "old", "body.removed"),
    (ANN, ["removed"], None, "body.removed"),
    (ANN, ["removed"], ["ok"] * 1001, "body.removed"),
    (ANN, ["removed"], ["ok", "no way"], "body.removed[1]"),
    (ANN, ["removed"], [b"old"], "body.removed[0]"),
    *[(ANN, [k], DELETE, f"body.{k}") for k in BODY_KEYS[MsgType.SKILL_ANNOUNCE]],
    # SKILL_FETCH
    *[(FET, ["pack_id"], v, "body.pack_id") for v in BAD_PACK_IDS],
    *[(FET, ["offset"], v, "body.offset") for v in BAD_SIZES],
    (FET, ["length"], 0, "body.length"),
    (FET, ["length"], -1, "body.length"),
    (FET, ["length"], MAX_FETCH_BYTES + 1, "body.length"),
    (FET, ["length"], True, "body.length"),
    (FET, ["length"], 1024.0, "body.length"),
    (FET, ["length"], None, "body.length"),
    *[(FET, [k], DELETE, f"body.{k}") for k in BODY_KEYS[MsgType.SKILL_FETCH]],
    # SKILL_CHUNK
    *[(CHU, ["pack_id"], v, "body.pack_id") for v in BAD_PACK_IDS],
    *[(CHU, ["offset"], v, "body.offset") for v in BAD_SIZES],
    *[(CHU, ["total"], v, "body.total") for v in BAD_SIZES],
    (CHU, ["data"], b"\x00" * (MAX_CHUNK_BYTES + 1), "body.data"),
    (CHU, ["data"], "abc", "body.data"),
    (CHU, ["data"], None, "body.data"),
    (CHU, ["data"], [1, 2], "body.data"),
    (CHU, ["error"], "e" * (MAX_CHUNK_ERROR_CHARS + 1), "body.error"),
    (CHU, ["error"], None, "body.error"),
    (CHU, ["error"], b"oops", "body.error"),
    *[(CHU, [k], DELETE, f"body.{k}") for k in BODY_KEYS[MsgType.SKILL_CHUNK]],
    # SKILL_REVOKE
    (REV, ["records"], None, "body.records"),
    (REV, ["records"], {}, "body.records"),
    (REV, ["records"], [encode_payload(REV)[1]["records"][0]] * (MAX_REVOKED + 1), "body.records"),
    (REV, ["records"], [None], "body.records[0]"),
    (REV, ["records"], [{}], "body.records[0]"),
    (REV, ["records", 0], ["key", REVOKED_KEY.hex(), REVOKED_KEY, 1], "body.records[0]"),
    (REV, ["records", 1, 0], "signer", "body.records[1].kind"),
    (REV, ["records", 1, 0], None, "body.records[1].kind"),
    *[(REV, ["records", 1, 1], v, "body.records[1].target") for v in BAD_PACK_IDS],
    (REV, ["records", 0, 2], REVOKED_KEY[:31], "body.records[0].by"),
    (REV, ["records", 0, 2], REVOKED_KEY.hex(), "body.records[0].by"),
    (REV, ["records", 0, 3], -1, "body.records[0].at"),
    (REV, ["records", 0, 3], 1.5, "body.records[0].at"),
    (REV, ["records", 0, 4], SIG[:63], "body.records[0].sig"),
    (REV, ["records", 0, 4], SIG + b"\x00", "body.records[0].sig"),
    (REV, ["records", 0, 4], SIG.hex(), "body.records[0].sig"),
    *[(REV, [k], DELETE, f"body.{k}") for k in BODY_KEYS[MsgType.SKILL_REVOKE]],
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
    # frames above the default 1 MiB limit are let in: the field check is what is tested
    with pytest.raises(MalformedFrame) as info:
        decode(body_case(payload, path, value), max_size=4 * MAX_FRAME_BYTES)
    assert str(info.value).startswith(field + ":"), str(info.value)


def test_missing_is_named_as_missing() -> None:
    with pytest.raises(MalformedFrame, match=r"^body\.packs\[0\]\.signer: missing$"):
        decode(body_case(ANN, [*P0, "signer"], DELETE))
    with pytest.raises(MalformedFrame, match=r"^body\.length: missing$"):
        decode(body_case(FET, ["length"], DELETE))
    with pytest.raises(MalformedFrame, match=r"^body\.length: expected int in 1\.\.1048576"):
        decode(body_case(FET, ["length"], 0))


@pytest.mark.parametrize(
    "payload",
    [
        SkillAnnounce(("not a pack",), True),  # type: ignore[arg-type]
        SkillAnnounce((PACK,), 1),  # type: ignore[arg-type]
        SkillAnnounce(tuple(PACK_MIN for _ in range(MAX_ANNOUNCED_PACKS + 1)), True),
        SkillAnnounce((), False, ("ok",) * (MAX_ANNOUNCED_PACKS + 1)),
        SkillAnnounce((dataclasses.replace(PACK, version=""),), True),
        SkillAnnounce((dataclasses.replace(PACK, pack_id=PID.upper()),), True),
        SkillAnnounce((dataclasses.replace(PACK, size=MAX_PACK_BYTES + 1),), True),
        SkillAnnounce((dataclasses.replace(PACK, signer=SIGNER[:31]),), True),
        SkillAnnounce((dataclasses.replace(PACK, signer=bytearray(32)),), True),  # type: ignore[arg-type]
        SkillFetch(PID, 0, 0),
        SkillFetch(PID, -1, 1),
        SkillFetch(PID, 0, MAX_FETCH_BYTES + 1),
        SkillFetch("x", 0, 1),
        SkillChunk(PID, 0, MAX_PACK_BYTES + 1, b""),
        SkillChunk(PID, 0, 1, b"\x00" * (MAX_CHUNK_BYTES + 1)),
        SkillChunk(PID, 0, 1, "text"),  # type: ignore[arg-type]
        SkillChunk(PID, 0, 0, b"", "e" * (MAX_CHUNK_ERROR_CHARS + 1)),
        SkillChunk(PID, 0, 0, b"", None),  # type: ignore[arg-type]
        SkillRevoke((dataclasses.replace(REC_KEY, by=SIGNER[:31]),)),
        SkillRevoke((dataclasses.replace(REC_KEY, target="x"),)),
        SkillRevoke((dataclasses.replace(REC_KEY, sig=SIG[:63]),)),
        SkillRevoke((dataclasses.replace(REC_KEY, at_ms=-1),)),
        SkillRevoke(tuple(REC_PACK for _ in range(MAX_REVOKED + 1))),
        SkillRevoke(None),  # type: ignore[arg-type]
    ],
)
def test_encode_rejects_invalid_payloads(payload: Payload) -> None:
    with pytest.raises(LocalProtocolError):
        encode(make(payload))


def test_payload_type_mismatch() -> None:
    with pytest.raises(LocalProtocolError, match="does not match"):
        encode(make(SkillFetch(PID, 0, 1), msg_type=MsgType.SKILL_CHUNK))
