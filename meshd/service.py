"""``meshd service``: install, remove and inspect meshd as a systemd service.

The unit is rendered from ``systemd/meshd.service`` (in a wheel:
``meshd/_data/systemd/meshd.service``), a complete unit in its own right whose
``ExecStart=`` the installer replaces with the absolute path of the ``meshd`` executable
it runs from, the role, ``--name`` and ``--peer``. A ``--join`` token never goes into the
unit (unit files and ``systemctl show`` are readable by every user): it is written to a
root-only file that the unit hands to the daemon as a credential (system), or to a 0600
file in the user's config dir (user). A user unit (``--user``) keeps the hardening a user
manager can apply (seccomp-based: system call, address family and namespace filters,
NoNewPrivileges, MemoryDenyWriteExecute...) and drops what needs a system manager
(DynamicUser, StateDirectory, Protect*, Private*, capabilities).

Everything that touches the host goes through :class:`Installer`, whose paths and
``systemctl`` can be replaced (tests); the rendering functions are pure.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TextIO

from meshd.errors import ConfigError, MeshError

Scope = Literal["system", "user"]

UNIT_NAME = "meshd.service"
SYSTEM_UNIT_DIR = Path("/etc/systemd/system")
#: Where the system service keeps its state (StateDirectory=meshd; the unit sets
#: MESHD_STATE_DIR to it, since default_state_dir() is only /var/lib/meshd for root).
SYSTEM_STATE_DIR = Path("/var/lib/meshd")
#: The root-only file holding ``--join``'s token for the system service (LoadCredential=).
SYSTEM_JOIN_FILE = Path("/etc/meshd/join.toml")
#: The credential's name: the daemon reads ``$CREDENTIALS_DIRECTORY/<this>`` (``%d``).
JOIN_CREDENTIAL = "meshd-join.toml"
#: Present when PID 1 is systemd (what sd_booted() checks).
SYSTEMD_RUN_DIR = Path("/run/systemd/system")
#: Directories that ProtectHome=yes hides from a system service.
HOME_DIRS = (Path("/home"), Path("/root"), Path("/run/user"))
#: s. ``systemctl enable --now`` of a Type=notify unit returns once READY=1 arrived.
SYSTEMCTL_TIMEOUT = 120.0

#: Directives a user manager cannot apply (they need a system manager, root or mount
#: namespaces), or that make no sense for a user's daemon: dropped from the user unit.
SYSTEM_ONLY = frozenset(
    {
        "DynamicUser",
        "User",
        "Group",
        "StateDirectory",
        "StateDirectoryMode",
        "CapabilityBoundingSet",
        "AmbientCapabilities",
        "ProtectSystem",
        "ProtectHome",
        "PrivateTmp",
        "PrivateDevices",
        "PrivateMounts",
        "PrivateUsers",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectControlGroups",
        "ProtectClock",
        "ProtectHostname",
        "RemoveIPC",
        "LimitNOFILE",
        "LoadCredential",
    }
)
#: [Unit] dependencies on system targets a user manager does not have.
SYSTEM_ONLY_VALUES = frozenset({"After=network-online.target", "Wants=network-online.target"})


@dataclass(frozen=True, slots=True)
class InstallOptions:
    role: str = "observer"
    scope: Scope = "system"
    name: str | None = None
    join: str | None = None
    peers: tuple[str, ...] = ()
    #: Absolute path of the ``meshd`` executable ExecStart= runs.
    executable: Path = Path("/usr/local/bin/meshd")
    #: Where the user unit's join file goes (user scope only).
    user_join_file: Path | None = None
    #: Extra ``Environment=`` lines (MESHD_ROLES_DIR when the role comes from there).
    environment: tuple[tuple[str, str], ...] = field(default=())


# -- rendering (pure) ------------------------------------------------------------------------


def template_path() -> Path:
    """The shipped unit: in the wheel (``meshd/_data/systemd``) or the checkout."""
    package = Path(__file__).resolve().parent
    for candidate in (
        package / "_data" / "systemd" / UNIT_NAME,
        package.parent / "systemd" / UNIT_NAME,
    ):
        if candidate.is_file():
            return candidate
    raise MeshError(f"the unit template {UNIT_NAME} is missing from this installation")


def quote_word(word: str) -> str:
    """One word of an ``ExecStart=`` command line, quoted for systemd: ``%`` and ``$``
    doubled (no specifier or variable expansion), quotes where needed."""
    escaped = word.replace("%", "%%").replace("$", "$$")
    if escaped and not any(c in escaped for c in " \t\n\"'\\;"):
        return escaped
    escaped = escaped.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def quote_env(name: str, value: str) -> str:
    """A ``NAME=VALUE`` assignment for ``Environment=`` (specifiers off, quoted)."""
    text = f"{name}={value}".replace("%", "%%").replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"' if any(c.isspace() for c in text) or "\\" in text else text


def exec_start(opts: InstallOptions) -> str:
    """The ``ExecStart=`` value for ``opts``."""
    words = [quote_word(str(opts.executable)), "start", "--role", quote_word(opts.role)]
    if opts.name:
        words += ["--name", quote_word(opts.name)]
    for peer in opts.peers:
        words += ["--peer", quote_word(peer)]
    if opts.join:
        if opts.scope == "system":
            # %d: the service's credentials directory ($CREDENTIALS_DIRECTORY).
            words += ["--config", f"%d/{JOIN_CREDENTIAL}"]
        else:
            words += ["--config", quote_word(str(join_file(opts)))]
    return " ".join(words)


def join_file(opts: InstallOptions) -> Path:
    """Where ``--join``'s token is kept for this scope."""
    if opts.scope == "system":
        return SYSTEM_JOIN_FILE
    return opts.user_join_file or user_config_dir() / "meshd" / "join.toml"


