"""Idle footprint and operator latency.

* RSS and CPU of idle daemons in a formed mesh (from /proc over a window).
* ``meshctl status`` wall time (a fresh process each run, like an operator typing it),
  beside ``python -c pass`` measured in the same run as a floor.

    python bench/idle.py --nodes 3 --window 10 --runs 20
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import Mesh, all_see_all, pct, wait_for

CLK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK  # utime + stime


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wall(cmd: list[str], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--window", type=float, default=10.0)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--mdns", action="store_true", help="discover over mDNS on loopback")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="meshd-bench-") as tmp:
        mesh = Mesh(Path(tmp))
        try:
            seed = mesh.add("i0", mdns=args.mdns).start()
            seed.wait_ready()
            nodes = [seed] + [
                mesh.add(f"i{i}", peers=(seed.seed,), mdns=args.mdns) for i in range(1, args.nodes)
            ]
            for d in nodes[1:]:
                d.start()
            for d in nodes:
                d.wait_ready()
            wait_for(lambda: all_see_all(nodes), 60, "mesh to form")
            time.sleep(2.0)  # settle: a bounded observation start, not a wait for state
            pids = [d.proc.pid for d in nodes if d.proc]
            c0 = {p: cpu_seconds(p) for p in pids}
            time.sleep(args.window)
            cpu = [(cpu_seconds(p) - c0[p]) / args.window * 100 for p in pids]
            rss = [rss_mb(p) for p in pids]
            print(
                f"idle daemon ({args.nodes}-node mesh, mDNS {'on' if args.mdns else 'off'}, "
                f"{args.window:.0f} s window): "
                f"RSS median {statistics.median(rss):.1f} MB (max {max(rss):.1f}), "
                f"CPU median {statistics.median(cpu):.2f} % of a core (max {max(cpu):.2f})"
            )
            exe = sys.executable
            meshctl = [exe, "-m", "meshd.cli.meshctl_app", "--state-dir", str(seed.state_dir)]
            entry = Path(exe).parent / "meshctl"
            if entry.exists():
                meshctl = [str(entry), "--state-dir", str(seed.state_dir)]
            floor = wall([exe, "-c", "pass"], args.runs)
            st = wall([*meshctl, "status"], args.runs)
            js = wall([*meshctl, "status", "--json"], args.runs)
            for name, v in (("python -c pass", floor), ("meshctl status", st), ("--json", js)):
                print(
                    f"{name:>16}: median {statistics.median(v) * 1000:.0f} ms, "
                    f"p90 {pct(v, 90) * 1000:.0f} ms"
                )
        finally:
            mesh.close()


if __name__ == "__main__":
    main()
