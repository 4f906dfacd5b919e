"""Fit a model's (or an adapter's) choice temperature from quality reports, on calibration items only.

The calibration items are chosen with ``--calibration`` from: the game set's worked examples
(``game_dev``), COPA's development half (``copa_dev``, ids 1-500), and the even-indexed halves of
PIQA and ARC-Easy (``piqa_even``, ``arc_even``: the halves framings were chosen on,
bench/public_framings.py). Every other item is held out, and its calibration error (ECE) is reported
at the fitted temperature, recomputed from the probs the run recorded (probs at temperature T are the
recorded ones raised to the power current/T and renormalised). Two schemes are fitted the same way:
one temperature, and one that depends on the number of options k, T × (k / 2) ** power. With
``--per-byte-scale`` the items asked per byte (COPA's and ARC-Easy's, ``per_byte``) also get a factor of
their own on their scores, fitted with the temperature held at the first ``--at`` (a research scheme: npcai
scales per-byte scores by the options' mean length only). With
``--held-out`` each public set's held-out part (COPA's test split; the odd-indexed half of PIQA and
ARC-Easy) is also scored against the anchor's picks on the same items.

A set missing from the report (a run that skipped it) can be taken from another report of the same
model with ``--also``: its probs are rescaled from the temperature that run recorded (``--recorded-at``
gives it where a report did not record one, as ``T,power``). An adapter's run is named
``MODEL+lora`` in the report; fit it on items it was not trained on (``--calibration piqa_even,arc_even``:
the shipped adapter trained on the worked examples and on COPA's development half). Run:

    python bench/fit_choice_temperature.py docs/bench-quality.json --recorded-at 1,0   # that run was at T = 1
    python bench/fit_choice_temperature.py NEW.json --model gemma3-270m --also OLD.json \
        --calibration game_dev,copa_dev,piqa_even,arc_even
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from npcai.bench import quality
from npcai.model import catalog

SETS = ("game", "copa", "piqa", "arc_easy")
LENGTH_REF = 24.0  # bytes: the length at which a length-dependent temperature is T × (k/2)^power
CALIBRATION = {"game_dev": ("game_dev", lambda n: True), "copa_dev": ("copa", lambda n: n <= 500),
               "piqa_even": ("piqa", lambda n: n % 2 == 0), "arc_even": ("arc_easy", lambda n: n % 2 == 0)}


def _number(record: dict) -> int:
    return int(record["id"].split("-")[1])


def _rescaled(record: dict, t: float) -> np.ndarray:
    """An item's recorded probs (at its effective temperature as run, ``record["at"]``) at temperature ``t``."""
    z = np.log(np.clip(np.asarray(record["probs"]), 1e-300, None)) * _effective(record, *record["at"]) / t
    p = np.exp(z - z.max())
    return p / p.sum()


def _effective(record: dict, t: float, power: float, length_power: float = 0.0, per_byte_scale: float = 1.0) -> float:
    """The temperature of one item: T × (k/2)^power × (its options' mean length / 24 bytes)^length_power, and
    divided by the per-byte scale for an item asked per byte."""
    scale = per_byte_scale if record.get("per_byte") else 1.0
    return (t * (len(record["probs"]) / 2) ** power * (record.get("length", LENGTH_REF) / LENGTH_REF) ** length_power
            / scale)


def _nll_grid(records: list[dict], temps: np.ndarray, power: float, length_power: float) -> np.ndarray:
    """The negative log-likelihood of the right options at each of ``temps`` (vectorised over items)."""
    n = len(records)
    z = np.full((n, max(len(r["probs"]) for r in records)), -np.inf)
    scale, label = np.zeros(n), np.zeros(n, dtype=int)
    for i, r in enumerate(records):
        k = len(r["probs"])
        z[i, :k] = np.log(np.clip(np.asarray(r["probs"]), 1e-300, None)) * _effective(r, *r["at"])
        scale[i], label[i] = _effective(r, 1.0, power, length_power), r["label"]
    out = []
    for t in temps:
        x = z / (t * scale)[:, None]
        top = x.max(axis=1)
        out.append(float(-(x[np.arange(n), label] - top - np.log(np.exp(x - top[:, None]).sum(axis=1))).sum()))
    return np.array(out)


