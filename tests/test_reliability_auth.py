"""Closed by default: loopback only, Curve for anything else, a token for local clients."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import time

import msgpack
import pytest
import zmq
import zmq.auth

from npcai import Client, RequestFailed, Sidecar


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """Certificates as zmq.auth.create_certificates writes them; only 'friend' is allowed in."""
    root = tmp_path_factory.mktemp("curve")
    made = {}
    for name, folder in (("sidecar", "sidecar"), ("friend", "allowed"), ("stranger", "others")):
        (root / folder).mkdir(exist_ok=True)
        public, secret = zmq.auth.create_certificates(root / folder, name)
        made[name] = (public, secret)
    return root, made


@pytest.fixture(scope="module")
def curve_sidecar(model_path, keys):
    root, made = keys
    with Sidecar("--curve-secret-key", str(made["sidecar"][1]), "--curve-allow", str(root / "allowed")) as sc:
        yield sc


def test_a_client_with_an_allowed_curve_key_is_served(curve_sidecar, keys):
    _, made = keys
    with Client(curve_sidecar.endpoint, curve_server_key=made["sidecar"][0],
                curve_client_cert=made["friend"][1]) as c:
        assert c.hello()["protocol"] == 1
        assert c.call("ping")["event"] == "ok"


def test_a_curve_client_that_goes_away_has_its_running_request_dropped(curve_sidecar, keys):
    """The connection a client went away on is known through Curve too (no reply is sent while a decision
    runs): the model stops working on its request."""
    _, made = keys
    curve = {"curve_server_key": made["sidecar"][0], "curve_client_cert": made["friend"][1]}
    with Client(curve_sidecar.endpoint, **curve) as c:
        c.hello()
        expired = c.call("stats")["engine"]["expired"]
        leaver = Client(curve_sidecar.endpoint, **curve)
        leaver.hello()
        leaver.request("decide", situation="Speak.", schema={"type": "string", "minLength": 300}, max_tokens=300)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # its decision has arrived and runs (not another test's leftovers)
            stats = c.call("stats")
            if stats["in_flight"] and stats["engine"]["running"]:
                break
            time.sleep(0.01)
        leaver.close()
        stats = c.call("stats")
        while stats["in_flight"] and time.monotonic() < deadline + 30:
            time.sleep(0.02)
            stats = c.call("stats")
        assert stats["in_flight"] == 0 and stats["engine"]["expired"] == expired + 1


def _silent(endpoint: str, configure) -> bool:
    """Does a raw DEALER, set up by ``configure``, get nothing back for a valid hello (bounded wait)?"""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    try:
        configure(sock)
        sock.connect(endpoint)
        sock.send(msgpack.packb({"v": 1, "id": 1, "op": "hello"}))
        return sock.poll(1500) == 0
    finally:
        sock.close()


def test_a_client_with_another_key_or_no_curve_gets_nothing(curve_sidecar, keys):
    _, made = keys
    server_public = zmq.auth.load_certificate(made["sidecar"][0])[0]

    def stranger(sock):
        sock.curve_publickey, sock.curve_secretkey = zmq.auth.load_certificate(made["stranger"][1])
        sock.curve_serverkey = server_public

    assert _silent(curve_sidecar.endpoint, stranger)
    assert _silent(curve_sidecar.endpoint, lambda sock: None)  # plain NULL mechanism
    # the Python client says why, locally, instead of waiting forever
    with Client(curve_sidecar.endpoint, curve_server_key=made["sidecar"][0],
                curve_client_cert=made["stranger"][1]) as c:
        with pytest.raises(RequestFailed, match="unauthorized"):
            c.call("hello", timeout=10)
    assert curve_sidecar.alive()


def test_with_admin_keys_only_an_admin_may_shut_down_or_set_the_budget(model_path, tmp_path):
    """A dedicated server lets players' games in (--curve-allow); with --curve-admin, the sidecar-wide ops
    (shutdown, budget, frame reports) are the admins' alone, and players keep every other op."""
    made = {}
    for name, folder in (("sidecar", "sidecar"), ("player", "players"), ("admin", "admins")):
        (tmp_path / folder).mkdir()
        made[name] = zmq.auth.create_certificates(tmp_path / folder, name)
    with Sidecar("--curve-secret-key", str(made["sidecar"][1]), "--curve-allow", str(tmp_path / "players"),
                 "--curve-admin", str(tmp_path / "admins")) as sc:
        def client(who):
            return Client(sc.endpoint, curve_server_key=made["sidecar"][0], curve_client_cert=made[who][1])

        with client("player") as player:
            player.hello()
            assert player.call("ping")["event"] == "ok"
            assert player.decide("Rain.", choices=["stay", "go"])["event"] == "done"
            for op, fields in (("budget", {"share": 0.5}), ("frame", {"frame_ms": [16.0]}), ("shutdown", {})):
                with pytest.raises(RequestFailed, match="^unauthorized: only an admin"):
                    player.call(op, **fields)
        with client("admin") as admin:  # an admin is let in, and may do all
            admin.hello()
            assert admin.call("budget", share=0.5)["event"] == "ok"
            assert admin.call("shutdown")["event"] == "ok"
        assert sc.proc.wait(30) == 0


def test_curve_flags_with_a_bad_key_file_fail_in_one_line(keys, tmp_path):
    root, made = keys
    garbage = tmp_path / "garbage.key_secret"
    garbage.write_text("not a certificate")
    for flags, needle in (
            (["--curve-secret-key", str(made["sidecar"][0]), "--curve-allow", str(root / "allowed")],
             "give the .key_secret file"),
            (["--curve-secret-key", str(garbage), "--curve-allow", str(root / "allowed")], "--curve-secret-key"),
            (["--curve-secret-key", str(made["sidecar"][1]), "--curve-allow", str(tmp_path)], "no public certificates"),
    ):
        proc = subprocess.run([sys.executable, "-m", "npcai", "serve", *flags], capture_output=True, text=True,
                              timeout=120)
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and needle in lines[0], proc.stderr


