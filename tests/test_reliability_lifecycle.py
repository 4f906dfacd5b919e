"""No orphans, clean shutdown, clear failures at start."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgpack
import pytest
import zmq
from support import assert_one_line_failure, run_cli

from npcai import Client, Sidecar
from npcai import protocol as P

# --- clear failures at start -------------------------------------------------------------------

@pytest.mark.parametrize("flags, needle", [
    (["--n-ctx", "-5"], "--n-ctx -5: must be at least"),
    (["--n-ctx", "many"], "invalid int value"),
    (["--endpoint", "nonsense"], "bad --endpoint 'nonsense'"),
    (["--endpoint", "tcp://127.0.0.1:99999"], "bad --endpoint"),
    (["--max-queue", "0"], "--max-queue 0: must be at least 1"),
    (["--lease-ms", "-1"], "--lease-ms -1"),
    (["--npc-ctx", "4096", "--n-ctx", "2048"], "must not exceed --n-ctx"),
    (["--grammar-dir", "/no/such/dir"], "--grammar-dir"),
    (["--ready-file", "/no/such/dir/ready"], "its directory does not exist"),
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["--flash-attn", "sometimes"], "--flash-attn"),
    (["--budget-share", "0"], "bad --budget-share 0: must be from 0.01 to 1"),
    (["--budget-share", "-1"], "bad --budget-share -1: must be from 0.01 to 1"),
    (["--budget-share", "5"], "bad --budget-share 5: must be from 0.01 to 1"),
    (["--budget-tokens-per-s", "-5"], "bad --budget-tokens-per-s -5: must be >= 0"),
    (["--frame-ms", "-3"], "bad --frame-ms -3: must be between 0"),
    (["--budget-threads", "-2"], "bad --budget-threads -2: must be >= 0"),
    (["--model", "dialogue="], "bad --model 'dialogue=': the model name is empty"),
    (["--model", "decision=a.gguf", "--model", "decision=b.gguf"], "role decision is given twice"),
    (["--model", "a.gguf", "--model", "b.gguf"], "role decision is given twice"),  # + the one below: 3 bare names
    (["--model", "a.gguf", "--model", "dialogue=b.gguf"], "role dialogue is given twice"),
    (["--max-frame-bytes", str(1 << 62)], f"bad --max-frame-bytes {1 << 62}: must be at most {1 << 30}"),
    (["--client-tokens-per-s", "-1"], "bad --client-tokens-per-s -1.0: must be at least 0"),
    (["--client-tokens-per-s", "nan"], "bad --client-tokens-per-s nan: must be a finite number"),
    (["--client-tokens-per-s", "inf"], "bad --client-tokens-per-s inf: must be a finite number"),
    (["--threads", "100000"], "bad --threads 100000: must be at most 512"),  # it said READY, then died
    (["--budget-threads", "100000"], "bad --budget-threads 100000: must be at most 512"),
    (["--n-ctx", str(2**32 + 64)], f"bad --n-ctx {2**32 + 64}: must be at most {1 << 20}"),  # it wrapped to 64
    (["--nice", "-50"], "bad --nice -50: must be at least 0"),  # it was ignored
    (["--nice", "40"], "bad --nice 40: must be at most 19"),
])
def test_a_bad_flag_fails_in_one_line_before_any_model_loads(flags, needle):
    # A model that does not exist: the flag must be refused first, so this is never reached.
    assert_one_line_failure(run_cli("serve", *flags, "--model", "/no/such/model.gguf"), needle)


_NO_SUCH_CPU = os.cpu_count() or 1  # ids run from 0: this one is past the last


@pytest.mark.parametrize("cpus, needle", [
    (str(_NO_SUCH_CPU), f"no CPU {_NO_SUCH_CPU}"),
    ("-1", "no CPU -1"),
    ("5000000000", "no CPU 5000000000"),
    (f"0,{_NO_SUCH_CPU},5000000000", f"no CPU {_NO_SUCH_CPU}, 5000000000"),
    ("a,b", "give CPU ids like 2,3"),
    (",", "give CPU ids like 2,3"),
])
def test_a_cpu_id_the_machine_does_not_have_is_refused_in_one_line_naming_it(cpus, needle):
    assert_one_line_failure(run_cli("serve", f"--cpus={cpus}", "--model", "/no/such/model.gguf"), needle)


@pytest.mark.parametrize("endpoint", ["tcp://0.0.0.0:0", "tcp://*:0", "tcp://192.0.2.1:0"])
def test_a_non_loopback_endpoint_is_refused_before_binding(endpoint):
    # refused before the model (which precedes binding) is even looked for
    assert_one_line_failure(run_cli("serve", "--endpoint", endpoint, "--model", "/no/such/model.gguf"),
                            f"refusing to bind {endpoint}")


def test_allow_remote_needs_curve_keys():
    assert_one_line_failure(run_cli("serve", "--allow-remote", "--endpoint", "tcp://0.0.0.0:0"),
                            "--allow-remote needs --curve-secret-key and --curve-allow")


# --- clean shutdown ----------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM", pytest.param("SIGHUP", marks=pytest.mark.skipif(
    not hasattr(signal, "SIGHUP"), reason="no SIGHUP on Windows")), "shutdown"])  # SIGHUP: its terminal closed
def test_stopping_cancels_open_requests_exits_zero_and_removes_its_files(model_path, tmp_path, how):
    ready, conn = tmp_path / "ready", tmp_path / "conn.json"
    sc = Sidecar("--ready-file", str(ready), "--connection-file", str(conn))
    try:
        assert ready.read_text().strip() == sc.endpoint and json.loads(conn.read_text())["pid"] == sc.pid
        with sc.client() as c:
            c.hello()
            c.npc("brom", "You are Brom, the blacksmith.")
            line = c.request("say", npc="brom", text="Tell me a very long story.", max_tokens=400)
            while not line.chunks:
                c.wait(c.request("ping"))
            if how == "shutdown":
                assert c.call("shutdown")["event"] == "ok"
            else:
                sc.proc.send_signal(getattr(signal, how))
            assert c.wait(line, 10)["event"] == "cancelled"
        assert sc.proc.wait(10) == 0
        assert not ready.exists() and not conn.exists()
        assert list(tmp_path.iterdir()) == []  # no temporary files either
        assert "Traceback" not in "\n".join(sc.stderr_tail)
    finally:
        sc.close()


def _catches_sigterm(pid: int) -> bool:
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return bool(int(status["SigCgt"], 16) >> (signal.SIGTERM - 1) & 1)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="caught signals are read from /proc")
@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM", "SIGHUP"])
def test_a_signal_while_the_models_load_exits_zero_without_ready_or_files(model_path, tmp_path, how):
    """A game that quits while its sidecar is still starting: killed by the signal's default action (exit -15,
    -1, or 130 from KeyboardInterrupt), a launcher would report a crash. Loading cannot be interrupted; the
    signal is honoured as soon as it can be."""
    ready, conn = tmp_path / "ready", tmp_path / "conn.json"
    child = subprocess.Popen([sys.executable, "-m", "npcai", "serve", "--threads", "1", "--ready-file", str(ready),
                              "--connection-file", str(conn), "--model", str(model_path)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while not _catches_sigterm(child.pid):  # it has read its arguments: the models are still to load
            assert child.poll() is None
            time.sleep(0.005)
        assert not ready.exists()
        child.send_signal(getattr(signal, how))
        out, err = child.communicate(timeout=60)
        assert child.returncode == 0, err
        assert "READY" not in out and "Traceback" not in err
        assert list(tmp_path.iterdir()) == []
    finally:
        if child.poll() is None:
            child.kill()


@pytest.mark.parametrize("how", ["shutdown", "SIGTERM"])
def test_a_clean_exit_removes_its_ipc_socket_file(model_path, tmp_path, how):
    """libzmq leaves an ipc listener's file behind; a file left means a sidecar that did not exit cleanly."""
    path = tmp_path / "npcai.sock"
    sc = Sidecar("--endpoint", f"ipc://{path}")
    try:
        with sc.client() as c:
            c.hello()
            assert path.exists()
            if how == "shutdown":
                assert c.call("shutdown")["event"] == "ok"
            else:
                sc.proc.send_signal(signal.SIGTERM)
        assert sc.proc.wait(10) == 0
        assert not path.exists()
    finally:
        sc.close()


