"""`npcai bundle`: a sidecar folder that runs on a player's machine with no Python, compiler or network,
checks itself against its manifest at start, and writes nothing beside its executable."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bundled import linked_copy, own_copy, player_env
from npcai import Client, Sidecar
from npcai.bundle import builder, manifest, runpaths
from npcai.bundle.licences import archived_modules
from npcai.errors import NpcaiError
from support import assert_one_line_failure, run_cli

pytestmark = pytest.mark.bundle

SYSTEM_LIB_DIRS = ("/lib/", "/lib64/", "/usr/lib/", "/usr/lib64/", "/usr/local/lib/")


def _exe(folder: Path) -> str:
    return str(folder / builder.executable_name())


def _start(folder: Path, home: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Start the bundled sidecar expecting it to fail before it is ready."""
    return subprocess.run([_exe(folder), *args], env=player_env(home), capture_output=True, text=True,
                          timeout=timeout)


def _is_elf(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == b"\x7fELF"


def _files(folder: Path) -> dict[str, int]:
    """Every file and link under ``folder``, with its size (a link: -1)."""
    return {p.relative_to(folder).as_posix(): -1 if p.is_symlink() else p.stat().st_size
            for p in folder.rglob("*") if p.is_file() or p.is_symlink()}


def test_the_manifest_lists_every_file_the_models_and_the_versions(bundle):
    data = json.loads((bundle / manifest.NAME).read_text())
    on_disk = _files(bundle)
    del on_disk[manifest.NAME]
    assert {rel: e.get("size", -1) for rel, e in data["files"].items()} == on_disk
    assert all(len(e["sha256"]) == 64 for e in data["files"].values() if "symlink" not in e)
    for rel, e in data["files"].items():
        if "symlink" in e:
            assert (bundle / rel).resolve().is_relative_to(bundle.resolve()), f"{rel} links out of the bundle"
    assert data["protocol"] == 1 and data["npcai"] and data["executable"] == builder.executable_name()
    assert data["platform"]["system"] == platform.system() and data["platform"]["machine"] == platform.machine()
    dialogue = data["models"]["dialogue"]
    assert dialogue == {"name": "smollm2-135m", "path": "models/SmolLM2-135M-Instruct.Q4_1-as-Q8_0.gguf",
                        "license": "Apache-2.0"}


def test_the_bundle_carries_the_licences_and_leaves_out_what_the_sidecar_never_imports(bundle):
    licences = {p.relative_to(bundle / "licenses").as_posix() for p in (bundle / "licenses").rglob("*")}
    assert {"llama.cpp-MIT.txt", "Apache-2.0.txt", "SmolLM2-NOTICE.txt", "Python-LICENSE.txt"} <= licences
    for dist in ("numpy", "pyzmq", "llguidance", "msgpack", "llama_cpp_python", "gguf", "platformdirs"):
        assert any(name.startswith(dist + "/") for name in licences), f"no licence of {dist}"
    files = set(_files(bundle))
    for absent in ("numba/", "llvmlite/", "matplotlib/", "/tests/", "/include/"):
        assert not [f for f in files if absent in "/" + f], f"the bundle holds {absent}"
    assert not [f for f in files if f.endswith((".h", ".pyi"))]
    archived = archived_modules(bundle / builder.executable_name())
    assert {"httpx", "httpcore", "anyio", "certifi", "jsonschema"} <= archived, "a remote role needs these"
    assert not archived & {"_pytest", "pytest", "trio", "pygments", "click"}, "test tools or httpx's own CLI"
    assert [f for f in files if f.startswith("_internal/npcai/model/_sampling_aot")], "no compiled kernel"
    shipped = Path(__file__).resolve().parent.parent / "grammars"
    assert sorted(p.name for p in (bundle / "_internal" / "npcai" / "grammars").iterdir()) == \
        sorted(p.name for p in shipped.glob("*.gbnf"))


@pytest.mark.skipif(platform.system() != "Linux" or shutil.which("readelf") is None,
                    reason="ELF search paths: Linux, with binutils' readelf")
def test_no_library_in_the_bundle_searches_a_folder_outside_it(bundle):
    """A build machine's search path (pyenv's lib folder, a venv) on a player's machine would be searched before the
    system's folders: whatever sits there at that path would be loaded into the sidecar."""
    outside = {}
    for path in (bundle / "_internal").rglob("*"):
        if path.is_symlink() or not path.is_file() or not _is_elf(path):
            continue
        dynamic = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True, check=True).stdout
        for line in dynamic.splitlines():
            if "(RUNPATH)" in line or "(RPATH)" in line:
                entries = line.split("[", 1)[1].rstrip("]").split(":")
                foreign = [e for e in entries if e and not e.startswith(("$ORIGIN", "${ORIGIN}"))]
                if foreign:
                    outside[path.relative_to(bundle).as_posix()] = foreign
    assert outside == {}


