"""`npcai bench --only quality`: are the answers worth waiting for?

Decisions are scored on public multiple-choice sets with published small-model figures (COPA,
PIQA, ARC-Easy, read from a data folder that is never copied into the project) and on npcai's own
game-decision set, each beside its anchor: the same GGUF file scored as lm-evaluation-harness
scores multiple choice (``anchor.py``). Structured answers are scored on real-world JSON schemas
(JSONSchemaBench), and dialogue on its lines: do they end at a sentence end, do they repeat, does
the NPC keep its name.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import statistics
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from npcai.bench.anchor import Anchor
from npcai.client import Client
from npcai.errors import NpcaiError
from npcai.model.lines import ends_sentence
from npcai.sidecar.npc import persona_name

DATA_ENV = "NPCAI_DATA"
_SEED = 20261205


@dataclass(frozen=True)
class Question:
    """One multiple-choice item, as the anchor scores it and as a game would ask ``decide``."""

    id: str
    context: str  # the anchor's context; each continuation is " " + option
    options: tuple[str, ...]
    label: int
    situation: str  # decide's situation and lead (the words the answer starts with)
    lead: str  # "" for decide's own framing
    persona: str | None = None  # the deciding NPC, or None for an anonymous decision
    role: str = ""
    per_byte: bool = False  # decide's scores per byte (acc_norm's rule) rather than summed
    raw_options: tuple[str, ...] = ()  # the options as the set writes them, outer spaces kept (PIQA, ARC-Easy)

    @property
    def continuations(self) -> list[str]:
        """The options as lm-evaluation-harness continues the context with them: as the set writes them, outer
        spaces kept (PIQA's solutions carry some). ``decide`` scores an option without them."""
        return list(self.raw_options or self.options)


def data_dir(given: str | None = None) -> Path:
    """Where the public data is looked for: the path given, $NPCAI_DATA, or ``shared/data`` beside the checkout."""
    if given:
        return Path(given)
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV])
    return Path(__file__).resolve().parents[3] / "shared" / "data"


def _items(path: Path, build: Callable[[dict[str, Any]], Question]) -> Iterator[Question]:
    """Each line of a JSON-lines set file as a Question; a line that is not one ends the run in one line that names
    the file and the line, before anything is scored."""
    with path.open() as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                q = build(json.loads(line))
            except json.JSONDecodeError as err:
                raise NpcaiError(f"{path}:{n}: not a JSON object ({err.msg})") from None
            except (KeyError, TypeError, AttributeError, ValueError) as err:
                raise NpcaiError(f"{path}:{n}: not an item of this set ({type(err).__name__}: {err})") from None
            if not isinstance(q.label, int) or not 0 <= q.label < len(q.options):
                raise NpcaiError(f"{path}:{n}: label {q.label!r} is not one of its {len(q.options)} options")
            yield q


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


#: The persona of the public sets' questions (a game would give its quiz-master or sage one like it).
#: How each set is asked was chosen on development items only (COPA's dev split, the even-indexed
#: half of PIQA and ARC-Easy; bench/public_framings.py, docs/QUALITY.md): this persona for COPA and
#: PIQA, per-byte scores for COPA and ARC-Easy, and ARC-Easy's lead "Answer:".
QUIZ_PERSONA = "You answer questions about the everyday world with common sense."
#: The persona of COPA's items: a storyteller told what happened, whose answer says why or what came of it.
#: Chosen on COPA's development split (bench/copa_framings.py, docs/QUALITY.md): over the quiz persona
#: asking "What was the cause?", Gemma 68.0 against 65.4 % on all 500 dev items; on the held-out test
#: items neither model moved beyond noise (Gemma 66.5 against 67.1, SmolLM2 72.3 against 71.0).
STORY_PERSONA = "You tell what happens in everyday stories, with common sense."


