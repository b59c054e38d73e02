"""``meshd demo``: a real multi-node mesh on this machine, for a first look.

Starts N real daemons (separate processes, real CURVE links, mDNS on loopback plus the
first node as a static seed), waits until every node lists every other one as alive,
prints the mesh as ``meshctl status`` would, and keeps running until Ctrl-C or
``--duration``. Then it stops every daemon gracefully and removes its temporary state.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from meshd import clock
from meshd.cli.render import status_table
from meshd.client import Client
from meshd.errors import ControlError
from meshd.identity import MeshKey

ROLES = ("team-lead", "network-admin", "devops", "software-engineer", "observer")


def _wait_all_alive(dirs: list[Path], n: int, timeout: float) -> float | None:
    """Until every node lists the n-1 others alive and all follow one lead."""
    start = clock.monotonic()
    while clock.monotonic() - start < timeout:
        ok = 0
        leads = set()
        for d in dirs:
            try:
                with Client(d, timeout=1.0) as c:
                    st = c.status()
            except ControlError:
                break
            if sum(1 for p in st["peers"] if p["state"] == "alive") == n - 1:
                ok += 1
            leads.add(st["lead"]["id"] if st["lead"] else None)
        if ok == n and len(leads) == 1 and None not in leads:
            return clock.monotonic() - start
        time.sleep(0.05)
    return None


def _wait_port(state_dir: Path, proc: subprocess.Popen[bytes], timeout: float) -> int:
    end = clock.monotonic() + timeout
    while clock.monotonic() < end and proc.poll() is None:
        try:
            with Client(state_dir, timeout=1.0) as c:
                return int(c.status()["self"]["ports"]["router"])
        except ControlError:
            time.sleep(0.05)
    raise RuntimeError(f"the first node did not start; see {state_dir / 'meshd.log'}")


def _show_delegation(dirs: list[Path], nodes: int) -> None:
    """Delegate two tasks from the last node, as a user would, and show where they ran."""
    role = ROLES[2] if nodes > 2 else None
    with Client(dirs[-1], timeout=10.0) as c:
        where = f" --role {role}" if role else ""
        print(f"\n$ meshctl delegate sysinfo{where}    (from node{nodes})")
        handle = c.delegate("sysinfo", {}, role=role)
        info = handle.result(timeout=30)
        view = c.task(handle.task_id)
        print(
            f"  ran on {view['assigned_name']}: {info['hostname']}, {info['cpu_count']} CPUs, "
            f"load {info['load_avg']}"
        )
        if role:
            print(f"$ meshctl delegate disk-usage --role {role}    (a signed pack, sandboxed)")
            handle = c.delegate("disk-usage", {"paths": ["/"]}, role=role)
            usage = handle.result(timeout=30)
            first = (usage.get("paths") or [{}])[0] if isinstance(usage, dict) else {}
            where = c.task(handle.task_id)["assigned_name"]
            used = first.get("percent", "?")
            print(f"  ran on {where} in its sandbox (no network, limits): / is {used}% used")
        print(f"$ meshctl delegate echo message=hello    (from node{nodes})")
        handle = c.delegate("echo", {"message": "hello"})
        out = handle.result(timeout=30)
        print(f"  ran on {c.task(handle.task_id)['assigned_name']}: {out}")


def run_demo(nodes: int, base_port: int, duration: float | None, keep: bool) -> int:
    root = Path(tempfile.mkdtemp(prefix="meshd-demo-"))
    dirs = [root / f"node{i + 1}" for i in range(nodes)]
    procs: list[subprocess.Popen[bytes]] = []
    logs = []
    exe = [sys.executable, "-m", "meshd"]
    try:
        token = MeshKey.generate().token()  # every node, node1 included, joins this mesh
        print(f"Starting {nodes} meshd daemons on 127.0.0.1 (state under {root}) ...")
        seed_port = base_port
        for i, d in enumerate(dirs):
            port = base_port + 3 * i if base_port else 0
            cmd = [*exe, "start", "--role", ROLES[i % len(ROLES)], "--name", f"node{i + 1}"]
            cmd += ["--state-dir", str(d), "--listen", f"127.0.0.1:{port}", "--join", token]
            if i:
                cmd += ["--peer", f"127.0.0.1:{seed_port}"]
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
            log = open(d / "meshd.log", "wb")  # noqa: SIM115 - closed in finally
            logs.append(log)
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
            if i == 0 and not base_port:  # free ports: learn where the seed listens
                seed_port = _wait_port(d, procs[0], timeout=30.0)
        took = _wait_all_alive(dirs, nodes, timeout=30.0)
        if took is None:
            print("The mesh did not form within 30 s; logs:", file=sys.stderr)
            for d in dirs:
                print(f"--- {d / 'meshd.log'}", file=sys.stderr)
                print((d / "meshd.log").read_text()[-2000:], file=sys.stderr)
            return 1
        print(
            f"All {nodes} nodes see each other and follow one lead "
            f"({took:.2f} s after the daemons were started).\n"
        )
        with Client(dirs[0]) as c:
            print(status_table(c.status()))
        _show_delegation(dirs, nodes)
        print(
            f"\nTry it yourself:\n  meshctl --state-dir {dirs[0]} status\n"
            f"  meshctl --state-dir {dirs[-1]} delegate sleep seconds=5\n"
            f"  meshctl --state-dir {dirs[0]} task list\n"
            f"  kill -9 {procs[-1].pid}    # then watch node{nodes} turn dead:\n"
            f"  meshctl --state-dir {dirs[0]} status --watch\n"
            + ("Stopping after the duration ..." if duration else "Ctrl-C stops the demo.")
        )
        deadline = clock.monotonic() + duration if duration else None
        while deadline is None or clock.monotonic() < deadline:
            time.sleep(0.2)
        return 0
    except KeyboardInterrupt:
        return 0
    except RuntimeError as exc:
        print(f"meshd demo: {exc}", file=sys.stderr)
        return 1
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
        for log in logs:
            log.close()
        if keep:
            print(f"State kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