# --- no orphans: the lease ---------------------------------------------------------------------

def test_the_lease_holds_while_clients_ping_and_ends_the_sidecar_when_they_stop(model_path, tmp_path):
    ready = tmp_path / "ready"
    sc = Sidecar("--lease-ms", "600", "--ready-file", str(ready))
    try:
        time.sleep(1.0)  # the lease starts with the first hello
        assert sc.alive()
        with Client(sc.endpoint) as c:
            assert c.hello()["lease_ms"] == 600
            until = time.monotonic() + 2.0
            while time.monotonic() < until:  # a game loop: poll() pings often enough on its own
                c.poll()
                time.sleep(0.02)
            assert sc.alive()
            last_heard = c._last_sent
        code = sc.proc.wait(0.6 + 2.0)  # silent now: gone within the lease plus the 2 s the spec allows
        gone_after = time.monotonic() - last_heard
        assert code == 0 and gone_after >= 0.6 * 0.9
        assert not ready.exists()
        assert any("no client heard from for 600 ms" in line for line in sc.stderr_tail)
    finally:
        sc.close()


def test_only_a_client_with_the_token_holds_the_lease(model_path):
    with Sidecar("--lease-ms", "500", "--token", "s3cret") as sc:
        with Client(sc.endpoint, token="s3cret") as c:
            c.hello()
        with Client(sc.endpoint) as stranger:
            until = time.monotonic() + 3.0
            while sc.alive() and time.monotonic() < until:
                stranger.wait(stranger.request("ping"))  # answered "unauthorized": does not count
                time.sleep(0.05)
        assert sc.proc.wait(3) == 0


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # llama_cpp's, once per vocabulary entry
def test_a_stopped_server_leaves_no_threads_and_no_open_socket_behind(model_path, village):
    """In-process (as a tool or test would embed it): after shutdown nothing of it keeps running."""
    before = set(threading.enumerate())
    server, endpoint, loop = _serving_in_process()
    with Client(endpoint) as c:
        c.hello()
        c.npc("brom", village["npcs"]["brom"]["persona"])
        assert c.decide("Pay up?", schema={"type": "boolean"})["event"] == "done"  # the compile worker ran
        line = c.request("say", npc="brom", text="Tell me a long story.", max_tokens=300)
        server.stop()
        assert c.wait(line, 10)["event"] == "cancelled"
    loop.join(10)
    deadline = time.monotonic() + 5
    while set(threading.enumerate()) - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert set(threading.enumerate()) - before == set() and server._router.closed


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # llama_cpp's, once per vocabulary entry
def test_a_request_that_arrived_but_was_not_read_before_a_stop_ends_as_cancelled(model_path):
    """A stop between two reads of the socket: the request waiting there is open to its client too, and
    ends as in-flight ones do, not in the client's own timeout (CI saw that race under load). The client
    reads the "cancelled" sent before the connection went before it ends anything itself: it saw the
    disconnect first and ended the ping "unavailable" in 2 of 3 runs right after the test above."""
    server, endpoint = _server_in_process()
    with Client(endpoint) as c:
        line = c.request("ping")
        assert server._router.poll(5000, zmq.POLLIN)  # arrived, not read: the loop has not run yet
        server.stop()
        server.serve_forever()  # ends at once, before reading anything
        reply = c.wait(line, 5)
        assert reply["event"] == "cancelled", reply


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # llama_cpp's, once per vocabulary entry
def test_a_server_embedded_on_an_inproc_endpoint_serves():
    """inproc has no fds: the messages that tell a connection apart by its fd (ZMQ_SRCFD) are not asked it."""
    server, endpoint = _server_in_process(endpoint="inproc://npcai-embedded")
    loop = threading.Thread(target=server.serve_forever)
    loop.start()
    try:
        with Client(endpoint) as c:
            assert c.hello()["event"] == "ok" and c.call("ping")["event"] == "ok"
    finally:
        server.stop()
        loop.join(10)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # llama_cpp's, once per vocabulary entry
