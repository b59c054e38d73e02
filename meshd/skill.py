"""What a packed skill's code imports in its sandboxed child process: ``from meshd import skill``.

The skill author's contract
===========================

A pack folder has an entry file (e.g. ``main.py``) that defines a plain, synchronous
function ``run(ctx)``::

    from meshd import skill

    def run(ctx: skill.Context) -> object:
        total = 0
        for i, host in enumerate(ctx.params["hosts"]):
            if ctx.cancelled:
                raise skill.SkillFailure("stopped", "cancelled half-way")
            total += probe(host)
            ctx.progress(100 * (i + 1) / len(ctx.params["hosts"]), host)
            ctx.checkpoint(str(i).encode())
        return {"total": total}

``run`` returns a msgpack-encodable result (None, bool, int, float, str, bytes, lists and
dicts of those); anything else ends the run with code ``bad_result``. The module runs
in a child process of its own, so its top-level code runs once per task.

``ctx`` (a :class:`Context`) has:

- ``params``: dict, the parameters, already validated against the skill's spec;
- ``progress(pct, message="")``: report progress (``pct`` 0..100, clamped);
- ``checkpoint(data: bytes)``: save opaque resume data; a later run of the task (after a
  reassignment or a handoff) finds it in ``checkpoint_data``;
- ``checkpoint_data``: bytes or None, the last checkpoint of an earlier attempt;
- ``scratch``: :class:`pathlib.Path`, the run's private scratch directory. It is also the
  working directory, ``HOME`` and ``TMPDIR``, and it is removed when the run ends, however
  it ends;
- ``task_id``: str;
- ``cancelled``: bool property, True once the daemon asked the run to stop;
- ``handoff(to=None)``: stop here and ask that the task move, with its last checkpoint,
  to another agent (``to``: a node id or name; None: the best one). It raises
  :class:`Handoff`, which must be let through.

Failures: ``raise skill.SkillFailure(code, message)`` for a failure the skill understands
(``code``: a short token such as ``disk_full``). Any other exception ends the run with code
``error`` and the exception's type and text; its traceback goes to the captured stderr,
never to the caller. A ``MemoryError`` ends it with ``memory_limit``.

Stopping: when the run is cancelled (or its time is up) the daemon sends a message and
then SIGTERM to the run's whole process group; in the skill's main thread this raises
:class:`Cancelled` (a ``BaseException``: ``except Exception`` does not swallow it), so
``finally`` blocks run. SIGKILL follows shortly after.

The sandbox (see :mod:`meshd.skills.sandbox`): the child runs with a scrubbed environment
(``PATH``, ``HOME``, ``LANG``, ``TMPDIR`` only), umask 077, resource limits (CPU seconds,
address space, open files, processes, file size, no core dumps), no new privileges, as an
unprivileged user when the daemon runs as root, without network unless the skill
declared it, and unable to write outside its scratch directory and its declared ``write``
paths where the kernel has Landlock. stdout and stderr are captured up to a bound.

Only the standard library and msgpack are imported here (the daemon's own modules stay
out of the child). The bootstrap (:func:`_main`) is private to :mod:`meshd.skills.sandbox`.
"""

from __future__ import annotations

import os
import select
import struct
import sys

import msgpack

# The child's start is on every run's path: no typing (3 ms), no pathlib (5 ms, imported
# when a skill first reads ctx.scratch) and the C half of signal (its enums cost 3 ms).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
    from collections.abc import Mapping
    from pathlib import Path
    from typing import Any, NoReturn
else:
    import _signal as signal

__all__ = ["Cancelled", "Context", "Handoff", "SkillFailure"]

#: Frame header of the parent/child channel: a 4-byte big-endian body length.
_HEADER = struct.Struct(">I")
#: bytes. Largest frame either side accepts (a result, a checkpoint).
MAX_FRAME = 8 * 1024 * 1024
#: bytes. RLIMIT_FSIZE of the child: the largest file it may write.
MAX_FILE_SIZE = 64 * 1024 * 1024


