class_name NpcAiRequest
extends RefCounted
## One request to the sidecar, as returned by [NpcAiClient] (and the [code]NpcAi[/code] node).
##
## Connect its signals, or [code]await[/code] it:
## [codeblock]
## var line := NpcAi.say("brom", "Hello!", {"deadline_ms": 2000, "fallback": "Hm."})
## line.token.connect(func(_id: int, text: String) -> void: label.text += text)
## var reply: Dictionary = await line.wait()
## [/codeblock]
## Signals fire only inside [method NpcAiClient.poll], never from the call that made the
## request, so connecting or awaiting right after the call never misses the end. Exactly one
## of [signal done], [signal failed] and [signal cancelled] fires, then [signal finished].

## A streamed chunk of a [code]say[/code] line (or of a [code]chain[/code]'s say steps).
signal token(id: int, text: String)
## A sentence of a [code]say[/code] line is complete (for text-to-speech and subtitles): the
## sentences joined are the line. In a [code]chain[/code], the sentences of its say steps.
signal sentence(id: int, text: String)
## A [code]chain[/code] step finished: [param event] is the sidecar's [code]step[/code] event
## ([code]step[/code] index, [code]as[/code], [code]value[/code], [code]used_fallback[/code], ...).
signal step(id: int, event: Dictionary)
## The request succeeded: [param reply] is the sidecar's [code]done[/code] or [code]ok[/code]
## reply, or the client's own [code]done[/code] with the fallback when the deadline passed.
signal done(id: int, reply: Dictionary)
## The sidecar answered with an error, or the request could not be sent or answered.
signal failed(id: int, code: String, message: String)
## The request was cancelled (by [method cancel], or by the sidecar shutting down).
signal cancelled(id: int)
## Fires last, whatever the ending; [param reply] is the final reply.
signal finished(reply: Dictionary)

## Where the request stands.
enum State { QUEUED, SENT, DONE, FAILED, CANCELLED }

## The request id (unique on its client).
var id: int = 0
## The operation ([code]say[/code], [code]decide[/code], ...).
var op: String = ""
## Where the request stands.
var state: State = State.QUEUED
## The [code]token[/code] chunks received so far, joined.
var text: String = ""
## The final reply once finished (an empty Dictionary before).
var reply: Dictionary = {}
## The [code]deadline_ms[/code] it was sent with, or -1.
var deadline_ms: int = -1
## The [code]sentence[/code] events received so far, in order.
var sentences: PackedStringArray = PackedStringArray()
## A [code]chain[/code]'s [code]step[/code] events received so far, in order.
var steps: Array[Dictionary] = []

var _message: Dictionary = {}
var _created_usec: int = 0
var _deadline_usec: int = -1
var _canceller: Callable = Callable()


## True once [signal finished] has fired.
func is_finished() -> bool:
	return state == State.DONE or state == State.FAILED or state == State.CANCELLED


## Waits for the end (returns at once when already finished) and returns the final reply.
## Use as [code]var reply: Dictionary = await request.wait()[/code].
func wait() -> Dictionary:
	if is_finished():
		return reply
	return await finished


## The answer: the reply's [code]value[/code] (the line, the choice, the object, or the
## fallback), or null.
func value() -> Variant:
	return reply.get("value")


## The action the NPC chose, [code]{"name": String, "args": Dictionary}[/code], or null: a
## [code]say[/code] with [code]actions[/code] carries it in [code]done.action[/code] (null when
## the NPC just talks), a [code]decide[/code] with [code]actions[/code] as its value. Null when
## the answer is a fallback: the game chose that, not the NPC.
func action() -> Variant:
	return action_of(_message, reply)


## A [code]chain[/code]'s results: a map from each step's [code]as[/code] name to its value.
func results() -> Dictionary:
	var r: Variant = reply.get("results")
	return r if typeof(r) == TYPE_DICTIONARY else {}


## True when the answer is the request's fallback (deadline passed, decision incomplete, or
## the sidecar went away).
func used_fallback() -> bool:
	return reply.get("used_fallback", false) == true


## True when the deadline passed before the answer was ready.
func timed_out() -> bool:
	return reply.get("timed_out", false) == true


## The error code after [signal failed] (e.g. [code]unknown_npc[/code], or the client's own
## [code]unavailable[/code], [code]encode_error[/code], [code]overloaded[/code]); else "".
func error_code() -> String:
	return str(reply.get("code", "")) if state == State.FAILED else ""


## Asks for the request to be cancelled; it then ends with [signal cancelled]. False when it
## had already ended.
func cancel() -> bool:
	if is_finished() or not _canceller.is_valid():
		return false
	return _canceller.call(id)


func _deliver_token(chunk: String) -> void:
	text += chunk
	token.emit(id, chunk)


## The action in [param answer], the reply to [param asked] (a request, or a chain's step
## map with its [code]op[/code]), or null: see [method action].
static func action_of(asked: Dictionary, answer: Dictionary) -> Variant:
	if answer.get("used_fallback", false) == true or answer.get("local", false) == true:
		return null
	var wanted: Variant = asked.get("actions")
	var asks: bool = typeof(wanted) == TYPE_ARRAY or (typeof(wanted) == TYPE_BOOL and wanted)
	var found: Variant = null
	if asked.get("op") == "say":
		found = answer.get("action")
	elif asked.get("op") == "decide" and asks:
		found = answer.get("value")
	if typeof(found) != TYPE_DICTIONARY or typeof(found.get("name")) != TYPE_STRING:
		return null
	if typeof(found.get("args")) != TYPE_DICTIONARY:
		return null
	return found


func _deliver_sentence(chunk: String) -> void:
	sentences.append(chunk)
	sentence.emit(id, chunk)


func _deliver_step(event: Dictionary) -> void:
	steps.append(event)
	step.emit(id, event)


func _end(final_reply: Dictionary) -> void:
	if is_finished():
		return
	reply = final_reply
	var event := str(final_reply.get("event", ""))
	if event == "error":
		state = State.FAILED
		failed.emit(id, str(final_reply.get("code", "")), str(final_reply.get("message", "")))
	elif event == "cancelled":
		state = State.CANCELLED
		cancelled.emit(id)
	else:
		state = State.DONE
		done.emit(id, final_reply)
	finished.emit(final_reply)
