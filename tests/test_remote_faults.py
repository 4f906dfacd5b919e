"""Remote roles against an engine that misbehaves: a scripted OpenAI-compatible server on loopback (no
model), whose answer to each request a test sets. It stands for an engine, a proxy or a version whose
answers are not what npcai expects; a real engine (tests/test_remote.py) seldom does these things.

Whatever the engine does, each request ends with exactly one reply: a malformed answer is
``unavailable`` (the fallback when the request has one), an answer that breaks the request's
constraint is the fallback, and the quota of requests in flight is given back.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

pytest.importorskip("httpx")

from npcai import Client, RequestFailed, Sidecar
from npcai.errors import SettingsError
from npcai.remote import detect, http, spec

MODEL = "scripted"
PERSONA = "You are Brom, the blacksmith."
SCHEMA = {"type": "object", "properties": {"price": {"type": "integer"}}, "required": ["price"]}
MAX_CHUNKS = 100_000  # an endless stream stops by itself after this many chunks

Answer = Callable[[str, dict], Any]  # (path, body) -> (status, JSON), or SSE data lines for a stream


def chunk(text: str = "", reason: str | None = None) -> str:
    """One streamed chat chunk, as OpenAI's servers send it."""
    return json.dumps({"object": "chat.completion.chunk", "model": MODEL,
                       "choices": [{"index": 0, "delta": {"content": text} if text else {}, "finish_reason": reason}]})


def stream(*pieces: str, reason: str = "stop") -> list[str]:
    return [*(chunk(p) for p in pieces), chunk(reason=reason), "[DONE]"]


def message(content: Any, reason: str = "stop") -> tuple[int, dict]:
    return 200, {"object": "chat.completion", "model": MODEL, "usage": {"prompt_tokens": 9, "completion_tokens": 3},
                 "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                              "finish_reason": reason}]}


def scored(body: dict) -> tuple[int, dict]:
    """vLLM's answer to a scoring request: the last message's text as one prompt token, its log-probability
    -1 (so every option scores the same), or less for an option with "sleep" in it."""
    text = body["messages"][-1]["content"]
    logprob = -6.0 if "sleep" in text else -1.0
    return 200, {"choices": [{"message": {"content": "."}, "finish_reason": "length"}],
                 "prompt_logprobs": [None, {"7": {"logprob": logprob, "rank": 1, "decoded_token": text}}]}


def well(path: str, body: dict) -> Any:
    """A well-behaved engine: lines, valid JSON, scored options."""
    if body.get("prompt_logprobs") is not None:
        return scored(body)
    if body.get("stream"):
        return stream("Hello", " there.", " Fine", " day!", " Bye.")
    return message('{"price": 5}')


class ScriptedEngine:
    """An OpenAI-compatible server (vLLM's shapes) on 127.0.0.1; ``answer`` says what each POST gets.
    ``requests`` lists the (path, body) of every POST; ``closed`` counts streams the client closed early."""

    def __init__(self) -> None:
        self.answer: Answer = well
        self.requests: list[tuple[str, dict]] = []
        self.closed = 0
        self.sent = 0  # stream chunks written, all streams together
        self.get_delay_s = 0.0  # how long a GET waits before it is answered (a server busy with a generation)
        engine = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                time.sleep(engine.get_delay_s)
                try:
                    if self.path == "/v1/models":
                        return self._json(200, {"object": "list", "data": [{"id": MODEL, "object": "model"}]})
                    if self.path == "/version":
                        return self._json(200, {"version": "0.12.0"})
                    self._json(404, {"detail": "Not Found"})
                except (BrokenPipeError, ConnectionResetError):  # the client gave up waiting
                    self.close_connection = True

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                engine.requests.append((self.path, body))
                answer = engine.answer(self.path, body)
                if isinstance(answer, tuple):
                    return self._json(*answer)
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    for n, data in enumerate(answer):
                        if n == MAX_CHUNKS:
                            break
                        if data is None:  # the stream breaks off here
                            self.close_connection = True
                            return
                        frame = f"data: {data}\n\n".encode()
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(frame), frame))
                        self.wfile.flush()
                        engine.sent += 1
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    engine.closed += 1
                    self.close_connection = True

            def _json(self, status: int, obj: Any) -> None:
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        class Server(ThreadingHTTPServer):
            daemon_threads = True

        self._server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1?engine=vllm"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture(scope="module")