@pytest.mark.skipif(platform.system() != "Linux" or shutil.which("cc") is None or shutil.which("readelf") is None,
                    reason="ELF search paths: Linux, with a C compiler and readelf")
def test_search_paths_outside_the_folder_are_dropped_and_the_folders_own_kept(tmp_path):
    source = tmp_path / "k.c"
    source.write_text("int k(void) { return 1; }\n")
    for name, rpath in (("both.so", "/root/.pyenv/lib:$ORIGIN/../libs"), ("foreign.so", "/opt/py/lib"),
                        ("own.so", "$ORIGIN")):
        subprocess.run(["cc", "-shared", "-fPIC", f"-Wl,-rpath,{rpath}", "-o", str(tmp_path / name), str(source)],
                       check=True)
    assert runpaths.keep_inside(tmp_path) == ["both.so", "foreign.so"]
    dynamic = {name: subprocess.run(["readelf", "-d", str(tmp_path / name)], capture_output=True, text=True,
                                    check=True).stdout for name in ("both.so", "foreign.so", "own.so")}
    assert "[$ORIGIN/../libs]" in dynamic["both.so"] and "/root/.pyenv" not in dynamic["both.so"]
    assert "PATH" not in dynamic["foreign.so"]
    assert "[$ORIGIN]" in dynamic["own.so"]


def test_a_scrubbed_environment_serves_the_python_clients_exchange(bundle, tmp_path):
    before = _files(bundle)
    home = tmp_path / "home"
    with Sidecar("--threads", "1", program=[_exe(bundle)], env=player_env(home), inherit_env=False,
                 timeout=120) as sidecar, Client(sidecar.endpoint) as npc:
        hello = npc.hello("bundle-test")
        assert hello["protocol"] == 1 and hello["pid"] == sidecar.pid
        assert [(m["role"], m["name"]) for m in hello["models"]] == [("dialogue", "smollm2-135m")], hello["models"]
        npc.npc("brom", "You are Brom, the gruff village blacksmith.", seed=3)
        chunks: list[str] = []
        line = npc.say("brom", "Can you fix my sword?", max_tokens=12, on_token=chunks.append)
        assert line["text"] and "".join(chunks) == line["text"]
        decided = npc.decide("A thief runs past the forge.", npc="brom", choices=["chase", "shout", "ignore"])
        assert decided["value"] in ("chase", "shout", "ignore") and decided["used_fallback"] is False
        by_grammar = npc.decide("The player insults your mother.", grammar="emote", seed=5)
        assert by_grammar["value"] and by_grammar["used_fallback"] is False
        loaded = _mapped_libraries(sidecar.pid)
    foreign = [lib for lib in loaded if not lib.startswith(str(bundle) + "/") and not lib.startswith(SYSTEM_LIB_DIRS)]
    assert not foreign, f"libraries loaded from outside the bundle and the system: {foreign}"
    assert not [lib for lib in loaded if "site-packages" in lib or "/python3" in lib.split("/_internal/")[0]]
    assert any(lib.endswith("/libllama.so") and lib.startswith(str(bundle)) for lib in loaded)
    assert _files(bundle) == before, "the sidecar wrote beside its executable"
    assert list((home / ".cache" / "npcai" / "bundles").glob("*.json")), "no verification record in the user cache"


