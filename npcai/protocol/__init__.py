"""Protocol v1: every message shape on the wire, in one place.

A message body is one ZeroMQ frame holding one msgpack map with string keys.
Requests are ``{"v": 1, "id": int, "op": str, ...}``; replies echo ``id`` and carry
an ``event``. docs/PROTOCOL.md is the human-readable contract; this package is
the executable one, and nothing else in npcai builds or parses frames:

- ``frames``: the version, the limits, bounded decoding of one frame;
- ``requests``: one frozen dataclass per op, and ``parse_request`` (every check that needs no model);
- ``checks``: the range and size rules those checks use;
- ``replies``: every event the sidecar sends.
"""

from npcai.protocol.checks import (
    MAX_TOKEN_BYTES,
    budget_out_of_bounds,
    check_budget,
    check_examples,
    check_prompt_size,
    check_sampling,
)
from npcai.protocol.frames import (
    READY_PREFIX,
    TOKEN_ENV,
    VERSION,
    Limits,
    decode_frame,
    encode,
    is_int,
    is_ipv6_endpoint,
    request_id,
    salvage_id,
)
from npcai.protocol.replies import (
    CANCELLED,
    DONE,
    ERROR,
    OK,
    TERMINAL_EVENTS,
    SENTENCE,
    STEP,
    TOKEN,
    cancelled,
    done,
    engine_failed,
    error,
    fixed_reply,
    ok,
    reply,
    sentence,
    timed_out,
    token,
    with_streamed,
)
from npcai.protocol.requests import (
    IMMEDIATE_OPS,
    OPS,
    REQUEST_TYPES,
    ActResultRequest,
    BudgetRequest,
    CancelRequest,
    ChainRequest,
    DecideRequest,
    ForgetRequest,
    FrameRequest,
    HelloRequest,
    LoadRequest,
    NpcRequest,
    ObserveRequest,
    PingRequest,
    Request,
    SaveRequest,
    SayRequest,
    ShutdownRequest,
    StatsRequest,
    parse_request,
    typed_request,
)

__all__ = [
    "READY_PREFIX", "TOKEN_ENV", "VERSION", "Limits", "decode_frame", "encode", "is_int", "is_ipv6_endpoint", "request_id", "salvage_id",
    "CANCELLED", "DONE", "ERROR", "OK", "TERMINAL_EVENTS", "TOKEN", "SENTENCE", "STEP", "sentence", "cancelled", "done", "engine_failed", "error",
    "fixed_reply", "ok", "reply", "timed_out", "token", "with_streamed",
    "IMMEDIATE_OPS", "MAX_TOKEN_BYTES", "OPS", "REQUEST_TYPES", "ActResultRequest", "ChainRequest", "BudgetRequest", "CancelRequest", "DecideRequest",
    "ForgetRequest", "FrameRequest", "HelloRequest", "LoadRequest", "NpcRequest", "ObserveRequest", "PingRequest",
    "Request", "SaveRequest", "SayRequest", "ShutdownRequest", "StatsRequest", "budget_out_of_bounds", "check_budget", "check_examples",
    "check_prompt_size", "check_sampling", "parse_request", "typed_request",
]
