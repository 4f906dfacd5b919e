"""The public msgpack vectors of the npm package ``msgpack-test-suite`` (MIT, github.com/kawanet/
msgpack-test-suite), for every codec in the project: the sidecar's Python decoder and the three
bridges' codecs (C++, C#, GDScript).

The package is fetched with ``npm pack`` into a cache folder at test time and its tarball is
pinned by sha256, as the Godot web runtime is (engine_bridges/godot/tests/web_runner.py): a
republished or tampered package fails instead of running. Without npm the tests skip, unless
``NPCAI_REQUIRE_GODOT_WEB`` is set (CI), where they fail: there the vectors are required.

Each vector is one value and every msgpack form of it (e.g. 1 as ``01``, ``cc-01`` ... ``d3-...``,
``ca-3f-80-00-00``). A codec must decode each form to the value, which the bridges' test
programs check by encoding the decoded value again and comparing it byte for byte with the
value's canonical (smallest) encoding, computed here. A form of a float (``ca``/``cb``) decodes to
a float, not an int; a codec that keeps float32 as float32 (C++, C#) re-encodes it as ``ca``,
one that holds every float as a double (GDScript) as ``cb``. Timestamps and other ext types
must be refused (docs/PROTOCOL.md, "msgpack subset").
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pytest

NPM_PACKAGE = "msgpack-test-suite@1.0.0"
TARBALL = "msgpack-test-suite-1.0.0.tgz"
TARBALL_SHA256 = "e4edef9dbaed2b68f7de52b27626e1798402812d45fa08a35b6005c68a90542d"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "npcai-msgpack-test-suite"
# The package's files in the order its dist JSON lists them; every one must be there.
GROUPS = ("10.nil.yaml", "11.bool.yaml", "12.binary.yaml", "20.number-positive.yaml", "21.number-negative.yaml",
          "22.number-float.yaml", "23.number-bignum.yaml", "30.string-ascii.yaml", "31.string-utf8.yaml",
          "32.string-emoji.yaml", "40.array.yaml", "41.map.yaml", "42.nested.yaml", "50.timestamp.yaml",
          "60.ext.yaml")
FORMS = 233  # msgpack forms in v1.0.0, all groups together
REFUSED = "refuse"


@dataclass(frozen=True)
class Form:
    """One msgpack encoding of one vector's value."""

    name: str        # e.g. "20.number-positive.1.cc": group, value index, first byte
    data: bytes      # the form's bytes
    value: Any       # the value a decoder must produce; a Float for float forms; None if refused
    refused: bool    # ext or timestamp: the decoder must refuse it


@dataclass(frozen=True)
class Float:
    """A float decoded from a ``ca`` (bits 32) or ``cb`` (bits 64) form."""

    value: float
    bits: int


def _fetch() -> Path:
    """The verified tarball in the cache, fetched with npm when it is not there yet."""
    tarball = CACHE / TARBALL
    if not tarball.is_file():
        if shutil.which("npm") is None:
            raise FileNotFoundError("npm")
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "pack", NPM_PACKAGE, "--silent"], cwd=CACHE, check=True, capture_output=True,
                       text=True, timeout=300)
    got = hashlib.sha256(tarball.read_bytes()).hexdigest()
    if got != TARBALL_SHA256:
        raise AssertionError(f"{tarball}: sha256 {got} is not the pinned {TARBALL_SHA256} ({NPM_PACKAGE})")
    return tarball


def load_groups() -> dict[str, list[dict[str, Any]]]:
    """The package's ``dist/msgpack-test-suite.json``; skips (or fails, where required) without it."""
    required = bool(os.environ.get("NPCAI_REQUIRE_GODOT_WEB"))
    try:
        tarball = _fetch()
    except FileNotFoundError:
        message = f"npm not found: cannot fetch {NPM_PACKAGE} (the public msgpack vectors)"
        if required:
            pytest.fail(message + "; NPCAI_REQUIRE_GODOT_WEB is set, so they are required")
        pytest.skip(message)
    except subprocess.SubprocessError as exc:
        pytest.fail(f"npm pack {NPM_PACKAGE} failed: {exc}")
    with tarfile.open(tarball) as tar:
        member = tar.extractfile("package/dist/msgpack-test-suite.json")
        assert member is not None
        groups = json.loads(member.read())
    assert tuple(groups) == GROUPS, list(groups)
    return groups


