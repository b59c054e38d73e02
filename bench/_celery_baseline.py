"""Baseline for the delegation benchmark: Celery workers on a local Redis, measured in-run.

``run_celery()`` starts its own ``redis-server`` (Debian package) on 127.0.0.1 at a free
port, in a temp dir, with persistence off; starts ``workers`` Celery worker processes, each
``--pool solo --concurrency 1`` (one task at a time, like 3 single-agent meshd nodes) with
its own ``-n name@host``; waits for them by polling ``app.control.ping``; measures; stops
everything by exact pid; removes the temp dir. Nothing leaves 127.0.0.1.

Figures (seconds, tasks/s):

* ``rtt_p50`` / ``rtt_p99`` / ``rtt_mean``: one trivial task, warm, sequential:
  ``echo.delay("x").get()``, from submit to result in hand.
* ``throughput``: ``n_throughput`` tasks submitted back to back with ``echo.delay``, then
  every result collected (``AsyncResult.get`` in submit order, Redis pub/sub); tasks per second
  from the first submit to the last result.

Setup: ``apt-get install -y redis-server`` and ``pip install 'celery[redis]'`` (or
``pip install -e '.[bench]'``).

    python bench/_celery_baseline.py --roundtrip 300 --throughput 3000
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import fmt, pct

# Settings a fair Celery user would pick for trivial, short tasks (Celery's configuration
# reference and optimizing guide). They go into both the client app and the workers' app:
# * Redis as broker and as result backend (the backend's ``get`` waits on Redis pub/sub,
#   no polling); JSON serializer (the default; payloads are a few bytes either way).
# * task_acks_late off (the default): ack on receipt, one Redis round trip less per task.
# * worker_prefetch_multiplier 4 (the default): the guide suggests a larger value for many
#   short tasks; 1 / 4 / 16 / 64 gave the same throughput within run-to-run noise on a
#   2-core box (the client, not the workers, is the bottleneck there), so keep the default.
# * worker_disable_rate_limits: skip the rate-limit bookkeeping on every task.
# * no task events (worker_send_task_events / task_send_sent_event off, the defaults), and
#   the workers run ``--without-gossip --without-mingle --without-heartbeat`` so the only
#   Redis traffic is the tasks, their results and the ping we wait on; log level WARNING so
#   no log line is written per task.
# * results expire after 10 min (nothing piles up in Redis; the server is ours anyway).
# * broker_connection_retry_on_startup=True (Celery 5 asks for it to be explicit).
SETTINGS: dict[str, Any] = {
    "task_serializer": "json",
    "result_serializer": "json",
    "accept_content": ["json"],
    "task_acks_late": False,
    "worker_prefetch_multiplier": 4,
    "worker_disable_rate_limits": True,
    "worker_send_task_events": False,
    "task_send_sent_event": False,
    "result_expires": 600,
    "broker_connection_retry_on_startup": True,
}
WORKER_FLAGS = ("--without-gossip", "--without-mingle", "--without-heartbeat")

TASK_NAME = "meshd_bench.echo"
APP_MODULE = "meshd_bench_celery_app"
URL_ENV = "MESHD_BENCH_REDIS_URL"

# The workers import this module from the temp dir (``celery -A`` adds the cwd to the path).
APP_SOURCE = f'''\
import os

from celery import Celery

app = Celery("meshd_bench", broker=os.environ["{URL_ENV}"], backend=os.environ["{URL_ENV}"])
app.conf.update({SETTINGS!r})


@app.task(name="{TASK_NAME}")
def echo(message):
    return message
'''

REDIS_DEADLINE = 10.0
WORKER_DEADLINE = 60.0
STOP_GRACE = 10.0
RTT_TIMEOUT = 10.0  # one task; generous for a loaded 2-core box


def _require() -> str:
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        raise RuntimeError(
            "redis-server not found: install it with `apt-get install -y redis-server` "
            "(the benchmark starts its own instance; the system service can stay stopped)"
        )
    missing = [m for m in ("celery", "redis") if importlib.util.find_spec(m) is None]
    if missing:
        raise RuntimeError(
            f"python package(s) {', '.join(missing)} not importable from {sys.executable}: "
            "install with `pip install 'celery[redis]'` (or `pip install -e '.[bench]'`)"
        )
    return redis_server


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def _poll(pred: Callable[[], bool], deadline: float, what: str, step: float = 0.05) -> None:
    """Call ``pred`` until true; bounded by ``deadline`` seconds (and so in count)."""
    end = time.monotonic() + deadline
    for _ in range(int(deadline / step) + 1):
        if pred():
            return
        if time.monotonic() >= end:
            break
        time.sleep(step)
    raise RuntimeError(f"timed out after {deadline:.0f} s waiting for {what}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM this exact pid, then SIGKILL it if it outlives the grace period."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_GRACE)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=STOP_GRACE)


def _start_redis(redis_server: str, tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Own redis-server on 127.0.0.1, no RDB/AOF, no unix socket; retried if the port races."""
    import redis

    log_path = tmp / "redis.log"
    for _ in range(3):  # a free port can be taken between probe and bind: retry a little
        port = _free_port()
        cmd = [
            redis_server,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--protected-mode",
            "yes",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp),
            "--daemonize",
            "no",
            "--logfile",
            str(log_path),
            "--databases",
            "1",
        ]
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1.0)

        def up(proc: subprocess.Popen[bytes] = proc, client: redis.Redis = client) -> bool:
            if proc.poll() is not None:
                return True  # exited: stop polling, decided below
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        try:
            _poll(up, REDIS_DEADLINE, "redis-server to answer PING")
        except RuntimeError:
            _stop(proc)
            raise
        finally:
            client.close()
        if proc.poll() is None:
            return proc, f"redis://127.0.0.1:{port}/0"
    raise RuntimeError(f"redis-server would not start:\n{_tail(log_path)}")


