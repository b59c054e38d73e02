"""The command line as a user meets it: clear one-line errors and exit codes."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import Mesh, run_meshctl, run_meshd, wait_for

pytestmark = pytest.mark.integration


def test_meshctl_without_a_daemon_says_so_in_one_line(tmp_path: Path) -> None:
    out = run_meshctl("--state-dir", str(tmp_path / "nothing"), "status")
    assert out.returncode == 3
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "meshd is not running" in lines[0]
    assert "Traceback" not in out.stderr


def test_unknown_role_lists_known_roles(tmp_path: Path) -> None:
    out = run_meshd("start", "--role", "wizard", "--state-dir", str(tmp_path), "--no-mdns")
    assert out.returncode == 2
    assert "unknown role 'wizard'" in out.stderr and "network-admin" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "mesh.key").exists()  # nothing created on bad input


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--listen", "127.0.0.1:notaport"], "not a number"),
        (["--listen", "example.org:7000"], "give an IP address"),
        (["--peer", ":7000"], "missing host"),
        (["--join", "meshd1-abc"], "join token"),
        (["--priority", "5000"], "1000"),
        (["--log-level", "loud"], "unknown log level"),
    ],
)
def test_bad_start_arguments_are_clear_errors(
    tmp_path: Path, args: list[str], message: str
) -> None:
    out = run_meshd("start", "--role", "devops", "--state-dir", str(tmp_path / "s"), *args)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_init_token_and_join_mismatch(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    out = run_meshd("init", "--state-dir", str(a))
    assert out.returncode == 0 and "Created a new mesh" in out.stdout
    token = run_meshd("token", "--state-dir", str(a)).stdout.strip()
    assert token.startswith("meshd1-") and token in out.stdout
    assert run_meshd("init", "--state-dir", str(b), "--join", token).returncode == 0
    assert run_meshd("token", "--state-dir", str(b)).stdout.strip() == token
    other = run_meshd("init", "--state-dir", str(tmp_path / "c"))
    other_token = run_meshd("token", "--state-dir", str(tmp_path / "c")).stdout.strip()
    assert other.returncode == 0
    clash = run_meshd("init", "--state-dir", str(b), "--join", other_token)
    assert clash.returncode == 2 and "already belongs to mesh" in clash.stderr
    assert run_meshd("token", "--state-dir", str(b)).stdout.strip() == token  # unchanged
    missing = run_meshd("token", "--state-dir", str(tmp_path / "none"))
    assert missing.returncode == 2 and "no mesh" in missing.stderr


def test_second_daemon_on_same_state_dir_refuses(mesh: Mesh) -> None:
    a = mesh.add("a").start()
    a.wait_ready()
    out = run_meshd(
        "start",
        "--role",
        "devops",
        "--state-dir",
        str(a.state_dir),
        "--no-mdns",
        "--listen",
        "127.0.0.1:0",
    )
    assert out.returncode == 4
    assert "already running on state dir" in out.stderr
    assert a.status()["self"]["id"]  # the first one is unharmed


def test_status_table_and_json(mesh: Mesh) -> None:
    import json

    a = mesh.add("alpha", role="team-lead").start()
    a.wait_ready()
    b = mesh.add("beta", role="observer", peers=(a.seed,)).start()
    b.wait_ready()
    wait_for(lambda: len(a.status()["peers"]) == 1, what="beta to join")
    table = run_meshctl("--state-dir", str(a.state_dir), "status")
    assert table.returncode == 0, table.stderr
    assert "alpha" in table.stdout and "beta" in table.stdout and "observer" in table.stdout
    js = run_meshctl("--state-dir", str(a.state_dir), "status", "--json")
    data = json.loads(js.stdout)
    assert set(data) >= {"self", "lead", "peers"}
    peer = data["peers"][0]
    assert set(peer) >= {"id", "name", "role", "state", "priority", "address", "last_seen"}
    assert peer["state"] in {"alive", "suspect", "dead", "left"}
    assert data["self"]["priority"] == 100 and peer["priority"] == 0


def test_demo_forms_a_mesh_with_a_lead_and_cleans_up() -> None:
    out = run_meshd("demo", "--nodes", "3", "--base-port", "0", "--duration", "1", timeout=90)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "All 3 nodes see each other and follow one lead" in out.stdout
    assert "lead: node1 (term" in out.stdout  # team-lead has the highest priority
    root = out.stdout.split("state under ", 1)[1].split(")", 1)[0]
    assert not Path(root).exists()  # temporary state removed


def test_status_watch_refreshes_until_interrupted(mesh: Mesh) -> None:
    import signal
    import subprocess
    import sys

    a = mesh.add("watched").start()
    a.wait_ready()
    cmd = [sys.executable, "-m", "meshd.cli.meshctl_app", "--state-dir", str(a.state_dir)]
    proc = subprocess.Popen(
        [*cmd, "status", "--watch", "--interval", "0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        frames = 0
        for line in proc.stdout:  # bounded: the daemon answers every 0.1 s
            if line.startswith("mesh "):
                frames += 1
                if frames == 3:
                    break
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert frames == 3
    assert proc.returncode == 0 and "Traceback" not in err
