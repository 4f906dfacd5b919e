"""Remote roles end to end: the real sidecar, both roles served by llama-cpp-python's own
OpenAI-compatible server (``python -m llama_cpp.server``) on loopback, with the default model."""

from __future__ import annotations

import queue
import re
import threading
import time
from pathlib import Path

import jsonschema
import pytest

pytest.importorskip("httpx")
pytest.importorskip("llama_cpp.server.app", reason="needs llama-cpp-python's [server] extra")

from npcai import Client, RequestFailed, Sidecar  # noqa: E402
from npcai.remote.llama_server import LlamaServer, free_port  # noqa: E402
from support import assert_one_line_failure, run_cli  # noqa: E402

PERSONA = "You are Brom, the blacksmith. You answer in one short sentence."
GRAMMARS = Path(__file__).resolve().parents[1] / "grammars"
SCHEMA = {"type": "object", "properties": {"price": {"type": "integer"}}, "required": ["price"]}


@pytest.fixture(scope="module")
def engine(model_path):
    with LlamaServer(model_path) as server:
        yield server


@pytest.fixture(scope="module")
def remote(engine):
    with Sidecar("--model", f"dialogue={engine.url}", "--model", f"decision={engine.url}") as sc:
        yield sc


@pytest.fixture
def client(remote):
    with Client(remote.endpoint) as c:
        c.hello("pytest")
        c.npc("brom", PERSONA, seed=3)
        yield c