def join_file_text(token: str) -> str:
    """A config file (``meshd start --config``) that only sets the join token."""
    escaped = token.replace("\\", "\\\\").replace('"', '\\"')
    return (
        "# Written by `meshd service install --join`: the token of the mesh this host joins.\n"
        "# Keep it secret (it admits hosts to the mesh).\n"
        f'[node]\njoin_token = "{escaped}"\n'
    )


def _key(line: str) -> str:
    text = line.strip()
    if not text or text.startswith(("#", ";", "[")) or "=" not in text:
        return ""
    return text.split("=", 1)[0].strip()


def render(template: str, opts: InstallOptions) -> str:
    """The unit for ``opts`` from the shipped ``template``."""
    from meshd import __version__

    lines = template.splitlines()
    # The template's header comment is for people reading the file in the source tree.
    start = next((i for i, line in enumerate(lines) if line.strip() == "[Unit]"), 0)
    rendered = [
        f"# {UNIT_NAME} ({opts.scope} unit), rendered by `meshd service install` "
        f"(meshd {__version__}).",
        "# Re-run `meshd service install` to change role, name or peers; local changes",
        "# belong in a drop-in (`systemctl edit meshd`). Template and notes: "
        "systemd/meshd.service.",
        "",
    ]
    replaced = False
    for line in lines[start:]:
        key = _key(line)
        if opts.scope == "user" and (key in SYSTEM_ONLY or line.strip() in SYSTEM_ONLY_VALUES):
            continue
        if opts.scope == "user" and line.strip().startswith("Environment=MESHD_STATE_DIR="):
            continue  # the user's default state dir (what meshctl finds)
        if key == "WantedBy" and opts.scope == "user":
            line = "WantedBy=default.target"
        if key == "ExecStart":
            if replaced:
                raise MeshError("the unit template has more than one ExecStart=")
            replaced = True
            rendered.append(f"ExecStart={exec_start(opts)}")
            if opts.join and opts.scope == "system":
                rendered.append(f"LoadCredential={JOIN_CREDENTIAL}:{SYSTEM_JOIN_FILE}")
            for name, value in opts.environment:
                rendered.append(f"Environment={quote_env(name, value)}")
            continue
        rendered.append(line)
    if not replaced:
        raise MeshError("the unit template has no ExecStart=")
    while rendered and not rendered[-1].strip():
        rendered.pop()
    return "\n".join(rendered) + "\n"