def test_a_bundle_started_without_stdout_exits_0_on_sigterm(bundle, tmp_path):
    """The bootloader's own files may take fd 1 before Python runs: the sidecar must neither write there nor
    end with exit code 1 (restart me) after a clean stop."""
    ready = tmp_path / "endpoint"
    child = subprocess.Popen([_exe(bundle), "--threads", "1", "--ready-file", str(ready)],
                             env=player_env(tmp_path / "home"), stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: os.close(1))  # noqa: PLW1509 (no threads here)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.05)
        assert ready.is_file(), child.stderr.read()
        child.terminate()
        assert child.wait(10) == 0, child.stderr.read()
    finally:
        if child.poll() is None:
            child.kill()


def test_the_shipped_decision_adapter_travels_in_the_bundle_and_loads_by_name(bundle, tmp_path):
    shipped = Path(__file__).resolve().parent.parent / "npcai" / "data" / "adapters"
    assert sorted(p.name for p in (bundle / "_internal" / "npcai" / "data" / "adapters").iterdir()) == \
        sorted(p.name for p in shipped.glob("*.gguf"))
    with Sidecar("--threads", "1", "--lora", "decision=smollm2-135m-decision", program=[_exe(bundle)],
                 env=player_env(tmp_path / "home"), inherit_env=False, timeout=120) as sidecar, \
            Client(sidecar.endpoint) as npc:
        roles = {m["role"]: m for m in npc.hello("bundle-test")["models"]}
        assert roles["decision"]["lora"] == "smollm2-135m-decision", roles
        npc.npc("hilda", "You are Hilda, a stern town guard of Oakvale.")
        decided = npc.decide("A thief snatches a purse and runs past you.", npc="hilda", role="decision",
                             choices=["chase the thief", "go to sleep"])
        assert decided["value"] in ("chase the thief", "go to sleep") and decided["used_fallback"] is False


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads which files the sidecar mapped (Linux)")
def test_a_bundle_that_ships_the_scoring_copy_scores_on_it_where_the_cpu_has_bf16_kernels(bundle, tmp_path,
                                                                                           monkeypatch):
    """As `npcai bundle --scoring-weights` ships it: the copy in models/, listed in bundle.json. The bundled
    sidecar maps it (llama.cpp reads weights from the mapped file) exactly where its llama.cpp has BF16 kernels."""
    from npcai.model import catalog, native

    with monkeypatch.context() as m:
        m.setattr(native, "batch_weights", lambda system_info=None: "BF16")
        scoring_copy = catalog.scoring_weights(catalog.DEFAULT_MODEL)
    game = linked_copy(bundle, tmp_path / "game" / "npcai")
    os.link(scoring_copy, game / "models" / scoring_copy.name)
    own_copy(game / manifest.NAME)
    data = json.loads((game / manifest.NAME).read_text())
    manifest.write(game, models=data["models"],
                   versions={k: v for k, v in data.items() if k not in ("format", "platform", "models", "files")})
    with Sidecar("--threads", "1", program=[_exe(game)], env=player_env(tmp_path / "home"), inherit_env=False,
                 timeout=120) as sidecar, Client(sidecar.endpoint) as npc:
        pid = npc.hello("bundle-test")["pid"]
        npc.npc("hilda", "You are Hilda, a stern town guard of Oakvale.")
        decided = npc.decide("A thief snatches a purse and runs past you.", npc="hilda",
                             choices=["chase the thief", "go to sleep"])
        with open(f"/proc/{pid}/maps") as maps:
            mapped = {Path(line.split()[-1]).name for line in maps if line.rstrip().endswith(".gguf")}
    assert decided["value"] in ("chase the thief", "go to sleep") and decided["used_fallback"] is False
    assert (scoring_copy.name in mapped) is (native.batch_weights() is not None), mapped
    assert "SmolLM2-135M-Instruct.Q4_1-as-Q8_0.gguf" in mapped


