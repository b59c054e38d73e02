"""``meshd``: the daemon's command line (start, init, token, demo)."""

from __future__ import annotations

import ipaddress
import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from meshd.cli.common import EXIT_FAILURE, EXIT_LOCKED, EXIT_USAGE, StateDir, fail
from meshd.errors import ConfigError, MeshError, StateLockedError

app = typer.Typer(
    name="meshd",
    help="meshd: a peer-to-peer mesh daemon for the machines of one LAN.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _state_dir(path: Path | None) -> Path:
    from meshd.config import default_state_dir

    return (path or default_state_dir()).expanduser()


def _join_hint(token: str, role: str = "ROLE") -> str:
    return f"  meshd start --join {token} --role {role}"


@app.command()
def start(
    role: Annotated[str, typer.Option("--role", help="Role of this agent (agent_roles/).")],
    name: Annotated[str | None, typer.Option("--name", help="Display name.")] = None,
    priority: Annotated[
        int | None,
        typer.Option("--priority", min=0, max=1000, help="Lead priority; 0 = never lead."),
    ] = None,
    state_dir: StateDir = None,
    listen: Annotated[
        str | None,
        typer.Option(
            "--listen",
            help="ADDR[:PORT] to bind (default 0.0.0.0:7790; ports PORT..PORT+2; 0 = any).",
        ),
    ] = None,
    peer: Annotated[
        list[str] | None,
        typer.Option("--peer", help="Static seed peer HOST:PORT (repeatable)."),
    ] = None,
    no_mdns: Annotated[bool, typer.Option("--no-mdns", help="Do not use mDNS.")] = False,
    interface: Annotated[
        list[str] | None,
        typer.Option("--interface", help="Interface (name or IPv4) to announce on."),
    ] = None,
    join: Annotated[str | None, typer.Option("--join", help="Join token of a mesh.")] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="TOML config file (see README).")
    ] = None,
    log_level: Annotated[
        str | None, typer.Option("--log-level", help="debug, info, warning or error.")
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            min=0,
            max=65535,
            help="Serve Prometheus /metrics and /healthz on this port (0 = any).",
        ),
    ] = None,
    metrics_host: Annotated[
        str | None,
        typer.Option("--metrics-host", help="Address for --metrics-port (default 127.0.0.1)."),
    ] = None,
) -> None:
    """Start this host's mesh daemon (creates a new mesh on first start without --join)."""
    if not sys.stderr.isatty() and "rich" not in sys.modules:
        # structlog pretty-prints exceptions with rich when it can import it: ~5 MB of RSS
        # and ~70 ms of start-up in every daemon, for logs that go to journald or a file as
        # JSON anyway. On a terminal the pretty output is kept.
        sys.modules["rich"] = None  # type: ignore[assignment]
    import asyncio

    from meshd import config as cfgmod
    from meshd import log
    from meshd.config import parse_hostport
    from meshd.daemon.node import Node, run_node
    from meshd.identity import MeshKey
    from meshd.roles import get_role

    try:
        cfg = cfgmod.load_file(config) if config else cfgmod.lan()
        role_obj = get_role(role)
        node = cfg.node
        host, port = node.listen_host, node.listen_port
        if listen:
            host, port = parse_hostport(listen, cfgmod.DEFAULT_PORT)
            try:
                ipaddress.ip_address(host)
            except ValueError:
                raise ConfigError(f"--listen {listen!r}: give an IP address to bind") from None
        for p in peer or []:
            parse_hostport(p, cfgmod.DEFAULT_PORT)
        if join:
            MeshKey.from_token(join)
        discovery = cfg.discovery
        if no_mdns:
            discovery = replace(discovery, mdns=False)
        if interface:
            discovery = replace(discovery, interfaces=tuple(interface))
        if ipaddress.ip_address(host).is_loopback:
            # A node bound to loopback can only be reached there: announce there too.
            discovery = replace(discovery, allow_loopback=True)
            if not discovery.interfaces:
                discovery = replace(discovery, interfaces=(host,))
        level = log_level or node.log_level
        log.setup(level)
        sdir = _state_dir(state_dir or node.state_dir)
        node = replace(
            node,
            role=role,
            name=name or node.name,
            priority=priority if priority is not None else node.priority,
            state_dir=sdir,
            listen_host=host,
            listen_port=port,
            peers=tuple(peer or node.peers),
            join_token=join or node.join_token,
            log_level=level,
            metrics_port=metrics_port if metrics_port is not None else node.metrics_port,
            metrics_host=metrics_host or node.metrics_host,
        )
        cfg = replace(cfg, node=node, discovery=discovery)

        def announce_new_mesh(mesh: MeshKey, created: bool) -> None:
            if not created:
                return
            if sys.stderr.isatty():
                text = (
                    f"Created a new mesh {mesh.mesh_id}. To add a host, run on it:\n"
                    f"{_join_hint(mesh.token())}"
                )
            else:  # journald or a log file: the token is a secret, keep it out of logs
                text = (
                    f"Created a new mesh {mesh.mesh_id}. `meshd token` prints the "
                    "join token for other hosts."
                )
            print(text, file=sys.stderr, flush=True)

        daemon = Node(cfg, sdir, role_obj, on_ready=announce_new_mesh)
        raise SystemExit(asyncio.run(run_node(daemon)))
    except StateLockedError as exc:
        fail("meshd", str(exc), EXIT_LOCKED)
    except ConfigError as exc:
        fail("meshd", str(exc), EXIT_USAGE)
    except MeshError as exc:
        fail("meshd", str(exc), EXIT_FAILURE)