class SkillFailure(Exception):
    """Raise it to end the run with a failure the skill understands: ``code`` is a short
    stable token (letters, digits, ``_``, ``-``, ``.``), ``message`` says what and why."""

    def __init__(self, code: str, message: str = "") -> None:
        super().__init__(message or code)
        self.code = code
        self.message = message or code


class Handoff(Exception):
    """Raised by :meth:`Context.handoff`; let it propagate out of ``run``."""

    def __init__(self, to: str | None = None) -> None:
        super().__init__(to or "")
        self.to = to


class Cancelled(BaseException):
    """Raised in the skill's main thread when the daemon stops the run (SIGTERM)."""


def encode_frame(message: Mapping[str, object]) -> bytes:
    """One channel frame: the length header, then the msgpack body."""
    body: bytes = msgpack.packb(message, use_bin_type=True)
    return _HEADER.pack(len(body)) + body


def decode_body(body: bytes) -> dict[str, Any]:
    """A frame body as a message (a map with a string ``t``); ValueError if not one."""
    try:
        message = msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several types for garbage
        raise ValueError(f"undecodable message: {exc}") from None
    if not isinstance(message, dict) or not isinstance(message.get("t"), str):
        raise ValueError("malformed message: not a map with a string 't'")
    return message


def frame_length(header: bytes) -> int:
    """The body length a 4-byte header announces."""
    length: int = _HEADER.unpack(header)[0]
    return length


class _Channel:
    """The child's end of the private socket to the daemon (blocking writes; reads
    either blocking for the first message or polled for a cancel)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._buf = bytearray()
        self.cancelled = False
        self._eof = False

    def send(self, message: Mapping[str, object]) -> None:
        data = memoryview(encode_frame(message))
        while data:
            data = data[os.write(self.fd, data) :]

    def recv(self) -> dict[str, Any]:
        while True:
            message = self._take()
            if message is not None:
                return message
            chunk = os.read(self.fd, 65536)
            if not chunk:
                raise EOFError("the daemon closed the channel")
            self._buf += chunk

    def poll(self) -> None:
        """Read what has arrived without blocking; notes a cancel (or the daemon gone)."""
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        while not self._eof and poller.poll(0):
            chunk = os.read(self.fd, 65536)
            if not chunk:
                self._eof = self.cancelled = True
                break
            self._buf += chunk
        while (message := self._take()) is not None:
            if message["t"] == "cancel":
                self.cancelled = True

    def _take(self) -> dict[str, Any] | None:
        if len(self._buf) < _HEADER.size:
            return None
        length = frame_length(bytes(self._buf[: _HEADER.size]))
        if length > MAX_FRAME:
            raise ValueError(f"frame of {length} bytes from the daemon")
        end = _HEADER.size + length
        if len(self._buf) < end:
            return None
        body = bytes(self._buf[_HEADER.size : end])
        del self._buf[:end]
        return decode_body(body)


class Context:
    """What ``run(ctx)`` gets. Built by the sandbox; a skill's own tests may build one
    (without a channel, progress and checkpoints are only kept on the object)."""

    def __init__(
        self,
        params: Mapping[str, object] | None = None,
        *,
        checkpoint_data: bytes | None = None,
        scratch: os.PathLike[str] | str = ".",
        task_id: str = "",
        _channel: _Channel | None = None,
    ) -> None:
        #: The validated parameters.
        self.params: dict[str, Any] = dict(params or {})
        #: The last checkpoint of an earlier attempt of this task, or None.
        self.checkpoint_data = checkpoint_data
        self._scratch = os.fspath(scratch)
        #: The task's id.
        self.task_id = task_id
        #: The last progress reported, as (pct, message) (for a skill's own tests).
        self.last_progress: tuple[float, str] | None = None
        self._channel = _channel

    @property
    def scratch(self) -> Path:
        """The run's scratch directory (also the working directory, HOME and TMPDIR)."""
        from pathlib import Path

        return Path(self._scratch)

    def progress(self, pct: float, message: str = "") -> None:
        """Report progress: ``pct`` is clamped to 0..100 (NaN counts as 0). The daemon
        passes reports on at a bounded rate; 100 always goes through."""
        value = float(pct)
        value = 0.0 if value != value else min(100.0, max(0.0, value))
        self.last_progress = (value, str(message))
        if self._channel is not None:
            self._channel.send({"t": "progress", "pct": value, "message": str(message)})

    def checkpoint(self, data: bytes | bytearray) -> None:
        """Save opaque resume data (bytes)."""
        if not isinstance(data, bytes | bytearray):
            raise TypeError(f"checkpoint data must be bytes, not {type(data).__name__}")
        self.checkpoint_data = bytes(data)
        if self._channel is not None:
            self._channel.send({"t": "checkpoint", "data": self.checkpoint_data})

    @property
    def cancelled(self) -> bool:
        """True once the daemon asked the run to stop (checks the channel; cheap)."""
        if self._channel is None:
            return False
        self._channel.poll()
        return self._channel.cancelled

    def handoff(self, to: str | None = None) -> NoReturn:
        """Stop here and hand the task to another agent (``to``, or the best one), which
        resumes from the last :meth:`checkpoint`. Save one first."""
        raise Handoff(to)


