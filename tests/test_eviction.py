"""KV memory pressure: idle NPCs give way least recently used first, transparently."""

import contextlib
import time

import msgpack

from npcai import Client, Sidecar


def test_more_npcs_than_kv_sequences_are_all_served(model_path, village):
    with Sidecar("--n-seq", "4", "--threads", "2") as sc, Client(sc.endpoint) as c:
        names = [f"{n}{i}" for i in range(2) for n in ("brom", "mira", "grik")]
        for name in names:
            c.npc(name, village["npcs"][name[:-1]]["persona"])
        for n in names:
            assert c.say(n, "Who are you?", max_tokens=6, temperature=0)["text"]
        again = {}
        for n in names:  # each NPC comes back after others took its sequence, its history intact
            again[n] = c.say(n, "And what do you do?", max_tokens=6, temperature=0)["text"]
            assert again[n]
        # (Token-exact equality with the first pass is not promised: re-evaluating a prompt in
        # other batch shapes changes llama.cpp's float rounding, which can flip a near-tie.)
        decision = c.decide("A wolf attacks.", npc=names[0], choices=["fight", "run"])
        assert decision["value"] in ("fight", "run")
        engine = c.call("stats")["engine"]["models"][0]
        assert engine["evictions"] > 0
        state = msgpack.unpackb(c.call("save", npc=names[-1])["state"])
        assert [m[0] for m in state["messages"]] == ["user", "assistant"] * 2
        assert state["messages"][-2:] == [["user", "And what do you do?"], ["assistant", again[names[-1]]]]


def test_a_conversation_longer_than_its_sequence_lets_old_turns_go(model_path, village):
    # 2 sequences of 256 cells; one NPC talks well past 256 tokens of persona and history
    with Sidecar("--n-ctx", "512", "--n-seq", "2", "--npc-ctx", "256", "--threads", "2") as sc, \
            Client(sc.endpoint) as c:
        c.npc("brom", village["npcs"]["brom"]["persona"])
        lines = [f"Tell me about the sword you made in year {1000 + i} of the kingdom." for i in range(12)]
        for line in lines:
            reply = c.say("brom", line, max_tokens=12, temperature=0)
            assert reply["event"] == "done" and reply["usage"]["prompt_tokens"] + reply["usage"]["cached_tokens"] <= 256
        kept = msgpack.unpackb(c.call("save", npc="brom")["state"])["messages"]
        assert 0 < len(kept) < 2 * len(lines)  # the oldest turns gave way...
        assert kept[-2][1] == lines[-1]  # ...and the newest is remembered
        assert c.decide("A wolf attacks.", npc="brom", choices=["fight", "run"])["value"] in ("fight", "run")


def test_an_npc_that_gave_way_comes_back_with_its_cache(model_path, village):
    """An evicted NPC's cells wait in host memory: back, it reuses its whole prefix and answers
    exactly as it does where it never gave way; with --park-mb 0 it evaluates everything again."""
    persona = village["npcs"]["mira"]["persona"]
    runs = {}
    for label, flags in (("roomy", ["--n-seq", "16"]), ("parked", ["--n-seq", "2", "--n-ctx", "2048"]),
                         ("dropped", ["--n-seq", "2", "--n-ctx", "2048", "--park-mb", "0"])):
        with Sidecar(*flags, "--threads", "2") as sc, Client(sc.endpoint) as c:
            c.npc("a", persona, seed=1)
            c.say("a", "Hello there!", max_tokens=6, temperature=0)
            time.sleep(1.0)  # its end of turn and the next opening are evaluated meanwhile
            for other in ("b", "c"):  # with two sequences, the second of these takes a's
                c.npc(other, persona)
                c.say(other, "Hi.", max_tokens=4, temperature=0)
            back = c.say("a", "What do you sell today?", max_tokens=8, temperature=0)
            runs[label] = (back, c.call("stats")["engine"]["models"][0])
    roomy, parked, dropped = (runs[k][0] for k in ("roomy", "parked", "dropped"))
    assert runs["parked"][1]["evictions"] > 0 and runs["parked"][1]["restores"] > 0
    assert runs["roomy"][1]["evictions"] == 0
    assert parked["usage"] == roomy["usage"] and parked["text"] == roomy["text"]
    assert dropped["usage"]["cached_tokens"] == 0 and runs["dropped"][1]["restores"] == 0


def test_npcs_talking_together_are_moved_next_to_each_other_and_answer_as_alone(model_path, village):
    """llama.cpp evaluates each run of consecutive sequence ids as a sub-batch of its own, so NPCs
    that talk at once are moved into consecutive sequences (an idle one in the way gives way)."""
    with Sidecar("--n-seq", "6", "--threads", "2") as sc, Client(sc.endpoint) as c:
        names = ["brom", "mira", "grik", "captain", "brom2", "mira2"]
        for name in names:  # sequences 0-5, in this order
            c.npc(name, village["npcs"][name.rstrip("2")]["persona"])
        talkers = names[0::2]  # sequences 0, 2 and 4, with idle NPCs between them
        line = {n: village["npcs"][n.rstrip("2")]["lines"][0] for n in talkers}
        solo = {n: c.say(n, line[n], temperature=0, max_tokens=12)["text"] for n in talkers}
        for n in talkers:
            c.npc(n, village["npcs"][n.rstrip("2")]["persona"])  # reset history, keep the cache
        handles = {n: c.request("say", npc=n, text=line[n], temperature=0, max_tokens=12) for n in talkers}
        together = {n: c.wait(h)["text"] for n, h in handles.items()}
        assert together == solo
        assert c.call("stats")["engine"]["models"][0]["moves"] >= 1


