from __future__ import annotations

import asyncio
import time
from pathlib import Path

import msgpack
import pytest

from meshd.clock import FakeClock
from meshd.skills.api import Skill, SkillCancelled, SkillContext
from meshd.skills.builtin import (
    Echo,
    Registry,
    Sleep,
    Sysinfo,
    decode_elapsed,
    default_registry,
    encode_elapsed,
    parse_meminfo,
    parse_uptime,
)
from meshd.skills.spec import SkillError, validate_params


class Recorder:
    def __init__(self) -> None:
        self.progress: list[tuple[float, str]] = []
        self.checkpoints: list[bytes] = []

    def ctx(
        self, skill: Skill, params: dict[str, object], checkpoint: bytes | None = None
    ) -> SkillContext:
        return SkillContext(
            validate_params(skill.spec, params),
            checkpoint_data=checkpoint,
            on_progress=lambda pct, msg: self.progress.append((pct, msg)),
            on_checkpoint=self.checkpoints.append,
            clock=FakeClock(),
        )


def test_registry() -> None:
    reg = default_registry()
    assert reg.names() == ("echo", "sleep", "sysinfo")
    assert [s.name for s in reg.specs()] == ["echo", "sleep", "sysinfo"]
    assert "echo" in reg and "nope" not in reg
    assert len(reg) == 3
    assert [s.spec.name for s in reg] == ["echo", "sleep", "sysinfo"]
    assert isinstance(reg.get("sleep"), Sleep)
    assert all(isinstance(s, Skill) for s in reg)
    assert all(s.spec.idempotent for s in reg)


def test_registry_unknown_and_duplicate() -> None:
    reg = default_registry()
    with pytest.raises(SkillError) as info:
        reg.get("x")
    assert str(info.value) == "unknown skill 'x'; known: echo, sleep, sysinfo"
    assert info.value.code == "unknown_skill"
    with pytest.raises(SkillError, match="unknown skill 'x'; known: none"):
        Registry().get("x")
    with pytest.raises(SkillError, match="already registered"):
        reg.register(Echo())


async def test_echo() -> None:
    rec = Recorder()
    assert await Echo().run(rec.ctx(Echo(), {"message": "hi"})) == {"message": "hi"}
    with pytest.raises(SkillError, match="missing required parameter 'message'"):
        rec.ctx(Echo(), {})


async def test_sleep_reports_progress_and_checkpoints() -> None:
    rec = Recorder()
    sleep = Sleep()
    t0 = time.monotonic()
    result = await sleep.run(rec.ctx(sleep, {"seconds": "0.05", "step": "0.01"}))
    assert time.monotonic() - t0 >= 0.045
    assert result == {"slept": 0.05, "resumed_from": 0.0}
    assert len(rec.progress) == 5
    pcts = [p for p, _ in rec.progress]
    assert pcts == sorted(pcts)
    assert pcts[-1] == pytest.approx(100.0)
    assert rec.progress[-1][1] == "0.05/0.05 s"
    assert [decode_elapsed(c) for c in rec.checkpoints] == pytest.approx(
        [0.01, 0.02, 0.03, 0.04, 0.05]
    )


async def test_sleep_resumes_with_the_remaining_time() -> None:
    rec = Recorder()
    sleep = Sleep()
    t0 = time.monotonic()
    ctx = rec.ctx(sleep, {"seconds": 5, "step": 0.01}, checkpoint=encode_elapsed(4.96))
    result = await sleep.run(ctx)
    took = time.monotonic() - t0
    assert 0.035 <= took < 1.0  # ~0.04 s left, not 5 s
    assert result == {"slept": 5.0, "resumed_from": 4.96}
    assert rec.progress[0][0] > 99.0
    assert decode_elapsed(rec.checkpoints[-1]) == pytest.approx(5.0)
    assert ctx.checkpoint_data == rec.checkpoints[-1]


async def test_sleep_checkpoint_past_the_end_finishes_at_once() -> None:
    rec = Recorder()
    result = await Sleep().run(rec.ctx(Sleep(), {"seconds": 1}, checkpoint=encode_elapsed(9)))
    assert result == {"slept": 1.0, "resumed_from": 1.0}


@pytest.mark.parametrize("data", [None, b"", b"junk", b"\xff\xfe", b"-1", b"nan", b"inf"])
def test_sleep_bad_checkpoint_starts_over(data: bytes | None) -> None:
    assert decode_elapsed(data) == 0.0