def copa(folder: Path) -> list[Question]:
    """COPA dev and test, as lm-evaluation-harness words it: "<premise without its period> because".
    decide is told the premise by a storyteller NPC, and the answer's lead asks for its cause or effect."""
    def build(d: dict[str, Any]) -> Question:
        cause = d["question"] == "cause"
        premise = d["premise"].strip()
        options = tuple(_lower_first(d[k].strip()) for k in ("choice1", "choice2"))
        return Question(f"copa-{d['id']}", premise[:-1] + (" because" if cause else " therefore"), options,
                        d["label"], premise, "It happened because" if cause else "As a result,", STORY_PERSONA,
                        per_byte=True)

    return [q for name in ("copa_dev.jsonl", "copa_test.jsonl") for q in _items(folder / name, build)]


def piqa(folder: Path) -> list[Question]:
    def build(d: dict[str, Any]) -> Question:
        raw = (d["sol1"], d["sol2"])
        options = tuple(o.strip() for o in raw)
        return Question(f"piqa-{d['id']}", f"Question: {d['goal']}\nAnswer:", options, d["label"],
                        d["goal"].strip(), "Here is how:", QUIZ_PERSONA, raw_options=raw)

    return list(_items(folder / "piqa_valid.jsonl", build))


def arc_easy(folder: Path) -> list[Question]:
    def build(d: dict[str, Any]) -> Question:
        raw = tuple(d["choices"])
        options = tuple(c.strip() for c in raw)
        return Question(f"arc-{d['id']}", f"Question: {d['question']}\nAnswer:", options, d["label"],
                        d["question"].strip(), "Answer:", per_byte=True, raw_options=raw)

    return list(_items(folder / "arc_easy_test.jsonl", build))


def game(split: str = "test") -> list[Question]:
    """npcai's own game decisions: a role, a persona, a situation, 2-6 options, one common-sense answer."""
    text = resources.files("npcai").joinpath("data/game_decisions.jsonl").read_text()
    out = []
    for line in text.splitlines():
        d = json.loads(line)
        if d["split"] == split:
            out.append(Question(f"game-{d['id']}", f"{d['persona']} {d['situation']} I decide to",
                                tuple(d["options"]), d["label"], d["situation"], "", d["persona"], d["role"]))
    return out


def game_examples() -> dict[str, list[dict[str, str]]]:
    """Worked examples by role, from the set's example split (never scored)."""
    out: dict[str, list[dict[str, str]]] = {}
    for q in game("example"):
        out.setdefault(q.role, []).append({"situation": q.situation, "choice": q.options[q.label]})
    return out


PUBLIC_SETS: dict[str, tuple[Callable[[Path], list[Question]], tuple[str, ...]]] = {
    "copa": (copa, ("copa_dev.jsonl", "copa_test.jsonl")),
    "piqa": (piqa, ("piqa_valid.jsonl",)),
    "arc_easy": (arc_easy, ("arc_easy_test.jsonl",)),
}


def public_sets(data: Path, n_items: int, say: Callable[[str], None]) -> list[tuple[str, list[Question]]]:
    """The public sets found under ``data``/quality, ``n_items`` of each (all of them when it is not positive, as
    ``--quality-items all`` asks); a missing one, or one with no usable items, is named and skipped."""
    folder = data / "quality"
    out = []
    for name, (load, files) in PUBLIC_SETS.items():
        missing = [f for f in files if not (folder / f).is_file()]
        if missing:
            say(f"    {name}: skipped, no {folder / missing[0]} (pass --data DIR or set {DATA_ENV})")
            continue
        items = usable(load(folder))
        if not items:
            say(f"    {name}: skipped, no usable items in {' or '.join(str(folder / f) for f in files)}")
            continue
        out.append((name, sample(items, n_items)))
    return out


def check_data(data: Path) -> None:
    """Read every set file and the schemas now, so that a malformed one ends the run before it starts (a second)."""
    public_sets(data, 0, lambda _: None)
    schema_entries(data, lambda _: None)


