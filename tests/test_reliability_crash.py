"""Crash and restart: when the sidecar dies or hangs, every pending request still ends in time.

The client ends what the sidecar cannot: at a request's deadline (with its fallback), or at
once when the sidecar is gone (fallback if it had a deadline, else ``unavailable``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import msgpack
import pytest
import zmq
from support import ROOT

from npcai import Client, NpcaiError, RequestFailed, Sidecar

PERSONA = "You are Brom, the gruff village blacksmith. You answer in one or two sentences."


def wait_all(client: Client, handles, limit: float) -> dict[int, float]:
    """Poll until every handle ended (bounded); returns when each ended, in seconds from now."""
    start = time.monotonic()
    ended: dict[int, float] = {}
    while len(ended) < len(handles) and time.monotonic() - start < limit:
        client.poll()
        for h in handles:
            if h.finished and h.id not in ended:
                ended[h.id] = time.monotonic() - start
        time.sleep(0.002)
    return ended


def stream_started(client: Client, handle) -> None:
    deadline = time.monotonic() + 30
    while not handle.chunks and time.monotonic() < deadline:
        client.poll()
        time.sleep(0.002)
    assert handle.chunks, "the line never started"


@pytest.mark.parametrize("notice", ["connection", "process handle"])
def test_killing_the_sidecar_mid_say_ends_every_pending_request_in_time(model_path, notice):
    sc = Sidecar()
    try:
        c = sc.client() if notice == "process handle" else Client(sc.endpoint)
        with c:
            c.hello()
            c.npc("brom", PERSONA)
            line = c.request("say", npc="brom", text="Tell me about every sword you made.", max_tokens=400)
            queued = c.request("say", npc="brom", text="And the axes?", max_tokens=50)
            urgent = c.request("decide", situation="Describe the thief.",  # 300 model steps: still running
                               schema={"type": "string", "minLength": 300}, max_tokens=300, deadline_ms=5000,
                               fallback="shout")
            stream_started(c, line)
            sc.proc.send_signal(signal.SIGKILL)
            ended = wait_all(c, [line, queued, urgent], limit=5)
            assert len(ended) == 3
            assert line.reply["event"] == queued.reply["event"] == "error"
            assert line.reply["code"] == queued.reply["code"] == "unavailable" and line.reply["local"]
            assert urgent.reply["event"] == "done" and urgent.reply["value"] == "shout"
            assert urgent.reply["used_fallback"] and urgent.reply["finish_reason"] == "unavailable"
            assert max(ended.values()) < 2.0  # noticed at once, not at some timeout
            assert not c.alive()
            after = c.request("ping")  # a request made after the death ends at once too
            assert after.finished and after.reply["code"] == "unavailable"
            with pytest.raises(RequestFailed, match="unavailable"):
                c.call("stats")
    finally:
        sc.close()


def test_a_line_the_client_ends_at_its_deadline_says_what_it_had_streamed(model_path):
    """A done made up at the deadline carries the chunks already streamed, as the sidecar's own does."""
    with Sidecar() as sc, Client(sc.endpoint, heartbeat_ms=0) as c:
        c.npc("brom", "You are Brom, the blacksmith.")
        line = c.request("say", npc="brom", text="Tell me a long story.", max_tokens=200, soft_max_tokens=200,
                         deadline_ms=3000, fallback="Hm.")
        while len(line.chunks) < 2 and not line.finished:
            c.poll()
        os.kill(sc.pid, signal.SIGSTOP)  # hung mid-line: the client ends it at its deadline
        try:
            reply = c.wait(line, timeout=10)
        finally:
            os.kill(sc.pid, signal.SIGCONT)
        assert reply["local"] and reply["timed_out"] and reply["text"] == "".join(line.chunks)
        assert reply["tokens"] == len(line.chunks) >= 2


