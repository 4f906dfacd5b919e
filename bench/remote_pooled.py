"""Issue 16's overhead targets over several recorded `npcai bench --only remote` runs of the same code.

One run's ratio of p50s swings by about as much as the target's margin (runs 6-15, docs/PERFORMANCE.md),
so this pools the raw samples of several runs and gives, per row and cache state, two estimates with a
90 % bootstrap interval (resampling the pairs):

- the ratio of the pooled medians (npcai's p50 ÷ the direct client's), as the bench reports one run;
- the median of the paired ratios: in each round of the bench's ABBA chain each side sends every input
  once in each cache state (``npcai_input`` / ``direct_input``), so each npcai sample is paired with the
  direct sample of the same round, input and state, taken moments apart; this is the estimate a slow
  stretch of the machine moves least.

    python bench/remote_pooled.py docs/bench-remote-smollm2-135m-run11.json docs/bench-remote-smollm2-135m-run13.json ...
"""

from __future__ import annotations

import json
import random
import statistics
import sys

_ROWS = ("first_token_ms", "grammar_decision_ms", "choice_decision_ms")


def _interval(pairs: list[tuple[float, float]], stat, rng: random.Random, draws: int = 4000) -> tuple[float, float]:
    values = sorted(stat([pairs[rng.randrange(len(pairs))] for _ in pairs]) for _ in range(draws))
    return values[int(0.05 * draws)], values[int(0.95 * draws) - 1]


def _ratio_of_medians(pairs: list[tuple[float, float]]) -> float:
    return statistics.median(a for a, _ in pairs) / statistics.median(b for _, b in pairs)


def _median_paired_ratio(pairs: list[tuple[float, float]]) -> float:
    return statistics.median(a / b for a, b in pairs)


def _by_input(samples: dict, side: str, state: str) -> dict[int, list[float]]:
    """One side's samples in ``state``, by input, in the order they were taken (one per round)."""
    out: dict[int, list[float]] = {}
    for value, k, s in zip(samples[side], samples[f"{side}_input"], samples[f"{side}_state"]):
        if s == state:
            out.setdefault(k, []).append(value)
    return out


def pooled(reports: list[dict]) -> list[dict]:
    """Each row and state of the pooled runs: n, both estimates and their 90 % intervals."""
    rng = random.Random(0)
    raws = [next(iter(r["models"].values()))["raw"]["remote"] for r in reports]
    out = []
    for row in _ROWS:
        for state in sorted({s for raw in raws for s in raw[row]["npcai_state"]}):
            pairs = []
            for raw in raws:
                mine, theirs = _by_input(raw[row], "npcai", state), _by_input(raw[row], "direct", state)
                assert mine.keys() == theirs.keys()
                pairs += [pair for k in mine for pair in zip(mine[k], theirs[k], strict=True)]
            out.append({"row": row, "state": state, "n": len(pairs),
                        "ratio_of_medians": (_ratio_of_medians(pairs), *_interval(pairs, _ratio_of_medians, rng)),
                        "median_paired_ratio": (_median_paired_ratio(pairs),
                                                *_interval(pairs, _median_paired_ratio, rng))})
    streams = [(a, b) for raw in raws
               for a, b in zip(raw["streams_tokens_per_s"]["npcai"], raw["streams_tokens_per_s"]["direct"])]
    out.append({"row": "streams_tokens_per_s", "state": "8 streams", "n": len(streams),
                "ratio_of_medians": (_ratio_of_medians(streams), *_interval(streams, _ratio_of_medians, rng)),
                "median_paired_ratio": (_median_paired_ratio(streams),
                                        *_interval(streams, _median_paired_ratio, rng))})
    return out


def main() -> None:
    reports = [json.loads(open(path).read()) for path in sys.argv[1:]]
    print("row  state  n  ratio of medians [90 %]  median paired ratio [90 %]")
    for r in pooled(reports):
        a, b = r["ratio_of_medians"], r["median_paired_ratio"]
        print(f"{r['row']}  {r['state']}  {r['n']}  {a[0]:.3f} [{a[1]:.3f}-{a[2]:.3f}]  {b[0]:.3f} [{b[1]:.3f}-{b[2]:.3f}]")


if __name__ == "__main__":
    main()
