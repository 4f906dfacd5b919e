"""Micro-benchmarks (pytest-benchmark). Run: pytest bench --benchmark-enable [--benchmark-json=out.json].

Without --benchmark-enable (the project default) each runs once, as a correctness check.
"""

import pytest

from npcai.model.catalog import resolve
from npcai.model.native import Model


@pytest.fixture(scope="session", params=["smollm2-135m", "gemma3-270m"])
def model(request):
    m = Model(resolve(request.param))
    m.name = request.param
    yield m
    m.close()
