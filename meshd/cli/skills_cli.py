"""``meshctl skill ...`` (write, pack, install, share, trust, revoke skills) and
``meshctl approve`` / ``deny`` (tasks whose skill needs an operator's approval).

Exit codes as the rest of meshctl: 0 ok, 1 refused or failed (a pack that does not
verify: the reason is printed), 2 a wrong request (unknown skill or task, bad key).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from meshd.cli.common import EXIT_USAGE, fail
from meshd.cli.tasks_cli import call

skill_app = typer.Typer(
    help="Skill packs: write, pack, install, share, describe, trust, revoke.",
    no_args_is_help=True,
)
trust_app = typer.Typer(help="Keys whose packs this node installs.", no_args_is_help=True)
skill_app.add_typer(trust_app, name="trust")


def _dump(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=repr))


@skill_app.command("new")
def skill_new(
    name: Annotated[str, typer.Argument(help="Skill name (a letter, then letters, digits, -_.)")],
    folder: Annotated[
        Path | None, typer.Option("--dir", help="Where to create it (default ./NAME).")
    ] = None,
) -> None:
    """Scaffold a new skill folder (skill.toml + main.py) that packs as it is."""
    from meshd.skills.archive import PackError
    from meshd.skills.scaffold import new_skill

    target = folder or Path(name)
    try:
        new_skill(target, name)
    except PackError as exc:
        fail("meshctl", str(exc), EXIT_USAGE)
    except OSError as exc:
        fail("meshctl", f"cannot create {target}: {exc.strerror}", EXIT_USAGE)
    print(f"created {target}/ (skill.toml, main.py): edit, then `meshctl skill pack {target}`")


@skill_app.command("pack")
def skill_pack(
    folder: Annotated[Path, typer.Argument(help="The skill's folder (with skill.toml).")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Archive path.")] = None,
) -> None:
    """Build one signed archive (signed with this node's key) from a skill folder."""
    res = call(lambda c: c.pack_skill(folder, out))
    print(
        f"{res['path']}: {res['name']} {res['version']}, {res['size']} bytes, "
        f"pack id {res['pack_id']}"
    )


@skill_app.command("install")
def skill_install(
    what: Annotated[str, typer.Argument(help="A pack file, or the name of a skill in the mesh.")],
) -> None:
    """Verify and install a pack file, or fetch a skill another member holds."""
    path = Path(what)
    if path.exists() or what.endswith(".pack") or "/" in what:
        res = call(lambda c: c.install_pack(path))
    else:
        res = call(lambda c: c.install_skill(what))
    print(f"installed {res['name']} {res['version']} (pack id {res.get('pack_id', '-')})")


@skill_app.command("list")
def skill_list(
    mesh: Annotated[
        bool, typer.Option("--mesh", help="Also what every other member holds.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Skills on this node (built-in and packs, with usage statistics), and with --mesh
    which host has which version."""
    rows = call(lambda c: c.skills(mesh))
    if as_json:
        _dump(rows)
        return
    table = [("NODE", "SKILL", "VERSION", "KIND", "RUNS", "FAILED", "MEAN")]
    for r in rows:
        runs = r.get("runs")
        table.append(
            (
                r["node"],
                r["name"],
                r["version"],
                r["kind"],
                "-" if runs is None else str(runs),
                "-" if runs is None else str(r.get("failures", 0)),
                "-" if not runs else f"{r.get('mean_duration', 0.0):.3f}s",
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())


@skill_app.command("describe")
def skill_describe(
    what: Annotated[str, typer.Argument(help="A skill name, or a pack file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """What a skill does, its parameters, permissions, limits and usage statistics."""
    path = Path(what)
    if path.is_file():
        info = call(lambda c: c.inspect_pack(path))
    else:
        info = call(lambda c: c.describe_skill(what))
    if as_json:
        _dump(info)
        return
    lines = [f"{info['name']} {info['version']}: {info.get('description', '')}"]
    kind = "pack" if info.get("pack_id") else ("built-in" if info.get("builtin") else "mesh")
    lines.append(
        f"  kind        {kind}{'' if info.get('installed', True) else ' (not installed here)'}"
    )
    if info.get("pack_id"):
        lines.append(f"  pack id     {info['pack_id']}")
        lines.append(f"  signer      {info['signer']}")
    lines.append(f"  idempotent  {'yes' if info.get('idempotent') else 'no'}")
    if info.get("permissions"):
        perms = info["permissions"]
        granted = [k for k in ("network", "internet", "privileged") if perms.get(k)]
        lines.append(
            f"  permissions {', '.join(granted) or 'none'}"
            + (f"; read {perms['read']}" if perms.get("read") else "")
            + (f"; write {perms['write']}" if perms.get("write") else "")
        )
        if perms.get("internet") or perms.get("privileged"):
            lines.append("              every task waits for `meshctl approve TASK_ID`")
    if info.get("limits"):
        lim = info["limits"]
        lines.append("  limits      " + ", ".join(f"{k}={v}" for k, v in lim.items()))
    if info.get("holders"):
        lines.append(f"  held by     {', '.join(info['holders'])}")
    stats = info.get("stats")
    if stats:
        lines.append(
            f"  usage       {stats['runs']} runs, {stats['failures']} failed, "
            f"mean {stats['mean_duration']:.3f}s"
        )
    lines.append("  parameters")
    for p in info.get("params", []):
        req = "required" if p.get("required") else f"default {p.get('default')!r}"
        rng = ""
        if p.get("minimum") is not None or p.get("maximum") is not None:
            lo, hi = p.get("minimum"), p.get("maximum")
            if p["type"] == "int":
                lo, hi = (None if lo is None else int(lo)), (None if hi is None else int(hi))
            rng = f", {'' if lo is None else lo}..{'' if hi is None else hi}"
        lines.append(f"    {p['name']} ({p['type']}, {req}{rng}): {p.get('description', '')}")
    if not info.get("params"):
        lines.append("    none")
    print("\n".join(lines))


@skill_app.command("remove")
def skill_remove(name: Annotated[str, typer.Argument(help="An installed pack's name.")]) -> None:
    """Uninstall a pack from this node."""
    call(lambda c: c.remove_skill(name))
    print(f"removed {name}")


@skill_app.command("publish")
def skill_publish(name: Annotated[str, typer.Argument(help="An installed pack's name.")]) -> None:
    """Announce a pack to the mesh: members that trust its signer fetch and install it."""
    res = call(lambda c: c.publish_skill(name))
    print(f"published {res['name']} {res['version']} (pack id {res['pack_id']})")


@skill_app.command("revoke")
def skill_revoke(
    key: Annotated[list[str] | None, typer.Option("--key", help="A signer key (64 hex).")] = None,
    pack: Annotated[list[str] | None, typer.Option("--pack", help="A pack id (64 hex).")] = None,
) -> None:
    """Revoke signer keys and/or pack ids: what they cover stops running and is never
    installed again. The revocation is signed with this node's key: it applies here, and
    on every member where that key may revoke it (a revoker there, added with `trust add
    KEY --revoker`, or revoking its own key or the packs it signed)."""
    if not key and not pack:
        fail("meshctl", "give --key KEY and/or --pack PACK_ID", EXIT_USAGE)
    res = call(lambda c: c.revoke(key, pack))
    print(
        f"revoked {len(res['keys'])} key(s), {len(res['packs'])} pack(s), signed by this "
        f"node's key {res['by']}; told the mesh"
    )


@trust_app.command("add")
def trust_add(
    key: Annotated[str, typer.Argument(help="An Ed25519 public key, 64 hex digits.")],
    note: Annotated[str, typer.Option("--note", help="Whose key this is.")] = "",
    revoker: Annotated[
        bool,
        typer.Option(
            "--revoker", help="Also accept this key's revocations of any signer key or pack."
        ),
    ] = False,
) -> None:
    """Trust packs signed by KEY (besides the mesh's own members); with --revoker, KEY may
    also revoke any key or pack on this node (a member's key may otherwise revoke only
    itself and the packs it signed)."""
    call(lambda c: c.trust_add(key, note, revoker))
    print(f"trusted {key}" + (" (revoker)" if revoker else ""))


@trust_app.command("remove")
def trust_remove(key: Annotated[str, typer.Argument(help="A key added with trust add.")]) -> None:
    """Stop trusting a key added with `trust add` (members stay trusted: revoke them)."""
    res = call(lambda c: c.trust_remove(key))
    print(f"removed {key}" + (" (still trusted: a member's key)" if res["trusted"] else ""))


@trust_app.command("list")
def trust_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Every trusted signer key: this node, the members, and keys added by an operator."""
    rows = call(lambda c: c.trust_list())
    if as_json:
        _dump(rows)
        return
    for r in rows:
        flag = (" REVOKER" if r.get("revoker") else "") + (" REVOKED" if r.get("revoked") else "")
        print(f"{r['key']}  {r['source']:<9} {r.get('note', '')}{flag}")


def approve(task_id: Annotated[str, typer.Argument(help="Task id (or a unique prefix).")]) -> None:
    """Approve a task whose skill needs it (internet or privileged): it runs."""
    t = call(lambda c: c.approve(task_id))
    print(f"task {t['id']} approved: {t['state']}")


def deny(
    task_id: Annotated[str, typer.Argument(help="Task id (or a unique prefix).")],
    reason: Annotated[str, typer.Option("--reason", help="Recorded with the decision.")] = "",
) -> None:
    """Deny a task waiting for approval: it fails with `denied`."""
    t = call(lambda c: c.deny(task_id, reason))
    print(f"task {t['id']} denied: {t['state']}")
