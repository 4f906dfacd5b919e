class_name NpcAiClient  # gdlint: ignore=max-public-methods
extends RefCounted
## A client of the npcai sidecar: requests, replies and deadlines over ZMTP, never blocking.
##
## Every request method returns an [NpcAiRequest] at once. Call [method poll] once per frame
## (the [code]NpcAi[/code] node does): it moves bytes, dispatches replies, and ends requests
## whose deadline passed, within a message count and a time budget.[br]
## Requests made before the connection is up wait in a queue and go out once it is (with
## their [code]deadline_ms[/code] reduced by the time they waited). A request with
## [code]deadline_ms[/code] always ends by its deadline (plus [member deadline_grace_ms]
## and a frame): if the sidecar is silent or gone, the client ends it itself with a
## [code]done[/code] reply carrying the request's [code]fallback[/code], exactly like the
## sidecar's own timed-out reply, plus [code]"local": true[/code].[br]
## When the connection is lost, open requests end at once (as the Python client does):
## those with a [code]deadline_ms[/code] with [code]done[/code] and their fallback
## ([code]used_fallback[/code] true, [code]finish_reason[/code] [code]"unavailable"[/code]),
## the others with [signal NpcAiRequest.failed] and code [code]unavailable[/code]; both marked
## [code]"local": true[/code]. When the sidecar's [code]hello[/code] reply sets
## [code]lease_ms[/code], the client sends a [code]ping[/code] whenever it has sent nothing
## for a quarter of it, so the sidecar keeps serving.[br]
## [method set_budget] limits the sidecar's compute; [method report_frame], called once a
## frame, sends the game's frame times (op [code]frame[/code]) every
## [member frame_report_every] frames, and [member backoff_level] holds the sidecar's answer.

## The ZMTP handshake is complete (requests can flow).
signal connected
## The connection closed or failed; open requests have ended.
signal disconnected(reason: String)
## The sidecar answered the automatic [code]hello[/code]: [param info] is its reply.
signal session_ready(info: Dictionary)
## The automatic [code]hello[/code] failed (e.g. [code]unauthorized[/code]: wrong token).
signal session_failed(code: String, message: String)
## A reply for no open request (e.g. an [code]error[/code] with id nil about a bad frame).
signal stray_reply(reply: Dictionary)
## The sidecar's back-off level (0-3) changed, as a [code]frame[/code] reply told.
signal backoff_changed(level: int)
## An NPC chose to act: the [code]done[/code] of a [code]say[/code] or [code]decide[/code] with
## [code]actions[/code] (or such a step of a [code]chain[/code]) names one of its declared
## actions, [param args] valid against that action's schema. Fires right before the request's
## own [signal NpcAiRequest.done] (for a chain, right after the step's
## [signal NpcAiRequest.step]); never for a fallback. Tell the NPC what came of it with
## [method act_result].
signal action_requested(npc: String, name: String, args: Dictionary)

const PROTOCOL_VERSION := 1
const MsgPack := preload("npc_ai_msg_pack.gd")
const Zmtp := preload("npc_ai_zmtp.gd")
const Request := preload("npc_ai_request.gd")
const Transport := preload("npc_ai_transport.gd")
const TcpTransport := preload("npc_ai_tcp_transport.gd")
const _TERMINAL := {"ok": true, "done": true, "error": true, "cancelled": true}
const _BUDGET_INT_KEYS: Array[String] = ["threads"]
const _BUDGET_FLOAT_KEYS: Array[String] = ["tokens_per_s", "share", "frame_ms"]

## Name sent in the automatic [code]hello[/code].
var client_name: String = "godot"
## Token sent in the automatic [code]hello[/code] (when the sidecar has one).
var token: String = ""
## Send [code]hello[/code] as soon as the connection is up, before any queued request.
var auto_hello: bool = true
## Extra time, after a request's deadline, before the client ends it itself.
var deadline_grace_ms: int = 15
## Most requests waiting for the connection; more fail at once with code overloaded.
var max_queued: int = 256
## A connection whose ZMTP handshake is not complete by then is closed (and the requests
## waiting for it end).
var handshake_timeout_ms: int = 10000
## The sidecar's [code]hello[/code] reply (models, limits, pid) once [signal session_ready].
var info: Dictionary = {}
## [method report_frame] sends one [code]frame[/code] op per this many frames (at least 1).
## Setting it drops the frame times not yet sent.
var frame_report_every: int = 6:
	set(value):
		frame_report_every = maxi(1, value)
		_frames.resize(frame_report_every)
		_frame_count = 0