def fit(records: list[dict], per_options: bool, per_length: bool = False) -> tuple[float, float, float]:
    """(T, power, length_power) that minimise the negative log-likelihood of the right options, by a grid search."""
    temps = np.exp(np.linspace(np.log(0.3), np.log(30), 160))
    powers = np.linspace(-1.5, 1.5, 31) if per_options else np.zeros(1)
    length_powers = np.linspace(-0.5, 1.5, 21) if per_length else np.zeros(1)
    best = (np.inf, 1.0, 0.0, 0.0)
    for a in powers:
        for b in length_powers:
            nll = _nll_grid(records, temps, float(a), float(b))
            i = int(np.argmin(nll))
            if nll[i] < best[0]:
                best = (float(nll[i]), float(temps[i]), float(a), float(b))
    return best[1:]


def fit_per_byte_scale(records: list[dict], t: float, power: float) -> float:
    """The per-byte scale that minimises the negative log-likelihood of the per-byte items among ``records``,
    the temperature held at (``t``, ``power``): the summed items set that, the per-byte ones only this."""
    per_byte = [r for r in records if r.get("per_byte")]
    scales = np.exp(np.linspace(np.log(0.25), np.log(4), 121))
    nll = _nll_grid(per_byte, t / scales, power, 0.0)  # per byte, the temperature is t / scale
    return float(scales[int(np.argmin(nll))])


def held_out(name: str, records: list[dict], calibration: list[str]) -> list[dict]:
    """Items never used for choosing framings or fitting anything: COPA's test split, the odd halves of
    PIQA and ARC-Easy (all of a half-split set when its even half was not used for calibration, as
    before 2026-12-06 08:00), the whole game set."""
    if name == "copa":
        return [r for r in records if _number(r) > 500]
    if {"piqa": "piqa_even", "arc_easy": "arc_even"}.get(name) in calibration:
        return [r for r in records if _number(r) % 2 == 1]
    return records


def _sets(raw: dict, at: tuple[float, ...]) -> dict[str, list[dict]]:
    return {name: [{**r, "at": at} for r in raw.get(name, {}).get("items", [])]
            for name in (*SETS, "game_dev")}


