"""The bundled sidecar's entry point: `npcai-sidecar [serve] FLAGS` is `npcai serve FLAGS`, run from its folder.

Before anything loads, the folder is checked against bundle.json (one line and exit code 2 when a file is
missing, truncated or altered); catalog names then resolve to the bundled models, and with no --model the
bundled models serve their roles.
"""

from __future__ import annotations

import sys
from pathlib import Path

from npcai.bundle import manifest

PROG = "npcai-sidecar"


def bundle_root() -> Path:
    """The folder holding the executable (a one-folder build runs where it was installed)."""
    return Path(sys.executable).resolve().parent


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["serve"]:  # launchers written for `npcai serve` may pass the word: it changes nothing
        args = args[1:]
    from npcai.cli import serve_main

    if any(a in ("-h", "--help") for a in args):
        return serve_main(args, prog=PROG)
    try:
        bundle = manifest.read(bundle_root())
        manifest.verify(bundle)
    except manifest.BundleError as err:
        print(f"npcai: {err.message}", file=sys.stderr)
        return 2
    from npcai.model import catalog

    catalog.use_bundled(bundle.models_dir, frozenset(rel.split("/", 1)[1] for rel in bundle.data["files"]
                                                     if rel.startswith("models/")))
    if not any(a == "--model" or a.startswith("--model=") for a in args):
        for role in bundle.models:
            args += ["--model", f"{role}={bundle.model_path(role)}"]
    return serve_main(args, prog=PROG)