def test_every_request_that_arrived_but_was_not_read_before_a_stop_ends_as_cancelled_not_only_the_first_ones():
    """Many requests waiting at a stop (a game that pipelines): each ends as cancelled, however many; only
    the first 256 did. In-process (inproc): a message sent has arrived."""
    server, endpoint = _server_in_process(endpoint="inproc://npcai-unread-at-stop")
    raw = zmq.Context.instance().socket(zmq.DEALER)
    raw.linger = 0
    raw.connect(endpoint)
    try:
        for rid in range(600):
            raw.send(msgpack.packb({"v": 1, "id": rid, "op": "ping"}))
        server.stop()
        server.serve_forever()  # ends at once, before reading anything
        endings = {}
        while raw.poll(2000):
            reply = msgpack.unpackb(raw.recv())
            endings[reply["id"]] = reply["event"]
    finally:
        raw.close()
    assert endings == {rid: "cancelled" for rid in range(600)}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # llama_cpp's, once per vocabulary entry
def test_while_serving_another_thread_running_python_keeps_the_gil_from_the_socket_thread_half_a_millisecond_at_most():
    """CPython lets a thread that runs Python keep the GIL 5 ms from one that wants it, and the vocabulary
    scan after a model loads (or the engine's bookkeeping) then held every reply 5 ms (docs/PERFORMANCE.md).
    Serving sets 0.5 ms, and an embedding process gets its own setting back when the server stops."""
    before = sys.getswitchinterval()
    server, endpoint, loop = _serving_in_process()
    try:
        with Client(endpoint) as c:
            c.hello()
            serving = sys.getswitchinterval()
    finally:
        server.stop()
        loop.join(10)
    assert serving <= 0.0005
    assert sys.getswitchinterval() == before


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # llama_cpp's, once per vocabulary entry
def test_an_answer_the_engine_ends_after_its_deadline_is_never_sent_the_marked_fallback_is(village):
    """The engine's done for a say reaches the socket thread after the say's deadline: the server drops it and
    sends the marked fallback, with the text already streamed, so no answer is ever late. This test is the
    socket thread, taking its loop's steps in order (read, send the engine's replies, expire deadlines); the
    say's deadline_ms is 0, so it has passed before the engine starts, and the engine's done is certainly late."""
    with _stepped_by_hand(village) as (server, game):
        game.send(msgpack.packb({"v": 1, "id": 2, "op": "say", "npc": "brom", "text": "Hello there.",
                                 "max_tokens": 4, "deadline_ms": 0, "fallback": "Hm?"}))
        _admit(server)
        engines = _engine_ends(server, 2)
        assert engines["event"] == P.DONE and not engines.get("timed_out")  # the engine's own answer, in full
        server._send_replies()
        server._expire_deadlines()
        replies = _replies_until_the_end(game)
    done = replies[-1]
    assert done["event"] == P.DONE and done["timed_out"] and done["used_fallback"] and done["value"] == "Hm?"
    assert done["text"] == "".join(r["text"] for r in replies if r["event"] == P.TOKEN)


