"""The bundled sidecar under test: built once by `npcai bundle` and kept between runs under a key made of
everything that goes into it (npcai's sources, the grammars, the installed packages' versions, the model),
and the scrubbed environment a player's machine gives it: no Python on PATH, no PYTHONPATH or PYTHONHOME,
a fresh HOME and fresh XDG folders."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from npcai.bundle.builder import executable_name
from npcai.model import catalog

ROOT = Path(__file__).resolve().parent.parent
_PACKAGES = ("pyinstaller", "pyinstaller-hooks-contrib", "llama_cpp_python", "numpy", "numba", "pyzmq",
             "llguidance", "msgpack", "platformdirs", "jinja2", "diskcache")


def source_key(model: Path) -> str:
    """Changes whenever a rebuild could give a different bundle."""
    h = hashlib.sha256(sys.version.encode())
    for folder in (ROOT / "npcai", ROOT / "grammars"):
        for path in sorted(folder.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and "bench" not in path.parts:  # bench: not bundled
                h.update(path.relative_to(ROOT).as_posix().encode() + path.read_bytes())
    for name in _PACKAGES:
        try:
            h.update(f"{name}={metadata.version(name)}".encode())
        except metadata.PackageNotFoundError:
            h.update(name.encode())
    st = model.stat()
    h.update(f"{model.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


def built_bundle(model: Path) -> Path:
    """The bundle of the default model: from the cache when its key matches, else built (about 2 minutes)."""
    store = catalog.cache_dir().parent / "test-bundles"
    folder = store / source_key(model)
    if not (folder / executable_name()).is_file():
        if store.is_dir():
            shutil.rmtree(store)  # one bundle kept at a time: each is about 300 MB
        building = store / ".building"
        done = subprocess.run([sys.executable, "-m", "npcai", "bundle", "--out", str(building)],
                              capture_output=True, text=True, timeout=1200, cwd=ROOT)
        assert done.returncode == 0, f"npcai bundle failed:\n{done.stdout}{done.stderr[-4000:]}"
        os.replace(building, folder)
    return folder


def player_env(home: Path) -> dict[str, str]:
    """A player's machine as far as the sidecar can tell: nothing of this machine's Python in reach."""
    empty_bin = home / "bin"
    empty_bin.mkdir(parents=True, exist_ok=True)
    return {"HOME": str(home), "PATH": str(empty_bin), "XDG_CACHE_HOME": str(home / ".cache"),
            "XDG_CONFIG_HOME": str(home / ".config"), "XDG_DATA_HOME": str(home / ".local" / "share"),
            "LANG": "C.UTF-8"}


def linked_copy(bundle: Path, target: Path) -> Path:
    """A copy of the bundle made of hard links where the filesystem allows (instant); ``own_copy`` a file
    before altering it."""
    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(bundle, target, symlinks=True, copy_function=link)
    return target


def own_copy(path: Path) -> None:
    """Give a linked file its own bytes, so that altering it leaves the cached bundle alone."""
    data = path.read_bytes()
    mode = path.stat().st_mode
    path.unlink()
    path.write_bytes(data)
    path.chmod(mode)