def test_npcs_with_actions_defined_in_a_burst_over_few_sequences_all_act(model_path, village):
    """Each NPC defined with actions queues the scoring of its action choices' prior for spare steps; that
    waiting work never pins the NPC's sequence, so a level's worth of NPCs defined at once, more than there
    are sequences, are all defined and all act."""
    acts = [{"name": "greet", "description": "greet the traveller"}, {"name": "ignore", "description": "ignore them"}]
    with Sidecar("--n-seq", "4", "--threads", "2") as sc, Client(sc.endpoint) as c:
        names = [f"villager{i}" for i in range(10)]
        for i, name in enumerate(names):
            c.npc(name, f"{village['npcs']['mira']['persona']} You are villager number {i}.", actions=acts)
        for name in names:
            reply = c.decide("A traveller walks up to you.", npc=name, actions=True)
            assert reply["event"] == "done" and reply["value"]["name"] in ("greet", "ignore"), reply
        assert c.call("stats")["engine"]["models"][0]["evictions"] > 0


@contextlib.contextmanager
def _every_sequence_busy(village):
    """A ``--n-seq 2`` sidecar whose both sequences two long regex decisions of NPCs a and b hold, for 150
    model steps or more (600 letters, one token each); NPC z is defined and idle. Yields the client and the
    two decisions."""
    with Sidecar("--n-seq", "2", "--n-ctx", "1024", "--npc-ctx", "512", "--threads", "2") as sc, \
            Client(sc.endpoint) as c:
        c.npc("a", village["npcs"]["brom"]["persona"])
        c.npc("b", village["npcs"]["grik"]["persona"])
        c.npc("z", "You are Zed, a baker.")
        busy = [c.request("decide", npc=n, situation="Spell a long word.", regex="[a-z]{600}", max_tokens=512)
                for n in "ab"]
        deadline = time.monotonic() + 30
        while c.call("stats")["engine"]["running"] < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        yield c, busy


def test_an_npc_defined_while_every_sequence_is_busy_is_defined_and_says_so(model_path, village):
    """The definition replaces the NPC when it arrives; with no KV sequence free to evaluate its persona then,
    the reply is still ok (nothing cached yet: its first request evaluates it), never an error after the fact."""
    with _every_sequence_busy(village) as (c, busy):
        reply = c.call("npc", npc="z", persona="You are Zed, a wizard.")
        assert reply["event"] == "ok" and reply["cached_tokens"] == 0
        assert not any(h.finished for h in busy)  # asked while both still ran
        for h in busy:
            c.wait(h)
        assert msgpack.unpackb(c.call("save", npc="z")["state"])["persona"] == "You are Zed, a wizard."
        line = c.say("z", "Who are you?", max_tokens=16, temperature=0)
        assert line["event"] == "done" and not line["used_fallback"]


def test_a_line_or_grammar_decision_asked_while_every_sequence_is_busy_waits_for_one_and_is_answered(
        model_path, village):
    """Lines and grammar decisions are bounded, so a request that finds every KV sequence busy waits in the
    queue for one to free instead of being refused ``overloaded``."""
    with _every_sequence_busy(village) as (c, busy):
        line = c.request("say", npc="z", text="Who are you?", max_tokens=16, temperature=0)
        decision = c.request("decide", situation="Name a colour.", regex="(red|green|blue)")
        for h in (line, decision):
            reply = c.wait(h)
            assert reply["event"] == "done" and not reply["used_fallback"], reply
            assert any(b.finished for b in busy)  # it waited for one of them
        assert all(c.wait(b)["event"] == "done" for b in busy)


def test_a_line_waiting_for_a_sequence_past_its_deadline_gets_its_fallback_then(model_path, village):
    with _every_sequence_busy(village) as (c, busy):
        sent = time.monotonic()
        reply = c.wait(c.request("say", npc="z", text="Who are you?", max_tokens=16, deadline_ms=400,
                                 fallback="Hmm."))
        assert reply["event"] == "done" and reply["timed_out"] and reply["used_fallback"], reply
        assert reply["value"] == "Hmm." and 0.35 < time.monotonic() - sent < 1.5
        assert not any(b.finished for b in busy)
        line = c.say("z", "Who are you?", max_tokens=16, temperature=0)  # and the NPC talks once one frees
        assert line["event"] == "done" and not line["used_fallback"]


def test_a_conversation_past_its_window_still_evaluates_only_its_new_tokens_on_most_lines(model_path, village):
    """When old turns must give way, enough go at once that the lines after fit too: they reuse the cached
    history (each drop changes the text right after the persona, so nothing past it stays cached), and
    only one line in several evaluates the history again. The newest turns are kept."""
    with Sidecar("--n-ctx", "512", "--n-seq", "2", "--npc-ctx", "256", "--threads", "2") as sc, \
            Client(sc.endpoint) as c:
        c.npc("brom", village["npcs"]["brom"]["persona"])
        lines = [f"Tell me about the sword you made in year {1000 + i} of the kingdom." for i in range(18)]
        reused = []
        for line in lines:
            reply = c.say("brom", line, max_tokens=12, temperature=0)
            usage = reply["usage"]
            assert reply["event"] == "done" and usage["prompt_tokens"] + usage["cached_tokens"] <= 256
            reused.append(usage["cached_tokens"] / (usage["cached_tokens"] + usage["prompt_tokens"]))
        kept = msgpack.unpackb(c.call("save", npc="brom")["state"])["messages"]
        assert len(kept) < 2 * len(lines) - 12  # the window overflowed early on...
        assert sum(r > 0.6 for r in reused[-12:]) >= 9, reused  # ...and most lines since reused their history
        assert kept[-4][1] == lines[-2] and kept[-2][1] == lines[-1]  # the newest turns are remembered