def test_the_connection_file_is_private_and_its_token_is_required(model_path, tmp_path):
    conn = tmp_path / "npcai.json"
    with Sidecar("--connection-file", str(conn)) as sc:
        assert stat.S_IMODE(conn.stat().st_mode) == 0o600
        info = json.loads(conn.read_text())
        assert info["endpoint"] == sc.endpoint and info["pid"] == sc.pid and len(info["token"]) >= 32
        with Client(info["endpoint"]) as nobody:
            with pytest.raises(RequestFailed, match="unauthorized"):
                nobody.call("ping")
            with pytest.raises(RequestFailed, match="unauthorized"):
                nobody.call("hello", token="guess")
            with pytest.raises(RequestFailed, match="unauthorized"):
                nobody.call("stats")
        with Client(info["endpoint"], token=info["token"]) as c:
            assert c.hello()["event"] == "ok" and c.call("ping")["event"] == "ok"
        assert sc.token == info["token"]  # the launcher read it back
    assert not conn.exists()


def test_a_large_frame_from_a_client_without_the_token_is_refused_unread(model_path):
    """Decoding a megabyte of tiny maps holds the socket thread for most of a second (every client's deadlines
    with it): a client that has not said hello with the token gets ``unauthorized`` before its frame is read,
    whatever the frame holds. A hello, even with role descriptions, is far smaller."""
    with Sidecar("--token", "s3cret") as sc:
        ctx = zmq.Context.instance()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(sc.endpoint)
        try:
            not_msgpack = msgpack.packb({"v": 1, "id": 7, "op": "ping"}) + b"\xc1" * 200_000
            sock.send(not_msgpack)
            assert sock.poll(10_000)
            reply = msgpack.unpackb(sock.recv())
            assert (reply["id"], reply["code"]) == (7, "unauthorized"), reply
            sock.send(msgpack.packb({"v": 1, "id": 8, "op": "hello", "token": "s3cret",
                                     "role_info": {"dialogue": "x" * 20_000}}))
            assert sock.poll(10_000) and msgpack.unpackb(sock.recv())["event"] == "ok"
            sock.send(not_msgpack)  # now it is read, and refused for what it is
            assert sock.poll(10_000) and msgpack.unpackb(sock.recv())["code"] == "bad_request"
        finally:
            sock.close()


def test_a_client_whose_connection_dropped_reconnects_and_says_hello_again(model_path):
    with Sidecar("--token", "s3cret", "--max-frame-bytes", "4096") as sc, sc.client() as c:
        c.hello()
        pending = c.request("say", npc="nobody", text="x" * 9000)  # over 2 x 4096: the sidecar hangs up
        assert c.wait(pending, timeout=10)["code"] == "unavailable"
        deadline = time.monotonic() + 10
        while not c.alive():  # libzmq reconnects on its own
            assert time.monotonic() < deadline
            c.poll()
            time.sleep(0.01)
        assert c.call("ping")["event"] == "ok"  # authorized: the client sent its token again


def test_a_connected_client_stays_authorized_however_many_others_said_hello_and_left(model_path):
    """The table of clients that sent the token is bounded (4,096); clients that left are forgotten when
    their connection drops, so they never push out one that is still connected, however idle."""
    with Sidecar("--token", "s3cret") as sc, sc.client() as game:
        game.hello()
        ctx = zmq.Context.instance()
        for i in range(4200):
            sock = ctx.socket(zmq.DEALER)
            sock.linger = 0
            sock.connect(sc.endpoint)
            sock.send(msgpack.packb({"v": 1, "id": i, "op": "hello", "token": "s3cret"}))
            assert sock.poll(10_000) and msgpack.unpackb(sock.recv())["event"] == "ok"
            sock.close()
        assert game.call("ping")["event"] == "ok"


def test_a_sidecar_started_with_npcai_token_in_its_environment_requires_it_in_hello(model_path):
    """``$NPCAI_TOKEN`` is the token when ``--token`` is not given: the environment, unlike argv, is not in the
    process list for every user of the machine to read."""
    with Sidecar(env={"NPCAI_TOKEN": "s3cret-from-env"}) as sc:
        with Client(sc.endpoint) as nobody:
            with pytest.raises(RequestFailed, match="unauthorized"):
                nobody.call("ping")
            with pytest.raises(RequestFailed, match="unauthorized"):
                nobody.call("hello", token="guess")
        with Client(sc.endpoint, token="s3cret-from-env") as c:
            assert c.hello()["event"] == "ok" and c.call("ping")["event"] == "ok"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/cmdline")
def test_the_launcher_passes_a_token_through_the_environment_not_the_command_line(model_path):
    """Any local user can read /proc/PID/cmdline: ``Sidecar("--token", T)`` hands T to the child as
    ``$NPCAI_TOKEN`` instead, and its clients still say hello with it."""
    with Sidecar("--token", "s3cret-from-the-game") as sc:
        with open(f"/proc/{sc.pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        assert b"--token" not in argv and not any(b"s3cret" in arg for arg in argv), argv
        assert sc.token == "s3cret-from-the-game"
        with Client(sc.endpoint) as nobody, pytest.raises(RequestFailed, match="unauthorized"):
            nobody.call("ping")
        with sc.client() as c:
            assert c.hello()["event"] == "ok" and c.call("ping")["event"] == "ok"
