"""The sandboxed runner: real child processes running the skills in sandbox_skills/.

Run as root, every test drops the child to a uid of its own (no passwd entry), so that
RLIMIT_NPROC counts only that test's processes and the leftover check below is exact.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from meshd import skill as child
from meshd.skills.api import SkillCancelled, SkillContext, SkillHandoff
from meshd.skills.builtin import Registry
from meshd.skills.executor import Executor
from meshd.skills.policy import Limits, Permissions
from meshd.skills.sandbox import SandboxedSkill
from meshd.skills.spec import SkillError, SkillSpec

SKILLS = Path(__file__).parent / "sandbox_skills"
ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="the uid drop needs the tests to run as root")


def _state(pid: int) -> str | None:
    """The process state letter, None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def _alive(pid: int) -> bool:
    # A zombie is dead: this VM's pid 1 does not reap orphans.
    return _state(pid) not in (None, "Z", "X")


def _live_processes_of(uid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if int(fields["Uid"].split()[0]) == uid and _alive(int(entry)):
            pids.append(int(entry))
    return pids


def _child_pid(skill: SandboxedSkill) -> int:
    assert skill.last_output is not None and skill.last_output.pid is not None
    return skill.last_output.pid


async def _wait_gone(*pids: int, within: float = 2.0) -> bool:
    deadline = time.monotonic() + within
    while any(_alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


@pytest.fixture
def run_as() -> Iterator[tuple[int, int] | None]:
    """A fresh uid for the test's child (root), else None; afterwards, none of its
    processes may be left."""
    if not ROOT:
        yield None
        return
    import pwd

    while True:
        uid = random.randrange(61000, 64000)
        try:
            pwd.getpwuid(uid)
        except KeyError:
            if not _live_processes_of(uid):
                break
    yield (uid, uid)
    deadline = time.monotonic() + 2.0
    while (left := _live_processes_of(uid)) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not left, f"processes of uid {uid} left behind: {left}"


Make = Callable[..., SandboxedSkill]


@pytest.fixture
def make(run_as: tuple[int, int] | None) -> Iterator[Make]:
    made: list[SandboxedSkill] = []

    def factory(
        name: str,
        limits: Limits | None = None,
        permissions: Permissions | None = None,
        entry: str = "main.py",
    ) -> SandboxedSkill:
        skill = SandboxedSkill(
            SkillSpec(name.replace("_", "-")),
            SKILLS / name,
            entry,
            limits or Limits(cpu_seconds=10, wall_seconds=20),
            permissions or Permissions(),
            run_as=run_as,
        )
        made.append(skill)
        return skill

    yield factory
    for skill in made:  # every child is gone (a zombie at worst) after its run
        if skill.last_output is not None and skill.last_output.pid is not None:
            assert not _alive(skill.last_output.pid)


async def test_result_and_params_round_trip(make: Make) -> None:
    skill = make("echo")
    params = {"n": 3, "text": "héllo", "items": ["a", "b"], "flag": True, "blob": b"\x00\xff"}
    result = await skill.run(SkillContext(params, task_id="task-1"))
    assert result == {"params": params, "task_id": "task-1", "checkpoint": None}
    assert skill.last_output is not None and skill.last_output.returncode == 0
    assert set(skill.last_isolation) == {"network", "filesystem", "nproc"}


async def test_checkpoint_data_passed_in(make: Make) -> None:
    result = await make("echo").run(SkillContext({}, checkpoint_data=b"resume-here"))
    assert isinstance(result, dict) and result["checkpoint"] == b"resume-here"


async def test_progress_and_checkpoints_relayed_in_order(make: Make) -> None:
    events: list[tuple[str, object]] = []
    ctx = SkillContext(
        {},
        on_progress=lambda pct, msg: events.append(("progress", (pct, msg))),
        on_checkpoint=lambda data: events.append(("checkpoint", data)),
    )
    assert await make("steps").run(ctx) == "done"
    assert events == [
        ("progress", (0.0, "step 0")),
        ("checkpoint", b"\x00"),
        ("progress", (50.0, "step 1")),
        ("checkpoint", b"\x01"),
        ("progress", (100.0, "step 2")),
        ("checkpoint", b"\x02"),
    ]
    assert ctx.checkpoint_data == b"\x02"


async def test_skill_failure_keeps_code_and_message(make: Make) -> None:
    with pytest.raises(SkillError) as caught:
        await make("fail").run(SkillContext({}))
    assert caught.value.code == "disk_full"
    assert str(caught.value) == "no space left on the scratch disk"


async def test_exception_is_error_with_type_and_text(make: Make) -> None:
    skill = make("boom")
    with pytest.raises(SkillError) as caught:
        await skill.run(SkillContext({}))
    assert caught.value.code == "error"
    assert str(caught.value) == "ValueError: bad thing"
    assert skill.last_output is not None
    assert b"Traceback" in skill.last_output.stderr  # the traceback stays in the capture


async def test_handoff_maps_to_skill_handoff(make: Make) -> None:
    saved: list[bytes] = []
    ctx = SkillContext({"to": "node-b"}, on_checkpoint=saved.append)
    with pytest.raises(SkillHandoff) as caught:
        await make("handoff").run(ctx)
    assert caught.value.to == "node-b"
    assert saved == [b"half-way"]


async def test_unencodable_result_is_bad_result(make: Make) -> None:
    with pytest.raises(SkillError) as caught:
        await make("bad_result").run(SkillContext({}))
    assert caught.value.code == "bad_result"


async def test_missing_entry_is_bad_pack(make: Make) -> None:
    with pytest.raises(SkillError) as caught:
        await make("echo", entry="nope.py").run(SkillContext({}))
    assert caught.value.code == "bad_pack"
    assert "nope.py" in str(caught.value)


async def test_crash_reports_signal_and_stderr(make: Make) -> None:
    with pytest.raises(SkillError) as caught:
        await make("segv").run(SkillContext({}))
    assert caught.value.code == "crashed"
    assert "SIGSEGV" in str(caught.value)
    assert "about to crash" in str(caught.value)


async def test_cpu_hog_stopped_by_cpu_limit(make: Make) -> None:
    skill = make("cpu_hog", Limits(cpu_seconds=1, wall_seconds=10))
    started = time.monotonic()
    with pytest.raises(SkillError) as caught:
        await skill.run(SkillContext({}))
    assert caught.value.code == "cpu_limit"
    assert time.monotonic() - started < 5


async def test_memory_hog_stopped_by_memory_limit(make: Make) -> None:
    with pytest.raises(SkillError) as caught:
        await make("mem_hog", Limits(memory_mb=128)).run(SkillContext({}))
    assert caught.value.code == "memory_limit"
    assert "128 MiB" in str(caught.value)


@needs_root
async def test_fork_bomb_capped_by_process_limit(
    make: Make, run_as: tuple[int, int] | None
) -> None:
    assert run_as is not None
    skill = make("fork_bomb", Limits(processes=8, wall_seconds=10))
    forks = await skill.run(SkillContext({}))
    assert skill.last_isolation["nproc"]
    assert isinstance(forks, int) and 0 < forks < 8
    # the group was killed when the child returned: nothing of that uid is left
    deadline = time.monotonic() + 2
    while _live_processes_of(run_as[0]) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert _live_processes_of(run_as[0]) == []


async def test_wall_timeout_kills_the_whole_group(make: Make) -> None:
    reported: list[str] = []
    ctx = SkillContext({}, on_progress=lambda pct, msg: reported.append(msg))
    skill = make("grandchild", Limits(wall_seconds=1))
    started = time.monotonic()
    with pytest.raises(SkillError) as caught:
        await skill.run(ctx)
    assert caught.value.code == "timeout"
    assert time.monotonic() - started < 3
    grandchild = int(reported[0])
    assert await _wait_gone(grandchild, _child_pid(skill))


async def test_cancel_mid_run_kills_the_group_promptly(make: Make) -> None:
    reported: asyncio.Queue[str] = asyncio.Queue()
    ctx = SkillContext({}, on_progress=lambda pct, msg: reported.put_nowait(msg))
    skill = make("grandchild")
    task = asyncio.ensure_future(skill.run(ctx))
    grandchild = int(await asyncio.wait_for(reported.get(), 10))
    assert _alive(grandchild)
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 1.0
    assert await _wait_gone(grandchild, _child_pid(skill), within=0.5)


async def test_ctx_cancel_raises_skill_cancelled(make: Make) -> None:
    reported: asyncio.Queue[str] = asyncio.Queue()
    ctx = SkillContext({}, on_progress=lambda pct, msg: reported.put_nowait(msg))
    skill = make("grandchild")
    task = asyncio.ensure_future(skill.run(ctx))
    grandchild = int(await asyncio.wait_for(reported.get(), 10))
    ctx.cancel()
    with pytest.raises(SkillCancelled):
        await asyncio.wait_for(task, 2)
    assert await _wait_gone(grandchild, within=0.5)


async def test_executor_cancel_reports_cancelled(make: Make) -> None:
    skill = make("grandchild")
    executor = Executor(Registry([skill]))
    reported: asyncio.Queue[str] = asyncio.Queue()
    run = asyncio.ensure_future(
        executor.run("t-1", "grandchild", {}, on_progress=lambda p, m: reported.put_nowait(m))
    )
    grandchild = int(await asyncio.wait_for(reported.get(), 10))
    assert executor.cancel("t-1")
    result = await asyncio.wait_for(run, 3)
    assert (result.ok, result.code) == (False, "cancelled")
    assert await _wait_gone(grandchild, within=0.5)


async def test_scratch_private_env_scrubbed_and_removed(
    make: Make, run_as: tuple[int, int] | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MESHD_SECRET", "do-not-leak")
    monkeypatch.setenv("https_proxy", "http://proxy.example:3128")
    seen = await make("introspect").run(SkillContext({}))
    assert isinstance(seen, dict)
    scratch = seen["scratch"]
    assert seen["env"] == {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": scratch,
        "TMPDIR": scratch,
        "LANG": "C.UTF-8",
    }
    assert os.path.realpath(seen["cwd"]) == os.path.realpath(scratch)
    assert seen["mode"] == 0o700
    assert seen["umask"] == 0o077
    assert seen["note"] == '{"ok": true}'
    if run_as is not None:
        assert (seen["uid"], seen["gid"], seen["owner"]) == (run_as[0], run_as[1], run_as[0])
        assert seen["groups"] == []
    assert not os.path.exists(scratch)


@needs_root
async def test_root_drops_to_nobody_by_default_unless_privileged() -> None:
    import pwd

    nobody = pwd.getpwnam("nobody")
    spec = SkillSpec("introspect")
    plain = SandboxedSkill(spec, SKILLS / "introspect", "main.py", Limits(), Permissions())
    assert plain.run_as == (nobody.pw_uid, nobody.pw_gid)
    seen = await plain.run(SkillContext({}))
    assert isinstance(seen, dict) and seen["uid"] == nobody.pw_uid
    privileged = SandboxedSkill(
        spec, SKILLS / "introspect", "main.py", Limits(), Permissions(privileged=True)
    )
    seen = await privileged.run(SkillContext({}))
    assert isinstance(seen, dict) and seen["uid"] == 0
    assert not privileged.last_isolation["nproc"]


@pytest.fixture
def listener() -> Iterator[int]:
    server = socket.create_server(("127.0.0.1", 0))
    try:
        yield server.getsockname()[1]
    finally:
        server.close()


async def test_no_network_unless_declared(make: Make, listener: int) -> None:
    skill = make("connect")
    result = await skill.run(SkillContext({"host": "127.0.0.1", "port": listener}))
    if not skill.last_isolation["network"]:
        pytest.skip("this host cannot give the child a network namespace")
    assert isinstance(result, str) and result != "connected"
    assert "refused" in result or "unreachable" in result.lower()


async def test_network_when_declared(make: Make, listener: int) -> None:
    skill = make("connect", permissions=Permissions(network=True))
    assert await skill.run(SkillContext({"host": "127.0.0.1", "port": listener})) == "connected"
    assert not skill.last_isolation["network"]


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A world-writable directory every uid can reach (not under pytest's 0700 tmp)."""
    path = Path(tempfile.mkdtemp(prefix="meshd-sandbox-test-", dir="/tmp"))
    path.chmod(0o777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def test_writes_outside_scratch_fail(make: Make, open_dir: Path) -> None:
    target = str(open_dir / "out.txt")
    skill = make("write_file")
    result = await skill.run(SkillContext({"path": target}))
    if not skill.last_isolation["filesystem"]:
        pytest.skip("Landlock is not available: writes outside scratch are not confined")
    assert isinstance(result, str) and result.startswith("PermissionError")
    assert not os.path.exists(target)
    allowed = make("write_file", permissions=Permissions(write=(str(open_dir),)))
    assert await allowed.run(SkillContext({"path": target})) == "written"
    assert Path(target).read_text() == "written from the sandbox"


async def test_output_bounded_and_dropped_counted(make: Make) -> None:
    skill = make("chatty", Limits(output_kb=4))
    assert await skill.run(SkillContext({"size": 100_000})) == 100_000
    out = skill.last_output
    assert out is not None
    assert out.stdout == b"o" * 4096 and out.stdout_dropped == 100_000 - 4096
    assert out.stderr == b"e" * 4096 and out.stderr_dropped == 100_000 - 4096


def test_entry_must_stay_in_the_pack() -> None:
    for entry in ("../main.py", "/etc/main.py", "main.sh", "a/../../main.py"):
        with pytest.raises(ValueError):
            SandboxedSkill(SkillSpec("x"), SKILLS, entry, Limits(), Permissions())


async def test_reads_limited_to_declared_paths(make: Make, open_dir: Path) -> None:
    (open_dir / "seen.txt").write_text("x")
    skill = make("read_file")
    result = await skill.run(SkillContext({"path": str(open_dir)}))
    if not skill.last_isolation["filesystem"]:
        pytest.skip("Landlock is not available: reads are not confined")
    assert isinstance(result, str) and result.startswith("PermissionError")
    allowed = make("read_file", permissions=Permissions(read=(str(open_dir),)))
    assert await allowed.run(SkillContext({"path": str(open_dir)})) == ["seen.txt"]


def test_child_context_without_a_channel(tmp_path: Path) -> None:
    """What a skill author's own tests use: progress and checkpoints stay on the object."""
    ctx = child.Context({"n": 1}, scratch=tmp_path, task_id="t")
    ctx.progress(150, "over")
    assert ctx.last_progress == (100.0, "over")
    ctx.checkpoint(bytearray(b"ab"))
    assert ctx.checkpoint_data == b"ab"
    assert ctx.scratch == tmp_path and not ctx.cancelled
    with pytest.raises(TypeError):
        ctx.checkpoint("text")  # type: ignore[arg-type]
    with pytest.raises(child.Handoff) as caught:
        ctx.handoff("node-b")
    assert caught.value.to == "node-b"


def test_child_context_sees_cancel_over_the_channel() -> None:
    parent, child_end = socket.socketpair()
    with parent, child_end:
        ctx = child.Context({}, _channel=child._Channel(child_end.fileno()))
        ctx.progress(10, "working")
        header = parent.recv(4)
        body = parent.recv(child.frame_length(header))
        assert child.decode_body(body) == {"t": "progress", "pct": 10.0, "message": "working"}
        assert not ctx.cancelled
        parent.sendall(child.encode_frame({"t": "cancel"}))
        assert ctx.cancelled
