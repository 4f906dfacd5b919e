"""Frames: the version, the limits, and bounded msgpack encoding and decoding of one frame."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from itertools import chain
from typing import Any

import msgpack

from npcai.errors import BadRequest, NpcaiError, TooLarge

VERSION = 1
#: What `npcai serve` prints on stdout, followed by its endpoint, once it answers requests.
READY_PREFIX = "NPCAI READY "
#: The environment variable a launcher sets to the token of the sidecar it starts (never --token: argv is public).
TOKEN_ENV = "NPCAI_TOKEN"


def is_ipv6_endpoint(endpoint: str) -> bool:
    """A TCP endpoint on a bracketed IPv6 address (tcp://[::1]:0). A ZeroMQ socket binds or connects to
    one only with its IPV6 option set; without it, binding fails with 'No such device'."""
    return endpoint.startswith("tcp://[")


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


def _depth(obj: Any, limit: int) -> int:
    """How many levels ``obj`` has (a scalar inside the top map is level 2), or limit + 1 once it has more.

    A level at a time, with the iteration inside C (map, chain, set): a recursive walk spent 0.9 s of the
    socket thread on one legal megabyte frame of a million empty maps; this takes a few hundredths."""
    level, depth = [obj], 1
    while depth <= limit:
        kinds = set(map(type, level))
        if kinds == {dict}:
            children = list(chain.from_iterable(map(dict.values, level)))
        elif kinds == {list}:
            children = list(chain.from_iterable(level))
        else:
            children = list(chain.from_iterable(c.values() if type(c) is dict else c for c in level))
        if not children:
            return depth
        depth += 1
        kinds = set(map(type, children))
        level = list(filter(None, children if kinds <= _CONTAINERS else  # empty ones end their path
                                 [c for c in children if type(c) in _CONTAINERS]))
        if not level:
            return depth
    return depth


_CONTAINERS = {dict, list}


def request_id(message: dict[str, Any]) -> int | None:
    """The id to echo in an error about this message, if it has a usable one."""
    rid = message.get("id")
    return rid if is_int(rid) else None


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
                return rid if is_int(rid) else None
            unpacker.skip()
    except Exception:  # garbage, cut short, or nested too deep: no id to echo
        return None
    return None


def is_int(v: Any) -> bool:
    """An integer that is not a bool (msgpack's true and false are not ids)."""
    return isinstance(v, int) and not isinstance(v, bool)
