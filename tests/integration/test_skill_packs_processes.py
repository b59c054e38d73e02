"""Skill packs across real daemons: write, pack, install, publish, run by delegation on
another host, refuse a tampered pack, approval for a skill that reaches the internet, and
a revocation that stops a pack everywhere."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from harness import Daemon, Mesh, all_see_all, run_meshctl, wait_for

from meshd.client import TaskFailed

pytestmark = pytest.mark.integration

HELLO = """
def run(ctx):
    ctx.progress(50, "greeting")
    return {"greeting": "hello " + ctx.params["who"], "cwd_is_scratch": str(ctx.scratch)}
"""


def start(mesh: Mesh, roles: list[tuple[str, str]]) -> list[Daemon]:
    name, role = roles[0]
    first = mesh.add(name, role=role).start()
    first.wait_ready()
    nodes = [first] + [mesh.add(n, role=r, peers=(first.seed,)).start() for n, r in roles[1:]]
    for d in nodes:
        d.wait_ready()
    wait_for(lambda: all_see_all(nodes), what="mesh to form")
    wait_for(lambda: all(d.status()["lead"] for d in nodes), what="a lead")
    return nodes


def ctl(d: Daemon, *args: str) -> Any:
    return run_meshctl("--state-dir", str(d.state_dir), *args, timeout=60)


def write_skill(
    root: Path, name: str, version: str, extra: str = "", internet: bool = False
) -> Path:
    folder = root / name
    out = run_meshctl("skill", "new", name, "--dir", str(folder))
    assert out.returncode == 0, out.stderr
    toml = (folder / "skill.toml").read_text()
    lines = [ln for ln in toml.splitlines() if not ln.startswith("version")]
    text = "\n".join(lines)
    text = f'version = "{version}"\n' + text
    if internet:
        text = text.replace("internet = false", "internet = true")
    (folder / "skill.toml").write_text(text + "\n" + extra)
    (folder / "main.py").write_text(HELLO)
    return folder


def rejected(d: Daemon) -> dict[str, int]:
    """The daemon's refusal counters (``frames_rejected_total`` by reason)."""
    return dict(d.status()["counters"]["rejected"])


def own_key(d: Daemon) -> str:
    """The daemon's own Ed25519 key (it signs its packs and revocations)."""
    rows = json.loads(ctl(d, "skill", "trust", "list", "--json").stdout)
    return str(next(r["key"] for r in rows if r["source"] == "this node"))


def names(d: Daemon) -> dict[str, str]:
    rows = json.loads(ctl(d, "skill", "list", "--json").stdout)
    return {r["name"]: r["version"] for r in rows if r["node"] == d.name}


def test_pack_publish_install_and_run_on_another_host(mesh: Mesh, tmp_path: Path) -> None:
    a, b, c = start(mesh, [("a", "team-lead"), ("b", "network-admin"), ("c", "devops")])
    folder = write_skill(
        tmp_path, "hello", "1.0.0", '[[params]]\nname = "who"\ntype = "str"\nrequired = true\n'
    )
    archive = tmp_path / "hello.pack"
    out = ctl(a, "skill", "pack", str(folder), "-o", str(archive))
    assert out.returncode == 0, out.stderr
    # A tampered copy is refused with the reason, and nothing is installed.
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad = tmp_path / "bad.pack"
    bad.write_bytes(bytes(data))
    out = ctl(b, "skill", "install", str(bad))
    assert out.returncode != 0 and "refused" in out.stderr, out.stderr
    assert "hello" not in names(b)
    # Installed on a: the others' catalogs learn it, but only a publication spreads it.
    assert ctl(a, "skill", "install", str(archive)).returncode == 0

    def b_sees_a_holding_it() -> bool:
        rows = json.loads(ctl(b, "skill", "list", "--mesh", "--json").stdout)
        return any(r["node"] == "a" and r["name"] == "hello" for r in rows)

    wait_for(b_sees_a_holding_it, what="b's catalog to list a's hello")
    assert "hello" not in names(b)
    # Publish: b and c fetch, verify and install it.
    assert ctl(a, "skill", "publish", "hello").returncode == 0
    wait_for(lambda: names(b).get("hello") == "1.0.0" and names(c).get("hello") == "1.0.0",
             what="b and c to install the published pack")  # fmt: skip
    mesh_rows = json.loads(ctl(a, "skill", "list", "--mesh", "--json").stdout)
    assert {(r["node"], r["version"]) for r in mesh_rows if r["name"] == "hello"} >= {
        ("a", "1.0.0"),
        ("b", "1.0.0"),
        ("c", "1.0.0"),
    }
    # Run it on b by delegation from c; parameters checked against the manifest first.
    out = ctl(c, "delegate", "hello", "who=mesh", "--node", "b", "--json")
    assert out.returncode == 0, out.stderr
    task = json.loads(out.stdout)
    assert task["result"]["greeting"] == "hello mesh"
    assert task["assigned_name"] == "b"
    out = ctl(c, "delegate", "hello")
    assert out.returncode == 2 and "who" in out.stderr
    # describe shows the parameters and, after the run, the statistics on b.
    info = json.loads(ctl(b, "skill", "describe", "hello", "--json").stdout)
    assert "who" in [p["name"] for p in info["params"]] and info["stats"]["runs"] == 1
    # c neither signed the pack nor is a revoker on a and b: its revocation applies on c
    # (its operator's node) only; a and b refuse it, and count and audit the refusal.
    pack_id = info["pack_id"]
    assert ctl(c, "skill", "revoke", "--pack", pack_id).returncode == 0
    wait_for(lambda: rejected(b).get("revoke_not_entitled", 0) >= 1
             and rejected(a).get("revoke_not_entitled", 0) >= 1,
             what="a and b to refuse c's revocation")  # fmt: skip
    assert "hello" not in names(c)
    assert "hello" in names(a) and "hello" in names(b)
    refused = [r for r in b.client().audit() if r["type"] == "SKILL_REVOKE_REFUSED"]
    assert refused and refused[0]["sent_by_name"] == "c" and refused[0]["target"] == pack_id
    # Once a and b take c's key as a revoker, c's revocation (published again) applies:
    # it stops the pack everywhere; b refuses to run it, origins refuse to send it.
    c_key = own_key(c)
    for d in (a, b):
        assert ctl(d, "skill", "trust", "add", c_key, "--revoker").returncode == 0
    assert ctl(c, "skill", "revoke", "--pack", pack_id).returncode == 0
    wait_for(lambda: "hello" not in names(b) and "hello" not in names(a),
             what="the revoked pack disabled on a and b")  # fmt: skip
    revoked = [r for r in b.client().audit() if r["type"] == "SKILL_PACK_REVOKED"]
    assert revoked[-1]["by"] == c_key and revoked[-1]["by_revoker"] is True
    out = ctl(c, "delegate", "hello", "who=x")
    assert out.returncode != 0
    assert "revoked" in out.stderr or "unknown skill" in out.stderr, out.stderr
    # And a re-install of the revoked pack is refused.
    out = ctl(b, "skill", "install", str(archive))
    assert out.returncode != 0 and "revoked" in out.stderr, out.stderr