async def test_sleep_zero() -> None:
    rec = Recorder()
    assert await Sleep().run(rec.ctx(Sleep(), {"seconds": 0})) == {
        "slept": 0.0,
        "resumed_from": 0.0,
    }
    assert rec.progress == [(100.0, "0/0 s")]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"seconds": -1}, "must be >= 0"),
        ({"seconds": 3601}, "must be <= 3600"),
        ({"seconds": 1, "step": 0}, "must be >= 0.001"),
        ({}, "missing required parameter 'seconds'"),
    ],
)
def test_sleep_params(params: dict[str, object], message: str) -> None:
    with pytest.raises(SkillError, match=message):
        validate_params(Sleep.spec, params)


async def test_sleep_cancellation_is_prompt() -> None:
    rec = Recorder()
    ctx = rec.ctx(Sleep(), {"seconds": 60, "step": 30})
    task = asyncio.create_task(Sleep().run(ctx))
    await asyncio.sleep(0.01)
    t0 = time.monotonic()
    ctx.cancel()
    with pytest.raises(SkillCancelled, match="cancelled after 0 of 60 s"):
        await task
    assert time.monotonic() - t0 < 0.5
    assert ctx.cancelled


async def test_context_basics() -> None:
    got: list[tuple[float, str]] = []
    clock = FakeClock(start=5.0)
    ctx = SkillContext({"a": 1}, on_progress=lambda p, m: got.append((p, m)), clock=clock)
    ctx.progress(150, "over")
    ctx.progress(-3)
    ctx.progress(float("nan"), "nan")
    assert got == [(100.0, "over"), (0.0, ""), (0.0, "nan")]
    assert ctx.now() == 5.0
    with pytest.raises(TypeError):
        ctx.params["b"] = 2  # type: ignore[index]
    with pytest.raises(TypeError, match="must be bytes"):
        ctx.checkpoint("text")  # type: ignore[arg-type]
    ctx.checkpoint(bytearray(b"ab"))
    assert ctx.checkpoint_data == b"ab"
    ctx.raise_if_cancelled()
    ctx.cancel()
    with pytest.raises(SkillCancelled):
        ctx.raise_if_cancelled()
    assert await ctx.sleep(10) is False
    await asyncio.wait_for(ctx.wait_cancelled(), 1)


async def test_context_sleep_runs_out() -> None:
    ctx = SkillContext({})
    assert await ctx.sleep(0.001) is True
    assert await ctx.sleep(-1) is True


MEMINFO = """MemTotal:       16318480 kB
MemFree:         1234567 kB
MemAvailable:    8000000 kB
Buffers:          100 kB
"""


def test_parse_proc() -> None:
    assert parse_meminfo(MEMINFO) == {
        "memory_total": 16318480 * 1024,
        "memory_available": 8000000 * 1024,
    }
    assert parse_meminfo("MemTotal: junk\nMemAvailable:\n") == {}
    assert parse_meminfo("MemTotal: 42\n") == {"memory_total": 42}
    assert parse_uptime("12345.67 9876.54\n") == 12345.67
    assert parse_uptime("") is None
    assert parse_uptime("x y") is None


async def test_sysinfo_with_a_fake_proc(tmp_path: Path) -> None:
    (tmp_path / "meminfo").write_text(MEMINFO)
    (tmp_path / "uptime").write_text("100.5 50.0\n")
    skill = Sysinfo(proc=tmp_path)
    info = await skill.run(Recorder().ctx(skill, {}))
    assert isinstance(info, dict)
    assert info["memory_total"] == 16318480 * 1024
    assert info["memory_available"] == 8000000 * 1024
    assert info["uptime_s"] == 100.5
    assert isinstance(info["hostname"], str) and info["hostname"]
    assert isinstance(info["cpu_count"], int)
    assert info["python"].count(".") == 2
    msgpack.packb(info, use_bin_type=True)


async def test_sysinfo_without_proc(tmp_path: Path) -> None:
    skill = Sysinfo(proc=tmp_path / "missing")
    info = await skill.run(Recorder().ctx(skill, {}))
    assert isinstance(info, dict)
    assert info["memory_total"] is None
    assert info["memory_available"] is None
    assert info["uptime_s"] is None
    assert set(info) == {
        "hostname",
        "platform",
        "system",
        "machine",
        "python",
        "cpu_count",
        "load_avg",
        "memory_total",
        "memory_available",
        "uptime_s",
    }


async def test_sysinfo_real_host() -> None:
    skill = Sysinfo()
    info = await skill.run(Recorder().ctx(skill, {}))
    assert isinstance(info, dict)
    if Path("/proc/meminfo").exists():
        assert isinstance(info["memory_total"], int) and info["memory_total"] > 0
    if info["load_avg"] is not None:
        assert len(info["load_avg"]) == 3
    msgpack.packb(info, use_bin_type=True)
