"""Chaos: 5 daemons in network namespaces, a burst of tasks, one fault in the middle.

Real ``meshd`` processes found by mDNS on one bridge, distinct priorities (h1 leads when
all is well). Each run delegates a burst of tasks at ``RATE``/s, round-robin through every
daemon that can answer, alternating idempotent and non-idempotent. Every task runs the
packed skill ``chaoslog``, which appends ``start`` and ``end`` lines to a file named after
its key in a directory outside the mesh: that log, not the mesh's own records, says how
often each task really started. One fault is injected a third of the way through:

============  ===============================================================
kill_lead     ``kill -9`` of the lead; restarted (same state dir) 3 s later
kill_worker   ``kill -9`` of the busiest other node; restarted 3 s later
cut_lead      silent cut of the lead (nft drop on its links, links stay up), 5 s
partition     3|2 with the lead on the 2-side, 5 s
loss          10 % of the packets every node receives dropped at random, 5 s
stop_lead     SIGSTOP of the lead for 5 s, then SIGCONT
============  ===============================================================

After each run: every acknowledged task is terminal, with one final state (state and
error code) on every node; no non-idempotent task started twice (the log); no term had
two leads (status and LEAD_ELECTED events of every node, sampled every 0.1 s during the
whole run); and one lead is agreed by every node within 2 s of the heal (of the restart,
for the kills). ``MESHD_CHAOS_TASKS`` (default 60) and ``MESHD_CHAOS_REPEAT``
(default 2) size the suite; the README's table comes from ``MESHD_CHAOS_TASKS=500``.

The module skips, with the reason, where this machine cannot build the lab or run nft in
it. Everything it makes (daemons by pid, namespaces by exact name, the log directory) is
removed at the end, whatever happens.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from harness import DEADLINE, Daemon, Mesh, all_see_all, run_meshctl, wait_for
from meshlab import POLL, Watch, agreed, cut_from, lossless, lossy, unfiltered
from netlab import Host, Lab, Node, nft_usable

from meshd.client import Client
from meshd.errors import MeshError

pytestmark = pytest.mark.lab

PORT = 7790
PRIORITIES = (100, 90, 80, 70, 60)
#: Tasks per run and runs per fault (see the module docstring).
TASKS = int(os.environ.get("MESHD_CHAOS_TASKS", "60"))
REPEAT = int(os.environ.get("MESHD_CHAOS_REPEAT", "2"))
#: Tasks per second of the burst.
RATE = 50.0
#: s. How long each task's skill runs.
TASK_SECONDS = 0.2
#: s. How long a cut, partition, loss or stop lasts; how long a killed daemon stays down.
FAULT_SECONDS = 5.0
DOWN_SECONDS = 3.0
#: s. Generous bounds: every wait polls and stops at the first success.
FORM_DEADLINE = max(DEADLINE, 60.0)
SETTLE_DEADLINE = max(DEADLINE, 60.0)
FINISH_DEADLINE = max(DEADLINE, 120.0)
#: s. After the heal (the restart, for the kills), every node reports the same lead within
#: this (the issue's bound; dead members are contacted again about once a second).
HEAL_BOUND = 2.0
FAULTS = ("kill_lead", "kill_worker", "cut_lead", "partition", "loss", "stop_lead")
TERMINAL = frozenset({"complete", "verified", "failed", "cancelled"})
#: Where each run's figures are appended (one JSON line per run), for the README table.
REPORT = os.environ.get("MESHD_CHAOS_REPORT", "")

SKILL_MAIN = '''
"""chaoslog: note the start and the end of a run in a log outside the mesh."""

import os
import time

LOG = {log!r}


def note(key, what):
    fd = os.open(os.path.join(LOG, key), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, f"{{what}} {{os.getpid()}} {{time.time():.6f}}\\n".encode())
    finally:
        os.close(fd)


def run(ctx):
    key = str(ctx.params["key"])
    note(key, "start")
    time.sleep(float(ctx.params["seconds"]))
    note(key, "end")
    return {{"key": key}}
'''

SKILL_TOML = """
name = "chaoslog"
version = "1.0.0"
description = "Note the start and the end of a run in a log outside the mesh."
entry = "main.py"
idempotent = true

[permissions]
write = [{log!r}]

