"""``meshctl``: operate a mesh through the local daemon. A thin layer over meshd.client."""

from __future__ import annotations

import json
import sys
import time
from typing import Annotated, Any

import typer

from meshd import clock
from meshd.cli.common import EXIT_FAILURE, EXIT_NOT_RUNNING, MESHCTL_STATE, StateDir, fail
from meshd.client import Client
from meshd.errors import ControlError, DaemonNotRunning

app = typer.Typer(
    name="meshctl",
    help="Operate a meshd mesh through the daemon running on this host.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


_state = MESHCTL_STATE


@app.callback()
def _main(state_dir: StateDir = None) -> None:
    _state["dir"] = state_dir


def _call(fn: Any) -> Any:
    try:
        with Client(_state["dir"]) as client:
            return fn(client)
    except DaemonNotRunning as exc:
        fail("meshctl", str(exc), EXIT_NOT_RUNNING)
    except ControlError as exc:
        fail("meshctl", str(exc), EXIT_FAILURE)


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (schema in README).")] = False,
    watch: Annotated[bool, typer.Option("--watch", help="Refresh in place until Ctrl-C.")] = False,
    interval: Annotated[
        float, typer.Option("--interval", min=0.1, max=3600, help="Refresh period (s).")
    ] = 1.0,
) -> None:
    """Show the mesh as this node sees it: every member, its state and when it was last heard."""
    from meshd.cli.render import status_table

    if not watch:
        result = _call(lambda c: c.status())
        if as_json:
            print(json.dumps(result, indent=2, sort_keys=True))
        else:
            print(status_table(result))
        return

    def refresh(client: Client) -> None:
        while True:
            result = client.status()
            text = json.dumps(result, indent=2, sort_keys=True) if as_json else status_table(result)
            if sys.stdout.isatty():
                sys.stdout.write("\x1b[H\x1b[2J" + text + "\n")
            else:
                sys.stdout.write(text + "\n\n")
            sys.stdout.flush()
            time.sleep(interval)

    try:
        _call(refresh)
    except KeyboardInterrupt:
        return


@app.command()
def ping(
    peer: Annotated[str, typer.Argument(help="Peer name, node id or unique id prefix.")],
    count: Annotated[int, typer.Option("--count", "-c", min=1, max=10000)] = 3,
    timeout: Annotated[float, typer.Option("--timeout", min=0.01, max=60)] = 2.0,
) -> None:
    """Round trip to a peer through the mesh (CURVE link, codec), like ping(8)."""
    rtts = _call(lambda c: c.peer_ping(peer, count, timeout))
    for i, rtt in enumerate(rtts, 1):
        print(f"seq={i} rtt={rtt * 1000:.3f} ms")
    ordered = sorted(rtts)
    print(
        f"{len(rtts)} pings: min {ordered[0] * 1000:.3f} ms, "
        f"median {ordered[len(ordered) // 2] * 1000:.3f} ms, max {ordered[-1] * 1000:.3f} ms"
    )


lead_app = typer.Typer(help="The mesh's lead: hand it over or step it down.", no_args_is_help=True)
app.add_typer(lead_app, name="lead")


def _wait_lead(pred: Any, wait: float) -> dict[str, Any] | None:
    end = clock.monotonic() + wait

    def poll(client: Client) -> dict[str, Any] | None:
        while True:
            st: dict[str, Any] = client.status()
            if pred(st):
                return st
            if clock.monotonic() >= end:
                return None
            time.sleep(0.05)

    result: dict[str, Any] | None = _call(poll)
    return result


@lead_app.command("transfer")
def lead_transfer(
    node: Annotated[str, typer.Argument(help="Node to lead: name, node id or id prefix.")],
    wait: Annotated[float, typer.Option("--wait", min=0, max=600, help="Seconds to confirm.")] = 5,
) -> None:
    """Hand the lead to NODE now (automatic priority takeover pauses for a while)."""
    _call(lambda c: c.lead_transfer(node))

    def done(st: dict[str, Any]) -> bool:
        lead = st.get("lead")
        if not lead:
            return False
        return node in (lead["id"], lead["name"]) or (
            len(node) >= 4 and str(lead["id"]).startswith(node)
        )

    st = _wait_lead(done, wait)
    if st is None:
        fail("meshctl", f"the lead did not move to {node} within {wait:g} s", EXIT_FAILURE)
    print(f"lead: {st['lead']['name']} (term {st['lead']['term']})")


