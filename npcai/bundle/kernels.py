"""The sampling kernel compiled ahead of time (numba.pycc) at bundle time, so that the bundled sidecar
carries neither numba nor LLVM (llvmlite alone is 174 MB) and compiles nothing when it starts."""

from __future__ import annotations

from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

from npcai.errors import NpcaiError

MODULE = "_sampling_aot"  # imported as npcai.model._sampling_aot by npcai/model/sampling.py


def compile_sampling(out_dir: Path) -> Path:
    """Compile ``sample_token`` for this platform into ``out_dir``; return the extension module's path."""
    from numba.pycc import CC

    from npcai.model import sampling

    out_dir.mkdir(parents=True, exist_ok=True)
    cc = CC(MODULE)
    cc.output_dir = str(out_dir)
    cc.export("sample_token", sampling.AOT_SIGNATURE)(sampling.sample_token.py_func)
    try:
        cc.compile()
    except Exception as exc:  # distutils/setuptools raise their own kinds when no C compiler is found
        raise NpcaiError(f"could not compile the sampling kernel ahead of time ({exc}): npcai bundle needs the "
                         "C compiler numba uses (gcc or clang; MSVC Build Tools on Windows)") from None
    built = [p for suffix in EXTENSION_SUFFIXES if (p := out_dir / f"{MODULE}{suffix}").is_file()]
    if not built:
        raise NpcaiError(f"numba built no {MODULE} module in {out_dir}")
    return built[0]
