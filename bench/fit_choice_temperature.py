"""Fit each model's choice temperature from a quality report, on calibration items only.

The calibration items are the game set's worked examples and COPA's development half (ids
1-500); every other item is held out, and its calibration error (ECE) is reported at the
fitted temperature, recomputed from the probs the run recorded (probs at temperature T are
the recorded ones raised to the power current/T and renormalised). Run:

    python bench/fit_choice_temperature.py docs/bench-quality.json
"""

from __future__ import annotations

import json
import sys

import numpy as np

from npcai.bench import quality
from npcai.model import catalog


def _rescaled(probs: list[float], current: float, t: float) -> np.ndarray:
    z = np.log(np.clip(np.asarray(probs), 1e-300, None)) * current / t
    p = np.exp(z - z.max())
    return p / p.sum()


def main(path: str) -> None:
    report = json.load(open(path))
    for model, body in report["models"].items():
        raw = body["raw"].get("quality")
        if not raw:
            continue
        entry = catalog.CATALOG.get(model)
        current = entry.choice_temperature if entry else 1.0
        current = body["raw"].get("choice_temperature", current)
        dev = list(raw.get("game_dev", {}).get("items", []))
        dev += [r for r in raw.get("copa", {}).get("items", []) if int(r["id"].split("-")[1]) <= 500]
        t = quality.fit_temperature(dev, current)
        print(f"{model}: recorded at T={current}, fitted T={t:.2f} on {len(dev)} calibration items")
        for name in ("game", "copa", "piqa", "arc_easy"):
            recs = [r for r in raw.get(name, {}).get("items", [])
                    if not (name == "copa" and int(r["id"].split("-")[1]) <= 500)]
            if not recs:
                continue
            for label, temp in (("as run", current), ("fitted", t)):
                ps = [_rescaled(r["probs"], current, temp) for r in recs]
                conf = [float(p.max()) for p in ps]
                right = [int(np.argmax(p)) == r["label"] for p, r in zip(ps, recs)]
                print(f"  {name:<9} {label:<7} n={len(recs):<4} acc {100 * np.mean(right):5.1f} %  "
                      f"ECE {quality.expected_calibration_error(conf, right):.3f}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench-report.json")
