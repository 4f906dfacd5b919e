"""`bench --only transport`: the socket round trip, against a bare pyzmq echo."""

from __future__ import annotations

import sys
import time
from typing import Any

import zmq

from npcai.bench.harness import Bench
from npcai.bench.report import pct
from npcai.client import Client


def run(b: Bench, c: Client) -> None:
    """The same bare DEALER loop against the sidecar and against a bare echo process: only the server
    differs. Interleaved in rounds, so that drift in this machine's load falls on both alike."""
    n = 300 if b.quick else 2000
    hello, ping, echo = [], [], []
    with _BareEcho() as echo_endpoint:
        for _ in range(10):
            hello += _round_trips(c.endpoint, {"v": 1, "id": 1, "op": "hello", "client": "bench"}, n // 10)
            ping += _round_trips(c.endpoint, {"v": 1, "id": 1, "op": "ping"}, n // 10)
            echo += _round_trips(echo_endpoint, {"v": 1, "id": 1, "op": "hello"}, n // 10)
    r = b.report
    r.add("transport", "hello round trip p50", pct(hello, 50), pct(echo, 50), "pyzmq DEALER/ROUTER echo",
          target="<= 1.2x")
    r.add("transport", "hello round trip p99", pct(hello, 99), pct(echo, 99), "pyzmq DEALER/ROUTER echo",
          target="<= 1.5x")
    r.add("transport", "ping round trip p50", pct(ping, 50), pct(echo, 50), "pyzmq DEALER/ROUTER echo")


def _round_trips(endpoint: str, message: dict[str, Any], n: int) -> list[float]:
    import msgpack

    dealer = zmq.Context.instance().socket(zmq.DEALER)
    dealer.connect(endpoint)
    try:
        return _time_round_trips(dealer, msgpack.packb(message), n)
    finally:
        dealer.close(0)


def _time_round_trips(dealer: zmq.Socket, frame: bytes, n: int) -> list[float]:
    """Milliseconds for each of ``n`` send-and-wait-for-the-answer round trips (after an untimed one that
    completes the connection's handshake)."""
    dealer.send(frame)
    dealer.poll(5000)
    dealer.recv()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        dealer.send(frame)
        dealer.poll(5000)
        dealer.recv()
        out.append((time.perf_counter() - t) * 1000)
    return out


class _BareEcho:
    """A bare pyzmq ROUTER echo in its own process (as the sidecar is in its own); yields its endpoint."""

    def __enter__(self) -> str:
        import subprocess

        self._proc = subprocess.Popen([sys.executable, "-c", _ECHO_SERVER], stdout=subprocess.PIPE, text=True)
        self._endpoint = self._proc.stdout.readline().strip()
        return self._endpoint

    def __exit__(self, *exc: object) -> None:
        dealer = zmq.Context.instance().socket(zmq.DEALER)
        dealer.connect(self._endpoint)
        dealer.send(b"stop")
        self._proc.wait(10)
        dealer.close(0)


_ECHO_SERVER = """
import zmq
router = zmq.Context().socket(zmq.ROUTER)
router.bind("tcp://127.0.0.1:0")
print(router.getsockopt(zmq.LAST_ENDPOINT).decode(), flush=True)
while (parts := router.recv_multipart())[-1] != b"stop":
    router.send_multipart(parts)
"""
