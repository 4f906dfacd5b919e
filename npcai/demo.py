"""`npcai demo` and `npcai chat`: the sidecar seen from a designer's terminal."""

from __future__ import annotations

import json
import string
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

from npcai.client import Client, RequestFailed
from npcai.errors import NpcaiError
from npcai.launcher import Sidecar

_COLORS = ["\033[38;5;208m", "\033[38;5;120m", "\033[38;5;81m", "\033[38;5;219m"]
_DIM, _BOLD, _RESET = "\033[2m", "\033[1m", "\033[0m"


class _Style:
    def __init__(self, color: bool):
        self.on = color and sys.stdout.isatty()

    def __call__(self, code: str, text: str) -> str:
        return f"{code}{text}{_RESET}" if self.on else text


def load_scenario(path: str | None) -> dict[str, Any]:
    """A scenario file (its shape checked, so that chat and the demo can read it), or the built-in village."""
    if not path:
        return json.loads(resources.files("npcai").joinpath("scenarios/village.json").read_text())
    try:
        scene = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise NpcaiError(f"cannot read scenario {path}: {exc}") from None
    wrong = _shape_error(scene)
    if wrong:
        raise NpcaiError(f"bad scenario {path}: {wrong}")
    return scene


_JSON_TYPES = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean",
               type(None): "null"}


def _shape_error(scene: Any) -> str | None:
    """What in a scenario chat or the demo could not read, or None: ``npcs`` (name -> ``persona`` and optional
    ``lines``), and the demo's optional ``decisions`` and ``trade``. What the sidecar checks itself (choices,
    schemas, actions' fields) is left to it."""
    if not isinstance(scene, dict):
        return f"the file holds {_JSON_TYPES.get(type(scene), 'a value')}, not an object with \"npcs\""
    npcs = scene.get("npcs")
    if not isinstance(npcs, dict) or not npcs:
        return 'no "npcs" object: give NPC names, each with {"persona": "You are …", "lines": ["…"]}'
    for name, npc in npcs.items():
        if not isinstance(npc, dict) or not isinstance(npc.get("persona"), str):
            return f'npcs.{name} must be an object with a "persona" string'
        lines = npc.get("lines", [])
        if not isinstance(lines, list) or not all(isinstance(line, str) for line in lines):
            return f"npcs.{name}.lines must be a list of strings"
    decisions = scene.get("decisions", [])
    if not isinstance(decisions, list):
        return '"decisions" must be a list'
    for i, d in enumerate(decisions):
        if not isinstance(d, dict) or not isinstance(d.get("situation"), str):
            return f'decisions[{i}] must be an object with a "situation" string'
        if d.get("npc") is not None and not (isinstance(d["npc"], str) and d["npc"] in npcs):
            return f"decisions[{i}].npc {d['npc']!r} is not one of its npcs"
    trade = scene.get("trade")
    if trade is not None and not (
            isinstance(trade, dict) and isinstance(trade.get("npc"), str) and trade["npc"] in npcs
            and isinstance(trade.get("line"), str) and isinstance(trade.get("actions"), list)
            and all(isinstance(a, dict) and isinstance(a.get("name"), str) for a in trade["actions"])
            and isinstance(trade.get("result", {}), dict)):
        return ('"trade" must be an object with "npc" (one of its npcs), "line", "actions" (each with a "name") '
                'and optionally "result" (action name -> what the game says came of it)')
    for name, text in (trade or {}).get("result", {}).items():
        wrong = _result_error(name, text, trade["actions"])
        if wrong:
            return f"trade.result.{name} {wrong}"
    return None


def _result_error(name: str, text: object, actions: list[dict]) -> str | None:
    """What is wrong with what the game says came of action ``name`` ("Sold {item}."), if anything: its
    placeholders are filled from the action's arguments."""
    if not isinstance(text, str):
        return "must be a string"
    try:
        used = {field for _, field, _, _ in string.Formatter().parse(text) if field is not None}
    except ValueError:
        return "has a stray { or }: write {{ or }} for a brace"
    action = next((a for a in actions if a["name"] == name), {})
    args = set((action.get("args") or {}).get("properties") or {})
    unknown = sorted(used - args)
    if unknown:
        return f"names {{{unknown[0]}}}, which is not one of action {name!r}'s args ({', '.join(sorted(args)) or 'none'})"
    return None