## The sidecar's back-off level from the last [code]frame[/code] reply: 0 (none) to 3.
var backoff_level: int = 0

var _codec: MsgPack = MsgPack.new()
var _zmtp: Zmtp = Zmtp.new()
var _transport: Transport = null
var _next_id: int = 1
var _open: Dictionary = {}
var _queue: Array[Request] = []
var _endings: Array[Request] = []
var _ending_replies: Array[Dictionary] = []
var _late: Dictionary = {}
var _link_up: bool = false
var _hello_id: int = -1
var _next_deadline_usec: int = -1
var _lease_usec: int = 0
var _last_sent_usec: int = 0
var _connect_usec: int = 0
var _frames: PackedFloat64Array = PackedFloat64Array()
var _frame_count: int = 0
var _frame_id: int = -1


func _init() -> void:
	_frames.resize(frame_report_every)


## Parses [code]tcp://HOST:PORT[/code] (HOST an IP address, IPv6 in brackets) into
## [code]{"host": String, "port": int}[/code]; an empty Dictionary when it is not one.
static func parse_endpoint(endpoint: String) -> Dictionary:
	var rest := endpoint.strip_edges()
	if not rest.begins_with("tcp://"):
		return {}
	rest = rest.substr(6)
	var colon := rest.rfind(":")
	if colon <= 0:
		return {}
	var host := rest.substr(0, colon)
	var port_text := rest.substr(colon + 1)
	if host.begins_with("[") and host.ends_with("]"):
		host = host.substr(1, host.length() - 2)
	if host == "*" or host == "localhost":
		host = "127.0.0.1"
	if not port_text.is_valid_int() or int(port_text) <= 0 or int(port_text) > 65535:
		return {}
	return {"host": host, "port": int(port_text)}


## Connects to a sidecar at [param endpoint] ([code]tcp://127.0.0.1:PORT[/code]) without
## blocking; [signal connected] fires from [method poll] when the handshake is done.
func connect_to_endpoint(endpoint: String) -> Error:
	var where := parse_endpoint(endpoint)
	if where.is_empty():
		push_error("npcai: not a tcp://HOST:PORT endpoint: %s" % endpoint)
		return ERR_INVALID_PARAMETER
	var tcp: TcpTransport = TcpTransport.new()
	var err := tcp.open(where["host"], where["port"])
	if err != OK:
		push_error("npcai: " + tcp.error)
		return err
	connect_transport(tcp)
	return OK


## Speaks ZMTP over [param transport] (any [NpcAiTransport]); ends the previous connection.
func connect_transport(transport: Transport) -> void:
	if _transport != null:
		close("reconnecting")
	_transport = transport
	_connect_usec = Time.get_ticks_usec()
	_zmtp.attach(transport)


## Closes the connection; open requests end as when the connection is lost.
func close(reason: String = "closed") -> void:
	if _transport == null:
		return
	_zmtp.close(reason)
	_lose_link(reason)


## True while the ZMTP connection is up.
func is_open() -> bool:
	return _link_up and _zmtp.is_ready()


## True while a connection exists or is being made.
func has_transport() -> bool:
	return _transport != null


## Requests not yet finished (queued, sent, or ending in the next [method poll]).
func open_count() -> int:
	return _open.size() + _endings.size()