def engine():
    server = ScriptedEngine()
    yield server
    server.close()


@pytest.fixture(scope="module")
def sidecar(engine):
    with Sidecar("--model", f"dialogue={engine.url}", "--model", f"decision={engine.url}",
                 "--max-inflight-per-client", "3") as sc:
        yield sc


@pytest.fixture
def client(sidecar, engine):
    engine.answer = well
    with Client(sidecar.endpoint) as c:
        c.hello("pytest")
        c.npc("brom", PERSONA, seed=3)
        yield c
    engine.answer = well


def _in_flight(client: Client) -> int:
    for _ in range(100):
        n = client.call("stats")["engine"]["remote"]["in_flight"]
        if n == 0:
            return 0
        time.sleep(0.02)
    return n


# --- a server slow to answer at start-up --------------------------------------------------------------
def test_a_server_busy_at_start_up_is_waited_for_longer_than_a_connection(engine, monkeypatch):
    """A server finishing a generation answers ``GET /models`` late: still found, since only connecting is
    bounded by the connect timeout."""
    monkeypatch.setattr(http, "CONNECT_S", 0.2)
    monkeypatch.setattr(http, "PROBE_READ_S", 3.0)
    monkeypatch.setattr(engine, "get_delay_s", 0.6)
    served = detect.connect(spec.parse("dialogue", engine.url), "")
    assert (served.engine, served.model, served.version) == ("vllm", MODEL, "0.12.0")


def test_a_server_that_never_answers_at_start_up_is_named_as_connected_but_silent(engine, monkeypatch):
    monkeypatch.setattr(http, "PROBE_READ_S", 0.3)
    monkeypatch.setattr(engine, "get_delay_s", 1.0)
    with pytest.raises(SettingsError) as failed:
        detect.connect(spec.parse("dialogue", engine.url), "")
    assert "cannot reach the server: connected, but it did not answer GET /v1/models within 0.3 s" in str(failed.value)


# --- an answer of an unexpected shape ------------------------------------------------------------------
@pytest.mark.parametrize("op, fields, answer", [
    ("say", {"text": "Hello"}, ['{"choices": "oops"}', "[DONE]"]),
    ("say", {"text": "Hello"}, ['{"choices": [{"delta": "text"}]}', "[DONE]"]),
    ("decide", {"situation": "A thief!", "schema": SCHEMA}, (200, {"choices": [{"message": "text",
                                                                               "finish_reason": "stop"}]})),
    ("decide", {"situation": "A thief!", "schema": SCHEMA}, (200, {"choices": None, "usage": "lots"})),
    ("decide", {"situation": "A thief!", "choices": ["go", "stay"]},
     (200, {"prompt_logprobs": [None, {"1": {"logprob": "bad", "rank": 1, "decoded_token": " go"}}]})),
])
def test_an_answer_of_an_unexpected_shape_ends_the_request_unavailable_and_frees_its_quota(client, engine, op,
                                                                                            fields, answer):
    engine.answer = lambda path, body: answer
    for _ in range(4):  # one more than --max-inflight-per-client: none may stay in flight
        with pytest.raises(RequestFailed) as failed:
            client.call(op, npc="brom", timeout=10, **fields)
        assert failed.value.code == "unavailable" and "unexpected shape" in str(failed.value)
    reply = client.call(op, npc="brom", fallback="stay", timeout=10, **fields)
    assert reply["used_fallback"] is True and reply["finish_reason"] == "unavailable" and reply["value"] == "stay"
    assert _in_flight(client) == 0


