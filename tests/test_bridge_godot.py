"""The Godot 4 bridge (engine_bridges/godot).

- Every GDScript file parses (gdparse) and lints clean (gdlint, default rules) with gdtoolkit.
- tests/test_codec.gd names every vector of vectors.tsv, and names no vector the file lacks,
  so the GDScript conformance test and the vectors cannot drift apart.
- Where a headless Chromium and the official Godot 4 web export template are at hand
  (engine_bridges/godot/tests/web_runner.py explains), the GDScript suites run inside that
  real Godot engine: codec and framing vectors, the client against a scripted sidecar, the
  example scene, and the client against this session's real sidecar through a
  WebSocket-to-TCP relay. Without them that test is skipped (set NPCAI_REQUIRE_GODOT_WEB=1
  to make it fail instead).

No desktop Godot 4 runs here: npc_ai_tcp_transport.gd (StreamPeerTCP), npc_ai_sidecar_launcher.gd
(OS.create_process) and plugin.gd (EditorPlugin) are parsed, linted and (but for the plugin)
compiled by the engine, not executed.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import msgpack_suite
import pytest

pytestmark = pytest.mark.bridge

ROOT = Path(__file__).resolve().parent.parent
GODOT = ROOT / "engine_bridges" / "godot"
VECTORS = ROOT / "engine_bridges" / "conformance" / "vectors.tsv"
CODEC_TEST = GODOT / "tests" / "test_codec.gd"
VECTOR_PREFIXES = ("msgpack.", "message.", "zmtp.")


def gd_files() -> list[Path]:
    return sorted(GODOT.rglob("*.gd"))


def vector_names() -> list[str]:
    lines = VECTORS.read_text(encoding="utf-8").splitlines()
    return [line.split("\t", 1)[0] for line in lines if line and not line.startswith("#")]


def _gdtoolkit() -> None:
    """Skip without gdtoolkit, except in CI (env CI set), where it is a failure."""
    if importlib.util.find_spec("gdtoolkit") is None:
        message = "gdtoolkit is not installed (pip install -e '.[test]')"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def _run(module: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=GODOT,
                          capture_output=True, text=True, timeout=300)


def test_the_bridge_has_its_files():
    addon = GODOT / "addons" / "npcai"
    for name in ("plugin.cfg", "plugin.gd", "npc_ai_node.gd", "npc_ai_client.gd", "npc_ai_request.gd",
                 "npc_ai_msg_pack.gd", "npc_ai_zmtp.gd", "npc_ai_transport.gd", "npc_ai_tcp_transport.gd",
                 "npc_ai_sidecar_launcher.gd"):
        assert (addon / name).is_file(), name
    for path in ("example/village.gd", "example/village.tscn", "tests/test_codec.gd", "README.md"):
        assert (GODOT / path).is_file(), path
    assert 'script="plugin.gd"' in (addon / "plugin.cfg").read_text()


def _snake_case(name: str) -> str:
    """Godot's String.to_snake_case for PascalCase names: NpcAiMsgPack -> npc_ai_msg_pack."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


def test_every_class_name_is_its_file_name():
    """Godot's convention, one rule for every script: a file declaring ``class_name X`` is named
    X.to_snake_case() + ".gd" (NpcAiClient -> npc_ai_client.gd); every preload names a file that exists."""
    named = 0
    for path in gd_files():
        source = path.read_text(encoding="utf-8")
        match = re.search(r"^class_name\s+(\w+)", source, re.M)
        if match:
            named += 1
            assert path.stem == _snake_case(match.group(1)), f"{path.name} declares class_name {match.group(1)}"
        for target in re.findall(r'(?:preload\(|extends )"([^"]+\.gd)"', source):
            resolved = GODOT / target.removeprefix("res://") if target.startswith("res://") else path.parent / target
            assert resolved.is_file(), f"{path.name} refers to {target}, which does not exist"
    assert named == 8
    autoload = re.search(r'NpcAi="\*res://([^"]+)"', (GODOT / "project.godot").read_text()).group(1)
    assert (GODOT / autoload).is_file(), autoload


def test_gdscript_parses():
    _gdtoolkit()
    files = gd_files()
    assert len(files) >= 10
    result = _run("gdtoolkit.parser", *files)
    assert result.returncode == 0, result.stdout + result.stderr


def test_gdscript_lints_clean():
    _gdtoolkit()
    result = _run("gdtoolkit.linter", *gd_files())
    assert result.returncode == 0, result.stdout + result.stderr


