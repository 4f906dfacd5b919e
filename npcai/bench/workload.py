"""The bench's workload: situations, choices, a schema, player lines, the same decisions as GBNF."""

from __future__ import annotations

SITUATIONS = [  # about 20 tokens each with the chat template, as the scenario; different from word one
    "The player walks toward you with a drawn sword.",
    "A wolf howls nearby and the player is bleeding.",
    "Two guards block the road and demand papers.",
    "Thunder shakes the bridge and a plank snaps.",
    "The player offers you a heavy purse of gold.",
    "Smoke rises from the village behind you.",
]
CHOICES = ["attack", "flee", "beg for mercy", "offer a bribe", "call for help", "pretend to be dead"]
SCHEMA = {"type": "object", "properties": {"action": {"enum": ["arrest", "follow", "raise_alarm", "ignore"]},
                                           "target": {"enum": ["stranger", "player", "none"]}},
          "required": ["action", "target"], "additionalProperties": False}
#: Every item `npcai bench --only` can name, in the order they run; the CLI offers exactly these.
_READ_S = 0.3  # a player reading a line and answering, in the paced turn-taking measure
_BUDGETED = "load, budget (40 dialogue tokens/s, 16.7 ms frames) + frame reports"  # the case with targets
GBNF = {  # what a developer would hand llama-cpp-python for the same decisions (same output text)
    "choice": "root ::= " + " | ".join(f'"{c}"' for c in CHOICES),
    "json": 'root ::= "{\\"action\\": \\"" ("arrest" | "follow" | "raise_alarm" | "ignore") '
            '"\\", \\"target\\": \\"" ("stranger" | "player" | "none") "\\"}"',
}
LINES = [  # player lines of about 16 tokens
    "Can you fix my sword before the tournament starts tomorrow morning, please?",
    "How much would you charge me for a new shield with my family crest on it?",
    "Have you seen any strangers in town since the storm started last night?",
    "Why are you always so grumpy with everyone who comes into your forge?",
]
