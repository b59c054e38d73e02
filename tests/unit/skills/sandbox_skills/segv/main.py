"""Dies of a signal without a result."""

import os
import signal
import sys

from meshd import skill


def run(ctx: skill.Context) -> object:
    sys.stderr.write("about to crash\n")
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGSEGV)
    return "unreachable"
