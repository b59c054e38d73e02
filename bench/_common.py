"""Shared helpers for the benchmarks: statistics and the real-process harness."""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from harness import Daemon, Mesh, all_see_all, run_meshd, wait_for  # noqa: E402

__all__ = ["Daemon", "Mesh", "all_see_all", "fmt", "pct", "run_meshd", "summary", "wait_for"]


def pct(values: list[float], p: float) -> float:
    """Percentile by nearest rank (p in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def summary(values: list[float], unit: str = "s", scale: float = 1.0) -> str:
    v = [x * scale for x in values]
    return (
        f"n={len(v)} median {statistics.median(v):.3f} {unit}, p99 {pct(v, 99):.3f} {unit}, "
        f"min {min(v):.3f}, max {max(v):.3f}"
    )


def fmt(x: float) -> str:
    return f"{x:.3f}"