def test_a_remote_role_is_served_through_the_bundle_as_through_npcai_serve(bundle, model_path, tmp_path):
    pytest.importorskip("llama_cpp.server.app", reason="needs llama-cpp-python's [server] extra")
    from npcai.remote.llama_server import LlamaServer, free_port

    unreachable = f"http://127.0.0.1:{free_port()}/v1"
    assert_one_line_failure(_start(bundle, tmp_path / "home", "--model", f"dialogue={unreachable}"),
                            "cannot reach the server")
    with LlamaServer(model_path, threads=1) as engine, \
            Sidecar("--model", f"dialogue={engine.url}", program=[_exe(bundle)], env=player_env(tmp_path / "home"),
                    inherit_env=False, timeout=120) as sidecar, Client(sidecar.endpoint) as npc:
        (dialogue,) = npc.hello("bundle-test")["models"]
        assert dialogue["remote"] is True and dialogue["url"] == engine.url
        npc.npc("brom", "You are Brom, the gruff village blacksmith.", seed=3)
        assert npc.say("brom", "Can you fix my sword?", max_tokens=8)["text"]


def _mapped_libraries(pid: int) -> list[str]:
    with open(f"/proc/{pid}/maps") as f:
        return sorted({line.split()[-1] for line in f if ".so" in line.split()[-1]})


