"""Write vectors.tsv: the bytes every bridge's codec and framing must produce and accept.

Run `python engine_bridges/conformance/generate.py` after changing a case; the test suite
fails while the file and this generator disagree. Columns: name, hex, value (a readable
rendering of what the bytes mean; bridges build the same value by name in their tests).
`msgpack.refused.*` vectors are bytes every bridge's decoder must refuse.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import msgpack

HERE = Path(__file__).resolve().parent


def _pack(value, single_float: bool = False) -> bytes:
    return msgpack.packb(value, use_bin_type=True, use_single_float=single_float)


def msgpack_cases() -> list[tuple[str, bytes, str]]:
    c: list[tuple[str, bytes, str]] = []
    add = lambda name, value, shown=None, **kw: c.append((f"msgpack.{name}", _pack(value, **kw), shown or repr(value)))
    add("nil", None, "nil")
    add("true", True, "true")
    add("false", False, "false")
    for v in (0, 1, 127, 128, 255, 256, 65535, 65536, 4294967295, 4294967296, 2**63 - 1, 2**63, 2**64 - 1):
        add(f"uint.{v}", v, str(v))
    for v in (-1, -32, -33, -128, -129, -32768, -32769, -2**31, -2**31 - 1, -2**63):
        add(f"int.{v}", v, str(v))
    add("float32.1.5", 1.5, "float32 1.5", single_float=True)
    add("float32.-0.25", -0.25, "float32 -0.25", single_float=True)
    add("float64.0.1", 0.1, "float64 0.1")
    add("float64.-1e300", -1e300, "float64 -1e300")
    add("str.empty", "", '""')
    add("str.hello", "hello", '"hello"')
    add("str.31", "a" * 31, '"a" x 31 (fixstr)')
    add("str.32", "a" * 32, '"a" x 32 (str8)')
    add("str.255", "d" * 255, '"d" x 255 (str8)')
    add("str.256", "b" * 256, '"b" x 256 (str16)')
    add("str.65536", "c" * 65536, '"c" x 65536 (str32)')
    add("str.utf8", "héllo ✓", '"héllo ✓" (UTF-8)')
    add("str.nul", "a\x00b", '"a", U+0000, "b" (kept whole; a Godot String cannot hold U+0000: refused there)')
    add("bin.empty", b"", "bin 0 bytes")
    add("bin.3", b"\x00\x01\xff", "bin 00 01 ff")
    add("bin.255", bytes(255), "bin 255 zero bytes (bin8)")
    add("bin.256", bytes(range(256)), "bin 00..ff (bin16)")
    add("bin.65536", bytes(65536), "bin 65536 zero bytes (bin32)")
    add("array.empty", [], "[]")
    add("array.mixed", [1, "a", None, True], '[1, "a", nil, true]')
    add("array.16", list(range(16)), "[0..15] (array16)")
    add("map.empty", {}, "{}")
    add("map.one", {"a": 1}, '{"a": 1}')
    add("map.16", {f"k{i:02d}": i for i in range(16)}, '{"k00": 0 .. "k15": 15} in that order (map16)')
    add("nested", {"a": [1, {"b": [None, 2.5]}]}, '{"a": [1, {"b": [nil, float64 2.5]}]}')
    return c


def refused_cases() -> list[tuple[str, bytes, str]]:
    """Bytes every decoder refuses: a str must be UTF-8 (strict, as Python's and C#'s decoders are)."""
    cases = [
        ("msgpack.refused.str.not_utf8", bytes.fromhex("a2fffe"), "str of bytes ff fe: not UTF-8"),
        ("msgpack.refused.str.overlong", bytes.fromhex("a2c080"), "str c0 80: an overlong U+0000"),
        ("msgpack.refused.str.surrogate", bytes.fromhex("a3eda080"), "str ed a0 80: a UTF-16 surrogate half"),
    ]
    for name, data, _ in cases:
        try:
            msgpack.unpackb(data, raw=False)
        except ValueError:  # UnicodeDecodeError
            continue
        raise AssertionError(f"{name}: Python's msgpack decodes it")
    return cases


def message_cases() -> list[tuple[str, bytes, str]]:
    """Whole protocol messages, keys in the order shown (bridges encode maps in insertion order)."""
    msgs = {
        "request.hello": {"v": 1, "id": 1, "op": "hello", "client": "godot"},
        "request.ping": {"v": 1, "id": 2, "op": "ping"},
        "request.npc": {"v": 1, "id": 3, "op": "npc", "npc": "brom", "persona": "You are Brom.", "seed": 7},
        "request.say": {"v": 1, "id": 4, "op": "say", "npc": "brom", "text": "Hello!", "max_tokens": 32,
                        "temperature": 0.7, "deadline_ms": 2000, "fallback": "..."},
        "request.decide.choices": {"v": 1, "id": 5, "op": "decide", "npc": "grik", "situation": "A sword!",
                                   "choices": ["attack", "flee"], "deadline_ms": 150, "fallback": "flee"},
        "request.decide.schema": {"v": 1, "id": 6, "op": "decide", "situation": "Night.",
                                  "schema": {"type": "object", "properties": {"act": {"enum": ["a", "b"]}},
                                             "required": ["act"]}},
        "request.cancel": {"v": 1, "id": 7, "op": "cancel", "target": 4},
        # Actions, chains and sentence events (docs/PROTOCOL.md, "Actions" and "Chains").
        "request.npc.actions": {"v": 1, "id": 8, "op": "npc", "npc": "brom", "persona": "You are Brom.",
                                "actions": [{"name": "give", "args": {"type": "object", "properties": {
                                    "item": {"enum": ["sword", "shield"]}}}}]},
        "request.say.actions": {"v": 1, "id": 9, "op": "say", "npc": "brom", "text": "A shield!", "actions": True},
        "request.chain": {"v": 1, "id": 10, "op": "chain",
                          "steps": [{"op": "decide", "as": "mood", "situation": "Rain.", "choices": ["calm", "angry"]},
                                    {"op": "say", "as": "line", "npc": "brom", "text": "({mood})"}],
                          "deadline_ms": 1500},
        "request.decide.actions": {"v": 1, "id": 11, "op": "decide", "npc": "brom", "situation": "20 gold.",
                                   "actions": ["give"], "deadline_ms": 500,
                                   "fallback": {"name": "wait", "args": {}}},
        "request.act_result": {"v": 1, "id": 12, "op": "act_result", "npc": "brom", "name": "give",
                               "result": "The customer has the shield."},
        "reply.ok": {"v": 1, "id": 2, "event": "ok"},
        "reply.token": {"v": 1, "id": 4, "event": "token", "text": " Aye"},
        "reply.sentence": {"v": 1, "id": 9, "event": "sentence", "text": " Aye."},
        "reply.step": {"v": 1, "id": 10, "event": "step", "step": 0, "as": "mood", "value": "calm",
                       "used_fallback": False},
        "reply.done.action": {"v": 1, "id": 9, "event": "done", "text": "Aye.", "value": "Aye.",
                              "action": {"name": "give", "args": {"item": "shield"}}},
        "reply.done.chain": {"v": 1, "id": 10, "event": "done", "value": {"mood": "calm", "line": "Aye."},
                             "results": {"mood": "calm", "line": "Aye."}},
        "reply.done.decide.actions": {"v": 1, "id": 11, "event": "done", "value": {"name": "give", "args": {
                                          "item": "shield"}}, "probs": {"give": 1.0}},
        "reply.step.token": {"v": 1, "id": 10, "event": "token", "text": " Aye", "step": 1},
        "reply.done.say": {"v": 1, "id": 4, "event": "done", "text": "Aye.", "value": "Aye.", "tokens": 3,
                           "finish_reason": "stop", "timed_out": False, "used_fallback": False,
                           "timing": {"queue_ms": 0.5, "prefill_ms": 40.25, "ttft_ms": 41.0, "total_ms": 60.5}},
        "reply.done.choices": {"v": 1, "id": 5, "event": "done", "value": "flee", "text": "flee",
                               "probs": {"attack": 0.25, "flee": 0.75}},
        "reply.done.timed_out": {"v": 1, "id": 5, "event": "done", "value": "flee", "text": "", "tokens": 0,
                                 "timed_out": True, "used_fallback": True, "finish_reason": "deadline",
                                 "timing": {"queue_ms": 0.5, "total_ms": 150.25}},
        "reply.error": {"v": 1, "id": None, "event": "error", "code": "bad_request", "message": "frame is not msgpack"},
        "reply.cancelled": {"v": 1, "id": 4, "event": "cancelled"},
        # Endings a client makes up itself (docs/PROTOCOL.md, "Local codes"): the sidecar is gone.
        "reply.local.unavailable": {"v": 1, "id": 4, "event": "error", "code": "unavailable",
                                    "message": "the sidecar is gone", "local": True},
        "reply.local.fallback": {"v": 1, "id": 5, "event": "done", "value": "flee", "text": "", "timed_out": False,
                                 "used_fallback": True, "finish_reason": "unavailable", "local": True},
    }
    return [(f"message.{k}", _pack(v), repr(v)) for k, v in msgs.items()]


def zmtp_cases() -> list[tuple[str, bytes, str]]:
    greeting = b"\xff" + bytes(8) + b"\x7f" + b"\x03\x01" + b"NULL".ljust(20, b"\x00") + b"\x00" + bytes(31)
    ready_body = b"\x05READY" + b"\x0bSocket-Type" + struct.pack(">I", 6) + b"DEALER"
    ready = b"\x04" + bytes([len(ready_body)]) + ready_body
    router_body = b"\x05READY" + b"\x0bSocket-Type" + struct.pack(">I", 6) + b"ROUTER"
    router_ready = b"\x04" + bytes([len(router_body)]) + router_body
    ping = _pack({"v": 1, "id": 2, "op": "ping"})
    say = lambda n: _pack({"v": 1, "id": 9, "op": "say", "npc": "brom", "text": "x" * n})
    long_body = say(300)
    body_255, body_256 = say(224), say(225)  # the largest short frame's body, the smallest long one's
    assert (len(body_255), len(body_256)) == (255, 256)
    return [
        ("zmtp.greeting.null_client", greeting, "64-byte greeting: signature, 3.1, NULL, as-server 0"),
        ("zmtp.ready.dealer", ready, "READY command with Socket-Type=DEALER"),
        ("zmtp.ready.router", router_ready, "READY command a ROUTER sends (libzmq may add properties)"),
        ("zmtp.frame.short", b"\x00" + bytes([len(ping)]) + ping, "one short frame: message.request.ping"),
        ("zmtp.frame.long", b"\x02" + struct.pack(">Q", len(long_body)) + long_body,
         'one long frame: a say request with "x" x 300'),
        ("zmtp.frame.255", b"\x00\xff" + body_255, 'one short frame of 255 bytes: a say request with "x" x 224'),
        ("zmtp.frame.256", b"\x02" + struct.pack(">Q", 256) + body_256,
         'one long frame of 256 bytes: a say request with "x" x 225'),
        ("zmtp.frame.multipart", b"\x01\x01A" + b"\x00\x02BC", 'two frames "A" (MORE) then "BC"'),
        ("zmtp.frame.empty", b"\x00\x00", "one empty frame"),
    ]


def all_cases() -> list[tuple[str, bytes, str]]:
    return msgpack_cases() + refused_cases() + message_cases() + zmtp_cases()


def render() -> str:
    lines = ["# name\thex\tvalue  (generated by generate.py; do not edit)"]
    lines += [f"{name}\t{data.hex()}\t{shown}" for name, data, shown in all_cases()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    (HERE / "vectors.tsv").write_text(render())
    print(f"wrote {len(all_cases())} vectors to {HERE / 'vectors.tsv'}", file=sys.stderr)
