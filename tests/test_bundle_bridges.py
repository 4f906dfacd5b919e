"""The C# (Unity) and C++ (Unreal) bridges' end-to-end suites, their launchers started on the bundled sidecar
(NPCAI_SIDECAR) instead of `python -m npcai`, with the environment a player's machine gives it: no Python on
PATH, no PYTHONPATH or PYTHONHOME, a fresh HOME. The bridges' own test files build them (same fixtures)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

import test_bridge_unity as unity
import test_bridge_unreal as unreal
from bundled import player_env
from npcai.bundle.builder import executable_name
from test_bridge_unity import tests_exe  # noqa: F401 (fixture: the C# core and its tests, built with mcs)
from test_bridge_unreal import build  # noqa: F401 (fixture: the C++ core and its tests, built with CMake)

pytestmark = [pytest.mark.bundle, pytest.mark.bridge]


def _env(bundle: Path, home: Path) -> dict[str, str]:
    return {**player_env(home), "NPCAI_SIDECAR": str(bundle / executable_name()),
            "NPCAI_VECTORS": str(unity.VECTORS)}


def test_unity_end_to_end_against_the_bundle(tests_exe: Path, bundle: Path, tmp_path: Path) -> None:  # noqa: F811
    mono = shutil.which("mono")
    proc = subprocess.run([mono, "--debug", str(tests_exe), "e2e"], cwd=unity.ROOT, env=_env(bundle, tmp_path),
                          capture_output=True, text=True, timeout=240)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"mono e2e exited with {proc.returncode}:\n{out}"
    unity._expect_passed(out, unity.E2E_CASES)


def test_unreal_end_to_end_against_the_bundle(build: Path, bundle: Path, tmp_path: Path) -> None:  # noqa: F811
    result = subprocess.run([str(build / "npcai_e2e_tests")], cwd=build, env=_env(bundle, tmp_path),
                            capture_output=True, text=True, timeout=240)
    unreal._assert_cases(result, unreal.E2E_CASES)
