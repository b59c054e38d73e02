"""`meshd service` and the sd_notify client: the rendered units (checked by systemd's own
`systemd-analyze verify` and `security`), the dry run, the installer against a fake
systemctl, the refusal without systemd, and the notification datagrams."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from io import StringIO
from pathlib import Path

import pytest
from harness import run_meshd

from meshd import service
from meshd.config import default_state_dir, load_file
from meshd.errors import ConfigError, MeshError
from meshd.identity import MeshKey
from meshd.net import sd_notify as notify

#: The exposure score `systemd-analyze security` may give the system unit (0 = locked
#: down, 10 = unprotected; <= 2.x is "OK"). Measured: 2.0 with systemd 252.
MAX_EXPOSURE = 3.0

TOKEN = MeshKey.generate().token()


def _exe() -> Path:
    """An existing executable for ExecStart= (verify checks it exists)."""
    return service.find_executable()


def _opts(**kw: object) -> service.InstallOptions:
    base: dict[str, object] = {"role": "devops", "executable": _exe()}
    base.update(kw)
    return service.InstallOptions(**base)  # type: ignore[arg-type]


def _render(**kw: object) -> str:
    return service.render(service.template_path().read_text(), _opts(**kw))


def _directives(unit: str) -> list[str]:
    return [
        line.strip()
        for line in unit.splitlines()
        if line.strip() and not line.lstrip().startswith(("#", ";", "["))
    ]


# -- rendering --------------------------------------------------------------------------------


def test_system_unit_has_the_required_directives() -> None:
    lines = _directives(_render())
    required = [
        "Type=notify",
        "NotifyAccess=main",
        "WatchdogSec=10s",
        "Restart=on-failure",
        "RestartSec=2",
        "StateDirectory=meshd",
        f"Environment=MESHD_STATE_DIR={service.SYSTEM_STATE_DIR}",
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "RestrictAddressFamilies=AF_UNIX AF_NETLINK AF_INET AF_INET6",
        "SystemCallFilter=@system-service",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectControlGroups=yes",
        "RestrictRealtime=yes",
        "RestrictSUIDSGID=yes",
        "LockPersonality=yes",
        "MemoryDenyWriteExecute=yes",
        "RestrictNamespaces=user net",
        "CapabilityBoundingSet=",
        "KillMode=mixed",
        "TimeoutStopSec=30s",
        "WantedBy=multi-user.target",
    ]
    missing = [r for r in required if r not in lines]
    assert not missing, missing
    assert any(line.startswith("LimitNOFILE=") for line in lines)
    assert any(line.startswith("Documentation=https://") for line in lines)
    assert not any(line.startswith("PrivateNetwork") for line in lines)
    exec_start = [line for line in lines if line.startswith("ExecStart=")]
    assert exec_start == [f"ExecStart={_exe()} start --role devops"]
    assert _exe().is_absolute()


def test_state_dir_of_the_unit_is_the_one_meshctl_finds(monkeypatch: pytest.MonkeyPatch) -> None:
    # The service runs as a dynamic (non-root) user: default_state_dir() would be its
    # home, so the unit sets MESHD_STATE_DIR to the StateDirectory=.
    monkeypatch.setenv("MESHD_STATE_DIR", str(service.SYSTEM_STATE_DIR))
    assert default_state_dir() == service.SYSTEM_STATE_DIR == Path("/var/lib/meshd")
    assert service.state_dir("system") == service.SYSTEM_STATE_DIR


def test_user_unit_is_the_subset_a_user_manager_applies() -> None:
    unit = _render(scope="user")
    lines = _directives(unit)
    keys = {line.split("=", 1)[0] for line in lines}
    assert not keys & service.SYSTEM_ONLY
    assert not any(line.startswith("Environment=MESHD_STATE_DIR") for line in lines)
    assert "network-online.target" not in unit
    for kept in (
        "Type=notify",
        "WatchdogSec=10s",
        "NoNewPrivileges=yes",
        "MemoryDenyWriteExecute=yes",
        "SystemCallFilter=@system-service",
        "RestrictNamespaces=user net",
        "WantedBy=default.target",
    ):
        assert kept in lines


def test_exec_start_quotes_for_systemd() -> None:
    opts = _opts(name='lab "one" 100% $HOME', peers=("10.0.0.1:7790", "[fe80::1]:7000"))
    line = service.exec_start(opts)
    assert '--name "lab \\"one\\" 100%% $$HOME"' in line
    assert "--peer 10.0.0.1:7790 --peer [fe80::1]:7000" in line
    assert service.quote_word("/opt/my meshd/bin/meshd") == '"/opt/my meshd/bin/meshd"'


def test_join_token_stays_out_of_the_unit(tmp_path: Path) -> None:
    unit = _render(join=TOKEN)
    assert TOKEN not in unit
    assert f"LoadCredential={service.JOIN_CREDENTIAL}:{service.SYSTEM_JOIN_FILE}" in unit
    assert f"--config %d/{service.JOIN_CREDENTIAL}" in unit
    # The credential is a config file meshd start --config reads.
    path = tmp_path / "join.toml"
    path.write_text(service.join_file_text(TOKEN))
    assert tomllib.loads(path.read_text()) == {"node": {"join_token": TOKEN}}
    assert load_file(path).node.join_token == TOKEN
    user = _render(scope="user", join=TOKEN, user_join_file=tmp_path / "j.toml")
    assert TOKEN not in user and f"--config {tmp_path / 'j.toml'}" in user


def test_roles_dir_is_passed_on(tmp_path: Path) -> None:
    unit = _render(environment=(("MESHD_ROLES_DIR", str(tmp_path / "site roles")),))
    assert f'Environment="MESHD_ROLES_DIR={tmp_path / "site roles"}"' in unit


def test_bad_input_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    inst = service.Installer("user", out=StringIO(), unit_dir=tmp_path)
    for opts, match in [
        (_opts(role="wizard"), "unknown role"),
        (_opts(peers=(":1",)), "missing host"),
        (_opts(join="nope"), "join token"),
    ]:
        with pytest.raises(ConfigError, match=match):
            inst.install(opts, dry_run=True)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ConfigError, match="exclude"):
        service.resolve_scope(True, True)


def test_home_directories_are_refused_for_the_system_service(tmp_path: Path) -> None:
    problems = service.system_service_problems(Path("/root/.venv/bin/meshd"))
    assert problems and "ProtectHome" in problems[0]
    script = tmp_path / "meshd"
    script.write_text("#!/home/someone/venv/bin/python3\n")
    script.chmod(0o755)
    assert any("/home" in p for p in service.system_service_problems(script))


# -- systemd's own checks -----------------------------------------------------------------------

ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze missing (apt-get install systemd; CI installs it)"
)


def _analyze(*args: str, cwd: Path, user: bool = False) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    env = dict(os.environ, SYSTEMD_LOG_COLOR="0", SYSTEMD_COLORS="0")
    if user:  # a user manager's paths need a runtime dir (none on CI)
        runtime = cwd / "runtime"
        runtime.mkdir(mode=0o700, exist_ok=True)
        env["XDG_RUNTIME_DIR"] = str(runtime)
    return subprocess.run(
        [ANALYZE, *(["--user"] if user else []), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def unit_dir(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "units"
    d.mkdir()
    yield d


@needs_analyze
@pytest.mark.parametrize(
    ("scope", "kw"),
    [("system", {}), ("system", {"join": TOKEN, "name": "lab 1"}), ("user", {})],
)
def test_systemd_analyze_verify_accepts_the_unit(
    unit_dir: Path, scope: str, kw: dict[str, object]
) -> None:
    path = unit_dir / service.UNIT_NAME
    path.write_text(_render(scope=scope, **kw))
    out = _analyze("verify", str(path), cwd=unit_dir, user=scope == "user")
    assert out.returncode == 0, out.stdout + out.stderr
    # verify prints warnings (unknown directives, bad values) without failing: none here.
    assert "meshd.service" not in out.stderr, out.stderr


def _security_supports_offline() -> bool:
    assert ANALYZE is not None
    out = subprocess.run(
        [ANALYZE, "security", "--help"], capture_output=True, text=True, timeout=30
    )
    return "--offline" in out.stdout


@needs_analyze
def test_systemd_analyze_security_exposure(unit_dir: Path) -> None:
    if not _security_supports_offline():
        pytest.skip("systemd-analyze security has no --offline here (systemd < 250)")
    path = unit_dir / service.UNIT_NAME
    path.write_text(_render())
    out = _analyze("security", "--offline=yes", "--no-pager", str(path), cwd=unit_dir)
    found = re.search(r"Overall exposure level for meshd\.service: ([\d.]+) (\w+)", out.stdout)
    assert found, out.stdout + out.stderr
    score, verdict = float(found.group(1)), found.group(2)
    print(f"systemd-analyze security --offline=yes meshd.service: {score} {verdict}")
    assert score <= MAX_EXPOSURE, out.stdout
    assert verdict in ("OK", "SAFE", "PERFECT"), out.stdout


# -- the command line ---------------------------------------------------------------------------


def test_dry_run_prints_the_unit_and_the_commands(tmp_path: Path) -> None:
    target = service.SYSTEM_UNIT_DIR / service.UNIT_NAME
    existed = target.exists()
    out = run_meshd(
        "service", "install", "--dry-run", "--system", "--role", "devops", "--peer", "h:7790"
    )
    assert out.returncode == 0, out.stderr
    assert f"# would write {target}:" in out.stdout
    assert "Type=notify" in out.stdout and "--role devops --peer h:7790" in out.stdout
    assert "daemon-reload" in out.stdout and "enable --now meshd.service" in out.stdout
    assert target.exists() == existed  # nothing written


def test_dry_run_of_a_user_unit_writes_nothing(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "XDG_CONFIG_HOME"}
    env["HOME"] = str(tmp_path)
    out = subprocess.run(
        [sys.executable, "-m", "meshd", "service", "install", "--dry-run", "--user"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 0, out.stderr
    assert f"# would write {tmp_path}/.config/systemd/user/meshd.service:" in out.stdout
    assert "--user enable --now meshd.service" in out.stdout
    assert "WantedBy=default.target" in out.stdout and "DynamicUser=" not in out.stdout
    assert list(tmp_path.iterdir()) == []


def test_install_refuses_without_systemd(tmp_path: Path) -> None:
    # No systemctl on PATH (whatever this host runs as PID 1).
    empty = tmp_path / "bin"
    empty.mkdir()
    env = dict(os.environ, PATH=str(empty), HOME=str(tmp_path))
    env.pop("XDG_CONFIG_HOME", None)
    for scope in ("--system", "--user"):
        out = subprocess.run(
            [sys.executable, "-m", "meshd", "service", "install", scope, "--role", "devops"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            stdin=subprocess.DEVNULL,
        )
        assert out.returncode == 1, out.stdout + out.stderr
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and "systemd is not installed here" in lines[0], out.stderr
        assert "Traceback" not in out.stderr
    assert list(tmp_path.iterdir()) == [empty]
    # systemctl present, but PID 1 is not systemd.
    inst = service.Installer(
        "user", out=StringIO(), systemctl="/bin/true", run_dir=tmp_path / "absent", unit_dir=empty
    )
    with pytest.raises(MeshError, match="PID 1 is not systemd"):
        inst.install(_opts(scope="user"))
    with pytest.raises(MeshError, match="PID 1 is not systemd"):
        inst.uninstall()
    assert list(empty.iterdir()) == []


def test_conflicting_scopes_are_a_usage_error() -> None:
    out = run_meshd("service", "install", "--system", "--user", "--dry-run")
    assert out.returncode == 2 and "exclude each other" in out.stderr


@pytest.fixture
def fake_systemctl(tmp_path: Path) -> tuple[Path, Path]:
    """A systemctl that logs its arguments (one call a line) and succeeds."""
    log = tmp_path / "calls.log"
    exe = tmp_path / "systemctl"
    exe.write_text(f'#!/bin/sh\necho "$*" >> {log}\n')
    exe.chmod(0o755)
    return exe, log


def test_install_and_uninstall_with_a_fake_systemctl(
    tmp_path: Path, fake_systemctl: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    exe, log = fake_systemctl
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    units = tmp_path / "config" / "systemd" / "user"
    out = StringIO()
    inst = service.Installer("user", out=out, systemctl=str(exe), run_dir=tmp_path)
    assert inst.unit_file == units / service.UNIT_NAME
    inst.install(_opts(scope="user", join=TOKEN, name="n1"))
    unit = inst.unit_file.read_text()
    assert unit == _render(scope="user", join=TOKEN, name="n1")
    secret = tmp_path / "config" / "meshd" / "join.toml"
    assert secret.stat().st_mode & 0o777 == 0o600 and TOKEN in secret.read_text()
    assert log.read_text().splitlines() == [
        "--user daemon-reload",
        "--user enable --now meshd.service",
    ]
    # A second install replaces the unit and restarts a running daemon on it.
    inst.install(_opts(scope="user", role="observer"))
    assert "--role observer" in inst.unit_file.read_text()
    assert log.read_text().splitlines()[-1] == "--user try-restart meshd.service"
    log.unlink()
    inst.uninstall()
    assert not inst.unit_file.exists() and not secret.exists()
    assert log.read_text().splitlines() == [
        "--user disable --now meshd.service",
        "--user daemon-reload",
    ]
    assert "State dir kept" in out.getvalue()


def test_a_failing_systemctl_is_one_clear_error(tmp_path: Path) -> None:
    exe = tmp_path / "systemctl"
    exe.write_text("#!/bin/sh\necho 'Failed to connect to bus: No medium found' >&2\nexit 1\n")
    exe.chmod(0o755)
    inst = service.Installer(
        "user", out=StringIO(), systemctl=str(exe), run_dir=tmp_path, unit_dir=tmp_path / "u"
    )
    with pytest.raises(MeshError, match="daemon-reload failed: Failed to connect to bus"):
        inst.install(_opts(scope="user"))


def test_status_without_systemd_or_daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHD_STATE_DIR", str(tmp_path / "state"))
    out = StringIO()
    inst = service.Installer("user", out=out, systemctl="/bin/true", run_dir=tmp_path / "no")
    assert inst.status() is False
    text = out.getvalue()
    assert "systemd is not running here" in text and "daemon: not answering" in text


# -- sd_notify ---------------------------------------------------------------------------------


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "n.sock"))
    sock.settimeout(5)
    yield sock
    sock.close()


def test_notify_is_a_no_op_without_a_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    assert not notify.enabled()
    assert notify.ready("x") is False and notify.watchdog_ping() is False
    assert notify.watchdog_period() is None


def test_notify_sends_datagrams(
    tmp_path: Path, listener: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "n.sock"))
    assert notify.ready("up\nand running")
    assert listener.recv(4096) == b"READY=1\nSTATUS=up and running"
    assert notify.stopping()
    assert listener.recv(4096) == b"STOPPING=1"
    assert notify.watchdog_ping() and listener.recv(4096) == b"WATCHDOG=1"
    assert notify.status("hi") and listener.recv(4096) == b"STATUS=hi"


def test_notify_to_an_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"meshd-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify.watchdog_ping()
        assert sock.recv(64) == b"WATCHDOG=1"


def test_notify_never_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert notify.ready() is False
    monkeypatch.setenv("NOTIFY_SOCKET", "relative/path")
    assert notify.ready() is False


def test_watchdog_period(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "n.sock"))
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "10000000")
    assert notify.watchdog_period() == 5.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert notify.watchdog_period() == 5.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # meant for another process
    assert notify.watchdog_period() is None
    monkeypatch.delenv("WATCHDOG_PID")
    for bad in ("", "0", "soon"):
        monkeypatch.setenv("WATCHDOG_USEC", bad)
        assert notify.watchdog_period() is None
    monkeypatch.setenv("WATCHDOG_USEC", "1")
    assert notify.watchdog_period() == notify.MIN_WATCHDOG_PERIOD


async def test_watchdog_task_pings(
    tmp_path: Path, listener: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "n.sock"))
    monkeypatch.setenv("WATCHDOG_USEC", "100000")  # a ping every 50 ms
    listener.setblocking(False)
    task = notify.start_watchdog()
    assert task is not None
    import asyncio

    got: list[bytes] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while len(got) < 3 and loop.time() < deadline:
        try:
            got.append(listener.recv(64))
        except BlockingIOError:
            await asyncio.sleep(0.01)
    task.cancel()
    assert got[:3] == [b"WATCHDOG=1"] * 3
