"""Checking a pack as its chunks arrive (meshd.skills.fetch)."""

from __future__ import annotations

import hashlib

import pytest

from meshd.skills.fetch import CHUNK_BYTES, Download, FetchRefused
from meshd.wire.messages import SkillChunk
from meshd.wire.records import PackInfo

DATA = bytes(range(256)) * 4096  # 1 MiB: four chunks
PID = hashlib.sha256(DATA).hexdigest()


def info(size: int = len(DATA), pack_id: str = PID) -> PackInfo:
    return PackInfo("p", "1", pack_id, size, b"\x01" * 32, {})


def serve(d: Download, data: bytes = DATA, total: int | None = None) -> SkillChunk:
    req = d.request()
    return SkillChunk(
        req.pack_id, req.offset, len(data) if total is None else total,
        data[req.offset : req.offset + req.length],
    )  # fmt: skip


def test_a_good_pack_arrives_in_chunks() -> None:
    d = Download(info(), 32 << 20)
    out = bytearray()
    while not d.done:
        assert d.request().length <= CHUNK_BYTES
        out += d.accept(serve(d))
    d.finish()
    assert bytes(out) == DATA


def test_announced_size_over_the_limit_is_refused_before_any_request() -> None:
    with pytest.raises(FetchRefused) as e:
        Download(info(size=33 << 20), 32 << 20)
    assert e.value.code == "too_large"
    with pytest.raises(FetchRefused):
        Download(info(size=0), 32 << 20)


def test_a_holder_that_gives_another_total_is_refused() -> None:
    d = Download(info(), 32 << 20)
    with pytest.raises(FetchRefused) as e:
        d.accept(serve(d, total=len(DATA) + 1))
    assert e.value.code == "too_large"
    with pytest.raises(FetchRefused) as e:
        d.accept(serve(d, total=len(DATA) - 1))
    assert e.value.code == "fetch_failed"


def test_a_chunk_past_the_announced_size_is_refused() -> None:
    d = Download(info(size=100, pack_id=hashlib.sha256(DATA[:100]).hexdigest()), 32 << 20)
    req = d.request()
    assert req.length == 100
    with pytest.raises(FetchRefused) as e:
        d.accept(SkillChunk(req.pack_id, 0, 100, DATA[:101]))
    assert e.value.code == "too_large"
    assert d.received == 0


def test_a_chunk_that_does_not_answer_the_request_is_refused() -> None:
    d = Download(info(), 32 << 20)
    d.accept(serve(d))
    req = d.request()
    for bad in (
        SkillChunk(req.pack_id, 0, len(DATA), DATA[:10]),  # wrong offset
        SkillChunk("0" * 64, req.offset, len(DATA), DATA[:10]),  # another pack
        SkillChunk(req.pack_id, req.offset, len(DATA), b""),  # empty before the end
        SkillChunk(req.pack_id, req.offset, 0, b"", "no such pack here"),
    ):
        with pytest.raises(FetchRefused) as e:
            d.accept(bad)
        assert e.value.code == "fetch_failed"


def test_garbage_of_the_announced_size_is_a_hash_mismatch() -> None:
    d = Download(info(), 32 << 20)
    garbage = b"\xee" * len(DATA)
    while not d.done:
        d.accept(serve(d, garbage))
    with pytest.raises(FetchRefused) as e:
        d.finish()
    assert e.value.code == "hash_mismatch"


def test_finish_before_the_end_is_refused() -> None:
    d = Download(info(), 32 << 20)
    d.accept(serve(d))
    with pytest.raises(FetchRefused) as e:
        d.finish()
    assert e.value.code == "fetch_failed"
