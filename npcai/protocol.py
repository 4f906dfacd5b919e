"""Protocol v1: every message shape on the wire, in one place.

A message body is one ZeroMQ frame holding one msgpack map with string keys.
Requests are ``{"v": 1, "id": int, "op": str, ...}``; replies echo ``id`` and carry
an ``event``. docs/PROTOCOL.md is the human-readable contract; this module is
the executable one, and nothing else in npcai builds or parses frames.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import msgpack

from npcai.errors import BadRequest, NpcaiError, TooLarge, UnknownOp

VERSION = 1
#: What `npcai serve` prints on stdout, followed by its endpoint, once it answers requests.
READY_PREFIX = "NPCAI READY "

# Events a reply can carry. "done", "error" and "cancelled" end a request.
OK, TOKEN, DONE, ERROR, CANCELLED = "ok", "token", "done", "error", "cancelled"
SENTENCE, STEP = "sentence", "step"  # a say's finished sentence; a chain's finished step
TERMINAL_EVENTS = frozenset({OK, DONE, ERROR, CANCELLED})


@dataclass(frozen=True)
class Limits:
    """Bounds on what one client can make the sidecar hold; announced in ``hello``."""

    max_frame_bytes: int = 1 << 20
    max_depth: int = 32
    max_container_len: int = 4096
    max_inflight_per_client: int = 64
    max_queue: int = 1024
    max_npcs: int = 256
    max_prompt_tokens: int = 1024
    max_tokens: int = 512
    max_choices: int = 64
    max_examples: int = 16
    max_actions: int = 16
    max_chain_steps: int = 8

    def to_wire(self) -> dict[str, int]:
        return dataclasses.asdict(self)


# --- field rules -----------------------------------------------------------

def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _any(v: Any) -> bool:
    return True


def _examples(v: Any) -> bool:
    return isinstance(v, list) and all(
        isinstance(e, dict) and isinstance(e.get("situation"), str) and isinstance(e.get("choice"), str)
        and set(e) <= {"situation", "choice"} for e in v)


def _actions(v: Any) -> bool:
    return isinstance(v, list) and all(
        isinstance(a, dict) and isinstance(a.get("name"), str) and isinstance(a.get("description", ""), str)
        and isinstance(a.get("args", {}), dict) and set(a) <= {"name", "description", "args"} for a in v)


def _action_pick(v: Any) -> bool:
    return isinstance(v, bool) or _str_list(v)


def _steps(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(s, dict) and all(isinstance(k, str) for k in s) for s in v)


def _str_map(v: Any) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and isinstance(x, str) for k, x in v.items())


@dataclass(frozen=True)
class _Field:
    check: Callable[[Any], bool]
    kind: str
    required: bool = False


_STR, _INT, _NUM = (_Field(lambda v: isinstance(v, str), "a string"), _Field(_int, "an integer"),
                    _Field(_number, "a number"))
_PICK = _Field(_action_pick, "true, false or a list of action names")
_SEED = _Field(lambda v: _int(v) and 0 <= v < 1 << 64, "an integer from 0 to 2**64-1")


def _req(f: _Field) -> _Field:
    return dataclasses.replace(f, required=True)


_SAMPLING = {
    "max_tokens": _INT,
    "temperature": _NUM,
    "top_k": _INT,
    "top_p": _NUM,
    "seed": _SEED,
    "role": _STR,
}

#: The fields each op takes, besides the envelope (v, id, op, deadline_ms, priority).
OPS: dict[str, dict[str, _Field]] = {
    "hello": {"client": _STR, "token": _STR,
              "role_info": _Field(_str_map, "a map from role to a one-line description")},
    "ping": {},
    "npc": {"npc": _req(_STR), "persona": _req(_STR), "role": _STR, "seed": _SEED,
            "examples": _Field(_examples, "a list of {situation, choice} maps of strings"),
            "actions": _Field(_actions, "a list of {name, description, args} maps (args: a JSON schema map)")},
    "say": {
        "npc": _req(_STR),
        "text": _req(_STR),
        "stream": _Field(lambda v: isinstance(v, bool), "a boolean"),
        "stop": _Field(lambda v: isinstance(v, str) or _str_list(v), "a string or a list of strings"),
        "soft_max_tokens": _INT,
        "fallback": _Field(_any, "any value"),
        "actions": _PICK,
        **_SAMPLING,
    },
    "decide": {
        "npc": _STR,
        "situation": _req(_STR),
        "choices": _Field(_str_list, "a list of strings"),
        "lead": _STR,
        "descriptions": _Field(_str_map, "a map from choice to the words scored for it"),
        "schema": _Field(lambda v: isinstance(v, dict), "a map (JSON schema)"),
        "grammar": _STR,
        "actions": _PICK,
        "fallback": _Field(_any, "any value"),
        **_SAMPLING,
    },
    "observe": {"npc": _req(_STR), "text": _req(_STR)},
    "act_result": {"npc": _req(_STR), "name": _req(_STR), "result": _req(_STR)},
    "chain": {"steps": _req(_Field(_steps, "a list of step maps")), "fallback": _Field(_any, "any value")},
    "cancel": {"target": _req(_INT)},
    "forget": {"npc": _req(_STR)},
    "save": {"npc": _req(_STR)},
    "load": {"npc": _req(_STR), "state": _req(_Field(lambda v: isinstance(v, bytes), "binary"))},
    "stats": {},
    "shutdown": {},
    "budget": {"threads": _INT, "tokens_per_s": _NUM, "share": _NUM, "frame_ms": _NUM},
    "frame": {"frame_ms": _req(_Field(lambda v: _number(v) or (isinstance(v, list) and all(_number(x) for x in v)),
                                      "a number or a list of numbers"))},
}

#: Ops answered by the server thread at once, never queued behind model work.
IMMEDIATE_OPS = frozenset({"hello", "ping", "cancel", "stats", "shutdown", "budget", "frame"})


@dataclass
class Request:
    """A validated request. ``fields`` holds the op's own fields, already type-checked."""

    id: int
    op: str
    fields: dict[str, Any]
    deadline_ms: int | None = None
    priority: int = 0
    client: bytes = b""
    received: float = 0.0  # time.monotonic() at receipt

    @property
    def deadline(self) -> float | None:
        """Absolute monotonic deadline, or None."""
        return None if self.deadline_ms is None else self.received + self.deadline_ms / 1000.0

    @property
    def fallback(self) -> Any:
        return self.fields.get("fallback")


