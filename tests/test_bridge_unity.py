"""The Unity bridge (engine_bridges/unity): compiled with Mono's mcs and run with mono.

The C# core (Runtime/Core, assembly NpcAi.Core) and its in-house test runner (Tests/Core) are
built into build/unity-bridge/ at the repository root, outside the package (Unity would import
any DLL inside it); each test here runs one group of cases and checks that every case it expects
printed PASS. The Unity part (Runtime/Unity, assembly NpcAi.Unity) and the sample are compiled
against the core and small stand-ins for the UnityEngine members they use. Without mcs/mono the
tests skip, except under CI.
"""

from __future__ import annotations

import json
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
UNITY = ROOT / "engine_bridges" / "unity"
BUILD = ROOT / "build" / "unity-bridge"  # git-ignored, and outside the package
VECTORS = ROOT / "engine_bridges" / "conformance" / "vectors.tsv"

UNIT_CASES = [
    "codec.msgpack_vectors", "codec.message_vectors", "codec.request_encoder_vectors", "codec.reply_vectors",
    "codec.reply_ok_allocates_nothing", "codec.rejects_garbage", "codec.rejects_deep_nesting",
    "codec.rejects_oversized_containers", "codec.fuzz_only_msgpack_exceptions",
    "zmtp.greeting_vector", "zmtp.ready_vectors", "zmtp.frame_vectors", "zmtp.dealer_handshake_in_pieces",
    "zmtp.dealer_rejects_non_router", "zmtp.dealer_connect_refused", "zmtp.parse_endpoint",
    "client.unconnected_requests_end_on_poll", "client.scripted_replies", "client.actions_sentences_steps",
    "client.unreadable_reply_ends_its_request",
    "client.poll_is_bounded",
    "client.cancel", "client.silent_sidecar_deadlines", "client.connect_refused", "client.hello_refused",
    "client.budget_encoding", "client.frame_reports", "client.report_frame_allocates_nothing",
    "launcher.join_arguments", "launcher.find_bundle_order",
]
E2E_CASES = [
    "e2e.launch_failure_reports_stderr", "e2e.launch_and_hello", "e2e.npc", "e2e.say_streams_tokens",
    "e2e.decide_choices", "e2e.decide_schema", "e2e.action_decided_and_reported", "e2e.chain_steps_and_results",
    "e2e.cancel_mid_stream", "e2e.deadline_fallback",
    "e2e.budget_threads", "e2e.frame_backoff",
    "e2e.connect_to_running_sidecar", "e2e.sidecar_killed_mid_request", "e2e.relaunch_and_hello",
    "e2e.dispose_shuts_sidecar_down", "e2e.ready_file_launch", "e2e.token_kept_off_the_command_line", "e2e.bundle_before_path",
]

# The UnityEngine members Runtime/Unity and the sample use, as stand-ins: enough for mcs to check
# that the Unity assembly compiles against NpcAi.Core alone, not that it runs in the Editor.
UNITY_STAND_INS = """
namespace UnityEngine
{
    public class Object { public static void DontDestroyOnLoad(Object target) { } }
    public class GameObject : Object { }
    public class Component : Object { public GameObject gameObject { get { return null; } } }
    public class Behaviour : Component { public bool enabled { get; set; } }
    public class MonoBehaviour : Behaviour { }
    [System.AttributeUsage(System.AttributeTargets.Class)]
    public sealed class DisallowMultipleComponent : System.Attribute { }
    [System.AttributeUsage(System.AttributeTargets.Field)]
    public class PropertyAttribute : System.Attribute { }
    public sealed class HeaderAttribute : PropertyAttribute { public HeaderAttribute(string header) { } }
    public sealed class TooltipAttribute : PropertyAttribute { public TooltipAttribute(string tooltip) { } }
    public sealed class TextAreaAttribute : PropertyAttribute { }
    [System.AttributeUsage(System.AttributeTargets.Field)]
    public sealed class SerializeField : System.Attribute { }
    public static class Time
    {
        public static float unscaledTime { get { return 0f; } }
        public static float unscaledDeltaTime { get { return 0f; } }
    }
    public static class Debug
    {
        public static void Log(object message) { }
        public static void LogWarning(object message) { }
        public static void LogError(object message) { }
    }
    public static class Application { public static string streamingAssetsPath { get { return "StreamingAssets"; } } }
    public static class GUILayout
    {
        public static void Label(string text) { }
        public static bool Button(string text) { return false; }
    }
}
"""


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
    BUILD.mkdir(parents=True, exist_ok=True)
    runtime_dll, exe = BUILD / "NpcAi.Core.dll", BUILD / "NpcAi.Tests.exe"
    # The core is built on its own, with no Unity assembly in reach: it must not need one.
    for cmd in ([mcs, "-target:library", "-warnaserror+", "-debug", f"-out:{runtime_dll}", *core],
                [mcs, "-target:exe", "-warnaserror+", "-debug", f"-r:{runtime_dll}", f"-out:{exe}", *tests]):
        build = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert build.returncode == 0, f"{' '.join(cmd[:4])}... failed:\n{build.stdout}{build.stderr}"
    return exe