[limits]
wall_seconds = 30

[[params]]
name = "key"
type = "str"
required = true

[[params]]
name = "seconds"
type = "float"
default = 0.2
"""


@dataclass
class Acked:
    task_id: str
    key: str
    idempotent: bool
    via: str


@dataclass
class RunFigures:
    fault: str
    repeat: int
    acked: int = 0
    refused: int = 0
    twice: int = 0
    idempotent_reruns: int = 0
    agent_lost: int = 0
    failed: int = 0
    terms: int = 0
    two_leads: int = 0
    agree_s: float | None = None
    elect_s: float | None = None
    settle_s: float = 0.0
    lag_ms_max: float = 0.0
    stalls: int = 0
    codes: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class Chaos:
    """The lab, the five daemons and the log directory, shared by every run."""

    def __init__(self, lab: Lab, mesh: Mesh, log_dir: Path, root: Path) -> None:
        self.lab = lab
        self.mesh = mesh
        self.log_dir = log_dir
        self.root = root
        self.nodes: list[Node] = []
        self.daemons: list[Daemon] = []
        self.ids: dict[str, str] = {}
        self.names: dict[str, str] = {}
        self.node_of: dict[str, Node] = {}
        self.down: set[str] = set()  # killed or stopped: not asked anything
        self.runs = 0

    # -- the mesh ------------------------------------------------------------------------

    def form(self) -> None:
        self.nodes = self.lab.add_nodes(len(PRIORITIES))
        why = nft_usable(self.lab.host, self.nodes[0].ns)
        if why is not None:
            pytest.skip(why)
        for n, pri in zip(self.nodes, PRIORITIES, strict=True):
            d = self.mesh.add(
                f"h{n.index}",
                mdns=True,
                listen=f"0.0.0.0:{PORT}",
                wrap=self.lab.exec_prefix(n),
                extra=("--interface", n.ifaces[0], "--priority", str(pri)),
            )
            d.start()
            self.lab.track(d.proc, d.stop)
            self.daemons.append(d)
            self.node_of[d.name] = n
        for d in self.daemons:
            d.wait_ready()
        wait_for(lambda: all_see_all(self.daemons), FORM_DEADLINE, "5 nodes to see each other")
        self.ids = {d.name: d.node_id for d in self.daemons}
        self.names = {i: n for n, i in self.ids.items()}
        # The skill, packed (signed) by h1 and installed from the file on every node.
        folder = self.root / "chaoslog"
        folder.mkdir()
        (folder / "skill.toml").write_text(SKILL_TOML.format(log=str(self.log_dir)))
        (folder / "main.py").write_text(SKILL_MAIN.format(log=str(self.log_dir)))
        pack = self.root / "chaoslog.pack"
        h1 = str(self.daemons[0].state_dir)
        out = run_meshctl("--state-dir", h1, "skill", "pack", str(folder), "-o", str(pack))
        assert out.returncode == 0, out.stderr
        for d in self.daemons:
            out = run_meshctl("--state-dir", str(d.state_dir), "skill", "install", str(pack))
            assert out.returncode == 0, out.stderr

    def daemon(self, name: str) -> Daemon:
        return next(d for d in self.daemons if d.name == name)

    def restart(self, name: str) -> None:
        d = self.daemon(name)
        d.start()
        self.lab.track(d.proc, d.stop)
        d.wait_ready()
        self.down.discard(name)

    def healthy(self, watch: Watch) -> tuple[str, int]:
        """Every daemon up, unfiltered, all alive to each other, the top node leading."""
        for name in list(self.down):
            d = self.daemon(name)
            if d.proc is not None and d.proc.poll() is None:
                d.proc.send_signal(signal.SIGCONT)
                self.down.discard(name)
            else:
                self.restart(name)
        for n in self.nodes:
            unfiltered(self.lab, n)
        wait_for(lambda: all_see_all(self.daemons), SETTLE_DEADLINE, "all 5 alive to each other")
        everyone = list(self.ids)
        top = self.ids[self.daemons[0].name]
        lead: tuple[str, int] = watch.until(
            lambda s: (a := agreed(s, everyone)) and a[0] == top and a,
            SETTLE_DEADLINE,
            "the top-priority node to lead",
        )
        return lead

    def started(self) -> Counter[str]:
        """Starts per key, from the log outside the mesh."""
        out: Counter[str] = Counter()
        for path in self.log_dir.iterdir():
            text = path.read_text()
            out[path.name] = sum(1 for line in text.splitlines() if line.startswith("start "))
        return out


@pytest.fixture(scope="module")
def chaos(host: Host, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chaos]:
    root = tmp_path_factory.mktemp("chaos")
    # The skill runs as nobody (when the daemon runs as root) under Landlock: its log
    # directory is world-writable and declared in the manifest.
    log_dir = Path(tempfile.mkdtemp(prefix="meshd-chaos-"))
    log_dir.chmod(0o777)
    lab = Lab(host)
    mesh = Mesh(root)
    try:
        the_chaos = Chaos(lab, mesh, log_dir, root)
        the_chaos.form()
        yield the_chaos
    finally:
        try:
            mesh.close()
        finally:
            try:
                lab.close()
            finally:
                shutil.rmtree(log_dir, ignore_errors=True)


class Sampler(threading.Thread):
    """Samples the watch every POLL s until stopped; keeps a timeline of what every node
    reported (or the first failure, re-raised by :meth:`finish`)."""

    def __init__(self, watch: Watch) -> None:
        super().__init__(daemon=True)
        self.watch = watch
        self.stop = threading.Event()
        self.timeline: list[tuple[float, dict[str, tuple[str, int] | None]]] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        for _ in range(100_000):  # bounded: 10,000 s at POLL
            if self.stop.is_set():
                return
            try:
                samples = self.watch.sample()
            except (MeshError, OSError):
                time.sleep(POLL)  # a daemon restarting: ask again
                continue
            except BaseException as exc:
                self.error = exc
                return
            view = {
                n: None if s["lead"] is None else (s["lead"]["id"], int(s["lead"]["term"]))
                for n, s in samples.items()
            }
            self.timeline.append((time.monotonic(), view))
            time.sleep(POLL)

    def finish(self) -> None:
        self.stop.set()
        self.join(timeout=30)
        if self.error is not None:
            raise self.error

    def agreed_after(
        self, t0: float, names: list[str], not_by: frozenset[str] = frozenset()
    ) -> float | None:
        """Seconds from ``t0`` to the first sample in which all ``names`` agree on a lead
        (one whose id is not in ``not_by``)."""
        for t, view in self.timeline:
            if t < t0 or any(n not in view for n in names):
                continue
            leads = {view[n] for n in names}
            if len(leads) == 1 and None not in leads:
                (one,) = leads
                if one is not None and one[0] not in not_by:
                    return t - t0
        return None


class Burst(threading.Thread):
    """Delegates TASKS tasks at RATE/s, round-robin through the daemons that are up."""

    def __init__(self, chaos: Chaos, prefix: str) -> None:
        super().__init__(daemon=True)
        self.chaos = chaos
        self.prefix = prefix
        self.acked: list[Acked] = []
        self.refused: list[str] = []
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        clients: dict[str, Client] = {}
        t0 = time.monotonic()
        try:
            for i in range(TASKS):
                delay = t0 + i / RATE - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                up = [d for d in self.chaos.daemons if d.name not in self.chaos.down]
                d = up[i % len(up)]
                key = f"{self.prefix}-{i:04d}"
                idempotent = i % 2 == 0
                self.sent = i + 1
                try:
                    if d.name not in clients:
                        clients[d.name] = Client(d.state_dir, timeout=5.0)
                    handle = clients[d.name].delegate(
                        "chaoslog",
                        {"key": key, "seconds": TASK_SECONDS},
                        role="network-admin",
                        idempotent=idempotent,
                    )
                except (MeshError, OSError) as exc:
                    self.refused.append(f"{key} via {d.name}: {exc}")
                    stale = clients.pop(d.name, None)
                    if stale is not None:
                        with contextlib.suppress(Exception):
                            stale.close()
                    continue
                self.acked.append(Acked(handle.task_id, key, idempotent, d.name))
        except BaseException as exc:
            self.error = exc
        finally:
            for c in clients.values():
                with contextlib.suppress(Exception):
                    c.close()


def loop_figures(chaos: Chaos) -> dict[str, dict[str, float]]:
    """Each running daemon's loop-lag figures (the worst over the last minute, stalls)."""
    out = {}
    for d in chaos.daemons:
        if d.name in chaos.down or d.proc is None or d.proc.poll() is not None:
            continue
        out[d.name] = d.status()["metrics"]["node"]["loop"]
    return out