def encode(message: dict[str, Any]) -> bytes:
    return msgpack.packb(message, use_bin_type=True)


def decode_frame(frame: bytes, limits: Limits) -> dict[str, Any]:
    """Decode one frame into a map, bounded in size, length and depth.

    Raises NpcaiError (``too_large`` or ``bad_request``); the id is unknown at this point.
    """
    if len(frame) > limits.max_frame_bytes:
        raise TooLarge(f"frame of {len(frame)} bytes exceeds max_frame_bytes={limits.max_frame_bytes}")
    n = limits.max_container_len
    try:
        obj = msgpack.unpackb(
            frame, raw=False, strict_map_key=True,
            max_str_len=limits.max_frame_bytes, max_bin_len=limits.max_frame_bytes,
            max_array_len=n, max_map_len=n, max_ext_len=0, ext_hook=_refuse_ext,
        )
    except NpcaiError:
        raise
    except (msgpack.exceptions.StackError, RecursionError):
        raise TooLarge("frame nests too deeply") from None
    except ValueError as exc:  # covers ExtraData, FormatError, and length limits
        # max_ext_len=0 refuses every ext (timestamps too) with data; _refuse_ext the empty ones.
        if "max_ext_len" in str(exc) or "timestamp" in str(exc).lower():
            raise BadRequest(_NO_EXT) from None
        if "exceeds max" in str(exc):
            raise TooLarge(f"frame holds a container or string over the limits: {exc}") from None
        raise BadRequest(f"frame is not one msgpack value: {exc or type(exc).__name__}") from None
    except Exception as exc:  # msgpack raises a few unrelated types for garbage
        raise BadRequest(f"frame is not msgpack: {type(exc).__name__}") from None
    if not isinstance(obj, dict):
        raise BadRequest(f"frame must hold a msgpack map, not {type(obj).__name__}")
    nested = any(isinstance(v, (dict, list)) for v in obj.values())  # most requests are flat: skip the walk
    if nested and _depth(obj, limits.max_depth) > limits.max_depth:
        raise TooLarge(f"message nests deeper than max_depth={limits.max_depth}")
    return obj


_NO_EXT = "ext types are not supported"


def _refuse_ext(code: int, data: bytes) -> Any:
    """msgpack's hook for an ext value; only zero-length ones reach it (max_ext_len=0 stops the rest)."""
    raise BadRequest(_NO_EXT)


def _depth(obj: Any, limit: int, level: int = 1) -> int:
    if level > limit:
        return level
    if isinstance(obj, dict):
        return max((_depth(v, limit, level + 1) for v in obj.values()), default=level)
    if isinstance(obj, list):
        return max((_depth(v, limit, level + 1) for v in obj), default=level)
    return level


def request_id(message: dict[str, Any]) -> int | None:
    """The id to echo in an error about this message, if it has a usable one."""
    rid = message.get("id")
    return rid if _int(rid) else None


_SALVAGE_BYTES = 4096


