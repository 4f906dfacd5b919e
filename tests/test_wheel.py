"""A normal (non-editable) install runs: the wheel carries what the sidecar needs, grammars included.

The other tests import the checkout (``pip install -e``), which hides anything the wheel leaves
out. This one builds the wheel the way the README says, installs it into a fresh virtual
environment, and talks to the installed ``npcai serve``: hello, say, and a decide with a named
grammar. The venv also sees the site-packages of the Python running the tests, only so that
llama-cpp-python and the other native dependencies need not be built again (the wheel goes in
with ``--no-deps``); the test checks that the venv imports npcai from the wheel, not from the
checkout that the test run itself imports.

Slow (marked ``wheel``): building and installing take some seconds, and the sidecar loads a model.
"""

from __future__ import annotations

import os
import re
import shutil
import site
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest

from npcai import Client

pytestmark = pytest.mark.wheel

ROOT = Path(__file__).resolve().parent.parent
EMOTE = re.compile(r"\[(happy|sad|angry|afraid|surprised|disgusted|neutral|smug):[1-5]\]")
READY = "NPCAI READY "
BIN = "Scripts" if os.name == "nt" else "bin"


def _run(cmd: list[str], *, cwd: Path, env: dict[str, str], timeout: float) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """Build the wheel from a copy of the checkout and install it into a fresh venv; returns the venv."""
    tmp = tmp_path_factory.mktemp("wheel")
    # A copy, so the build's build/ and *.egg-info never land in (or race with) the checkout.
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".venv", "node_modules"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    dist = tmp / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(src)],
         cwd=tmp, env=env, timeout=300)
    (wheel,) = dist.glob("npcai-*.whl")

    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {p.name for p in (ROOT / "grammars").glob("*.gbnf")}
    assert shipped and {f"npcai/grammars/{n}" for n in shipped} <= names, sorted(names)
    assert not any(n.startswith("grammars/") for n in names), "grammars must ride inside the npcai package"
    # pyproject.toml lists the packages by name: a new sub-package left off that list fails here.
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "npcai").rglob("*.py")}
    assert modules <= names, f"missing from the wheel: {sorted(modules - names)}"

    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
         cwd=tmp, env=env, timeout=120)
    python = venv / BIN / "python"
    # Run from a venv (as the README says), pytest's own site-packages hold the dependencies, and a
    # venv made from it sees only the base interpreter's: hand it those too, after its own.
    purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                   cwd=tmp, env=env, timeout=60).strip()
    Path(purelib, "_npcai_test_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    # The test run's pip (seen through those site-packages), run by the venv's python, installs into
    # the venv. --ignore-installed: the npcai the test run imports (editable) is neither reused nor touched.
    _run([str(python), "-m", "pip", "install", "--no-deps", "--ignore-installed", "-q",
          str(wheel)], cwd=tmp, env=env, timeout=300)
    return venv, env


def test_the_venv_imports_npcai_from_the_wheel_and_finds_its_grammars(installed):
    venv, env = installed
    out = _run([str(venv / BIN / "python"), "-c",
                "import sysconfig, npcai, npcai.sidecar.settings as s; "
                "print(sysconfig.get_path('purelib')); print(npcai.__file__); print(s.DEFAULT_GRAMMAR_DIR)"],
               cwd=venv, env=env, timeout=60)
    purelib, module, grammar_dir = (Path(line) for line in out.splitlines())
    assert purelib.is_relative_to(venv.resolve()) or purelib.is_relative_to(venv)
    assert module.is_relative_to(purelib), f"imported {module}, not the wheel in {purelib}"
    assert grammar_dir.is_relative_to(purelib) and (grammar_dir / "emote.gbnf").is_file(), grammar_dir


def test_the_installed_sidecar_serves_hello_say_and_a_named_grammar(installed, model_path):
    venv, env = installed
    proc = subprocess.Popen([str(venv / BIN / "npcai"), "serve", "--parent-pid", str(os.getpid())],
                            cwd=venv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        found: list[str] = []
        errors: list[str] = []

        def read_ready() -> None:
            for line in proc.stdout:  # type: ignore[union-attr]
                if line.startswith(READY):
                    found.append(line[len(READY):].strip())
                    return

        def drain_stderr() -> None:
            for line in proc.stderr:  # type: ignore[union-attr]
                errors.append(line.rstrip())

        reader = threading.Thread(target=read_ready, daemon=True)
        reader.start()
        threading.Thread(target=drain_stderr, daemon=True).start()
        reader.join(120)
        if not found:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
            pytest.fail(f"the installed sidecar never became ready (exit {proc.poll()}):\n" + "\n".join(errors))

        with Client(found[0]) as c:
            hello = c.hello("test_wheel")
            assert hello["protocol"] == 1 and hello["server"].startswith("npcai") and hello["models"]
            c.npc("brom", "You are Brom, the village blacksmith. You answer briefly.", seed=3)
            said = c.say("brom", "Good morning! Can you fix my sword?", max_tokens=24, timeout=60)
            assert said["event"] == "done" and said["text"].strip()
            decided = c.decide("The player insults your mother.", grammar="emote", seed=1, timeout=60)
            assert EMOTE.fullmatch(decided["value"]), decided
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
