"""The package's layers: a light face for games and tools, then sidecar, then model; imports only point down."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import npcai

PACKAGE = Path(npcai.__file__).resolve().parent
HEAVY = ("llama_cpp", "numba", "llvmlite", "llguidance", "numpy")
FACE = ("npcai.client", "npcai.launcher", "npcai.protocol", "npcai.errors")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Each npcai module -> the npcai modules it imports at module level (lazy imports inside functions excluded)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.If):  # `if TYPE_CHECKING:` blocks are annotations only
                continue
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            found |= {t for t in targets if t in modules and t != name and t != "npcai"}
        graph[name] = found
    return graph


def test_importing_the_client_loads_no_model_code():
    code = ("import sys, time, json; t = time.perf_counter(); from npcai import Client, Sidecar; "
            "ms = (time.perf_counter() - t) * 1e3; "
            f"print(json.dumps({{'ms': ms, 'heavy': [m for m in {HEAVY!r} if m in sys.modules]}}))")
    out = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                    cwd=PACKAGE.parent).stdout)
    assert out["heavy"] == [], f"`from npcai import Client` loaded {out['heavy']}"


def test_the_face_imports_neither_the_sidecar_nor_the_model():
    graph = _imports()
    for face in FACE:
        deep = {m for m in graph[face] if m.startswith(("npcai.sidecar", "npcai.model", "npcai.bench"))}
        assert not deep, f"{face} imports {sorted(deep)}"


def test_the_model_layer_never_reaches_up_into_the_sidecar():
    graph = _imports()
    for name, deps in graph.items():
        if name.startswith("npcai.model"):
            up = {m for m in deps if m.startswith(("npcai.sidecar", "npcai.bench"))}
            assert not up, f"{name} imports {sorted(up)}"


def test_the_package_has_no_import_cycles():
    graph = _imports()
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(node):] + [node]))
        if node in done:
            return
        for dep in sorted(graph.get(node, ())):
            visit(dep, path + [node])
        done.add(node)

    for name in sorted(graph):
        visit(name, [])
