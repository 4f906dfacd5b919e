"""Which clients are still connected: a client that went away is known at once, not at its next reply.

libzmq's ROUTER says nothing when a peer leaves (ZMQ_ROUTER_NOTIFY is a draft API, absent from the
libzmq npcai runs on), and a reply to a client that left fails (EHOSTUNREACH) only when there is one
to send: a decision or an unstreamed line ran to its end for nobody, holding a place in max_queue.
A socket monitor reports each accepted and each dropped connection by its file descriptor, and each
message carries the descriptor it came in on (ZMQ_SRCFD); together they say which clients a dropped
connection carried.

A descriptor is reused: a connection that ends and the next one accepted on the same fd must not be
taken for one another. libzmq reports a connection's DISCONNECTED before it closes the fd, and (with
one I/O thread) its ACCEPTED before it reads anything from it; so events are read *after* the
messages heard, and each client is placed on the connection its fd holds once they are applied. A
client that is still connected is then always on its own connection: if the fd held another when its
message was read, that one has ended, and its ACCEPTED is among the events just read. The worst a
client that left can get is to be placed on its fd's next connection (its requests are dropped when
that one ends, or when a reply fails, as before).
"""

from __future__ import annotations

import itertools
import struct

import zmq

_ACCEPTED, _DISCONNECTED = int(zmq.EVENT_ACCEPTED), int(zmq.EVENT_DISCONNECTED)
_EVENTS, _POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)
_names = itertools.count()


class Connections:
    """The clients heard on each open connection of one ROUTER socket, from its monitor's events."""

    def __init__(self, zctx: zmq.Context, router: zmq.Socket):
        """Watch ``router``; call before it binds, so that no connection is accepted unseen."""
        # Placing a client relies on ACCEPTED being seen before its connection's messages: true with
        # one I/O thread (the accepting thread reports it before the connection is read); with more,
        # clients are not tracked and a failed reply is what tells that one left.
        self.tracking = zctx.get(zmq.IO_THREADS) == 1
        self._router = router
        address = f"inproc://npcai-connections-{next(_names)}"
        router.monitor(address, _ACCEPTED | _DISCONNECTED)
        self.events = zctx.socket(zmq.PAIR)
        self.events.setsockopt(zmq.LINGER, 0)
        self.events.setsockopt(zmq.RCVHWM, 0)  # unbounded: a lost event could merge two connections on one fd
        self.events.connect(address)
        self._open: set[int] = set()  # fds whose last event was ACCEPTED
        self._clients_on: dict[int, set[bytes]] = {}  # fd -> clients placed on its current connection
        self._fd_of: dict[bytes, int] = {}
        self._heard: dict[bytes, int] = {}  # clients heard since the last events were read, and their fds

    def heard(self, client: bytes, fd: int) -> None:
        """``client`` sent a message that came in on ``fd`` (only while ``tracking``: an inproc endpoint has
        no fds, and a failed reply is then what tells that a client left)."""
        self._heard[client] = fd

    def departed(self) -> set[bytes]:
        """Read the monitor's events, then place the clients heard since the last call: the clients whose
        connection has ended."""
        gone: set[bytes] = set()
        events = self.events
        while events.getsockopt(_EVENTS) & _POLLIN:
            kind, fd = struct.unpack_from("=Hi", events.recv_multipart()[0])
            # Either event ends the connection the fd held: DISCONNECTED, or ACCEPTED (the fd is reused;
            # libzmq closes a connection it refused itself without a DISCONNECTED).
            for client in self._clients_on.pop(fd, ()):
                if self._fd_of.get(client) == fd:
                    del self._fd_of[client]
                    gone.add(client)
            if kind == _ACCEPTED:
                self._open.add(fd)
            else:
                self._open.discard(fd)
        for client, fd in self._heard.items():
            if fd not in self._open:  # read after its connection ended
                self.forget(client)
                gone.add(client)
                continue
            gone.discard(client)  # a client that reconnected with the same routing id is back
            old = self._fd_of.get(client)
            if old != fd:
                if old is not None:
                    self._clients_on.get(old, set()).discard(client)
                self._fd_of[client] = fd
                self._clients_on.setdefault(fd, set()).add(client)
        self._heard.clear()
        return gone

    def forget(self, client: bytes) -> None:
        """A client known to be gone another way (a failed reply)."""
        fd = self._fd_of.pop(client, None)
        if fd is not None:
            self._clients_on.get(fd, set()).discard(client)

    def close(self) -> None:
        if not self._router.closed:
            self._router.disable_monitor()
        self.events.close()
