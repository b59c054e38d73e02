"""run-command: run one allow-listed test, lint or build command in a workspace.

What may run is fixed here, not by the task:

- the program must be in :data:`ALLOWED_COMMANDS`; ``python`` only as
  ``python -m MODULE`` with MODULE in :data:`PYTHON_MODULES` (or ``python --version``);
- every argument must match :data:`SAFE_ARG` (no spaces, quotes, ``;|&$`<>()*?!~``...:
  nothing a shell would read, though no shell is ever used), must not be an absolute
  path nor contain a ``..`` component, and must not be one of the tool's
  :data:`DENIED_ARGS` (``make --eval``, ``make VAR=value``, ``mypy --install-types``...);
- the folder must be an existing directory whose real path lies under one of the
  workspace roots, which are the ``[permissions] read`` paths of this pack's manifest.

Anything else fails with ``not_allowed`` before a process starts. Tools are looked up in
the workspace's ``.venv/bin``, then next to the Python running this skill, then in the
system's ``/usr/local/bin:/usr/bin:/bin``. The command runs without a shell, in its own
process group, with stdin closed, a small environment (``HOME`` and caches in the
scratch directory) and a timeout below the pack's wall limit; when it ends, anything it
left running in its group is killed. The result holds the exit code and the last
``tail_kb`` KiB of stdout and of stderr: a failing test run is a result, not a failure.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path
from typing import IO, Any

try:
    from meshd.skill import SkillFailure
except ImportError:  # meshd.skill not there yet: same signature

    class SkillFailure(Exception):  # type: ignore[no-redef]
        """A failure the skill understands: a short stable ``code`` and a message."""

        def __init__(self, code: str, message: str) -> None:
            super().__init__(f"{code}: {message}")
            self.code = code
            self.message = message


#: Programs that may run. ``python`` is further limited to ``-m`` with PYTHON_MODULES.
ALLOWED_COMMANDS: tuple[str, ...] = ("pytest", "ruff", "mypy", "make", "python")
#: Aliases accepted for an allowed program.
ALIASES: dict[str, str] = {"python3": "python", "py.test": "pytest"}
#: Modules ``python -m`` may run.
PYTHON_MODULES: tuple[str, ...] = ("pytest", "mypy", "ruff", "unittest", "compileall")
#: One argument: letters, digits and ``_ @ % + = : , . / -``, at most 256 characters.
SAFE_ARG = re.compile(r"^[A-Za-z0-9_@%+=:,./-]{0,256}$")
MAX_ARGS = 64
#: Arguments refused per tool (an option, or an option followed by ``=value``).
DENIED_ARGS: dict[str, tuple[str, ...]] = {
    # --eval/-E run make code given on the command line; -e lets the environment win.
    "make": ("--eval", "-E", "-e", "--environment-overrides"),
    # --install-types runs pip.
    "mypy": ("--install-types",),
    "python": (),
    "pytest": (),
    "ruff": (),
}
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"
MANIFEST = Path(__file__).with_name("skill.toml")
#: Seconds kept between the command's timeout and the pack's wall limit.
WALL_MARGIN = 30.0
DEFAULT_WALL = 900.0
_PR_SET_PDEATHSIG = 1
try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
except OSError:
    _LIBC = None


def _manifest() -> dict[str, Any]:
    try:
        with MANIFEST.open("rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError):
        return {}


def allowed_roots() -> tuple[str, ...]:
    """The workspace roots: the manifest's ``[permissions] read`` paths (absolute,
    normalised); none when the manifest cannot be read, so every folder is refused."""
    read = _manifest().get("permissions", {}).get("read", [])
    return tuple(os.path.normpath(p) for p in read if isinstance(p, str) and p.startswith("/"))


def wall_limit() -> float:
    value = _manifest().get("limits", {}).get("wall_seconds", DEFAULT_WALL)
    return float(value) if isinstance(value, int | float) else DEFAULT_WALL


def check_folder(folder: str, roots: tuple[str, ...]) -> Path:
    """The real path of ``folder`` if it lies under one of ``roots`` and is a directory.
    Symbolic links are resolved first, so a link cannot lead out of a root."""
    if not folder.startswith("/") or "\x00" in folder:
        raise SkillFailure("not_allowed", f"folder {folder!r} must be an absolute path")
    real = os.path.realpath(folder)
    if not any(real == r or real.startswith(r.rstrip("/") + "/") for r in roots):
        where = ", ".join(roots) or "none configured"
        raise SkillFailure(
            "not_allowed", f"folder {folder} is not under a workspace root ({where})"
        )
    if not os.path.isdir(real):
        raise SkillFailure("not_found", f"folder {folder} is not a directory")
    return Path(real)


def _is_path_escape(arg: str) -> bool:
    """An absolute path or a ``..`` component anywhere in the argument (also after
    ``=``, ``,`` or ``:``, or glued to a short option such as ``-c/etc``)."""
    for part in re.split(r"[=,:]", arg):
        if part.startswith("/") or re.match(r"^-[A-Za-z]/", part):
            return True
        if ".." in part.split("/"):
            return True
    return False


def check_command(command: str, args: list[str]) -> tuple[str, list[str]]:
    """(program, arguments) once every rule above holds; ``not_allowed`` otherwise."""
    words = command.split()
    if not words:
        raise SkillFailure("not_allowed", "empty command")
    program = ALIASES.get(words[0], words[0])
    argv = [*words[1:], *args]
    if program not in ALLOWED_COMMANDS:
        allowed = ", ".join(ALLOWED_COMMANDS)
        raise SkillFailure("not_allowed", f"command {words[0]!r} is not allowed ({allowed})")
    if len(argv) > MAX_ARGS:
        raise SkillFailure("not_allowed", f"{len(argv)} arguments: {MAX_ARGS} at most")
    for arg in argv:
        if not isinstance(arg, str) or not SAFE_ARG.match(arg):
            raise SkillFailure(
                "not_allowed",
                f"argument {arg!r} is refused: only letters, digits and _ @ % + = : , . / -",
            )
        if _is_path_escape(arg):
            raise SkillFailure(
                "not_allowed", f"argument {arg!r} is refused: no absolute paths and no '..'"
            )
    tool = program
    if program == "python":
        if argv in (["--version"], ["-V"]):
            return program, argv
        if len(argv) < 2 or argv[0] != "-m" or argv[1] not in PYTHON_MODULES:
            modules = ", ".join(PYTHON_MODULES)
            raise SkillFailure("not_allowed", f"python runs only as 'python -m' {modules}")
        tool = argv[1] if argv[1] in DENIED_ARGS else "python"
    denied = DENIED_ARGS.get(tool, ())
    for arg in argv:
        option = arg.split("=", 1)[0]
        if option in denied:
            raise SkillFailure("not_allowed", f"{tool} {option} is not allowed")
        if tool == "make" and not arg.startswith("-") and "=" in arg:
            raise SkillFailure("not_allowed", f"make variable assignment {arg!r} is not allowed")
    return program, argv


def find_program(program: str, folder: Path) -> str:
    """The executable for ``program``: the workspace's ``.venv/bin``, then the directory
    of the running Python, then the system path (``make`` only from the system path)."""
    venv = folder / ".venv" / "bin"
    here = Path(sys.executable).parent
    if program == "python":
        local = venv / "python"
        return str(local) if local.is_file() and os.access(local, os.X_OK) else sys.executable
    candidates = [] if program == "make" else [venv / program, here / program]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(program, path=SYSTEM_PATH)
    if found is None:
        raise SkillFailure("not_found", f"{program} is not installed here")
    return found


class _Tail:
    """Reads a pipe to its end, keeping the last ``limit`` bytes and the total count."""

    def __init__(self, pipe: IO[bytes], limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.total = 0
        self._pipe = pipe
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            while chunk := self._pipe.read1(65536):  # type: ignore[attr-defined]
                self.total += len(chunk)
                self.data += chunk
                if len(self.data) > 2 * self.limit:
                    del self.data[: len(self.data) - self.limit]

    def text(self) -> str:
        kept = bytes(self.data[-self.limit :])
        return kept.decode("utf-8", errors="replace")


def _exited(pid: int) -> bool:
    """Whether child ``pid`` has exited, without reaping it (WNOWAIT)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _wait(ctx: Any, pid: int, deadline: float) -> tuple[bool, bool]:
    """Wait until child ``pid`` exits (not reaped), or stop it (SIGTERM to its group,
    then 3 s of grace) at the deadline or on a cancel: (timed_out, cancelled)."""
    delay = 0.005
    while not _exited(pid):
        cancelled = bool(getattr(ctx, "cancelled", False))
        if cancelled or time.monotonic() >= deadline:
            _kill_group(pid, signal.SIGTERM)
            grace = time.monotonic() + 3.0
            while not _exited(pid) and time.monotonic() < grace:
                time.sleep(0.05)
            return not cancelled, cancelled
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
    return False, False


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it if this skill process dies (say, killed by
    the sandbox), since its own session is out of reach of a kill of the skill's group.
    (``ctypes`` and libc are loaded before the fork: no import in the child.)"""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _kill_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _environment(folder: Path, exe: str, scratch: Path) -> dict[str, str]:
    bin_dirs = [str(Path(exe).parent), str(Path(sys.executable).parent)]
    env = {
        "PATH": os.pathsep.join([*dict.fromkeys(bin_dirs), SYSTEM_PATH]),
        "HOME": str(scratch),
        "TMPDIR": str(scratch),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TERM": "dumb",
        "NO_COLOR": "1",
        "CI": "1",
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "RUFF_CACHE_DIR": str(scratch / "ruff-cache"),
        "MYPY_CACHE_DIR": str(scratch / "mypy-cache"),
    }
    if (folder / ".venv").is_dir():
        env["VIRTUAL_ENV"] = str(folder / ".venv")
    return env


def execute(
    ctx: Any, argv: list[str], folder: Path, timeout: float, tail_bytes: int
) -> dict[str, Any]:
    """Run ``argv`` in ``folder``; the exit code and output tails."""
    scratch = Path(getattr(ctx, "scratch", None) or Path.cwd())
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            argv,
            cwd=folder,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_environment(folder, argv[0], scratch),
            start_new_session=True,
            close_fds=True,
            preexec_fn=_die_with_parent,
        )
    except OSError as exc:
        raise SkillFailure("exec_failed", f"cannot start {argv[0]}: {exc.strerror}") from None
    assert proc.stdout is not None and proc.stderr is not None
    out, err = _Tail(proc.stdout, tail_bytes), _Tail(proc.stderr, tail_bytes)
    try:
        timed_out, cancelled = _wait(ctx, proc.pid, started + timeout)
    finally:
        # Also on the way out of a cancel (the sandbox raises a BaseException on SIGTERM
        # in this thread). Until the leader is reaped its process group id cannot be
        # reused: kill whatever is left running there, then reap it.
        _kill_group(proc.pid, signal.SIGKILL)
        proc.wait()
    for tail in (out, err):
        tail.thread.join(timeout=5.0)
    proc.stdout.close()
    proc.stderr.close()
    duration = time.monotonic() - started
    if cancelled:
        raise SkillFailure("cancelled", f"cancelled after {duration:.1f} s")
    return {
        "exit_code": None if timed_out else proc.returncode,
        "timed_out": timed_out,
        "duration_s": round(duration, 3),
        "stdout_tail": out.text(),
        "stderr_tail": err.text(),
        "stdout_bytes": out.total,
        "stderr_bytes": err.total,
        "truncated": out.total > tail_bytes or err.total > tail_bytes,
    }


def run(ctx: Any) -> dict[str, Any]:
    params = ctx.params
    raw_args = params.get("args") or []
    if isinstance(raw_args, str):
        raw_args = [raw_args]
    program, args = check_command(str(params["command"]), list(raw_args))
    folder = check_folder(str(params["folder"]), allowed_roots())
    timeout = min(float(params.get("timeout", 600.0)), wall_limit() - WALL_MARGIN)
    tail_bytes = max(1, min(int(params.get("tail_kb", 16)), 100)) * 1024
    exe = find_program(program, folder)
    display = " ".join([program, *args])
    ctx.progress(0.0, f"running {display} in {folder}")
    result = execute(ctx, [exe, *args], folder, max(1.0, timeout), tail_bytes)
    ctx.progress(100.0, f"exit {result['exit_code']}")
    return {"command": display, "executable": exe, "folder": str(folder), **result}