def _start_workers(
    n: int, tmp: Path, url: str, host: str, procs: list[subprocess.Popen[bytes]]
) -> list[str]:
    (tmp / f"{APP_MODULE}.py").write_text(APP_SOURCE)
    env = {**os.environ, URL_ENV: url, "PYTHONDONTWRITEBYTECODE": "1"}
    names = []
    for i in range(n):
        name = f"meshd-bench-{os.getpid()}-w{i}@{host}"
        names.append(name)
        cmd = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            APP_MODULE,
            "worker",
            "--pool",
            "solo",
            "--concurrency",
            "1",
            "-n",
            name,
            "--loglevel",
            "WARNING",
            "--logfile",
            str(tmp / f"worker{i}.log"),
            *WORKER_FLAGS,
        ]
        log = open(tmp / f"worker{i}.out", "wb")  # noqa: SIM115 - handed to the child
        procs.append(
            subprocess.Popen(
                cmd, cwd=tmp, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        )
        log.close()
    return names


def run_celery(
    n_roundtrip: int = 500,
    n_throughput: int = 5000,
    workers: int = 3,
    warmup: int = 50,
    clients: int = 1,
) -> dict[str, float]:
    """Start redis-server (Debian package) on 127.0.0.1 at a free port with a temp dir and no
    persistence, start ``workers`` Celery worker processes (each ``--concurrency 1 --pool
    solo``, like 3 single-agent nodes) with a trivial ``echo(message)`` task, measure, stop
    everything (by exact pid, never pkill), remove temp files, and return figures."""
    if n_roundtrip < 1 or n_throughput < 1 or workers < 1 or warmup < 0:
        raise ValueError("n_roundtrip, n_throughput and workers must be >= 1, warmup >= 0")
    redis_server = _require()
    from celery import Celery  # type: ignore[import-untyped]

    host = socket.gethostname()
    redis_proc: subprocess.Popen[bytes] | None = None
    worker_procs: list[subprocess.Popen[bytes]] = []
    app: Any = None
    with tempfile.TemporaryDirectory(prefix="meshd-bench-celery-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            redis_proc, url = _start_redis(redis_server, tmp)
            names = _start_workers(workers, tmp, url, host, worker_procs)

            app = Celery("meshd_bench", broker=url, backend=url, set_as_current=False)
            app.conf.update(SETTINGS)

            @app.task(name=TASK_NAME)  # type: ignore[untyped-decorator]
            def echo(message: str) -> str:
                return message

            seen: set[str] = set()

            def ready() -> bool:
                for i, p in enumerate(worker_procs):
                    if p.poll() is not None:
                        raise RuntimeError(
                            f"celery worker {i} exited with {p.returncode}:\n"
                            f"{_tail(tmp / f'worker{i}.out')}{_tail(tmp / f'worker{i}.log')}"
                        )
                missing = [n for n in names if n not in seen]
                for reply in app.control.ping(destination=missing, timeout=0.5) or []:
                    seen.update(reply)
                return seen.issuperset(names)

            _poll(ready, WORKER_DEADLINE, f"{workers} celery workers to answer ping", 0.1)

            for _ in range(warmup):
                echo.delay("x").get(timeout=RTT_TIMEOUT)

            rtts: list[float] = []
            for _ in range(n_roundtrip):
                t0 = time.perf_counter()
                out = echo.delay("x").get(timeout=RTT_TIMEOUT)
                rtts.append(time.perf_counter() - t0)
                if out != "x":
                    raise RuntimeError(f"echo returned {out!r}")

            # Collected one by one with AsyncResult.get (pub/sub per result): ResultSet.get
            # on the Redis backend first MGETs everything and, if anything is still pending,
            # sleeps a fixed 0.5 s interval before it goes to pub/sub. Bounded: even
            # 200 tasks/s finishes well inside the deadline.
            # ``clients`` submitting threads (as many as meshd's bench uses, one per node),
            # each with its own share, so both systems get the same offered load.
            end = time.monotonic() + 30.0 + n_throughput / 200
            shares = [
                n_throughput // clients + (1 if i < n_throughput % clients else 0)
                for i in range(clients)
            ]
            values: list[Any] = []
            errors: list[BaseException] = []
            lock = threading.Lock()
            barrier = threading.Barrier(clients + 1)

            def burst(count: int) -> None:
                try:
                    barrier.wait()
                    mine = [echo.delay("x") for _ in range(count)]
                    got = [r.get(timeout=max(0.01, end - time.monotonic())) for r in mine]
                    with lock:
                        values.extend(got)
                except BaseException as exc:
                    errors.append(exc)

            threads = [threading.Thread(target=burst, args=(k,)) for k in shares]
            for t in threads:
                t.start()
            barrier.wait()
            t0 = time.perf_counter()
            for t in threads:
                t.join(timeout=max(0.01, end - time.monotonic()) + 5)
            elapsed = time.perf_counter() - t0
            if errors:
                raise RuntimeError(f"throughput burst failed: {errors[0]!r}")
            if len(values) != n_throughput or any(v != "x" for v in values):
                raise RuntimeError("throughput burst: missing or wrong results")
        finally:
            if app is not None:
                with contextlib.suppress(Exception):
                    app.close()
            for p in worker_procs:
                _stop(p)
            if redis_proc is not None:
                _stop(redis_proc)

    return {
        "rtt_p50": pct(rtts, 50),
        "rtt_p99": pct(rtts, 99),
        "rtt_mean": statistics.fmean(rtts),
        "throughput": n_throughput / elapsed,
        "workers": float(workers),
        "clients": float(clients),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description="Celery + local Redis baseline (see module doc)")
    ap.add_argument("--roundtrip", type=int, default=500, help="sequential round trips timed")
    ap.add_argument("--throughput", type=int, default=5000, help="tasks in the burst")
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--clients", type=int, default=1, help="submitting threads in the burst")
    args = ap.parse_args()
    t0 = time.monotonic()
    r = run_celery(args.roundtrip, args.throughput, args.workers, args.warmup, args.clients)
    wall = time.monotonic() - t0
    print(f"celery + redis, {int(r['workers'])} solo workers (run took {wall:.1f} s)")
    print(f"  round trip p50   {fmt(r['rtt_p50'] * 1e3):>9} ms  (n={args.roundtrip})")
    print(f"  round trip p99   {fmt(r['rtt_p99'] * 1e3):>9} ms")
    print(f"  round trip mean  {fmt(r['rtt_mean'] * 1e3):>9} ms")
    print(f"  throughput       {r['throughput']:>9.0f} tasks/s  (n={args.throughput})")
    print(json.dumps({"system": "celery", **r}))


if __name__ == "__main__":
    main()