# --- constraints checked here ------------------------------------------------------------------------
@pytest.mark.parametrize("constraint, needle", [
    ({"grammar": 'root ::= ("north" | "south"'}, "does not parse as GBNF"),
    ({"grammar": "root ::= missing"}, "GBNF"),
    ({"regex": "(north|south"}, "regex does not compile"),
    ({"schema": {"type": "nope"}}, "does not compile"),
])
def test_a_constraint_that_does_not_compile_is_refused_here_and_never_reaches_the_engine(client, engine, constraint,
                                                                                         needle):
    sent = len(engine.requests)
    with pytest.raises(RequestFailed) as refused:
        client.call("decide", npc="brom", situation="Which way?", fallback="north", timeout=10, **constraint)
    assert refused.value.code == "bad_request" and needle in str(refused.value)
    assert len(engine.requests) == sent


@pytest.mark.parametrize("constraint, answer", [
    ({"schema": SCHEMA}, '{"price": "free"}'),  # an integer, the schema says
    ({"schema": SCHEMA}, "[1, 2]"),
    ({"schema": SCHEMA}, '{"price": 5'),
    ({"grammar": "emote"}, "not an emote at all"),
    ({"regex": "(north|south) [0-9]{1,2}"}, "north 123"),  # matched whole, or not at all
])
def test_an_engine_answer_that_breaks_the_constraint_is_the_fallback(client, engine, constraint, answer):
    engine.answer = lambda path, body: message(answer)
    reply = client.call("decide", npc="brom", situation="A customer asks the price.", fallback="FB", timeout=10,
                        **constraint)
    assert reply["used_fallback"] is True and reply["value"] == "FB" and reply["finish_reason"] == "error"
    assert reply["text"] == answer