def _first_chunks(client: Client, handle, n: int, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while len(handle.chunks) < n and not handle.finished and time.monotonic() < end:
        client.poll()
        time.sleep(0.002)


def test_hello_lists_each_remote_role_with_its_url_engine_and_model(client, engine, model_path):
    models = {m["role"]: m for m in client.hello("pytest")["models"]}
    assert set(models) == {"dialogue", "decision"}
    for m in models.values():
        assert m["remote"] is True and m["url"] == engine.url and m["engine"] == "llamacpp"
        assert m["name"] == str(model_path)  # llama-cpp-python's server names its model by its path


def test_say_streams_tokens_and_done_text_is_their_concatenation(client):
    handle = client.request("say", npc="brom", text="Can you fix my sword?", max_tokens=12, seed=5)
    reply = client.wait(handle, 120)
    assert reply["event"] == "done" and reply["finish_reason"] in ("stop", "length")
    assert len(handle.chunks) >= 2 and "".join(handle.chunks) == reply["text"] and reply["text"].strip()
    assert reply["used_fallback"] is False and reply["tokens"] <= 12


def test_decide_with_choices_scores_every_option_from_the_engines_log_probabilities(client):
    reply = client.call("decide", situation="A thief grabs a sword from your forge.",
                        choices=["chase the thief", "go to sleep"], timeout=300)
    assert reply["value"] in ("chase the thief", "go to sleep") and reply["used_fallback"] is False
    probs = reply["probs"]
    assert set(probs) == {"chase the thief", "go to sleep"} and abs(sum(probs.values()) - 1) < 1e-6
    assert reply["value"] == max(probs, key=probs.get)  # temperature 0: the likeliest option
    assert 0 < min(probs.values())  # a real score for each, not a one-hot pick of generated text


def test_decide_with_a_schema_gives_a_valid_object(client):
    reply = client.call("decide", npc="brom", situation="A customer asks the price of a dagger.", schema=SCHEMA,
                        max_tokens=24, timeout=120)
    assert reply["used_fallback"] is False
    jsonschema.validate(reply["value"], SCHEMA)


def test_decide_with_a_grammar_gives_text_in_its_language(client):
    reply = client.call("decide", npc="brom", situation="A stranger draws a sword.", grammar="action", max_tokens=12,
                        timeout=120)
    verbs = "attack|flee|follow|guard|trade|talk|give|wait"
    assert reply["used_fallback"] is False and re.fullmatch(rf"({verbs})\b.*", reply["value"]), reply


def test_decide_with_a_regex_is_a_bad_request_naming_the_missing_regex_field(client):
    with pytest.raises(RequestFailed) as refused:
        client.call("decide", npc="brom", situation="Which way?", regex="(north|south) [0-9]{1,2}", timeout=120)
    assert refused.value.code == "bad_request" and "no regex constraint" in str(refused.value)


def test_a_chain_runs_on_remote_roles_each_step_fed_by_the_ones_before(client):
    """DEPLOY.md's dedicated server: both roles remote, a chain's steps are served by the engine."""
    steps = [{"op": "decide", "as": "intent", "npc": "brom", "situation": "A customer asks for a discount.",
              "choices": ["haggle", "refuse"], "fallback": "refuse"},
             {"op": "say", "as": "line", "npc": "brom", "text": "Cheaper? (You {intent}.)", "max_tokens": 8},
             {"op": "decide", "as": "emotion", "situation": "The blacksmith said: {line}",
              "grammar": 'root ::= "calm" | "angry"', "max_tokens": 8, "fallback": "calm"}]
    # llama-cpp-python's server takes seconds to score a choice (it sorts the whole vocabulary for every
    # echoed token's log-probability), so the deadline is ample: this test is about what each step is fed.
    handle = client.request("chain", steps=steps, deadline_ms=240_000)
    reply = client.wait(handle, 300)
    assert reply["event"] == "done" and reply["used_fallback"] is False, [(s["text"], s["finish_reason"])
                                                                          for s in handle.steps]
    results = reply["results"]
    assert results["intent"] in ("haggle", "refuse") and results["emotion"] in ("calm", "angry")
    assert results["line"] == handle.text and [s["as"] for s in handle.steps] == ["intent", "line", "emotion"]
    assert set(reply["probs"]) == {"intent"}
    history = client.call("save", npc="brom")["state"]
    assert f"(You {results['intent']}.)".encode() in history


def test_a_remote_decide_with_actions_picks_one_of_the_npcs_actions_with_valid_args(client):
    actions = [{"name": "sell", "description": "sell the customer a sword",
                "args": {"type": "object", "properties": {"price": {"enum": [10, 20]}}, "required": ["price"]}},
               {"name": "close_shop", "description": "close the shop and go home"}]
    client.call("npc", npc="mira", persona=PERSONA, actions=actions, timeout=60)
    reply = client.call("decide", npc="mira", situation="A customer asks for a sword.", actions=True, timeout=120)
    assert reply["used_fallback"] is False and set(reply["probs"]) == {"sell", "close_shop"}
    assert reply["value"]["name"] in ("sell", "close_shop")
    if reply["value"]["name"] == "sell":
        assert reply["value"]["args"]["price"] in (10, 20)


def test_cancel_closes_the_stream_and_ends_with_cancelled(client):
    handle = client.request("say", npc="brom", text="Tell me about every sword you ever made.", max_tokens=200,
                            temperature=0.8)
    _first_chunks(client, handle, 2)
    assert client.call("cancel", target=handle.id)["found"] is True
    assert client.wait(handle, 30)["event"] == "cancelled"
    streamed = len(handle.chunks)
    time.sleep(0.3)
    client.poll()
    assert len(handle.chunks) == streamed
    stats = client.call("stats")["engine"]["remote"]
    assert stats["cancelled"] >= 1 and stats["in_flight"] == 0


def test_an_engine_stopped_mid_request_ends_it_with_its_fallback_and_a_restart_brings_the_role_back(client, engine):
    handle = client.request("say", npc="brom", text="Tell me a long story about your forge.", max_tokens=200,
                            deadline_ms=60_000, fallback="Brom grunts.")
    _first_chunks(client, handle, 1)
    engine.stop()
    reply = client.wait(handle, 70)
    assert reply["event"] == "done" and reply["used_fallback"] is True and reply["value"] == "Brom grunts."
    assert reply["finish_reason"] == "unavailable" and "127.0.0.1" in reply["message"]
    with pytest.raises(RequestFailed) as down:  # no fallback: the error names the cause
        client.call("decide", situation="Run?", grammar="action", max_tokens=4, timeout=30)
    assert down.value.code == "unavailable" and "cannot connect" in str(down.value)
    engine.start()  # same port: the pooled connections reconnect
    reply = client.call("decide", situation="A wolf attacks.", grammar="action", max_tokens=8, timeout=120)
    assert reply["used_fallback"] is False and reply["value"]


def test_a_deadline_bounds_the_request_and_answers_with_the_fallback_on_time(client):
    reply = client.wait(client.request("decide", situation="A dragon lands.", choices=["fight", "flee"],
                                       deadline_ms=300, fallback="flee"), 30)
    assert reply["timed_out"] is True and reply["value"] == "flee" and reply["finish_reason"] == "deadline"
    in_flight = 1  # the late work is dropped: its HTTP requests are closed
    for _ in range(100):
        in_flight = client.call("stats")["engine"]["remote"]["in_flight"]
        if in_flight == 0:
            break
        time.sleep(0.05)
    assert in_flight == 0


def test_local_and_remote_roles_mix(engine):
    with Sidecar("--model", "decision=smollm2-135m", "--model", f"dialogue={engine.url}") as sc, \
            Client(sc.endpoint) as c:
        models = {m["role"]: m for m in c.hello("pytest")["models"]}
        assert models["dialogue"]["remote"] is True and "remote" not in models["decision"]
        assert models["decision"]["name"] == "smollm2-135m"
        c.npc("brom", PERSONA)
        local = c.call("decide", npc="brom", situation="Run?", choices=["yes", "no"])
        assert local["value"] in ("yes", "no")
        said = c.call("say", npc="brom", text="Hello!", max_tokens=6, timeout=120)
        assert said["event"] == "done" and said["text"]


def test_streamed_lines_reuse_one_kept_alive_connection_to_the_engine(model_path, tmp_path):
    log = tmp_path / "engine.log"  # its access log names each request's client address
    with LlamaServer(model_path, log=log) as server, \
            Sidecar("--model", f"dialogue={server.url}", "--model", f"decision={server.url}") as sc, \
            Client(sc.endpoint) as c:
        c.hello("pytest")
        c.npc("brom", PERSONA)
        for text in ("Hello!", "Can you fix my sword?", "Goodbye."):
            said = c.call("say", npc="brom", text=text, max_tokens=4, timeout=120)
            assert said["event"] == "done" and said["finish_reason"] in ("stop", "length")
    ports = re.findall(r"127\.0\.0\.1:(\d+) - \"POST /v1/chat/completions", log.read_text(errors="replace"))
    assert len(ports) == 3 and len(set(ports)) == 1, ports


def test_a_remote_catalog_model_scores_choices_as_the_same_model_does_locally_at_its_fitted_temperature(engine):
    """The server serves the catalog model's file: the remote role takes its fitted temperature, and
    its probs are the local role's (the same prompt, options and prior, scored by another process)."""
    with Sidecar("--model", "decision=smollm2-135m", "--model", f"dialogue={engine.url}") as sc, \
            Client(sc.endpoint) as c:
        models = {m["role"]: m for m in c.hello("pytest")["models"]}
        assert models["dialogue"]["choice_temperature"] == models["decision"]["choice_temperature"] > 1
        assert models["dialogue"]["choice_temperature_power"] == models["decision"]["choice_temperature_power"] < 0
        c.npc("brom", PERSONA)
        for situation, options in (("A thief grabs a sword from your forge.", ["chase the thief", "go to sleep"]),
                                   ("A dragon lands in the square.", ["fight", "flee", "hide in the forge"])):
            here = c.call("decide", npc="brom", situation=situation, choices=options, timeout=120)["probs"]
            there = c.call("decide", npc="brom", role="dialogue", situation=situation, choices=options,
                           timeout=300)["probs"]
            assert there == pytest.approx(here, abs=0.02), (there, here)


def test_choices_need_the_served_models_template_else_bad_request_naming_it(model_path):
    with LlamaServer(model_path, extra=("--model_alias", "smol")) as server, \
            Sidecar("--model", f"decision={server.url}") as sc, Client(sc.endpoint) as c:
        c.hello("pytest")
        with pytest.raises(RequestFailed) as refused:
            c.call("decide", situation="Run?", choices=["yes", "no"])
        assert refused.value.code == "bad_request" and "chat template" in str(refused.value)


@pytest.mark.parametrize("url, needle", [
    ("ftp://gpu-box/v1", "http:// or https:// URL"),
    ("http://127.0.0.1:8000/v1?engine=tgi", "unknown engine 'tgi'"),
    ("http://user:pw@127.0.0.1:8000/v1", "no credentials in the URL"),
])
def test_a_malformed_url_or_unknown_engine_fails_at_start_in_one_line(url, needle):
    assert_one_line_failure(run_cli("serve", "--model", f"dialogue={url}"), needle)


def test_an_unreachable_engine_fails_at_start_in_one_line():
    url = f"http://127.0.0.1:{free_port()}/v1"
    assert_one_line_failure(run_cli("serve", "--model", f"dialogue={url}"), "cannot reach the server")


class _Watched(list):
    """An NPC's history that notes which thread changes it, and how."""

    def __init__(self) -> None:
        super().__init__()
        self.changes: list[tuple[str, str, int]] = []

    def append(self, item) -> None:
        self.changes.append((threading.current_thread().name, "append", 1))
        super().append(item)

    def extend(self, items) -> None:
        items = list(items)
        self.changes.append((threading.current_thread().name, "extend", len(items)))
        super().extend(items)


def test_a_remote_say_adds_its_exchange_on_the_engine_thread_in_one_step(engine):
    """NPC state belongs to the engine thread (observe, forget, save and local jobs run there): the
    remote loop hands the exchange over rather than changing the history itself."""
    from npcai import protocol as P
    from npcai.cli import model_roles
    from npcai.remote.role import Hub
    from npcai.sidecar.npc import Npc

    calls: queue.SimpleQueue = queue.SimpleQueue()

    def engine_thread() -> None:
        while (fn := calls.get()) is not None:
            fn()

    worker = threading.Thread(target=engine_thread, name="engine", daemon=True)
    worker.start()
    hub = Hub(model_roles([f"dialogue={engine.url}"]), GRAMMARS, connections=2, client_tokens_per_s=0,
              on_engine=calls.put)
    try:
        npc = Npc("brom", PERSONA, messages=_Watched())
        replies: queue.SimpleQueue = queue.SimpleQueue()
        for rid, text in enumerate(["Can you fix my sword?", "How much?"], 1):
            req = P.parse_request({"v": 1, "id": rid, "op": "say", "npc": "brom", "text": text, "max_tokens": 6},
                                  b"c", time.monotonic())
            hub.submit(hub.roles["dialogue"], req, npc, replies.put)
        done = _until_done(replies, 2)
    finally:
        hub.close()
        calls.put(None)
    assert [d["id"] for d in done] == [1, 2] and all(d["used_fallback"] is False for d in done)
    assert npc.messages.changes == [("engine", "extend", 2), ("engine", "extend", 2)]
    assert npc.messages == [("user", "Can you fix my sword?"), ("assistant", done[0]["text"]),
                            ("user", "How much?"), ("assistant", done[1]["text"])]


def _until_done(replies: "queue.SimpleQueue", n: int) -> list[dict]:
    done: list[dict] = []
    while len(done) < n:
        reply = replies.get(timeout=120)
        if reply["event"] not in ("token", "sentence"):
            done.append(reply)
    return done