def test_a_done_made_up_at_the_deadline_counts_the_tokens_already_streamed_whatever_the_op(village):
    """A chain or decide answered by the socket thread at its deadline carries ``tokens`` like a say's: the
    chunks its say steps streamed (a decide streams none). Both lacked the field."""
    with _stepped_by_hand(village) as (server, game):
        steps = [{"op": "say", "as": "line", "npc": "brom", "text": "Hello there.", "max_tokens": 4}]
        game.send(msgpack.packb({"v": 1, "id": 2, "op": "chain", "steps": steps, "deadline_ms": 0}))
        _admit(server)
        _engine_ends(server, 2)  # late: dropped for the marked fallback
        server._send_replies()
        server._expire_deadlines()
        chain = _replies_until_the_end(game)
        game.send(msgpack.packb({"v": 1, "id": 3, "op": "decide", "situation": "Run?", "choices": ["yes", "no"],
                                 "deadline_ms": 0}))
        _admit(server)
        server._expire_deadlines()
        decide = _replies_until_the_end(game)
    assert chain[-1]["timed_out"] and chain[-1]["tokens"] == sum(r["event"] == P.TOKEN for r in chain)
    assert decide[-1]["timed_out"] and decide[-1]["tokens"] == 0


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # llama_cpp's, once per vocabulary entry
@pytest.mark.parametrize("op", ["npc", "load"])
def test_an_npc_or_load_the_engine_took_before_its_deadline_ends_ok_and_one_it_had_not_changes_nothing(village, op):
    """An ``npc`` or ``load`` takes effect when the engine takes it. Its deadline passing after that gave the
    timed-out ``done`` although the NPC was defined or replaced, and one still queued at its deadline could be
    taken all the same: the game could not tell what happened. Now the first ends ``ok`` (it took effect) and the
    second ends timed out and changes nothing (PROTOCOL.md, Deadlines). The engine is held for the second."""
    from npcai.sidecar.npc import Npc

    def ask(rid: int, persona: str) -> dict:
        if op == "npc":
            return {"v": 1, "id": rid, "op": "npc", "npc": persona.split()[2].strip(","), "persona": persona,
                    "deadline_ms": 0}
        return {"v": 1, "id": rid, "op": "load", "npc": "brom", "state": Npc("x", persona).save(), "deadline_ms": 0}

    with _stepped_by_hand(village) as (server, game):
        engine = server.engine
        game.send(msgpack.packb(ask(2, "You are Sven, a smith.")))
        _admit(server)
        while engine.taken < engine.submitted:  # taken: the NPC was defined or replaced
            time.sleep(0.001)
        server._expire_deadlines()
        taken = _the_end_heard(server, game)
        after_taken = _persona(server, game, "Sven" if op == "npc" else "brom", 3)
        held = threading.Event()
        engine.call_soon(held.wait)  # the engine takes nothing until the deadline has passed
        game.send(msgpack.packb(ask(4, "You are Dana, a guard.")))
        _admit(server)
        server._expire_deadlines()
        held.set()
        late = _the_end_heard(server, game)
        while engine.taken < engine.submitted:
            time.sleep(0.001)
        after_late = _persona(server, game, "Dana" if op == "npc" else "brom", 5)
    assert taken["event"] == P.OK and not taken.get("timed_out")
    assert after_taken == "You are Sven, a smith."
    assert late["event"] == P.DONE and late["timed_out"] and late["used_fallback"]
    assert after_late == (None if op == "npc" else "You are Sven, a smith.")  # as it was


