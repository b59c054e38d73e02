"""Shared CLI bits: exit codes and one-line errors (never a traceback for user mistakes)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer

#: Exit codes shared by ``meshd`` and ``meshctl``.
EXIT_OK = 0
EXIT_FAILURE = 1  # the operation failed at run time
EXIT_USAGE = 2  # bad arguments or configuration (typer/click use 2 as well)
EXIT_NOT_RUNNING = 3  # meshctl: no daemon to talk to
EXIT_LOCKED = 4  # meshd: another daemon owns the state dir
EXIT_DEGRADED = 5  # meshctl health: in a mesh with a lead, but with warnings (quarantine)


def fail(prog: str, message: str, code: int) -> NoReturn:
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(code)


#: The ``--state-dir`` option of both commands.
StateDir = Annotated[
    Path | None,
    typer.Option(
        "--state-dir",
        help="State dir of the daemon: identity, mesh key, LMDB store, control socket "
        "(default: $MESHD_STATE_DIR, $XDG_STATE_HOME/meshd, ~/.local/state/meshd, "
        "/var/lib/meshd for root).",
    ),
]


#: ``meshctl``'s global options (set by its callback, read by every command module).
MESHCTL_STATE: dict[str, Path | None] = {"dir": None}