def salvage_id(frame: bytes | memoryview) -> int | None:
    """The integer ``id`` of a frame that did not decode whole, if it is among the map's first entries.

    Only the first 4 KiB are read, so a request refused as too large or malformed still ends
    with an error its client can match (clients put ``id`` near the front).
    """
    try:
        unpacker = msgpack.Unpacker(raw=False, max_buffer_size=_SALVAGE_BYTES, max_ext_len=0)
        unpacker.feed(bytes(frame[:_SALVAGE_BYTES]))
        for _ in range(min(unpacker.read_map_header(), 16)):
            if unpacker.unpack() == "id":
                rid = unpacker.unpack()
                return rid if _int(rid) else None
            unpacker.skip()
    except Exception:  # garbage, cut short, or nested too deep: no id to echo
        return None
    return None


def parse_request(message: dict[str, Any], client: bytes = b"", received: float = 0.0) -> Request:
    """Validate the envelope and the op's fields; raise an NpcaiError with a clear message."""
    if message.get("v") != VERSION:
        raise BadRequest(f"field 'v' must be {VERSION} (protocol version), got {message.get('v')!r}")
    rid = message.get("id")
    if not _int(rid):
        raise BadRequest("field 'id' must be an integer")
    op = message.get("op")
    if not isinstance(op, str):
        raise BadRequest("field 'op' must be a string")
    spec = OPS.get(op)
    if spec is None:
        raise UnknownOp(f"unknown op {op!r}; known ops: {', '.join(sorted(OPS))}")
    deadline = message.get("deadline_ms")
    if deadline is not None and not (_int(deadline) and deadline >= 0):
        raise BadRequest("field 'deadline_ms' must be a non-negative integer")
    priority = message.get("priority", 0)
    if not _int(priority):
        raise BadRequest("field 'priority' must be an integer")
    fields: dict[str, Any] = {}
    for name, rule in spec.items():
        if name not in message or (message[name] is None and not rule.required and name != "fallback"):
            if rule.required:
                raise BadRequest(f"op {op!r} needs field {name!r} ({rule.kind})")
            continue
        value = message[name]
        if not rule.check(value):
            raise BadRequest(f"field {name!r} of op {op!r} must be {rule.kind}, got {type(value).__name__}")
        fields[name] = value
    if op == "decide":
        _check_decide(fields)
    return Request(rid, op, fields, deadline, priority, client, received)


def _check_decide(fields: dict[str, Any]) -> None:
    if fields.get("actions") is False:
        del fields["actions"]
    given = [k for k in ("choices", "schema", "grammar", "actions") if k in fields]
    if len(given) != 1:
        raise BadRequest("op 'decide' needs exactly one of 'choices', 'schema', 'grammar' or 'actions'")
    if "actions" in fields:
        if "npc" not in fields:
            raise BadRequest("op 'decide' with 'actions' needs 'npc': actions are declared with the NPC")
        if "descriptions" in fields:
            raise BadRequest("field 'descriptions' goes with 'choices' (an action's description is declared)")
        return
    choices = fields.get("choices")
    if choices is not None:
        if not choices or any(not c for c in choices):
            raise BadRequest("field 'choices' must be a non-empty list of non-empty strings")
        if len(set(choices)) != len(choices):
            raise BadRequest("field 'choices' must not repeat an option")
        unknown = sorted(set(fields.get("descriptions", {})) - set(choices))
        if unknown:
            raise BadRequest(f"field 'descriptions' names {unknown[0]!r}, which is not one of the choices")
        if any(not d.strip() for d in fields.get("descriptions", {}).values()):
            raise BadRequest("field 'descriptions' must not hold an empty description")
    elif "lead" in fields or "descriptions" in fields:
        raise BadRequest("fields 'lead' and 'descriptions' go with 'choices'")


#: No vocabulary we know has a token longer than this (SmolLM2: 81 bytes, Gemma 3: 48).
MAX_TOKEN_BYTES = 256
_PROMPT_FIELDS = ("persona", "text", "situation", "lead", "result")


def check_prompt_size(req: Request, limits: Limits) -> None:
    """Refuse a prompt text that cannot fit ``max_prompt_tokens`` before anyone tokenizes it.

    A text of more than MAX_TOKEN_BYTES x max_prompt_tokens characters needs more tokens than
    that; checking its length costs nothing, tokenizing a megabyte stalls the model for 0.3 s.
    """
    most = limits.max_prompt_tokens * MAX_TOKEN_BYTES
    for name in _PROMPT_FIELDS:
        value = req.fields.get(name)
        if isinstance(value, str) and len(value) > most:
            raise TooLarge(f"field {name!r} of {len(value)} characters cannot fit "
                           f"max_prompt_tokens={limits.max_prompt_tokens}")


