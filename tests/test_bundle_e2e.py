"""The Python client's end-to-end specification (every test of test_e2e.py), run again against the bundled
sidecar (npcai bundle) started as on a player's machine: no Python on PATH, no PYTHONPATH or PYTHONHOME,
a fresh HOME and fresh XDG folders."""

from __future__ import annotations

import pytest

from bundled import player_env
from npcai import Sidecar
from npcai.bundle.builder import executable_name
from test_e2e import *  # noqa: F401,F403 (the tests, collected here again with the fixture below)

pytestmark = pytest.mark.bundle


@pytest.fixture(scope="module")
def sidecar(bundle, tmp_path_factory):
    """Replaces conftest's `npcai serve` for every test of this module."""
    home = tmp_path_factory.mktemp("player-home")
    with Sidecar(program=[str(bundle / executable_name())], env=player_env(home), inherit_env=False,
                 timeout=120) as sc:
        yield sc