# --------------------------------------------------------------------------------------
# The child bootstrap. Run by meshd.skills.sandbox as
#   python -I -S -c "<import this module; _main(fd)>" FD SYS_PATH...
# It reads the init message, locks the process down, then runs the pack's entry.

_PR_SET_PDEATHSIG = 1
_PR_SET_NO_NEW_PRIVS = 38
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000
_SYS_LANDLOCK_CREATE_RULESET = 444  # the same number on every architecture
_SYS_LANDLOCK_ADD_RULE = 445
_SYS_LANDLOCK_RESTRICT_SELF = 446
_LANDLOCK_CREATE_RULESET_VERSION = 1
_LANDLOCK_RULE_PATH_BENEATH = 1
_FS_EXECUTE = 1 << 0
_FS_WRITE_FILE = 1 << 1
_FS_READ_FILE = 1 << 2
_FS_READ_DIR = 1 << 3
_FS_REFER = 1 << 13  # ABI 2
_FS_TRUNCATE = 1 << 14  # ABI 3
_FS_IOCTL_DEV = 1 << 15  # ABI 5
_FS_READ = _FS_EXECUTE | _FS_READ_FILE | _FS_READ_DIR
_FS_FILE = _FS_EXECUTE | _FS_WRITE_FILE | _FS_READ_FILE | _FS_TRUNCATE | _FS_IOCTL_DEV
#: What a skill may read (and execute) besides Python's own paths, its pack and the
#: ``read`` paths it declared. Unreadable files stay unreadable: this only narrows.
_SYSTEM_READ = (
    *("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc"),
    *("/proc", "/sys", "/dev"),
)
#: Files in /etc that are often links elsewhere (/run/systemd/resolve/...): their
#: targets are readable too, or name resolution breaks.
_SYSTEM_LINKS = ("/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf", "/etc/localtime")
#: Device files a skill may write (besides its scratch directory and ``write`` paths).
_DEVICES_RW = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")


class _SandboxSetupError(Exception):
    """The bootstrap could not apply a restriction it must not run without."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Cancelled("stopped by the daemon")


def _main(fd: int) -> NoReturn:
    """The child's entry point: never returns."""
    status = 1
    channel = _Channel(fd)
    try:
        signal.signal(signal.SIGTERM, _on_sigterm)
        status = _serve(channel, channel.recv())
    except Cancelled:
        status = _send_quietly(channel, {"t": "cancelled"})
    except BaseException as exc:
        _print_traceback()
        status = _send_quietly(
            channel, {"t": "failure", "code": "sandbox", "message": _describe(exc)}
        )
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        for stream in (sys.stdout, sys.stderr):
            try:  # noqa: SIM105 (contextlib is not imported in the child)
                stream.flush()
            except Exception:
                pass
        os._exit(status)


