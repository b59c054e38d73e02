"""The built-in skill packs of ``skill_packs/``: manifests that follow the contract, role
files that carry them, and each pack's ``run(ctx)`` doing its real work.

Each ``main.py`` is imported by path and run with a small fake context whose params are
validated against the pack's own manifest (defaults filled in, as the daemon does).
Network traffic stays on loopback, or inside a network namespace the test creates.
"""

from __future__ import annotations

import contextlib
import importlib.util
import ipaddress
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from meshd.skills.policy import Limits, Permissions
from meshd.skills.spec import PARAM_TYPES, ParamSpec, SkillSpec, validate_params

ROOT = Path(__file__).resolve().parents[3]
PACKS_DIR = ROOT / "skill_packs"
ROLES_DIR = ROOT / "agent_roles"

#: The packs each role carries.
ROLE_PACKS = {
    "network-admin": ["ping-sweep", "tcp-check", "dns-lookup", "net-info", "host-info"],
    "devops": ["disk-usage", "service-status", "top-processes", "host-info"],
    "software-engineer": ["run-command", "host-info"],
    "team-lead": ["host-info"],
    "observer": ["host-info"],
}
PACKS = sorted({p for packs in ROLE_PACKS.values() for p in packs})

TOP_KEYS = {"name", "version", "description", "entry", "idempotent", "requires"}
TOP_KEYS |= {"permissions", "limits", "params"}
PERMISSION_KEYS = {"network", "internet", "privileged", "read", "write"}
LIMIT_KEYS = {"cpu_seconds", "memory_mb", "wall_seconds", "open_files", "processes", "output_kb"}
PARAM_KEYS = {"name", "type", "description", "default", "required", "minimum", "maximum"}
SEMVER = re.compile(r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-[0-9A-Za-z.-]+)?$")
SKILL_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")

#: A /proc/net/route of a host on 192.168.1.0/24 with two default routes (metrics 100,
#: 600) and a docker bridge that is down.
ROUTE_TEXT = (
    "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
    "wlan0\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0\n"
    "eth0\t00000000\t0101A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n"
    "eth0\t0001A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\n"
    "docker0\t000011AC\t00000000\t0000\t0\t0\t0\t0000FFFF\t1500\t0\t0\n"
    "eth0\t0A0A0A0A\t0101A8C0\t0007\t0\t0\t0\tFFFFFFFF\t0\t0\t0\n"
    "garbage line\n"
)
#: A /proc/net/ipv6_route: a prefix route, a default via fd00::1, a local address and
#: the kernel's reject default on lo (which is not a gateway).
IPV6_ROUTE_TEXT = (
    "fd000000000000000000000000000000 40 00000000000000000000000000000000 00 "
    "00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0\n"
    "00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
    "fd000000000000000000000000000001 00000400 00000002 00000000 00000003     eth0\n"
    "00000000000000000000000000000001 80 00000000000000000000000000000000 00 "
    "00000000000000000000000000000000 00000000 00000002 00000000 80200001       lo\n"
    "00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
    "00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo\n"
)


# ---- helpers ----------------------------------------------------------------------------


@cache
def manifest(name: str) -> dict[str, Any]:
    with (PACKS_DIR / name / "skill.toml").open("rb") as f:
        return tomllib.load(f)


@cache
def spec_of(name: str) -> SkillSpec:
    data = manifest(name)
    params = tuple(
        ParamSpec(
            name=p["name"],
            type=p.get("type", "str"),
            description=p.get("description", ""),
            default=p.get("default"),
            required=p.get("required", False),
            minimum=p.get("minimum"),
            maximum=p.get("maximum"),
        )
        for p in data.get("params", [])
    )
    return SkillSpec(name=data["name"], version=data["version"], params=params)


