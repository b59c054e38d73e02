"""Daemons in the namespace lab: start them, fault them, watch who leads.

Shared by the lab's election and chaos suites. :class:`Watch` samples every daemon's
status and LEAD_ELECTED events and fails at once when a term has two different leads.
The faults act inside a node's namespace (nft tables named ``lab``/``labloss``), so the
machine's own network is never touched, and each has its exact undo.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable
from typing import Any

from harness import Daemon
from netlab import Lab, Node

#: s. Observation period.
POLL = 0.1


def cut_from(lab: Lab, node: Node, others: Iterable[Node]) -> None:
    """Drop everything ``node`` exchanges with ``others`` (both directions, in ``node``'s
    namespace); its traffic with every other address is untouched. Links stay up.
    ``lab.heal(node)`` removes it (same table as :meth:`Lab.cut`)."""
    addrs = ", ".join(a for o in others for a in o.addrs.values())
    ruleset = (
        "table inet lab {\n"
        "  chain in {\n    type filter hook input priority -10; policy accept;\n"
        f"    ip saddr {{ {addrs} }} drop\n  }}\n"
        "  chain out {\n    type filter hook output priority -10; policy accept;\n"
        f"    ip daddr {{ {addrs} }} drop\n  }}\n"
        "}\n"
    )
    lab.host.run("ip", "netns", "exec", node.ns, "nft", "-f", "-", input_text=ruleset)


def lossy(lab: Lab, node: Node, percent: int) -> None:
    """Drop ``percent`` % of the packets ``node`` receives on its interfaces, at random
    (nft ``numgen random``: no netem module needed). Undo: :func:`lossless`."""
    if not 0 < percent < 100:
        raise ValueError("percent must be 1..99")
    rules = "\n".join(
        f'    iifname "{i}" numgen random mod 100 < {percent} drop' for i in node.ifaces
    )
    ruleset = (
        "table inet labloss {\n"
        "  chain in {\n    type filter hook input priority -20; policy accept;\n"
        f"{rules}\n  }}\n"
        "}\n"
    )
    lab.host.run("ip", "netns", "exec", node.ns, "nft", "-f", "-", input_text=ruleset)


def lossless(lab: Lab, node: Node) -> None:
    lab.exec(node, "nft", "delete", "table", "inet", "labloss", check=False)


def unfiltered(lab: Lab, node: Node) -> None:
    """Remove every fault table of ``node`` (the ones that exist)."""
    for table in ("lab", "labloss"):
        lab.exec(node, "nft", "delete", "table", "inet", table, check=False)


class SplitBrain(AssertionError):
    pass


class Watch:
    """Samples every daemon's status and new events; remembers every (term, lead) seen
    and fails at once when a term has two different leads. Daemons in ``skip`` (stopped
    or dead) are not asked."""

    def __init__(self, daemons: list[Daemon], names: dict[str, str]) -> None:
        self.daemons = daemons
        self.names = names
        self.leads: dict[int, set[str]] = defaultdict(set)
        self.where: dict[tuple[int, str], str] = {}
        self.cursor: dict[str, float] = {}
        self.samples = 0
        self.last: dict[str, dict[str, Any]] = {}
        self.skip: set[str] = set()

    def _saw(self, term: int, lead: str, how: str) -> None:
        self.leads[term].add(lead)
        self.where.setdefault((term, lead), how)
        if len(self.leads[term]) > 1:
            detail = {self.names.get(x, x): self.where[(term, x)] for x in self.leads[term]}
            raise SplitBrain(f"term {term} has two leads: {detail}")

    def sample(self, only: Collection[str] | None = None) -> dict[str, dict[str, Any]]:
        out = {}
        for d in self.daemons:
            if d.name in self.skip or (only is not None and d.name not in only):
                continue
            if d.proc is not None and d.proc.poll() is not None:
                raise AssertionError(f"{d.name} exited with {d.proc.returncode}:\n{d.log()}")
            with d.client() as c:
                st = c.status()
                events = c.events(self.cursor.get(d.name, 0.0))
            out[d.name] = st
            if st["lead"] is not None:
                self._saw(int(st["lead"]["term"]), st["lead"]["id"], f"{d.name} status")
            for e in events:
                self.cursor[d.name] = max(self.cursor.get(d.name, 0.0), e["at"])
                if e["type"] == "LEAD_ELECTED":
                    self._saw(int(e["term"]), e["lead"], f"{d.name} event at {e['at']:.3f}")
        self.samples += 1
        self.last = out
        return out

    def until(
        self,
        pred: Callable[[dict[str, dict[str, Any]]], Any],
        timeout: float,
        what: str,
        only: Collection[str] | None = None,
    ) -> Any:
        """Sample every POLL s until ``pred(samples)`` is truthy (bounded in time and count)."""
        end = time.monotonic() + timeout
        for _ in range(int(timeout / POLL) + 1):
            value = pred(self.sample(only))
            if value:
                return value
            if time.monotonic() >= end:
                break
            time.sleep(POLL)
        states = {n: (s["lead"], s["lead_reason"], s["term"]) for n, s in self.last.items()}
        logs = "\n".join(f"===== {d.name}\n{d.log()}" for d in self.daemons)
        raise AssertionError(
            f"timed out after {timeout:.0f} s waiting for {what}: {states}\n{logs}"
        )


def agreed(samples: dict[str, dict[str, Any]], names: Iterable[str]) -> tuple[str, int] | None:
    """The (lead id, term) all of ``names`` report, or None."""
    seen = set()
    for n in names:
        if n not in samples:
            return None
        lead = samples[n]["lead"]
        seen.add(None if lead is None else (lead["id"], int(lead["term"])))
    if len(seen) == 1:
        (only,) = seen
        return only
    return None
