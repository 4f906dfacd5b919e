extends SceneTree
## Checks NpcAiClient's behaviour against a scripted sidecar: an in-memory transport
## (pipe_transport.gd) carrying real ZMTP and msgpack bytes. Replies, token streaming,
## errors, stray replies, cancel, client-side deadlines with a silent sidecar, a lost
## connection, requests queued before the connection, the per-frame budget, the lease ping,
## the handshake timeout, budget and frame reports, and await.
##
## [codeblock]
## godot --headless --path engine_bridges/godot --script res://tests/test_client.gd
## [/codeblock]

const MsgPack := preload("res://addons/npcai/npc_ai_msg_pack.gd")
const Zmtp := preload("res://addons/npcai/npc_ai_zmtp.gd")
const Client := preload("res://addons/npcai/npc_ai_client.gd")
const Request := preload("res://addons/npcai/npc_ai_request.gd")
const Pipe := preload("res://tests/pipe_transport.gd")


## The checks; [method run] returns the number of failures.
class Suite:
	extends RefCounted

	var passed: int = 0
	var failed: int = 0
	var events: Array = []

	## Runs every check; a coroutine (awaits frames of [param tree]).
	func run(tree: SceneTree) -> int:
		_test_replies()
		_test_actions_sentences_and_steps()
		_test_errors_and_strays()
		_test_unreadable_reply_ends_its_request()
		_test_cancel()
		_test_deadline_silent_sidecar()
		_test_deadline_not_early()
		_test_lost_connection()
		_test_queued_before_connect()
		_test_budget()
		_test_partial_writes()
		_test_auto_hello_token()
		_test_lease_and_handshake_timeout()
		_test_budget_and_frames()
		_test_static_helpers()
		_test_no_leaks()
		await _test_await(tree)
		print("%d passed, %d failed" % [passed, failed])
		return failed

	func _check(name: String, ok: bool, detail: Variant = "") -> void:
		if ok:
			passed += 1
			print("ok   ", name)
		else:
			failed += 1
			print("FAIL ", name, ": ", detail)

	## A client connected to a pipe, handshake done; [member events] records its signals.
	func _connected(auto_hello: bool = false) -> Array:
		var client := Client.new()
		client.auto_hello = auto_hello
		var pipe := Pipe.new()
		client.connect_transport(pipe)
		pipe.inbox.append_array(Zmtp.greeting())
		pipe.inbox.append_array(Zmtp.ready_command("ROUTER"))
		client.poll()
		pipe.take()
		client.stray_reply.connect(func(r: Dictionary) -> void: events.append(["stray", r]))
		client.disconnected.connect(func(why: String) -> void: events.append(["lost", why]))
		return [client, pipe]

	## Polls with a budget that no slow machine exhausts (poll's own bound is tested apart).
	static func _drain(client: Client) -> int:
		return client.poll(1000, 10000000)

	func _watch(req: Request) -> void:
		req.token.connect(func(id: int, t: String) -> void: events.append(["token", id, t]))
		req.done.connect(func(id: int, r: Dictionary) -> void: events.append(["done", id, r]))
		req.failed.connect(
			func(id: int, c: String, m: String) -> void: events.append(["failed", id, c, m])
		)
		req.cancelled.connect(func(id: int) -> void: events.append(["cancelled", id]))
		req.finished.connect(func(r: Dictionary) -> void: events.append(["finished", r.get("id")]))

	static func _reply(pipe: Pipe, message: Dictionary) -> void:
		Zmtp.append_frame(pipe.inbox, MsgPack.new().encode(message))

	## The requests the client wrote to [param pipe], decoded.
	static func _sent(pipe: Pipe) -> Array:
		var z := Zmtp.new()
		z.start()
		z.take_output()
		var peer := Zmtp.greeting()
		peer.append_array(Zmtp.ready_command("ROUTER"))
		z.feed(peer)
		z.feed(pipe.take())
		var out := []
		while z.has_message():
			out.append(MsgPack.new().decode(z.pop_message()[0]))
		return out

	func _test_replies() -> void:
		events.clear()
		var c: Array = _connected()
		var client: Client = c[0]
		var pipe: Pipe = c[1]
		client._next_id = 4
		var say := client.say("brom", "Hello!")
		_watch(say)
		_reply(pipe, {"v": 1, "id": 4, "event": "token", "text": " Aye"})
		_reply(pipe, {"v": 1, "id": 4, "event": "token", "text": "."})
		_reply(pipe, {"v": 1, "id": 4, "event": "done", "text": " Aye.", "value": " Aye."})
		_check("no signal before poll", events.is_empty(), events)
		var n := _drain(client)
		_check("poll returns the replies handled", n == 3, n)
		_check(
			"token, token, done, finished in order",
			(
				events.size() == 4
				and events[0] == ["token", 4, " Aye"]
				and events[1] == ["token", 4, "."]
				and events[2][0] == "done"
				and events[3] == ["finished", 4]
			),
			events
		)
		_check("text joins the tokens", say.text == " Aye.", say.text)
		_check("value()", say.value() == " Aye." and say.is_finished(), say.reply)
		_check("state DONE", say.state == Request.State.DONE, say.state)
		_check("no longer open", client.open_count() == 0, client.open_count())
		var ok := client.ping()
		_watch(ok)
		_reply(pipe, {"v": 1, "id": ok.id, "event": "ok"})
		_drain(client)
		_check("ok ends with done", ok.state == Request.State.DONE, ok.state)

	func _test_actions_sentences_and_steps() -> void:
		var c: Array = _connected()
		var client: Client = c[0]
		var pipe: Pipe = c[1]
		var acts: Array = []
		client.action_requested.connect(
			func(npc: String, name: String, args: Dictionary) -> void:
				acts.append([npc, name, args])
		)
		var say := client.say("brom", "A shield!", {"actions": true})
		var heard: Array[String] = []
		say.sentence.connect(func(_id: int, t: String) -> void: heard.append(t))
		say.done.connect(func(_id: int, _r: Dictionary) -> void: heard.append("<done>"))
		var shield := {"name": "give", "args": {"item": "shield"}}
		_reply(pipe, {"v": 1, "id": say.id, "event": "token", "text": " Aye."})
		_reply(pipe, {"v": 1, "id": say.id, "event": "sentence", "text": " Aye."})
		_reply(pipe, {"v": 1, "id": say.id, "event": "token", "text": " Here."})
		_reply(pipe, {"v": 1, "id": say.id, "event": "sentence", "text": " Here."})
		_reply(
			pipe, {"v": 1, "id": say.id, "event": "done", "text": " Aye. Here.", "action": shield}
		)
		_drain(client)
		_check(
			"say with actions: sentences, then done",
			(
				heard == [" Aye.", " Here.", "<done>"]
				and say.sentences == PackedStringArray(heard.slice(0, 2))
			),
			heard
		)
		_check(
			"say with actions: action_requested(npc, name, args)",
			acts == [["brom", "give", {"item": "shield"}]] and say.action() == shield,
			acts
		)
		acts.clear()
		var quiet := client.say("brom", "Hm.", {"actions": ["give"]})
		_reply(pipe, {"v": 1, "id": quiet.id, "event": "done", "text": "Hm.", "action": null})
		var pick := client.decide_action("brom", "20 gold.", true, {"fallback": shield})
		_reply(
			pipe, {"v": 1, "id": pick.id, "event": "done", "value": shield, "probs": {"give": 1.0}}
		)
		var fell := client.decide_action("brom", "20 gold.", true, {"fallback": shield})
		_reply(
			pipe, {"v": 1, "id": fell.id, "event": "done", "value": shield, "used_fallback": true}
		)
		var listed := client.decide_action("brom", "20 gold.", ["give"])
		_reply(pipe, {"v": 1, "id": listed.id, "event": "done", "value": shield})
		var plain := client.decide("brom", "Which?", [], {"schema": {"type": "object"}})
		_reply(pipe, {"v": 1, "id": plain.id, "event": "done", "value": shield})
		_drain(client)
		_check(
			"decide_action acts (all or listed names); not none, a fallback or a schema answer",
			(
				acts == [["brom", "give", {"item": "shield"}], ["brom", "give", {"item": "shield"}]]
				and quiet.action() == null
			),
			acts
		)
		acts.clear()
		var steps := [
			{"op": "decide", "as": "act", "npc": "grik", "situation": "x", "actions": true},
			{"op": "say", "as": "line", "npc": "brom", "text": "({act})", "actions": true},
		]
		var run := client.chain(steps)
		var seen: Array = []
		run.step.connect(func(_id: int, e: Dictionary) -> void: seen.append(e.get("as")))
		var flee := {"name": "flee", "args": {}}
		_reply(pipe, {"v": 1, "id": run.id, "event": "step", "step": 0, "as": "act", "value": flee})
		_reply(pipe, {"v": 1, "id": run.id, "event": "token", "text": "Go.", "step": 1})
		_reply(pipe, {"v": 1, "id": run.id, "event": "sentence", "text": "Go.", "step": 1})
		_reply(
			pipe,
			{
				"v": 1,
				"id": run.id,
				"event": "step",
				"step": 1,
				"as": "line",
				"value": "Go.",
				"action": shield
			}
		)
		var results := {"act": flee, "line": "Go."}
		_reply(pipe, {"v": 1, "id": run.id, "event": "done", "value": results, "results": results})
		_drain(client)
		_check(
			"chain: step events in order, tokens and sentences of its say steps",
			seen == ["act", "line"] and run.text == "Go." and run.sentences.size() == 1,
			[seen, run.text]
		)
		_check(
			"chain: each step's action fires with the step's npc",
			acts == [["grik", "flee", {}], ["brom", "give", {"item": "shield"}]],
			acts
		)
		_check("chain: results()", run.results() == results, run.reply)
		var sent := _sent(pipe)
		_check(
			"the new ops and fields on the wire",
			(
				sent.size() == 7
				and sent[2].get("actions") == true
				and sent[4].get("actions") == ["give"]
				and sent[6].get("op") == "chain"
				and sent[6].get("steps") == steps
			),
			sent
		)

	func _test_errors_and_strays() -> void:
		events.clear()
		var c: Array = _connected()
		var client: Client = c[0]
		var pipe: Pipe = c[1]
		var req := client.say("nobody", "Hi")
		_watch(req)
		_reply(
			pipe,
			{"v": 1, "id": req.id, "event": "error", "code": "unknown_npc", "message": "no NPC"}
		)
		_reply(
			pipe,
			{
				"v": 1,
				"id": null,
				"event": "error",
				"code": "bad_request",
				"message": "frame is not msgpack"
			}
		)
		_reply(pipe, {"v": 1, "id": 999, "event": "ok"})
		Zmtp.append_frame(pipe.inbox, PackedByteArray([0xc1]))
		_drain(client)
		_check(
			"error ends with failed",
			events.size() >= 2 and events[0] == ["failed", req.id, "unknown_npc", "no NPC"],
			events
		)
		_check("error_code()", req.error_code() == "unknown_npc", req.error_code())
		var strays := events.filter(func(e: Array) -> bool: return e[0] == "stray")
		_check("id nil, unknown id and garbage are stray replies", strays.size() == 3, strays)
		_check(
			"garbage is reported as bad_reply",
			strays.size() == 3 and strays[2][1]["code"] == "bad_reply",
			strays
		)

	func _test_unreadable_reply_ends_its_request() -> void:
		events.clear()
		var c: Array = _connected()
		var client: Client = c[0]
		var pipe: Pipe = c[1]
		var req := client.say("brom", "Hi")
		_watch(req)
		# {v: 1, id, event: "done", text: <ff fe>}: its text is not UTF-8.
		var body := MsgPack.new().encode({"v": 1, "id": req.id, "event": "done"})
		body[0] = 0x84
		body.append(0xa4)
		body.append_array("text".to_ascii_buffer())
		body.append_array(PackedByteArray([0xa2, 0xff, 0xfe]))
		Zmtp.append_frame(pipe.inbox, body)
		_reply(pipe, {"v": 1, "id": req.id, "event": "done", "value": "late"})
		_drain(client)
		_check(
			"an unreadable reply ends the request it names with bad_reply",
			events.size() == 2 and events[0][0] == "failed" and events[0][1] == req.id
			and events[0][2] == "bad_reply" and events[1] == ["finished", req.id],
			events
		)
		_check("the late reply after it is neither an ending nor stray", events.size() == 2, events)

	func _test_cancel() -> void:
		events.clear()
		var c: Array = _connected()
		var client: Client = c[0]
		var pipe: Pipe = c[1]
		var req := client.say("brom", "Tell me a long story")
		_watch(req)
		pipe.take()
		_check("cancel() of an open request", req.cancel(), "returned false")
		var sent := _sent(pipe)
		_check(
			"sends op cancel with the target",
			sent.size() == 1 and sent[0]["op"] == "cancel" and sent[0]["target"] == req.id,
			sent
		)
		_check("cancelled only in poll", events.is_empty(), events)
		# The sidecar's own replies for the cancelled request arrive late: dropped quietly.
		_reply(pipe, {"v": 1, "id": req.id, "event": "token", "text": "Once"})
		_reply(pipe, {"v": 1, "id": req.id, "event": "cancelled"})
		_reply(pipe, {"v": 1, "id": sent[0]["id"], "event": "ok", "target": req.id, "found": true})
		_drain(client)
		_check(
			"ends with cancelled then finished",
			events == [["cancelled", req.id], ["finished", req.id]],
			events
		)
		_check("state CANCELLED", req.state == Request.State.CANCELLED, req.state)
		_check("cancel() again is false", not client.cancel(req.id), "returned true")

	func _test_deadline_silent_sidecar() -> void:
		events.clear()
		var c: Array = _connected()
		var client: Client = c[0]
		client.deadline_grace_ms = 10
		var req := client.say("brom", "Hello?", {"deadline_ms": 40, "fallback": "Hm."})
		var no_fallback := client.decide("", "Run?", ["yes", "no"], {"deadline_ms": 40})
		var no_deadline := client.say("brom", "And you?")
		_watch(req)
		_reply(c[1], {"v": 1, "id": req.id, "event": "token", "text": "We"})
		var start := Time.get_ticks_msec()
		var took := -1
		while not no_fallback.is_finished() and Time.get_ticks_msec() - start < 1000:
			client.poll()
			if took < 0 and req.is_finished():
				took = Time.get_ticks_msec() - start
			OS.delay_msec(2)
		_check("ends by deadline + grace (+ a poll)", took >= 45 and took <= 120, took)
		var r := req.reply
		_check(
			"client-side done with the fallback",
			(
				r.get("event") == "done"
				and r.get("value") == "Hm."
				and r.get("used_fallback") == true
				and r.get("timed_out") == true
				and r.get("finish_reason") == "deadline"
				and r.get("local") == true
			),
			r
		)
		_check("keeps the streamed text", r.get("text") == "We", r)
		_check("used_fallback() and timed_out()", req.used_fallback() and req.timed_out())
		_check(
			"no fallback: value nil, used_fallback true",
			(
				no_fallback.is_finished()
				and no_fallback.value() == null
				and no_fallback.used_fallback()
			),
			no_fallback.reply
		)
		_check("no deadline: still open", not no_deadline.is_finished(), no_deadline.reply)
		_reply(c[1], {"v": 1, "id": req.id, "event": "done", "value": "late", "timed_out": true})
		events.clear()
		client.poll()
		_check("the sidecar's late reply is dropped", events.is_empty(), events)

	func _test_deadline_not_early() -> void:
		var c: Array = _connected()
		var client: Client = c[0]
		var req := client.decide("", "Go?", ["yes", "no"], {"deadline_ms": 150, "fallback": "no"})
		_reply(c[1], {"v": 1, "id": req.id, "event": "done", "value": "yes", "text": "yes"})
		OS.delay_msec(20)
		client.poll()
		_check(
			"an answer in time wins", req.value() == "yes" and not req.used_fallback(), req.reply
		)

	func _test_lost_connection() -> void:
		events.clear()
		var c: Array = _connected()
		var client: Client = c[0]
		var pipe: Pipe = c[1]
		var with_fallback := client.say("brom", "Hi", {"deadline_ms": 60000, "fallback": "..."})
		var without := client.say("brom", "Hi", {"fallback": "no deadline: no fallback here"})
		_watch(with_fallback)
		_watch(without)
		pipe.status = Pipe.Status.CLOSED
		pipe.error = "connection reset"
		_drain(client)
		_check("disconnected signal", events.has(["lost", "connection reset"]), events)
		_check(
			"a request with a deadline ends done with its fallback",
			(
				with_fallback.state == Request.State.DONE
				and with_fallback.value() == "..."
				and with_fallback.reply.get("finish_reason") == "unavailable"
				and with_fallback.reply.get("local") == true
			),
			with_fallback.reply
		)
		_check(
			"a request without a deadline fails",
			without.error_code() == "unavailable",
			without.reply
		)
		_check("not open", not client.is_open() and not client.has_transport())
		var later := client.ping()
		_check("requests wait for a new connection", not later.is_finished(), later.reply)

	func _test_queued_before_connect() -> void:
		var client := Client.new()
		client.client_name = "village"
		var queued := client.say("brom", "Hi", {"deadline_ms": 1000, "fallback": "..."})
		_drain(client)
		_check("queued while unconnected", queued.state == Request.State.QUEUED, queued.state)
		OS.delay_msec(30)
		var pipe := Pipe.new()
		client.connect_transport(pipe)
		var ready := []
		client.session_ready.connect(func(info: Dictionary) -> void: ready.append(info))
		pipe.inbox.append_array(Zmtp.greeting())
		pipe.inbox.append_array(Zmtp.ready_command("ROUTER"))
		_drain(client)
		var out := pipe.take()
		var sent := _sent_after_handshake(out)
		_check(
			"hello goes first, then the queued request",
			sent.size() == 2 and sent[0]["op"] == "hello" and sent[1]["op"] == "say",
			sent
		)
		_check("hello carries client_name", sent[0].get("client") == "village", sent)
		_check(
			"queued deadline_ms shrinks by the wait",
			sent.size() == 2 and sent[1]["deadline_ms"] <= 970 and sent[1]["deadline_ms"] > 500,
			sent
		)
		_reply(pipe, {"v": 1, "id": sent[0]["id"], "event": "ok", "protocol": 1, "pid": 42})
		_drain(client)
		_check("session_ready with the hello reply", ready.size() == 1 and ready[0]["pid"] == 42)
		_check("info holds the hello reply", client.info.get("protocol") == 1, client.info)

	## Decodes the requests in [param out], which starts with the greeting and READY.
	static func _sent_after_handshake(out: PackedByteArray) -> Array:
		var pipe := Pipe.new()
		var skip := Zmtp.greeting().size() + Zmtp.ready_command().size()
		pipe.outbox = out.slice(skip)
		return _sent(pipe)

	func _test_budget() -> void:
		var c: Array = _connected()
		var client: Client = c[0]
		var reqs := []
		for i in 10:
			var req := client.ping()
			reqs.append(req)
			_reply(c[1], {"v": 1, "id": req.id, "event": "ok"})
		var first := client.poll(3)
		var second := client.poll(3)
		var rest := client.poll(100)
		_check("poll(max_messages) bounds the work", [first, second, rest] == [3, 3, 4])
		var done := reqs.filter(func(r: Request) -> bool: return r.is_finished())
		_check("all delivered in the end", done.size() == 10, done.size())
		var idle := client.poll()
		_check("an idle poll handles nothing", idle == 0, idle)

	func _test_partial_writes() -> void:
		var c: Array = _connected()
		var client: Client = c[0]
		var pipe: Pipe = c[1]
		pipe.write_limit = 5
		client.say("brom", "x".repeat(600))
		for i in 300:
			client.poll()
		var sent := _sent(pipe)
		_check(
			"a long frame survives 5-byte writes",
			sent.size() == 1 and sent[0]["text"] == "x".repeat(600),
			sent.size()
		)

	func _test_auto_hello_token() -> void:
		var client := Client.new()
		client.token = "s3cret"
		var pipe := Pipe.new()
		client.connect_transport(pipe)
		var failures := []
		client.session_failed.connect(func(code: String, _m: String) -> void: failures.append(code))
		pipe.inbox.append_array(Zmtp.greeting())
		pipe.inbox.append_array(Zmtp.ready_command("ROUTER"))
		_drain(client)
		var sent := _sent_after_handshake(pipe.take())
		_check("auto hello carries the token", sent.size() == 1 and sent[0]["token"] == "s3cret")
		_reply(
			pipe,
			{"v": 1, "id": sent[0]["id"], "event": "error", "code": "unauthorized", "message": ""}
		)
		_drain(client)
		_check("session_failed on a refused hello", failures == ["unauthorized"], failures)

	func _test_lease_and_handshake_timeout() -> void:
		var client := Client.new()
		var pipe := Pipe.new()
		client.connect_transport(pipe)
		pipe.inbox.append_array(Zmtp.greeting())
		pipe.inbox.append_array(Zmtp.ready_command("ROUTER"))
		_drain(client)
		var hello: Array = _sent_after_handshake(pipe.take())
		_reply(pipe, {"v": 1, "id": hello[0]["id"], "event": "ok", "lease_ms": 40})
		_drain(client)
		_check("no ping right after hello", _sent(pipe).is_empty())
		OS.delay_msec(15)
		_drain(client)
		var sent := _sent(pipe)
		_check(
			"lease_ms: pings after a quarter of the lease without sending",
			sent.size() == 1 and sent[0]["op"] == "ping",
			sent
		)
		var silent := Client.new()
		silent.handshake_timeout_ms = 30
		var lost := []
		silent.disconnected.connect(func(why: String) -> void: lost.append(why))
		silent.connect_transport(Pipe.new())
		var waiting := silent.ping()
		_drain(silent)
		OS.delay_msec(40)
		_drain(silent)
		_check("a silent peer: handshake timeout", lost.size() == 1, lost)
		_check("requests waiting for it end", waiting.error_code() == "unavailable", waiting.reply)

	## The raw msgpack bodies the client wrote to [param pipe], as hex.
	static func _sent_hex(pipe: Pipe) -> Array[String]:
		var z := Zmtp.new()
		z.start()
		z.take_output()
		var peer := Zmtp.greeting()
		peer.append_array(Zmtp.ready_command("ROUTER"))
		z.feed(peer)
		z.feed(pipe.take())
		var out: Array[String] = []
		while z.has_message():
			out.append(PackedByteArray(z.pop_message()[0]).hex_encode())
		return out

	func _test_budget_and_frames() -> void:
		var c: Array = _connected()
		var client: Client = c[0]
		var pipe: Pipe = c[1]
		var levels: Array[int] = []
		client.backoff_changed.connect(func(level: int) -> void: levels.append(level))
		client._next_id = 20
		client.frame_report_every = 3
		client.report_frame(16.5)
		client.report_frame(16.0)
		_drain(client)
		var sent := _sent_hex(pipe)
		_check("no frame op before frame_report_every frames", sent.is_empty(), sent)
		client.report_frame(40.25)
		_drain(client)
		sent = _sent_hex(pipe)
		_check(
			"frame op: frame_ms as float64s, oldest first",
			(
				sent
				== [
					(
						"84a17601a2696414a26f70a56672616d65a86672616d655f6d7393"
						+ "cb4030800000000000cb4030000000000000cb4044200000000000"
					)
				]
			),
			sent
		)
		for ms in [17.0, 18.0, 19.0, 20.0]:
			client.report_frame(ms)
			_drain(client)
		_check("one report in flight at a time", _sent(pipe).is_empty())
		_reply(pipe, {"v": 1, "id": 20, "event": "ok", "backoff_level": 1})
		_drain(client)
		var frames := _sent(pipe)
		_check(
			"the next report once answered, with the newest frames",
			frames.size() == 1 and frames[0]["frame_ms"] == [18.0, 19.0, 20.0],
			frames
		)
		_check("backoff_level from the ok reply", client.backoff_level == 1, client.backoff_level)
		_reply(pipe, {"v": 1, "id": 21, "event": "ok", "backoff_level": 1})
		_drain(client)
		_check("backoff_changed only on a change", levels == [1], levels)
		for i in 6:
			client.report_frame(16.0)
			_drain(client)
		frames = _sent(pipe)
		_check(
			"a report every frame_report_every frames",
			frames.size() == 1 and frames[0]["id"] == 22 and frames[0]["frame_ms"].size() == 3,
			frames
		)
		_reply(pipe, {"v": 1, "id": 22, "event": "ok", "backoff_level": 0})
		_drain(client)
		frames = _sent(pipe)
		_check(
			"frames buffered meanwhile go out with the answer",
			frames.size() == 1 and frames[0]["id"] == 23,
			frames
		)
		_check("backoff_changed back to 0", levels == [1, 0], levels)
		client._next_id = 30
		var budget := client.set_budget({"threads": 2.0, "frame_ms": 16})
		client.set_budget({"share": 0.5})
		sent = _sent_hex(pipe)
		_check(
			"set_budget: only the keys given, threads an int, the others floats",
			(
				sent
				== [
					(
						"85a17601a269641ea26f70a6627564676574a77468726561647302"
						+ "a86672616d655f6d73cb4030000000000000"
					),
					"84a17601a269641fa26f70a6627564676574a57368617265cb3fe0000000000000",
				]
			),
			sent
		)
		_check("set_budget returns a request", budget.op == "budget" and budget.id == 30)
		var alone := Client.new()
		alone.frame_report_every = 2
		for i in 5:
			alone.report_frame(40.0)
			_drain(alone)
		_check("no connection: frame times are dropped", alone.open_count() == 0)

	func _test_static_helpers() -> void:
		_check("MsgPack.pack()", MsgPack.pack({"a": 1}).hex_encode() == "81a16101")
		_check("MsgPack.unpack()", MsgPack.unpack(PackedByteArray([0x92, 1, 0xc3])) == [1, true])
		_check(
			"parse_endpoint",
			(
				(
					Client.parse_endpoint("tcp://127.0.0.1:40735")
					== {"host": "127.0.0.1", "port": 40735}
				)
				and Client.parse_endpoint("tcp://[::1]:5") == {"host": "::1", "port": 5}
				and Client.parse_endpoint("ipc:///tmp/x").is_empty()
				and Client.parse_endpoint("tcp://127.0.0.1:0").is_empty()
			)
		)

	func _test_no_leaks() -> void:
		var c: Array = _connected()
		var client: Client = c[0]
		var pipe: Pipe = c[1]
		var req := client.say("brom", "Hi", {"deadline_ms": 5000, "fallback": "..."})
		var other := client.say("brom", "Hi")
		_reply(pipe, {"v": 1, "id": other.id, "event": "done", "value": "Hi"})
		_drain(client)
		var refs := [weakref(client), weakref(pipe), weakref(other)]
		for r: WeakRef in refs:
			_check("no reference cycle keeps objects alive (before)", r.get_ref() != null)
		c.clear()
		client = null
		pipe = null
		other = null
		for r: WeakRef in refs:
			_check("no reference cycle keeps objects alive", r.get_ref() == null, r.get_ref())
		_check("a request outlives its client safely", not req.cancel(), req.state)

	func _test_await(tree: SceneTree) -> void:
		var c: Array = _connected()
		var client: Client = c[0]
		var pump := func() -> void: client.poll()
		tree.process_frame.connect(pump)
		var req := client.say("brom", "Hi", {"deadline_ms": 30, "fallback": "Hm."})
		var reply: Dictionary = await req.wait()
		_check("await wait() resumes with the fallback", reply.get("value") == "Hm.", reply)
		var again: Dictionary = await req.wait()
		_check("wait() on a finished request returns at once", again == reply, again)
		var answered := client.ping()
		_reply(c[1], {"v": 1, "id": answered.id, "event": "ok"})
		var via_signal: Dictionary = await answered.finished
		_check("await finished", via_signal.get("event") == "ok", via_signal)
		tree.process_frame.disconnect(pump)


func _initialize() -> void:
	var failures: int = await Suite.new().run(self)
	quit(1 if failures > 0 else 0)
