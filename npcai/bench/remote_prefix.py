"""Part of `npcai bench --only remote`: does an NPC's persona and history reach the engine as a prefix
its cache reuses, through the chat endpoint (the server renders npcai's message list) and through
the completions endpoint (npcai renders the prompt with the model's template)?

Asked of llama-cpp-python's own server, which says in its log how many of a prompt's tokens it
reused ("Llama.generate: N prefix-match hit, remaining M prompt tokens to eval"). Its default
cache is one slot: the tokens of the last request. Measured for each endpoint: a line of an NPC
whose persona is not cached (another NPC spoke last), the next line (persona cached), a line
after a reply (persona, the exchange and the new line), the next line through the other endpoint
(do the server's rendering and npcai's give the same tokens? a choice goes to completions after a
line went to chat), and, on a server started with ``--cache true``
(its RAM cache of several prompts), a line of NPC A after NPC B spoke.
"""

from __future__ import annotations

import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import httpx

from npcai.remote.llama_server import LlamaServer
from npcai.remote.template import renderer
from npcai.sidecar.npc import Npc

LORE = ("You are Brom, the blacksmith of Eldham, a village on the northern road. You have worked the forge for "
        "thirty years, since your father taught you to fold steel. You are gruff but kind, you distrust the duke's "
        "men, you owe the innkeeper Mara eleven silver, and you are proud of the sword you made for Captain Ilse. ")
PERSONA = LORE * 3  # about 250 tokens: the cost of missing the cache shows
OTHER = "You are Tam, a fisherman who talks about the weather and nothing else."
_HIT = re.compile(r"Llama\.generate: (\d+) prefix-match hit, remaining (\d+) prompt tokens to eval")


class _Probe:
    """Sends one request and reads back, from the server's log, how many prompt tokens it evaluated."""

    def __init__(self, server: LlamaServer, model: str, render: Callable[[list[dict[str, str]]], str]):
        self.server, self.model, self.render = server, model, render
        self.http = httpx.Client(base_url=server.url, timeout=300)

    def send(self, endpoint: str, npc: Npc, text: str, max_tokens: int = 1) -> dict[str, Any]:
        messages = [{"role": r, "content": c} for r, c in npc.chat(("user", text))]
        if endpoint == "chat":
            path, body = "/chat/completions", {"model": self.model, "messages": messages}
        else:
            path, body = "/completions", {"model": self.model, "prompt": self.render(messages)}
        before = self._log_size()
        t0 = time.perf_counter()
        resp = self.http.post(path, json={**body, "max_tokens": max_tokens, "temperature": 0.0})
        ms = (time.perf_counter() - t0) * 1e3
        resp.raise_for_status()
        data = resp.json()
        prompt = int(data["usage"]["prompt_tokens"])
        evaluated = self._evaluated(before, prompt)
        reply = data["choices"][0]["message"]["content"] if endpoint == "chat" else data["choices"][0]["text"]
        return {"ms": round(ms, 3), "prompt_tokens": prompt, "evaluated": evaluated, "reply": reply}

    def _log_size(self) -> int:
        return self.server.log.stat().st_size if self.server.log and self.server.log.exists() else 0

    def _evaluated(self, offset: int, prompt: int) -> int:
        """Prompt tokens the server evaluated: the remainder after its prefix hit, else all of them."""
        for _ in range(50):  # the log line is written before the answer, but may sit in a buffer
            with open(self.server.log, "rb") as f:
                f.seek(offset)
                text = f.read().decode(errors="replace")
            m = _HIT.search(text)
            if m:
                return int(m.group(2))
            if "full prompt already cached" in text:
                return 0
            if "Llama.generate" in text or "llama_perf_context_print" in text:
                return prompt
            time.sleep(0.01)
        return prompt

    def close(self) -> None:
        self.http.close()