## Sends [param op] with [param fields] (in order, after [code]v[/code], [code]id[/code],
## [code]op[/code]; a field set to null is left out, except [code]fallback[/code]).
## [code]deadline_ms[/code] and [code]fallback[/code] go in [param fields] too.
func request(op: String, fields: Dictionary = {}) -> Request:
	var req: Request = Request.new()
	req.id = _next_id
	_next_id += 1
	req.op = op
	req._canceller = cancel
	req._created_usec = Time.get_ticks_usec()
	var message := {"v": PROTOCOL_VERSION, "id": req.id, "op": op}
	for key: Variant in fields:
		var v: Variant = fields[key]
		if typeof(v) != TYPE_NIL or str(key) == "fallback":
			message[key] = v
	var deadline: Variant = message.get("deadline_ms")
	if deadline != null:
		if typeof(deadline) != TYPE_INT or deadline < 0:
			push_error("npcai: deadline_ms must be a non-negative int; ignored")
			message.erase("deadline_ms")
		else:
			req.deadline_ms = deadline
			req._deadline_usec = req._created_usec + (req.deadline_ms + deadline_grace_ms) * 1000
			if _next_deadline_usec < 0 or req._deadline_usec < _next_deadline_usec:
				_next_deadline_usec = req._deadline_usec
	req._message = message
	_open[req.id] = req
	if is_open():
		_send(req)
	elif _queue.size() >= max_queued:
		_end_later(req, _error_reply(req, "overloaded", "too many requests wait for the sidecar"))
	else:
		_queue.append(req)
	return req


## [code]hello[/code]: identifies the game (and gives the token). Sent automatically when
## [member auto_hello] is set.
func hello(name: String = "", hello_token: String = "") -> Request:
	var fields := {"client": name if name != "" else client_name}
	var t := hello_token if hello_token != "" else token
	if t != "":
		fields["token"] = t
	return request("hello", fields)


## [code]ping[/code]: a cheap heartbeat, answered by the sidecar's socket thread.
func ping() -> Request:
	return request("ping")


## [code]npc[/code]: defines (or redefines) an NPC; [param options]: role, seed, examples,
## and [code]actions[/code], what the NPC may do: an Array of
## [code]{"name": String, "description": String, "args": Dictionary}[/code], [code]args[/code]
## a JSON schema of its arguments (e.g. enums of item ids). A bad action fails with
## [code]bad_request[/code] naming it.
func define_npc(npc: String, persona: String, options: Dictionary = {}) -> Request:
	return request("npc", _fields({"npc": npc, "persona": persona}, options))


## [code]say[/code]: the NPC answers [param text]; streamed as [signal NpcAiRequest.token].
## [param options]: max_tokens, temperature, top_k, top_p, seed, stream, stop,
## deadline_ms, fallback, priority, role, and [code]actions[/code] ([code]true[/code] or an
## Array of action names): after the line the NPC may act ([signal action_requested]).
## Sentences also come as [signal NpcAiRequest.sentence].
func say(npc: String, text: String, options: Dictionary = {}) -> Request:
	return request("say", _fields({"npc": npc, "text": text}, options))


## [code]decide[/code] among [param choices]; the reply's value is one of them (or the
## fallback). [param npc] may be "" (no NPC). [param options] as for [method say], plus
## [code]schema[/code] or [code]grammar[/code] instead of choices when [param choices] is empty.
func decide(npc: String, situation: String, choices: Array, options: Dictionary = {}) -> Request:
	var fields := {}
	if npc != "":
		fields["npc"] = npc
	fields["situation"] = situation
	if not choices.is_empty():
		fields["choices"] = choices
	return request("decide", _fields(fields, options))


## [code]decide[/code] with [code]actions[/code]: which of its declared actions the NPC takes
## ([param actions]: [code]true[/code] for all, or an Array of names), and with what arguments.
## The reply's value is [code]{"name", "args"}[/code], its [code]probs[/code] each action's
## probability; [signal action_requested] fires. [param options] as for [method decide]
## ([code]lead[/code], deadline_ms, fallback...).
func decide_action(
	npc: String, situation: String, actions: Variant = true, options: Dictionary = {}
) -> Request:
	var fields := {"npc": npc, "situation": situation, "actions": actions}
	return request("decide", _fields(fields, options))


## [code]act_result[/code]: tells the NPC what came of its action [param name] (answered at
## once); its next line can refer to it.
func act_result(npc: String, name: String, result: String) -> Request:
	return request("act_result", {"npc": npc, "name": name, "result": result})