def _send_quietly(channel: _Channel, message: Mapping[str, object]) -> int:
    try:
        channel.send(message)
    except BaseException:
        return 1
    return 0


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _print_traceback() -> None:
    try:
        import traceback

        traceback.print_exc()
    except BaseException:
        pass


def _serve(channel: _Channel, init: Mapping[str, Any]) -> int:
    import resource

    if init.get("t") != "init":
        raise _SandboxSetupError(f"expected the init message, got {init.get('t')!r}")
    limits: Mapping[str, int] = init["limits"]
    folder: str = init["folder"]
    entry: str = init["entry"]
    scratch: str = init["scratch"]
    uid: int | None = init["uid"]
    gid: int | None = init["gid"]

    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # the daemon dies: so does the child
    _set_limit(resource.RLIMIT_CORE, 0)
    _set_limit(resource.RLIMIT_FSIZE, MAX_FILE_SIZE)
    # soft: SIGXCPU, which ends the process and names the cause; hard (1 s later):
    # SIGKILL, for a skill that catches or ignores SIGXCPU.
    _set_limit(resource.RLIMIT_CPU, limits["cpu_seconds"], limits["cpu_seconds"] + 1)

    path = os.path.join(folder, entry)
    try:
        with open(path, "rb") as file:  # read while still privileged
            code = compile(file.read(), path, "exec")
    except (OSError, SyntaxError, ValueError) as exc:
        channel.send({"t": "failure", "code": "bad_pack", "message": _describe(exc)})
        return 0
    sys.path.insert(0, folder)

    isolation = {"network": False, "filesystem": False, "nproc": False}
    held = _hold_dirs(sys.path) if uid is not None else {}
    if not init["network"]:
        isolation["network"] = _isolate_network()
    no_new_privs = _prctl(_PR_SET_NO_NEW_PRIVS, 1)
    ruleset = _landlock_ruleset(init["read"], [scratch, *init["write"]]) if no_new_privs else None
    if uid is not None and gid is not None:
        # RLIMIT_NPROC counts every process and thread of the real uid; root ignores it,
        # hence it is only set (and only means something) once we drop to that uid.
        _set_limit(resource.RLIMIT_NPROC, limits["processes"])
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
        if os.getuid() != uid or os.geteuid() != uid or os.getegid() != gid:
            raise _SandboxSetupError(f"could not become uid {uid} gid {gid}")
        isolation["nproc"] = True
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # cleared by the uid change: set again
        _reach_held(held)
    if ruleset is not None:
        isolation["filesystem"] = _landlock_restrict(ruleset)
    # Last, so that the set-up above (fds for Landlock rules, ctypes) is not squeezed.
    _set_limit(resource.RLIMIT_NOFILE, limits["open_files"])
    _set_limit(resource.RLIMIT_AS, limits["memory_mb"] * 1024 * 1024)
    channel.send({"t": "ready", "isolation": isolation})

    ctx = Context(
        init["params"],
        checkpoint_data=init["checkpoint"],
        scratch=scratch,
        task_id=init["task_id"],
        _channel=channel,
    )
    name = os.path.splitext(os.path.basename(entry))[0]
    module = type(sys)(name)
    module.__file__ = path
    sys.modules[name] = module
    try:
        exec(code, module.__dict__)
        run = module.__dict__.get("run")
        if not callable(run):
            outcome: dict[str, object] = {
                "t": "failure",
                "code": "bad_pack",
                "message": f"{entry} defines no function run(ctx)",
            }
        else:
            outcome = {"t": "result", "value": run(ctx)}
    except SkillFailure as exc:
        outcome = {"t": "failure", "code": str(exc.code), "message": str(exc.message)}
    except Handoff as exc:
        outcome = {"t": "handoff", "to": exc.to}
    except Cancelled:
        outcome = {"t": "cancelled"}
    except MemoryError as exc:
        outcome = {
            "t": "failure",
            "code": "memory_limit",
            "message": f"{_describe(exc)} (limit {limits['memory_mb']} MiB)",
        }
    except BaseException as exc:
        _print_traceback()
        outcome = {"t": "failure", "code": "error", "message": _describe(exc)}
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the outcome is settled
    try:
        frame = encode_frame(outcome)
    except (TypeError, ValueError, OverflowError) as exc:
        frame = b""
        outcome = {
            "t": "failure",
            "code": "bad_result",
            "message": f"result cannot be encoded: {exc}",
        }
    if len(frame) > MAX_FRAME + _HEADER.size:
        outcome = {
            "t": "failure",
            "code": "bad_result",
            "message": f"result too large: {len(frame)} bytes encoded",
        }
    channel.send(outcome)
    return 0