def _run(exe: Path, group: str, timeout: float, env: dict[str, str] | None = None, expect_ok: bool = True) -> str:
    env = {**os.environ, "NPCAI_VECTORS": str(VECTORS), **(env or {})}
    env.setdefault("NPCAI_PYTHON", sys.executable)  # the sidecar runs on this interpreter, where npcai is installed
    try:
        proc = subprocess.run(["mono", "--debug", str(exe), group], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"mono {group} ran over {timeout} s:\n{exc.stdout or ''}")
    out = proc.stdout + proc.stderr
    assert (proc.returncode == 0) == expect_ok, f"mono {group} exited with {proc.returncode}:\n{out}"
    return out


def _expect_passed(out: str, cases: list[str]) -> None:
    missing = [c for c in cases if not re.search(rf"^PASS {re.escape(c)} ", out, re.M)]
    assert not missing, f"cases that did not print PASS: {missing}\n{out}"


def test_core_has_no_unity_dependency() -> None:
    for path in (UNITY / "Runtime" / "Core").glob("*.cs"):
        assert "UnityEngine" not in path.read_text(), f"{path.name} references UnityEngine"


def test_two_assemblies_core_free_of_the_engine() -> None:
    """Runtime/Core is NpcAi.Core (no engine references); Runtime/Unity is NpcAi.Unity, on top of it."""
    asmdefs = {p.relative_to(UNITY).as_posix(): json.loads(p.read_text()) for p in UNITY.rglob("*.asmdef")}
    assert set(asmdefs) == {"Runtime/Core/NpcAi.Core.asmdef", "Runtime/Unity/NpcAi.Unity.asmdef",
                            "Tests/NpcAi.Tests.asmdef"}, sorted(asmdefs)
    core, unity = asmdefs["Runtime/Core/NpcAi.Core.asmdef"], asmdefs["Runtime/Unity/NpcAi.Unity.asmdef"]
    assert core["name"] == "NpcAi.Core" and core["references"] == [] and core["noEngineReferences"] is True
    assert unity["name"] == "NpcAi.Unity" and unity["references"] == ["NpcAi.Core"]
    assert not unity["noEngineReferences"]
    assert "NpcAi.Core" in asmdefs["Tests/NpcAi.Tests.asmdef"]["references"]