def test_a_skill_that_reaches_the_internet_waits_for_approval(mesh: Mesh, tmp_path: Path) -> None:
    a, b = start(mesh, [("a", "team-lead"), ("b", "network-admin")])
    folder = write_skill(
        tmp_path, "fetcher", "1.0.0",
        '[[params]]\nname = "who"\ntype = "str"\nrequired = true\n', internet=True,
    )  # fmt: skip
    archive = tmp_path / "fetcher.pack"
    assert ctl(a, "skill", "pack", str(folder), "-o", str(archive)).returncode == 0
    assert ctl(a, "skill", "install", str(archive)).returncode == 0
    with b.client() as client:
        wait_for(lambda: client.call("skill_describe", name="fetcher"), what="b to know fetcher")
        held = client.delegate("fetcher", {"who": "x"}, node="a")
        wait_for(lambda: client.task(held.task_id)["state"] == "waiting_approval",
                 what="the task to wait for approval")  # fmt: skip
        assert ctl(b, "approve", held.task_id).returncode == 0
        assert held.result(timeout=30)["greeting"] == "hello x"
        denied = client.delegate("fetcher", {"who": "y"}, node="a")
        wait_for(lambda: client.task(denied.task_id)["state"] == "waiting_approval",
                 what="the second task to wait")  # fmt: skip
        out = ctl(a, "deny", denied.task_id, "--reason", "not today")
        assert out.returncode == 0, out.stderr
        with pytest.raises(TaskFailed) as failed:
            denied.result(timeout=30)
        assert failed.value.code == "denied"
    kinds = [r["type"] for r in a.client().audit()]
    assert "TASK_APPROVED" in kinds and "TASK_DENIED" in kinds and "SKILL_INSTALLED" in kinds
    # Removing it: gone from the list; an unknown name is a usage error.
    assert ctl(a, "skill", "remove", "fetcher").returncode == 0
    assert "fetcher" not in names(a)
    out = ctl(a, "skill", "remove", "fetcher")
    assert out.returncode == 2 and "unknown skill 'fetcher'" in out.stderr


SLOW = """
import time


def run(ctx):
    for i in range(400):
        ctx.progress(i / 4, "working")
        time.sleep(0.05)
    return {"done": True}
"""


def test_revoking_a_signer_stops_its_running_tasks_everywhere(mesh: Mesh, tmp_path: Path) -> None:
    a, b = start(mesh, [("a", "team-lead"), ("b", "network-admin")])
    folder = write_skill(tmp_path, "slow", "1.0.0")
    (folder / "main.py").write_text(SLOW)
    archive = tmp_path / "slow.pack"
    assert ctl(a, "skill", "pack", str(folder), "-o", str(archive)).returncode == 0
    assert ctl(a, "skill", "install", str(archive)).returncode == 0
    assert ctl(a, "skill", "publish", "slow").returncode == 0
    wait_for(lambda: "slow" in names(b), what="b to install slow")
    signer = json.loads(ctl(b, "skill", "describe", "slow", "--json").stdout)["signer"]
    with a.client() as client:
        handle = client.delegate("slow", {}, node="b")
        wait_for(lambda: client.task(handle.task_id)["progress"]["pct"] > 1,
                 what="slow to run on b")  # fmt: skip
        out = ctl(a, "skill", "revoke", "--key", signer)
        assert out.returncode == 0, out.stderr
        with pytest.raises(TaskFailed) as failed:
            handle.result(timeout=30)
        assert failed.value.code == "revoked"
    assert "slow" not in names(a) and "slow" not in names(b)
    audit = [r["type"] for r in b.client().audit()]
    assert "SKILL_KEY_REVOKED" in audit
