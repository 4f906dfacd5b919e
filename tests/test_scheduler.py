"""What goes into the next model step: decisions first and alone, dialogue never starved,
prompts chunked so that no step grows long while NPCs talk or decisions keep coming.

The policy is pure bookkeeping over lanes, so these tests drive it with plain job records;
the end-to-end tests run the same scheduler against the real model.
"""

import time
from types import SimpleNamespace

from npcai.model.runtime import Lane, StepCost
from npcai.sidecar.jobs import DECISION, DIALOGUE, IDLE
from npcai.sidecar.scheduler import Scheduler

RT = SimpleNamespace(n_batch=256, estimate_s=lambda n_tokens, lanes=1, tree=False: 0.003 * n_tokens)  # 3 ms a token


def job(urgency, *pending: int, deadline_in: float | None = None, fed_ago: float | None = None,
        streaming: bool = False, seq: int = 0):
    now = time.monotonic()
    req = SimpleNamespace(priority=0, received=now, deadline=None if deadline_in is None else now + deadline_in)
    lanes = [Lane(seq=seq + i, pos=0, pending=[1] * n) for i, n in enumerate(pending)]
    return SimpleNamespace(req=req, rt=RT, urgency=urgency, lanes=lanes, finished=False,
                           started_at=now - (fed_ago or 0.0), fed_at=None if fed_ago is None else now - fed_ago,
                           first_logits_at=now if streaming else None)


def scheduler(*jobs) -> Scheduler:
    s = Scheduler()
    for j in jobs:
        s.add(j)
        s.started(j)
    return s


def planned(s: Scheduler) -> list[tuple[object, int]]:
    return [(j, n) for j, _, n in s.plan(RT)]


def streams(n: int, fed_ago: float = 0.01):
    return [job(DIALOGUE, 1, fed_ago=fed_ago, streaming=True, seq=10 + k) for k in range(n)]


def test_a_pending_decision_gets_a_step_of_its_own_while_streams_wait():
    talkers = streams(8)
    decision = job(DECISION, 18, deadline_in=0.150)
    assert planned(scheduler(*talkers, decision)) == [(decision, 18)]


def test_without_a_decision_every_stream_gets_its_next_token():
    talkers = streams(8)
    assert planned(scheduler(*talkers)) == [(t, 1) for t in talkers]


def test_starving_dialogue_gets_a_short_step_first_when_the_decision_can_afford_it():
    talkers = streams(8, fed_ago=0.5)
    relaxed = job(DECISION, 18, deadline_in=1.0)
    assert planned(scheduler(*talkers, relaxed)) == [(t, 1) for t in talkers]


def test_starving_dialogue_waits_when_it_would_make_the_decision_late():
    talkers = streams(8, fed_ago=0.5)
    tight = job(DECISION, 18, deadline_in=0.070)  # 18 tokens ~54 ms of 70: no room for 8 more (~24 ms) first
    assert planned(scheduler(*talkers, tight)) == [(tight, 18)]


def test_starving_dialogue_in_many_sequences_is_costed_per_sequence():
    """Eight streams' next tokens cost more than an 8-token chunk of one sequence (each NPC's cells
    are a stream of their own): taken for the chunk, they were let in ahead of a decision they made late."""
    talkers = streams(8, fed_ago=0.5)
    decision = job(DECISION, 32, deadline_in=0.150)
    cost = StepCost(base_ms=10.0, token_ms=2.0, lane_ms=3.5)
    rt = SimpleNamespace(n_batch=256, estimate_s=lambda n, lanes=1, tree=False: cost.estimate_s(n, lanes))
    for j in (*talkers, decision):
        j.rt = rt
    # the decision needs 74 ms of its 150: the streams' 50.5 ms fit, as an 8-token chunk's 26 ms would
    assert [(j, n) for j, _, n in scheduler(*talkers, decision).plan(rt)] == [(t, 1) for t in talkers]
    decision.req.deadline -= 0.030  # 46 ms of slack: the chunk's 26 ms would fit, the streams' 50.5 ms do not
    assert [(j, n) for j, _, n in scheduler(*talkers, decision).plan(rt)] == [(decision, 32)]


