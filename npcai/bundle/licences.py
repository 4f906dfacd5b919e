"""The licences a bundle carries: llama.cpp's, each bundled model's terms, and every bundled Python
distribution's own licence files (from its dist-info), so a game can pass them on to its players."""

from __future__ import annotations

import shutil
import sys
from importlib import metadata, resources
from pathlib import Path

#: Each catalog model's terms: (what the manifest says, the texts shipped beside it).
MODEL_TERMS = {
    "smollm2-135m": ("Apache-2.0", ("SmolLM2-NOTICE.txt", "Apache-2.0.txt")),
    "gemma3-270m": ("Gemma Terms of Use", ("Gemma-NOTICE.txt",)),
}
UNKNOWN_TERMS = "the model file's own terms (not from the npcai catalog: ship its licence yourself)"
_MARKERS = ("LICEN", "COPYING", "NOTICE", "AUTHORS")


def model_terms(name: str | None) -> str:
    return MODEL_TERMS[name][0] if name in MODEL_TERMS else UNKNOWN_TERMS


def write_licences(target: Path, internal: Path, model_names: list[str | None],
                   archived: set[str] = frozenset()) -> list[str]:
    """Fill ``target`` with the licences of what the bundle holds, in ``internal`` (PyInstaller's library
    folder) or among the ``archived`` top-level modules (``archived_modules``), and of the models; return
    the names of the Python distributions whose licences were found."""
    target.mkdir(parents=True, exist_ok=True)
    texts = resources.files("npcai.bundle") / "licenses"
    wanted = {"llama.cpp-MIT.txt", *(f for n in model_names if n in MODEL_TERMS for f in MODEL_TERMS[n][1])}
    for name in sorted(wanted):
        (target / name).write_bytes((texts / name).read_bytes())
    python = Path(sys.base_prefix) / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "LICENSE.txt"
    for candidate in (python, Path(sys.base_prefix) / "LICENSE.txt"):  # POSIX layout, Windows layout
        if candidate.is_file():
            shutil.copyfile(candidate, target / "Python-LICENSE.txt")
            break
    found = []
    for dist in _bundled_distributions(internal, archived):
        files = [f for f in dist.files or () if ".dist-info" in str(f) and any(m in f.name.upper() for m in _MARKERS)]
        if not files:
            continue
        folder = target / dist.metadata["Name"]
        folder.mkdir(exist_ok=True)
        for f in files:
            shutil.copyfile(Path(dist.locate_file(f)), folder / f.name)
        found.append(dist.metadata["Name"])
    return found


def archived_modules(executable: Path) -> set[str]:
    """Top-level names of the modules PyInstaller archived inside ``executable``. Pure-Python packages
    (jinja2, platformdirs, gguf…) live there, not as folders in ``_internal``: found by folder alone,
    their licences were left out."""
    from PyInstaller.archive.readers import CArchiveReader

    archive = CArchiveReader(str(executable))
    return {module.split(".")[0] for name in archive.toc if name.endswith(".pyz")
            for module in archive.open_embedded_archive(name).toc}


def _bundled_distributions(internal: Path, archived: set[str]):
    """Installed distributions with a top-level module or package inside ``internal`` or among ``archived``."""
    seen = set()
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if not name or name.lower() in seen:
            continue
        tops = {Path(str(f)).parts[0] for f in dist.files or () if ".dist-info" not in Path(str(f)).parts[0]}
        tops |= {t.split(".")[0] for t in tops}
        tops -= {"", "..", "bin", "include", "share"}
        if any(t in archived or (internal / t).exists() for t in tops):
            seen.add(name.lower())
            yield dist