def test_a_truncated_model_fails_at_start_in_one_line(bundle, tmp_path):
    copy = linked_copy(bundle, tmp_path / "game" / "npcai")
    model = copy / "models" / "SmolLM2-135M-Instruct.Q4_1-as-Q8_0.gguf"
    data = model.read_bytes()
    model.unlink()
    model.write_bytes(data[: len(data) // 2])
    failed = _start(copy, tmp_path / "home")
    assert_one_line_failure(failed, "models/SmolLM2-135M-Instruct.Q4_1-as-Q8_0.gguf")
    assert "truncated" in failed.stderr


def test_a_corrupted_library_is_caught_even_after_a_verified_start(bundle, tmp_path):
    copy = linked_copy(bundle, tmp_path / "game" / "npcai")
    home = tmp_path / "home"
    assert _start(copy, home, "--endpoint", "bad").returncode == 2  # verified, then stopped by the bad flag
    library = copy / "_internal" / "llama_cpp" / "lib" / "libllama.so"
    own_copy(library)
    raw = bytearray(library.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # same size, one byte off
    library.write_bytes(bytes(raw))
    failed = _start(copy, home)
    assert_one_line_failure(failed, "_internal/llama_cpp/lib/libllama.so is corrupted")


def test_a_copy_that_followed_the_bundles_links_still_serves(bundle, tmp_path):
    copy = tmp_path / "game" / "npcai"
    shutil.copytree(bundle, copy, copy_function=lambda src, dst: os.link(os.path.realpath(src), dst))  # as cp -rL
    assert not [p for p in copy.rglob("*") if p.is_symlink()]
    with Sidecar("--threads", "1", program=[_exe(copy)], env=player_env(tmp_path / "home"), inherit_env=False,
                 timeout=120) as sidecar, Client(sidecar.endpoint) as npc:
        assert npc.hello("bundle-test")["pid"] == sidecar.pid


def test_a_bundle_without_its_model_names_the_missing_file(bundle, tmp_path):
    copy = linked_copy(bundle, tmp_path / "game" / "npcai")
    (copy / "models" / "SmolLM2-135M-Instruct.Q4_1-as-Q8_0.gguf").unlink()
    failed = _start(copy, tmp_path / "home")
    assert_one_line_failure(failed, "models/SmolLM2-135M-Instruct.Q4_1-as-Q8_0.gguf is missing")


def test_a_catalog_model_that_was_not_bundled_is_named_and_never_pulled(bundle, tmp_path):
    failed = _start(bundle, tmp_path / "home", "--model", "decision=gemma3-270m")
    assert_one_line_failure(failed, "is not in this bundle")
    assert "gemma-3-270m-q4_k_m.gguf" in failed.stderr and "pulling" not in failed.stderr


def test_a_base_model_not_bundled_for_dialogue_is_one_line_without_the_base_model_note(tmp_path, monkeypatch,
                                                                                       capsys):
    from npcai.cli import model_roles
    from npcai.model import catalog

    monkeypatch.setattr(catalog, "_bundled_dir", tmp_path)  # as the bundled sidecar, with nothing shipped
    with pytest.raises(NpcaiError, match="'gemma3-270m' is not in this bundle"):
        model_roles(["gemma3-270m"], out=sys.stderr)
    assert capsys.readouterr().err == ""


def test_the_executable_takes_serves_flags_with_or_without_the_word_serve(bundle, tmp_path):
    shown = subprocess.run([_exe(bundle), "--help"], env=player_env(tmp_path), capture_output=True, text=True,
                           timeout=60)
    assert shown.returncode == 0 and "--parent-pid" in shown.stdout and "--n-ctx" in shown.stdout
    assert_one_line_failure(_start(bundle, tmp_path, "serve", "--no-such-flag"), "--no-such-flag")


def test_verified_files_are_remembered_by_size_and_mtime(tmp_path, monkeypatch):
    root = tmp_path / "bundle"
    (root / "models").mkdir(parents=True)
    (root / "models" / "m.gguf").write_bytes(b"GGUF" + bytes(4096))
    (root / "npcai-sidecar").write_bytes(b"\x7fELF")
    manifest.write(root, models={"dialogue": {"name": None, "path": "models/m.gguf", "license": "?"}},
                   versions={"npcai": "0", "protocol": 1})
    cache = tmp_path / "cache.json"
    hashed: list[Path] = []
    real_sha = manifest.sha256_of
    monkeypatch.setattr(manifest, "sha256_of", lambda p: hashed.append(p) or real_sha(p))
    manifest.verify(manifest.read(root), cache=cache)
    assert len(hashed) == 2
    hashed.clear()
    manifest.verify(manifest.read(root), cache=cache)
    assert hashed == [], "an unchanged file was hashed again"
    (root / "models" / "m.gguf").write_bytes(b"GGUF" + bytes(4095) + b"\x01")  # same size, new mtime
    with pytest.raises(manifest.BundleError, match="models/m.gguf is corrupted"):
        manifest.verify(manifest.read(root), cache=cache)


def _small_bundle(root: Path) -> Path:
    """A bundle's shape without freezing anything: a model, a library and a link to it, as PyInstaller makes."""
    (root / "models").mkdir(parents=True)
    (root / "models" / "m.gguf").write_bytes(b"GGUF" + bytes(4096))
    (root / "_internal" / "lib").mkdir(parents=True)
    (root / "_internal" / "lib" / "libz.so.1").write_bytes(b"\x7fELF" + bytes(range(256)) * 8)
    (root / "_internal" / "libz.so.1").symlink_to("lib/libz.so.1")
    manifest.write(root, models={"dialogue": {"name": None, "path": "models/m.gguf", "license": "?"}},
                   versions={"npcai": "0", "protocol": 1})
    return root


def test_a_link_that_a_copy_turned_into_its_targets_bytes_is_accepted(tmp_path):
    root = _small_bundle(tmp_path / "bundle")
    link = root / "_internal" / "libz.so.1"
    data = link.read_bytes()
    link.unlink()
    link.write_bytes(data)  # what cp -rL, zip without --symlinks and Godot's export do to a link
    manifest.verify(manifest.read(root), cache=tmp_path / "cache.json")
    manifest.verify(manifest.read(root), cache=tmp_path / "cache.json")  # and again, from the cache


@pytest.mark.parametrize("damage, expected", [
    (lambda link, data: link.write_bytes(data[:-1]), "is 2051 bytes, expected 2052"),
    (lambda link, data: link.write_bytes(data[:-1] + b"\x01"), "is corrupted"),
    (lambda link, data: None, "is missing"),
    (lambda link, data: link.symlink_to("../models/m.gguf"), "is missing or changed"),
])
def test_a_link_that_is_missing_or_whose_copy_differs_from_its_target_is_refused(tmp_path, damage, expected):
    root = _small_bundle(tmp_path / "bundle")
    link = root / "_internal" / "libz.so.1"
    data = link.read_bytes()
    link.unlink()
    damage(link, data)
    with pytest.raises(manifest.BundleError, match=f"_internal/libz.so.1 {expected}"):
        manifest.verify(manifest.read(root), cache=tmp_path / "cache.json")


def _drop(table: dict, key: str) -> dict:
    del table[key]
    return table


@pytest.mark.parametrize("tamper", [
    lambda data: [1, 2],
    lambda data: {**data, "files": {**data["files"], "models/m.gguf": _drop(data["files"]["models/m.gguf"], "size")}},
    lambda data: {**data, "files": {**data["files"], "models/m.gguf": "x"}},
    lambda data: {**data, "files": {**data["files"], "_internal/libz.so.1": {"symlink": 3}}},
    lambda data: _drop(data, "models"),
    lambda data: {**data, "models": {"dialogue": {"name": None}}},
    lambda data: {**data, "models": ["dialogue"]},
], ids=["a-list", "an-entry-without-size", "an-entry-that-is-a-string", "a-link-to-a-number", "no-models",
        "a-model-without-path", "models-a-list"])
def test_a_bundle_json_of_the_wrong_shape_is_refused_as_unreadable(tmp_path, tamper):
    root = _small_bundle(tmp_path / "bundle")
    path = root / manifest.NAME
    path.write_text(json.dumps(tamper(json.loads(path.read_text()))))
    with pytest.raises(manifest.BundleError, match="bundle.json is unreadable .*: rebuild the bundle"):
        manifest.verify(manifest.read(root), cache=tmp_path / "cache.json")


def test_bundle_without_pyinstaller_says_how_to_get_it(tmp_path):
    hide = ("import sys\n"
            "sys.modules['PyInstaller'] = None  # as if it were not installed\n"
            "from npcai.cli import main\n"
            f"sys.exit(main(['bundle', '--out', {str(tmp_path / 'out')!r}]))\n")
    failed = subprocess.run([sys.executable, "-c", hide], capture_output=True, text=True, timeout=60)
    assert_one_line_failure(failed, 'needs PyInstaller: pip install "npcai[bundle]"')
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("force", [(), ("--force",)], ids=["plain", "force"])
def test_bundle_into_an_existing_file_is_refused_in_one_line(tmp_path, force):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    assert_one_line_failure(run_cli("bundle", "--out", str(afile), *force), f"{afile} is a file")
    assert afile.read_text() == "mine"


def test_a_remote_model_is_refused_before_anything_is_built(tmp_path):
    refused = run_cli("bundle", "--out", str(tmp_path / "out"), "--model", "dialogue=http://127.0.0.1:9/v1",
                      timeout=20)
    assert_one_line_failure(refused, "a remote engine's URL cannot be bundled")
    assert not (tmp_path / "out").exists()


def test_an_unsupported_platform_is_refused_with_the_same_hint(monkeypatch):
    monkeypatch.setattr(platform, "machine", lambda: "sparc64")
    with pytest.raises(NpcaiError, match=r'does not support .* on sparc64.*pip install "npcai\[bundle\]"'):
        builder.check_can_build()
