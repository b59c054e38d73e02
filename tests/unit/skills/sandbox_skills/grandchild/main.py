"""Starts `sleep 60`, reports its pid as progress, then waits for a long time."""

import subprocess
import time

from meshd import skill


def run(ctx: skill.Context) -> object:
    child = subprocess.Popen(["sleep", "60"])
    ctx.progress(1, str(child.pid))
    for _ in range(600):
        time.sleep(0.1)
    return "not stopped"