def _case(probe: _Probe, endpoint: str, reps: int, lines: list[str]) -> dict[str, Any]:
    """One endpoint's four cases, ``reps`` times each (times vary, token counts do not)."""
    brom, tam = Npc("brom", PERSONA), Npc("tam", OTHER)
    runs: dict[str, list[dict]] = {"cold": [], "warm": [], "after_reply": [], "other_endpoint_next": []}
    for i in range(reps):
        brom.forget()
        first, second, third, fourth = (_unique(lines, i + k, endpoint) for k in range(4))
        probe.send(endpoint, tam, _unique(lines, i, endpoint))  # the one slot now holds another NPC
        runs["cold"].append(probe.send(endpoint, brom, first))
        said = probe.send(endpoint, brom, second, max_tokens=16)
        runs["warm"].append(said)
        brom.messages += [("user", second), ("assistant", said["reply"].strip())]
        runs["after_reply"].append(probe.send(endpoint, brom, third))
        other = "completions" if endpoint == "chat" else "chat"
        runs["other_endpoint_next"].append(probe.send(other, brom, fourth))
    return runs


def _unique(lines: list[str], i: int, endpoint: str) -> str:
    """A player line no earlier request sent: no case finds its whole prompt cached by another."""
    return f"{lines[i % len(lines)]} ({endpoint} {i})"


def _interleaved(probe: _Probe, endpoint: str, reps: int, lines: list[str]) -> list[dict]:
    """NPC A, NPC B, then A again: A's second line, with B's request in between."""
    a, b = Npc("brom", PERSONA), Npc("tam", OTHER)
    out = []
    for i in range(reps):
        probe.send(endpoint, a, _unique(lines, 2 * i, endpoint))
        probe.send(endpoint, b, _unique(lines, 2 * i, endpoint))
        out.append(probe.send(endpoint, a, _unique(lines, 2 * i + 1, endpoint)))
    return out


def run(path: Path, threads: int, reps: int, lines: list[str], add: Callable[..., None]) -> dict[str, Any]:
    """The measurements (raw) and their rows: chat as npcai's row, completions as the baseline."""
    raw: dict[str, Any] = {"persona_chars": len(PERSONA), "engine_threads": threads}
    render = renderer("", "", "", str(path))
    if render is None:
        return {"skipped": "the model has no chat template"}
    with tempfile.TemporaryDirectory() as tmp:
        for cache in (False, True):
            log = Path(tmp) / f"server-{cache}.log"
            extra = ("--cache", "true") if cache else ()
            with LlamaServer(path, threads=threads, extra=extra, log=log) as server:
                model = httpx.get(server.url + "/models", timeout=10).json()["data"][0]["id"]
                probe = _Probe(server, model, render)
                try:
                    if not cache:
                        raw["one_slot"] = {e: _case(probe, e, reps, lines) for e in ("chat", "completions")}
                    else:
                        raw["ram_cache"] = {e: _interleaved(probe, e, reps, lines) for e in ("chat", "completions")}
                finally:
                    probe.close()

    def med(runs: list[dict], key: str) -> float:
        return statistics.median(r[key] for r in runs)

    slot = raw["one_slot"]
    for case, label in (("cold", "persona not cached"), ("warm", "persona cached, new line"),
                        ("after_reply", "after a reply")):
        add("remote", f"prefix: tokens evaluated, {label} (chat vs completions)", med(slot["chat"][case], "evaluated"),
            med(slot["completions"][case], "evaluated"), "completions (npcai renders)", unit="count")
        add("remote", f"prefix: latency, {label} (chat vs completions)", med(slot["chat"][case], "ms"),
            med(slot["completions"][case], "ms"), "completions (npcai renders)")
    add("remote", "prefix: tokens evaluated, the other endpoint next (chat->compl. vs compl.->chat)",
        med(slot["chat"]["other_endpoint_next"], "evaluated"),
        med(slot["completions"]["other_endpoint_next"], "evaluated"), "completions then chat", unit="count")
    ram = raw["ram_cache"]
    add("remote", "prefix: tokens evaluated, A after B, --cache true (chat vs compl.)", med(ram["chat"], "evaluated"),
        med(ram["completions"], "evaluated"), "completions (npcai renders)", unit="count")
    return raw
