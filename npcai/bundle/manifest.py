"""bundle.json: what a bundle holds (versions, platform, models by role, every file with size and sha256),
and the check at start that it is all still there, unchanged.

The check is cheap on every start after the first: each file's size is compared every time, and its
sha256 is computed only when the file's (size, mtime) differ from the last time it was verified, as
remembered in the per-user cache dir (never beside the executable: a game's folder may be read-only).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import posixpath
import sys
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from npcai.errors import NpcaiError
from npcai.model.catalog import sha256_of

NAME = "bundle.json"
FORMAT = 1


class BundleError(NpcaiError):
    """The bundle on disk is not the one that was built: a file is missing, truncated or altered."""


@dataclass(frozen=True)
class Manifest:
    root: Path
    data: dict

    @property
    def models(self) -> dict[str, dict]:
        """role -> {"name", "path" (relative to the bundle), "license"}."""
        return self.data["models"]

    def model_path(self, role: str) -> Path:
        return self.root / self.data["models"][role]["path"]

    @property
    def models_dir(self) -> Path:
        return self.root / "models"


def platform_tag() -> dict[str, str]:
    """Where a bundle runs: a bundle is built for the platform it is built on."""
    return {"system": platform.system(), "machine": platform.machine(),
            "python": ".".join(map(str, sys.version_info[:3]))}


def write(root: Path, *, models: dict[str, dict], versions: dict[str, object]) -> Path:
    """Describe every file under ``root`` (except the manifest itself) in ``root/bundle.json``."""
    files: dict[str, dict] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink()):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():  # PyInstaller links some libraries to the copy it keeps (not on Windows)
            files[rel] = {"symlink": Path(os.readlink(path)).as_posix()}
        elif rel != NAME:
            files[rel] = {"size": path.stat().st_size, "sha256": sha256_of(path)}
    data = {"format": FORMAT, **versions, "platform": platform_tag(), "models": models, "files": files}
    target = root / NAME
    target.write_text(json.dumps(data, indent=1) + "\n")
    return target


def read(root: Path) -> Manifest:
    path = root / NAME
    try:
        data = json.loads(path.read_text())
        if wrong := _shape_error(data):
            raise ValueError(wrong)
    except FileNotFoundError:
        raise BundleError(f"{path} is missing: this folder is not a complete npcai bundle") from None
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path} is unreadable ({exc}): rebuild the bundle with npcai bundle") from None
    return Manifest(root, data)


def _shape_error(data: object) -> str:
    """What is missing or of the wrong type among the fields the check and the start read ("" when nothing
    is): a half-written or hand-edited file is one line, not a traceback."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return "unknown format"
    files, models = data.get("files"), data.get("models")
    if not isinstance(files, dict) or not isinstance(models, dict):
        return "no files or models table"
    for rel, entry in files.items():
        if not (isinstance(entry, dict) and (isinstance(entry.get("symlink"), str) or (
                isinstance(entry.get("size"), int) and isinstance(entry.get("sha256"), str)))):
            return f"bad entry for {rel}"
    for role, model in models.items():
        if not (isinstance(model, dict) and isinstance(model.get("path"), str)):
            return f"bad model for {role}"
    return ""


def verify(manifest: Manifest, *, cache: Path | None = None) -> None:
    """Raise BundleError naming the first file that is missing, of the wrong size or altered."""
    cache = cache if cache is not None else _cache_file(manifest.root)
    known = _load(cache)
    seen: dict[str, list] = {}
    files = manifest.data["files"]
    for rel, entry in files.items():
        path = manifest.root / rel
        if "symlink" in entry:
            if path.is_symlink() and Path(os.readlink(path)).as_posix() == entry["symlink"]:
                continue  # its target is an entry of its own
            if path.is_symlink() or not path.exists():
                raise BundleError(f"bundled link {rel} is missing or changed: reinstall the game's npcai folder")
            entry = _copied_link(files, rel)  # a copy that followed links holds the target's bytes instead
        try:
            st = path.stat()
        except OSError:
            raise BundleError(f"bundled file {rel} is missing: reinstall the game's npcai folder") from None
        if st.st_size != entry["size"]:
            raise BundleError(f"bundled file {rel} is {st.st_size} bytes, expected {entry['size']} (truncated or "
                              "replaced): reinstall the game's npcai folder")
        stamp = [st.st_size, st.st_mtime_ns, entry["sha256"]]
        if known.get(rel) != stamp:
            if sha256_of(path) != entry["sha256"]:
                raise BundleError(f"bundled file {rel} is corrupted (sha256 differs from {NAME}): "
                                  "reinstall the game's npcai folder")
        seen[rel] = stamp
    if seen != known:
        _store(cache, seen)


def _copied_link(files: dict[str, dict], rel: str) -> dict:
    """The entry of the file the link ``rel`` points to, through links to links (cp -rL, a zip without
    --symlinks, Godot's export and store uploaders all turn a link into a copy of its target)."""
    for _ in range(len(files)):
        target = posixpath.normpath(posixpath.join(posixpath.dirname(rel), files[rel]["symlink"]))
        entry = files.get(target)
        if entry is None:
            break
        if "symlink" not in entry:
            return entry
        rel = target
    raise BundleError(f"bundled link {rel} points to nothing listed in {NAME}: rebuild the bundle with npcai bundle")


def _cache_file(root: Path) -> Path:
    """One record per bundle folder, in the per-user cache dir."""
    key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    base = os.environ.get("NPCAI_CACHE") or platformdirs.user_cache_dir("npcai", appauthor=False)
    return Path(base) / "bundles" / f"{key}.json"


def _load(cache: Path) -> dict[str, list]:
    try:
        data = json.loads(cache.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _store(cache: Path, seen: dict[str, list]) -> None:
    """Remember what was verified; a cache that cannot be written only costs the next start a re-check."""
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(seen))
        os.replace(tmp, cache)
    except OSError:
        pass
