"""Fit each model's choice temperature from a quality report, on calibration items only.

The calibration items are the game set's worked examples and COPA's development half (ids
1-500); every other item is held out, and its calibration error (ECE) is reported at the
fitted temperature, recomputed from the probs the run recorded (probs at temperature T are
the recorded ones raised to the power current/T and renormalised). Two schemes are fitted the
same way: one temperature per model, and one that depends on the number of options k,
T × (k / 2) ** power. With ``--held-out`` it also scores each public set's held-out part
(COPA's test split; the odd-indexed half of PIQA and ARC-Easy, whose even half was used for
choosing framings: bench/public_framings.py) against the anchor's picks on the same items. Run:

    python bench/fit_choice_temperature.py docs/bench-quality.json
"""

from __future__ import annotations

import json
import sys

import numpy as np

from npcai.bench import quality
from npcai.model import catalog


def _rescaled(probs: list[float], current: tuple[float, float], t: float) -> np.ndarray:
    """Recorded probs (at the temperature ``current``, (T, power), for their number of options) at ``t``."""
    z = np.log(np.clip(np.asarray(probs), 1e-300, None)) * current[0] * (len(probs) / 2) ** current[1] / t
    p = np.exp(z - z.max())
    return p / p.sum()


def _nll(records: list[dict], current: tuple[float, float], t: float, power: float) -> float:
    return -sum(float(np.log(max(_rescaled(r["probs"], current, t * (len(r["probs"]) / 2) ** power)[r["label"]],
                                 1e-300))) for r in records)


def fit(records: list[dict], current: tuple[float, float], per_options: bool) -> tuple[float, float]:
    """(T, power) that minimise the negative log-likelihood of the right options, by a grid search."""
    temps = np.exp(np.linspace(np.log(0.3), np.log(30), 160))
    powers = np.linspace(-1.5, 1.5, 31) if per_options else np.zeros(1)
    return min(((float(t), float(a)) for t in temps for a in powers), key=lambda ta: _nll(records, current, *ta))


def held_out(name: str, records: list[dict]) -> list[dict]:
    """Items never used for choosing or fitting anything."""
    number = lambda r: int(r["id"].split("-")[1])
    if name == "copa":
        return [r for r in records if number(r) > 500]
    if name in ("piqa", "arc_easy"):
        return [r for r in records if number(r) % 2 == 1]
    return records


def main(path: str) -> None:
    report = json.load(open(path))
    for model, body in report["models"].items():
        raw = body["raw"].get("quality")
        if not raw:
            continue
        entry = catalog.CATALOG.get(model)
        current = (raw.get("choice_temperature") or (entry.choice_temperature if entry else 1.0),
                   raw.get("choice_temperature_power") or 0.0)
        dev = list(raw.get("game_dev", {}).get("items", []))
        dev += [r for r in raw.get("copa", {}).get("items", []) if int(r["id"].split("-")[1]) <= 500]
        fits = {"as run": current, "one T": fit(dev, current, False), "T by k": fit(dev, current, True)}
        print(f"{model}: recorded at T={current[0]} x (k/2)^{current[1]}; on {len(dev)} calibration items: one T = {fits['one T'][0]:.2f}; "
              f"T by k = {fits['T by k'][0]:.2f} x (k/2)^{fits['T by k'][1]:.2f}")
        for name in ("game", "copa", "piqa", "arc_easy"):
            recs = [r for r in raw.get(name, {}).get("items", []) if not (name == "copa" and
                                                                         int(r["id"].split("-")[1]) <= 500)]
            if not recs:
                continue
            line = f"  {name:<9} n={len(recs):<4}"
            for label, (t, power) in fits.items():
                ps = [_rescaled(r["probs"], current, t * (len(r["probs"]) / 2) ** power) for r in recs]
                conf = [float(p.max()) for p in ps]
                right = [int(np.argmax(p)) == r["label"] for p, r in zip(ps, recs)]
                line += f"  ECE {label} {quality.expected_calibration_error(conf, right):.3f}"
            print(line)
            part = held_out(name, raw[name]["items"])
            if part and "anchor_pick_norm" in part[0]:
                acc = 100 * np.mean([int(np.argmax(r["probs"])) == r["label"] for r in part])
                norm = 100 * np.mean([r["anchor_pick_norm"] == r["label"] for r in part])
                print(f"  {name:<9} held out n={len(part):<4} decide {acc:5.1f} %  anchor acc_norm {norm:5.1f} %")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench-report.json")