def test_codec_test_covers_every_vector():
    source = CODEC_TEST.read_text(encoding="utf-8")
    names = vector_names()
    assert len(names) > 60 and all(n.startswith(VECTOR_PREFIXES) for n in names)
    missing = [n for n in names if f'"{n}"' not in source]
    assert not missing, f"tests/test_codec.gd does not check these vectors: {missing}"
    quoted = set(re.findall(r'"((?:msgpack|message|zmtp)\.[^"\s%]+)"', source))
    unknown = sorted(quoted - set(names))
    assert not unknown, f"tests/test_codec.gd names vectors that vectors.tsv lacks: {unknown}"


def _web_runner():
    spec = importlib.util.spec_from_file_location("npcai_godot_web_runner", GODOT / "tests" / "web_runner.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def _web_unavailable(runner) -> str | None:
    if runner.chromium() is None:
        return "no headless Chromium (apt-get install chromium-headless-shell)"
    if runner.runtime_dir() is None and shutil.which("npm") and os.environ.get("NPCAI_GODOT_WEB_FETCH", "1") != "0":
        try:
            runner.fetch()
        except (subprocess.SubprocessError, OSError, SystemExit) as exc:
            return f"could not fetch the Godot web runtime ({runner.NPM_PACKAGE}): {exc}"
    if runner.runtime_dir() is None:
        return f"no Godot web runtime (python {GODOT / 'tests' / 'web_runner.py'} --fetch)"
    return None


def test_gdscript_suites_run_in_godot(request, tmp_path):
    """test_codec.gd, test_client.gd, the example scene, test_sidecar.gd, the launcher's bundle
    search, and the public msgpack vectors (test_msgpack_suite.gd), in Godot 4 (web)."""
    runner = _web_runner()
    reason = _web_unavailable(runner)
    if reason:
        if os.environ.get("NPCAI_REQUIRE_GODOT_WEB"):
            pytest.fail(reason)
        pytest.skip(reason)
    forms = msgpack_suite.forms(msgpack_suite.load_groups())
    # GDScript holds every float as a double: a float32 form's value is written back as float64.
    suite = msgpack_suite.write_tsv(tmp_path / "suite.tsv", forms, keep_float32=False)
    spoiled, spoiled_names = msgpack_suite.corrupt(suite, tmp_path / "spoiled.tsv")
    extra = {"conformance/msgpack_suite.tsv": suite.read_bytes(),
             "conformance/msgpack_spoiled.tsv": spoiled.read_bytes()}
    sidecar = request.getfixturevalue("sidecar")  # only once the engine can run
    host, _, port = sidecar.endpoint.removeprefix("tcp://").rpartition(":")
    relay = runner.WsRelay(host, int(port))
    try:
        args = ["--headless", "--", "--vectors", "res://conformance/vectors.tsv", "--sidecar", relay.url,
                "--msgpack-suite", "res://conformance/msgpack_suite.tsv",
                "--msgpack-suite-spoiled", "res://conformance/msgpack_spoiled.tsv"]
        code, lines = runner.run(args, timeout=240, echo=False, extra_files=extra)
    finally:
        relay.close()
    output = "\n".join(lines)
    failures = [line for line in lines if line.startswith(("FAIL", "SCRIPT ERROR", "ENGINE FAILURE"))]
    assert code == 0 and not failures, output[-6000:]
    assert "ALL SUITES: 0 failed" in lines, output[-6000:]
    assert re.search(r"^Godot Engine v4\.", output, re.M), output[:2000]
    counts = [int(m) for m in re.findall(r"^(\d+) passed, 0 failed$", output, re.M)]
    assert len(counts) == 4 and min(counts) > 5, counts  # codec, client, sidecar, scripts/example
    covered = {line[len("ok   covered "):] for line in lines if line.startswith("ok   covered ")}
    assert covered == set(vector_names())
    ok_lines = [line for line in lines if line.startswith("ok suite ")]
    msgpack_suite.assert_report("\n".join(ok_lines + [line for line in lines if line.startswith("FAIL suite ")]),
                                forms, "GDScript codec")
    caught = {line.split()[2].rstrip(":") for line in lines if line.startswith("caught suite ")}
    assert caught == set(spoiled_names), caught
    bundle = [line for line in lines if line.startswith("ok   bundle: ")]
    assert len(bundle) == 8, bundle
    token = [line for line in lines if line.startswith("ok   token: ")]
    assert len(token) == 3, token  # the launcher's token: in the child's environment, not its arguments
