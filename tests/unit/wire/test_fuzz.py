"""Property tests of the codec: nothing but DecodeError escapes, valid envelopes round-trip."""

from __future__ import annotations

from typing import Any

import msgpack  # type: ignore[import-untyped, unused-ignore]
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshd.errors import DecodeError
from meshd.wire import (
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
    PackInfo,
    Payload,
    Ping,
    PingReq,
    Revocation,
    RevocationKind,
    SkillAnnounce,
    SkillChunk,
    SkillFetch,
    SkillRevoke,
    StepDown,
    Sync,
    SyncReq,
    TransferReq,
    Vote,
    VoteReq,
    decode,
    encode,
)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

U63 = st.integers(0, 2**63 - 1)
#: Terms, seqs, incarnations (MAX_COUNTER).
CTR = st.integers(0, 2**62 - 1)
U31 = st.integers(0, 2**31 - 1)
PORTS = st.integers(0, 65535)
NODE_IDS = st.text(alphabet="0123456789abcdef", min_size=32, max_size=32)
MSG_IDS = st.binary(min_size=16, max_size=16)
KEYS = st.binary(min_size=32, max_size=32)
DIGESTS = st.binary(max_size=64)
SHORT_TEXT = st.text(max_size=64)

INFOS = st.builds(
    MemberInfo,
    node_id=NODE_IDS,
    name=SHORT_TEXT,
    role=SHORT_TEXT,
    priority=U31,
    ed25519_pk=KEYS,
    curve_pk=KEYS,
    proof=KEYS,
    addresses=st.lists(st.text(max_size=64), max_size=16).map(tuple),
    router_port=PORTS,
    pub_port=PORTS,
    intro_port=PORTS,
    incarnation=CTR,
    protocol_version=U63,
    tier=U31,
    started_at=st.floats(min_value=0.0, allow_nan=False, allow_infinity=False),
)
PACK_IDS = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
PACK_BYTES = st.integers(0, 64 * 1024 * 1024)
SKILL_NAMES = st.from_regex(r"[A-Za-z][A-Za-z0-9_.-]{0,63}", fullmatch=True)
MANIFESTS = st.dictionaries(
    st.text(max_size=16),
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**64 - 1),
        st.text(max_size=32),
        st.lists(st.text(max_size=8), max_size=3),
    ),
    max_size=4,
)
PACKS = st.builds(
    PackInfo,
    name=SKILL_NAMES,
    version=st.text(min_size=1, max_size=64),
    pack_id=PACK_IDS,
    size=PACK_BYTES,
    signer=KEYS,
    manifest=MANIFESTS,
)
RECORDS = st.lists(
    st.builds(MemberRecord, info=INFOS, state=st.sampled_from(list(MemberState))), max_size=3
).map(tuple)

PAYLOADS: st.SearchStrategy[Payload] = st.one_of(
    st.builds(Hello, info=INFOS),
    st.builds(Heartbeat, incarnation=CTR, digest=DIGESTS, members=U63),
    st.builds(Ping, seq=U63),
    st.builds(Ack, seq=U63, target=st.one_of(st.just(""), NODE_IDS), ok=st.booleans()),
    st.builds(PingReq, seq=U63, target=NODE_IDS),
    st.builds(SyncReq, digest=DIGESTS),
    st.builds(Sync, members=RECORDS),
    st.builds(MemberUpdate, members=RECORDS),
    st.builds(Leave, incarnation=CTR),
    st.builds(Intro, info=INFOS),
    st.builds(IntroAck, info=INFOS, members=RECORDS),
    st.builds(Error, code=st.text(min_size=1, max_size=64), message=st.text(max_size=1024)),
    st.builds(VoteReq, term=CTR, pre=st.booleans(), priority=U31),
    st.builds(Vote, term=CTR, granted=st.booleans(), pre=st.booleans(), reason=SHORT_TEXT),
    st.builds(LeadHeartbeat, term=CTR, lead=NODE_IDS, seq=CTR),
    st.builds(LeadAck, term=CTR, seq=CTR, ok=st.booleans()),
    st.builds(StepDown, term=CTR, successor=st.one_of(st.just(""), NODE_IDS), reason=SHORT_TEXT),
    st.builds(TransferReq, target=st.one_of(st.just(""), NODE_IDS)),
    st.builds(
        SkillAnnounce,
        packs=st.lists(PACKS, max_size=2).map(tuple),
        full=st.booleans(),
        removed=st.lists(SKILL_NAMES, max_size=2).map(tuple),
    ),
    st.builds(SkillFetch, pack_id=PACK_IDS, offset=PACK_BYTES, length=st.integers(1, 1024 * 1024)),
    st.builds(
        SkillChunk,
        pack_id=PACK_IDS,
        offset=PACK_BYTES,
        total=PACK_BYTES,
        data=st.binary(max_size=64),
        error=st.text(max_size=500),
    ),
    st.builds(
        SkillRevoke,
        records=st.lists(
            st.builds(
                Revocation,
                kind=st.sampled_from(RevocationKind),
                target=PACK_IDS,
                by=KEYS,
                at_ms=st.integers(0, 2**63 - 1),
                sig=st.binary(min_size=64, max_size=64),
            ),
            max_size=3,
        ).map(tuple),
    ),
)