@app.command()
def init(
    state_dir: StateDir = None,
    join: Annotated[str | None, typer.Option("--join", help="Join this mesh's token.")] = None,
) -> None:
    """Create this host's identity and a new mesh (or join one with --join TOKEN)."""
    from meshd.daemon.state import prepare_state

    sdir = _state_dir(state_dir)
    try:
        setup = prepare_state(sdir, join)
    except ConfigError as exc:
        fail("meshd", str(exc), EXIT_USAGE)
    what = "Created a new mesh" if setup.created_mesh else "This host is in mesh"
    print(f"{what} {setup.mesh.mesh_id} (node {setup.identity.node_id}).")
    print(f"State dir: {sdir}")
    print(f"To add a host, run on it:\n{_join_hint(setup.mesh.token())}")


@app.command()
def token(state_dir: StateDir = None) -> None:
    """Print this mesh's join token (keep it secret: it admits hosts to the mesh)."""
    from meshd.daemon.state import load_mesh_key

    sdir = _state_dir(state_dir)
    try:
        mesh = load_mesh_key(sdir) if sdir.exists() else None
    except ConfigError as exc:
        fail("meshd", str(exc), EXIT_USAGE)
    if mesh is None:
        fail("meshd", f"no mesh in {sdir}: run 'meshd init' or 'meshd start' first", EXIT_USAGE)
    print(mesh.token())


@app.command()
def demo(
    nodes: Annotated[int, typer.Option("--nodes", min=2, max=30, help="How many nodes.")] = 3,
    base_port: Annotated[
        int,
        typer.Option(
            "--base-port", min=0, max=65000, help="First node's port (0: any free ports)."
        ),
    ] = 7800,
    duration: Annotated[
        float | None, typer.Option("--duration", min=1, help="Stop after this many seconds.")
    ] = None,
    keep: Annotated[bool, typer.Option("--keep", help="Keep the state dirs afterwards.")] = False,
) -> None:
    """Run a local mesh of NODES daemons on 127.0.0.1 and show it forming."""
    from meshd.cli.demo import run_demo

    raise SystemExit(run_demo(nodes, base_port, duration, keep))


# -- meshd service: run meshd as a systemd service ---------------------------------------

service_app = typer.Typer(
    help="Run meshd as a systemd service (install, uninstall, status).",
    no_args_is_help=True,
)
app.add_typer(service_app, name="service")

SystemScope = Annotated[
    bool, typer.Option("--system", help="The system service (default as root).")
]
UserScope = Annotated[bool, typer.Option("--user", help="A user service (default when not root).")]


@service_app.command("install")
def service_install(
    role: Annotated[
        str, typer.Option("--role", help="Role of this agent (agent_roles/).")
    ] = "observer",
    system: SystemScope = False,
    user: UserScope = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the unit and the commands; change nothing.")
    ] = False,
    name: Annotated[str | None, typer.Option("--name", help="Display name.")] = None,
    join: Annotated[
        str | None,
        typer.Option("--join", help="Join token of a mesh (kept out of the unit, mode 0600)."),
    ] = None,
    peer: Annotated[
        list[str] | None,
        typer.Option("--peer", help="Static seed peer HOST:PORT (repeatable)."),
    ] = None,
) -> None:
    """Install meshd as a systemd service (Type=notify, watchdog, hardened) and start it."""
    import os

    from meshd import service

    try:
        scope = service.resolve_scope(system, user)
        roles_dir = os.environ.get("MESHD_ROLES_DIR")
        opts = service.InstallOptions(
            role=role,
            scope=scope,
            name=name,
            join=join,
            peers=tuple(peer or ()),
            executable=service.find_executable(),
            environment=(("MESHD_ROLES_DIR", os.path.abspath(roles_dir)),) if roles_dir else (),
        )
        service.Installer(scope).install(opts, dry_run=dry_run)
    except ConfigError as exc:
        fail("meshd", str(exc), EXIT_USAGE)
    except MeshError as exc:
        fail("meshd", str(exc), EXIT_FAILURE)


@service_app.command("uninstall")
def service_uninstall(
    system: SystemScope = False,
    user: UserScope = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print what would be done; change nothing.")
    ] = False,
) -> None:
    """Stop, disable and remove the service (the state dir is kept)."""
    from meshd import service

    try:
        service.Installer(service.resolve_scope(system, user)).uninstall(dry_run=dry_run)
    except ConfigError as exc:
        fail("meshd", str(exc), EXIT_USAGE)
    except MeshError as exc:
        fail("meshd", str(exc), EXIT_FAILURE)


@service_app.command("status")
def service_status(system: SystemScope = False, user: UserScope = False) -> None:
    """systemctl status of the service, and whether the daemon answers (exit 0 yes, 3 no)."""
    from meshd import service
    from meshd.cli.common import EXIT_NOT_RUNNING

    try:
        scope = service.resolve_scope(system, user)
    except ConfigError as exc:
        fail("meshd", str(exc), EXIT_USAGE)
    raise SystemExit(0 if service.Installer(scope).status() else EXIT_NOT_RUNNING)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
