"""The metrics HTTP server on a real socket, and ``meshctl health`` against real daemons."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from harness import DEADLINE, Daemon, Mesh, all_see_all, run_meshctl, wait_for
from prometheus_client.parser import text_string_to_metric_families

from meshd.daemon.metrics import prometheus_text
from meshd.net.http import CONTENT_TYPE, MetricsServer

pytestmark = pytest.mark.integration

METRICS = {
    "node": {"id": "n1", "name": 'my "node"', "role": "worker", "members": {"alive": 2}},
    "agents": {"n1": {"name": 'my "node"', "completed": 4, "failed": 1, "success_rate": 0.8}},
    "mesh": {"queue_depth": 3, "tasks": {"pending": 3, "complete": 4, "failed": 1}},
}


# ---- MetricsServer ---------------------------------------------------------------------------


async def http(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``raw``, read the whole reply (the server closes): status, headers, body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    return status, headers, body


def get(path: str, method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()


async def test_metrics_server_serves_metrics_and_health() -> None:
    healthy = [True]
    calls = [0]

    def provider() -> str:
        calls[0] += 1
        return prometheus_text(METRICS)

    server = MetricsServer(provider, lambda: healthy[0])
    port = await server.start("127.0.0.1", 0)
    try:
        assert port > 0 and server.port == port
        status, headers, body = await http(port, get("/metrics?x=1"))
        assert status == 200 and calls[0] == 1
        assert headers["content-type"] == CONTENT_TYPE
        assert headers["connection"] == "close"
        assert int(headers["content-length"]) == len(body)
        fams = {f.name: f for f in text_string_to_metric_families(body.decode())}
        assert fams["meshd_tasks_completed"].type == "counter"
        sample = fams["meshd_tasks_completed"].samples[0]
        assert sample.labels == {"node": "n1", "name": 'my "node"'} and sample.value == 4
        assert fams["meshd_queue_depth"].samples[0].value == 3

        status, _, body = await http(port, get("/healthz"))
        assert (status, body) == (200, b"ok\n")
        healthy[0] = False
        status, _, body = await http(port, get("/healthz"))
        assert status == 503 and body == b"unhealthy\n"

        status, headers, body = await http(port, get("/metrics", "HEAD"))
        assert status == 200 and body == b"" and int(headers["content-length"]) > 0

        assert (await http(port, get("/")))[0] == 404
        assert (await http(port, get("/metrics/x")))[0] == 404
        status, headers, _ = await http(port, get("/metrics", "POST"))
        assert status == 405 and headers["allow"] == "GET, HEAD"
        assert (await http(port, get("/healthz", "DELETE")))[0] == 405
        assert (await http(port, b"garbage\r\n\r\n"))[0] == 400
    finally:
        await server.close()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_metrics_server_bounds_requests() -> None:
    def broken() -> str:
        raise RuntimeError("provider bug")

    server = MetricsServer(broken, read_timeout=0.3, max_header_bytes=8192)
    port = await server.start()
    try:
        # Headers over 8 KiB: refused with 431 (or the connection dropped under our feet),
        # never served; the server goes on serving.
        big = b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n"
        try:
            status, _, _ = await http(port, big)
        except ConnectionResetError:
            status = 431
        assert status == 431

        # A client that never finishes its request is answered 408 after the read timeout.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        await writer.drain()
        start = time.monotonic()
        data = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert data.startswith(b"HTTP/1.1 408 ")
        assert time.monotonic() - start < 5

        # A provider that raises: 500, and the server lives on (/healthz defaults to ok).
        assert (await http(port, get("/metrics")))[0] == 500
        status, _, body = await http(port, get("/healthz"))
        assert (status, body) == (200, b"ok\n")
    finally:
        await server.close()


async def test_metrics_server_close_drops_idle_connections() -> None:
    server = MetricsServer(lambda: "", read_timeout=30)
    port = await server.start()
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    await asyncio.sleep(0)  # let the server accept it
    start = time.monotonic()
    await asyncio.wait_for(server.close(), 5)
    assert time.monotonic() - start < 5
    writer.close()


# ---- meshctl health ----------------------------------------------------------------------------

#: ``meshctl`` with only the health command, wired the way meshctl wires commands; used
#: until meshctl itself registers ``health`` (then the real meshctl is run instead).
_APP = """
import typer
from meshd.cli.common import MESHCTL_STATE, StateDir
from meshd.cli.health import health

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

@app.callback()
def _main(state_dir: StateDir = None) -> None:
    MESHCTL_STATE["dir"] = state_dir

