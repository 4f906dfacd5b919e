"""The outbox: the engine's replies on their way to the socket thread, and the signal that wakes it.

The engine thread (and any other) appends; only the socket thread pops. Appends and pops of a
deque are atomic, and an empty one is checked without raising (the socket thread looks on every
turn). Each emitting thread wakes the socket thread's poll through a PUSH socket of its own (zmq
sockets are not thread-safe) connected to ``pull``.
"""

from __future__ import annotations

import collections
import threading
from typing import Any

import zmq

from npcai import protocol as P


class Outbox:
    def __init__(self, zctx: zmq.Context):
        self._zctx = zctx
        self.replies: collections.deque[tuple[P.Request, dict[str, Any]]] = collections.deque()
        self._addr = f"inproc://npcai-outbox-{id(self)}"
        self.pull = zctx.socket(zmq.PULL)
        self.pull.bind(self._addr)
        self._local = threading.local()

    def emit(self, req: P.Request, reply: dict[str, Any]) -> None:
        """A reply from the engine, tagged with the request it answers (ids may be reused)."""
        self.replies.append((req, reply))
        self.signal()

    def signal(self) -> None:
        """Wake the socket thread (from any other thread)."""
        sock = getattr(self._local, "sock", None)
        if sock is None:
            sock = self._zctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(self._addr)
            self._local.sock = sock
        try:
            sock.send(b"", zmq.NOBLOCK)
        except zmq.Again:
            pass  # the socket thread is already behind on signals; it will drain the outbox anyway

    def drain_signals(self) -> None:
        """Take every pending wake-up (the socket thread, before it sends the replies)."""
        while True:
            try:
                self.pull.recv(zmq.NOBLOCK)
            except zmq.Again:
                return

    def close(self) -> None:
        self.pull.close(linger=0)
