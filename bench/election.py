"""Lead election: ``kill -9`` of the lead -> time until every survivor agrees on a new one.

Real processes on loopback (static seed, no mDNS), distinct priorities (100, 90, ... 10) so
that the successor is well defined. Each trial kills the current lead (the top-priority
node) and measures, from the wall clock read right before the kill, the moment the LAST
survivor learned the new lead: for every survivor the ``at`` of its LEAD_ELECTED event
for the new lead's term, the maximum over survivors. Polling ``status`` cross-checks it.
The killed node is then restarted (same state dir): it must take the lead back, but only
after the stability window (3 s) counted from its rejoin (the lead's AGENT_JOINED event
for it).

Safety: every LEAD_ELECTED event of every node (collected before each kill, so a killed
node's in-memory history is not lost) and every lead seen in a status poll is recorded as
a (term, lead) pair; a term with two different leads would be a split brain.

Partitions need a network to cut: that is ``tests/lab/test_lab_election.py`` (namespaces,
nft). Here, with ``--freeze-trials``, the lead is frozen (SIGSTOP) past the failure
detector and thawed (SIGCONT): the nearest loopback stand-in for a 1|N-1 cut and its heal
(the frozen node neither hears nor speaks, then comes back with a stale term).

    python bench/election.py --nodes 10 --trials 20 --freeze-trials 5
"""

from __future__ import annotations

import argparse
import signal
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from _common import Daemon, Mesh, all_see_all, summary, wait_for

#: s. ElectionConfig.stability_window (the daemons run the default LAN preset).
STABILITY_WINDOW = 3.0
#: s. Bound of every wait in a trial (polls stop at the first success).
TRIAL_DEADLINE = 60.0
#: s. How long a frozen lead stays frozen (past suspect + probe + indirect probe ~1.2 s).
FREEZE = 2.5


def is_up(d: Daemon) -> bool:
    return d.proc is not None and d.proc.poll() is None


class Safety:
    """(term, lead) pairs from every source; a term with two leads is a safety failure."""

    def __init__(self) -> None:
        self.leads: dict[int, set[str]] = defaultdict(set)
        self.seen: set[tuple[Any, ...]] = set()
        self.events = 0
        self.polls = 0
        self.cursor: dict[str, float] = {}

    def collect(self, nodes: list[Daemon]) -> None:
        """Read every running node's new events (called before a node is killed)."""
        for d in nodes:
            if not is_up(d):
                continue
            with d.client() as c:
                evs = c.events(self.cursor.get(d.name, 0.0))
            for e in evs:
                self.cursor[d.name] = max(self.cursor.get(d.name, 0.0), e["at"])
                if e["type"] != "LEAD_ELECTED":
                    continue
                key = (e["node"], e["term"], e["lead"], e["at"])
                if key not in self.seen:
                    self.seen.add(key)
                    self.events += 1
                    self.leads[int(e["term"])].add(e["lead"])

    def polled(self, status: dict[str, Any]) -> None:
        lead = status["lead"]
        if lead is not None:
            self.polls += 1
            self.leads[int(lead["term"])].add(lead["id"])

    def split_terms(self) -> dict[int, set[str]]:
        return {t: ls for t, ls in self.leads.items() if len(ls) > 1}


def agreed_lead(daemons: list[Daemon], safety: Safety) -> tuple[str, int] | None:
    """The (lead id, term) every daemon reports, or None while they disagree."""
    seen: set[tuple[str, int] | None] = set()
    for d in daemons:
        st = d.status()
        safety.polled(st)
        lead = st["lead"]
        seen.add(None if lead is None else (lead["id"], int(lead["term"])))
    if len(seen) == 1:
        (only,) = seen
        return only
    return None


