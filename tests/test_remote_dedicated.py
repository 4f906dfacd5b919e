"""Dedicated-server mode: one sidecar in front of an engine, several game clients over CurveZMQ.

The engine is llama-cpp-python's own server (``python -m llama_cpp.server``) on loopback, serving
both roles; the clients are real ``Client``s with their own Curve certificates. Quotas are per
client: requests in flight (``--max-inflight-per-client``) and streamed tokens per second
(``--client-tokens-per-s``); the engine's connections (``--remote-connections``) are shared in turn
(npcai/remote/fair.py), so one busy client cannot starve another.
"""

from __future__ import annotations

import contextlib
import time

import pytest
import zmq.auth

pytest.importorskip("httpx")
pytest.importorskip("llama_cpp.server.app", reason="needs llama-cpp-python's [server] extra")

from npcai import Client, RequestFailed, Sidecar  # noqa: E402
from npcai.remote.llama_server import LlamaServer  # noqa: E402

PERSONA = "You are Brom, the blacksmith. You answer in one short sentence."
LONG = "Tell me a long story about your forge."


@pytest.fixture(scope="module")
def engine(model_path):
    # By default llama-cpp-python's server ends the stream in flight early when another request
    # arrives (``interrupt_requests``); a server for many players queues them instead.
    with LlamaServer(model_path, extra=("--interrupt_requests", "false")) as server:
        yield server


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """A sidecar certificate and two players' certificates, both allowed in."""
    root = tmp_path_factory.mktemp("curve")
    (root / "sidecar").mkdir()
    (root / "players").mkdir()
    made = {"sidecar": zmq.auth.create_certificates(root / "sidecar", "sidecar")}
    for name in ("alice", "bob"):
        made[name] = zmq.auth.create_certificates(root / "players", name)
    return root, made


@contextlib.contextmanager
def dedicated(engine, keys, *flags: str):
    root, made = keys
    with Sidecar("--model", f"dialogue={engine.url}", "--model", f"decision={engine.url}",
                 "--curve-secret-key", str(made["sidecar"][1]), "--curve-allow", str(root / "players"),
                 *flags) as sc, \
            Client(sc.endpoint, curve_server_key=made["sidecar"][0], curve_client_cert=made["alice"][1]) as alice, \
            Client(sc.endpoint, curve_server_key=made["sidecar"][0], curve_client_cert=made["bob"][1]) as bob:
        for player in (alice, bob):
            models = {m["role"]: m for m in player.hello("player")["models"]}
            assert models["dialogue"]["remote"] is True and models["dialogue"]["url"] == engine.url
        alice.npc("brom", PERSONA)
        yield sc, alice, bob


def _finish_order(players: dict[str, Client], handles: dict[str, object], timeout: float = 300) -> list[str]:
    """Names of the handles in the order their requests ended."""
    order: list[str] = []
    end = time.monotonic() + timeout
    while len(order) < len(handles) and time.monotonic() < end:
        for player in players.values():
            player.poll()
        order += [n for n, h in handles.items() if h.finished and n not in order]
        time.sleep(0.002)
    return order


def test_each_client_has_its_own_in_flight_quota_and_waiting_clients_take_turns(engine, keys):
    # One connection to the engine; a token rate makes each line hold it for a few seconds.
    with dedicated(engine, keys, "--remote-connections", "1", "--max-inflight-per-client", "3",
                   "--client-tokens-per-s", "4") as (_, alice, bob):
        bob.npc("mira", "You are Mira, the innkeeper. You answer in one short sentence.")
        handles = {f"alice{i}": alice.request("say", npc="brom", text=LONG, max_tokens=16, temperature=0.0)
                   for i in range(3)}
        over = alice.request("say", npc="brom", text="And then?", max_tokens=4)
        assert alice.wait(over, 30)["code"] == "overloaded"  # alice's fourth: over her quota
        waiting = 0
        for _ in range(1000):  # alice's first holds the one connection, her two others wait for it
            waiting = alice.call("stats")["engine"]["remote"]["waiting"]
            if waiting == 2 or handles["alice0"].finished:
                break
            time.sleep(0.005)
        assert waiting == 2 and not handles["alice0"].finished
        handles["bob"] = bob.request("say", npc="mira", text="Is there a room free?", max_tokens=12,
                                     temperature=0.0)  # bob is under his own quota
        order = _finish_order({"alice": alice, "bob": bob}, handles)
        assert all(h.reply["event"] == "done" and h.reply["used_fallback"] is False for h in handles.values())
        # In arrival order bob would be last; taking turns, he goes before alice's third request.
        assert order == ["alice0", "alice1", "bob", "alice2"], order


def test_a_clients_token_rate_holds_back_its_own_stream_not_another_clients(engine, keys):
    with dedicated(engine, keys, "--client-tokens-per-s", "2") as (_, alice, bob):
        bob.npc("mira", "You are Mira, the innkeeper. You answer in one short sentence.")
        slow = alice.request("say", npc="brom", text=LONG, max_tokens=16, temperature=0.0)
        while True:  # alice spends her burst of two tokens...
            alice.poll()
            if slow.chunks or slow.finished:
                break
            alice.wait_for_reply(1.0)
        quick = bob.request("say", npc="mira", text="Hello!", max_tokens=2, temperature=0.0)
        order = _finish_order({"alice": alice, "bob": bob}, {"alice": slow, "bob": quick})
        assert slow.reply.get("tokens", 0) > 8, slow.reply  # precondition: the rest takes her rate 3 s and more
        # ...so the rest of her line comes at two tokens a second, while bob's two come at once
        assert order == ["bob", "alice"], order
        assert quick.reply["used_fallback"] is False and slow.reply["used_fallback"] is False


def test_a_client_without_an_allowed_key_gets_nothing_from_the_engine(engine, keys, tmp_path):
    root, made = keys
    public, secret = zmq.auth.create_certificates(tmp_path, "stranger")
    with dedicated(engine, keys) as (sc, alice, _), \
            Client(sc.endpoint, curve_server_key=made["sidecar"][0], curve_client_cert=secret) as stranger:
        with pytest.raises(RequestFailed) as refused:
            stranger.call("say", npc="brom", text="Give me a sword.", max_tokens=4, timeout=5)
        assert refused.value.code == "unauthorized" and "Curve key" in str(refused.value)
        assert alice.call("say", npc="brom", text="Hello!", max_tokens=4, timeout=120)["event"] == "done"
