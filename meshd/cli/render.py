"""Plain-text rendering of ``meshctl status`` (no rich: meshctl must start fast)."""

from __future__ import annotations

import time
from typing import Any


def ago(ts: float | None, now: float) -> str:
    if ts is None:
        return "never"
    delta = max(0.0, now - ts)
    if delta < 60:
        return f"{delta:.1f}s ago"
    if delta < 3600:
        return f"{delta / 60:.0f}m ago"
    if delta < 86400:
        return f"{delta / 3600:.0f}h ago"
    return f"{delta / 86400:.0f}d ago"


def status_table(status: dict[str, Any], now: float | None = None) -> str:
    now = time.time() if now is None else now
    me = status["self"]
    peers = status["peers"]
    counts = status.get("counts", {})
    lead = status.get("lead")
    lead_text = (
        f"{lead['name']} (term {lead['term']})"
        if lead
        else f"none ({status.get('lead_reason') or 'not elected'})"
    )
    total = counts.get("total", len(peers) + 1)
    head = (
        f"mesh {me['mesh_id']} · {total} node{'' if total == 1 else 's'} "
        f"({counts.get('alive', 0) + 1} alive, {counts.get('suspect', 0)} suspect, "
        f"{counts.get('dead', 0)} dead, {counts.get('left', 0)} left) · lead: {lead_text}"
    )
    lead_id = lead["id"] if lead else None
    rows = [("NAME", "ID", "ROLE", "STATE", "PRI", "ADDRESS", "LAST SEEN")]
    rows.append(
        (
            "* " + me["name"],
            me["id"][:12],
            me["role"],
            "alive (self, lead)" if me["id"] == lead_id else "alive (self)",
            str(me["priority"]),
            f"{me['address'] or '-'}:{me['ports']['router']}",
            "-",
        )
    )
    for p in peers:
        rows.append(
            (
                "  " + p["name"],
                p["id"][:12],
                p["role"],
                p["state"] + (" (lead)" if p["id"] == lead_id else ""),
                str(p["priority"]),
                p["address"] or "-",
                ago(p["last_seen"], now),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [head, ""]
    for row in rows:
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    return "\n".join(lines)
