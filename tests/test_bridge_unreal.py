"""The Unreal bridge's engine-agnostic C++ core (engine_bridges/unreal/core): build it with
CMake, run its unit tests (codec and framing against the conformance vectors, bounded
decoding, client and launcher against fake peers), its end-to-end test against a real sidecar
started by its own launcher, and a short run of the per-frame benchmark (allocation check)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import msgpack_suite
import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "engine_bridges" / "unreal" / "core"
BUILD = CORE / "build" / "pytest"
VECTORS = ROOT / "engine_bridges" / "conformance" / "vectors.tsv"

pytestmark = pytest.mark.bridge

UNIT_CASES = [
    "vectors_file_read",
    "msgpack_encode_matches_vectors",
    "msgpack_decode_matches_vectors",
    "msgpack_refuses_the_refused_vectors",
    "msgpack_accessors",
    "msgpack_reused_value_has_no_stale_items",
    "msgpack_test_suite",
    "msgpack_rejects_truncated_input",
    "msgpack_rejects_bad_bytes",
    "msgpack_depth_limit",
    "msgpack_garbage_never_crashes",
    "zmtp_matches_vectors",
    "zmtp_rejects_bad_frames_and_greetings",
    "client_wire_bytes_and_replies",
    "client_actions_sentences_and_steps",
    "client_unreadable_reply_ends_its_request",
    "client_not_connected_ends_at_next_poll",
    "client_close_ends_open_requests",
    "client_connect_refused",
    "client_rejects_a_peer_that_is_not_zmtp",
    "client_deadline_and_silence_without_replies",
    "client_game_thread_stall_is_not_silence",
    "client_budget_and_frame_reports",
    "launcher_command_missing",
    "launcher_child_exits_before_ready",
    "launcher_ready_timeout_kills_child",
    "launcher_reads_ready_line_and_stops",
    "launcher_starts_a_program_whose_path_has_spaces",
    "launcher_finds_the_bundle_in_its_folders_then_on_path",
    "windows_command_line_keeps_each_argument_whole",
]

E2E_CASES = [
    "launch_reads_ready_line_and_says_hello",
    "attach_to_running_sidecar",
    "npc_defines_one",
    "say_streams_tokens",
    "decide_with_choices",
    "decide_with_schema",
    "action_decided_with_enum_args",
    "chain_reports_steps_and_results",
    "cancel_mid_stream",
    "deadline_gives_fallback",
    "sidecar_deadline_reply",
    "silent_sidecar_deadline_from_poll",
    "budget_threads_show_in_stats",
    "frame_reports_over_target_back_off",
    "killed_sidecar_ends_pending_requests",
    "relaunch_after_crash",
    "stop_shuts_the_sidecar_down",
    "launch_with_ready_file",
    "launch_keeps_the_token_off_the_command_line",
    "launch_finds_the_bundle_before_path",
]


def _run(cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], cwd=BUILD, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **_this_checkouts_npcai(), **(env or {})})


def _this_checkouts_npcai() -> dict[str, str]:
    """The sidecars the tests start (``NPCAI_PYTHON -m npcai``, from the build folder) import this checkout's
    npcai, as the Unity tests' do from the repository root, not whichever one is installed."""
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def _assert_cases(result: subprocess.CompletedProcess[str], cases: list[str]) -> None:
    report = f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr (tail)\n{result.stderr[-4000:]}"
    assert result.returncode == 0, report
    lines = result.stdout.splitlines()
    for case in cases:
        assert f"PASS {case}" in lines, f"case {case} did not pass\n{report}"
    assert not [line for line in lines if line.startswith("FAIL ")], report