def wait_lead(
    daemons: list[Daemon], safety: Safety, what: str, want: str | None = None, avoid: str = ""
) -> tuple[tuple[str, int], float]:
    """Poll until all agree on one lead (``want`` if given, never ``avoid``); returns the
    agreed (lead, term) and the wall time of the poll that first saw it."""

    def ok() -> tuple[tuple[str, int], float] | None:
        a = agreed_lead(daemons, safety)
        if a is None or a[0] == avoid or (want is not None and a[0] != want):
            return None
        return a, time.time()

    result: tuple[tuple[str, int], float] = wait_for(ok, TRIAL_DEADLINE, what)
    return result


def elected_at(d: Daemon, since: float, term: int, lead: str) -> float | None:
    """When ``d`` first learned ``lead`` as the lead of ``term`` (wall seconds)."""
    with d.client() as c:
        times = [
            e["at"]
            for e in c.events(since)
            if e["type"] == "LEAD_ELECTED" and e["term"] == term and e["lead"] == lead
        ]
    return min(times) if times else None


def joined_at(d: Daemon, since: float, node: str) -> float | None:
    with d.client() as c:
        times = [
            e["at"]
            for e in c.events(since)
            if e["type"] in ("AGENT_JOINED", "AGENT_ALIVE") and e["node"] == node
        ]
    return min(times) if times else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=10)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--freeze-trials", type=int, default=5)
    args = ap.parse_args()
    if not 3 <= args.nodes <= 100:
        ap.error("--nodes must be 3..100")
    priorities = [max(1, 100 - 10 * i) for i in range(args.nodes)]
    safety = Safety()
    with tempfile.TemporaryDirectory(prefix="meshd-bench-") as tmp:
        mesh = Mesh(Path(tmp))
        try:
            seed = mesh.add("e0", extra=("--priority", str(priorities[0]))).start()
            seed.wait_ready(60)
            nodes = [seed] + [
                mesh.add(f"e{i}", peers=(seed.seed,), extra=("--priority", str(priorities[i])))
                for i in range(1, args.nodes)
            ]
            for d in nodes[1:]:
                d.start()
            for d in nodes:
                d.wait_ready(60)
            wait_for(lambda: all_see_all(nodes), 60, "mesh to form")
            ids = {d.name: d.node_id for d in nodes}
            name_of = {i: n for n, i in ids.items()}
            prio = {d.name: p for d, p in zip(nodes, priorities, strict=True)}
            (lead, term), _ = wait_lead(nodes, safety, "the top node to lead", want=ids["e0"])

            agree: list[float] = []
            agree_first: list[float] = []
            agree_poll: list[float] = []
            takeover: list[float] = []
            early_takeovers: list[str] = []
            wrong_successor = 0
            missing_events = 0
            for trial in range(args.trials):
                safety.collect(nodes)
                victim = next(d for d in nodes if d.node_id == lead)
                survivors = [d for d in nodes if d is not victim]
                t_kill = time.time()
                victim.kill9()
                (new_lead, new_term), t_poll = wait_lead(
                    survivors, safety, "survivors to agree on a new lead", avoid=lead
                )
                best = max(survivors, key=lambda d: prio[d.name])
                if new_lead != best.node_id:
                    wrong_successor += 1
                times = [elected_at(d, t_kill, new_term, new_lead) for d in survivors]
                got = [t for t in times if t is not None]
                missing_events += len(times) - len(got)
                agree.append(max(got) - t_kill)
                agree_first.append(min(got) - t_kill)
                agree_poll.append(t_poll - t_kill)
                safety.collect(survivors)

                # Restart the victim (same state dir, new ports) once all hold it dead.
                wait_for(
                    lambda v=lead, s=survivors: all(d.peer_states().get(v) == "dead" for d in s),
                    TRIAL_DEADLINE,
                    "survivors to hold the killed lead dead",
                )
                victim._status = None
                if not victim.peers:  # the first seed: give it the survivors' seeds
                    victim.peers = tuple(d.seed for d in survivors[:2])
                t_restart = time.time()
                victim.start()
                victim.wait_ready(60)
                wait_for(lambda: all_see_all(nodes), TRIAL_DEADLINE, "the victim to rejoin")
                (lead, term), _ = wait_lead(
                    nodes, safety, "the restarted top node to lead again", want=victim.node_id
                )
                new_lead_d = next(d for d in nodes if d.node_id == new_lead)
                rejoin = joined_at(new_lead_d, t_restart, victim.node_id)
                won = elected_at(victim, t_restart, term, lead)
                if rejoin is None or won is None:
                    missing_events += 1
                    continue
                takeover.append(won - rejoin)
                if won - rejoin < STABILITY_WINDOW:
                    st = victim.status()["self"]
                    early_takeovers.append(
                        f"trial {trial}: {won - rejoin:.3f} s after the lead saw it join, "
                        f"{won - st['ready_at']:.3f} s after its ready_at"
                    )
            safety.collect(nodes)

            n = len(nodes)
            print(f"{n} nodes on loopback, priorities {priorities[0]}..{priorities[-1]}")
            print(f"kill -9 of the lead -> all {n - 1} survivors agree: {summary(agree)}")
            print(f"kill -9 of the lead -> first survivor knows:   {summary(agree_first)}")
            print(f"kill -9 of the lead -> agreement seen by polling: {summary(agree_poll)}")
            print(f"successor not the highest-priority survivor: {wrong_successor}")
            print(
                f"restarted top node takes the lead back, delay after its rejoin "
                f"(window {STABILITY_WINDOW:.0f} s): {summary(takeover)}"
            )
            print(f"takeovers earlier than the stability window: {len(early_takeovers)}")
            for line in early_takeovers:
                print(f"  {line}")
            if args.freeze_trials > 0:
                freeze_trials(nodes, safety, args.freeze_trials, ids["e0"])
            safety.collect(nodes)
            split = safety.split_terms()
            print(
                f"terms with two leads: {len(split)} "
                f"({safety.events} LEAD_ELECTED events, {safety.polls} status polls with a "
                f"lead, max term {max(safety.leads)})"
            )
            for t, ls in sorted(split.items()):
                print(f"  term {t}: {sorted(name_of.get(x, x) for x in ls)}")
            if missing_events:
                print(f"missing LEAD_ELECTED/AGENT_JOINED events (skipped): {missing_events}")
            print("partition heal: not on loopback; see tests/lab/test_lab_election.py")
        finally:
            mesh.close()


