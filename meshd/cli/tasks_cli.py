"""``meshctl delegate`` and ``meshctl task ...``: delegation from the command line.

Exit codes (beyond the shared ones in :mod:`meshd.cli.common`): 0 the task completed (or,
with ``--no-wait``, was stored); 1 it failed or was cancelled; 2 the request was refused
before anything was stored (unknown skill, role, node or task, bad params); 124 it was
still running when ``--wait-timeout`` ran out.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Annotated, Any

import typer

from meshd import clock
from meshd.cli.common import EXIT_FAILURE, EXIT_NOT_RUNNING, EXIT_USAGE, MESHCTL_STATE, fail
from meshd.client import Client
from meshd.errors import ControlError, DaemonNotRunning

#: Exit code when ``--wait-timeout`` passes with the task still unfinished (as timeout(1)).
EXIT_WAIT_TIMEOUT = 124
#: Daemon error codes that mean "your request is wrong" (nothing was stored).
INPUT_ERRORS = frozenset(
    {
        "unknown_skill",
        "bad_params",
        "unknown_role",
        "unknown_node",
        "unknown_task",
        "bad_request",
        "ambiguous",
    }
)

task_app = typer.Typer(
    help="Delegated tasks: list, show, cancel, retry, hand off.", no_args_is_help=True
)


def _state_dir() -> Any:
    return MESHCTL_STATE["dir"]


def call(fn: Any, timeout: float = 5.0) -> Any:
    try:
        with Client(_state_dir(), timeout=timeout) as client:
            return fn(client)
    except DaemonNotRunning as exc:
        fail("meshctl", str(exc), EXIT_NOT_RUNNING)
    except ControlError as exc:
        fail("meshctl", str(exc), EXIT_USAGE if exc.code in INPUT_ERRORS else EXIT_FAILURE)


def parse_params(command: list[str], params: list[str]) -> tuple[str, dict[str, str]]:
    """``SKILL k=v ...`` (as words, or one quoted string) plus ``--param k=v`` words."""
    from meshd.skills.spec import SkillError, parse_command

    text = command[0] if len(command) == 1 else " ".join(_quote(w) for w in command)
    try:
        name, values = parse_command(text)
        if params:
            _, extra = parse_command("x " + " ".join(_quote(p) for p in params))
            for key, value in extra.items():
                if key in values:
                    raise SkillError(f"parameter {key!r} given twice")
                values[key] = value
    except SkillError as exc:
        fail("meshctl", str(exc), EXIT_USAGE)
    return name, values


def _quote(word: str) -> str:
    import shlex

    return shlex.quote(word)


def bar(pct: float, width: int = 24) -> str:
    filled = round(width * max(0.0, min(100.0, pct)) / 100)
    return "[" + "#" * filled + "." * (width - filled) + "]"


def _show_result(view: dict[str, Any], as_json: bool) -> int:
    if as_json:
        print(json.dumps(view, indent=2, sort_keys=True, default=repr))
    state = view["state"]
    if state in ("complete", "verified"):
        if not as_json:
            result = view["result"]
            if isinstance(result, dict | list):
                print(json.dumps(result, indent=2, sort_keys=True, default=repr))
            elif result is not None:
                print(result)
        return 0
    if not as_json:
        err = view.get("error") or {}
        code = err.get("code") or state
        print(
            f"meshctl: task {view['id']} {state}: {code}: {err.get('message', '')}".rstrip(": "),
            file=sys.stderr,
        )
    return EXIT_FAILURE


def follow(
    client: Client, view: dict[str, Any], timeout: float | None, tty: bool
) -> dict[str, Any]:
    """Wait for the task, drawing a progress line on a TTY; the task as it stands when it
    finished or ``timeout`` passed (check ``["terminal"]``)."""
    end = None if timeout is None else clock.monotonic() + timeout
    drawn = False
    while not view["terminal"]:
        if tty:
            prog = view["progress"]
            where = view.get("assigned_name") or "-"
            line = (
                f"\r{bar(prog['pct'])} {prog['pct']:5.1f}%  {view['state']:<9} on {where:<16}"
                f" {prog['message'][:30]}"
            )
            sys.stderr.write(line.ljust(100)[:100])
            sys.stderr.flush()
            drawn = True
        left = 10.0 if end is None else end - clock.monotonic()
        if left <= 0:
            break
        view = client.watch_task(view["id"], view["version"], min(left, 10.0))
    if drawn:
        sys.stderr.write("\r" + " " * 100 + "\r")
        sys.stderr.flush()
    return view


def delegate(
    command: Annotated[
        list[str],
        typer.Argument(help='SKILL [key=value ...], or one quoted "SKILL key=value ..."'),
    ],
    param: Annotated[
        list[str] | None, typer.Option("--param", "-p", help="A parameter as key=value.")
    ] = None,
    role: Annotated[str | None, typer.Option("--role", help="Only an agent of this role.")] = None,
    node: Annotated[str | None, typer.Option("--node", help="Only this node (name or id).")] = None,
    capability: Annotated[
        str | None, typer.Option("--capability", help="Only an agent with this capability.")
    ] = None,
    priority: Annotated[int, typer.Option("--priority", min=0, max=9, help="0..9, 9 first.")] = 5,
    timeout: Annotated[
        float | None, typer.Option("--timeout", min=0.001, help="Seconds one attempt may take.")
    ] = None,
    after: Annotated[
        list[str] | None, typer.Option("--after", help="A task that must complete first.")
    ] = None,
    wait: Annotated[
        bool,
        typer.Option("--wait/--no-wait", help="Wait for the result (default) or print the id."),
    ] = True,
    wait_timeout: Annotated[
        float | None, typer.Option("--wait-timeout", min=0.0, help="Stop waiting after S seconds.")
    ] = None,
    idempotent: Annotated[
        bool | None,
        typer.Option(
            "--idempotent/--not-idempotent",
            help="May it be re-run after a crash? Default: the skill's own flag.",
        ),
    ] = None,
    verify: Annotated[
        bool, typer.Option("--verify", help="Run the verify step on the result.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the task as JSON.")] = False,
) -> None:
    """Delegate a skill to the mesh: the lead picks the best agent, the result comes back."""
    if role and node:
        fail("meshctl", "give --role or --node, not both", EXIT_USAGE)
    skill, params = parse_params(command, param or [])

    def run(client: Client) -> int:
        handle = client.delegate(
            skill,
            params,
            role=role,
            node=node,
            capability=capability,
            priority=priority,
            timeout=timeout,
            after=after or (),
            idempotent=idempotent,
            verify=verify,
        )
        if not wait:
            if as_json:
                print(json.dumps(handle.view, indent=2, sort_keys=True, default=repr))
            else:
                print(handle.task_id)
            return 0
        tty = sys.stderr.isatty() and not as_json
        final = follow(client, handle.view, wait_timeout, tty)
        if not final["terminal"]:
            print(
                f"meshctl: task {handle.task_id} still running after {wait_timeout:g} s "
                f"(meshctl task show {handle.task_id})",
                file=sys.stderr,
            )
            return EXIT_WAIT_TIMEOUT
        return _show_result(final, as_json)

    raise SystemExit(call(run))


@task_app.command("list")
def task_list(
    state: Annotated[str | None, typer.Option("--state", help="e.g. running, failed")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=100000)] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Tasks this node knows (every node holds a copy of every task), newest first."""
    tasks = call(lambda c: c.tasks(state, limit))
    if as_json:
        print(json.dumps(tasks, indent=2, sort_keys=True, default=repr))
        return
    print(task_table(tasks))


