"""The template of a new skill (``meshctl skill new``): :func:`new_skill` writes a
``skill.toml`` with every field commented and a ``main.py`` that packs as it is."""

from __future__ import annotations

from pathlib import Path
from typing import Final

from meshd.skills.archive import PackError
from meshd.skills.manifest import MANIFEST_FILE, parse_name
from meshd.skills.spec import PARAM_TYPES

_TOML_TEMPLATE: Final = """\
# skill.toml: what the skill is, what it needs and what it may do.
# Every key is checked: a misspelt one is refused, not ignored.

name = "{name}"                   # a letter, then letters, digits, '-', '_' or '.'
version = "0.1.0"                 # semver MAJOR.MINOR.PATCH, optionally -prerelease
description = "Repeat a message a few times."
entry = "main.py"                 # the file whose run(ctx) is called
idempotent = true                 # true: running it twice is harmless, so it may be re-run
# expires = "2030-12-31"          # refused after that day (UTC), or a datetime with offset

[requires]
capabilities = []                 # capabilities the agent must have, e.g. ["network.probe"]
roles = []                        # roles that may run it; [] = any role

[permissions]
network = false                   # talk to the LAN
internet = false                  # reach beyond the LAN (every task then awaits approval)
privileged = false                # run as root (every task then awaits approval)
read = []                         # absolute paths it may read, e.g. ["/etc/hostname"]
write = []                        # absolute paths it may write

[limits]
cpu_seconds = 10                  # CPU time
memory_mb = 256                   # address space
wall_seconds = 60                 # wall-clock time
open_files = 64
processes = 16
output_kb = 256                   # stdout/stderr kept

[[params]]
name = "message"
type = "str"                      # {types}
description = "What to repeat."
default = "hello"

[[params]]
name = "count"
type = "int"
description = "How many times."
default = 3
minimum = 1
maximum = 100
"""

_MAIN_TEMPLATE: Final = '''\
"""{name}: repeat a message a few times.

The runner imports this file and calls ``run(ctx)``, where

- ``ctx.params`` holds the parameters declared in skill.toml, already checked and typed,
  defaults filled in (a read-only mapping);
- ``ctx.progress(pct, message)`` reports progress (pct from 0 to 100);
- ``ctx.checkpoint(data)`` saves opaque bytes: should the task move to another agent, the
  next run can pick up from there.

``run`` returns the task's result: a dict of plain values (str, int, float, bool, None,
bytes, lists, dicts). Raising an exception fails the task.
"""

from __future__ import annotations

from typing import Any


def run(ctx: Any) -> dict[str, object]:
    message = str(ctx.params["message"])
    count = int(ctx.params["count"])
    lines = []
    for i in range(1, count + 1):
        lines.append(f"{{i}}: {{message}}")
        ctx.progress(100.0 * i / count, f"said it {{i}} of {{count}} times")
        ctx.checkpoint(str(i).encode())
    return {{"lines": lines, "count": count}}
'''


def new_skill(folder: Path, name: str) -> None:
    """Create ``folder`` with a ``skill.toml`` (every field, commented) and a ``main.py``
    whose documented ``run(ctx)`` uses the params, progress and checkpoints; it builds
    with :func:`~meshd.skills.build.build_pack` as is. Refuses a bad ``name``
    (``bad_manifest``) and an existing folder that is not empty, or a file (``exists``)."""
    parse_name(name, "new skill")
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise PackError(f"{folder}: already exists and is not an empty folder", "exists")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST_FILE).write_text(
        _TOML_TEMPLATE.format(name=name, types=", ".join(PARAM_TYPES)), encoding="utf-8"
    )
    (folder / "main.py").write_text(_MAIN_TEMPLATE.format(name=name), encoding="utf-8")
