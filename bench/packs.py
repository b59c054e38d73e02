"""Skill pack figures: build and verify time, sandboxed start overhead, and the time for
a published 1 MB pack to be installed on every node of a 5-node mesh.

- **build / verify**: ``build_pack`` (hash every file, sign) and ``verify_pack`` (parse
  the archive, check every hash and the signature) of a pack with a 1 MB data file, in
  process, median of N;
- **sandbox start overhead**: ``SandboxedSkill.run`` of a skill that returns 1 (spawn,
  rlimits, namespaces, Landlock and uid drop where the host allows, scratch dir created
  and removed) against the in-process built-in ``echo`` through the same executor;
- **mesh install**: 5 real daemons on loopback; the pack is installed on one and
  published; time until all 5 list it (announce, chunked fetch, SHA-256, verify, install).

    python bench/packs.py --trials 20 --mesh-trials 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import Daemon, Mesh, all_see_all, pct, wait_for

from meshd.identity import Identity
from meshd.skills.build import build_pack
from meshd.skills.executor import Executor
from meshd.skills.policy import Limits, Permissions
from meshd.skills.sandbox import SandboxedSkill
from meshd.skills.scaffold import new_skill
from meshd.skills.spec import SkillSpec
from meshd.skills.verify import verify_pack


def make_skill(root: Path, name: str, mb: float) -> Path:
    folder = root / name
    new_skill(folder, name)
    (folder / "main.py").write_text("def run(ctx):\n    return 1\n")
    if mb:
        (folder / "data.bin").write_bytes(os.urandom(int(mb * 1024 * 1024)))
    return folder


def build_verify(root: Path, trials: int) -> dict[str, float]:
    ident = Identity.generate()
    folder = make_skill(root, "payload", 1.0)
    builds, verifies = [], []
    data = b""
    for _ in range(trials):
        t0 = time.perf_counter()
        data = build_pack(folder, ident)
        builds.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        verify_pack(
            data,
            trusted=lambda k: k == ident.ed25519_pk,
            revoked_keys=(),
            revoked_packs=(),
            installed_version=None,
            now=time.time(),
        )
        verifies.append(time.perf_counter() - t0)
    return {
        "pack_bytes": float(len(data)),
        "build_p50": pct(builds, 50),
        "verify_p50": pct(verifies, 50),
    }


async def _start_overhead(root: Path, trials: int) -> dict[str, Any]:
    folder = make_skill(root, "trivial", 0)
    spec = SkillSpec(name="trivial")
    runner = SandboxedSkill(spec, folder, "main.py", Limits(), Permissions(), scratch_root=root)
    ex = Executor()
    ex.registry.register(runner)
    sandboxed, inproc = [], []
    for i in range(trials + 3):
        t0 = time.perf_counter()
        res = await ex.run(f"s{i}", "trivial", {})
        dt = time.perf_counter() - t0
        assert res.ok and res.result == 1, res
        if i >= 3:
            sandboxed.append(dt)
        t0 = time.perf_counter()
        res = await ex.run(f"e{i}", "echo", {"message": "x"})
        if i >= 3:
            inproc.append(time.perf_counter() - t0)
    return {
        "sandbox_p50": pct(sandboxed, 50),
        "sandbox_p99": pct(sandboxed, 99),
        "inprocess_p50": pct(inproc, 50),
        "isolation": runner.last_isolation,
    }


def mesh_install(root: Path, trials: int) -> list[float]:
    mesh = Mesh(root / "mesh")
    try:
        first = mesh.add("n0", role="team-lead").start()
        first.wait_ready()
        nodes: list[Daemon] = [first] + [
            mesh.add(f"n{i}", role="observer", peers=(first.seed,)).start() for i in range(1, 5)
        ]
        for d in nodes:
            d.wait_ready()
        wait_for(lambda: all_see_all(nodes), what="5 nodes to form")
        out: list[float] = []
        for trial in range(trials):
            folder = make_skill(root, f"big{trial}", 1.0)
            with first.client() as c:
                res = c.call("skill_pack", dir=str(folder), out=str(root / f"big{trial}.pack"))
                c.call("skill_install", file=res["path"])
                t0 = time.monotonic()
                c.call("skill_publish", name=f"big{trial}")

            def everywhere(name: str = f"big{trial}") -> bool:
                for d in nodes:
                    with d.client() as c:
                        rows = c.call("skill_list", mesh=False)
                    if not any(r["name"] == name for r in rows):
                        return False
                return True

            deadline = t0 + 60
            while not everywhere():  # polled every 5 ms: finer than wait_for's 50 ms
                if time.monotonic() > deadline:
                    raise AssertionError("the pack did not reach all 5 nodes within 60 s")
                time.sleep(0.005)
            out.append(time.monotonic() - t0)
            print(f"  trial {trial + 1}: {out[-1]:.3f} s ({int(res['size']) / 1e6:.2f} MB)")
        return out
    finally:
        mesh.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--mesh-trials", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="meshd-bench-packs-") as tmp:
        root = Path(tmp)
        os.chmod(root, 0o755)  # the sandbox user must reach its scratch dirs
        bv = build_verify(root, args.trials)
        print(
            f"1 MB pack: build p50 {bv['build_p50'] * 1000:.1f} ms, "
            f"verify p50 {bv['verify_p50'] * 1000:.1f} ms ({bv['pack_bytes'] / 1e6:.2f} MB)"
        )
        so = asyncio.run(_start_overhead(root, args.trials))
        print(
            f"sandboxed skill run p50 {so['sandbox_p50'] * 1000:.1f} ms "
            f"(p99 {so['sandbox_p99'] * 1000:.1f} ms), in-process p50 "
            f"{so['inprocess_p50'] * 1e6:.0f} us; isolation {so['isolation']}"
        )
        times = mesh_install(root, args.mesh_trials) if args.mesh_trials else []
        if times:
            print(
                f"1 MB pack published -> installed on all 5 nodes: median "
                f"{statistics.median(times):.3f} s, max {max(times):.3f} s"
            )
        print(
            json.dumps(
                {**bv, **{k: v for k, v in so.items() if k != "isolation"}, "mesh_install": times}
            )
        )


if __name__ == "__main__":
    main()