## [code]chain[/code]: runs [param steps] (an Array of Dictionaries: a [code]decide[/code],
## [code]say[/code], [code]observe[/code] or [code]route[/code] request's fields plus
## [code]op[/code] and [code]as[/code]; [code]{name}[/code] in a string field is an earlier
## step's value) in one request. Each finished step comes as [signal NpcAiRequest.step], say
## steps stream [signal NpcAiRequest.token] and [signal NpcAiRequest.sentence], and the
## [code]done[/code] carries [code]results[/code] ([method NpcAiRequest.results]).
## [param options]: deadline_ms (for the whole chain), fallback, priority.
func chain(steps: Array, options: Dictionary = {}) -> Request:
	return request("chain", _fields({"steps": steps}, options))


## [code]observe[/code]: the NPC witnesses [param text] (answered at once).
func observe(npc: String, text: String) -> Request:
	return request("observe", {"npc": npc, "text": text})


## [code]forget[/code]: clears the NPC's history, keeps its persona.
func forget(npc: String) -> Request:
	return request("forget", {"npc": npc})


## [code]save[/code]: the reply's [code]state[/code] (PackedByteArray) restores the NPC.
func save_npc(npc: String) -> Request:
	return request("save", {"npc": npc})


## [code]load[/code]: (re)defines the NPC from a [code]state[/code] got from [method save_npc].
func load_npc(npc: String, state: PackedByteArray) -> Request:
	return request("load", {"npc": npc, "state": state})


## [code]stats[/code]: latency percentiles and engine counters.
func stats() -> Request:
	return request("stats")


## [code]budget[/code]: limits the sidecar's compute. [param options] holds any of
## [code]threads[/code] (int, 0 = the sidecar's choice), [code]tokens_per_s[/code] (0 = no
## cap), [code]share[/code] (of wall time, in (0, 1]) and [code]frame_ms[/code] (the game's
## target frame time, 0 = none); only those given are sent (as int and floats), the others
## keep their value. The reply's [code]effective[/code] shows threads, batch and share.
func set_budget(options: Dictionary) -> Request:
	var fields := {}
	for key: Variant in options:
		var v: Variant = options[key]
		var k := str(key)
		if k in _BUDGET_INT_KEYS and typeof(v) in [TYPE_INT, TYPE_FLOAT]:
			fields[k] = int(v)
		elif k in _BUDGET_FLOAT_KEYS and typeof(v) in [TYPE_INT, TYPE_FLOAT]:
			fields[k] = float(v)
		else:
			push_error("npcai: set_budget ignores %s = %s" % [k, v])
	return request("budget", fields)


## Records one frame time (milliseconds, e.g. [code]delta * 1000.0[/code]); call once a
## frame. Every [member frame_report_every] frames, [method poll] sends them in one
## [code]frame[/code] op (oldest first), while the connection is up and the previous
## report was answered; the newest times are kept meanwhile. Frames recorded without a
## connection are dropped. Allocates nothing until a report is sent.
func report_frame(frame_ms: float) -> void:
	if _frame_count >= frame_report_every:
		for i in frame_report_every - 1:
			_frames[i] = _frames[i + 1]
		_frame_count = frame_report_every - 1
	_frames[_frame_count] = frame_ms
	_frame_count += 1


## [code]shutdown[/code]: the sidecar answers, cancels open requests and exits.
func shutdown() -> Request:
	return request("shutdown")


## Cancels request [param id]: it ends with [signal NpcAiRequest.cancelled] in the next
## [method poll], and the sidecar is told to stop working on it. False if it had ended.
func cancel(id: int) -> bool:
	var req: Request = _open.get(id)
	if req == null:
		return false
	var was_sent := req.state == Request.State.SENT
	_queue.erase(req)
	_end_later(req, {"v": PROTOCOL_VERSION, "id": id, "event": "cancelled", "local": true})
	if was_sent:
		request("cancel", {"target": id})
	return true


