"""The libzmq abort behind test_heal_racing_the_dead_verdict_does_not_crash, reproduced.

meshd's ROUTER has ``ROUTER_HANDOVER`` (a reconnecting peer takes its routing id, its node
id, back at once) and every socket has ZMTP heartbeats (``HEARTBEAT_IVL`` 500 ms). With
libzmq 4.3.5 (pyzmq 27.x wheels) that combination aborts the whole process when the *old*
connection of a handed-over routing id still delivers data and then closes: the old
engine has no pipe any more, its input stops, the close marks it ``_io_error``, and the
next heartbeat timer calls ``out_event`` -> ``Assertion failed: !_io_error
(src/stream_engine_base.cpp:310)``. In the lab this is a short network blip: a peer
reconnects (new DEALER, same routing id) while its old TCP connection, silent during the
cut, flushes its retransmitted data and FIN after the heal.

Plain sockets on loopback, no namespaces; the process that may abort is a child.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from meshd.config import TransportConfig

pytestmark = pytest.mark.lab

ABORT = "Assertion failed: !_io_error (src/stream_engine_base.cpp"

#: Old connection X is handed over to a new one with the same routing id, sends, closes.
_REPRO = r"""
import sys, time, zmq
ivl, timeout = int(sys.argv[1]), int(sys.argv[2])
ctx = zmq.Context()
def opts(s):
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVTIMEO, 5000)
    s.setsockopt(zmq.HEARTBEAT_IVL, ivl)
    s.setsockopt(zmq.HEARTBEAT_TIMEOUT, timeout)
    s.setsockopt(zmq.HEARTBEAT_TTL, timeout)
router = ctx.socket(zmq.ROUTER); opts(router)
router.setsockopt(zmq.ROUTER_HANDOVER, 1)
router.setsockopt(zmq.ROUTER_MANDATORY, 1)
port = router.bind_to_random_port("tcp://127.0.0.1")
def dealer():
    d = ctx.socket(zmq.DEALER); opts(d)
    d.setsockopt(zmq.ROUTING_ID, b"node-x")
    d.connect(f"tcp://127.0.0.1:{port}")
    return d
old = dealer(); old.send(b"1"); router.recv_multipart()
new = dealer(); new.send(b"2"); router.recv_multipart()   # handover to the new link
for i in range(5):
    old.send(b"late")                                      # the old link still talks...
time.sleep(0.2)
old.close()                                                # ...and then closes
time.sleep(3 * ivl / 1000)                                 # heartbeat timers fire
print("survived", flush=True)
"""


class KnownAbort(AssertionError):
    pass


@pytest.mark.xfail(
    strict=True,
    raises=KnownAbort,
    reason="libzmq 4.3.5: ROUTER_HANDOVER + ZMTP heartbeats abort the process "
    "(`!_io_error` in stream_engine_base_t::out_event from the heartbeat timer)",
)
def test_handover_of_a_live_old_link_does_not_abort() -> None:
    cfg = TransportConfig()
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            _REPRO,
            str(cfg.zmq_heartbeat_ivl),
            str(cfg.zmq_heartbeat_timeout),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    if ABORT in out.stderr:
        raise KnownAbort(f"exit {out.returncode}: {out.stderr.strip()}")
    assert out.returncode == 0 and "survived" in out.stdout, (out.returncode, out.stderr)
