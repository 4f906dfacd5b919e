"""The remote bench's design (npcai/bench/remote.py): npcai and the direct client are timed on the
same inputs in the same cache states, and each row says how far its ratio could move on a rerun.
No engine is needed: the two sides here are recorders."""

from __future__ import annotations

import collections
import os
import subprocess
import sys

import pytest

from npcai.bench.remote import _abba, _rounds, _spread


def _recorders():
    sent: list[tuple[str, str]] = []

    def side(name: str, seconds: float):
        def call(text: str) -> float:
            sent.append((name, text))
            return seconds
        return call

    return sent, side("npcai", 0.001), side("direct", 0.002)


@pytest.mark.parametrize("n", [2, 3, 5, 6])
def test_each_side_is_timed_on_every_input_in_each_cache_state_equally_often(n):
    inputs = [f"line {k}" for k in range(n)]
    _, a, b = _recorders()
    out = _abba(1, inputs, a, b)
    seen = collections.Counter((side, state, k) for side in ("npcai", "direct")
                               for state, k in zip(out[f"{side}_state"], out[f"{side}_input"]))
    assert len(seen) == 2 * 2 * n  # every (side, state, input)
    assert set(seen.values()) == {1}
    assert out["npcai"] == [1.0] * (2 * n) and out["direct"] == [2.0] * (2 * n)


def test_a_sample_counted_as_prompt_cached_sends_what_the_request_before_it_sent():
    inputs = [f"line {k}" for k in range(6)]
    sent, a, b = _recorders()
    out = _abba(24, inputs, a, b)
    order = {"npcai": iter(out["npcai_state"]), "direct": iter(out["direct_state"])}
    timed = sent[2:]  # after the warm-up pair
    assert sent[1][1] == timed[0][1]  # the warm-up leaves the first pair's input cached
    for before, (side, text) in zip([sent[1], *timed], timed):
        state = next(order[side])
        assert (text == before[1]) == (state == "prompt_cached"), (before, side, text, state)


def test_a_row_reports_the_interval_of_its_ratio():
    same = _spread([18.0, 19.0, 20.0, 21.0, 22.0] * 4, [18.0, 19.0, 20.0, 21.0, 22.0] * 4)
    assert same["ratio_interval"][0] <= 1.0 <= same["ratio_interval"][1]
    slower = _spread([36.0, 38.0, 40.0, 42.0, 44.0] * 4, [18.0, 19.0, 20.0, 21.0, 22.0] * 4)
    assert 1.5 < slower["ratio_interval"][0] <= 2.0 <= slower["ratio_interval"][1] < 2.5
    assert slower["npcai_quartiles_ms"][1] == 40.0 and slower["direct_quartiles_ms"][1] == 20.0
    assert _spread([1.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0]) == {}  # too few to say


def test_each_round_of_streams_notes_the_cpu_other_processes_used_in_it():
    """A round taken beside a busy process measures that process too: the row's rounds say so."""
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.4: pass"

    def beside_a_busy_process() -> tuple[float, int]:
        subprocess.run([sys.executable, "-c", burn], check=True)
        return 10.0, 128

    out = _rounds(1, lambda: (20.0, 128), beside_a_busy_process, pids=[os.getpid()])
    assert out["npcai"] == [20.0] and out["direct"] == [10.0] and out["direct_tokens"] == [128]
    assert out["direct_other_cores"][0] > 0.3  # the 0.4 s of CPU the other process used, over the round