def check_budget(fields: dict[str, Any]) -> None:
    """Range checks for the budget op (0 means no limit, as on the command line)."""
    if fields.get("threads", 0) < 0:
        raise BadRequest("field 'threads' must be >= 0 (0 = the sidecar's own choice)")
    if fields.get("tokens_per_s", 0) < 0:
        raise BadRequest("field 'tokens_per_s' must be >= 0 (0 = no cap)")
    if not 0 < fields.get("share", 1.0) <= 1:
        raise BadRequest("field 'share' must be in (0, 1]")
    if not 0 <= fields.get("frame_ms", 0) <= 1000:
        raise BadRequest("field 'frame_ms' must be between 0 (no frame target) and 1000")


def check_examples(fields: dict[str, Any], limits: Limits) -> None:
    """An NPC's worked examples stay in its cached prefix: a handful, each a situation and a choice."""
    examples = fields.get("examples", [])
    if len(examples) > limits.max_examples:
        raise TooLarge(f"{len(examples)} examples exceed max_examples={limits.max_examples}")
    if any(not e["situation"].strip() or not e["choice"].strip() for e in examples):
        raise BadRequest("each of 'examples' needs a non-empty situation and choice")


def check_sampling(fields: dict[str, Any], limits: Limits) -> None:
    """Range checks shared by say and decide."""
    mt = fields.get("max_tokens")
    if mt is not None and not 1 <= mt <= limits.max_tokens:
        raise BadRequest(f"field 'max_tokens' must be between 1 and {limits.max_tokens}")
    soft = fields.get("soft_max_tokens")
    if soft is not None and not 1 <= soft <= limits.max_tokens:
        raise BadRequest(f"field 'soft_max_tokens' must be between 1 and {limits.max_tokens}")
    t = fields.get("temperature")
    if t is not None and not 0 <= t <= 10:
        raise BadRequest("field 'temperature' must be between 0 and 10")
    p = fields.get("top_p")
    if p is not None and not 0 < p <= 1:
        raise BadRequest("field 'top_p' must be in (0, 1]")
    k = fields.get("top_k")
    if k is not None and not 0 <= k <= 1 << 31:
        raise BadRequest("field 'top_k' must be between 0 (no limit) and 2**31")
    choices = fields.get("choices")
    if choices is not None and len(choices) > limits.max_choices:
        raise TooLarge(f"{len(choices)} choices exceed max_choices={limits.max_choices}")


# --- replies ---------------------------------------------------------------

def reply(rid: int | None, event: str, **fields: Any) -> dict[str, Any]:
    return {"v": VERSION, "id": rid, "event": event, **fields}


def ok(rid: int | None, **fields: Any) -> dict[str, Any]:
    return reply(rid, OK, **fields)


def fixed_reply(event: str, **fields: Any) -> Callable[[int | None], bytes]:
    """The encoder of a reply whose fields stay the same from request to request: they are
    encoded once, and each call encodes only the id. (``hello``'s 450-byte map took about
    11 µs to build and encode on each call, 1 µs this way.)"""
    body = {"v": VERSION, "event": event, **fields}
    n = len(body) + 1
    if n < 16:
        head = bytes([0x80 | n])
    else:
        head = b"\xde" + n.to_bytes(2, "big") if n < 2**16 else b"\xdf" + n.to_bytes(4, "big")
    rest = head + b"".join(encode(k) + encode(v) for k, v in body.items()) + encode("id")
    return lambda rid: rest + encode(rid)


def token(rid: int, text: str) -> dict[str, Any]:
    return reply(rid, TOKEN, text=text)


def sentence(rid: int, text: str) -> dict[str, Any]:
    return reply(rid, SENTENCE, text=text)


def done(rid: int, **fields: Any) -> dict[str, Any]:
    return reply(rid, DONE, **fields)


def cancelled(rid: int) -> dict[str, Any]:
    return reply(rid, CANCELLED)


def error(rid: int | None, err: NpcaiError) -> dict[str, Any]:
    return reply(rid, ERROR, code=err.code, message=err.message)


def engine_failed(req: Request, elapsed_ms: float) -> dict[str, Any]:
    """The reply to a request that will never be served because the engine failed: its fallback when it
    has one (shaped as at a deadline, with finish_reason "error"), else ``internal``."""
    if "fallback" not in req.fields:
        return error(req.id, NpcaiError("the sidecar's engine failed; the sidecar exits (restart it)"))
    return {**timed_out(req, elapsed_ms), "timed_out": False, "finish_reason": "error"}


def timed_out(req: Request, elapsed_ms: float) -> dict[str, Any]:
    """The reply sent at a request's deadline instead of a late answer."""
    fields: dict[str, Any] = {
        "value": req.fallback,
        "text": "",
        "timed_out": True,
        "used_fallback": True,
        "finish_reason": "deadline",
        "timing": {"queue_ms": round(elapsed_ms, 3), "total_ms": round(elapsed_ms, 3)},
    }
    if req.op == "say":
        fields["tokens"] = 0  # the server fills in what was already streamed
    return done(req.id, **fields)