def _expected(entry: dict[str, Any], first_byte: int) -> Any:
    if "nil" in entry:
        return None
    if "bool" in entry:
        return entry["bool"]
    if "binary" in entry:
        return bytes.fromhex(entry["binary"].replace("-", ""))
    if "number" in entry or "bignum" in entry:
        number = int(entry["bignum"]) if "bignum" in entry else entry["number"]
        if first_byte in (0xCA, 0xCB):
            return Float(float(entry.get("number", number)), 32 if first_byte == 0xCA else 64)
        assert isinstance(number, int) or float(number).is_integer(), entry
        return int(number)
    for key in ("string", "array", "map"):
        if key in entry:
            return entry[key]
    raise AssertionError(f"unknown vector {entry}")


def forms(groups: dict[str, list[dict[str, Any]]]) -> list[Form]:
    out = []
    for group, entries in groups.items():
        stem = group.removesuffix(".yaml")
        for i, entry in enumerate(entries):
            for hexed in entry["msgpack"]:
                data = bytes.fromhex(hexed.replace("-", ""))
                refused = "timestamp" in entry or "ext" in entry
                value = None if refused else _expected(entry, data[0])
                out.append(Form(f"{stem}.{i}.{data[0]:02x}", data, value, refused))
    assert len(out) == FORMS and len({f.name for f in out}) == FORMS, len(out)
    return out


def python_value(value: Any) -> Any:
    """The value as msgpack-python decodes it (Float to float)."""
    if isinstance(value, Float):
        return value.value
    if isinstance(value, list):
        return [python_value(v) for v in value]
    if isinstance(value, dict):
        return {k: python_value(v) for k, v in value.items()}
    return value


def canonical(value: Any, keep_float32: bool) -> bytes:
    """The smallest encoding of ``value`` (docs/PROTOCOL.md): what a codec writes after decoding it."""
    if isinstance(value, Float):
        if value.bits == 32 and keep_float32:
            return b"\xca" + struct.pack(">f", value.value)
        return b"\xcb" + struct.pack(">d", value.value)
    if isinstance(value, list):
        return _header(len(value), 0x90, 0xDC) + b"".join(canonical(v, keep_float32) for v in value)
    if isinstance(value, dict):
        return _header(len(value), 0x80, 0xDE) + b"".join(
            canonical(k, keep_float32) + canonical(v, keep_float32) for k, v in value.items())
    return msgpack.packb(value, use_bin_type=True)


def _header(n: int, fix: int, code16: int) -> bytes:
    if n < 16:
        return bytes([fix | n])
    return bytes([code16]) + struct.pack(">H", n) if n <= 0xFFFF else bytes([code16 + 1]) + struct.pack(">I", n)


def write_tsv(path: Path, all_forms: list[Form], keep_float32: bool) -> Path:
    """``name <TAB> form hex <TAB> canonical hex of the decoded value, or "refuse"``, one form a line."""
    lines = ["# msgpack-test-suite 1.0.0 (npm), converted by tests/msgpack_suite.py"]
    for f in all_forms:
        want = REFUSED if f.refused else canonical(f.value, keep_float32).hex()
        lines.append(f"{f.name}\t{f.data.hex()}\t{want}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def corrupt(path: Path, out: Path) -> tuple[Path, list[str]]:
    """A copy of a converted file with a few expectations made wrong (one per kind of value), so a
    test can show that its codec runner reports a decoding that does not match."""
    rows = [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines() if not line.startswith("#")]
    spoiled: list[str] = []
    for prefix in ("20.number-positive.4.", "21.number-negative.7.", "22.number-float.0.ca", "31.string-utf8.0.",
                   "12.binary.2.", "41.map.1.", "60.ext.0."):
        row = next(r for r in rows if r[0].startswith(prefix))
        # A wrong value of the right shape: the last byte changed (an ext form: "decodes to nil").
        row[2] = "c0" if row[2] == REFUSED else row[2][:-2] + f"{(int(row[2][-2:], 16) ^ 1):02x}"
        spoiled.append(row[0])
    out.write_text("\n".join("\t".join(r) for r in rows) + "\n", encoding="utf-8")
    return out, spoiled


def assert_report(output: str, all_forms: list[Form], codec: str) -> None:
    """A runner prints ``ok suite NAME`` or ``FAIL suite NAME: why`` per form; every form must pass."""
    lines = output.splitlines()
    failed = [line for line in lines if line.startswith("FAIL suite ")]
    passed = {line[len("ok suite "):].strip() for line in lines if line.startswith("ok suite ")}
    assert not failed, f"{codec}: {len(failed)} of {len(all_forms)} msgpack-test-suite forms failed:\n" + \
        "\n".join(failed[:40])
    missing = [f.name for f in all_forms if f.name not in passed]
    assert not missing, f"{codec}: forms not reported as passing: {missing[:40]}\n{output[-3000:]}"