def test_a_choice_decisions_option_tree_is_costed_at_its_own_rate():
    """Every token of an option tree yields logits, so a choice's step costs more a token than a prompt
    chunk; the dialogue let in ahead of it must leave room for that."""
    talkers = streams(4, fed_ago=0.5)
    choice = job(DECISION, 32, deadline_in=0.105)
    choice.lanes[0].all_logits = True
    rates = {False: StepCost(base_ms=8.0, token_ms=2.0, lane_ms=3.0), True: StepCost(base_ms=8.0, token_ms=2.5)}
    rt = SimpleNamespace(n_batch=256, estimate_s=lambda n, lanes=1, tree=False: rates[tree].estimate_s(n, lanes))
    for j in (*talkers, choice):
        j.rt = rt
    # the streams' step costs 25 ms; the choice 72 ms as a prompt chunk (33 ms of slack: they would go
    # first) but 88 ms as the tree it is (17 ms of slack: they wait)
    assert [(j, n) for j, _, n in scheduler(*talkers, choice).plan(rt)] == [(choice, 32)]


def test_dialogue_that_is_not_starving_never_delays_a_decision_even_with_slack():
    talkers = streams(8)
    relaxed = job(DECISION, 18, deadline_in=10.0)
    assert planned(scheduler(*talkers, relaxed)) == [(relaxed, 18)]


def test_new_prompts_beside_streams_take_what_the_step_budget_leaves():
    """Every running stream waits for each step that carries a prompt chunk (llama.cpp evaluates the
    chunk in a sub-batch of its own), so new lines go in as few steps as the budget allows."""
    talkers = streams(4)
    new_lines = [job(DIALOGUE, 14, seq=30 + k) for k in range(6)]  # 84 prompt tokens, each under 16
    plan = planned(scheduler(*talkers, *new_lines))
    assert plan == [*((t, 1) for t in talkers), *((j, 14) for j in new_lines)]


def test_new_lines_that_do_not_fit_one_step_beside_streams_all_finish_in_the_same_later_step():
    """None of them starts streaming early only to wait through the others' prompts."""
    talkers = streams(16)
    new_lines = [job(DIALOGUE, 14, seq=30 + k) for k in range(20)]  # 280 prompt tokens: over the 240 left
    s = scheduler(*talkers, *new_lines)
    first = [(j, n) for j, _, n in s.plan(RT)]
    assert first[:16] == [(t, 1) for t in talkers]
    assert sum(n for _, n in first[16:]) == 240 and all(n < 14 for _, n in first[16:])
    for j, lane, n in s.plan(RT)[16:]:  # the step ran: pending tokens go
        del lane.pending[:n]
    second = [(j, n) for j, _, n in s.plan(RT)]
    assert [j for j, _ in second[16:]] == new_lines
    assert [n for _, n in second[16:]] == [len(j.lanes[0].pending) for j in new_lines]  # each to its end


def test_new_lines_that_do_not_fit_one_step_finish_together_even_before_any_stream_runs():
    """Sixteen lines at once: none starts streaming in the first step only to wait through the second."""
    new_lines = [job(DIALOGUE, 20, seq=30 + k) for k in range(16)]  # 320 prompt tokens: over the 256
    s = scheduler(*new_lines)
    first = s.plan(RT)
    assert sum(n for _, _, n in first) == 256 and all(n < 20 for _, _, n in first)
    for _, lane, n in first:  # the step ran: pending tokens go
        del lane.pending[:n]
    second = [(j, n) for j, _, n in s.plan(RT)]
    assert [j for j, _ in second] == new_lines
    assert [n for _, n in second] == [len(j.lanes[0].pending) for j in new_lines]  # each to its end


def test_decisions_are_never_held_back_to_finish_together():
    decisions = [job(DECISION, 200, deadline_in=1.0, seq=k) for k in range(2)]
    assert planned(scheduler(*decisions)) == [(decisions[0], 200), (decisions[1], 56)]


def _just_decided(s: Scheduler) -> Scheduler:
    earlier = job(DECISION, 18, deadline_in=0.150)
    s.add(earlier)  # a decision arrived just now (and already ended): the next one is likely soon
    s.drop(earlier)
    return s