@lead_app.command("step-down")
def lead_step_down(
    wait: Annotated[float, typer.Option("--wait", min=0, max=600, help="Seconds to confirm.")] = 5,
) -> None:
    """Make the current lead step down; the next in priority order takes over."""
    before = _call(lambda c: c.lead_step_down())
    old = before.get("lead")

    def done(st: dict[str, Any]) -> bool:
        lead = st.get("lead")
        return lead is not None and lead["id"] != old

    st = _wait_lead(done, wait)
    if st is None:
        fail("meshctl", f"no new lead within {wait:g} s", EXIT_FAILURE)
    print(f"lead: {st['lead']['name']} (term {st['lead']['term']})")


@app.command()
def audit(
    since: Annotated[
        float, typer.Option("--since", help="Only records newer than this many seconds ago.")
    ] = 0.0,
    kind: Annotated[str | None, typer.Option("--type", help="e.g. LEAD_ELECTED")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The permanent record of coordination decisions this node took part in."""
    start = clock.wall() - since if since > 0 else 0.0
    records = _call(lambda c: c.audit(start, kind))
    if as_json:
        print(json.dumps(records, indent=2, sort_keys=True))
        return
    for r in records:
        print(audit_line(r))


state_app = typer.Typer(help="The node's own durable state.", no_args_is_help=True)
quarantine_app = typer.Typer(
    help="Records of this node's store found bad at start and set aside (quarantined).",
    no_args_is_help=True,
)
state_app.add_typer(quarantine_app, name="quarantine")
app.add_typer(state_app, name="state")


@quarantine_app.command("list")
def quarantine_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Every quarantined record: when, which table and key, why (its raw bytes stay in the
    store's quarantine table until cleared)."""
    records = _call(lambda c: c.quarantine())
    if as_json:
        print(json.dumps(records, indent=2, sort_keys=True))
        return
    if not records:
        print("no quarantined records")
    for r in records:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(r.get("at", 0.0))))
        print(f"{when}  {r.get('table')}/{r.get('key')}  {r.get('size')} bytes  {r.get('reason')}")


@quarantine_app.command("clear")
def quarantine_clear() -> None:
    """Delete the quarantined records (look at them first); `meshctl health` is no longer
    degraded by them. Audited (STATE_QUARANTINE_CLEARED)."""
    n = _call(lambda c: c.quarantine_clear())
    print(f"cleared {n} quarantined record{'s' if n != 1 else ''}")


def audit_line(r: dict[str, Any]) -> str:
    """One audit record as a line: time, type, then what matters for that type."""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(r.get("at", 0.0))))
    parts = []
    if r.get("term") is not None:
        parts.append(f"term {r['term']}")
    if r.get("lead_name") or r.get("lead"):
        parts.append(f"lead {r.get('lead_name') or str(r['lead'])[:12]}")
    if r.get("task_id"):
        parts.append(f"task {str(r['task_id'])[:12]} {r.get('skill', '')}".rstrip())
    for key in ("name", "version", "code", "via", "source", "by", "table", "address"):
        if r.get(key):
            parts.append(f"{key} {r[key]}")
    for key in ("key", "pack_id", "claimed"):
        if r.get(key):
            parts.append(f"{key} {str(r[key])[:16]}")
    for key in ("unfinished", "sources"):
        if key in r:
            parts.append(f"{key} {r[key]}")
    text = r.get("reason") or r.get("detail") or ""
    return f"{when}  {r.get('type', '?'):<22} {'  '.join(parts)}  {text}".rstrip()


from meshd.cli.health import health as _health  # noqa: E402
from meshd.cli.skills_cli import approve as _approve  # noqa: E402
from meshd.cli.skills_cli import deny as _deny  # noqa: E402
from meshd.cli.skills_cli import skill_app  # noqa: E402
from meshd.cli.tasks_cli import delegate as _delegate  # noqa: E402
from meshd.cli.tasks_cli import task_app  # noqa: E402
from meshd.cli.top import top as _top  # noqa: E402

app.command("delegate")(_delegate)
app.add_typer(task_app, name="task")
app.add_typer(skill_app, name="skill")
app.command("approve")(_approve)
app.command("deny")(_deny)
app.command("health")(_health)
app.command("top")(_top)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
