"""Says what the sandbox looks like from inside."""

import json
import os

from meshd import skill


def run(ctx: skill.Context) -> object:
    here = os.stat(ctx.scratch)
    (ctx.scratch / "note.txt").write_text(json.dumps({"ok": True}))
    return {
        "env": dict(os.environ),
        "scratch": str(ctx.scratch),
        "cwd": os.getcwd(),
        "mode": here.st_mode & 0o777,
        "owner": here.st_uid,
        "uid": os.getuid(),
        "gid": os.getgid(),
        "groups": os.getgroups(),
        "umask": os.umask(0o077),
        "note": (ctx.scratch / "note.txt").read_text(),
    }