def test_while_decisions_keep_arriving_a_step_is_streams_or_one_short_prompt_chunk_whichever_waited_longer():
    # Each KV sequence has its own stream: lanes of different lengths are separate sub-batches,
    # so a step mixing both would cost both and no longer fit between decisions.
    talkers = streams(4, fed_ago=0.05)
    new_lines = [job(DIALOGUE, 40, seq=30 + k, fed_ago=0.2) for k in range(2)]
    assert planned(_just_decided(scheduler(*talkers, *new_lines))) == [(new_lines[0], 16)]
    talkers = streams(4, fed_ago=0.3)
    new_lines = [job(DIALOGUE, 40, seq=30 + k, fed_ago=0.2) for k in range(2)]
    assert planned(_just_decided(scheduler(*talkers, *new_lines))) == [(t, 1) for t in talkers]


def test_a_long_prompt_alone_fills_the_batch():
    persona = job(DIALOGUE, 600)
    assert planned(scheduler(persona)) == [(persona, 256)]


def test_decisions_go_earliest_deadline_first_and_share_one_step():
    later = job(DECISION, 18, deadline_in=0.300, seq=1)
    sooner = job(DECISION, 20, deadline_in=0.100, seq=2)
    assert planned(scheduler(later, sooner)) == [(sooner, 20), (later, 18)]


def test_while_the_budget_holds_dialogue_back_only_decisions_step():
    talkers = streams(8, fed_ago=0.5)  # starving, and the decision could afford them: still held back
    relaxed = job(DECISION, 18, deadline_in=1.0)
    s = scheduler(*talkers, relaxed)
    assert s.deciding()
    assert [(j, n) for j, _, n in s.plan(RT, dialogue=False)] == [(relaxed, 18)]
    assert scheduler(*talkers).plan(RT, dialogue=False) == []


def test_thinking_ahead_only_takes_steps_that_no_one_else_wants():
    talkers = streams(2)
    ahead = job(IDLE, 6, seq=40)
    assert planned(scheduler(*talkers, ahead)) == [(t, 1) for t in talkers]
    assert planned(scheduler(ahead)) == [(ahead, 6)]


def test_a_steps_cost_is_learned_as_a_fixed_part_plus_a_part_per_token():
    # short steps are not nearly free: every step reads all the weights once
    cost = StepCost(base_ms=1.0, token_ms=5.0)
    for _ in range(60):
        cost.learn(0.009 + 0.002 * 1, 1)  # a stream's next token: 11 ms
        cost.learn(0.009 + 0.002 * 32, 32)  # a 32-token prompt chunk: 73 ms
    assert abs(cost.estimate_s(2) - 0.013) < 0.001
    assert abs(cost.estimate_s(32) - 0.073) < 0.002


def test_a_step_over_several_sequences_is_learned_as_a_cost_per_sequence():
    cost = StepCost(base_ms=1.0, token_ms=5.0, lane_ms=0.0)
    for _ in range(20):
        cost.learn(0.010, 1)  # one stream's next token
        cost.learn(0.010 + 0.002 * 32, 32)  # a 32-token prompt chunk: 2 ms a token
        cost.learn(0.010 + 0.002 * 8 + 0.0025 * 7, 8, lanes=8)  # eight streams' next tokens: 43.5 ms
    assert abs(cost.estimate_s(8, lanes=8) - 0.0435) < 0.002
    assert abs(cost.estimate_s(8) - 0.026) < 0.002  # one sequence's 8-token chunk


def test_one_stalled_step_does_not_change_the_cost_estimate():
    # another process took the CPU mid-step: a 1-token step took 3 s, a 32-token one 5 s
    cost = StepCost(base_ms=1.0, token_ms=5.0)
    for _ in range(20):
        cost.learn(0.009 + 0.002 * 1, 1)
        cost.learn(0.009 + 0.002 * 32, 32)
    cost.learn(3.0, 1)
    cost.learn(5.0, 32)
    assert abs(cost.estimate_s(33) - 0.075) < 0.002  # a decision's step is still not hopeless


def test_slowness_that_lasts_is_learned_within_a_window_of_steps():
    cost = StepCost(base_ms=9.0, token_ms=2.0)
    for _ in range(10):  # the machine got three times slower and stayed so
        cost.learn(3 * (0.009 + 0.002 * 1), 1)
        cost.learn(3 * (0.009 + 0.002 * 32), 32)
    assert abs(cost.estimate_s(32) - 3 * 0.073) < 0.01