def _the_end_heard(server, game) -> dict:
    """Send the engine's replies, as the socket thread does, until the game hears a reply that ends a request."""
    until = time.monotonic() + 60
    while time.monotonic() < until:
        while game.poll(0):
            reply = msgpack.unpackb(game.recv())
            if reply["event"] in P.TERMINAL_EVENTS:
                return reply
        if server._outbox.pull.poll(50):
            server._outbox.drain_signals()
        server._send_replies()
    raise AssertionError("no end heard for a minute")


def _persona(server, game, npc: str, rid: int) -> str | None:
    """The persona ``npc`` has now, by ``save`` (None: no such NPC)."""
    game.send(msgpack.packb({"v": 1, "id": rid, "op": "save", "npc": npc}))
    _admit(server)
    _engine_ends(server, rid)
    server._send_replies()
    reply = _replies_until_the_end(game)[-1]
    return msgpack.unpackb(reply["state"])["persona"] if reply["event"] == P.OK else None


@contextlib.contextmanager
def _stepped_by_hand(village):
    """An in-process server whose socket thread is the test, taking its loop's steps by hand, its engine
    running, and a game's socket connected to it that has defined Brom: (server, game socket)."""
    server, endpoint = _server_in_process()
    engine = threading.Thread(target=server._run_engine, daemon=True)
    engine.start()
    game = zmq.Context.instance().socket(zmq.DEALER)
    game.setsockopt(zmq.LINGER, 0)
    game.connect(endpoint)
    try:
        game.send(msgpack.packb({"v": 1, "id": 1, "op": "npc", "npc": "brom",
                                 "persona": village["npcs"]["brom"]["persona"]}))
        _admit(server)
        _engine_ends(server, 1)
        server._send_replies()
        assert _replies_until_the_end(game)[-1]["event"] == P.OK
        yield server, game
    finally:
        game.close()
        server.stop()
        server._shutdown(engine)


def _admit(server) -> None:
    """The socket thread's read: wait for a request's frame, then admit it."""
    assert server._router.poll(10_000), "no request arrived"
    server._read_requests()


def _engine_ends(server, rid: int) -> dict:
    """Wait on the outbox's wake-ups, as the socket thread does, until the engine's last reply to ``rid`` is queued
    (not yet sent); that reply."""
    while True:
        for req, reply in server._outbox.replies:
            if req.id == rid and reply["event"] in P.TERMINAL_EVENTS:
                return reply
        assert server._outbox.pull.poll(60_000), "the engine said nothing for a minute"
        server._outbox.drain_signals()


def _replies_until_the_end(game) -> list[dict]:
    """What the game receives, up to and with the first reply that ends a request."""
    replies = []
    while not replies or replies[-1]["event"] not in P.TERMINAL_EVENTS:
        assert game.poll(10_000), f"no end after {replies}"
        replies.append(msgpack.unpackb(game.recv()))
    return replies


def _server_in_process(**settings_fields):
    """A server on the default model, embedded as a tool or test would, bound but not serving: (server, endpoint)."""
    from npcai.cli import model_roles
    from npcai.sidecar.engine import Engine
    from npcai.sidecar.server import Server
    from npcai.sidecar.settings import Settings

    settings = Settings(**settings_fields)
    roles = model_roles([])
    server = Server(settings, lambda emit: Engine(settings, roles, emit))
    return server, server.bind()


def _serving_in_process():
    """A server on the default model, embedded as a tool or test would: (server, endpoint, its loop's thread)."""
    server, endpoint = _server_in_process()
    loop = threading.Thread(target=server.serve_forever)
    loop.start()
    return server, endpoint, loop