def test_package_files_have_stable_meta_files() -> None:
    """Every file and folder of the package (but Samples~, which Unity does not import) has a .meta
    with its own GUID; no .meta is left without its asset; no build output is in the package."""
    tracked = subprocess.run(["git", "ls-files", "engine_bridges/unity"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout")
    files = {Path(t).relative_to("engine_bridges/unity").as_posix() for t in tracked}
    assets = {f for f in files if not f.endswith(".meta") and not f.startswith("Samples~/")}
    folders = {Path(f).parent.as_posix() for f in assets} - {"."}
    folders |= {Path(d).parent.as_posix() for d in folders} - {"."}
    metas = {f[: -len(".meta")] for f in files if f.endswith(".meta")}
    assert metas == assets | folders, (sorted((assets | folders) - metas), sorted(metas - assets - folders))
    guids = [re.search(r"^guid: ([0-9a-f]{32})$", (UNITY / f"{m}.meta").read_text(), re.MULTILINE)
             for m in sorted(metas)]
    assert all(guids) and len({g.group(1) for g in guids}) == len(guids)
    assert not [f for f in files if f.startswith("build/") or f.endswith((".dll", ".exe", ".mdb", ".pdb"))]
    assert (UNITY / "CHANGELOG.md").is_file() and "## [Unreleased]" in (UNITY / "CHANGELOG.md").read_text()


def test_unity_assembly_compiles_against_core_alone(tests_exe: Path) -> None:
    """NpcAi.Unity (and the sample) compile with only NpcAi.Core and UnityEngine stand-ins in reach."""
    mcs = _tool("mcs")
    stand_ins = BUILD / "UnityEngineStandIns.cs"
    stand_ins.write_text(UNITY_STAND_INS)
    engine, unity_dll = BUILD / "UnityEngine.dll", BUILD / "NpcAi.Unity.dll"
    unity_sources = sorted(str(p) for p in (UNITY / "Runtime" / "Unity").glob("*.cs"))
    sample = sorted(str(p) for p in (UNITY / "Samples~").rglob("*.cs"))
    for cmd in ([mcs, "-target:library", f"-out:{engine}", str(stand_ins)],
                [mcs, "-target:library", "-warnaserror+", f"-r:{BUILD / 'NpcAi.Core.dll'}", f"-r:{engine}",
                 f"-out:{unity_dll}", *unity_sources],
                [mcs, "-target:library", "-warnaserror+", "-nowarn:414,649", f"-r:{BUILD / 'NpcAi.Core.dll'}",
                 f"-r:{engine}", f"-r:{unity_dll}", f"-out:{BUILD / 'NpcAi.Sample.dll'}", *sample]):
        build = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        assert build.returncode == 0, f"{' '.join(cmd[:4])}... failed:\n{build.stdout}{build.stderr}"


def test_msgpack_test_suite(tests_exe: Path, tmp_path: Path) -> None:
    """The public msgpack vectors (tests/msgpack_suite.py) through the C# codec: every form decodes to
    its value (re-encoded canonically, byte for byte), every ext form is refused; a copy with a few
    wrong expectations must fail."""
    forms = msgpack_suite.forms(msgpack_suite.load_groups())
    suite = msgpack_suite.write_tsv(tmp_path / "suite.tsv", forms, keep_float32=True)
    out = _run(tests_exe, "suite", timeout=60, env={"NPCAI_MSGPACK_SUITE": str(suite)})
    msgpack_suite.assert_report(out, forms, "C# codec")
    _expect_passed(out, ["suite.msgpack_test_suite"])
    spoiled, names = msgpack_suite.corrupt(suite, tmp_path / "spoiled.tsv")
    out = _run(tests_exe, "suite", timeout=60, env={"NPCAI_MSGPACK_SUITE": str(spoiled)}, expect_ok=False)
    assert {line.split()[2].rstrip(":") for line in out.splitlines() if line.startswith("FAIL suite ")} == set(names)


def test_unit(tests_exe: Path) -> None:
    """Codec and framing against vectors.tsv, bounded decoding, client logic against a scripted peer."""
    _expect_passed(_run(tests_exe, "unit", timeout=60), UNIT_CASES)


def test_end_to_end(tests_exe: Path) -> None:
    """A real sidecar started by the bridge's launcher: say, decide, cancel, deadlines, kill, relaunch."""
    _expect_passed(_run(tests_exe, "e2e", timeout=180), E2E_CASES)


def test_poll_benchmark(tests_exe: Path) -> None:
    """Per-frame cost of Poll(); asserts zero allocation when idle and prints the timings."""
    out = _run(tests_exe, "bench", timeout=240)  # a loaded machine lengthens the busy rounds' waits
    _expect_passed(out, ["bench.poll_cost"])
    print("\n".join(line for line in out.splitlines() if "BENCH" in line or "machine:" in line))
