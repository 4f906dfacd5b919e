"""The public msgpack vectors (npm ``msgpack-test-suite`` 1.0.0, pinned by sha256; tests/msgpack_suite.py)
through the sidecar's own decoder, ``npcai.protocol.decode_frame``: every form decodes to its value, of
the right type, and every ext and timestamp form is refused with ``bad_request`` "ext types are not
supported". The bridges' codecs run the same vectors in tests/test_bridge_{unreal,unity,godot}.py."""

from __future__ import annotations

import math

import msgpack
import pytest
from msgpack_suite import Float, Form, canonical, forms, load_groups, python_value

from npcai.errors import NpcaiError
from npcai.protocol import Limits, decode_frame, encode


@pytest.fixture(scope="module")
def suite() -> list[Form]:
    return forms(load_groups())


def _same(got, want) -> bool:
    """Equal values of equal msgpack types (1 is not 1.0, True is not 1)."""
    if isinstance(want, Float):
        return type(got) is float and (got == want.value or (math.isnan(got) and math.isnan(want.value)))
    if type(got) is not type(want):
        return False
    if isinstance(want, list):
        return len(got) == len(want) and all(_same(g, w) for g, w in zip(got, want))
    if isinstance(want, dict):
        return list(got) == list(want) and all(_same(got[k], w) for k, w in want.items())
    return got == want


def test_the_suite_is_the_pinned_one(suite):
    assert len(suite) == 233 and len({f.name for f in suite}) == 233
    assert sum(f.refused for f in suite) == 30  # 19 timestamps, 11 other ext forms


def test_decode_frame_reads_every_form_as_its_value(suite):
    """Each form as the value of a request field: ``{"x": <form>}``, decoded by the sidecar."""
    limits = Limits()
    wrong = []
    for form in suite:
        if form.refused:
            continue
        frame = b"\x81\xa1x" + form.data
        try:
            got = decode_frame(frame, limits)["x"]
        except NpcaiError as err:
            wrong.append(f"{form.name} ({form.data.hex()}): refused: {err.code}: {err.message}")
            continue
        if not _same(got, form.value):
            wrong.append(f"{form.name} ({form.data.hex()}): {got!r}, expected {form.value!r}")
    assert not wrong, "\n".join(wrong)


def test_decode_frame_refuses_every_ext_and_timestamp(suite):
    limits = Limits()
    refused = [f for f in suite if f.refused]
    assert refused
    for form in refused:
        for frame in (b"\x81\xa1x" + form.data, b"\x82\xa1x\x91" + form.data + b"\xa1y\x01"):
            with pytest.raises(NpcaiError) as err:
                decode_frame(frame, limits)
            assert (err.value.code, err.value.message) == ("bad_request", "ext types are not supported"), form.name


def test_the_sidecar_encodes_each_value_canonically(suite):
    """What decode_frame read, the sidecar's encoder writes back in the smallest form (floats as
    float64): the canonical form of every value, byte for byte."""
    wrong = []
    for form in suite:
        if form.refused:
            continue
        got = encode({"x": python_value(form.value)})
        want = b"\x81\xa1x" + canonical(form.value, keep_float32=False)
        if got != want:
            wrong.append(f"{form.name}: {got.hex()}, expected {want.hex()}")
    assert not wrong, "\n".join(wrong)


def test_the_check_fails_on_a_wrong_decoding(suite):
    """The comparison is strict: a decoder that reads a float form as an int, or an int with the
    wrong sign, would fail the test above."""
    one = next(f for f in suite if f.name == "20.number-positive.1.ca")
    assert not _same(1, one.value) and _same(1.0, one.value)
    big = next(f for f in suite if f.name.startswith("23.number-bignum.8.cf"))
    assert big.value == 2**64 - 1 and not _same(-1, big.value)
    assert _same(msgpack.unpackb(big.data), big.value)
