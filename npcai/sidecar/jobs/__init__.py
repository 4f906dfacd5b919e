"""One state machine per kind of model work: define an NPC, say, decide (choices / schema, grammar or regex), observe.

A job exposes ``lanes`` (tokens it needs evaluated); after each model step the
engine calls ``advance()`` on jobs whose lanes are ready, and the job samples,
emits events and queues its next tokens, or finishes. Jobs never touch the socket:
they call ``emit(reply)``.

- ``base``: urgency classes, ``Job``, ``NpcWriter`` (one writer per NPC), ``fit``;
- ``define``: ``DefineJob`` (op npc), ``ObserveJob``, ``PrimeJob`` (thinking ahead);
- ``say``: ``SayJob``, and ``draw_together``, the step's sampling stage;
- ``decision``: what every decide job shares; ``grammar`` and ``choice``: the two kinds.
"""

from npcai.sidecar.jobs.base import (
           BACKGROUND,
           DECISION,
           DIALOGUE,
           IDLE,
           Emit,
           Job,
           NpcWriter,
           fit,
           pending_cost_s,
           pending_tokens,
           scores_trees,
           step_cost_s,
)
from npcai.sidecar.jobs.choice import ChoiceDecideJob, ChoicePriorJob
from npcai.sidecar.jobs.decision import DECIDE_DEFAULTS, Decision, decide_prompt
from npcai.sidecar.jobs.define import DefineJob, ObserveJob, PrimeJob
from npcai.sidecar.jobs.grammar import MAX_NUMBER_DIGITS, GrammarDecideJob
from npcai.sidecar.jobs.say import (
           SAY_DEFAULTS,
           SENTENCE_END_BIAS,
           SOFT_SHARE,
           SayJob,
           draw_together,
)

__all__ = ["BACKGROUND", "DECISION", "DIALOGUE", "IDLE", "Emit", "Job", "NpcWriter", "fit",
           "pending_cost_s", "pending_tokens", "scores_trees", "step_cost_s",
           "ChoiceDecideJob", "ChoicePriorJob", "DECIDE_DEFAULTS", "Decision", "decide_prompt", "DefineJob", "ObserveJob", "PrimeJob",
           "MAX_NUMBER_DIGITS", "GrammarDecideJob", "SAY_DEFAULTS", "SENTENCE_END_BIAS", "SOFT_SHARE", "SayJob",
           "draw_together"]
