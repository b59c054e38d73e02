"""The sandboxed runner of packed skills: the parent side.

A :class:`SandboxedSkill` is a :class:`~meshd.skills.api.Skill` whose ``run`` starts a
fresh Python child process for every run, talks to it over a private socket and maps how
it ended onto the executor's conventions. The child side, and the contract a skill's
author codes against, is :mod:`meshd.skill`.

The child (``python -I -S``, its own session and process group, stdin from /dev/null):

- environment: ``PATH=/usr/local/bin:/usr/bin:/bin``, ``HOME`` and ``TMPDIR`` = the
  scratch directory, ``LANG=C.UTF-8``; nothing else (no ``MESHD_*``, no proxies);
- cwd: a fresh scratch directory (0700, owned by the run's uid) under ``scratch_root``
  (default: the system temp dir; it must be traversable by ``run_as``), removed when the
  run ends however it ends; umask 077;
- rlimits: RLIMIT_CPU (``cpu_seconds``: SIGXCPU, then SIGKILL one second later),
  RLIMIT_AS (``memory_mb``), RLIMIT_NOFILE (``open_files``), RLIMIT_NPROC (``processes``,
  only when dropping to ``run_as``: the kernel ignores it for root, and for the daemon's
  own uid it would count the daemon's processes and threads), RLIMIT_CORE 0,
  RLIMIT_FSIZE 64 MiB;
- ``PR_SET_NO_NEW_PRIVS`` (setuid binaries such as an old ``ping`` do not gain
  privileges); ``PR_SET_PDEATHSIG`` SIGKILL (the child dies with the thread running the
  event loop); as root, unless the skill is ``privileged``: setgroups([]), setgid,
  setuid to ``run_as`` (nobody/nogroup by default). RLIMIT_NPROC counts every process of
  that uid on the host, so concurrent runs under the same ``run_as`` share it. The
  bootstrap reads the entry and opens Python's import directories before the drop, so
  an interpreter below a directory the new uid cannot enter (a pyenv under /root) still
  works: its modules are then imported through ``/proc/self/fd/N``;
- no network unless declared: a network namespace of its own (only a loopback), where
  the host allows it (as root; unprivileged, with a user namespace);
- filesystem: Landlock where the kernel has it: read and execute below the system
  directories (/usr, /bin, /lib*, /etc, /proc, /sys, /dev), Python's prefixes and import
  paths, the pack and the declared ``read`` paths; write only below the scratch
  directory, the declared ``write`` paths and /dev/null & co. (so no /dev/shm: Python's
  multiprocessing semaphores are unavailable; nor /home, /root, /var, /tmp, /run, except
  the targets of /etc/resolv.conf & co.). A ``privileged`` skill is confined the same
  way: it declares the paths it writes. Without Landlock, only the uid drop protects the
  filesystem.

What could not be applied on this host is recorded in :attr:`SandboxedSkill.last_isolation`
(``network``, ``filesystem``, ``nproc``); a run never fails because the host lacks a
feature, but it does fail (``sandbox``) when a uid drop that was asked for fails.

Ends: the wall-clock limit SIGKILLs the whole process group (``timeout``); a cancel sends
the child a message, SIGTERM to the group, SIGKILL after ``term_grace``; when the child
exits, whatever is left in its group is SIGKILLed. A process that leaves the group with
``setsid()`` escapes this (cgroups would be needed to catch it).

Failure codes: the skill's own (:class:`meshd.skill.SkillFailure`), ``error``,
``bad_result``, ``bad_pack`` (no entry file, a syntax error, no ``run``), ``timeout``,
``cpu_limit``, ``memory_limit``, ``crashed`` (a signal or an exit without a result: the
signal or status and the end of stderr), ``sandbox`` (the child could not be started or
locked down). A handoff raises :class:`~meshd.skills.api.SkillHandoff`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import msgpack

import meshd
from meshd import log
from meshd import skill as child_api
from meshd.skills.api import SkillCancelled, SkillContext, SkillHandoff
from meshd.skills.policy import Limits, Permissions
from meshd.skills.spec import SkillError, SkillSpec

_log = log.get("meshd.skills.sandbox")

#: The environment of every child: nothing of the daemon's.
SAFE_PATH: Final = "/usr/local/bin:/usr/bin:/bin"
#: s. How long, after a cancel, the child's group has between SIGTERM and SIGKILL. Kept
#: under the executor's ``cancel_grace`` (1 s) so that a cancel is reported as such.
TERM_GRACE: Final = 0.5
#: s. How long the channel and the output pipes are drained after the child exited.
_DRAIN: Final = 2.0
#: bytes read from a pipe at a time.
_CHUNK: Final = 65536
#: Lines and characters of stderr quoted in a ``crashed`` message.
_TAIL_LINES: Final = 3
_TAIL_CHARS: Final = 300
_CODE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
_ENTRY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*\.py$")
#: What the child runs: import meshd.skill from the same paths as this process.
_BOOT: Final = (
    "import sys;sys.path[:0]=sys.argv[2:];import meshd.skill as s;s._main(int(sys.argv[1]))"
)


def _import_roots() -> tuple[str, ...]:
    """The directories holding the ``meshd`` package and ``msgpack`` (the child runs
    with ``-S``: no site-packages of its own, ~10 ms less per start)."""
    roots = (
        os.path.dirname(os.path.dirname(os.path.abspath(meshd.__file__))),
        os.path.dirname(os.path.dirname(os.path.abspath(msgpack.__file__))),
    )
    return tuple(dict.fromkeys(roots))


def _default_run_as() -> tuple[int, int] | None:
    if os.geteuid() != 0:
        return None
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        return (65534, 65534)
    return (nobody.pw_uid, nobody.pw_gid)


def no_isolation() -> dict[str, bool]:
    """The isolation record before a child reported what it applied."""
    return {"network": False, "filesystem": False, "nproc": False}


@dataclass(frozen=True, slots=True)
class SandboxOutput:
    """What a run's child wrote: stdout and stderr up to ``limits.output_kb`` KiB each,
    how many bytes were dropped beyond that, its pid and exit status (negative: the
    signal that ended it; None if it was never reaped)."""

    pid: int | None = None
    returncode: int | None = None
    stdout: bytes = b""
    stderr: bytes = b""
    stdout_dropped: int = 0
    stderr_dropped: int = 0


@dataclass(slots=True)
class _Capture:
    limit: int
    data: bytearray = field(default_factory=bytearray)
    dropped: int = 0

    def feed(self, chunk: bytes) -> None:
        room = max(0, self.limit - len(self.data))
        self.data += chunk[:room]
        self.dropped += max(0, len(chunk) - room)


def _kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class _ChildProtocol(asyncio.SubprocessProtocol):
    """Captures stdout/stderr (bounded) as they come and notes the child's exit at
    once. (``asyncio.subprocess.Process.wait()`` of Python 3.11 returns only once every
    pipe is closed: a grandchild holding stdout would keep a finished run going.)"""

    def __init__(self, loop: asyncio.AbstractEventLoop, output_limit: int) -> None:
        self.stdout = _Capture(output_limit)
        self.stderr = _Capture(output_limit)
        self.exited: asyncio.Future[None] = loop.create_future()
        self.pipes_closed: asyncio.Future[None] = loop.create_future()
        self._open = {1, 2}

    def pipe_data_received(self, fd: int, data: bytes | str) -> None:
        chunk = data.encode() if isinstance(data, str) else data
        (self.stdout if fd == 1 else self.stderr).feed(chunk)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        self._open.discard(fd)
        if not self._open and not self.pipes_closed.done():
            self.pipes_closed.set_result(None)

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)


class _Job:
    """One child process and what came back from it."""

    def __init__(self, ctx: SkillContext, output_limit: int) -> None:
        self.ctx = ctx
        self.output_limit = output_limit
        self.transport: asyncio.SubprocessTransport | None = None
        self.protocol: _ChildProtocol | None = None
        self.pid: int | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.final: dict[str, Any] | None = None
        self.protocol_error: tuple[str, str] | None = None  # (code, message)
        self.isolation: dict[str, bool] | None = None
        self.channel: asyncio.Task[None] | None = None
        self.tasks: list[asyncio.Future[Any]] = []  # to cancel at the end

    @property
    def returncode(self) -> int | None:
        return self.transport.get_returncode() if self.transport is not None else None

    def kill(self) -> None:
        """SIGKILL the child's whole process group (a no-op once it is gone)."""
        if self.pid is not None:
            _kill_group(self.pid, signal.SIGKILL)

    async def terminate(self, grace: float) -> None:
        """Tell the child to stop, SIGTERM its group, SIGKILL it after ``grace``."""
        assert self.pid is not None and self.protocol is not None
        if self.writer is not None:
            with contextlib.suppress(Exception):
                self.writer.write(child_api.encode_frame({"t": "cancel"}))
        _kill_group(self.pid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.protocol.exited), grace)
        self.kill()
        await self.settle()

    async def settle(self) -> None:
        """Wait (bounded) for the child's exit, SIGKILL what is left of its group
        (grandchildren), then drain the channel and the pipes (bounded)."""
        assert self.protocol is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.protocol.exited), _DRAIN)
        self.kill()
        pending: list[asyncio.Future[Any]] = [self.protocol.pipes_closed]
        if self.channel is not None:
            pending.append(self.channel)
        pending = [f for f in pending if not f.done()]
        if pending:
            await asyncio.wait(pending, timeout=_DRAIN)

    def close(self) -> None:
        """Synchronous last resort (also when cancelled twice): kill, stop reading."""
        self.kill()
        for task in self.tasks:
            task.cancel()
        if self.writer is not None:
            self.writer.close()
        if self.transport is not None:
            self.transport.close()

    def output(self) -> SandboxOutput:
        if self.protocol is None:
            return SandboxOutput()
        out, err = self.protocol.stdout, self.protocol.stderr
        return SandboxOutput(
            pid=self.pid,
            returncode=self.returncode,
            stdout=bytes(out.data),
            stderr=bytes(err.data),
            stdout_dropped=out.dropped,
            stderr_dropped=err.dropped,
        )

    async def read_channel(self, reader: asyncio.StreamReader) -> None:
        while True:
            try:
                header = await reader.readexactly(4)
                length = child_api.frame_length(header)
                if length > child_api.MAX_FRAME:
                    self.protocol_error = (
                        "bad_result",
                        f"the skill sent a message of {length} bytes, "
                        f"at most {child_api.MAX_FRAME}",
                    )
                    self.kill()
                    return
                message = child_api.decode_body(await reader.readexactly(length))
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            except ValueError as exc:
                self.protocol_error = ("crashed", f"the skill's channel broke: {exc}")
                self.kill()
                return
            self._dispatch(message)

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message["t"]
        try:
            if kind == "progress":
                self.ctx.progress(float(message.get("pct", 0.0)), str(message.get("message", "")))
            elif kind == "checkpoint":
                data = message.get("data")
                if isinstance(data, bytes):
                    self.ctx.checkpoint(data)
            elif kind == "ready":
                found = message.get("isolation")
                if isinstance(found, dict):
                    self.isolation = {k: bool(found.get(k)) for k in no_isolation()}
            elif kind in ("result", "failure", "handoff", "cancelled") and self.final is None:
                self.final = message
        except Exception as exc:  # a failing progress/checkpoint callback
            _log.warning("sandbox callback failed", error=f"{type(exc).__name__}: {exc}")


