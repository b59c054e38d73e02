"""Tries to list params path; imports stdlib modules that the bootstrap did not."""

import json
import os

from meshd import skill


def run(ctx: skill.Context) -> object:
    try:
        listing = os.listdir(ctx.params["path"])
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
    return json.loads(json.dumps(sorted(listing)))
