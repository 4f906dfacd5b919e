"""The compute budget: back-off when the game misses frames, recovery when it stops, pauses and caps."""

import errno
import os

import pytest

from npcai.sidecar.budget import Budget, Governor


def governor(**budget) -> Governor:
    return Governor(Budget(**budget), default_threads=4, n_batch=256)


def test_without_frame_reports_or_limits_the_engine_runs_flat_out():
    g = governor()
    assert (g.threads(), g.batch_cap()) == (4, 256)
    g.after_step(0.010, generated=8, now=100.0)
    assert g.wait_s(now=100.0) == 0


def test_missed_frames_back_off_one_level_at_a_time_then_recover():
    g = governor(frame_ms=16.7)
    g.report_frames([16.6, 16.7], now=0.0)
    assert g.level == 0
    g.report_frames([25.0, 16.6, 25.0], now=1.0)
    assert (g.level, g.threads(), g.batch_cap()) == (1, 2, 64)
    g.report_frames([25.0, 25.0], now=1.1)  # within the escalation interval: one bad moment is not a panic
    assert g.level == 1
    g.report_frames([30.0, 30.0], now=1.5)
    g.report_frames([30.0, 30.0], now=2.0)
    assert (g.level, g.threads(), g.batch_cap()) == (3, 1, 8) and g.backoffs == 3
    g.report_frames([16.0], now=3.0)
    g.report_frames([16.2], now=3.5)
    assert g.level == 3  # not yet a second of good frames
    g.report_frames([16.1], now=4.1)
    assert g.level == 2 and g.recoveries == 1
    for t in (5.2, 6.3, 7.4):
        g.report_frames([16.0], now=t)
    assert (g.level, g.threads(), g.batch_cap()) == (0, 4, 256) and g.recoveries == 3


def test_a_lone_spike_is_not_the_sidecars_doing_but_a_second_within_30_frames_is():
    g = governor(frame_ms=16.7)
    g.report_frames([40.0] + [16.6] * 5, now=0.0)  # a garbage collection, an asset load
    assert g.level == 0
    g.report_frames([16.6] * 30, now=1.0)
    g.report_frames([40.0], now=2.0)  # the first spike has left the 30-frame window
    assert g.level == 0
    g.report_frames([16.6] * 10 + [35.0], now=3.0)
    assert g.level == 1 and g.backoffs == 1


def test_a_wall_time_share_pauses_the_engine_between_steps():
    g = governor(share=0.25)
    g.after_step(0.010, generated=0, now=50.0)
    assert g.wait_s(now=50.0) == pytest.approx(0.030)  # 10 ms of compute buys 30 ms of rest at 25%
    assert g.wait_s(now=50.031) == 0


def test_backing_off_shrinks_the_share_too():
    g = governor(share=0.5, frame_ms=16.7)
    g.report_frames([40.0, 40.0], now=0.0)
    g.after_step(0.010, generated=0, now=10.0)
    assert g.wait_s(now=10.0) == pytest.approx(0.010 * (1 / 0.3 - 1))


def test_a_token_rate_cap_spaces_out_dialogue_tokens_but_never_holds_back_a_decision():
    g = governor(tokens_per_s=100)
    g.after_step(0.001, generated=4, now=20.0)
    assert g.wait_s(now=20.0) == pytest.approx(0.04)
    assert g.wait_s(now=20.0, deciding=True) == 0


def test_a_new_budget_applies_at_once_even_after_a_tiny_cap_ran_up_a_long_pause():
    g = governor(tokens_per_s=0.001)
    g.after_step(0.001, generated=4, now=30.0)
    assert g.wait_s(now=30.0) == pytest.approx(4000)  # 4 tokens at one per 1,000 s
    g.set_budget(tokens_per_s=50)
    assert g.wait_s(now=30.0) == 0


def test_the_game_can_lower_threads_and_clear_its_frame_target():
    g = governor(frame_ms=16.7)
    g.report_frames([40.0, 40.0], now=0.0)
    g.set_budget(threads=1)
    assert g.threads() == 1
    g.set_budget(frame_ms=0.0, threads=0)
    assert (g.level, g.threads()) == (0, 4)


def test_stats_show_the_effective_budget_and_events():
    g = governor(frame_ms=16.7, share=0.8)
    g.report_frames([30.0, 30.0], now=0.0)
    s = g.stats()
    assert s["backoff_level"] == 1 and s["backoff_events"] == 1
    assert s["effective"] == {"threads": 2, "batch": 64, "share": 0.48}


# --- one set of bounds for the budget op and the --budget-* flags ----------------------------------

_FLAG_OF = {"threads": "budget_threads", "tokens_per_s": "budget_tokens_per_s", "share": "budget_share",
            "frame_ms": "frame_ms"}