class _Args(dict):
    """An action's arguments for a result's placeholders: one the NPC left out stays as written."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def _utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:  # input() keeps bytes it could not decode as lone surrogates
        return False
    return True


def _start(models: list[str], loras: list[str] = ()) -> tuple[Sidecar, Client]:
    args = [a for m in models for a in ("--model", m)] + [a for spec in loras for a in ("--lora", spec)]
    print("starting the sidecar…", file=sys.stderr, flush=True)
    sidecar = Sidecar(*args)
    client = Client(sidecar.endpoint)
    client.hello("npcai demo")
    return sidecar, client


def _bar(p: float, width: int = 24) -> str:
    filled = round(p * width)
    return "█" * filled + "·" * (width - filled)


def run_demo(models: list[str], scenario: str | None = None, color: bool = True, loras: list[str] = ()) -> int:
    """Play a short scripted scene: streamed lines, decisions with their probabilities, a latency table.
    ``loras`` (the sidecar's ``--lora``) shows a role's choices through its decision adapter."""
    s = _Style(color)
    scene = load_scenario(scenario)
    sidecar, client = _start(models, loras)
    try:
        hello = client.hello("npcai demo")
        names = list(scene["npcs"])[:3]
        colors = {n: _COLORS[i % len(_COLORS)] for i, n in enumerate(scene["npcs"])}
        model = ", ".join(f"{m['role']}={m['name']}" + (f" + {m['lora']}" if m.get("lora") else "")
                          for m in hello["models"])
        print(s(_BOLD, f"npcai demo — {model} — {sidecar.endpoint}\n"))
        for n in names:
            client.npc(n, scene["npcs"][n]["persona"], seed=7)
        for n in names:
            for line in scene["npcs"][n].get("lines", [])[:2]:
                print(s(_DIM, f"  player → {n}: ") + line)
                sys.stdout.write("  " + s(colors[n], f"{n}: "))
                reply = client.say(n, line, max_tokens=48, stop=["\n"],
                                   on_token=lambda t: (sys.stdout.write(t), sys.stdout.flush()))
                t = reply["timing"]
                print(s(_DIM, f"   [first token {t['ttft_ms']:.0f} ms, {reply['tokens']} tokens in "
                              f"{t['total_ms']:.0f} ms]"))
            print()
        for d in scene.get("decisions", []):
            npc = d.get("npc")
            if npc and npc not in names:
                client.npc(npc, scene["npcs"][npc]["persona"], seed=7)
            print(s(_BOLD, f"  {npc or 'someone'} decides: ") + d["situation"])
            kind = {k: d[k] for k in ("choices", "descriptions", "schema", "grammar") if k in d}
            reply = client.decide(d["situation"], npc=npc, temperature=0.0, **kind)
            if "probs" in reply:
                for choice, p in sorted(reply["probs"].items(), key=lambda kv: -kv[1]):
                    mark = "◀" if choice == reply["value"] else " "
                    print(f"    {choice:<20} {s(colors.get(npc, ''), _bar(p))} {p:6.1%} {mark}")
            else:
                print("    " + s(colors.get(npc, ""), json.dumps(reply["value"])))
            forced = f", {reply['forced_tokens']} forced" if "forced_tokens" in reply else ""
            print(s(_DIM, f"    [{reply['timing']['total_ms']:.0f} ms, {reply['tokens']} tokens{forced}]\n"))
        if "trade" in scene:
            _trade(client, {"persona": scene["npcs"][scene["trade"]["npc"]]["persona"], **scene["trade"]}, s, colors)
        _summary(client, s)
    finally:
        client.close()
        sidecar.close()
    return 0


def _trade(client: Client, trade: dict[str, Any], s: _Style, colors: dict[str, str]) -> None:
    """A trade that ends in an action: the NPC answers, picks one of its declared actions (or none), and
    hears what came of it."""
    npc = trade["npc"]
    client.npc(npc, trade["persona"], seed=7, actions=trade["actions"])
    print(s(_BOLD, f"  a trade with {npc}") + s(_DIM, f" (actions: {', '.join(a['name'] for a in trade['actions'])})"))
    print(s(_DIM, f"  player → {npc}: ") + trade["line"])
    sys.stdout.write("  " + s(colors.get(npc, ""), f"{npc}: "))
    reply = client.say(npc, trade["line"], actions=True, max_tokens=48, stop=["\n"],
                       on_token=lambda t: (sys.stdout.write(t), sys.stdout.flush()))
    print()
    action = reply.get("action")
    if action is None:
        print(s(_DIM, "    [no action]\n"))
        return
    print("    " + s(colors.get(npc, ""), f"→ {action['name']}({json.dumps(action['args'])})"))
    result = trade.get("result", {}).get(action["name"], "It is done.")
    result = result.format_map(_Args(action["args"])) if "{" in result else result
    client.act_result(npc, action["name"], result)
    print(s(_DIM, f"    [the game: {result}]\n"))


def _summary(client: Client, s: _Style) -> None:
    stats = client.call("stats")
    print(s(_BOLD, "latency (ms, since the sidecar received each request)"))
    print(f"  {'op':<8} {'count':>5} {'p50':>8} {'p90':>8} {'p99':>8}")
    for op in ("npc", "say", "decide", "ping"):
        o = stats["ops"].get(op)
        if o and o["count"]:
            print(f"  {op:<8} {o['count']:>5} {o['p50_ms']:>8.1f} {o['p90_ms']:>8.1f} {o['p99_ms']:>8.1f}")
    for m in stats["engine"]["models"]:
        threads = f"{m['threads']} thread" + ("s" if m["threads"] != 1 else "")
        print(s(_DIM, f"  {m['name']}: {m['steps']} model steps, {m['tokens']} tokens evaluated, "
                      f"{m['compute_ms'] / 1000:.1f} s computing on {threads}"))


def run_chat(npc: str, models: list[str], scenario: str | None = None, persona: str | None = None) -> int:
    """Talk to one persona; `/forget` clears its memory, `/quit` (or end of input) leaves. A line the sidecar
    refuses (too long, say) is reported in one line on stderr and the chat goes on; a sidecar gone ends it."""
    scene = load_scenario(scenario)
    known = scene["npcs"].get(npc, {})
    persona = persona or known.get("persona")
    if not persona:
        raise NpcaiError(f"no NPC {npc!r} in the scenario; give one with --persona \"You are …\"")
    sidecar, client = _start(models)
    try:
        client.npc(npc, persona)
        print(f"talking to {npc} ({sidecar.endpoint}); /forget clears its memory, /quit leaves", file=sys.stderr)
        while True:
            try:
                line = input("you> ").strip()
            except EOFError:
                print()  # end the prompt's line, as a shell expects
                break
            if line in ("/quit", "/exit"):
                break
            if not line:
                continue
            if not _utf8(line):  # a file piped in another encoding: say so, and go on to the next line
                print("npcai: that line is not UTF-8 text; it was not sent", file=sys.stderr, flush=True)
                continue
            try:
                if line == "/forget":
                    client.call("forget", npc=npc)
                    continue
                sys.stdout.write(f"{npc}> ")
                started = time.perf_counter()
                reply = client.say(npc, line, max_tokens=96,
                                   on_token=lambda t: (sys.stdout.write(t), sys.stdout.flush()))
            except RequestFailed as err:
                if err.code == "unavailable":  # the sidecar is gone: nobody left to talk to
                    raise
                if line != "/forget":
                    print(flush=True)  # end the line its reply would have taken
                print(f"npcai: {err.message}", file=sys.stderr, flush=True)  # that line's, and on to the next
                continue
            print(flush=True)  # each reply ends its line
            print(f"   ({reply['timing']['ttft_ms']:.0f} ms to first token, "
                  f"{(time.perf_counter() - started) * 1000:.0f} ms in all)", file=sys.stderr)
    finally:
        client.close()
        sidecar.close()
    return 0
