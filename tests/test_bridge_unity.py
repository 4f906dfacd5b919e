"""The Unity bridge (engine_bridges/unity): compiled with Mono's mcs and run with mono.

The C# core (Runtime/Core) and its in-house test runner (Tests/Core) are built into
engine_bridges/unity/build/; each test here runs one group of cases and checks that every
case it expects printed PASS. Without mcs/mono the tests skip, except under CI.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.bridge

ROOT = Path(__file__).resolve().parent.parent
UNITY = ROOT / "engine_bridges" / "unity"
BUILD = UNITY / "build"
VECTORS = ROOT / "engine_bridges" / "conformance" / "vectors.tsv"

UNIT_CASES = [
    "codec.msgpack_vectors", "codec.message_vectors", "codec.request_encoder_vectors", "codec.reply_vectors",
    "codec.reply_ok_allocates_nothing", "codec.rejects_garbage", "codec.rejects_deep_nesting",
    "codec.rejects_oversized_containers", "codec.fuzz_only_msgpack_exceptions",
    "zmtp.greeting_vector", "zmtp.ready_vectors", "zmtp.frame_vectors", "zmtp.dealer_handshake_in_pieces",
    "zmtp.dealer_rejects_non_router", "zmtp.dealer_connect_refused", "zmtp.parse_endpoint",
    "client.unconnected_requests_end_on_poll", "client.scripted_replies", "client.poll_is_bounded",
    "client.cancel", "client.silent_sidecar_deadlines", "client.connect_refused", "client.hello_refused",
    "client.budget_encoding", "client.frame_reports", "client.report_frame_allocates_nothing",
    "launcher.join_arguments",
]
E2E_CASES = [
    "e2e.launch_failure_reports_stderr", "e2e.launch_and_hello", "e2e.npc", "e2e.say_streams_tokens",
    "e2e.decide_choices", "e2e.decide_schema", "e2e.cancel_mid_stream", "e2e.deadline_fallback",
    "e2e.budget_threads", "e2e.frame_backoff",
    "e2e.connect_to_running_sidecar", "e2e.sidecar_killed_mid_request", "e2e.relaunch_and_hello",
    "e2e.dispose_shuts_sidecar_down", "e2e.ready_file_launch",
]


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        message = f"{name} not found (apt-get install mono-mcs mono-runtime)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def tests_exe() -> Path:
    mcs = _tool("mcs")
    _tool("mono")
    core = sorted(str(p) for p in (UNITY / "Runtime" / "Core").glob("*.cs"))
    tests = sorted(str(p) for p in (UNITY / "Tests" / "Core").glob("*.cs"))
    BUILD.mkdir(exist_ok=True)
    runtime_dll, exe = BUILD / "NpcAi.Runtime.dll", BUILD / "NpcAi.Tests.exe"
    # The core is built on its own, with no Unity assembly in reach: it must not need one.
    for cmd in ([mcs, "-target:library", "-warnaserror+", "-debug", f"-out:{runtime_dll}", *core],
                [mcs, "-target:exe", "-warnaserror+", "-debug", f"-r:{runtime_dll}", f"-out:{exe}", *tests]):
        build = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert build.returncode == 0, f"{' '.join(cmd[:4])}... failed:\n{build.stdout}{build.stderr}"
    return exe


def _run(exe: Path, group: str, timeout: float) -> str:
    env = {**os.environ, "NPCAI_VECTORS": str(VECTORS)}
    env.setdefault("NPCAI_PYTHON", sys.executable)  # the sidecar runs on this interpreter, where npcai is installed
    try:
        proc = subprocess.run(["mono", "--debug", str(exe), group], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"mono {group} ran over {timeout} s:\n{exc.stdout or ''}")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"mono {group} exited with {proc.returncode}:\n{out}"
    return out


def _expect_passed(out: str, cases: list[str]) -> None:
    missing = [c for c in cases if not re.search(rf"^PASS {re.escape(c)} ", out, re.M)]
    assert not missing, f"cases that did not print PASS: {missing}\n{out}"


def test_core_has_no_unity_dependency() -> None:
    for path in (UNITY / "Runtime" / "Core").glob("*.cs"):
        assert "UnityEngine" not in path.read_text(), f"{path.name} references UnityEngine"


def test_unit(tests_exe: Path) -> None:
    """Codec and framing against vectors.tsv, bounded decoding, client logic against a scripted peer."""
    _expect_passed(_run(tests_exe, "unit", timeout=60), UNIT_CASES)


def test_end_to_end(tests_exe: Path) -> None:
    """A real sidecar started by the bridge's launcher: say, decide, cancel, deadlines, kill, relaunch."""
    _expect_passed(_run(tests_exe, "e2e", timeout=180), E2E_CASES)


def test_poll_benchmark(tests_exe: Path) -> None:
    """Per-frame cost of Poll(); asserts zero allocation when idle and prints the timings."""
    out = _run(tests_exe, "bench", timeout=120)
    _expect_passed(out, ["bench.poll_cost"])
    print("\n".join(line for line in out.splitlines() if "BENCH" in line or "machine:" in line))
