"""Token authentication (``$NPCAI_TOKEN`` or ``--token``): which clients have sent the sidecar's token in ``hello``."""

from __future__ import annotations

import collections
import hmac

from npcai.errors import Unauthorized

# Clients remembered as having sent the token. The server forgets one when its connection closes, so
# this bound (least recently heard from go first) is reached only by that many connected at once.
_MAX_AUTHED = 4096
#: The largest frame read from a client that has not sent the token: a hello, role descriptions and all.
UNAUTHED_FRAME_BYTES = 64 * 1024


class TokenAuth:
    """A bounded table of authorized clients; with no token set, every client is."""

    def __init__(self, token: str):
        self.token = token
        self._authed: collections.OrderedDict[bytes, None] = collections.OrderedDict()

    def check(self, client: bytes) -> None:
        """Raise Unauthorized unless ``client`` has said hello with the token (and keep it fresh)."""
        if self.token:
            if client not in self._authed:
                raise Unauthorized("send hello with the sidecar's token first")
            self._authed.move_to_end(client)

    def reads(self, client: bytes, size: int) -> bool:
        """Whether a frame of ``size`` bytes from ``client`` is worth decoding: any from an authorized client,
        and small ones (a hello) from others. Decoding a megabyte of tiny maps takes most of a second."""
        return not self.token or size <= UNAUTHED_FRAME_BYTES or client in self._authed

    def hello(self, client: bytes, token: str | None) -> None:
        """A hello: raise Unauthorized unless it carries the token, else remember ``client``."""
        if not self.token:
            return
        if not hmac.compare_digest((token or "").encode(), self.token.encode()):
            raise Unauthorized("hello needs the sidecar's token")
        self._authed[client] = None
        self._authed.move_to_end(client)
        while len(self._authed) > _MAX_AUTHED:
            self._authed.popitem(last=False)

    def forget(self, client: bytes) -> None:
        self._authed.pop(client, None)