@pytest.mark.parametrize("field, value", [
    ("share", 0), ("share", 1e-300), ("share", 0.009), ("share", -0.5), ("share", 5), ("share", float("nan")),
    ("share", 1), ("share", 0.01),
    ("tokens_per_s", -5), ("tokens_per_s", float("nan")), ("tokens_per_s", 0), ("tokens_per_s", 30),
    ("frame_ms", -3), ("frame_ms", 1001), ("frame_ms", 0), ("frame_ms", 16.7),
    ("threads", -2), ("threads", 0), ("threads", 3),
])
def test_the_budget_flags_refuse_exactly_what_the_budget_op_refuses(field, value):
    from npcai.errors import BadRequest, SettingsError
    from npcai.protocol import check_budget
    from npcai.sidecar.settings import Settings

    try:
        check_budget({field: value})
        wire = None
    except BadRequest as exc:
        wire = exc
    flag = _FLAG_OF[field]
    try:
        Settings(**{flag: value}).validate()
        cli = None
    except SettingsError as exc:
        cli = exc
    assert (wire is None) == (cli is None), (wire, cli)
    if cli is not None:
        assert cli.message.startswith(f"bad --{flag.replace('_', '-')} ")
        assert cli.message.split(": must be ", 1)[1] == wire.message.split(" must be ", 1)[1]


@pytest.mark.parametrize("share, refused", [(1e-300, True), (0.009, True), (0.01, False), (1, False), (1.01, True)])
def test_a_share_under_one_percent_is_refused_rather_than_reported_as_zero_and_run_at_one_percent(share, refused):
    from npcai.errors import BadRequest
    from npcai.protocol import check_budget

    if refused:
        with pytest.raises(BadRequest, match="'share' must be from 0.01 to 1"):
            check_budget({"share": share})
    else:
        check_budget({"share": share})
        assert governor(share=share).stats()["effective"]["share"] == share


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this platform")
@pytest.mark.parametrize("kernel", ["refuses them all", "drops one"])
def test_cpus_the_process_may_not_run_on_are_refused_in_one_line_not_dropped(monkeypatch, kernel):
    """A cpuset (a container's) can keep CPUs the machine has from the process: Linux fails when it leaves none
    of the ids given, and drops the others without a word."""
    from npcai.errors import SettingsError
    from npcai.sidecar.budget import be_polite

    def setaffinity(pid, cpus):
        if kernel == "refuses them all":
            raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(os, "sched_setaffinity", setaffinity)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    with pytest.raises(SettingsError) as err:
        be_polite(0, [0, 1] if kernel == "drops one" else [1])
    assert err.value.message == ("bad --cpus '0,1': this process may not run on CPU 1" if kernel == "drops one"
                                 else "bad --cpus '1': this process may not run on them (Invalid argument)")


# --- over the wire, against the real sidecar ------------------------------------------------------

import time  # noqa: E402

from npcai import Client, RequestFailed, Sidecar  # noqa: E402


def test_the_sidecar_is_polite_by_default_and_says_so_in_hello(model_path):
    with Sidecar() as sc, Client(sc.endpoint) as c:
        hello = c.hello()
        assert hello["compute"]["nice"] >= 10 and hello["compute"]["threads"] >= 1
        assert hello["budget"] == {"threads": 0, "tokens_per_s": 0.0, "share": 1.0, "frame_ms": 0.0}


def test_budget_threads_are_applied_to_the_model_steps(model_path):
    with Sidecar("--threads", "2", "--nice", "0") as sc, Client(sc.endpoint) as c:
        reply = c.call("budget", threads=1, tokens_per_s=50, share=0.8)
        assert reply["budget"]["threads"] == 1 and reply["effective"]["threads"] == 1
        c.npc("brom", "You are Brom, a blacksmith.")
        c.say("brom", "Hello!", max_tokens=4)
        engine = c.call("stats")["engine"]
        assert engine["models"][0]["threads"] == 1
        assert engine["budget"]["budget"]["tokens_per_s"] == 50 and engine["budget"]["effective"]["share"] == 0.8
        with pytest.raises(RequestFailed, match="bad_request"):
            c.call("budget", share=0)


def test_missed_frames_back_off_and_good_frames_recover_as_seen_in_stats(model_path):
    with Sidecar("--threads", "2", "--frame-ms", "16.7") as sc, Client(sc.endpoint) as c:
        assert c.call("frame", frame_ms=[16.5, 16.8])["backoff_level"] == 0
        assert c.call("frame", frame_ms=[16.6, 34.0])["backoff_level"] == 0  # a lone spike
        assert c.call("frame", frame_ms=[16.6, 34.0])["backoff_level"] == 1
        time.sleep(0.3)
        assert c.call("frame", frame_ms=[40.0, 40.0])["backoff_level"] == 2
        budget = c.call("stats")["engine"]["budget"]
        assert budget["backoff_events"] == 2 and budget["effective"]["threads"] == 1
        deadline = time.monotonic() + 10
        while c.call("frame", frame_ms=[16.6] * 6)["backoff_level"] > 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        budget = c.call("stats")["engine"]["budget"]
        assert budget["backoff_level"] == 0 and budget["recoveries"] == 2 and budget["effective"]["threads"] == 2