## Does one frame's work without blocking: moves bytes, dispatches at most
## [param max_messages] replies (stopping early once [param budget_usec] microseconds have
## passed), ends requests whose deadline passed, and fires the signals. Returns the number
## of replies and endings delivered. Allocates nothing when there is nothing to do.
func poll(max_messages: int = 64, budget_usec: int = 2000) -> int:
	var start := Time.get_ticks_usec()
	var handled := 0
	if _transport != null:
		_zmtp.poll()
		if not _link_up and start - _connect_usec > handshake_timeout_ms * 1000:
			_zmtp.close("no ZMTP handshake within %d ms" % handshake_timeout_ms)
		_check_link()
	while handled < max_messages and _zmtp.has_message():
		_dispatch(_zmtp.pop_message())
		handled += 1
		if Time.get_ticks_usec() - start >= budget_usec:
			break
	if _lease_usec > 0 and is_open() and Time.get_ticks_usec() - _last_sent_usec >= _lease_usec / 4:
		ping()
	if _frame_count >= frame_report_every:
		_send_frames()
	if _next_deadline_usec >= 0 and Time.get_ticks_usec() >= _next_deadline_usec:
		_expire(Time.get_ticks_usec())
	handled += _deliver_endings()
	if _transport != null:
		_zmtp.flush()
	return handled


# --- internals -----------------------------------------------------------------------------


func _fields(fields: Dictionary, options: Dictionary) -> Dictionary:
	fields.merge(options)
	return fields


func _send_frames() -> void:
	if not is_open():
		_frame_count = 0
	elif _frame_id < 0:
		_frame_id = request("frame", {"frame_ms": _frames.slice(0, _frame_count)}).id
		_frame_count = 0


func _check_link() -> void:
	if _zmtp.is_ready() and not _link_up:
		_link_up = true
		connected.emit()
		if auto_hello:
			_hello_id = hello().id
		var waiting := _queue.duplicate()
		_queue.clear()
		for req in waiting:
			if _open.has(req.id):
				_send(req)
	elif _zmtp.state == Zmtp.State.CLOSED or _zmtp.state == Zmtp.State.FAILED:
		_lose_link(_zmtp.error)


func _send(req: Request) -> void:
	var message := req._message
	if req.deadline_ms >= 0:
		var waited_ms := (Time.get_ticks_usec() - req._created_usec) / 1000
		if waited_ms >= 1:
			message["deadline_ms"] = maxi(0, req.deadline_ms - waited_ms)
	var body := _codec.encode(message)
	if _codec.error != "":
		_end_later(req, _error_reply(req, "encode_error", _codec.error))
		return
	if not _zmtp.send(body):
		_end_later(req, _error_reply(req, "unavailable", "the connection is closed"))
		return
	req.state = Request.State.SENT
	_last_sent_usec = Time.get_ticks_usec()
	_zmtp.flush()


func _dispatch(parts: Array) -> void:
	if parts.size() != 1:
		stray_reply.emit(_bad_reply("a reply must be one frame, got %d" % parts.size()))
		return
	var decoded: Variant = _codec.decode(parts[0])
	if _codec.error != "" or typeof(decoded) != TYPE_DICTIONARY:
		var why := "reply is not a msgpack map: " + _codec.error
		# It still ends the request it names, rather than leaving that to wait forever.
		var named: Variant = _codec.leading_int(parts[0], "id")
		var req: Request = _open.get(named) if named != null else null
		if req != null:
			_end_later(req, _error_reply(req, "bad_reply", "the sidecar's reply did not decode: " + why))
		else:
			stray_reply.emit(_bad_reply(why))
		return
	var reply: Dictionary = decoded
	var rid: Variant = reply.get("id")
	var event := str(reply.get("event", ""))
	var req: Request = _open.get(rid) if typeof(rid) == TYPE_INT else null
	if req == null:
		if typeof(rid) == TYPE_INT and _late.has(rid):
			if _TERMINAL.has(event):
				_late.erase(rid)
		else:
			stray_reply.emit(reply)
	elif event == "token":
		req._deliver_token(str(reply.get("text", "")))
	elif event == "sentence":
		req._deliver_sentence(str(reply.get("text", "")))
	elif event == "step":
		req._deliver_step(reply)
		_request_action(_step_asked(req, reply.get("step")), reply)
	elif _TERMINAL.has(event):
		_open.erase(req.id)
		_on_end(req, reply)
		if event == "done":
			_request_action(req._message, reply)
		req._end(reply)


