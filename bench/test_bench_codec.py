"""The wire codec: decoding and validating a request, encoding a streamed token."""

import msgpack

from npcai import protocol as P

SAY = msgpack.packb({"v": 1, "id": 42, "op": "say", "npc": "brom", "text": "Can you fix my sword before dawn?",
                     "max_tokens": 32, "temperature": 0.7, "deadline_ms": 2000, "fallback": "..."})
LIMITS = P.Limits()


def test_decode_and_validate_a_say_request(benchmark):
    req = benchmark(lambda: P.parse_request(P.decode_frame(SAY, LIMITS)))
    assert req.op == "say" and req.deadline_ms == 2000


def test_encode_a_token_event(benchmark):
    frame = benchmark(lambda: P.encode(P.token(42, " Aye")))
    assert msgpack.unpackb(frame)["text"] == " Aye"