def _recorded_at(raw: dict, model: str, given: tuple[float, ...] | None) -> tuple[float, float, float, float]:
    """(T, power, 0, 1) that a report's probs were computed at (no length power, no per-byte factor)."""
    if given is not None:
        return (*given[:2], 0.0, given[2] if len(given) > 2 else 1.0)
    entry = catalog.CATALOG.get(model)
    return (raw.get("choice_temperature") or (entry.choice_temperature if entry else 1.0),
            raw.get("choice_temperature_power") or 0.0, 0.0, 1.0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("report")
    p.add_argument("--model", help="the report's model to fit (default: each)")
    p.add_argument("--also", help="another report of the same model: sets the first lacks come from it")
    p.add_argument("--recorded-at", help="T,power the first report's probs were at (when it did not record it)")
    p.add_argument("--also-recorded-at", help="the same for --also's report")
    p.add_argument("--calibration", default="game_dev,copa_dev", help=f"comma list from {', '.join(CALIBRATION)}")
    p.add_argument("--length", action="store_true", help="also fit a temperature that grows with the options' "
                   "length (not what npcai ships: a research scheme)")
    p.add_argument("--per-byte-scale", action="store_true", help="also fit a factor on per-byte scores, the "
                   "temperature held at the first --at (on the calibration items asked per byte; not what npcai ships: "
                   "a research scheme)")
    p.add_argument("--data", help="the public data folder (for the options' lengths)")
    p.add_argument("--at", action="append", help="also the ECE at this T,power[,per-byte factor] (a catalog's; "
                   "repeatable)")
    p.add_argument("--noise", action="store_true", help="the ECE of exactly calibrated probs on as many items")
    p.add_argument("--held-out", action="store_true", help="also score each set's held-out part against the anchor")
    p.add_argument("--by-length-ratio", action="store_true", help="also each held-out part by how much longer its "
                   "longest option is than its shortest: decide's accuracy and confidence as run, and the anchor's")
    args = p.parse_args()
    if args.per_byte_scale and not args.at:
        p.error("--per-byte-scale holds the temperature at the first --at: give one")
    calibration = args.calibration.split(",")
    parse = lambda s: tuple(float(x) for x in s.split(",")) if s else None  # noqa: E731
    report = json.load(open(args.report))
    other = json.load(open(args.also))["models"] if args.also else {}
    for model, body in report["models"].items():
        raw = body["raw"].get("quality")
        if not raw or (args.model and model != args.model):
            continue
        sets = _sets(raw, _recorded_at(raw, model.split("+")[0], parse(args.recorded_at)))
        if model in other:
            more_raw = other[model]["raw"]["quality"]
            more = _sets(more_raw, _recorded_at(more_raw, model.split("+")[0], parse(args.also_recorded_at)))
            sets = {name: recs or more[name] for name, recs in sets.items()}
        lengths, per_byte, ratios = _lengths(quality.data_dir(args.data))
        for recs in sets.values():
            for r in recs:
                r["length"], r["per_byte"] = lengths.get(r["id"], LENGTH_REF), r["id"] in per_byte
                r["ratio"] = ratios.get(r["id"], 1.0)
        dev = [r for c in calibration for r in sets[CALIBRATION[c][0]] if CALIBRATION[c][1](_number(r))]
        fits = {"one T": fit(dev, False), "T by k": fit(dev, True)}
        if args.length:
            fits["T by k, length"] = fit(dev, True, True)
        for given in args.at or []:
            t, power, *scale = parse(given)
            fits[f"at {given}"] = (t, power, 0.0, *scale)
        if args.per_byte_scale:
            t, power, *_ = parse(args.at[0])
            fits["per-byte scale"] = (t, power, 0.0, fit_per_byte_scale(dev, t, power))
        print(f"{model}: on {len(dev)} calibration items ({args.calibration}): "
              + "; ".join(f"{k} = {t:.2f} x (k/2)^{a:.2f} x (L/{LENGTH_REF:.0f})^{b:.2f}"
                          + (f", per byte x {rest[0]:.2f}" if rest else "") for k, (t, a, b, *rest) in fits.items()))
        for name in SETS:
            recs = held_out(name, sets[name], calibration)
            if not recs:
                continue
            line = f"  {name:<9} held out n={len(recs):<4}"
            for label, schema in [("as run", None), *fits.items()]:
                ps = [_rescaled(r, _effective(r, *(r["at"] if schema is None else schema))) for r in recs]
                conf = [float(q.max()) for q in ps]
                right = [int(np.argmax(q)) == r["label"] for q, r in zip(ps, recs)]
                line += f"  ECE {label} {quality.expected_calibration_error(conf, right):.3f}"
            if args.noise:  # what ECE this many items give when probs are exactly right: labels drawn from them
                rng = np.random.default_rng(0)
                ps = [_rescaled(r, _effective(r, *fits["T by k"])) for r in recs]
                draws = [quality.expected_calibration_error([float(q.max()) for q in ps],
                                                            [rng.random() < float(q.max()) for q in ps])
                         for _ in range(400)]
                line += f"  (if exactly calibrated: median {np.median(draws):.3f}, 95th pct {np.percentile(draws, 95):.3f})"
            print(line)
            if args.held_out and "anchor_pick_norm" in recs[0]:
                acc = 100 * np.mean([int(np.argmax(r["probs"])) == r["label"] for r in recs])
                norm = 100 * np.mean([r["anchor_pick_norm"] == r["label"] for r in recs])
                print(f"  {name:<9} held out n={len(recs):<4} decide {acc:5.1f} %  anchor acc_norm {norm:5.1f} %")
            if args.by_length_ratio:
                _by_length_ratio(recs)


def _by_length_ratio(recs: list[dict]) -> None:
    """Held-out items binned by their longest option's length over their shortest's."""
    for lo, hi in ((1.0, 1.3), (1.3, 2.0), (2.0, np.inf)):
        part = [r for r in recs if lo <= r["ratio"] < hi]
        if not part:
            continue
        acc = np.mean([int(np.argmax(r["probs"])) == r["label"] for r in part])
        conf = np.mean([max(r["probs"]) for r in part])
        line = f"    longest / shortest option {lo:g}-{hi:g}: n={len(part):<4} decide {100 * acc:5.1f} % at mean p {conf:.2f}"
        if "anchor_pick" in part[0]:
            line += (f"; anchor acc {100 * np.mean([r['anchor_pick'] == r['label'] for r in part]):5.1f} %, acc_norm "
                     f"{100 * np.mean([r['anchor_pick_norm'] == r['label'] for r in part]):5.1f} %")
        print(line)


def _lengths(data) -> tuple[dict[str, float], set[str], dict[str, float]]:
    """Each item's options' mean length in bytes, as they follow a lead (the space included); the items asked per
    byte; each item's longest option's length over its shortest's."""
    items = quality.game("test") + quality.game("example")
    folder = data / "quality"
    for name, (load, files) in quality.PUBLIC_SETS.items():
        if all((folder / f).is_file() for f in files):
            items += load(folder)
    nbytes = {q.id: [len((" " + o).encode()) for o in q.options] for q in items}
    return ({i: float(np.mean(b)) for i, b in nbytes.items()}, {q.id for q in items if q.per_byte},
            {i: max(b) / min(b) for i, b in nbytes.items()})

if __name__ == "__main__":
    main()
