"""``meshctl health``: is this node in a working mesh? For scripts, monitors, systemd.

Healthy means the local daemon answers ``status``, sees a lead (which it only does
while a quorum of the mesh agrees on one) and has no warning. Exit codes: 0 healthy; 1
unhealthy, with a one-line reason on stderr (``meshctl: unhealthy: no lead: no quorum``,
``...: no lead: election in progress``, ``...: meshd did not answer 'status' within 5 s``);
3 no daemon runs (``meshctl: error: meshd is not running ...``,
:data:`~meshd.cli.common.EXIT_NOT_RUNNING`); 5 degraded: a lead, but warnings - records
of the node's store found bad at start and quarantined (``meshctl: degraded: 2 state
records quarantined (meta/term: term ... out of range, ...); see meshctl state quarantine
list``), until an operator clears them (``meshctl state quarantine clear``),
:data:`~meshd.cli.common.EXIT_DEGRADED`. Without a lead the exit code stays 1.

``--json`` prints ``{"healthy": bool, "degraded": bool, "reason": str | null, "lead":
{...} | null, "members": n, "warnings": [str]}`` on stdout in every case (the exit code
and the stderr line stay the same); ``members`` counts the live members (alive or
suspect), this node included, 0 when the daemon did not answer; ``warnings``: one line
per quarantined record.

It imports only the client (no daemon code), so a health check costs a process start
and one control round trip.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer

from meshd.cli.common import (
    EXIT_DEGRADED,
    EXIT_FAILURE,
    EXIT_NOT_RUNNING,
    EXIT_OK,
    MESHCTL_STATE,
)
from meshd.client import Client
from meshd.errors import ControlError, DaemonNotRunning


def assess(status: dict[str, Any]) -> tuple[bool, str | None, int]:
    """``(healthy, reason, live members)`` from a ``status`` reply."""
    counts = status.get("counts") or {}
    members = 1 + int(counts.get("alive", 0)) + int(counts.get("suspect", 0))
    if status.get("lead") is None:
        return False, str(status.get("lead_reason") or "no lead"), members
    return True, None, members


def warnings(status: dict[str, Any]) -> list[str]:
    """One line per warning of a ``status`` reply: each quarantined state record."""
    return [
        f"state record quarantined: {q.get('table')}/{str(q.get('key'))[:40]}: {q.get('reason')}"
        for q in status.get("quarantine") or []
    ]


def degraded_reason(status: dict[str, Any]) -> str | None:
    """Why a node with a lead is degraded (its quarantined records), or None."""
    records = status.get("quarantine") or []
    if not records:
        return None
    shown = ", ".join(
        f"{q.get('table')}/{str(q.get('key'))[:40]}: {q.get('reason')}" for q in records[:2]
    )
    more = ", ..." if len(records) > 2 else ""
    return (
        f"{len(records)} state record{'s' if len(records) != 1 else ''} quarantined "
        f"({shown}{more}); see meshctl state quarantine list"
    )


def health(
    as_json: Annotated[
        bool, typer.Option("--json", help='Print {"healthy", "reason", "lead", "members"}.')
    ] = False,
    timeout: Annotated[
        float,
        typer.Option("--timeout", min=0.1, max=300, help="Seconds to wait for the daemon."),
    ] = 5.0,
) -> None:
    """Exit 0 if this node is in a mesh with a lead; 1 (reason on stderr) if not; 3 if no
    daemon runs; 5 if degraded (a lead, but quarantined state records)."""
    lead: dict[str, Any] | None = None
    reason: str | None
    members = 0
    notes: list[str] = []
    degraded = False
    try:
        with Client(MESHCTL_STATE["dir"], timeout=timeout) as client:
            status = client.status()
    except DaemonNotRunning as exc:
        code, healthy, reason = EXIT_NOT_RUNNING, False, str(exc)
    except ControlError as exc:
        code, healthy, reason = EXIT_FAILURE, False, str(exc)  # timeout, permission
    else:
        healthy, why, members = assess(status)
        lead = status.get("lead")
        notes = warnings(status)
        code, reason = (EXIT_OK, None) if healthy else (EXIT_FAILURE, why)
        if healthy and (why := degraded_reason(status)) is not None:
            code, healthy, degraded, reason = EXIT_DEGRADED, False, True, why
    if as_json:
        out = {
            "healthy": healthy,
            "degraded": degraded,
            "reason": reason,
            "lead": lead,
            "members": members,
            "warnings": notes,
        }
        print(json.dumps(out, sort_keys=True))
    elif lead is not None and (healthy or degraded):
        state = "healthy" if healthy else "degraded"
        print(f"{state}: lead {lead.get('name')} (term {lead.get('term')}), {members} members")
    if code != EXIT_OK:
        line = (reason or "unhealthy").splitlines()[0]
        kind = {EXIT_NOT_RUNNING: "error", EXIT_DEGRADED: "degraded"}.get(code, "unhealthy")
        print(f"meshctl: {kind}: {line}", file=sys.stderr)
        raise SystemExit(code)
