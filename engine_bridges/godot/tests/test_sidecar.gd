extends SceneTree
## End-to-end checks against a real, running sidecar: the client, its ZMTP and msgpack code,
## and the sidecar's replies, over any [NpcAiTransport]. tests/web_runner.py runs it inside
## the Godot web export template through a WebSocket-to-TCP relay (tests/ws_transport.gd).
## With a desktop Godot, over real TCP:
## [codeblock]
## npcai serve   # prints NPCAI READY tcp://127.0.0.1:PORT
## godot --headless --path engine_bridges/godot --script res://tests/test_sidecar.gd \
##     -- --sidecar tcp://127.0.0.1:PORT
## [/codeblock]

const Client := preload("res://addons/npcai/npc_ai_client.gd")
const Request := preload("res://addons/npcai/npc_ai_request.gd")
const Ws := preload("res://tests/ws_transport.gd")


## The checks; [method run] returns the number of failures.
class Suite:
	extends RefCounted

	var passed: int = 0
	var failed: int = 0
	var client: Client = Client.new()
	var tree: SceneTree = null

	## Connects to [param where] ([code]tcp://...[/code], or [code]ws://...[/code] for the
	## relay) and runs every check; a coroutine.
	func run(p_tree: SceneTree, where: String) -> int:
		tree = p_tree
		client.client_name = "godot-e2e"
		tree.process_frame.connect(_pump)
		if where.begins_with("ws://"):
			var ws := Ws.new()
			ws.open(where)
			client.connect_transport(ws)
		else:
			client.connect_to_endpoint(where)
		await _until(func() -> bool: return not client.info.is_empty(), 10000)
		_test_hello()
		if not client.info.is_empty():
			await _test_ops()
			await _test_generation()
			await _test_actions_and_chain()
			await _test_deadlines_and_cancel()
			await _test_errors()
			await _test_budget_and_frames()
		client.close("done")
		tree.process_frame.disconnect(_pump)
		print("%d passed, %d failed" % [passed, failed])
		return failed

	func _pump() -> void:
		client.poll()

	func _check(name: String, ok: bool, detail: Variant = "") -> void:
		if ok:
			passed += 1
			print("ok   ", name)
		else:
			failed += 1
			print("FAIL ", name, ": ", detail)

	func _until(cond: Callable, timeout_ms: int) -> void:
		var end := Time.get_ticks_msec() + timeout_ms
		while not cond.call() and Time.get_ticks_msec() < end:
			await tree.process_frame

	func _answer(req: Request, timeout_ms: int = 30000) -> Dictionary:
		await _until(req.is_finished, timeout_ms)
		return req.reply

	func _test_hello() -> void:
		var info := client.info
		var link := "zmtp state %d, error '%s'" % [client._zmtp.state, client._zmtp.error]
		_check("session_ready: hello ok", info.get("event") == "ok", link)
		_check("protocol 1", info.get("protocol") == 1, info.get("protocol"))
		var limits: Dictionary = info.get("limits", {})
		_check("limits announced", limits.get("max_depth") == 32, limits)
		_check("models listed", not info.get("models", []).is_empty(), info.get("models"))
		_check("pid is an int", typeof(info.get("pid")) == TYPE_INT, info.get("pid"))

	func _test_ops() -> void:
		var pong := await _answer(client.ping())
		_check("ping", pong.get("event") == "ok", pong)
		var persona := "You are Brom, the village blacksmith: gruff but kind. ".repeat(6)
		var npc := await _answer(client.define_npc("godot-brom", persona, {"seed": 11}))
		_check(
			"npc (a long frame): ok with cached_tokens",
			npc.get("event") == "ok" and npc.get("cached_tokens", 0) > 0,
			npc
		)
		var seen := await _answer(client.observe("godot-brom", "A traveller enters the forge."))
		_check("observe", seen.get("event") == "ok", seen)
		var saved := await _answer(client.save_npc("godot-brom"))
		var state: Variant = saved.get("state")
		_check(
			"save: state is bin",
			typeof(state) == TYPE_PACKED_BYTE_ARRAY and not state.is_empty(),
			saved
		)
		if typeof(state) == TYPE_PACKED_BYTE_ARRAY:
			var loaded := await _answer(client.load_npc("godot-brom-copy", state))
			_check("load from the saved state", loaded.get("event") == "ok", loaded)
		var forgot := await _answer(client.forget("godot-brom-copy"))
		_check("forget", forgot.get("event") == "ok", forgot)
		var stats := await _answer(client.stats())
		_check(
			"stats", stats.get("event") == "ok" and stats.get("ops", {}).has("npc"), stats.keys()
		)

	func _test_generation() -> void:
		var tokens: Array[String] = []
		var line := client.say(
			"godot-brom",
			"Hello! Héllo ✓ — what do you sell?",
			{"max_tokens": 16, "temperature": 0.0}
		)
		line.token.connect(func(_id: int, text: String) -> void: tokens.append(text))
		var reply := await _answer(line)
		_check("say: done", reply.get("event") == "done" and not line.used_fallback(), reply)
		_check("say: streamed tokens", tokens.size() > 0, tokens)
		_check(
			"say: text is the tokens joined",
			reply.get("text") == "".join(tokens) and line.text == reply.get("text"),
			[reply.get("text"), tokens]
		)
		_check(
			"say: finish_reason",
			reply.get("finish_reason") in ["stop", "sentence", "length"],
			reply.get("finish_reason")
		)
		_check("say: timing map", reply.get("timing", {}).has("total_ms"), reply.get("timing"))
		await _answer(client.define_npc("godot-grik", "You are Grik, a cowardly goblin."))
		var pick := await _answer(
			client.decide("godot-grik", "A knight draws his sword at you.", ["attack", "flee"])
		)
		var probs: Dictionary = pick.get("probs", {})
		var total := 0.0
		for p: float in probs.values():
			total += p
		_check("decide choices: a valid choice", pick.get("value") in ["attack", "flee"], pick)
		_check("decide choices: probs sum to 1", absf(total - 1.0) < 1e-3, probs)
		var schema := {
			"type": "object", "properties": {"act": {"enum": ["a", "b"]}}, "required": ["act"]
		}
		var obj := await _answer(client.decide("", "Night falls.", [], {"schema": schema}))
		var value: Variant = obj.get("value")
		_check(
			"decide schema: an object that validates",
			typeof(value) == TYPE_DICTIONARY and value.get("act") in ["a", "b"],
			obj
		)

	func _test_actions_and_chain() -> void:
		var items := ["sword", "shield", "bread"]
		var give_args := {
			"type": "object",
			"properties": {"item": {"enum": items}},
			"required": ["item"],
		}
		var actions := [
			{
				"name": "give_item",
				"description": "give the customer what they paid for",
				"args": give_args
			},
			{"name": "refuse", "description": "refuse the deal"},
		]
		var persona := "You are Brom, the village blacksmith. You sell swords and shields."
		var npc := await _answer(
			client.define_npc("godot-smith", persona, {"seed": 5, "actions": actions})
		)
		_check("npc with actions: ok", npc.get("event") == "ok", npc)
		var acts: Array = []
		var on_act := func(who: String, name: String, args: Dictionary) -> void:
			acts.append([who, name, args])
		client.action_requested.connect(on_act)
		var pick := client.decide_action(
			"godot-smith", "A customer hands you 20 gold for a shield.", true
		)
		var reply := await _answer(pick)
		var probs: Dictionary = reply.get("probs", {})
		_check(
			"decide with actions: probs over the declared actions",
			probs.keys().size() == 2 and probs.has("give_item") and probs.has("refuse"),
			reply
		)
		var valid: bool = (
			acts.size() == 1
			and acts[0][0] == "godot-smith"
			and (
				(acts[0][1] == "give_item" and acts[0][2].get("item") in items)
				or (acts[0][1] == "refuse" and acts[0][2].is_empty())
			)
		)
		_check("decide with actions: action_requested with a valid name and args", valid, acts)
		_check(
			"decide with actions: the value is the action",
			(
				pick.action() == reply.get("value")
				and acts.size() == 1
				and reply.get("value", {}).get("name") == acts[0][1]
			),
			reply
		)
		client.action_requested.disconnect(on_act)
		if not acts.is_empty():
			var told := await _answer(
				client.act_result("godot-smith", acts[0][1], "The customer is satisfied.")
			)
			_check("act_result: ok", told.get("event") == "ok", told)
		var steps := [
			{
				"op": "decide",
				"as": "intent",
				"npc": "godot-smith",
				"situation": "A customer asks for a discount on a shield.",
				"choices": ["haggle", "refuse", "agree"],
				"fallback": "refuse",
			},
			{
				"op": "say",
				"as": "line",
				"npc": "godot-smith",
				"text": "Can I have the shield for less? (You {intent}.)",
				"max_tokens": 16,
				"seed": 1,
				"fallback": "Hm.",
			},
			{
				"op": "decide",
				"as": "emotion",
				"situation": "The blacksmith said: {line}",
				"choices": ["happy", "angry", "calm"],
				"fallback": "calm",
			},
		]
		var run := client.chain(steps)
		var seen: Array = []
		run.step.connect(func(_id: int, e: Dictionary) -> void: seen.append(e.get("as")))
		reply = await _answer(run, 60000)
		var results := run.results()
		_check("chain: done", reply.get("event") == "done", reply)
		_check(
			"chain: a step event per step, in order",
			(
				seen == ["intent", "line", "emotion"]
				and run.steps.map(func(e: Dictionary) -> Variant: return e.get("step")) == [0, 1, 2]
			),
			seen
		)
		_check(
			"chain: results fed forward",
			(
				results.get("intent") in ["haggle", "refuse", "agree"]
				and results.get("emotion") in ["happy", "angry", "calm"]
				and results.get("line") == run.steps[1].get("value")
			),
			results
		)
		_check(
			"chain: the say step streamed its line",
			run.text != "" and run.text == results.get("line") or run.steps[1].get("used_fallback"),
			[run.text, results]
		)

	func _test_deadlines_and_cancel() -> void:
		var late := client.say(
			"godot-brom",
			"Tell me a long story.",
			{"max_tokens": 200, "deadline_ms": 1, "fallback": "..."}
		)
		var reply := await _answer(late, 5000)
		_check(
			"deadline 1 ms: done with the fallback",
			(
				reply.get("event") == "done"
				and reply.get("value") == "..."
				and late.timed_out()
				and late.used_fallback()
				and reply.get("finish_reason") == "deadline"
			),
			reply
		)
		print(
			"     (the 1 ms deadline reply came from the ",
			"client" if reply.get("local") else "sidecar",
			")"
		)
		var start := Time.get_ticks_msec()
		var decision := client.decide(
			"godot-grik",
			"Quick!",
			["attack", "flee"],
			{"deadline_ms": 150, "fallback": "flee", "max_tokens": 8}
		)
		reply = await _answer(decision, 5000)
		var took := Time.get_ticks_msec() - start
		_check("deadline 150 ms: answered in time", took < 150 + 200, took)
		_check(
			"deadline 150 ms: a choice or the fallback",
			decision.value() in ["attack", "flee"],
			reply
		)
		var story := client.say(
			"godot-brom", "Tell me everything about swords.", {"max_tokens": 200}
		)
		await _until(func() -> bool: return story.text != "" or story.is_finished(), 10000)
		_check("cancel an open say", story.cancel(), story.reply)
		await _answer(story, 5000)
		_check("cancelled", story.state == Request.State.CANCELLED, story.reply)
		var after := await _answer(client.ping())
		_check("the connection goes on after a cancel", after.get("event") == "ok", after)

	func _test_errors() -> void:
		var nobody := client.say("nobody", "Hi")
		var reply := await _answer(nobody)
		_check("unknown npc: failed", nobody.error_code() == "unknown_npc", reply)
		var bad := await _answer(client.decide("", "Hm?", ["same", "same"]))
		_check("repeated choices: bad_request", bad.get("code") == "bad_request", bad)
		var nope := await _answer(client.request("teleport"))
		_check("unknown op", nope.get("code") == "unknown_op", nope)
		var alive := await _answer(client.ping())
		_check("still serving after errors", alive.get("event") == "ok", alive)

	func _test_budget_and_frames() -> void:
		var applied := await _answer(client.set_budget({"threads": 1}))
		_check("budget threads 1: ok", applied.get("event") == "ok", applied)
		var stats := await _answer(client.stats())
		var budget: Dictionary = stats.get("engine", {}).get("budget", {})
		_check(
			"stats: engine.budget.effective.threads == 1",
			budget.get("effective", {}).get("threads") == 1,
			budget
		)
		var target := await _answer(client.set_budget({"frame_ms": 16.7}))
		_check(
			"budget frame_ms 16.7",
			is_equal_approx(target.get("budget", {}).get("frame_ms", 0.0), 16.7),
			target
		)
		var levels: Array[int] = []
		client.backoff_changed.connect(func(level: int) -> void: levels.append(level))
		client.frame_report_every = 2
		var slow_frames := func() -> void: client.report_frame(40.0)
		tree.process_frame.connect(slow_frames)
		var start := Time.get_ticks_msec()
		await _until(func() -> bool: return client.backoff_level >= 2, 5000)
		var took := Time.get_ticks_msec() - start
		tree.process_frame.disconnect(slow_frames)
		_check("40 ms frames over a 16.7 ms target: backoff_level > 0", levels.size() > 0, levels)
		_check(
			"one level at a time, the second after 250 ms",
			levels.slice(0, 2) == [1, 2] and took >= 250,
			[levels, took]
		)
		var reset := await _answer(client.set_budget({"threads": 0, "frame_ms": 0.0}))
		_check(
			"budget reset (no frame target): back-off level 0",
			reset.get("event") == "ok" and reset.get("budget", {}).get("frame_ms") == 0.0,
			reset
		)
		client.report_frame(40.0)
		client.report_frame(40.0)
		await _until(func() -> bool: return client.backoff_level == 0, 3000)
		_check("frame reply: backoff_level 0", client.backoff_level == 0, levels)


## The endpoint: --sidecar ENDPOINT after "--".
static func endpoint_arg() -> String:
	var args := OS.get_cmdline_user_args()
	var i := args.find("--sidecar")
	return args[i + 1] if i >= 0 and i + 1 < args.size() else ""


func _initialize() -> void:
	var where := endpoint_arg()
	if where == "":
		print("usage: ... --script res://tests/test_sidecar.gd -- --sidecar tcp://127.0.0.1:PORT")
		quit(2)
		return
	var failures: int = await Suite.new().run(self, where)
	quit(1 if failures > 0 else 0)
