"""KV memory pressure: idle NPCs give way least recently used first, transparently."""

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


def test_a_small_kv_cache_evicts_instead_of_failing(model_path, village):
    with Sidecar("--n-ctx", "256", "--npc-ctx", "200", "--threads", "2") as sc, Client(sc.endpoint) as c:
        for i in range(6):  # ~6 x 80 tokens of personas and lines: more than 256 cells
            c.npc(f"brom{i}", village["npcs"]["brom"]["persona"])
            assert c.say(f"brom{i}", "Can you fix my sword?", max_tokens=8)["event"] == "done"
        assert c.call("stats")["engine"]["models"][0]["evictions"] > 0
