"""A remote role's say or decide skips the engine thread (npcai/remote/direct.py), with each NPC's
ops kept in order; a request that follows a say's ``done`` reads its exchange (npcai/remote/history.py).
Real components: the engine and the remote roles' loop, in process, with both roles served by
llama-cpp-python's own OpenAI-compatible server on loopback."""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("httpx")
pytest.importorskip("llama_cpp.server.app", reason="needs llama-cpp-python's [server] extra")

from npcai import protocol as P  # noqa: E402
from npcai.cli import model_roles  # noqa: E402
from npcai.remote.direct import DirectRoute  # noqa: E402
from npcai.remote.llama_server import LlamaServer  # noqa: E402
from npcai.remote.role import Hub  # noqa: E402
from npcai.sidecar.engine import Engine  # noqa: E402
from npcai.sidecar.npc import Npc  # noqa: E402
from npcai.sidecar.settings import Settings  # noqa: E402

BROM = "You are Brom, the blacksmith. You answer in one short sentence."
BROM_RETIRED = "You are Brom, a retired blacksmith who now keeps bees. You answer in one short sentence."
GRAMMARS = Path(__file__).resolve().parents[1] / "grammars"


@pytest.fixture(scope="module")
def server(model_path):
    # Requests here overlap (a decide and a say sent together): the server must queue them, not end the
    # stream in flight when the next arrives (its default; docs/DEPLOY.md).
    with LlamaServer(model_path, extra=("--interrupt_requests", "false")) as s:
        yield s


def _req(rid: int, op: str, **fields) -> P.Request:
    return P.parse_request({"v": 1, "id": rid, "op": op, **fields}, b"c", time.monotonic())


def _answers(replies: queue.SimpleQueue, n: int) -> dict[int, dict]:
    """The next ``n`` final replies (token and sentence events skipped), by request id."""
    out: dict[int, dict] = {}
    while len(out) < n:
        reply = replies.get(timeout=120)
        if reply["event"] not in (P.TOKEN, P.SENTENCE):
            out[reply["id"]] = reply
    return out


def _until(ready, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not ready() and time.monotonic() < end:
        time.sleep(0.01)


def test_a_say_queued_behind_its_npcs_redefinition_reads_the_new_npc_and_later_ones_skip_the_engine_thread(server):
    replies: queue.SimpleQueue = queue.SimpleQueue()
    engine = Engine(Settings(), model_roles([f"dialogue={server.url}", f"decision={server.url}"]),
                    lambda req, reply: replies.put(reply))
    route = DirectRoute(engine)
    old = engine.npcs["brom"] = Npc("brom", BROM)  # defined earlier
    worker = threading.Thread(target=engine.run, name="engine", daemon=True)
    try:
        # The engine thread has not run yet: the redefinition waits in its inbox, and so does the say
        # sent right behind it, although an NPC "brom" exists already.
        route.submit(_req(1, "npc", npc="brom", persona=BROM_RETIRED))
        route.submit(_req(2, "say", npc="brom", text="Hello!", max_tokens=4))
        assert engine.hub.counters["direct"] == 0
        worker.start()
        first = _answers(replies, 2)
        assert first[1]["event"] == "ok" and first[2]["event"] == "done" and not first[2]["used_fallback"]
        new = engine.npcs["brom"]
        assert new is not old and new.persona == BROM_RETIRED
        _until(lambda: new.messages)  # the exchange enters on the engine thread's next turn after done
        assert new.messages == [("user", "Hello!"), ("assistant", first[2]["text"])] and old.messages == []

        # Nothing is queued for brom any more: its next requests go straight to the remote loop and
        # are answered with the engine thread stopped.
        engine.stop()
        worker.join(10)
        assert not worker.is_alive()
        route.submit(_req(3, "decide", npc="brom", situation="A customer asks for a sword.", grammar="action",
                          max_tokens=12))
        route.submit(_req(4, "say", npc="brom", text="What do you sell?", max_tokens=4))
        assert engine.hub.counters["direct"] == 2
        later = _answers(replies, 2)
        assert later[3]["event"] == "done" and not later[3]["used_fallback"]
        assert later[4]["event"] == "done" and later[4]["text"]

        # An observe goes to the engine thread, which is stopped: the say behind it waits there too,
        # and ends with its fallback at its deadline (the server answers it: not this test's engine).
        route.submit(_req(5, "observe", npc="brom", text="A dragon lands outside."))
        route.submit(_req(6, "say", npc="brom", text="Did you see that?", max_tokens=4))
        assert engine.hub.counters["direct"] == 2
    finally:
        engine.stop()
        engine.close()


def test_a_request_sent_after_a_says_done_reads_the_history_with_that_exchange_in_it(server):
    """The say's exchange is added on the engine thread after ``done`` goes out; a decide for the same
    NPC that reaches the loop first waits for it rather than reading the history without it."""
    calls: queue.SimpleQueue = queue.SimpleQueue()
    hub = Hub(model_roles([f"dialogue={server.url}", f"decision={server.url}"]), GRAMMARS, connections=2,
              client_tokens_per_s=0, on_engine=calls.put)
    decision = hub.roles["decision"]
    sent: list[dict] = []
    post = decision.upstream.post

    async def recorded_post(path: str, body: dict) -> dict:
        sent.append(body)
        return await post(path, body)

    decision.upstream.post = recorded_post  # the real client, its request bodies noted
    replies: queue.SimpleQueue = queue.SimpleQueue()
    npc = Npc("brom", BROM)
    worker = threading.Thread(target=lambda: [fn() for fn in iter(calls.get, None)], name="engine", daemon=True)
    try:
        hub.submit(hub.roles["dialogue"], _req(1, "say", npc="brom", text="Hello!", max_tokens=4), npc, replies.put)
        said = _answers(replies, 1)[1]
        assert said["event"] == "done" and npc.messages == []  # the engine thread has not run the exchange in
        hub.submit(decision, _req(2, "decide", npc="brom", situation="A customer asks for a sword.",
                                  grammar="action", max_tokens=12), npc, replies.put)
        time.sleep(0.3)  # the decide has reached the loop: it waits there
        assert sent == []
        worker.start()  # the engine thread runs the exchange in; the decide goes on
        decided = _answers(replies, 1)[2]
    finally:
        hub.close()
        calls.put(None)
    assert decided["event"] == "done" and not decided["used_fallback"]
    contents = [m["content"] for m in sent[0]["messages"]]
    assert contents[-3:-1] == ["Hello!", said["text"]]