@pytest.mark.parametrize("constraint, answer, value", [
    ({"schema": SCHEMA}, '{ "price" : 5 }', {"price": 5}),  # any spacing, as JSON reads
    ({"schema": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string"}}}},
     '{"b": "x", "a": 1}', {"b": "x", "a": 1}),  # in any order
    ({"grammar": 'root ::= "café" | "tea"'}, "café", "café"),
    ({"regex": "(north|south) [0-9]{1,2}"}, "south 7", "south 7"),
])
def test_an_engine_answer_within_the_constraint_stands(client, engine, constraint, answer, value):
    engine.answer = lambda path, body: message(answer, reason="length")  # complete when it reached max_tokens
    reply = client.call("decide", npc="brom", situation="A customer asks the price.", fallback="FB", timeout=10,
                        **constraint)
    assert reply["used_fallback"] is False and reply["value"] == value and reply["finish_reason"] == "stop"


# --- actions, chosen by the engine's decisions ----------------------------------------------------------
ACTIONS = [{"name": "sell", "description": "sell the customer a blade",
            "args": {"type": "object", "properties": {"item": {"enum": ["sword", "axe"]}}, "required": ["item"]}},
           {"name": "rest", "description": "go to sleep"}]


@pytest.mark.parametrize("actions, needle", [
    ([{"name": "9lives"}], "action name '9lives'"),
    ([{"name": "sell", "args": {"type": "nope"}}], "action 'sell'"),
    ([{"name": "sell"}, {"name": "sell"}], "declared twice"),
])
def test_an_npc_of_a_remote_role_with_a_bad_action_is_refused_naming_it(client, actions, needle):
    with pytest.raises(RequestFailed) as refused:
        client.call("npc", npc="brom", persona=PERSONA, actions=actions, timeout=10)
    assert refused.value.code == "bad_request" and needle in str(refused.value)


def test_a_remote_decide_with_actions_picks_an_allowed_action_with_valid_args(client):
    client.call("npc", npc="brom", persona=PERSONA, actions=ACTIONS, timeout=10)
    reply = client.call("decide", npc="brom", situation="A customer wants a blade.", actions=True, timeout=10)
    assert reply["used_fallback"] is False and set(reply["probs"]) == {"sell", "rest"}
    assert reply["value"]["name"] == "sell" and reply["value"]["args"]["item"] in ("sword", "axe"), reply
    assert client.call("act_result", npc="brom", name="sell", result="The customer paid.", timeout=10)["event"] == "ok"


def test_a_remote_say_with_actions_streams_its_line_then_names_what_the_npc_does(client):
    client.call("npc", npc="brom", persona=PERSONA, actions=ACTIONS, timeout=10)
    handle = client.request("say", npc="brom", text="I need a blade.", actions=True)
    reply = client.wait(handle, 10)
    assert reply["event"] == "done" and reply["text"] == "".join(handle.chunks) == "Hello there. Fine day! Bye."
    assert set(reply["action_probs"]) == {"(none)", "sell", "rest"}
    assert reply["action"] is None or reply["action"]["name"] in ("sell", "rest")


# --- a remote say: its cap, its sentences, what a failure carries ---------------------------------------
def test_max_tokens_caps_a_remote_line_whose_engine_does_not_stop(client, engine):
    engine.answer = lambda path, body: (chunk(f" w{i}") for i in range(MAX_CHUNKS))
    started = time.monotonic()
    handle = client.request("say", npc="brom", text="Talk.", max_tokens=16)
    reply = client.wait(handle, 10)
    assert time.monotonic() - started < 3
    assert reply["finish_reason"] == "length" and reply["tokens"] == 16 and len(handle.chunks) == 16
    assert reply["text"] == "".join(f" w{i}" for i in range(16))
    for _ in range(100):  # the engine's request is closed
        if engine.closed:
            break
        time.sleep(0.02)
    assert engine.closed and engine.sent < 5000


def test_a_remote_say_sends_each_sentence_as_it_ends(client):
    handle = client.request("say", npc="brom", text="Hello!")
    reply = client.wait(handle, 10)
    assert handle.sentences == ["Hello there.", " Fine day!", " Bye."] and "".join(handle.sentences) == reply["text"]


def test_a_remote_say_that_fails_after_streaming_carries_the_chunks_it_streamed(client, engine):
    engine.answer = lambda path, body: [chunk("Hello"), chunk(" there"), None]  # then the connection breaks off
    handle = client.request("say", npc="brom", text="Hello!", fallback="Brom grunts.")
    reply = client.wait(handle, 10)
    assert reply["finish_reason"] == "unavailable" and reply["value"] == "Brom grunts."
    assert handle.chunks == ["Hello", " there"] and reply["text"] == "Hello there" and reply["tokens"] == 2


# --- refusals that are the engine's state, not the request's -------------------------------------------
@pytest.mark.parametrize("status, code", [(429, "overloaded"), (401, "unavailable"), (403, "unavailable")])
def test_an_engine_that_is_overloaded_or_refuses_its_key_is_no_bad_request(client, engine, status, code):
    engine.answer = lambda path, body: (status, {"error": {"message": "engine says no"}})
    with pytest.raises(RequestFailed) as failed:
        client.call("decide", npc="brom", situation="A thief!", schema=SCHEMA, timeout=10)
    assert failed.value.code == code and f"({status})" in str(failed.value)
    reply = client.call("say", npc="brom", text="Hello!", fallback="Brom grunts.", timeout=10)
    assert reply["used_fallback"] is True and reply["finish_reason"] == "unavailable"
    assert f"({status})" in reply["message"]


def test_an_engine_that_refuses_a_field_is_a_bad_request(client, engine):
    engine.answer = lambda path, body: (400, {"error": {"message": "unknown field"}})
    with pytest.raises(RequestFailed) as refused:
        client.call("say", npc="brom", text="Hello!", fallback="Brom grunts.", timeout=10)
    assert refused.value.code == "bad_request" and "unknown field" in str(refused.value)
