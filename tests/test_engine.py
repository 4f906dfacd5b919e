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


_OPTIONS = [f"walk to the {place} and wait there" for place in
            ("well", "mill", "forge", "gate", "tavern", "chapel", "market", "bridge")]
_ACTIONS = [{"name": "give_item", "description": "give the customer what they paid for",
             "args": {"type": "object", "properties": {"item": {"enum": ["sword", "shield", "bread"]}},
                      "required": ["item"]}},
            {"name": "refuse", "description": "refuse the deal"},
            {"name": "call_guard", "description": "call the guard"}]


def _request(eng: Engine, message: dict) -> P.Request:
    return P.parse_request({"v": P.VERSION, **message}, b"game", time.monotonic())


def _ending(eng: Engine, req: P.Request, timeout: float = 60.0) -> list[dict]:
    """Every reply the engine made to ``req`` once it holds no job (its ending among them, unless it expired)."""
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        if not eng.scheduler.jobs() and eng._inbox.empty():
            break
        time.sleep(0.01)
    time.sleep(0.05)
    return [reply for r, reply in eng.replies if r is req]


def _cancel_at_the_tree_step(eng: Engine, req: P.Request, *, expired: bool, after: bool = False) -> dict:
    """Cancel ``req`` (or expire it) as the next model step that scores an option tree begins (or, ``after``: as
    it ends, before the jobs see its result), as a cancel op or a deadline reaches the engine then."""
    from npcai.model.scoring import OptionTree

    rt = eng._models()[0]
    real_step, seen = rt.step, {"trees": 0}

    def step(lanes):
        tree = any(isinstance(lane, OptionTree) for lane, _ in lanes) and not seen["trees"]
        seen["trees"] += tree
        if tree and not after:
            eng.cancel(req, expired=expired)
        result = real_step(lanes)
        if tree and after:
            eng.cancel(req, expired=expired)
        return result

    rt.step = step
    return seen


@pytest.mark.parametrize("expired", [False, True], ids=["cancel", "deadline"])
def test_a_choice_decision_cancelled_while_its_options_are_scored_stops_that_step_and_ends_cancelled(engine, expired):
    """The options are scored in the option scorer's own llama context: a cancel (or the deadline) that came while
    that step ran did not stop it, and the decision then ended ``done`` (PROTOCOL.md, cancel: ``cancelled``)."""
    eng, _ = engine
    rt = eng._models()[0]
    req = _request(eng, {"id": 7, "op": "decide", "situation": "A wolf howls at the edge of the village.",
                         "choices": _OPTIONS})
    trees, aborted = rt.scorer().stats["trees"], rt.stats["aborted_steps"]
    seen = _cancel_at_the_tree_step(eng, req, expired=expired)
    eng.submit(req)
    replies = _ending(eng, req)
    assert seen["trees"] == 1
    assert [r["event"] for r in replies] == ([] if expired else [P.CANCELLED])  # an expiry: the server answered
    assert rt.scorer().stats["trees"] == trees and rt.stats["aborted_steps"] == aborted + 1


@pytest.mark.parametrize("expired", [False, True], ids=["cancel", "deadline"])
def test_a_choice_decision_cancelled_as_its_scoring_step_ends_ends_cancelled_not_done(engine, expired):
    """A cancel that the step could not stop (it came as the step ended, or the step was too short to stop) still
    ends the decision ``cancelled``: the step's result is not turned into a ``done`` after it."""
    eng, _ = engine
    req = _request(eng, {"id": 8, "op": "decide", "situation": "A wolf howls.", "choices": ["hide", "run"]})
    seen = _cancel_at_the_tree_step(eng, req, expired=expired, after=True)
    eng.submit(req)
    assert [r["event"] for r in _ending(eng, req)] == ([] if expired else [P.CANCELLED])
    assert seen["trees"] == 1


def test_a_decision_with_actions_cancelled_while_its_options_are_scored_stops_that_step_and_ends_cancelled(engine):
    """A decide with ``actions`` is a relay whose first stage is a choice decision of its own: cancelling the
    relay stops that sub-request's step too, and the request ends ``cancelled``, not ``done``."""
    eng, _ = engine
    rt = eng._models()[0]
    define = _request(eng, {"id": 1, "op": "npc", "npc": "smith", "persona": "You are Brom, the village smith.",
                            "actions": _ACTIONS})
    eng.submit(define)
    assert [r["event"] for r in _ending(eng, define)] == [P.OK]  # and its action priors scored: idle now
    req = _request(eng, {"id": 9, "op": "decide", "npc": "smith", "actions": True,
                         "situation": "A customer hands you 20 gold for a shield."})
    trees, aborted = rt.scorer().stats["trees"], rt.stats["aborted_steps"]
    seen = _cancel_at_the_tree_step(eng, req, expired=False)
    eng.submit(req)
    assert [r["event"] for r in _ending(eng, req)] == [P.CANCELLED]
    assert seen["trees"] == 1
    assert rt.scorer().stats["trees"] == trees and rt.stats["aborted_steps"] == aborted + 1