def test_a_request_with_a_deadline_ends_on_time_when_the_sidecar_hangs_and_its_late_answer_is_dropped(model_path):
    with Sidecar() as sc, Client(sc.endpoint, heartbeat_ms=0) as c:
        c.hello()
        os.kill(sc.pid, signal.SIGSTOP)  # hung: the connection stays up, nothing answers
        try:
            sent = time.monotonic()
            decision = c.request("decide", situation="An arrow flies at you.", choices=["duck", "block"],
                                 deadline_ms=300, fallback="duck")
            reply = c.wait(decision, timeout=10)
            took = time.monotonic() - sent
        finally:
            os.kill(sc.pid, signal.SIGCONT)
        assert reply["event"] == "done" and reply["timed_out"] and reply["used_fallback"] and reply["local"]
        assert reply["value"] == "duck" and reply["finish_reason"] == "deadline"
        assert 0.3 <= took < 0.3 + 0.5
        # The sidecar wakes and answers too late; the client drops that answer. Replies come in
        # order, so once stats shows the decision ended, its late reply has been dispatched.
        deadline = time.monotonic() + 10
        while c.call("stats")["ops"].get("decide", {}).get("count") != 1 or c.call("stats")["in_flight"]:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert decision.reply is reply and [m for m in c.stray if m.get("id") == decision.id] == []


def test_a_hung_sidecar_is_noticed_by_heartbeat_and_requests_without_deadline_end(model_path):
    with Sidecar() as sc, Client(sc.endpoint, heartbeat_ms=200) as c:
        c.hello()
        os.kill(sc.pid, signal.SIGSTOP)
        try:
            handle = c.request("stats")
            start = time.monotonic()
            reply = c.wait(handle, timeout=10)
            took = time.monotonic() - start
        finally:
            os.kill(sc.pid, signal.SIGCONT)
        assert reply["event"] == "error" and reply["code"] == "unavailable"
        assert took < 3.0  # heartbeat timeout is 3 intervals (0.6 s); generous bound for a busy machine


def test_a_relaunched_sidecar_gets_npcs_back_from_saved_state(model_path):
    sc = Sidecar()
    try:
        with sc.client() as c:
            c.hello()
            c.npc("brom", PERSONA, seed=3)
            c.say("brom", "My name is Aldric.", max_tokens=8)
            saved = c.call("save", npc="brom")["state"]  # what the game keeps in its save file
            line = c.request("say", npc="brom", text="Tell me a long story.", max_tokens=300)
            stream_started(c, line)
            sc.kill()
            assert c.wait(line, timeout=5)["code"] == "unavailable"
        assert sc.restart() and sc.alive()  # a fresh process, with the same flags
        with sc.client() as c:
            c.hello()
            with pytest.raises(RequestFailed, match="unknown_npc"):
                c.say("brom", "Hello?")
            assert c.call("load", npc="brom", state=saved)["messages"] == 2
            assert msgpack.unpackb(c.call("save", npc="brom")["state"]) == msgpack.unpackb(saved)
            assert c.say("brom", "What is my name?", max_tokens=12)["event"] == "done"
    finally:
        sc.close()


