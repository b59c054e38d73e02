"""The shape of the package, checked from its source (ARCHITECTURE.md, "Nevers").

The import graph is read with ``ast`` from every module of ``meshd`` — every import
statement, at module level or inside a function, ``TYPE_CHECKING`` blocks included — and
held against the rules: which layer may import which, no import circle anywhere, no I/O
module in the pure core, no ``Node`` outside the daemon's node module. Each module is also
imported alone in a fresh interpreter state, which an import circle would break.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterable
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "meshd"

#: The pure layers: events and ``now`` in, effects out; never the shell.
PURE = ("meshd.wire", "meshd.membership", "meshd.election", "meshd.tasks", "meshd.effects",
        "meshd.core", "meshd.sim")  # fmt: skip
#: The I/O shell.
SHELL = ("meshd.daemon", "meshd.net", "meshd.store")
#: meshctl: a thin layer over the client.
MESHCTL = ("meshd.cli.meshctl_app", "meshd.cli.tasks_cli", "meshd.cli.skills_cli",
           "meshd.cli.top", "meshd.cli.render", "meshd.cli.health", "meshd.cli.common")  # fmt: skip
#: Standard library and third-party modules that touch the outside world (or the loop).
IO_MODULES = ("asyncio", "socket", "select", "selectors", "signal", "subprocess", "threading",
              "os", "shutil", "tempfile", "pathlib", "time", "fcntl", "zmq", "lmdb",
              "zeroconf", "urllib", "http", "sqlite3", "io")  # fmt: skip


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(tree: ast.AST, name: str, is_pkg: bool) -> Iterable[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_pkg else 0)]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            yield mod
            yield from (f"{mod}.{alias.name}" for alias in node.names)


@cache
def graph() -> dict[str, frozenset[str]]:
    """meshd module -> the meshd modules it imports (anywhere in its source)."""
    known = modules()
    out: dict[str, frozenset[str]] = {}
    for name, path in known.items():
        tree = ast.parse(path.read_text(), str(path))
        targets = set()
        for target in _imports(tree, name, path.name == "__init__.py"):
            if target in known and target != name:
                targets.add(target)
        out[name] = frozenset(targets)
    return out


@cache
def external_imports(name: str) -> frozenset[str]:
    """Top-level names of the non-meshd modules ``name`` imports."""
    path = modules()[name]
    tree = ast.parse(path.read_text(), str(path))
    tops = {t.split(".")[0] for t in _imports(tree, name, path.name == "__init__.py")}
    return frozenset(t for t in tops if t and t != "meshd")


def under(name: str, prefixes: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def violations(src: Iterable[str], dst: Iterable[str]) -> list[str]:
    src, dst = tuple(src), tuple(dst)
    return sorted(
        f"{a} -> {b}"
        for a, targets in graph().items()
        if under(a, src)
        for b in targets
        if under(b, dst)
    )


def test_the_graph_is_read() -> None:
    g = graph()
    assert len(g) > 50
    # A few arrows that must be there: the reader finds module-level, nested and
    # "from package import module" imports.
    assert "meshd.core" in g["meshd.daemon.node"]
    assert "meshd.wire.records" in g["meshd.wire.messages"]
    assert "meshd.net.transport" in g["meshd.daemon.node"]  # imported inside a function


@pytest.mark.parametrize(
    ("src", "dst", "why"),
    [
        (PURE, SHELL, "the pure core never imports the shell"),
        (PURE, ("meshd.cli", "meshd.client", "meshd.service", "meshd.skills"),
         "the pure core never imports the front ends or the skill runner"),
        (("meshd.wire",), ("meshd.membership", "meshd.election", "meshd.tasks", "meshd.skills",
                           "meshd.effects", "meshd.core", "meshd.sim", "meshd.identity",
                           "meshd.roles", "meshd.log"),
         "wire/ imports nothing above the ground floor"),
        (("meshd.skills",), ("meshd.tasks",), "skills/ does not know the task machine"),
        (("meshd.tasks",), ("meshd.skills",), "tasks/ does not know the skill runner"),
        (("meshd.skills",), (*SHELL, "meshd.core"), "skills/ never imports the shell"),
        (("meshd.net",), ("meshd.membership", "meshd.election", "meshd.tasks", "meshd.core",
                          "meshd.effects", "meshd.sim", "meshd.daemon", "meshd.skills"),
         "net/ knows frames, not protocols"),
        ((*MESHCTL, "meshd.client", "meshd.control_proto"), ("meshd.daemon", "meshd.net",
                                                            "meshd.store", "meshd.core"),
         "meshctl and the client talk to the daemon only over the control socket"),
        (("meshd.store",), ("meshd.daemon", "meshd.net", "meshd.core"),
         "the store knows records, not the shell"),
    ],
)  # fmt: skip
def test_forbidden_arrows(src: tuple[str, ...], dst: tuple[str, ...], why: str) -> None:
    assert violations(src, dst) == [], why


def test_the_rule_check_would_catch_a_forbidden_arrow() -> None:
    # The checker itself: an arrow that exists is found by the same function.
    assert "meshd.daemon.node -> meshd.core" in violations(("meshd.daemon",), ("meshd.core",))


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    g = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in g:
        if v not in index:
            visit(v)
    return out


def test_no_import_circle() -> None:
    cycles = [
        c
        for c in _cycles()
        # package <-> its own submodule (an __init__ that re-exports) is not a circle of design
        if not (len(c) == 2 and c[1].startswith(c[0] + "."))
    ]
    assert cycles == []


def test_the_pure_core_does_no_io() -> None:
    bad = {
        name: sorted(external_imports(name) & set(IO_MODULES))
        for name in graph()
        if under(name, PURE)
    }
    assert {k: v for k, v in bad.items() if v} == {}


def test_no_node_outside_the_daemons_node_module() -> None:
    """No function or class outside meshd/daemon/node.py takes or holds a ``Node``."""
    found = []
    for name, path in modules().items():
        if name == "meshd.daemon.node":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.arg | ast.AnnAssign) and node.annotation is not None:
                names = {n.id for n in ast.walk(node.annotation) if isinstance(n, ast.Name)}
                names |= {
                    n.value
                    for n in ast.walk(node.annotation)
                    if isinstance(n, ast.Constant) and isinstance(n.value, str)
                }
                if "Node" in names:
                    found.append(f"{name}:{node.lineno}")
    assert found == []


def test_every_module_imports_alone() -> None:
    """Each module imported first, in a fresh interpreter state for meshd (an import
    circle shows as a partially initialised module)."""
    script = """
import importlib, sys
names = sys.argv[1:]
failed = []
for name in names:
    for loaded in [m for m in sys.modules if m == "meshd" or m.startswith("meshd.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception as exc:
        failed.append(f"{name}: {type(exc).__name__}: {exc}")
print("\\n".join(failed))
"""
    names = [n for n in modules() if n != "meshd.__main__"]
    proc = subprocess.run(
        [sys.executable, "-c", script, *names],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""


def test_test_files_have_unique_names() -> None:
    """pytest imports test modules by basename (no packages in tests/): two files with
    the same name in different folders break collection."""
    names = [p.name for p in (ROOT / "tests").rglob("test_*.py")]
    assert sorted({n for n in names if names.count(n) > 1}) == []
