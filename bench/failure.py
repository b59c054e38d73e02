"""Failure detection: ``kill -9`` of one node -> time until every other node holds it dead.

Real processes on loopback (static seed). Each trial kills a random non-seed node, reads
the AGENT_FAILED event time on every survivor, then restarts the node and waits for it to
rejoin. Any DEAD verdict about a node that was not killed is a false positive; a CPU-load
phase (one busy process per core) then watches for false positives as well.

    python bench/failure.py --nodes 10 --trials 20 --load-seconds 20
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import tempfile
import time
from pathlib import Path

from _common import Mesh, all_see_all, summary, wait_for


def _burn(stop_at: float) -> None:
    x = 0
    while time.time() < stop_at:
        x += 1


def false_deaths(nodes: list, killed: set[str], since: float) -> int:
    count = 0
    for d in nodes:
        if d.proc is None or d.proc.poll() is not None:
            continue
        with d.client() as c:
            for e in c.events(since):
                if e["type"] == "AGENT_FAILED" and e["node"] not in killed:
                    count += 1
    return count


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=10)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--load-seconds", type=float, default=20.0)
    args = ap.parse_args()
    rng = random.Random(1)
    with tempfile.TemporaryDirectory(prefix="meshd-bench-") as tmp:
        mesh = Mesh(Path(tmp))
        try:
            seed = mesh.add("f0", role="team-lead").start()
            seed.wait_ready()
            nodes = [seed] + [mesh.add(f"f{i}", peers=(seed.seed,)) for i in range(1, args.nodes)]
            for d in nodes[1:]:
                d.start()
            for d in nodes:
                d.wait_ready(60)
            wait_for(lambda: all_see_all(nodes), 60, "mesh to form")
            ids = {d.name: d.node_id for d in nodes}
            detect_all: list[float] = []
            detect_first: list[float] = []
            t_start = time.time()
            false_pos = 0
            for _ in range(args.trials):
                victim = rng.choice(nodes[1:])
                vid = ids[victim.name]
                others = [d for d in nodes if d is not victim]
                t_kill = time.time()
                victim.kill9()

                def all_dead(vid: str = vid, others: list = others) -> bool:
                    return all(d.peer_states().get(vid) == "dead" for d in others)

                wait_for(all_dead, 30, "all to mark the victim dead")
                times = []
                for d in others:
                    with d.client() as c:
                        ev = [
                            e["at"]
                            for e in c.events(t_kill)
                            if e["type"] == "AGENT_FAILED" and e["node"] == vid
                        ]
                    times.append(min(ev) - t_kill)
                detect_all.append(max(times))
                detect_first.append(min(times))
                false_pos += false_deaths(others, {vid}, t_kill)
                victim._status = None
                victim.start()
                victim.wait_ready(60)
                wait_for(lambda: all_see_all(nodes), 60, "victim to rejoin")
            print(f"kill -9 -> dead on ALL {len(nodes) - 1} survivors: {summary(detect_all)}")
            print(f"kill -9 -> dead on the first survivor:  {summary(detect_first)}")
            print(f"false DEAD verdicts during {args.trials} trials: {false_pos}")
            _ = t_start
            if args.load_seconds > 0:
                t0 = time.time()
                stop_at = t0 + args.load_seconds
                burners = [
                    multiprocessing.Process(target=_burn, args=(stop_at,))
                    for _ in range(os.cpu_count() or 2)
                ]
                for p in burners:
                    p.start()
                for p in burners:
                    p.join()
                fp = false_deaths(nodes, set(), t0)
                print(
                    f"false DEAD verdicts under full CPU load ({len(burners)} busy processes, "
                    f"{args.load_seconds:.0f} s, {len(nodes)} nodes): {fp}"
                )
        finally:
            mesh.close()


if __name__ == "__main__":
    main()