def final_states(chaos: Chaos) -> dict[str, dict[str, tuple[str, str]]]:
    out = {}
    for d in chaos.daemons:
        with d.client() as c:
            rows = c.tasks(limit=1_000_000)
        out[d.name] = {r["id"]: (r["state"], (r.get("error") or {}).get("code", "")) for r in rows}
    return out


def inject(chaos: Chaos, fault: str, lead: str) -> tuple[Callable[[], None], str]:
    """Start ``fault``; returns its undo and the node it hit."""
    lab = chaos.lab
    names = [d.name for d in chaos.daemons]
    if fault in ("kill_lead", "kill_worker"):
        victim = lead
        if fault == "kill_worker":  # the busiest other node
            busy = {n: chaos.daemon(n).status()["tasks"]["here"]["running"] for n in names}
            victim = max((n for n in names if n != lead), key=lambda n: busy[n])
        chaos.down.add(victim)
        chaos.daemon(victim).kill9()
        return (lambda: chaos.restart(victim)), victim
    if fault == "cut_lead":
        lab.cut(chaos.node_of[lead])
        return (lambda: lab.heal(chaos.node_of[lead])), lead
    if fault == "partition":
        minority = [lead, next(n for n in reversed(names) if n != lead)]
        majority = [n for n in names if n not in minority]
        for n in minority:
            cut_from(lab, chaos.node_of[n], [chaos.node_of[m] for m in majority])

        def heal() -> None:
            for n in minority:
                lab.heal(chaos.node_of[n])

        return heal, "+".join(minority)
    if fault == "loss":
        for n in chaos.nodes:
            lossy(lab, n, 10)

        def lossless_all() -> None:
            for n in chaos.nodes:
                lossless(lab, n)

        return lossless_all, "all"
    if fault == "stop_lead":
        d = chaos.daemon(lead)
        assert d.proc is not None
        chaos.down.add(lead)
        d.proc.send_signal(signal.SIGSTOP)

        def cont() -> None:
            assert d.proc is not None
            d.proc.send_signal(signal.SIGCONT)
            chaos.down.discard(lead)

        return cont, lead
    raise ValueError(fault)