class SandboxedSkill:
    """A packed skill run in a locked-down child process (see the module docstring).

    ``folder``: the unpacked pack; ``entry``: the file defining ``run(ctx)``, relative to
    it (e.g. ``main.py``). ``python``: the interpreter of the child (the same version as
    the daemon's: the child imports its msgpack). ``run_as``: (uid, gid) to drop to when
    the daemon runs as root; default nobody/nogroup as root, None otherwise; ignored for
    a ``privileged`` skill. ``term_grace``: s between SIGTERM and SIGKILL on a cancel.

    After each run, :attr:`last_isolation` says what the child applied (``network``: its
    own network namespace; ``filesystem``: Landlock; ``nproc``: a uid of its own, which
    makes RLIMIT_NPROC effective) and :attr:`last_output` what it wrote. With concurrent
    runs of one instance these describe whichever finished last.
    """

    def __init__(
        self,
        spec: SkillSpec,
        folder: Path,
        entry: str,
        limits: Limits,
        permissions: Permissions,
        *,
        python: str = sys.executable,
        scratch_root: Path | None = None,
        run_as: tuple[int, int] | Literal["default"] | None = "default",
        term_grace: float = TERM_GRACE,
    ) -> None:
        if not _ENTRY.match(entry) or ".." in entry.split("/"):
            raise ValueError(f"bad entry {entry!r}: a relative path to a .py file in the pack")
        if run_as == "default":
            run_as = _default_run_as()
        elif run_as is not None and os.geteuid() != 0 and run_as != (os.getuid(), os.getgid()):
            raise ValueError(f"run_as {run_as} needs the daemon to run as root")
        self._spec = spec
        self.folder = Path(folder).absolute()
        self.entry = entry
        self.limits = limits
        self.permissions = permissions
        self.python = python
        self.scratch_root = scratch_root
        #: (uid, gid) the child drops to; None: it keeps the daemon's.
        self.run_as: tuple[int, int] | None = (
            None if permissions.privileged or run_as == (os.getuid(), os.getgid()) else run_as
        )
        self.term_grace = term_grace
        #: What the last run's child applied: ``network``, ``filesystem``, ``nproc``.
        self.last_isolation: dict[str, bool] = no_isolation()
        #: What the last run's child wrote (None before the first run).
        self.last_output: SandboxOutput | None = None

    @property
    def spec(self) -> SkillSpec:
        return self._spec

    async def run(self, ctx: SkillContext) -> object:
        """Run the skill once in a fresh child; see the module docstring for how each
        way of ending maps onto a result, :class:`SkillError`, :class:`SkillHandoff`,
        :class:`SkillCancelled` or :class:`asyncio.CancelledError`."""
        self.last_isolation = no_isolation()
        job = _Job(ctx, self.limits.output_kb * 1024)
        scratch = self._make_scratch()
        try:
            return await self._run(job, scratch)
        finally:
            job.close()
            self.last_output = job.output()
            if job.isolation is not None:
                self.last_isolation = job.isolation
            _remove_tree(scratch)

    async def _run(self, job: _Job, scratch: Path) -> object:
        loop = asyncio.get_running_loop()
        await self._start(job, scratch)
        assert job.protocol is not None
        exited = job.protocol.exited
        stop = loop.create_task(job.ctx.wait_cancelled())
        job.tasks.append(stop)
        try:
            done, _ = await asyncio.wait(
                {exited, stop},
                timeout=self.limits.wall_seconds,
                return_when=asyncio.FIRST_COMPLETED,
            )
        except asyncio.CancelledError:
            await job.terminate(self.term_grace)
            raise
        if exited not in done:
            if stop in done:
                await job.terminate(self.term_grace)
                raise SkillCancelled("cancelled")
            job.kill()
            await job.settle()
            raise SkillError(
                f"skill {self.spec.name!r} exceeded its wall-clock limit of "
                f"{self.limits.wall_seconds} s",
                code="timeout",
            )
        await job.settle()
        return self._outcome(job)

    async def _start(self, job: _Job, scratch: Path) -> None:
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            env = {"PATH": SAFE_PATH, "HOME": str(scratch), "LANG": "C.UTF-8"}
            env["TMPDIR"] = str(scratch)
            fd = child_end.fileno()
            loop = asyncio.get_running_loop()
            job.transport, job.protocol = await loop.subprocess_exec(
                lambda: _ChildProtocol(loop, job.output_limit),
                self.python,
                "-I",
                "-S",
                "-c",
                _BOOT,
                str(fd),
                *_import_roots(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(fd,),
                start_new_session=True,
                cwd=scratch,
                env=env,
                umask=0o077,
            )
        except OSError as exc:
            parent_end.close()
            raise SkillError(
                f"skill {self.spec.name!r}: cannot start its sandbox: {exc}", code="sandbox"
            ) from None
        finally:
            child_end.close()
        job.pid = job.transport.get_pid()
        reader, job.writer = await asyncio.open_unix_connection(sock=parent_end)
        job.channel = loop.create_task(job.read_channel(reader))
        job.tasks.append(job.channel)
        uid, gid = self.run_as if self.run_as is not None else (None, None)
        init = {
            "t": "init",
            "params": dict(job.ctx.params),
            "checkpoint": job.ctx.checkpoint_data,
            "task_id": job.ctx.task_id,
            "folder": str(self.folder),
            "entry": self.entry,
            "scratch": str(scratch),
            "limits": {
                "cpu_seconds": self.limits.cpu_seconds,
                "memory_mb": self.limits.memory_mb,
                "open_files": self.limits.open_files,
                "processes": self.limits.processes,
            },
            "uid": uid,
            "gid": gid,
            "network": self.permissions.network or self.permissions.internet,
            "read": list(self.permissions.read),
            "write": list(self.permissions.write),
        }
        try:
            job.writer.write(child_api.encode_frame(init))
            await job.writer.drain()
        except (TypeError, ValueError, OverflowError) as exc:
            raise SkillError(f"params cannot be encoded: {exc}", code="bad_params") from None
        except ConnectionError:
            pass  # the child died at once: its exit status tells why

    def _make_scratch(self) -> Path:
        root = self.scratch_root if self.scratch_root is not None else tempfile.gettempdir()
        try:
            scratch = Path(tempfile.mkdtemp(prefix=f"meshd-{self.spec.name}-", dir=root))
        except OSError as exc:
            raise SkillError(
                f"skill {self.spec.name!r}: cannot make its scratch directory: {exc}",
                code="sandbox",
            ) from None
        try:
            if self.run_as is not None:
                os.chown(scratch, *self.run_as)
        except OSError as exc:
            _remove_tree(scratch)
            raise SkillError(
                f"skill {self.spec.name!r}: cannot hand its scratch directory to "
                f"{self.run_as}: {exc}",
                code="sandbox",
            ) from None
        return scratch

    def _outcome(self, job: _Job) -> object:
        name = self.spec.name
        if job.protocol_error is not None:
            code, message = job.protocol_error
            raise SkillError(f"skill {name!r}: {message}", code=code)
        final = job.final
        if final is not None:
            kind = final["t"]
            if kind == "result":
                return final.get("value")
            if kind == "failure":
                given = final.get("code")
                message = str(final.get("message", ""))
                if isinstance(given, str) and _CODE.match(given):
                    raise SkillError(message, code=given)
                raise SkillError(f"bad failure code {given!r}: {message}", code="error")
            if kind == "handoff":
                to = final.get("to")
                raise SkillHandoff(to if isinstance(to, str) and to else None)
        assert job.protocol is not None
        status = job.returncode
        tail = _tail(bytes(job.protocol.stderr.data))
        if status is not None and status < 0 and -status == signal.SIGXCPU:
            raise SkillError(
                f"skill {name!r} used up its CPU limit of {self.limits.cpu_seconds} s",
                code="cpu_limit",
            )
        if "MemoryError" in tail or "Cannot allocate memory" in tail or "out of memory" in tail:
            raise SkillError(
                f"skill {name!r} ran out of memory (limit {self.limits.memory_mb} MiB): {tail}",
                code="memory_limit",
            )
        if status is not None and status < 0:
            how = f"killed by {_signal_name(-status)}"
            if -status == signal.SIGKILL:
                how += " (the hard CPU limit, the kernel's OOM killer or an outside kill)"
        elif final is not None and final["t"] == "cancelled":
            how = "stopped by an outside SIGTERM"
        else:
            how = f"exited with status {status} without a result"
        raise SkillError(
            f"skill {name!r} crashed: {how}" + (f"; stderr: {tail}" if tail else ""),
            code="crashed",
        )


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _tail(stderr: bytes) -> str:
    """The last lines of stderr, bounded, for a failure message."""
    lines = stderr.decode("utf-8", "replace").strip().splitlines()
    text = " | ".join(line.strip() for line in lines[-_TAIL_LINES:])
    return text if len(text) <= _TAIL_CHARS else "..." + text[-_TAIL_CHARS:]


def _remove_tree(path: Path) -> None:
    """Remove a scratch directory whatever the skill did to its modes."""
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        return
    except OSError:
        for parent, dirs, _ in os.walk(path):
            for name in dirs:
                sub = os.path.join(parent, name)
                if not os.path.islink(sub):
                    with contextlib.suppress(OSError):
                        os.chmod(sub, 0o700)
        with contextlib.suppress(OSError):
            os.chmod(path, 0o700)
        shutil.rmtree(path, ignore_errors=True)
    if path.exists():
        _log.warning("scratch directory left behind", path=str(path))
