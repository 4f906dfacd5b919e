"""The engine in-process, without sockets: what the socket thread does to it cannot break its loop."""

from __future__ import annotations

import threading
import time

import pytest

from npcai import protocol as P
from npcai.sidecar.engine import Engine
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
