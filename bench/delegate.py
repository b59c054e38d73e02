"""Delegation figures: round trip and throughput of a trivial skill on a 3-node mesh, the
same workload on Celery + Redis measured in the same run, and the time from a worker's
crash to its task running on another agent.

meshd: three daemons on loopback (a team-lead and two network-admins, every one an agent).
The client talks to a node that is not the lead, as a user on any host would:

- **round trip**: ``run("echo")`` (delegate and wait in one call, as Celery's
  ``delay().get()``), one at a time, warm: client -> local
  daemon (stored, fsync) -> lead (stored, assigned) -> agent (stored, run, reported) ->
  lead (stored) -> the origin's copy -> client;
- **throughput**: N echo tasks, one client per node (threads) submitting back to back
  (``delegate`` returns once stored), then collecting every result; tasks/s from the
  first submit to the last result;
- **crash**: a ``sleep`` on a worker is ``kill -9``-ed; time until the task is RUNNING
  on the other worker (membership detection included).

Celery: ``bench/_celery_baseline.py`` (redis-server on loopback, 3 solo workers).

    python bench/delegate.py --roundtrip 500 --throughput 5000 --crash-trials 5 --rounds 3
    python bench/delegate.py --no-fsync          # [store] fsync = false on every node
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _common import Daemon, Mesh, all_see_all, pct, wait_for

from meshd.client import Client

NODES = ("lead", "w1", "w2")


def start_mesh(root: Path, fsync: bool) -> list[Daemon]:
    extra: tuple[str, ...] = ()
    if not fsync:
        conf = root / "nofsync.toml"
        conf.write_text("[store]\nfsync = false\n")
        extra = ("--config", str(conf))
    mesh = Mesh(root)
    lead = mesh.add("lead", role="team-lead", extra=extra).start()
    lead.wait_ready()
    nodes = [lead] + [
        mesh.add(n, role="network-admin", peers=(lead.seed,), extra=extra).start()
        for n in NODES[1:]
    ]
    for d in nodes:
        d.wait_ready()
    wait_for(lambda: all_see_all(nodes), what="mesh to form")
    wait_for(
        lambda: all((d.status()["lead"] or {}).get("name") == "lead" for d in nodes),
        what="the team-lead to lead",
    )
    nodes[0].mesh = mesh  # type: ignore[attr-defined]
    return nodes


def roundtrip(client: Client, n: int, warmup: int = 50) -> list[float]:
    for i in range(warmup):
        client.run("echo", {"message": f"w{i}"}, timeout=30)
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        out = client.run("echo", {"message": f"r{i}"}, timeout=30)
        times.append(time.perf_counter() - t0)
        assert out == {"message": f"r{i}"}, out
    return times


def throughput(nodes: list[Daemon], n: int, batch: int = 1) -> tuple[float, dict[str, int]]:
    tag = f"t{batch}x"  # tells this run's tasks from the previous one's
    """N echo tasks from one client per node (threads), submitted back to back, then
    every result collected."""
    per = [n // len(nodes) + (1 if i < n % len(nodes) else 0) for i in range(len(nodes))]
    clients = [d.client() for d in nodes]
    for c in clients:
        c.connect()
    barrier = threading.Barrier(len(nodes) + 1)
    done: list[list[str]] = [[] for _ in nodes]

    def work(i: int) -> None:
        client = clients[i]
        barrier.wait()
        if batch > 1:
            handles = []
            for start in range(0, per[i], batch):
                chunk = range(start, min(per[i], start + batch))
                handles += client.delegate_many(
                    [{"skill": "echo", "params": {"message": f"{tag}{i}-{k}"}} for k in chunk]
                )
        else:
            handles = [client.delegate("echo", {"message": f"{tag}{i}-{k}"}) for k in range(per[i])]
        for k, h in enumerate(handles):
            assert h.result(timeout=120) == {"message": f"{tag}{i}-{k}"}
        done[i] = [h.task_id for h in handles]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(nodes))]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join(timeout=300)
    elapsed = time.perf_counter() - t0
    assert sum(len(d) for d in done) == n, "a client did not finish"
    where: dict[str, int] = {}
    for t in clients[0].tasks(limit=10 * n):
        if t["params"].get("message", "").startswith(tag):
            where[t["assigned_name"]] = where.get(t["assigned_name"], 0) + 1
    for c in clients:
        c.close()
    return n / elapsed, where


def crash_trials(nodes: list[Daemon], trials: int) -> list[float]:
    lead, w1, w2 = nodes
    out: list[float] = []
    for trial in range(trials):
        with lead.client() as client:
            h = client.delegate("sleep", {"seconds": 30.0, "step": 0.05}, role="network-admin")
            tid = h.task_id
            view = wait_for(
                lambda tid=tid: (
                    (v := client.task(tid))["state"] == "running" and v["has_checkpoint"] and v
                ),
                what="sleep running",
            )
            victim = w1 if view["assigned_name"] == "w1" else w2
            other = w2 if victim is w1 else w1
            t0 = time.monotonic()
            victim.kill9()
            deadline = t0 + 30
            while time.monotonic() < deadline:
                v = client.task(h.task_id)
                if v["state"] == "running" and v["assigned_name"] == other.name:
                    out.append(time.monotonic() - t0)
                    break
                time.sleep(0.005)
            else:
                raise AssertionError(f"trial {trial}: not running elsewhere within 30 s")
            client.cancel(h.task_id)
        victim.start()
        victim.wait_ready()
        wait_for(lambda: all_see_all(nodes), what="the victim to rejoin")
    return out


def line(name: str, v: list[float]) -> str:
    ms = [x * 1000 for x in v]
    return (
        f"{name:<22} p50 {pct(ms, 50):.2f} ms  p99 {pct(ms, 99):.2f} ms  "
        f"mean {sum(ms) / len(ms):.2f} ms  n={len(v)}"
    )


def meshd_round(args: argparse.Namespace, crash: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="meshd-bench-delegate-") as tmp:
        nodes = start_mesh(Path(tmp), fsync=not args.no_fsync)
        mesh: Mesh = nodes[0].mesh  # type: ignore[attr-defined]
        try:
            with nodes[1].client() as client:
                rt = roundtrip(client, args.roundtrip)
            print(line("  meshd round trip", rt))
            tput, where = throughput(nodes, args.throughput)
            print(f"  meshd throughput       {tput:.0f} tasks/s  (by agent: {where})")
            out.update(rtt_p50=pct(rt, 50), rtt_p99=pct(rt, 99), throughput=tput)
            if args.batch > 1:
                btput, where = throughput(nodes, args.throughput, args.batch)
                print(
                    f"  meshd throughput, delegate_many x{args.batch}: {btput:.0f} tasks/s"
                    f"  (by agent: {where})"
                )
                out.update(throughput_batch=btput)
            if crash:
                times = crash_trials(nodes, crash)
                print(line("  crash -> running again", times))
                out.update(crash_p50=pct(times, 50), crash_max=max(times))
        finally:
            mesh.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--roundtrip", type=int, default=500)
    ap.add_argument("--throughput", type=int, default=5000)
    ap.add_argument("--crash-trials", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3, help="meshd and Celery, alternately")
    ap.add_argument(
        "--batch",
        type=int,
        default=100,
        help="also measure throughput with delegate_many of this size (1: skip)",
    )
    ap.add_argument("--no-fsync", action="store_true", help="[store] fsync = false")
    ap.add_argument("--no-celery", action="store_true", help="skip the Celery baseline")
    args = ap.parse_args()
    rounds: list[dict[str, Any]] = []
    celery: list[dict[str, float]] = []
    for r in range(args.rounds):
        print(f"round {r + 1}/{args.rounds}")
        rounds.append(meshd_round(args, args.crash_trials if r == 0 else 0))
        if not args.no_celery:
            from _celery_baseline import run_celery

            cel = run_celery(args.roundtrip, args.throughput, workers=3, clients=len(NODES))
            print(
                f"  celery round trip      p50 {cel['rtt_p50'] * 1000:.2f} ms  "
                f"p99 {cel['rtt_p99'] * 1000:.2f} ms"
            )
            print(f"  celery throughput      {cel['throughput']:.0f} tasks/s")
            celery.append(cel)

    def med(rows: list[Any], key: str) -> float:
        return statistics.median(float(row[key]) for row in rows)

    figures: dict[str, Any] = {"fsync": not args.no_fsync, "rounds": args.rounds}
    for key in ("rtt_p50", "rtt_p99", "throughput", "throughput_batch"):
        if all(key in r for r in rounds):
            figures[key] = med(rounds, key)
    figures.update({k: v for k, v in rounds[0].items() if k.startswith("crash")})
    print(f"medians over {args.rounds} rounds (fsync {'on' if not args.no_fsync else 'off'}):")
    print(
        f"  meshd  round trip p50 {figures['rtt_p50'] * 1000:.2f} ms, "
        f"p99 {figures['rtt_p99'] * 1000:.2f} ms, throughput {figures['throughput']:.0f}/s"
        + (
            f", batched {figures['throughput_batch']:.0f}/s"
            if "throughput_batch" in figures
            else ""
        )
    )
    if celery:
        cel_fig = {k: med(celery, k) for k in ("rtt_p50", "rtt_p99", "throughput")}
        figures["celery"] = cel_fig
        print(
            f"  celery round trip p50 {cel_fig['rtt_p50'] * 1000:.2f} ms, "
            f"p99 {cel_fig['rtt_p99'] * 1000:.2f} ms, throughput {cel_fig['throughput']:.0f}/s"
        )
        print(
            f"  ratio meshd/celery: round trip p50 "
            f"{figures['rtt_p50'] / cel_fig['rtt_p50']:.2f}, "
            f"throughput {figures['throughput'] / cel_fig['throughput']:.2f}"
        )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
