"""The Unreal bridge core's _WIN32 branches (Winsock, CreateProcess and its environment block, the
child's stdout read through PeekNamedPipe): cross-compiled for Windows with MinGW-w64, warnings as
errors, and run under Wine against a real sidecar on loopback (engine_bridges/unreal/core/tests/windows_tests.cpp).
Wine is not Windows, but it runs the Win32 calls these branches make, over real sockets to real libzmq."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "engine_bridges" / "unreal" / "core"
BUILD = CORE / "build" / "pytest-windows"
COMPILER = "x86_64-w64-mingw32-g++-posix"

pytestmark = pytest.mark.bridge

CASES = [
    "a_childs_arguments_arrive_whole_and_its_exit_code_and_output_come_back",
    "variables_set_for_a_child_reach_it_over_the_inherited_ones",
    "a_child_is_ended_by_kill",
    "a_missing_program_fails_to_start_with_a_reason",
    "a_bundle_is_found_by_its_exe_name_in_folders_and_in_a_semicolon_path",
    "the_launcher_reads_the_ready_line_connects_over_winsock_and_the_sidecar_answers",
]


def _require(tools: list[str]) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        message = f"{', '.join(missing)} not found (apt-get install cmake g++-mingw-w64-x86-64 wine wine64)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def windows_tests() -> Path:
    _require(["cmake", COMPILER, "wine"])
    BUILD.mkdir(parents=True, exist_ok=True)
    for cmd in (["cmake", "-S", CORE, "-B", BUILD, f"-DCMAKE_TOOLCHAIN_FILE={CORE / 'mingw-w64.cmake'}"],
                ["cmake", "--build", BUILD, "--parallel", str(os.cpu_count() or 2)]):
        done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
    return BUILD / "npcai_windows_tests.exe"


@pytest.fixture
def sidecar(tmp_path: Path):
    """A real sidecar on a loopback port, with a token: (endpoint, token, process)."""
    token, ready = "windows-test-token", tmp_path / "ready"
    env = {**os.environ, "NPCAI_TOKEN": token,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    with open(tmp_path / "sidecar.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "npcai", "serve", "--endpoint", "tcp://127.0.0.1:0",
                                 "--ready-file", str(ready), "--threads", "1"], env=env,
                                stdout=subprocess.DEVNULL, stderr=log)
    try:
        until = time.monotonic() + 120
        while not (ready.exists() and ready.read_text().strip()):
            assert proc.poll() is None and time.monotonic() < until, (tmp_path / "sidecar.log").read_text()[-3000:]
            time.sleep(0.1)
        yield ready.read_text().strip(), token, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def test_the_windows_branches_work_under_wine_against_a_real_sidecar(windows_tests: Path, sidecar, tmp_path: Path):
    endpoint, token, proc = sidecar
    env = {**os.environ, "WINEPREFIX": str(tmp_path / "wine"), "WINEDEBUG": "-all",
           "WINEDLLOVERRIDES": "mscoree,mshtml=",  # no Mono or Gecko installer prompts in a fresh prefix
           "NPCAI_WIN_ENDPOINT": endpoint, "NPCAI_WIN_TOKEN": token}
    run = subprocess.run(["wine", str(windows_tests)], capture_output=True, text=True, timeout=300, env=env,
                         check=False)
    lines = [line.rstrip("\r") for line in run.stdout.splitlines()]
    report = f"exit {run.returncode}\n{run.stdout}\n--- stderr (tail)\n{run.stderr[-3000:]}"
    assert run.returncode == 0, report
    for case in CASES:
        assert f"PASS {case}" in lines, f"case {case} did not pass\n{report}"
    # the launcher's stop() sent `shutdown` through Winsock: the real sidecar exits by itself
    assert proc.wait(20) == 0, report