def freeze_trials(nodes: list[Daemon], safety: Safety, trials: int, top: str) -> None:
    """SIGSTOP the lead past the failure detector, SIGCONT it: survivors elect a new lead;
    after the thaw the stale lead must give way (one lead per term), then take over again
    after the stability window."""
    elect: list[float] = []
    single: list[float] = []
    back: list[float] = []
    for _ in range(trials):
        wait_lead(nodes, safety, "the top node to lead", want=top)
        safety.collect(nodes)
        frozen = next(d for d in nodes if d.node_id == top)
        others = [d for d in nodes if d is not frozen]
        assert frozen.proc is not None
        t_stop = time.time()
        frozen.proc.send_signal(signal.SIGSTOP)
        try:
            (_, _), t_el = wait_lead(others, safety, "the others to elect", avoid=top)
            elect.append(t_el - t_stop)
            time.sleep(max(0.0, t_stop + FREEZE - time.time()))
        finally:
            frozen.proc.send_signal(signal.SIGCONT)
        t_cont = time.time()
        _, t_one = wait_lead(nodes, safety, "one lead after the thaw")
        single.append(t_one - t_cont)
        _, t_back = wait_lead(nodes, safety, "the thawed top node to lead again", want=top)
        back.append(t_back - t_cont)
        safety.collect(nodes)
    print(f"lead frozen (SIGSTOP {FREEZE:.1f} s) -> others agree on a new lead: {summary(elect)}")
    print(f"thaw (SIGCONT) -> all {len(nodes)} agree on one lead (polled): {summary(single)}")
    print(f"thaw (SIGCONT) -> thawed top node leads again (polled): {summary(back)}")


if __name__ == "__main__":
    main()
