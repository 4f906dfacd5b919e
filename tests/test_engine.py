"""The engine in-process, without sockets: what the socket thread does to it cannot break its loop."""

from __future__ import annotations

import threading
import time

import pytest

from npcai import protocol as P
from npcai.sidecar.admission import load_runtimes
from npcai.sidecar.engine import Engine
from npcai.sidecar.jobs import ChoiceDecideJob, ChoicePriorJob
from npcai.sidecar.npc import Npc
from npcai.sidecar.settings import Settings

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # llama_cpp's, once per vocabulary entry


@pytest.fixture
def engine(model_path):
    replies: list[tuple[P.Request, dict]] = []
    settings = Settings(n_ctx=2048, n_seq=2, threads=1)
    eng = Engine(settings, {"dialogue": model_path}, lambda req, reply: replies.append((req, reply)))
    eng.replies = replies
    loop = threading.Thread(target=eng.run, name="engine-under-test", daemon=True)
    loop.start()
    yield eng, loop
    eng.stop()
    loop.join(10)
    eng.close()


def test_cancellations_from_another_thread_while_the_loop_runs_never_break_it(engine):
    """The socket thread cancels whenever it likes (deadlines, cancel ops, clients leaving) while the
    engine loop goes through the cancellations it holds: a shared table failed with "dictionary
    changed size during iteration" and killed the loop."""
    eng, loop = engine
    deadline = time.monotonic() + 3.0
    n = 0
    while time.monotonic() < deadline and loop.is_alive():
        for _ in range(1000):  # of requests that already ended: the engine keeps each a while
            eng.cancel(P.SayRequest(id=n, npc="nobody", text="hi"), expired=True)
            n += 1
    assert loop.is_alive(), "the engine loop died"
    probe = P.ForgetRequest(id=1, npc="nobody")
    eng.submit(probe)
    until = time.monotonic() + 5
    while not any(req is probe for req, _ in eng.replies) and time.monotonic() < until:
        time.sleep(0.01)
    assert [reply["code"] for req, reply in eng.replies if req is probe] == ["unknown_npc"]


def test_a_model_step_says_what_it_did_in_words_and_an_unfinished_one_changes_nothing(model_path):
    """runtime.step returns a result value (not llama_decode's 1 and 2): a step stopped mid-way leaves its lane
    as it was, to be run again; a step that ran advances it."""
    from pathlib import Path

    from npcai.model.runtime import Runtime

    rt = Runtime(model_path, name="under-test", n_ctx=512, n_seq=2, n_batch=64, threads=1,
                 grammar_dir=Path(Settings().grammar_dir))
    try:
        lane = rt.fork(None, rt.text_tokens("The blacksmith looks up from the anvil and says"))
        pending = list(lane.pending)
        rt.ctx.set_abort(lambda: True)
        result = rt.step([(lane, len(pending))])
        assert (result.status, result.ok, lane.pending, lane.pos) == ("aborted", False, pending, 0)
        rt.ctx.set_abort(None)
        result = rt.step([(lane, len(pending))])
        assert (result.status, result.ok, lane.pending, lane.pos) == ("ok", True, [], len(pending))
        assert len(lane.rows) == 1
    finally:
        rt.close()


def test_thinking_ahead_reads_an_npcs_cells_without_keeping_them_resident_and_a_decision_keeps_them(model_path):
    """An NPC whose cells some job counts on is never parked: a decision counts until it ends; the prior scored
    ahead in spare steps reads the cells, parked or not, and must not keep another NPC's stream waiting."""
    rt = load_runtimes(Settings(n_ctx=2048, n_seq=2, threads=1), {"decision": model_path})["decision"]
    try:
        npc = Npc("grik", "You are Grik, a goblin scout.")
        message = {"v": P.VERSION, "id": 1, "op": "decide", "npc": "grik", "situation": "A wolf howls.",
                   "choices": ["hide", "run"]}
        req = P.parse_request(message, b"", time.monotonic())
        kv = npc.kv_for(rt)
        ahead = ChoicePriorJob(req, rt, lambda reply: None, 512, npc)
        assert kv.users == 0
        decision = ChoiceDecideJob(req, rt, lambda reply: None, 512, npc)
        assert kv.users == 1
        ahead.release_npc()  # what it never held, it cannot let go of for the decision
        assert kv.users == 1
        decision.release_npc()
        assert kv.users == 0
    finally:
        rt.close()