@pytest.mark.parametrize("repeat", range(REPEAT))
@pytest.mark.parametrize("fault", FAULTS)
def test_chaos(chaos: Chaos, fault: str, repeat: int) -> None:
    watch = Watch(chaos.daemons, chaos.names)
    watch.skip = chaos.down  # the same set: a killed or stopped daemon is not asked
    lead_id, _ = chaos.healthy(watch)
    lead = chaos.names[lead_id]
    chaos.runs += 1
    figures = RunFigures(fault, repeat)
    stalls_before = {n: f["stalls"] for n, f in loop_figures(chaos).items()}
    sampler = Sampler(watch)
    burst = Burst(chaos, f"{fault}{repeat}")
    sampler.start()
    burst.start()
    try:
        # The fault comes a third of the way through the burst.
        wait_for(lambda: burst.sent >= TASKS // 3, FINISH_DEADLINE, "a third of the burst")
        t_fault = time.monotonic()
        undo, victim = inject(chaos, fault, lead)
        time.sleep(DOWN_SECONDS if fault.startswith("kill") else FAULT_SECONDS)
        # The side without the victims agreed on a lead among themselves (failover).
        hit = victim.split("+")
        rest = [n for n in chaos.ids if n not in hit]
        not_by = frozenset(chaos.ids[lead] for _ in [0] if lead in hit)
        figures.elect_s = sampler.agreed_after(t_fault, rest, not_by)
        undo()
        t_heal = time.monotonic()
        burst.join(timeout=FINISH_DEADLINE)
        assert not burst.is_alive(), "the burst did not end"
        if burst.error is not None:
            raise burst.error
        everyone = list(chaos.ids)
        # One lead, agreed by all five, after the heal.
        wait_for(
            lambda: sampler.agreed_after(t_heal, everyone) is not None,
            SETTLE_DEADLINE,
            "all five to agree on a lead after the heal",
        )
        figures.agree_s = sampler.agreed_after(t_heal, everyone)
        figures.acked = len(burst.acked)
        figures.refused = len(burst.refused)
        ids = [a.task_id for a in burst.acked]

        def converged() -> bool:
            states = final_states(chaos)
            for tid in ids:
                seen = {states[n].get(tid) for n in states}
                if len(seen) != 1:
                    return False
                (one,) = seen
                if one is None or one[0] not in TERMINAL:
                    return False
            return True

        t_settle = time.monotonic()
        try:
            wait_for(converged, FINISH_DEADLINE, "every acked task terminal, alike everywhere")
        except AssertionError:
            states = final_states(chaos)
            odd = {
                tid: {n: states[n].get(tid) for n in states}
                for tid in ids
                if len({states[n].get(tid) for n in states}) != 1
                or next(iter(states.values())).get(tid, ("?",))[0] not in TERMINAL
            }
            views = []
            for tid in list(odd)[:3]:
                with chaos.daemons[0].client() as c:
                    views.append(json.dumps(c.task(tid), indent=1, default=str))
            raise AssertionError(
                f"{len(odd)} tasks not terminal alike: {dict(list(odd.items())[:10])}\n"
                + "\n".join(views)
            ) from None
        figures.settle_s = time.monotonic() - t_settle
    finally:
        sampler.finish()
        figures.terms = len(watch.leads)
        figures.two_leads = sum(1 for v in watch.leads.values() if len(v) > 1)

    loops = loop_figures(chaos)
    if fault == "stop_lead":
        loops.pop(victim, None)  # its "lag" is the stop itself
    figures.lag_ms_max = max(f["lag_ms_max"] for f in loops.values())
    figures.stalls = sum(
        f["stalls"] - stalls_before.get(n, 0) if f["stalls"] >= stalls_before.get(n, 0)
        else f["stalls"]  # restarted: counted from its start
        for n, f in loops.items()
    )  # fmt: skip
    states = final_states(chaos)[chaos.daemons[0].name]
    starts = chaos.started()
    twice = [a.key for a in burst.acked if not a.idempotent and starts[a.key] > 1]
    figures.twice = len(twice)
    figures.idempotent_reruns = sum(1 for a in burst.acked if a.idempotent and starts[a.key] > 1)
    figures.agent_lost = sum(1 for a in burst.acked if states[a.task_id][1] == "agent_lost")
    figures.failed = sum(1 for a in burst.acked if states[a.task_id][0] == "failed")
    figures.codes = dict(
        Counter(states[a.task_id][1] for a in burst.acked if states[a.task_id][0] == "failed")
    )
    # Every non-idempotent key of the burst, acked or not, counts: none may start twice.
    prefix = f"{fault}{repeat}-"
    twice_any = [k for k, n in starts.items() if k.startswith(prefix) and n > 1]
    twice_any = [
        k for k in twice_any if int(k.rsplit("-", 1)[1]) % 2 == 1
    ]  # odd indexes: non-idempotent
    print(
        f"\n[chaos] {fault} #{repeat} (hit {victim}): {figures.acked} acked, "
        f"{figures.refused} refused while down; non-idempotent started twice "
        f"{figures.twice}; idempotent re-runs {figures.idempotent_reruns}; failed "
        f"{figures.failed} ({figures.codes}); terms seen {figures.terms}, "
        f"with two leads {figures.two_leads}; the rest agreed on a lead "
        f"{figures.elect_s if figures.elect_s is None else round(figures.elect_s, 2)} s "
        f"after the fault; heal -> one lead agreed by all five in "
        f"{figures.agree_s:.2f} s; all tasks terminal alike {figures.settle_s:.1f} s later; "
        f"worst loop lag {figures.lag_ms_max:.0f} ms, {figures.stalls} stalls >= 100 ms"
    )
    if REPORT:
        with open(REPORT, "a") as f:
            f.write(json.dumps({**figures.__dict__, "victim": victim, "tasks": TASKS}) + "\n")
    assert twice == [] and twice_any == [], f"non-idempotent tasks started twice: {twice_any}"
    assert figures.two_leads == 0, dict(watch.leads)
    assert figures.agree_s is not None and figures.agree_s <= HEAL_BOUND, figures