def unit_path(scope: Scope) -> Path:
    return SYSTEM_UNIT_DIR / UNIT_NAME if scope == "system" else user_unit_dir() / UNIT_NAME


def user_config_dir() -> Path:
    xdg = os.environ.get("XDG_CONFIG_HOME")
    return Path(xdg) if xdg else Path.home() / ".config"


def user_unit_dir() -> Path:
    return user_config_dir() / "systemd" / "user"


def state_dir(scope: Scope) -> Path:
    """Where the service's daemon keeps its state (and control socket)."""
    if scope == "system":
        return SYSTEM_STATE_DIR
    from meshd.config import default_state_dir

    return default_state_dir()


def default_scope() -> Scope:
    return "system" if os.geteuid() == 0 else "user"


def resolve_scope(system: bool, user: bool) -> Scope:
    """``--system`` / ``--user`` / the default (system as root, else user)."""
    if system and user:
        raise ConfigError("--system and --user exclude each other")
    if system:
        return "system"
    if user:
        return "user"
    return default_scope()


def find_executable() -> Path:
    """The ``meshd`` console script of this installation (absolute)."""
    beside = Path(sys.executable).parent / "meshd"
    if beside.is_file() and os.access(beside, os.X_OK):
        return Path(os.path.abspath(beside))
    found = shutil.which("meshd")
    if found:
        return Path(os.path.abspath(found))
    raise MeshError(
        "cannot find the meshd executable: install meshd (pip install) so that `meshd` is on PATH"
    )


def _interpreter(script: Path) -> Path | None:
    """The interpreter a ``#!`` script runs, resolved; None for a binary."""
    try:
        with script.open("rb") as f:
            first = f.readline(4096)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    words = first[2:].decode("utf-8", "replace").split()
    if not words:
        return None
    if Path(words[0]).name == "env" and len(words) > 1:
        found = shutil.which(words[1])
        return Path(found).resolve() if found else None
    return Path(words[0]).resolve()


def system_service_problems(executable: Path) -> list[str]:
    """Why a system service could not run ``executable``: ProtectHome=yes hides home
    directories, and DynamicUser's uid must be able to read and enter every directory
    on the way (it is nobody in particular: "other" permission bits)."""
    problems: list[str] = []
    paths = [executable.resolve()]
    interpreter = _interpreter(executable)
    if interpreter is not None:
        paths.append(interpreter)
    for path in paths:
        for home in HOME_DIRS:
            if path.is_relative_to(home):
                problems.append(
                    f"{path} is under {home}, which the service cannot see (ProtectHome=yes)"
                )
                break
        else:
            for parent in path.parents:
                try:
                    mode = parent.stat().st_mode
                except OSError:
                    continue
                if not mode & stat.S_IXOTH:
                    problems.append(f"{parent} is not searchable by other users (DynamicUser)")
                    break
    return problems


# -- the host ----------------------------------------------------------------------------