def sample(items: list[Question], n: int) -> list[Question]:
    """A seeded sample of ``n`` items (all of them when there are fewer, or ``n`` is not positive), the same on
    every run."""
    if n <= 0 or len(items) <= n:
        return items
    return sorted(random.Random(_SEED).sample(items, n), key=lambda q: items.index(q))


def expected_calibration_error(confidence: list[float], correct: list[bool], bins: int = 10) -> float:
    """The gap between how sure the picks were and how often they were right, over equal-width bins."""
    conf, right = np.asarray(confidence, dtype=float), np.asarray(correct, dtype=float)
    total = 0.0
    for lo in np.linspace(0.0, 1.0, bins, endpoint=False):
        inside = (conf > lo) & (conf <= lo + 1.0 / bins)
        if inside.any():
            total += inside.mean() * abs(conf[inside].mean() - right[inside].mean())
    return float(total)


@dataclass
class ChoiceScore:
    """decide's picks on one set, beside the anchor's."""

    name: str
    n: int
    acc: float
    mean_p_right: float
    ece: float
    anchor_acc: float
    anchor_acc_norm: float
    p50_ms: float


def paired(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> tuple[int, int, float]:
    """Two runs' picks on the same items (``score_decide``'s records): how many only the second got
    right, how many only the first, and the exact two-sided sign test's p on those (McNemar's, exact)."""
    right = {r["id"]: int(np.argmax(r["probs"])) == r["label"] for r in before}
    gained = sum(1 for r in after if int(np.argmax(r["probs"])) == r["label"] and not right[r["id"]])
    lost = sum(1 for r in after if int(np.argmax(r["probs"])) != r["label"] and right[r["id"]])
    n = gained + lost
    tail = sum(math.comb(n, k) for k in range(min(gained, lost) + 1)) / 2 ** n if n else 0.5
    return gained, lost, min(1.0, 2 * tail)


_anchors: dict[tuple[str, tuple[str, ...]], tuple[float, float, dict[str, tuple[int, int]]]] = {}  # once per process


def score_anchor(anchor: Anchor, items: list[Question],
                 record: dict[str, tuple[int, int]] | None = None) -> tuple[float, float]:
    """(acc, acc_norm) of the anchor over ``items``; each item's two picks go to ``record`` (by id),
    so that a part of a set (a held-out half) can be scored from the report. Computed once per model
    and item set: a bench with --lora scores the same model twice."""
    key = (str(anchor.path), tuple(q.id for q in items))
    if key not in _anchors:
        _anchors[key] = _score_anchor(anchor, items)
    acc, norm, picks = _anchors[key]
    if record is not None:
        record.update(picks)
    return acc, norm


def _score_anchor(anchor: Anchor, items: list[Question]) -> tuple[float, float, dict[str, tuple[int, int]]]:
    acc = norm = 0
    picks: dict[str, tuple[int, int]] = {}
    for q in items:
        s = anchor.score(q.context, q.continuations)
        acc += s.pick == q.label
        norm += s.pick_norm == q.label
        picks[q.id] = (s.pick, s.pick_norm)
    return acc / len(items), norm / len(items), picks


def score_decide(client: Client, items: list[Question], examples: dict[str, list[dict[str, str]]] | None = None,
                 record: list[dict[str, Any]] | None = None) -> tuple[float, float, float, float]:
    """(acc, mean probability of the right option, calibration error, p50 latency) of ``decide``;
    each item's probs go to ``record`` (for fitting a model's choice temperature)."""
    right, p_right, conf, lat = [], [], [], []
    defined: set[tuple[str, str]] = set()
    for q in items:
        npc = None
        if q.persona is not None:
            npc = f"q-{abs(hash((q.persona, q.role))) % 10**8}"
            if (npc, q.persona) not in defined:
                extra = {"examples": examples.get(q.role, [])} if examples else {}
                client.npc(npc, q.persona, **extra)
                defined.add((npc, q.persona))
        t = time.perf_counter()
        lead = {"lead": q.lead} if q.lead else {}
        if q.per_byte:
            lead["per_byte"] = True
        reply = client.decide(q.situation, npc=npc, choices=list(q.options), temperature=0.0, **lead)
        lat.append((time.perf_counter() - t) * 1000)
        probs = reply["probs"]
        if record is not None:
            record.append({"id": q.id, "label": q.label, "probs": [probs[o] for o in q.options]})
        right.append(reply["value"] == q.options[q.label])
        p_right.append(probs[q.options[q.label]])
        conf.append(max(probs.values()))
    return (float(np.mean(right)), float(np.mean(p_right)), expected_calibration_error(conf, right),
            statistics.median(lat))


def usable(items: list[Question]) -> list[Question]:
    """Items decide can take: distinct, non-empty options."""
    return [q for q in items if all(q.options) and len(set(q.options)) == len(q.options)]


# --- structured answers -------------------------------------------------------------------------
def schema_entries(data: Path, say: Callable[[str], None]) -> list[dict[str, Any]]:
    """The JSONSchemaBench sample under ``data``/schemas; none (named, as skipped) when the file is absent or lists
    none, and one line naming the file when it is not such a file."""
    path = data / "schemas" / "jsonschemabench_sample.json"
    if not path.is_file():
        say(f"    schemas: skipped, no {path}")
        return []
    try:
        entries = json.loads(path.read_text())["schemas"]
    except json.JSONDecodeError as err:
        raise NpcaiError(f"{path}:{err.lineno}: not JSON ({err.msg})") from None
    except (KeyError, TypeError):
        raise NpcaiError(f'{path}: not a JSONSchemaBench sample: no "schemas" list') from None
    bad = [i for i, e in enumerate(entries) if not isinstance(e, dict) or "schema" not in e]
    if bad:
        raise NpcaiError(f'{path}: schemas entry {bad[0]} holds no "schema"')
    if not entries:
        say(f"    schemas: skipped, no schemas in {path}")
    return entries


def score_schemas(client: Client, entries: list[dict[str, Any]], max_tokens: int = 512) -> dict[str, Any]:
    """Share of schemas answered with a valid value before the cap, and latency, through decide."""
    import jsonschema

    valid, capped, refused, lat, tokens = 0, 0, 0, [], []
    for e in entries:
        if len(json.dumps(e["schema"])) > 65536:
            refused += 1  # over npcai's schema limit: refused before anything runs
            continue
        t = time.perf_counter()
        try:
            reply = client.decide("Fill in an example record for this game's data.", schema=e["schema"],
                                  max_tokens=max_tokens, temperature=0.0, timeout=120)
        except Exception:  # a refused schema (bad_request): counted, never a crash of the benchmark
            refused += 1
            continue
        lat.append((time.perf_counter() - t) * 1000)
        tokens.append(reply["tokens"])
        capped += reply["finish_reason"] == "length"
        if reply["finish_reason"] == "stop" and not reply["used_fallback"]:
            try:
                jsonschema.validate(reply["value"], e["schema"])
                valid += 1
            except jsonschema.ValidationError:
                pass
            except jsonschema.SchemaError:
                valid += 1  # the schema itself is beyond jsonschema's checker; llguidance held to it
    return {"n": len(entries), "compiled": len(entries) - refused, "valid": valid, "capped": capped,
            "refused": refused,
            "p50_ms": statistics.median(lat) if lat else None, "p90_ms": _pct(lat, 90),
            "p50_tokens": statistics.median(tokens) if tokens else None}


def _pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


# --- dialogue ---------------------------------------------------------------------------------------
_WORD = re.compile(r"[\w']+")


def trigrams(text: str) -> list[tuple[str, ...]]:
    words = _WORD.findall(text.lower())
    return [tuple(words[i:i + 3]) for i in range(len(words) - 2)]


def repeated_share(grams: list[tuple[str, ...]], seen: set[tuple[str, ...]] | None = None) -> float:
    """Share of 3-grams that already occurred earlier in the line (or in ``seen``)."""
    if not grams:
        return 0.0
    earlier = set(seen or ())
    repeats = 0
    for g in grams:
        repeats += g in earlier
        earlier.add(g)
    return repeats / len(grams)


_SELF_NAMED = re.compile(r"\b(?i:my name is|my name's|i am|i'm|call me|they call me)\s+([A-Z][\w'-]+)")


def self_names(line: str) -> list[str]:
    """Names a line gives its speaker ("I'm Grimbold", "My name is Brom"): capitalised words only."""
    return _SELF_NAMED.findall(line)


def score_dialogue(client: Client, npcs: dict[str, dict[str, Any]], rounds: int = 2,
                   max_tokens: int = 48) -> dict[str, Any]:
    """Say every scenario line ``rounds`` times to each NPC, then ask its name."""
    ended, within, across, lines, introductions, kept = 0, [], [], 0, 0, 0
    reasons: dict[str, int] = {}
    for npc_id, spec in npcs.items():
        client.npc(npc_id, spec["persona"], seed=7)
        history: list[str] = []
        name = persona_name(spec["persona"])
        for _ in range(rounds):
            for text in [*spec["lines"], "What is your name?"]:
                reply = client.say(npc_id, text, max_tokens=max_tokens)
                line = reply["text"]
                lines += 1
                ended += ends_sentence(line)
                reasons[reply["finish_reason"]] = reasons.get(reply["finish_reason"], 0) + 1
                grams = trigrams(line)
                within.append(repeated_share(grams))
                earlier = {g for h in history[-5:] for g in trigrams(h)}
                across.append(sum(g in earlier for g in grams) / len(grams) if grams else 0.0)
                history.append(line)
                if name:  # does it call itself by its own name (the first word of it) or another?
                    said = set(self_names(line))
                    introductions += bool(said)
                    kept += bool(said) and said <= set(name.split())
    return {"lines": lines, "sentence_end": ended / lines, "repeat_within": float(np.mean(within)),
            "repeat_across_5": float(np.mean(across)), "self_introductions": introductions,
            "name_kept": kept / introductions if introductions else None, "finish_reasons": reasons}


# --- the bench item ---------------------------------------------------------------------------------
Row = tuple[str, float | None, float | None, str, str, str]  # metric, npcai, baseline, baseline name, unit, target


def run(client: Client, model_path: Path, threads: int, n_items: int, data: Path,
        say: Callable[[str], None]) -> tuple[list[Row], dict[str, Any]]:
    """Every quality measure for one model, as bench rows (and the raw figures)."""
    rows: list[Row] = []
    raw: dict[str, Any] = {"data": str(data), "items_per_public_set": n_items if n_items > 0 else "all"}
    raw["choice_temperature"], raw["choice_temperature_power"] = probs_temperature(
        client.hello(client="npcai.bench.quality").get("models", []))
    anchor = Anchor(model_path, threads)
    try:
        sets = [("game", game()), *public_sets(data, n_items, say)]
        raw["skipped"] = [name for name in PUBLIC_SETS if name not in dict(sets)]
        for name, items in sets:
            say(f"    {name}: {len(items)} items, anchor…")
            picks: dict[str, tuple[int, int]] = {}
            acc, acc_norm = score_anchor(anchor, items, picks)
            say(f"    {name}: decide…")
            record: list[dict[str, Any]] = []
            d_acc, p_right, ece, p50 = score_decide(client, items, record=record)
            for r in record:
                r["anchor_pick"], r["anchor_pick_norm"] = picks[r["id"]]
            raw[name] = {"n": len(items), "anchor_acc": acc, "anchor_acc_norm": acc_norm, "acc": d_acc,
                         "mean_p_right": p_right, "ece": ece, "p50_ms": p50, "items": record}
            rows += [(f"{name}: decide acc vs anchor acc_norm", d_acc * 100, acc_norm * 100,
                      "lm-eval acc_norm, same GGUF", "%", ">= 1.0x"),
                     (f"{name}: anchor acc (lm-eval)", acc * 100, None, "", "%", ""),
                     (f"{name}: mean p(right option)", p_right, None, "", "p", ""),
                     (f"{name}: calibration error (ECE)", ece, None, "", "ece", "<= 0.1")]
            if name == "game":
                dev: list[dict[str, Any]] = []  # the worked examples, scored as a calibration split
                score_decide(client, game("example"), record=dev)
                raw["game_dev"] = {"items": dev}
                g_acc, g_p, g_ece, g_p50 = score_decide(client, items, game_examples())
                raw["game_examples"] = {"acc": g_acc, "mean_p_right": g_p, "ece": g_ece, "p50_ms": g_p50}
                rows += [("game + worked examples: decide acc", g_acc * 100, acc_norm * 100,
                          "lm-eval acc_norm, same GGUF", "%", ">= anchor + 10"),
                         ("game + worked examples: ECE", g_ece, None, "", "ece", "<= 0.1")]
    finally:
        anchor.close()
    entries = schema_entries(data, say)
    if entries:
        say("    schemas…")
        s = score_schemas(client, entries)
        raw["schemas"] = s
        rows += [("schemas: compiled (of 120)", s["compiled"], None, "", "count", ""),
                 ("schemas: compiled ones answered validly before the cap",
                  100 * s["valid"] / s["compiled"] if s["compiled"] else None, None, "", "%", ">= 90"),
                 ("schemas: decision p50", s["p50_ms"], None, "", "ms", "<= 1000 (SmolLM2)")]
    say("    dialogue…")
    scene = json.loads(resources.files("npcai").joinpath("scenarios/village.json").read_text())
    d = score_dialogue(client, scene["npcs"])
    raw["dialogue"] = d
    rows += [("dialogue: lines ending a sentence", 100 * d["sentence_end"], None, "", "%", ">= 95"),
             ("dialogue: repeated 3-grams within a line", 100 * d["repeat_within"], None, "", "%", "< 5"),
             ("dialogue: 3-grams from the NPC's last 5 lines", 100 * d["repeat_across_5"], None, "", "%", ""),
             ("dialogue: self-introductions that use the persona's name", 100 * (d["name_kept"] or 0), None, "",
              "%", "")]
    return rows, raw


def probs_temperature(models: list[dict[str, Any]]) -> tuple[float | None, float | None]:
    """(temperature, power) that ``decide``'s probs are at, from ``hello``'s models: the decision role's,
    its adapter's when it has one. (The first role listed is dialogue's: adapter runs were recorded at the
    model's temperature, 7.92 for Gemma's adapter where its probs were at 2.5.)"""
    decider = next((m for m in models if m.get("role") == "decision"), models[0] if models else {})
    return decider.get("choice_temperature"), decider.get("choice_temperature_power")


def fit_temperature(records: list[dict[str, Any]], current: float) -> float:
    """The temperature that makes ``probs`` (recorded at ``current``) most likely to name the right
    option: the one that minimises their negative log-likelihood, by a grid search."""
    logs = [np.log(np.clip(np.asarray(r["probs"]), 1e-300, None)) * current for r in records]
    labels = [r["label"] for r in records]

    def nll(t: float) -> float:
        total = 0.0
        for z, y in zip(logs, labels):
            z = z / t
            total -= z[y] - (z.max() + np.log(np.exp(z - z.max()).sum()))
        return total

    return float(min(np.exp(np.linspace(np.log(0.05), np.log(20), 200)), key=nll))
