"""Forks until the process limit stops it; every child keeps forking too."""

import os
import time

from meshd import skill


def run(ctx: skill.Context) -> object:
    forks = 0
    while True:
        try:
            pid = os.fork()
        except OSError:
            break
        if pid == 0:
            while True:  # a child never returns to the sandbox: it forks, or waits
                try:
                    os.fork()
                except OSError:
                    time.sleep(0.05)
        forks += 1
        if forks > 1000:
            break
    return forks
