"""Shared fixtures: one real sidecar (real default model) per test session, fresh clients per test."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from npcai import Client, Sidecar
from npcai.model.catalog import DEFAULT_MODEL, resolve


@pytest.fixture(scope="session")
def model_path():
    """The default model's GGUF file, pulled on first use like `npcai serve` does."""
    return resolve(DEFAULT_MODEL)


@pytest.fixture(scope="module")
def model(model_path):
    """The default model loaded in this process (llama.cpp directly, no sidecar), for one test module."""
    from npcai.model.native import Model

    m = Model(model_path)
    yield m
    m.close()


@pytest.fixture(scope="session")
def sidecar(model_path):
    with Sidecar() as sc:
        yield sc


@pytest.fixture
def client(sidecar):
    with Client(sidecar.endpoint) as c:
        c.hello("pytest")
        yield c


@pytest.fixture(scope="session")
def village():
    return json.loads(resources.files("npcai").joinpath("scenarios/village.json").read_text())


@pytest.fixture
def brom(client, village):
    """A freshly (re)defined blacksmith NPC; returns its id."""
    client.npc("brom", village["npcs"]["brom"]["persona"], seed=11)
    return "brom"


@pytest.fixture(scope="session")
def bundle(model_path):
    """The default model's self-contained sidecar folder (npcai bundle), built once and cached across runs."""
    from bundled import built_bundle

    return built_bundle(model_path)