app.command("health")(health)
app()
"""


def _meshctl_has_health() -> bool:
    from meshd.cli.meshctl_app import app

    return any(c.name == "health" for c in app.registered_commands)


def meshctl_health(state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    if _meshctl_has_health():
        return run_meshctl("--state-dir", str(state_dir), "health", *args)
    return subprocess.run(
        [sys.executable, "-c", _APP, "--state-dir", str(state_dir), "health", *args],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )


def test_health_without_a_daemon_exits_3(tmp_path: Path) -> None:
    for args in ((), ("--json",)):
        out = meshctl_health(tmp_path / "empty", *args)
        assert out.returncode == 3, out
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and "meshd is not running" in lines[0]
        assert "Traceback" not in out.stderr
    report = json.loads(out.stdout)
    assert report["healthy"] is False and report["lead"] is None and report["members"] == 0
    assert "meshd is not running" in report["reason"]


def test_health_of_a_lone_node_that_leads(mesh: Mesh) -> None:
    node = mesh.add("solo").start()
    node.wait_ready()
    wait_for(lambda: node.status()["lead"], what="the lone node to lead")
    out = meshctl_health(node.state_dir)
    assert out.returncode == 0, out
    assert "healthy: lead solo" in out.stdout and out.stderr == ""
    out = meshctl_health(node.state_dir, "--json")
    assert out.returncode == 0, out
    report = json.loads(out.stdout)
    assert report["healthy"] is True and report["reason"] is None
    assert report["lead"]["name"] == "solo" and report["members"] == 1


def test_health_without_quorum_exits_1(mesh: Mesh, tmp_path: Path) -> None:
    # A lone node that needs two votes never gets a lead.
    conf = tmp_path / "quorum2.toml"
    conf.write_text("[election]\nquorum = 2\n")
    node = mesh.add("alone", extra=("--config", str(conf))).start()
    node.wait_ready()
    wait_for(
        lambda: node.status()["lead_reason"] == "no lead: no quorum", what="no quorum reported"
    )
    out = meshctl_health(node.state_dir)
    assert out.returncode == 1, out
    assert out.stdout == ""
    assert out.stderr.strip().splitlines() == ["meshctl: unhealthy: no lead: no quorum"]
    out = meshctl_health(node.state_dir, "--json")
    assert out.returncode == 1, out
    report = json.loads(out.stdout)
    assert report == {
        "healthy": False,
        "degraded": False,
        "reason": "no lead: no quorum",
        "lead": None,
        "members": 1,
        "warnings": [],
    }


def test_health_of_the_survivor_of_two_exits_1(mesh: Mesh) -> None:
    first = mesh.add("n0", extra=("--priority", "80")).start()
    first.wait_ready()
    second = mesh.add("n1", peers=(first.seed,), extra=("--priority", "40")).start()
    second.wait_ready()
    nodes: list[Daemon] = [first, second]
    wait_for(lambda: all_see_all(nodes), what="the mesh to form")
    wait_for(lambda: second.status()["lead"], what="a lead")
    out = meshctl_health(second.state_dir, "--json")
    assert out.returncode == 0, out
    assert json.loads(out.stdout)["members"] == 2

    first.kill9()

    def no_quorum() -> bool:
        st = second.status()
        return st["lead"] is None and "no quorum" in (st["lead_reason"] or "")

    wait_for(no_quorum, timeout=DEADLINE, what="the survivor to report no quorum")
    out = meshctl_health(second.state_dir)
    assert out.returncode == 1, out
    assert "no lead" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_meshd_start_metrics_port_serves_prometheus_text(mesh: Mesh) -> None:
    import socket
    import urllib.request

    with socket.socket() as s:  # a free port on loopback for the daemon to bind
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    d = mesh.add("solo", role="team-lead", extra=("--metrics-port", str(port))).start()
    d.wait_ready()
    wait_for(lambda: d.status()["lead"], what="the lone node to lead")
    with d.client() as client:
        client.delegate("echo", {"message": "m"}).result(timeout=20)

    def scrape() -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out[sample.name] = out.get(sample.name, 0.0) + sample.value
        return out

    samples = wait_for(
        lambda: (s := scrape()).get("meshd_mesh_tasks_completed_total") and s,
        what="the completed task in /metrics",
    )
    assert samples["meshd_up"] == 1 and samples["meshd_is_lead"] == 1
    assert samples["meshd_mesh_tasks_completed_total"] >= 1
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
        assert resp.status == 200
    assert "metrics" in d.status()  # the same figures in status --json