# `npcai serve` with a bug injected into the engine's loop: every model step raises.
_FAULTY_SERVE = """
import sys
from npcai.model import runtime

def broken_step(self, lanes):
    raise RuntimeError("a fault injected into the model step")

runtime.Runtime.step = broken_step
from npcai.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_bug_in_the_engine_loop_answers_every_request_logs_once_and_exits_non_zero(model_path):
    """No request may wait forever on an engine that died: open ones and those that arrive meanwhile are
    answered (internal, or the fallback), the traceback is logged once, and the exit code tells a
    launcher to restart the sidecar."""
    proc = subprocess.Popen([sys.executable, "-c", _FAULTY_SERVE, "serve", "--model", str(model_path),
                             "--parent-pid", str(os.getpid())],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        endpoint = proc.stdout.readline().strip().removeprefix("NPCAI READY ")
        with Client(endpoint) as c:
            c.hello()
            npc = c.request("npc", npc="brom", persona=PERSONA)  # its prompt is the first model step
            decide = c.request("decide", situation="Pay the toll?", choices=["pay", "refuse"], fallback="refuse")
            pending = [c.wait(h, 10) for h in (npc, decide)]
            later = [c.request("say", npc="brom", text="Hello?", fallback="..."), c.request("forget", npc="brom")]
            answered_later = [c.wait(h, 10) for h in later]
        code = proc.wait(10)
        stderr = proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()
    assert [(r["event"], r.get("code"), r.get("local")) for r in (pending[0], answered_later[1])] == \
        [("error", "internal", None)] * 2
    for reply, fallback in ((pending[1], "refuse"), (answered_later[0], "...")):
        assert (reply["event"], reply["value"], reply["used_fallback"], reply["finish_reason"], reply.get("local")) \
            == ("done", fallback, True, "error", None)
    assert code == 1, stderr
    assert stderr.count("Traceback") == 1 and "a fault injected into the model step" in stderr, stderr


def _vector(name: str) -> dict:
    """A message of engine_bridges/conformance/vectors.tsv, decoded."""
    for line in (ROOT / "engine_bridges" / "conformance" / "vectors.tsv").read_text().splitlines():
        if line.startswith(name + "\t"):
            return msgpack.unpackb(bytes.fromhex(line.split("\t")[1]))
    raise AssertionError(f"no vector {name}")


def test_when_the_sidecar_is_gone_requests_end_locally_as_the_conformance_vectors_say():
    """One code for "the sidecar is gone" in every client: `unavailable` (docs/PROTOCOL.md, "Local codes")."""
    router = zmq.Context.instance().socket(zmq.ROUTER)  # a stand-in sidecar that reads, then goes away
    port = router.bind_to_random_port("tcp://127.0.0.1")
    with Client(f"tcp://127.0.0.1:{port}") as c:
        plain = c.request("forget", npc="brom")
        with_deadline = c.request("decide", situation="Run?", choices=["flee", "fight"], fallback="flee",
                                  deadline_ms=60_000)
        assert router.poll(5000) and router.recv_multipart() and router.recv_multipart()
        router.close(linger=0)
        replies = [c.wait(plain, 10), c.wait(with_deadline, 10)]
    error, done = _vector("message.reply.local.unavailable"), _vector("message.reply.local.fallback")
    assert {k: replies[0][k] for k in ("event", "code", "local")} == {k: error[k] for k in ("event", "code", "local")}
    keys = ("event", "value", "timed_out", "used_fallback", "finish_reason", "local")
    assert {k: replies[1][k] for k in keys} == {k: done[k] for k in keys}


@pytest.mark.parametrize("use", ["hello", "request", "poll", "wait_for_reply", "send_raw"])
@pytest.mark.parametrize("closed_by", ["close()", "its with block"])
def test_a_closed_client_refuses_every_call_with_an_npcai_error_and_keeps_nothing_pending(use, closed_by):
    if closed_by == "close()":
        c = Client("tcp://127.0.0.1:9")  # never reached: no call gets as far as the socket
        c.close()
    else:
        with Client("tcp://127.0.0.1:9") as c:
            pass
    calls = {"hello": lambda: c.hello(), "request": lambda: c.request("ping"), "poll": lambda: c.poll(),
             "wait_for_reply": lambda: c.wait_for_reply(0.01), "send_raw": lambda: c.send_raw(b"\x80")}
    with pytest.raises(RequestFailed) as err:
        calls[use]()
    assert err.value.code == "unavailable" and err.value.message == "unavailable: the client is closed"
    assert c._pending == {}
    c.close()  # closing again is harmless


@pytest.mark.parametrize("endpoint", ["garbage", "tcp://127.0.0.1", "http://127.0.0.1:5555", ""])
def test_a_client_for_an_endpoint_that_is_not_one_is_refused_with_an_npcai_error(endpoint):
    with pytest.raises(NpcaiError) as err:
        Client(endpoint)
    assert err.value.message.startswith(f"bad endpoint {endpoint!r}: "), err.value.message
