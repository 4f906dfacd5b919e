"""Sentence events: a say tells where each sentence of its line ends, before its done, so speech and
subtitles can start early. Against the real sidecar and model."""

from __future__ import annotations

from npcai.model.lines import Sentences


def test_a_text_fed_piece_by_piece_is_cut_at_sentence_ends_and_joins_back():
    text = 'Aye. The shield is 20 gold!" Take it or "leave" it... Hm? 3.5 coins'
    cut = Sentences()
    out = [s for i in range(len(text) + 1) for s in cut.feed(text[:i])]
    out.append(cut.rest(text))
    assert out == ["Aye.", ' The shield is 20 gold!"', ' Take it or "leave" it...', " Hm?", " 3.5 coins"]


def test_say_sends_its_sentences_before_done_and_they_join_into_its_text(client, brom):
    cut_lines = 0
    for seed in range(1, 6):
        handle = client.request("say", npc="brom", text="Tell me about your shields, in three sentences.",
                                max_tokens=90, soft_max_tokens=80, temperature=0.9, seed=seed)
        order = []
        handle.on_sentence = lambda s: order.append("sentence")
        handle.on_done = lambda r: order.append("done")
        reply = client.wait(handle)
        assert reply["event"] == "done"
        assert "".join(handle.sentences) == reply["text"] == handle.text
        assert order == ["sentence"] * len(handle.sentences) + ["done"]
        assert all(s.strip() for s in handle.sentences)
        assert all(s.rstrip()[-1] in ".!?…\"')]*" for s in handle.sentences[:-1])
        cut_lines += len(handle.sentences) > 1
    assert cut_lines  # some of these lines ran to more than one sentence, and were cut


def test_say_without_streaming_sends_no_sentences(client, brom):
    handle = client.request("say", npc="brom", text="Hello.", stream=False, max_tokens=24, seed=3)
    client.wait(handle)
    assert handle.sentences == [] and handle.chunks == []