@cache
def load(name: str) -> ModuleType:
    """The pack's main.py, imported by path (no bytecode written into skill_packs/)."""
    path = PACKS_DIR / name / "main.py"
    spec = importlib.util.spec_from_file_location(f"_builtin_pack_{name.replace('-', '_')}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    before = sys.dont_write_bytecode
    sys.dont_write_bytecode = True
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = before
    return module


class FakeCtx:
    """What a pack's run(ctx) sees: validated params, progress and checkpoints kept."""

    def __init__(
        self,
        pack: str,
        params: Mapping[str, object] | None = None,
        *,
        checkpoint_data: bytes | None = None,
        scratch: Path | None = None,
    ) -> None:
        self.params = validate_params(spec_of(pack), params or {})
        self.checkpoint_data = checkpoint_data
        self.scratch = scratch or Path(tempfile.gettempdir())
        self.task_id = "task-test"
        self.cancelled = False
        self.progress_reports: list[tuple[float, str]] = []
        self.checkpoints: list[bytes] = []

    def progress(self, pct: float, message: str = "") -> None:
        self.progress_reports.append((float(pct), str(message)))

    def checkpoint(self, data: bytes) -> None:
        self.checkpoints.append(bytes(data))
        self.checkpoint_data = bytes(data)


def run_pack(pack: str, params: Mapping[str, object] | None = None, **kw: Any) -> Any:
    ctx = FakeCtx(pack, params, **kw)
    return load(pack).run(ctx), ctx


def failure(pack: str, params: Mapping[str, object] | None = None, **kw: Any) -> str:
    """The code of the SkillFailure the pack raises for these params."""
    module = load(pack)
    with pytest.raises(module.SkillFailure) as info:
        module.run(FakeCtx(pack, params, **kw))
    assert str(info.value), "a failure says what went wrong"
    return str(info.value.code)


def role_files() -> dict[str, dict[str, Any]]:
    out = {}
    for path in sorted(ROLES_DIR.glob("*.toml")):
        data = tomllib.loads(path.read_text())
        out[data["name"]] = data
    return out


def free_port() -> int:
    """A loopback port nothing listens on (bound then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- manifests and roles ------------------------------------------------------------------


@pytest.mark.parametrize("pack", PACKS)
def test_manifest_follows_the_contract(pack: str) -> None:
    data = manifest(pack)
    assert set(data) <= TOP_KEYS and {"name", "version", "entry", "description"} <= set(data)
    assert data["name"] == pack and SKILL_NAME.match(pack)
    assert SEMVER.match(data["version"])
    assert isinstance(data["description"], str) and len(data["description"]) > 20
    assert data["entry"] == "main.py" and (PACKS_DIR / pack / "main.py").is_file()
    assert isinstance(data["idempotent"], bool)

    requires = data["requires"]
    assert set(requires) == {"capabilities", "roles"}
    assert requires["capabilities"] and all(isinstance(c, str) for c in requires["capabilities"])
    assert requires["roles"] == []

    perms = data["permissions"]
    assert set(perms) == PERMISSION_KEYS
    assert perms["internet"] is False and perms["privileged"] is False, "no approval needed"
    Permissions(
        network=perms["network"],
        internet=perms["internet"],
        privileged=perms["privileged"],
        read=tuple(perms["read"]),
        write=tuple(perms["write"]),
    )

    limits = data["limits"]
    assert set(limits) == LIMIT_KEYS
    Limits(**limits)  # in range

    names = []
    for p in data.get("params", []):
        assert set(p) <= PARAM_KEYS and {"name", "type", "description"} <= set(p)
        assert p["type"] in PARAM_TYPES and p["description"]
        assert not (p.get("required") and "default" in p)
        names.append(p["name"])
    assert len(names) == len(set(names))
    spec = spec_of(pack)  # ParamSpec checks ranges and types; defaults must validate
    defaults = {p.name: p.default for p in spec.params if p.default is not None}
    assert validate_params(spec, {**defaults, **required_example(pack)}) is not None


def required_example(pack: str) -> dict[str, object]:
    """Values for the required params of each pack (to validate defaults beside them)."""
    examples: dict[str, dict[str, object]] = {
        "ping-sweep": {"cidr": "127.0.0.0/30"},
        "tcp-check": {"host": "127.0.0.1", "ports": ["22"]},
        "dns-lookup": {"name": "localhost"},
        "service-status": {"names": ["ssh"]},
        "run-command": {"command": "ruff", "folder": "/srv/meshd/workspaces/x"},
    }
    return examples.get(pack, {})


def test_each_role_carries_its_packs_and_can_run_them() -> None:
    roles = role_files()
    assert set(roles) == set(ROLE_PACKS)
    for folder in PACKS_DIR.iterdir():  # every folder is a pack
        if folder.is_dir() and folder.name != "__pycache__":
            assert (folder / "skill.toml").is_file() and (folder / "main.py").is_file(), folder
    for role, data in roles.items():
        assert data["skill_packs"] == ROLE_PACKS[role]
        for pack in data["skill_packs"]:
            m = manifest(pack)
            assert set(m["requires"]["capabilities"]) <= set(data["capabilities"]), (role, pack)
            for key in ("cpu_seconds", "memory_mb", "wall_seconds"):
                assert m["limits"][key] <= data["limits"][key], (role, pack, key)


def test_manifests_parse_with_the_pack_module() -> None:
    packmod = pytest.importorskip("meshd.skills.manifest")
    parse_manifest = getattr(packmod, "parse_manifest", None)
    if parse_manifest is None:
        pytest.skip("meshd.skills.manifest has no parse_manifest yet")
    for pack in PACKS:
        path = PACKS_DIR / pack / "skill.toml"
        m = parse_manifest(path.read_text(), str(path))
        assert m.spec.name == pack
        assert list(m.spec.capabilities) == manifest(pack)["requires"]["capabilities"]
        assert m.permissions.needs_approval is False
        assert [p.name for p in m.spec.params] == [p.name for p in spec_of(pack).params]


# ---- tcp-check ----------------------------------------------------------------------------


def test_tcp_check_open_and_closed_ports_on_loopback() -> None:
    closed = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        result, ctx = run_pack(
            "tcp-check", {"host": "127.0.0.1", "ports": [str(port), str(closed)], "timeout": 1.0}
        )
    assert result["address"] == "127.0.0.1" and result["family"] == "ipv4"
    by_port = {r["port"]: r for r in result["ports"]}
    assert by_port[port]["state"] == "open" and by_port[closed]["state"] == "closed"
    assert all(isinstance(r["latency_ms"], float) for r in by_port.values())
    assert result["open"] == [port] and result["closed"] == [closed] and result["filtered"] == []
    assert ctx.progress_reports[-1][0] == 100.0


def test_tcp_check_takes_one_port_a_range_and_refuses_bad_ones() -> None:
    closed = free_port()
    result, _ = run_pack("tcp-check", {"host": "localhost", "ports": str(closed)})  # CLI form
    assert [r["state"] for r in result["ports"]] == ["closed"]
    mod = load("tcp-check")
    assert mod.parse_ports(["22", "8000-8002", "22"]) == [22, 8000, 8001, 8002]
    assert mod.parse_ports(443) == [443]
    for bad in (["0"], ["65536"], ["80-79"], ["http"], ["1-1000"]):
        assert failure("tcp-check", {"host": "127.0.0.1", "ports": bad}) == "bad_params"


# ---- ping-sweep ---------------------------------------------------------------------------


def test_ping_sweep_finds_loopback_hosts_and_says_how() -> None:
    result, ctx = run_pack("ping-sweep", {"cidr": "127.0.0.0/30", "timeout": 0.5})
    assert result["up"] == ["127.0.0.1", "127.0.0.2"] and result["up_count"] == 2
    assert result["hosts"] == 2 and result["scanned"] == 2 and result["resumed_from"] == 0
    assert result["method"] in ("icmp", "tcp") and result["method_note"]
    if result["method"] == "tcp":
        assert result["tcp_ports"] == [22, 80, 443]
    state = json.loads(ctx.checkpoints[-1])
    assert state["next"] == 2 and state["up"] == ["127.0.0.1", "127.0.0.2"]
    assert ctx.progress_reports[-1][0] == 100.0


def test_ping_sweep_resumes_after_the_checkpointed_index() -> None:
    mod = load("ping-sweep")
    net = ipaddress.ip_network("127.0.0.0/30")
    saved = mod.make_checkpoint(net, 1, ["127.0.0.1"], {"127.0.0.1": 0.25})
    result, ctx = run_pack(
        "ping-sweep", {"cidr": "127.0.0.0/30", "method": "tcp"}, checkpoint_data=saved
    )
    assert result["resumed_from"] == 1 and result["scanned"] == 1
    assert result["up"] == ["127.0.0.1", "127.0.0.2"]
    assert result["latency_ms"]["127.0.0.1"] == 0.25  # carried over, not probed again
    assert "from host 1" in ctx.progress_reports[0][1]
    # A checkpoint of another range (or garbage) is ignored: the sweep starts over.
    other = mod.make_checkpoint(ipaddress.ip_network("127.0.1.0/30"), 2, [], {})
    for data in (other, b"\xff not json"):
        result, _ = run_pack("ping-sweep", {"cidr": "127.0.0.0/30"}, checkpoint_data=data)
        assert result["resumed_from"] == 0 and result["scanned"] == 2


def test_ping_sweep_refuses_bad_ranges_before_probing() -> None:
    # Loopback ranges only: even a sweep that wrongly went ahead would stay on this host.
    assert failure("ping-sweep", {"cidr": "127.0.0.0/16"}) == "too_many_hosts"
    assert failure("ping-sweep", {"cidr": "127.0.0.0/21", "max_hosts": 1024}) == "too_many_hosts"
    assert failure("ping-sweep", {"cidr": "127.0.0.0/29", "max_hosts": 4}) == "too_many_hosts"
    assert failure("ping-sweep", {"cidr": "not-a-net"}) == "bad_params"
    assert failure("ping-sweep", {"cidr": "127.0.0.1/32", "method": "arp"}) == "bad_params"
    mod = load("ping-sweep")
    for cidr in ("10.0.0.0/30", "10.0.0.0/31", "10.0.0.7/32", "fd00::/126", "fd00::/128"):
        net = ipaddress.ip_network(cidr)
        assert mod.host_count(net) == len(list(mod.hosts(net)))


def _can_make_netns() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"):
        return False
    done = subprocess.run(["unshare", "--net", "true"], capture_output=True, check=False)
    return done.returncode == 0


ICMP_SCRIPT = """
import importlib.util, json, sys, types
spec = importlib.util.spec_from_file_location("ping_sweep", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
out = []
for cidr in ("127.0.0.0/30", "10.255.255.0/30"):
    ctx = types.SimpleNamespace(
        params={"cidr": cidr, "timeout": 0.3, "max_hosts": 256, "concurrency": 8,
                "method": "icmp", "tcp_ports": ["22"]},
        progress=lambda pct, msg="": None, checkpoint=lambda data: None,
        checkpoint_data=None, cancelled=False)
    out.append(mod.run(ctx))
print(json.dumps(out))
"""


@pytest.mark.skipif(not _can_make_netns(), reason="needs root, unshare and ip")
def test_ping_sweep_uses_ping_sockets_where_the_group_range_allows() -> None:
    # In a network namespace of our own (only lo): allow ping sockets for every group
    # there, then sweep loopback (answers) and a range with no route (no answers).
    script = (
        "ip link set lo up && "
        "echo '0 2147483647' > /proc/sys/net/ipv4/ping_group_range && "
        'exec "$0" -c "$1" "$2"'
    )
    done = subprocess.run(
        ["unshare", "--net", "--", "sh", "-c", script, sys.executable, ICMP_SCRIPT,
         str(PACKS_DIR / "ping-sweep" / "main.py")],
        capture_output=True, text=True, timeout=30, check=False,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    loopback, unrouted = json.loads(done.stdout)
    assert loopback["method"] == "icmp" and loopback["up"] == ["127.0.0.1", "127.0.0.2"]
    assert unrouted["method"] == "icmp" and unrouted["up"] == []


# ---- dns-lookup ---------------------------------------------------------------------------


def test_dns_lookup_of_localhost() -> None:
    # /etc/hosts answers: no resolver is asked (family any or ipv4 only).
    result, _ = run_pack("dns-lookup", {"name": "localhost"})
    assert result["addresses"] and set(result["addresses"]) <= {"127.0.0.1", "::1"}
    assert sorted(result["ipv4"] + result["ipv6"]) == sorted(result["addresses"])
    result, _ = run_pack("dns-lookup", {"name": "localhost", "family": "ipv4"})
    assert result["addresses"] == ["127.0.0.1"] and result["family"] == "ipv4"
    result, _ = run_pack("dns-lookup", {"name": "::1"})  # a literal is returned as is
    assert result["ipv6"] == ["::1"]


@pytest.mark.parametrize("name", ["bad..name", "-leading.dash", "sp ace", "a" * 64 + ".com", ""])
def test_dns_lookup_refuses_a_malformed_name_without_asking(name: str) -> None:
    assert failure("dns-lookup", {"name": name}) == "bad_name"


def test_dns_lookup_refuses_an_unknown_family() -> None:
    assert failure("dns-lookup", {"name": "localhost", "family": "mx"}) == "bad_params"


# ---- net-info ---------------------------------------------------------------------------


def test_net_info_lists_lo_with_its_address() -> None:
    result, _ = run_pack("net-info")
    by_name = {i["name"]: i for i in result["interfaces"]}
    assert "lo" in by_name
    assert "127.0.0.1" in [a["address"] for a in by_name["lo"]["ipv4"]]
    assert {"ipv4", "ipv6"} == set(result["routes"]) == set(result["default_gateway"])
    assert result["source"] in ("ifaddr", "proc")
    # The fallback (ioctls and /proc/net/if_inet6) sees lo too.
    fallback = load("net-info").interfaces_proc()
    assert "127.0.0.1" in [a["address"] for a in fallback["lo"]["ipv4"]]


def test_net_info_parses_proc_net_route() -> None:
    mod = load("net-info")
    routes = mod.parse_route(ROUTE_TEXT)
    assert len(routes) == 5  # header and the garbage line skipped
    assert routes[0] == {
        "interface": "wlan0",
        "destination": "0.0.0.0/0",
        "gateway": "192.168.1.1",
        "flags": "UG",
        "metric": 600,
        "mtu": 0,
        "up": True,
    }
    assert routes[2]["destination"] == "192.168.1.0/24" and routes[2]["gateway"] is None
    assert routes[3]["destination"] == "172.17.0.0/16" and routes[3]["up"] is False
    assert routes[4]["destination"] == "10.10.10.10/32" and routes[4]["flags"] == "UGH"
    assert mod.default_gateway(routes) == {
        "gateway": "192.168.1.1",
        "interface": "eth0",
        "metric": 100,
    }
    assert mod.default_gateway(mod.parse_route(ROUTE_TEXT.splitlines()[0])) is None


def test_net_info_parses_proc_net_ipv6_route() -> None:
    mod = load("net-info")
    routes = mod.parse_ipv6_route(IPV6_ROUTE_TEXT)
    assert [r["destination"] for r in routes] == ["fd00::/64", "::/0", "::1/128", "::/0"]
    assert routes[1]["gateway"] == "fd00::1" and routes[1]["metric"] == 1024
    assert routes[2]["local"] is True and routes[3]["flags"] == "!"
    assert mod.default_gateway(routes) == {
        "gateway": "fd00::1",
        "interface": "eth0",
        "metric": 1024,
    }
    assert mod.default_gateway([routes[3]]) is None  # the reject route on lo


# ---- disk-usage ---------------------------------------------------------------------------


def test_disk_usage_of_a_folder(tmp_path: Path) -> None:
    result, _ = run_pack("disk-usage", {"paths": [str(tmp_path)], "threshold": 0.0})
    (entry,) = result["paths"]
    assert entry["path"] == str(tmp_path) and entry["total"] > 0
    assert entry["used"] + entry["free"] <= entry["total"]
    assert 0.0 <= entry["percent"] <= 100.0
    assert str(tmp_path).startswith(entry["mount"])
    assert result["alerts"] == [str(tmp_path)]  # threshold 0: everything alerts
    default, _ = run_pack("disk-usage")
    assert [p["path"] for p in default["paths"]] == ["/"]


def test_disk_usage_refuses_missing_and_relative_paths(tmp_path: Path) -> None:
    assert failure("disk-usage", {"paths": [str(tmp_path / "nope")]}) == "not_found"
    assert failure("disk-usage", {"paths": ["relative/path"]}) == "bad_params"


# ---- service-status ----------------------------------------------------------------------


def test_service_status_answers_per_service_whatever_the_host() -> None:
    result, _ = run_pack("service-status", {"names": ["ssh", "cron.timer"]})
    services = result["services"]
    assert [s["name"] for s in services] == ["ssh", "cron.timer"]
    assert [s["unit"] for s in services] == ["ssh.service", "cron.timer"]
    assert all(isinstance(s["status"], str) and s["status"] for s in services)
    if not result["systemctl"]:
        assert all(s["error"].startswith("systemctl unavailable") for s in services)
        assert all(s["status"] == "unknown" for s in services)


def test_service_status_refuses_what_is_not_a_unit_name() -> None:
    for bad in (["ssh;reboot"], ["--all"], ["a b"], ["$(id)"]):
        assert failure("service-status", {"names": bad}) == "bad_params"


SHOW_OUTPUT = """\
Id=ssh.service
Description=OpenBSD Secure Shell server
LoadState=loaded
ActiveState=active
SubState=running
UnitFileState=enabled
MainPID=812
ActiveEnterTimestamp=Sat 2026-11-21 06:00:01 UTC
NRestarts=0

Id=nope.service
Description=nope.service
LoadState=not-found
ActiveState=inactive
SubState=dead
UnitFileState=
MainPID=0
ActiveEnterTimestamp=
NRestarts=0
"""


def _fake_systemctl(folder: Path, body: str) -> str:
    exe = folder / "systemctl"
    exe.write_text("#!/bin/sh\n" + body)
    exe.chmod(0o755)
    return str(exe)


def test_service_status_reads_systemctl_show(tmp_path: Path) -> None:
    mod = load("service-status")
    blocks = mod.parse_show(SHOW_OUTPUT)
    assert [b["Id"] for b in blocks] == ["ssh.service", "nope.service"]
    exe = _fake_systemctl(tmp_path, f"cat <<'EOF'\n{SHOW_OUTPUT}EOF\n")
    services, problem = mod.statuses(["ssh", "nope"], exe, booted_dir=str(tmp_path))
    assert problem is None
    ssh, nope = services
    assert ssh["status"] == "active" and ssh["sub_state"] == "running"
    assert ssh["main_pid"] == 812 and ssh["unit_file_state"] == "enabled"
    assert nope["status"] == "not-found" and nope["main_pid"] is None
    # systemd not reachable: every service says so, nothing fails.
    down = _fake_systemctl(tmp_path, "echo 'Failed to connect to bus: Host is down' >&2\nexit 1\n")
    services, problem = mod.statuses(["ssh"], down, booted_dir=str(tmp_path))
    assert problem is not None and problem.startswith("systemctl unavailable")
    assert services[0]["status"] == "unknown" and "Failed to connect" in services[0]["error"]
    services, problem = mod.statuses(["ssh"], None)
    assert problem == "systemctl unavailable: systemctl is not installed"


# ---- top-processes ----------------------------------------------------------------------


def test_top_processes_lists_at_most_n() -> None:
    result, _ = run_pack("top-processes", {"n": 3, "interval": 0.05})
    assert 1 <= len(result["processes"]) <= 3
    first = result["processes"][0]
    assert {"pid", "name", "user", "rss", "cpu_time_s", "cpu_percent"} <= set(first)
    cpu = [p["cpu_percent"] for p in result["processes"]]
    assert cpu == sorted(cpu, reverse=True)


def test_top_processes_includes_this_process_when_n_is_large() -> None:
    result, _ = run_pack("top-processes", {"n": 500, "sort": "mem", "interval": 0.05})
    assert result["total_processes"] <= 500, "more processes than the test can list"
    mine = [p for p in result["processes"] if p["pid"] == os.getpid()]
    assert len(mine) == 1 and mine[0]["rss"] > 0 and mine[0]["cpu_time_s"] > 0
    rss = [p["rss"] for p in result["processes"]]
    assert rss == sorted(rss, reverse=True)
    assert failure("top-processes", {"sort": "io"}) == "bad_params"


def test_top_processes_parses_a_name_with_spaces_and_parens() -> None:
    line = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 "
    line += "12345 10000000 2048 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0"
    stat = load("top-processes").parse_stat(line)
    assert stat["pid"] == 4242 and stat["name"] == "my (odd) name" and stat["state"] == "S"
    assert stat["ticks"] == 300 and stat["threads"] == 3 and stat["start_ticks"] == 12345
    assert stat["rss"] == 2048 * os.sysconf("SC_PAGE_SIZE")


# ---- run-command --------------------------------------------------------------------------

WORKSPACES = "/tmp/meshd-workspaces"


@pytest.fixture
def workspace() -> Iterator[Path]:
    """A folder under the pack's /tmp workspace root (one of its permissions.read)."""
    assert WORKSPACES in load("run-command").allowed_roots()
    os.makedirs(WORKSPACES, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="test-", dir=WORKSPACES))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.rmdir(WORKSPACES)  # only if empty


def test_run_command_runs_an_allow_listed_command(workspace: Path, tmp_path: Path) -> None:
    result, ctx = run_pack(
        "run-command",
        {"command": "ruff", "args": ["--version"], "folder": str(workspace)},
        scratch=tmp_path,
    )
    assert result["exit_code"] == 0 and result["timed_out"] is False
    assert result["stdout_tail"].startswith("ruff ") and result["command"] == "ruff --version"
    assert result["folder"] == os.path.realpath(workspace)
    assert ctx.progress_reports[-1] == (100.0, "exit 0")


@pytest.mark.skipif(not shutil.which("make"), reason="make is not installed")
def test_run_command_reports_failures_and_timeouts(workspace: Path, tmp_path: Path) -> None:
    (workspace / "Makefile").write_text(
        "ok:\n\t@echo built\nfail:\n\t@echo broken >&2; exit 3\nslow:\n\t@sleep 30 & sleep 20\n"
    )
    base = {"command": "make", "folder": str(workspace)}
    result, _ = run_pack("run-command", {**base, "args": ["ok"]}, scratch=tmp_path)
    assert result["exit_code"] == 0 and result["stdout_tail"] == "built\n"
    result, _ = run_pack("run-command", {**base, "args": ["fail"]}, scratch=tmp_path)
    assert result["exit_code"] == 2 and "broken" in result["stderr_tail"]
    result, _ = run_pack(
        "run-command", {**base, "args": ["slow"], "timeout": 1.0}, scratch=tmp_path
    )
    assert result["timed_out"] is True and result["exit_code"] is None
    assert result["duration_s"] < 5.0


@pytest.mark.parametrize(
    ("command", "args"),
    [
        ("rm", ["-rf", "x"]),
        ("sh", ["-c", "id"]),
        ("/usr/bin/ruff", ["check"]),
        ("python", ["-c", "print(1)"]),
        ("python", ["script.py"]),
        ("python -m http.server", []),
        ("ruff", ["check;id"]),
        ("ruff", ["check", "$(id)"]),
        ("ruff", ["check", "`id`"]),
        ("ruff", ["check", "a b"]),
        ("ruff", ["check", "x|y"]),
        ("ruff", ["check", "x>y"]),
        ("ruff", ["check", "/etc"]),
        ("ruff", ["--config=/etc/x.toml"]),
        ("ruff", ["../elsewhere"]),
        ("make", ["CC=rm"]),
        ("make", ["--eval=x"]),
        ("mypy", ["--install-types"]),
    ],
)
def test_run_command_refuses_what_is_not_allowed(
    workspace: Path, command: str, args: list[str]
) -> None:
    params = {"command": command, "args": args, "folder": str(workspace)}
    assert failure("run-command", params) == "not_allowed"


def test_run_command_refuses_folders_outside_the_roots(workspace: Path, tmp_path: Path) -> None:
    outside = tmp_path / "project"
    outside.mkdir()
    assert failure("run-command", {"command": "ruff", "folder": str(outside)}) == "not_allowed"
    assert failure("run-command", {"command": "ruff", "folder": "relative"}) == "not_allowed"
    sneaky = f"{workspace}/../../etc"
    assert failure("run-command", {"command": "ruff", "folder": sneaky}) == "not_allowed"
    (workspace / "link").symlink_to(outside)  # a link out of the root is followed first
    link = str(workspace / "link")
    assert failure("run-command", {"command": "ruff", "folder": link}) == "not_allowed"
    missing = str(workspace / "missing")
    assert failure("run-command", {"command": "ruff", "folder": missing}) == "not_found"


# ---- host-info ----------------------------------------------------------------------------


def test_host_info_returns_the_documented_keys() -> None:
    mod = load("host-info")
    result, _ = run_pack("host-info")
    assert tuple(result) == mod.KEYS
    assert result["hostname"] == socket.gethostname()
    assert result["cpu_count"] == os.cpu_count() and result["cpu_count"] >= 1
    assert result["python"]["version"] == ".".join(map(str, sys.version_info[:3]))
    assert set(result["os"]) == {"name", "id", "version_id", "pretty_name"}
    assert set(result["kernel"]) == {"release", "version"} and result["kernel"]["release"]
    if Path("/proc/meminfo").exists():
        assert result["memory_total"] > 0 and result["uptime_s"] > 0
    assert len(result["load_avg"]) == 3
    cpuinfo = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7763\n"
    assert mod.parse_cpu_model(cpuinfo) == "AMD EPYC 7763"
    assert mod.parse_os_release('NAME="Debian GNU/Linux"\nID=debian\n# x\n') == {
        "NAME": "Debian GNU/Linux",
        "ID": "debian",
    }


# ---- results are msgpack-encodable ---------------------------------------------------------


def test_results_are_msgpack_encodable(tmp_path: Path) -> None:
    msgpack = pytest.importorskip("msgpack")
    for pack, params in (
        ("host-info", {}),
        ("net-info", {}),
        ("disk-usage", {"paths": [str(tmp_path)]}),
        ("top-processes", {"n": 5, "interval": 0.0}),
        ("service-status", {"names": ["ssh"]}),
        ("tcp-check", {"host": "127.0.0.1", "ports": [str(free_port())]}),
    ):
        result, _ = run_pack(pack, params, scratch=tmp_path)
        assert msgpack.unpackb(msgpack.packb(result), raw=False) is not None


# ---- through the sandbox, end to end --------------------------------------------------------


def _sandboxed(pack: str, root: Path) -> tuple[Any, Any]:
    """(runner, manifest) for ``pack`` copied world-readable under ``root``, or a skip
    while meshd.skills.sandbox / meshd.skills.manifest are not there."""
    sandbox = pytest.importorskip("meshd.skills.sandbox")
    sandboxed = getattr(sandbox, "SandboxedSkill", None)
    if sandboxed is None:
        pytest.skip("meshd.skills.sandbox has no SandboxedSkill yet")
    packmod = pytest.importorskip("meshd.skills.manifest")
    if not hasattr(packmod, "parse_manifest"):
        pytest.skip("meshd.skills.manifest has no parse_manifest yet")
    # A world-readable copy: the sandbox may run the skill as an unprivileged user.
    folder = root / pack
    shutil.copytree(PACKS_DIR / pack, folder, ignore=shutil.ignore_patterns("__pycache__"))
    for p in (folder, *folder.iterdir()):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    m = packmod.parse_manifest((folder / "skill.toml").read_text(), str(folder))
    runner = sandboxed(m.spec, folder, m.entry, m.limits, m.permissions, scratch_root=root)
    return runner, m


@pytest.fixture
def open_root() -> Iterator[Path]:
    """A temporary folder others may traverse (tmp_path is 0700 for its owner)."""
    root = Path(tempfile.mkdtemp(prefix="meshd-pack-test-"))
    os.chmod(root, 0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def test_tcp_check_through_the_sandbox(open_root: Path) -> None:
    from meshd.skills.api import SkillContext

    runner, m = _sandboxed("tcp-check", open_root)
    closed = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        params = validate_params(m.spec, {"host": "127.0.0.1", "ports": [str(port), str(closed)]})
        result = await runner.run(SkillContext(params, task_id="sandboxed-tcp-check"))
    assert result["open"] == [port] and result["closed"] == [closed]


@pytest.mark.parametrize(
    ("pack", "params", "key"),
    [
        ("host-info", {}, "hostname"),
        ("net-info", {}, "interfaces"),
        ("disk-usage", {"paths": ["/"]}, "paths"),
        ("top-processes", {"n": 3, "interval": 0.05}, "processes"),
        ("service-status", {"names": ["ssh"]}, "services"),
        ("dns-lookup", {"name": "localhost", "family": "ipv4"}, "addresses"),
        ("ping-sweep", {"cidr": "127.0.0.0/30", "timeout": 0.5}, "up"),
    ],
)
async def test_packs_run_in_the_sandbox(
    open_root: Path, pack: str, params: dict[str, object], key: str
) -> None:
    # Under the sandbox's uid, limits, Landlock and (without `network`) network namespace.
    from meshd.skills.api import SkillContext

    runner, m = _sandboxed(pack, open_root)
    result = await runner.run(SkillContext(validate_params(m.spec, params), task_id="t"))
    assert result[key], result