_TYPES: dict[type[Any], MsgType] = {
    Hello: MsgType.HELLO,
    Heartbeat: MsgType.HEARTBEAT,
    Ping: MsgType.PING,
    Ack: MsgType.ACK,
    PingReq: MsgType.PING_REQ,
    SyncReq: MsgType.SYNC_REQ,
    Sync: MsgType.SYNC,
    MemberUpdate: MsgType.MEMBER_UPDATE,
    Leave: MsgType.LEAVE,
    Intro: MsgType.INTRO,
    IntroAck: MsgType.INTRO_ACK,
    Error: MsgType.ERROR,
    VoteReq: MsgType.VOTE_REQ,
    Vote: MsgType.VOTE,
    LeadHeartbeat: MsgType.LEAD_HEARTBEAT,
    LeadAck: MsgType.LEAD_ACK,
    StepDown: MsgType.STEP_DOWN,
    TransferReq: MsgType.TRANSFER_REQ,
    SkillAnnounce: MsgType.SKILL_ANNOUNCE,
    SkillFetch: MsgType.SKILL_FETCH,
    SkillChunk: MsgType.SKILL_CHUNK,
    SkillRevoke: MsgType.SKILL_REVOKE,
}


@st.composite
def envelopes(draw: st.DrawFn) -> Envelope:
    payload = draw(PAYLOADS)
    return Envelope(
        msg_type=_TYPES[type(payload)],
        msg_id=draw(MSG_IDS),
        sender=draw(NODE_IDS),
        timestamp_ms=draw(U63),
        payload=payload,
        correlation_id=draw(st.one_of(st.none(), MSG_IDS)),
        term=draw(CTR),
    )


def decode_or_error(data: bytes) -> Envelope | None:
    """Decode; a DecodeError is fine, anything else fails the test (by propagating)."""
    try:
        return decode(data)
    except DecodeError as exc:
        assert "unexpected decoder failure" not in str(exc), str(exc)
        return None


def check_reencodes(env: Envelope) -> None:
    again = encode(env)
    assert decode(again) == env
    assert encode(decode(again)) == again


@FUZZ
@given(envelopes())
def test_valid_envelopes_round_trip(env: Envelope) -> None:
    data = encode(env)
    assert decode(data) == env
    assert encode(decode(data)) == data


@FUZZ
@given(st.binary(max_size=512))
def test_random_bytes_only_raise_decode_error(data: bytes) -> None:
    env = decode_or_error(data)
    if env is not None:
        check_reencodes(env)


@FUZZ
@given(st.binary(max_size=64))
def test_random_bytes_behind_an_array_header(tail: bytes) -> None:
    for head in (b"\x98\x01", b"\x98\x01\x02", b"\x98\x02", b"\x98"):
        env = decode_or_error(head + tail)
        if env is not None:
            check_reencodes(env)


_MSGPACK_VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**64 - 1),
        st.floats(),
        st.text(max_size=40),
        st.binary(max_size=40),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=20,
)


@FUZZ
@given(st.lists(_MSGPACK_VALUES, min_size=0, max_size=10), st.integers(0, len(MsgType) + 1))
def test_random_msgpack_structures(items: list[Any], code: int) -> None:
    for obj in (items, [1, code, *items]):
        data = msgpack.packb(obj, use_bin_type=True)
        env = decode_or_error(data)
        if env is not None:
            check_reencodes(env)


MUTATIONS = st.sampled_from(["flip", "truncate", "insert", "delete", "replace", "overwrite"])


@FUZZ
@given(
    envelopes(),
    st.lists(
        st.tuples(MUTATIONS, st.integers(0, 2**16), st.binary(min_size=1, max_size=8)),
        min_size=1,
        max_size=4,
    ),
)
def test_mutated_frames(env: Envelope, mutations: list[tuple[str, int, bytes]]) -> None:
    data = bytearray(encode(env))
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
        elif kind == "replace":
            data[pos] = blob[0]
        else:
            data[pos : pos + len(blob)] = blob
    got = decode_or_error(bytes(data))
    if got is not None:
        check_reencodes(got)


@FUZZ
@given(envelopes(), st.integers(0, 2**16))
def test_truncated_valid_frames(env: Envelope, cut: int) -> None:
    data = encode(env)
    prefix = data[: cut % len(data)]
    got = decode_or_error(prefix)
    assert got is None