func _step_asked(req: Request, index: Variant) -> Dictionary:
	var steps: Variant = req._message.get("steps")
	if (
		typeof(steps) != TYPE_ARRAY
		or typeof(index) != TYPE_INT
		or index < 0
		or index >= steps.size()
	):
		return {}
	return steps[index] if typeof(steps[index]) == TYPE_DICTIONARY else {}


func _request_action(asked: Dictionary, answer: Dictionary) -> void:
	var act: Variant = Request.action_of(asked, answer)
	if act != null:
		action_requested.emit(str(asked.get("npc", "")), act["name"], act["args"])


func _on_end(req: Request, reply: Dictionary) -> void:
	if req.id == _frame_id:
		_frame_id = -1
		var level: Variant = reply.get("backoff_level")
		if reply.get("event") == "ok" and typeof(level) == TYPE_INT and level != backoff_level:
			backoff_level = level
			backoff_changed.emit(level)
		return
	if req.id != _hello_id:
		return
	_hello_id = -1
	if reply.get("event") == "ok":
		info = reply
		var lease: Variant = reply.get("lease_ms", 0)
		_lease_usec = lease * 1000 if typeof(lease) == TYPE_INT and lease > 0 else 0
		session_ready.emit(reply)
	else:
		session_failed.emit(
			str(reply.get("code", reply.get("event"))), str(reply.get("message", ""))
		)


func _expire(now: int) -> void:
	_next_deadline_usec = -1
	var expired: Array[Request] = []
	for req: Request in _open.values():
		if req._deadline_usec < 0:
			continue
		if req._deadline_usec <= now:
			expired.append(req)
		elif _next_deadline_usec < 0 or req._deadline_usec < _next_deadline_usec:
			_next_deadline_usec = req._deadline_usec
	for req in expired:
		_queue.erase(req)
		var elapsed_ms := (now - req._created_usec) / 1000.0
		_end_later(req, _fallback_reply(req, "deadline", true, elapsed_ms))


func _lose_link(reason: String) -> void:
	var had_transport := _transport != null
	_transport = null
	_link_up = false
	_hello_id = -1
	_frame_id = -1
	_frame_count = 0
	_lease_usec = 0
	_late.clear()
	_queue.clear()
	var now := Time.get_ticks_usec()
	for req: Request in _open.values():
		if req.deadline_ms >= 0:
			var elapsed_ms := (now - req._created_usec) / 1000.0
			_end_later(req, _fallback_reply(req, "unavailable", false, elapsed_ms))
		else:
			_end_later(req, _error_reply(req, "unavailable", reason))
	if had_transport:
		disconnected.emit(reason)


## Takes [param req] out of the open table and queues its ending for delivery in poll().
func _end_later(req: Request, reply: Dictionary) -> void:
	_open.erase(req.id)
	if req.state == Request.State.SENT and _transport != null:
		_late[req.id] = true
		if _late.size() > 4096:
			_late.clear()
	_endings.append(req)
	_ending_replies.append(reply)


func _deliver_endings() -> int:
	var n := _endings.size()
	if n == 0:
		return 0
	var reqs := _endings.duplicate()
	var replies := _ending_replies.duplicate()
	_endings.clear()
	_ending_replies.clear()
	for i in n:
		_on_end(reqs[i], replies[i])
		reqs[i]._end(replies[i])
	return n


func _fallback_reply(
	req: Request, reason: String, timed_out: bool, elapsed_ms: float
) -> Dictionary:
	return {
		"v": PROTOCOL_VERSION,
		"id": req.id,
		"event": "done",
		"value": req._message.get("fallback"),
		"text": req.text,
		"tokens": 0,
		"finish_reason": reason,
		"timed_out": timed_out,
		"used_fallback": true,
		"timing": {"queue_ms": elapsed_ms, "total_ms": elapsed_ms},
		"local": true,
	}


func _error_reply(req: Request, code: String, message: String) -> Dictionary:
	return {
		"v": PROTOCOL_VERSION,
		"id": req.id,
		"event": "error",
		"code": code,
		"message": message,
		"local": true,
	}


func _bad_reply(message: String) -> Dictionary:
	return {
		"v": PROTOCOL_VERSION,
		"id": null,
		"event": "error",
		"code": "bad_reply",
		"message": message,
		"local": true,
	}