def task_table(tasks: list[dict[str, Any]], now: float | None = None) -> str:
    from meshd.cli.render import ago

    now = clock.wall() if now is None else now
    rows = [("ID", "SKILL", "STATE", "PRI", "NODE", "PROGRESS", "CREATED", "DETAIL")]
    for t in tasks:
        err = t.get("error") or {}
        detail = err.get("code", "") if t["state"] == "failed" else t["progress"]["message"]
        rows.append(
            (
                t["id"][:12],
                t["skill"],
                t["state"],
                str(t["priority"]),
                t.get("assigned_name") or "-",
                f"{t['progress']['pct']:.0f}%",
                ago(t["created_at"], now),
                str(detail)[:40],
            )
        )
    if len(rows) == 1:
        return "no tasks"
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows
    )


@task_app.command("show")
def task_show(
    task_id: Annotated[str, typer.Argument(help="Task id (or a unique prefix).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """One task in full: parameters, state, progress, result or error, and its history."""
    t = call(lambda c: c.task(task_id))
    if as_json:
        print(json.dumps(t, indent=2, sort_keys=True, default=repr))
        return
    req = {k: v for k, v in t["requirement"].items() if v}
    lines = [
        f"task      {t['id']}",
        f"skill     {t['skill']}  params {json.dumps(t['params'], sort_keys=True)}",
        f"state     {t['state']}  (attempt {t['attempt']}, retries {t['retry_count']}/"
        f"{t['retry_limit']}, priority {t['priority']}, "
        f"{'idempotent' if t['idempotent'] else 'not idempotent'})",
        f"origin    {t['origin_name']}  requirement {req or 'any agent'}",
        f"agent     {t.get('assigned_name') or '-'}",
        f"progress  {bar(t['progress']['pct'])} {t['progress']['pct']:.1f}% "
        f"{t['progress']['message']}",
    ]
    if t["depends_on"]:
        lines.append(f"after     {', '.join(t['depends_on'])}")
    if t["error"]:
        lines.append(f"error     {t['error']['code']}: {t['error']['message']}")
    if t["state"] in ("complete", "verified"):
        lines.append(f"result    {json.dumps(t['result'], sort_keys=True, default=repr)}")
    lines.append("history")
    for h in t["history"]:
        when = (
            time.strftime("%H:%M:%S", time.localtime(h["at"]))
            + f".{int(h['at'] * 1000) % 1000:03d}"
        )
        lines.append(f"  {when}  {h['state']:<9} {h['reason']}")
    print("\n".join(lines))


@task_app.command("cancel")
def task_cancel(
    task_id: Annotated[str, typer.Argument(help="Task id (or a unique prefix).")],
) -> None:
    """Cancel a task: the lead stops it on its agent."""
    t = call(lambda c: c.cancel(task_id))
    print(f"task {t['id']} {t['state']}")


@task_app.command("retry")
def task_retry(
    task_id: Annotated[str, typer.Argument(help="Task id (or a unique prefix).")],
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait for the new run.")] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Retry a non-idempotent task lost with its agent: it may already have run.",
        ),
    ] = False,
) -> None:
    """Run a FAILED task again on purpose. A non-idempotent task that failed agent_lost
    may already have run on the lost agent; retrying it needs --force."""

    def run(client: Client) -> int:
        t = client.retry(task_id, force)
        if not wait:
            print(f"task {t['id']} {t['state']} (retried)")
            return 0
        return _show_result(follow(client, t, None, sys.stderr.isatty()), False)

    raise SystemExit(call(run))


@task_app.command("handoff")
def task_handoff(
    task_id: Annotated[str, typer.Argument(help="Task id (or a unique prefix).")],
    to: Annotated[str | None, typer.Option("--to", help="Target node (default: the best).")] = None,
) -> None:
    """Move a running task, with its last checkpoint, to another agent."""
    t = call(lambda c: c.handoff(task_id, to))
    print(f"task {t['id']} {t['state']} on {t.get('assigned_name') or '-'}")