@dataclass
class Installer:
    """Installs, removes and inspects the unit (system or user scope)."""

    scope: Scope
    out: TextIO = field(default_factory=lambda: sys.stdout)
    #: ``systemctl`` (None: found on PATH).
    systemctl: str | None = None
    run_dir: Path = SYSTEMD_RUN_DIR
    unit_dir: Path | None = None

    @property
    def unit_file(self) -> Path:
        return (self.unit_dir / UNIT_NAME) if self.unit_dir else unit_path(self.scope)

    def systemctl_cmd(self, *args: str) -> list[str]:
        exe = self.systemctl or shutil.which("systemctl") or "systemctl"
        return [exe, *(["--user"] if self.scope == "user" else []), *args]

    def unavailable(self) -> str | None:
        """Why systemd cannot run the service here, or None."""
        if self.systemctl is None and shutil.which("systemctl") is None:
            return "systemd is not installed here (no systemctl on PATH)"
        if not self.run_dir.is_dir():
            return f"systemd is not running here (PID 1 is not systemd: no {self.run_dir})"
        if self.scope == "system" and os.geteuid() != 0:
            return "installing a system service needs root (or use --user)"
        return None

    def commands(self, replacing: bool) -> list[list[str]]:
        cmds = [
            self.systemctl_cmd("daemon-reload"),
            self.systemctl_cmd("enable", "--now", UNIT_NAME),
        ]
        if replacing:
            # enable --now leaves a running daemon on its old command line.
            cmds.append(self.systemctl_cmd("try-restart", UNIT_NAME))
        return cmds

    def install(self, opts: InstallOptions, dry_run: bool = False) -> None:
        """Render, write, reload, enable and start. Raises MeshError (exit 1) or
        ConfigError (exit 2)."""
        validate(opts)
        unit = render(template_path().read_text(), opts)
        replacing = self.unit_file.exists()
        cmds = self.commands(replacing)
        secret = join_file(opts) if opts.join else None
        if dry_run:
            self._print_plan(unit, secret, cmds, opts.executable)
            return
        reason = self.unavailable()
        if reason is not None:
            raise MeshError(f"{reason}; `meshd service install --dry-run` shows the unit")
        if self.scope == "system":
            problems = system_service_problems(opts.executable)
            if problems:
                raise MeshError(
                    "; ".join(problems) + ". Install meshd where every user can read it, e.g. "
                    "python3 -m venv /opt/meshd && /opt/meshd/bin/pip install meshd, and run "
                    "/opt/meshd/bin/meshd service install"
                )
        if secret is not None and opts.join is not None:
            _write(secret, join_file_text(opts.join), 0o600, dir_mode=0o700)
        _write(self.unit_file, unit, 0o644)
        print(f"wrote {self.unit_file}", file=self.out)
        for cmd in cmds:
            self._run(cmd)
        print(
            f"{UNIT_NAME} is enabled and running (role {opts.role}). "
            f"Check: meshd service status{' --user' if self.scope == 'user' else ''}; logs: "
            f"journalctl {'--user-unit' if self.scope == 'user' else '-u'} meshd",
            file=self.out,
        )

    def _print_plan(
        self, unit: str, secret: Path | None, cmds: Sequence[Sequence[str]], executable: Path
    ) -> None:
        """The dry run's output: the unit, then what would be done as comments (the whole
        output is still a valid unit file)."""
        print("# meshd service install --dry-run: nothing written, nothing run.", file=self.out)
        print(f"# would write {self.unit_file}:", file=self.out)
        self.out.write(unit)
        if secret is not None:
            print(f"# would write {secret} (mode 0600): the join token", file=self.out)
        if self.scope == "system":
            for problem in system_service_problems(executable):
                print(f"# warning: {problem}", file=self.out)
        print("# would run:", file=self.out)
        for cmd in cmds:
            print(f"#   {' '.join(cmd)}", file=self.out)

    def uninstall(self, dry_run: bool = False) -> None:
        """Stop, disable and remove the unit (and the join file); the state dir stays."""
        secrets = [SYSTEM_JOIN_FILE] if self.scope == "system" else []
        if self.scope == "user":
            secrets.append(user_config_dir() / "meshd" / "join.toml")
        cmds = [
            self.systemctl_cmd("disable", "--now", UNIT_NAME),
            self.systemctl_cmd("daemon-reload"),
        ]
        if dry_run:
            print(
                "# meshd service uninstall --dry-run: nothing removed, nothing run.", file=self.out
            )
            print(f"# would run: {' '.join(cmds[0])}", file=self.out)
            print(f"# would remove: {self.unit_file}", file=self.out)
            for path in secrets:
                print(f"# would remove: {path} (if present)", file=self.out)
            print(f"# would run: {' '.join(cmds[1])}", file=self.out)
            return
        reason = self.unavailable()
        if reason is not None:
            raise MeshError(reason)
        if not self.unit_file.exists():
            raise MeshError(f"{self.unit_file} does not exist: nothing to uninstall")
        self._run(cmds[0])
        self.unit_file.unlink()
        print(f"removed {self.unit_file}", file=self.out)
        for path in secrets:
            if path.exists():
                path.unlink()
                print(f"removed {path}", file=self.out)
        self._run(cmds[1])
        print(
            f"State dir kept: {state_dir(self.scope)} (this host's identity and mesh key); "
            "delete it to make this host forget the mesh.",
            file=self.out,
        )

    def status(self) -> bool:
        """Print ``systemctl status`` and whether the local daemon answers; True if so."""
        reason = None
        if self.systemctl is None and shutil.which("systemctl") is None:
            reason = "systemd is not installed here (no systemctl on PATH)"
        elif not self.run_dir.is_dir():
            reason = f"systemd is not running here (no {self.run_dir})"
        if reason is None:
            proc = subprocess.run(
                self.systemctl_cmd("status", "--no-pager", "--lines=5", UNIT_NAME),
                capture_output=True,
                text=True,
                timeout=SYSTEMCTL_TIMEOUT,
                stdin=subprocess.DEVNULL,
            )
            text = (proc.stdout + proc.stderr).rstrip()
            print(text or f"systemctl status: exit {proc.returncode}", file=self.out)
        else:
            print(f"service: {reason}", file=self.out)
        return self._daemon_answers(state_dir(self.scope))

    def _daemon_answers(self, sdir: Path) -> bool:
        from meshd.client import Client
        from meshd.errors import ControlError

        try:
            with Client(sdir, timeout=5.0) as client:
                st = client.status()
        except (ControlError, OSError) as exc:
            print(f"daemon: not answering at {sdir} ({exc})", file=self.out)
            return False
        me = st.get("self", {})
        lead = (st.get("lead") or {}).get("name") or st.get("lead_reason") or "none"
        counts = st.get("counts", {})
        print(
            f"daemon: answering at {sdir}: {me.get('name')} ({me.get('role')}), pid "
            f"{me.get('pid')}, mesh {me.get('mesh_id')}, {counts.get('alive', 0)} peers alive, "
            f"lead {lead}",
            file=self.out,
        )
        return True

    def _run(self, cmd: Sequence[str]) -> None:
        print(f"$ {' '.join(cmd)}", file=self.out)
        try:
            proc = subprocess.run(
                list(cmd),
                capture_output=True,
                text=True,
                timeout=SYSTEMCTL_TIMEOUT,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise MeshError(f"{' '.join(cmd)} failed: {exc}") from None
        if proc.returncode != 0:
            lines = (proc.stderr or proc.stdout).strip().splitlines()
            detail = lines[-1] if lines else f"exit {proc.returncode}"
            raise MeshError(f"{' '.join(cmd)} failed: {detail}")


def validate(opts: InstallOptions) -> None:
    """ConfigError for a bad role, peer or token (before anything is written)."""
    from meshd.config import DEFAULT_PORT, parse_hostport
    from meshd.identity import MeshKey
    from meshd.roles import get_role

    get_role(opts.role)
    for peer in opts.peers:
        parse_hostport(peer, DEFAULT_PORT)
    if opts.join is not None:
        MeshKey.from_token(opts.join)
    if opts.name is not None and not opts.name.strip():
        raise ConfigError("--name must not be empty")


def _write(path: Path, text: str, mode: int, dir_mode: int = 0o755) -> None:
    """Write ``text`` to ``path`` atomically with ``mode``."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=dir_mode)
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as exc:
        raise MeshError(f"cannot write {path}: {exc.strerror or exc}") from None
