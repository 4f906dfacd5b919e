"""One tree of errors, two tiers.

    NpcaiError                 a user's mistake or a refused request: has a wire code
    ├── BadRequest             "bad_request"   malformed or invalid fields
    ├── UnknownOp              "unknown_op"    op not in the protocol
    ├── UnknownNpc             "unknown_npc"   npc id never defined (or evicted and forgotten)
    ├── TooLarge               "too_large"     a frame, prompt or constraint over a limit
    ├── Overloaded             "overloaded"    queue or in-flight limits reached
    ├── Unauthorized           "unauthorized"  no valid token in hello
    ├── Unavailable            "unavailable"   the sidecar is gone (client), or a remote role's engine failed
    ├── ModelError             (CLI only)      a model cannot be found, fetched or loaded
    └── SettingsError          (CLI only)      a flag value that cannot work

Anything else raised while serving is a bug: it is answered with code "internal",
logged once with its traceback, and the server keeps running; a bug that stops the
engine's loop itself ends the sidecar with exit code 1, after answering what is open.
"""

from __future__ import annotations


class NpcaiError(Exception):
    """A failure with a stable wire code and a message meant for people."""

    code = "internal"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class BadRequest(NpcaiError):
    code = "bad_request"


class UnknownOp(NpcaiError):
    code = "unknown_op"


class UnknownNpc(NpcaiError):
    code = "unknown_npc"


class TooLarge(NpcaiError):
    code = "too_large"


class Overloaded(NpcaiError):
    code = "overloaded"


class Unauthorized(NpcaiError):
    code = "unauthorized"


class Unavailable(NpcaiError):
    code = "unavailable"


class ModelError(NpcaiError):
    code = "model_error"


class SettingsError(NpcaiError):
    code = "bad_settings"


ERROR_CODES = ("bad_request", "unknown_op", "unknown_npc", "too_large", "overloaded", "unauthorized", "unavailable",
               "internal")

#: Codes this Python client makes up itself (docs/PROTOCOL.md, "Local codes"): the sidecar is gone
#: ("unavailable", the same code in every bridge), a Curve handshake was refused ("unauthorized"), a frame
#: from the sidecar did not decode ("bad_reply").
LOCAL_ERROR_CODES = ("unavailable", "unauthorized", "bad_reply")
