"""Shared CLI bits: exit codes and one-line errors (never a traceback for user mistakes)."""

from __future__ import annotations

import sys
from typing import NoReturn

#: Exit codes shared by ``meshd`` and ``meshctl``.
EXIT_OK = 0
EXIT_FAILURE = 1  # the operation failed at run time
EXIT_USAGE = 2  # bad arguments or configuration (typer/click use 2 as well)
EXIT_NOT_RUNNING = 3  # meshctl: no daemon to talk to
EXIT_LOCKED = 4  # meshd: another daemon owns the state dir


def fail(prog: str, message: str, code: int) -> NoReturn:
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(code)
