extends Control
## Example scene: Brom the blacksmith talks (streamed, with a deadline and a fallback) and
## Grik the goblin decides (choices, 150 ms deadline). Uses only the public API of the
## [code]NpcAi[/code] autoload; copy it into a project where the npcai plugin is enabled.
## It works even while the sidecar is starting or missing: every request has a deadline
## and a fallback, so the scene never waits longer than that.[br]
## Brom can also act: he declares two actions, and after each line the player types (try
## "Here are 20 gold pieces for your best shield.") he may take one;
## [signal NpcAiNode.action_requested] carries it out and [method NpcAiNode.act_result]
## tells him what came of it.

## What Brom may do after a line: hand over what was paid for, or refuse.
const BROM_ACTIONS := [
	{
		"name": "give_item",
		"description": "hand the customer the item they paid for",
		"args":
		{
			"type": "object",
			"properties": {"item": {"enum": ["sword", "shield", "helmet"]}},
			"required": ["item"],
		},
	},
	{"name": "refuse_sale", "description": "refuse to sell"},
]

## Deadline of Brom's lines.
@export var say_deadline_ms: int = 4000
## Deadline of Grik's decisions: a decision a game can wait for within a few frames.
@export var decide_deadline_ms: int = 150

@onready var _log: RichTextLabel = $Log
@onready var _input: LineEdit = $Input


func _ready() -> void:
	NpcAi.sidecar_ready.connect(_on_sidecar_ready)
	NpcAi.sidecar_failed.connect(_on_sidecar_failed)
	NpcAi.action_requested.connect(_on_action)
	NpcAi.define_npc(
		"brom",
		"You are Brom, the village blacksmith: gruff but kind. Answer in one sentence.",
		{"actions": BROM_ACTIONS}
	)
	NpcAi.define_npc("grik", "You are Grik, a cowardly goblin who loves shiny things.")
	_input.text_submitted.connect(_on_player_said)
	await _talk("A traveller walks into the forge.")
	await _decide("The traveller draws a sword.")


func _talk(what: String, may_act: bool = false) -> void:
	_log.append_text("[b]Brom:[/b] ")
	var options := {"deadline_ms": say_deadline_ms, "fallback": "Hm. Welcome, stranger."}
	if may_act:
		options["actions"] = true
	var line := NpcAi.say("brom", what, options)
	line.token.connect(_on_token)
	var reply: Dictionary = await line.wait()
	if line.used_fallback():
		_log.append_text("…" if line.text != "" else str(reply.get("value")))
	elif reply.get("event") != "done":
		_log.append_text("(%s)" % reply.get("message", reply.get("event")))
	_log.append_text("\n")


func _decide(situation: String) -> void:
	var choice := NpcAi.decide(
		"grik",
		situation,
		["attack", "flee", "beg"],
		{"deadline_ms": decide_deadline_ms, "fallback": "flee"}
	)
	await choice.wait()
	var how := " (fallback)" if choice.used_fallback() else ""
	_log.append_text("[b]Grik[/b] decides to %s%s.\n" % [choice.value(), how])


func _on_token(_id: int, text: String) -> void:
	_log.append_text(text)


func _on_player_said(text: String) -> void:
	_input.clear()
	_log.append_text("[i]You:[/i] %s\n" % text)
	await _talk(text, true)


func _on_action(npc: String, action: String, args: Dictionary) -> void:
	var what := "hands over the %s" % args.get("item", "goods") if action == "give_item" else action
	_log.append_text("[color=yellow](%s %s)[/color]\n" % [npc.capitalize(), what])
	var result := "The customer walks away."
	if action == "give_item":
		result = "The customer takes the %s and leaves happy." % args.get("item")
	NpcAi.act_result(npc, action, result)


func _on_sidecar_ready(info: Dictionary) -> void:
	_log.append_text("[color=gray](sidecar ready: %s)[/color]\n" % info.get("server", "?"))


func _on_sidecar_failed(reason: String) -> void:
	_log.append_text("[color=red](sidecar failed: %s)[/color]\n" % reason)
