"""Mesh formation: N daemons started together -> time until every node sees all others.

Real processes on loopback. "Once processes are up" means from the moment the last daemon
had its sockets bound and was announced (its ``ready_at``) to the moment the last node saw
its last peer join (from each node's AGENT_JOINED events). Also printed: from launch.

    python bench/formation.py --nodes 10 30 --trials 3 --discovery mdns seed
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import Mesh, all_see_all, summary, wait_for


def one_trial(n: int, discovery: str) -> tuple[float, float]:
    with tempfile.TemporaryDirectory(prefix="meshd-bench-") as tmp:
        mesh = Mesh(Path(tmp))
        try:
            if discovery == "seed":
                first = mesh.add("b0", role="team-lead", listen="127.0.0.1:0")
                first.start()
                first.wait_ready(60)
                seed = (first.seed,)
                rest = [mesh.add(f"b{i}", peers=seed) for i in range(1, n)]
            else:
                rest = [mesh.add(f"b{i}", mdns=True) for i in range(n)]
            launch = time.time()
            for d in rest:
                d.start()
            nodes = mesh.daemons
            for d in nodes:
                d.wait_ready(120)
            wait_for(lambda: all_see_all(nodes), 120, f"{n} nodes to see each other")
            ready = max(d.status()["self"]["ready_at"] for d in nodes)
            last_join = 0.0
            for d in nodes:
                with d.client() as c:
                    joins = [e["at"] for e in c.events() if e["type"] == "AGENT_JOINED"]
                last_join = max(last_join, max(joins))
            return max(0.0, last_join - ready), last_join - launch
        finally:
            mesh.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, nargs="+", default=[10, 30])
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--discovery", nargs="+", default=["mdns", "seed"], choices=["mdns", "seed"])
    args = ap.parse_args()
    for discovery in args.discovery:
        for n in args.nodes:
            up, launch = [], []
            for _ in range(args.trials):
                a, b = one_trial(n, discovery)
                up.append(a)
                launch.append(b)
            print(f"formation {discovery:4} {n:2} nodes, after all up: {summary(up)}")
            print(f"formation {discovery:4} {n:2} nodes, from launch:  {summary(launch)}")


if __name__ == "__main__":
    main()