def _set_limit(resource_id: int, soft: int, hard: int | None = None) -> None:
    import resource

    hard = soft if hard is None else hard
    _, current_hard = resource.getrlimit(resource_id)
    if current_hard != resource.RLIM_INFINITY and os.geteuid() != 0:
        hard = min(hard, current_hard)  # an unprivileged process cannot raise a hard limit
        soft = min(soft, hard)
    resource.setrlimit(resource_id, (soft, hard))


_LIBC: list[Any] = []


def _libc() -> Any:
    import ctypes

    if not _LIBC:
        _LIBC.append(ctypes.CDLL(None, use_errno=True))
    return _LIBC[0]


def _prctl(option: int, value: int) -> bool:
    import ctypes

    libc = _libc()
    args = (ctypes.c_ulong(value), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))
    return bool(libc.prctl(ctypes.c_int(option), *args) == 0)


def _isolate_network() -> bool:
    """A network namespace of our own (only a loopback, brought up); False if the host
    does not allow it. Unprivileged, a user namespace comes with it."""
    import ctypes

    libc = _libc()
    uid, gid = os.geteuid(), os.getegid()
    flags = _CLONE_NEWNET if uid == 0 else _CLONE_NEWUSER | _CLONE_NEWNET
    if libc.unshare(ctypes.c_int(flags)) != 0:
        return False
    if flags & _CLONE_NEWUSER:
        # Map our own ids into the new user namespace: without a mapping the skill would
        # run as the overflow uid (65534), and peers that check credentials (D-Bus, for
        # service-status) would refuse it; files would all look owned by nobody.
        for path, text in (
            ("/proc/self/setgroups", "deny"),
            ("/proc/self/uid_map", f"{uid} {uid} 1"),
            ("/proc/self/gid_map", f"{gid} {gid} 1"),
        ):
            try:
                fd = os.open(path, os.O_WRONLY)
                try:
                    os.write(fd, text.encode())
                finally:
                    os.close(fd)
            except OSError:
                break  # an unmapped namespace still isolates the network
    # Bring the namespace's loopback up (ctypes, not the socket module: 7 ms to import).
    sock = libc.socket(ctypes.c_int(2), ctypes.c_int(2), ctypes.c_int(0))  # INET, DGRAM
    if sock >= 0:
        request = ctypes.create_string_buffer(b"lo", 40)  # struct ifreq
        if libc.ioctl(sock, ctypes.c_ulong(0x8913), request) == 0:  # SIOCGIFFLAGS
            flags_now = struct.unpack_from("h", request, 16)[0] | 0x1  # IFF_UP
            struct.pack_into("h", request, 16, flags_now)
            libc.ioctl(sock, ctypes.c_ulong(0x8914), request)  # SIOCSIFFLAGS
        os.close(sock)
    return True


