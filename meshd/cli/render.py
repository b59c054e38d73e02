"""Plain-text rendering of ``meshctl status`` (no rich: meshctl must start fast)."""

from __future__ import annotations

from typing import Any

from meshd import clock


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
    now = clock.wall() if now is None else now
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
    rows = [("NAME", "ID", "ROLE", "STATE", "PRI", "ADDRESS", "LAST SEEN", "TASK")]
    rows.append(
        (
            "* " + me["name"],
            me["id"][:12],
            me["role"],
            "alive (self, lead)" if me["id"] == lead_id else "alive (self)",
            str(me["priority"]),
            f"{me['address'] or '-'}:{me['ports']['router']}",
            "-",
            task_cell(me),
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
                task_cell(p),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [head, ""]
    for row in rows:
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    tasks = status.get("tasks")
    if tasks:
        lines += ["", tasks_line(tasks)]
    return "\n".join(lines)


def task_cell(node: dict[str, Any]) -> str:
    """A node's current task: ``sleep 40% (+2)`` (``-`` when idle)."""
    cur = node.get("task")
    if not cur:
        return "-"
    more = int(node.get("tasks", 1)) - 1
    return f"{cur['skill']} {cur['pct']:.0f}%" + (f" (+{more})" if more > 0 else "")


def tasks_line(tasks: dict[str, Any]) -> str:
    """Mesh totals: ``tasks: 3 pending · 2 running · 120 done · 1 failed · success 99.2%``."""
    t = tasks["totals"]
    done = t["complete"] + t["verified"]
    rate = t.get("success_rate")
    parts = [
        f"{t['pending'] + t['retry']} pending",
        f"{t['assigned'] + t['running']} running",
        f"{done} done",
        f"{t['failed']} failed",
        f"{t['cancelled']} cancelled",
        "success " + ("-" if rate is None else f"{100 * rate:.1f}%"),
    ]
    return "tasks: " + " · ".join(parts)