@pytest.fixture(scope="module")
def build() -> Path:
    missing = [tool for tool in ("cmake", "g++") if shutil.which(tool) is None]
    if missing:
        message = f"{' and '.join(missing)} not found: cannot build the Unreal bridge core"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    BUILD.mkdir(parents=True, exist_ok=True)
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    configure = _run(["cmake", "-S", CORE, "-B", BUILD, "-DCMAKE_BUILD_TYPE=Release", "-DCMAKE_CXX_COMPILER=g++",
                      *generator], timeout=120)
    assert configure.returncode == 0, configure.stdout + configure.stderr
    compiled = _run(["cmake", "--build", BUILD, "--parallel", str(os.cpu_count() or 2)], timeout=300)
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr
    return BUILD


def test_unit(build: Path) -> None:
    _assert_cases(_run([build / "npcai_unit_tests", "--vectors", VECTORS], timeout=60), UNIT_CASES)


def test_msgpack_test_suite(build: Path, tmp_path: Path) -> None:
    """The public msgpack vectors (tests/msgpack_suite.py) through the C++ codec: every form decodes
    to its value (checked by re-encoding it canonically, byte for byte), every ext form is refused.
    A copy with a few wrong expectations must fail, so a decoding bug cannot pass unseen."""
    forms = msgpack_suite.forms(msgpack_suite.load_groups())
    suite = msgpack_suite.write_tsv(tmp_path / "suite.tsv", forms, keep_float32=True)
    result = _run([build / "npcai_unit_tests", "msgpack_test_suite"], timeout=60,
                  env={"NPCAI_MSGPACK_SUITE": str(suite)})
    msgpack_suite.assert_report(result.stdout, forms, "C++ codec")
    _assert_cases(result, ["msgpack_test_suite"])
    spoiled, names = msgpack_suite.corrupt(suite, tmp_path / "spoiled.tsv")
    result = _run([build / "npcai_unit_tests", "msgpack_test_suite"], timeout=60,
                  env={"NPCAI_MSGPACK_SUITE": str(spoiled)})
    assert result.returncode != 0 and "FAIL msgpack_test_suite" in result.stdout, result.stdout[-2000:]
    assert {line.split()[2].rstrip(":") for line in result.stdout.splitlines()
            if line.startswith("FAIL suite ")} == set(names), result.stdout[-2000:]


def test_the_module_compiles_its_core_as_sources(build: Path) -> None:
    """The core is part of the UE module (Public/npcai headers, Private/npcai sources), never pulled
    in with #include "*.cpp", and the CMake build compiles exactly the module's core sources."""
    unreal = CORE.parent
    for path in unreal.rglob("*"):
        if path.suffix in (".cpp", ".h", ".hpp") and "build" not in path.relative_to(unreal).parts:
            assert not re.search(r'#include\s+[<"][^>"]+\.cpp[>"]', path.read_text()), path
    module = unreal / "Source" / "NpcAi"
    sources = {p.name for p in (module / "Private" / "npcai").glob("*.cpp")}
    listed = set(re.findall(r"Private/npcai/(\w+\.cpp)", (CORE / "CMakeLists.txt").read_text()))
    assert sources and listed == sources, (sources, listed)
    headers = {p.name for p in (module / "Public" / "npcai").glob("*.hpp")}
    assert {"client.hpp", "launcher.hpp", "msgpack.hpp"} <= headers
    assert not (CORE / "src").exists() and not (CORE / "include").exists()
    assert "RuntimeDependencies.Add(\"$(ProjectDir)/npcai/...\"" in (module / "NpcAi.Build.cs").read_text()


def test_end_to_end_against_real_sidecar(build: Path) -> None:
    result = _run([build / "npcai_e2e_tests"], timeout=170, env={"NPCAI_PYTHON": sys.executable})
    _assert_cases(result, E2E_CASES)


def test_poll_benchmark_does_not_allocate_when_idle(build: Path) -> None:
    result = _run([build / "npcai_bench_poll", "--quick"], timeout=120, env={"NPCAI_PYTHON": sys.executable})
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    idle = next(line for line in result.stdout.splitlines() if line.startswith("idle poll"))
    assert "0.000 allocations (0.0 bytes) per call" in idle, result.stdout