def _landlock_ruleset(read: list[str], write: list[str]) -> int | None:
    """A Landlock ruleset fd: read+execute below the system, Python and pack paths and
    the declared ``read`` paths; everything below ``write`` paths. None where the kernel
    has no Landlock (or it is disabled)."""
    import ctypes

    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    abi = libc.syscall(
        ctypes.c_long(_SYS_LANDLOCK_CREATE_RULESET),
        None,
        ctypes.c_long(0),
        ctypes.c_long(_LANDLOCK_CREATE_RULESET_VERSION),
    )
    if abi < 1:
        return None
    handled = (1 << 13) - 1  # ABI 1: EXECUTE .. MAKE_SYM
    if abi >= 2:
        handled |= _FS_REFER
    if abi >= 3:
        handled |= _FS_TRUNCATE
    if abi >= 5:
        handled |= _FS_IOCTL_DEV
    attr = (ctypes.c_uint64 * 3)(handled, 0, 0)  # handled_access_fs, _net, scoped
    ruleset = libc.syscall(
        ctypes.c_long(_SYS_LANDLOCK_CREATE_RULESET),
        ctypes.byref(attr),
        ctypes.c_long(ctypes.sizeof(attr)),
        ctypes.c_long(0),
    )
    if ruleset < 0:
        return None

    class PathBeneath(ctypes.Structure):
        _pack_ = 1
        _fields_ = (("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32))

    def allow(path: str, access: int) -> None:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            return  # absent: nothing to allow
        try:
            import stat

            if not stat.S_ISDIR(os.fstat(fd).st_mode):
                access &= _FS_FILE
            rule = PathBeneath(access & handled, fd)
            libc.syscall(
                ctypes.c_long(_SYS_LANDLOCK_ADD_RULE),
                ctypes.c_long(ruleset),
                ctypes.c_long(_LANDLOCK_RULE_PATH_BENEATH),
                ctypes.byref(rule),
                ctypes.c_long(0),
            )
        finally:
            os.close(fd)

    readable = [*_SYSTEM_READ, *map(os.path.realpath, _SYSTEM_LINKS)]
    readable += [sys.prefix, sys.base_prefix, sys.exec_prefix]
    readable += [p for p in sys.path if p] + list(read)
    for path in dict.fromkeys(readable):
        allow(path, _FS_READ)
    for path in dict.fromkeys([*_DEVICES_RW, *write]):
        allow(path, handled)
    return int(ruleset)


def _landlock_restrict(ruleset: int) -> bool:
    import ctypes

    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    try:
        done = libc.syscall(
            ctypes.c_long(_SYS_LANDLOCK_RESTRICT_SELF), ctypes.c_long(ruleset), ctypes.c_long(0)
        )
        return bool(done == 0)
    finally:
        os.close(ruleset)


def _hold_dirs(paths: list[str]) -> dict[str, int]:
    """O_PATH fds on the import directories, opened while still privileged: after the
    uid drop they keep Python's own modules reachable through /proc/self/fd where a
    parent directory is closed to the new uid (say, an interpreter under /root)."""
    held: dict[str, int] = {}
    for path in dict.fromkeys(p for p in paths if p):
        try:
            held[path] = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            continue
    return held


def _reach_held(held: dict[str, int]) -> None:
    """After the uid drop: route imports from directories the new uid cannot reach
    through the fds :func:`_hold_dirs` kept; close the others."""
    moved: dict[str, str] = {}
    for path, fd in held.items():
        if os.access(path, os.R_OK | os.X_OK):
            os.close(fd)
        else:
            moved[path] = f"/proc/self/fd/{fd}"
    if not moved:
        return
    order = sorted(moved, key=len, reverse=True)

    def move(path: str) -> str:
        for old in order:
            if path == old or path.startswith(old + "/"):
                return moved[old] + path[len(old) :]
        return path

    sys.path[:] = [move(p) for p in sys.path]
    for module in list(sys.modules.values()):
        search = getattr(module, "__path__", None)
        if isinstance(search, list):
            search[:] = [move(p) if isinstance(p, str) else p for p in search]
    sys.path_importer_cache.clear()
