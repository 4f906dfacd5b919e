class_name NpcAiZmtp
extends RefCounted
## A minimal ZMTP 3.1 DEALER (docs/PROTOCOL.md, "Speaking ZMTP without libzmq").
##
## A non-blocking state machine: the 64-byte greeting with the NULL mechanism, the READY
## command with [code]Socket-Type: DEALER[/code], then frames (short and long, multipart);
## command frames after the handshake are skipped, except PING, which gets a PONG.[br]
## It works "sans I/O": [method feed] gives it received bytes and [method take_output]
## returns the bytes to send, so tests can drive it without a socket. [method attach] gives it
## an [NpcAiTransport], and then [method poll] moves the bytes itself, never blocking.

## Where the connection stands.
enum State { IDLE, CONNECTING, GREETING, HANDSHAKE, READY, CLOSED, FAILED }

const FLAG_MORE := 1
const FLAG_LONG := 2
const FLAG_COMMAND := 4
## Default for [member max_frame_bytes] (16 MiB).
const DEFAULT_MAX_FRAME_BYTES := 16777216
const _GREETING_SIZE := 64
const Transport := preload("npc_ai_transport.gd")

## The state; [constant State.READY] once both sides have exchanged READY.
var state: State = State.IDLE
## Why the connection failed or closed; empty otherwise.
var error: String = ""
## Largest frame accepted from the peer; a larger one fails the connection.
var max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
## Most bytes read from the transport in one [method poll].
var max_read_per_poll: int = 262144
## Stop reading from the transport while this many received messages wait in the queue.
var max_queued_messages: int = 1024
## Most outgoing frames held while the handshake is still under way.
var max_pending_frames: int = 1024
## Properties of the peer's READY command (names in lower case, values as bytes).
var peer_properties: Dictionary = {}

var _transport: Transport = null
var _rx: PackedByteArray = PackedByteArray()
var _rx_pos: int = 0
var _tx: PackedByteArray = PackedByteArray()
var _pending: Array[PackedByteArray] = []
var _parts: Array[PackedByteArray] = []
var _messages: Array = []
var _message_head: int = 0


## The 64-byte greeting this DEALER sends: signature, version 3.1, NULL, as-server 0.
static func greeting() -> PackedByteArray:
	var g := PackedByteArray()
	g.resize(_GREETING_SIZE)
	g.fill(0)
	g[0] = 0xff
	g[9] = 0x7f
	g[10] = 3
	g[11] = 1
	var mechanism := "NULL".to_ascii_buffer()
	for i in mechanism.size():
		g[12 + i] = mechanism[i]
	return g


## The READY command frame this DEALER sends ([code]Socket-Type: DEALER[/code]).
static func ready_command(socket_type: String = "DEALER") -> PackedByteArray:
	var body := PackedByteArray([5])
	body.append_array("READY".to_ascii_buffer())
	body.append(11)
	body.append_array("Socket-Type".to_ascii_buffer())
	var value := socket_type.to_ascii_buffer()
	body.append_array(PackedByteArray([0, 0, 0, value.size()]))
	body.append_array(value)
	var frame := PackedByteArray()
	append_frame(frame, body, FLAG_COMMAND)
	return frame


## Appends one frame holding [param body] to [param out]: flags (LONG added for bodies over
## 255 bytes), the size in 1 byte or 8 bytes big-endian, then the body.
static func append_frame(out: PackedByteArray, body: PackedByteArray, flags: int = 0) -> void:
	var n := body.size()
	if n <= 255:
		out.append(flags)
		out.append(n)
	else:
		out.append(flags | FLAG_LONG)
		var size := PackedByteArray()
		size.resize(8)
		size.encode_s64(0, n)
		for i in range(7, -1, -1):
			out.append(size[i])
	out.append_array(body)


## Forgets everything and returns to [constant State.IDLE] (detaches the transport).
func reset() -> void:
	state = State.IDLE
	error = ""
	peer_properties = {}
	_transport = null
	_rx = PackedByteArray()
	_rx_pos = 0
	_tx = PackedByteArray()
	_pending.clear()
	_parts.clear()
	_messages.clear()
	_message_head = 0


## Uses [param transport] (connecting or connected) for [method poll]; the greeting goes out
## as soon as it is connected.
func attach(transport: Transport) -> void:
	reset()
	_transport = transport
	state = State.CONNECTING


## Begins the handshake: queues the greeting. [method poll] calls it once the transport is
## connected; call it yourself when driving the machine with [method feed].
func start() -> void:
	if state != State.IDLE and state != State.CONNECTING:
		return
	_tx.append_array(greeting())
	state = State.GREETING


## True once the handshake is complete.
func is_ready() -> bool:
	return state == State.READY


## Queues one message frame (with MORE set when [param more]); frames queued before the
## handshake completes go out right after it. False when closed or the queue is full.
func send(body: PackedByteArray, more: bool = false) -> bool:
	if state == State.CLOSED or state == State.FAILED:
		return false
	if state != State.READY:
		if _pending.size() >= max_pending_frames:
			return false
		_pending.append(body)
		return true
	append_frame(_tx, body, FLAG_MORE if more else 0)
	return true


## Gives the machine bytes received from the peer and processes them.
func feed(data: PackedByteArray) -> void:
	if state == State.CLOSED or state == State.FAILED:
		return
	_rx.append_array(data)
	_parse()


## True when there are bytes to send.
func has_output() -> bool:
	return not _tx.is_empty()


## Returns (and forgets) the bytes to send; for tests and custom I/O.
func take_output() -> PackedByteArray:
	var out := _tx
	_tx = PackedByteArray()
	return out


## True when a complete message waits in the queue.
func has_message() -> bool:
	return _message_head < _messages.size()


## Returns the next complete message as an Array of [PackedByteArray] frames (usually one),
## or an empty Array when none waits.
func pop_message() -> Array:
	if _message_head >= _messages.size():
		return []
	var message: Array = _messages[_message_head]
	_messages[_message_head] = null
	_message_head += 1
	if _message_head >= _messages.size():
		_messages.clear()
		_message_head = 0
	return message


## Number of complete messages waiting.
func message_count() -> int:
	return _messages.size() - _message_head


## Moves bytes between the transport and the machine without blocking: connects, reads what
## has arrived (at most [member max_read_per_poll] bytes), writes what the socket takes.
## Does nothing, and allocates nothing, when there is nothing to do.
func poll() -> void:
	if _transport == null or state == State.CLOSED or state == State.FAILED:
		return
	var status := _transport.poll()
	if status == Transport.Status.CONNECTING:
		return
	if status != Transport.Status.CONNECTED:
		_close_with(_transport.error if _transport.error != "" else "connection closed")
		return
	if state == State.CONNECTING:
		start()
	var budget := max_read_per_poll
	while budget > 0 and message_count() < max_queued_messages and state < State.CLOSED:
		var n := mini(_transport.available(), budget)
		if n <= 0:
			break
		var data := _transport.read(n)
		if data.is_empty():
			break
		budget -= data.size()
		feed(data)
	flush()


## Writes queued output to the transport, as much as it takes now.
func flush() -> void:
	if _transport == null or _tx.is_empty() or state == State.CLOSED or state == State.FAILED:
		return
	var sent := _transport.write(_tx)
	if sent < 0:
		_close_with(_transport.error if _transport.error != "" else "write failed")
	elif sent >= _tx.size():
		_tx = PackedByteArray()
	elif sent > 0:
		_tx = _tx.slice(sent)


## Closes the transport (after one last non-blocking flush) and enters [constant State.CLOSED].
func close(reason: String = "closed") -> void:
	flush()
	_close_with(reason)


func _close_with(reason: String) -> void:
	if _transport != null:
		_transport.close()
	if state != State.FAILED:
		state = State.CLOSED
	if error == "":
		error = reason


func _fail(reason: String) -> void:
	error = reason
	state = State.FAILED
	if _transport != null:
		_transport.close()


func _parse() -> void:
	while state == State.GREETING or state == State.HANDSHAKE or state == State.READY:
		if state == State.GREETING:
			if not _parse_greeting():
				break
		elif not _parse_frame():
			break
	if _rx_pos > 0 and (_rx_pos >= _rx.size() or _rx_pos >= 65536):
		_rx = _rx.slice(_rx_pos)
		_rx_pos = 0


func _parse_greeting() -> bool:
	var avail := _rx.size() - _rx_pos
	if avail >= 1 and _rx[_rx_pos] != 0xff:
		_fail("peer is not ZMTP (bad signature)")
		return false
	if avail < _GREETING_SIZE:
		return false
	var g := _rx_pos
	if (_rx[g + 9] & 1) != 1:
		_fail("peer is not ZMTP 3 (bad signature)")
		return false
	if _rx[g + 10] != 3:
		_fail("peer speaks ZMTP %d.%d, not 3.x" % [_rx[g + 10], _rx[g + 11]])
		return false
	var mechanism := _rx.slice(g + 12, g + 32).get_string_from_ascii()
	if mechanism != "NULL":
		_fail("peer wants the %s mechanism; only NULL is supported" % mechanism)
		return false
	_rx_pos += _GREETING_SIZE
	state = State.HANDSHAKE
	_tx.append_array(ready_command())
	return true


## Parses one frame if it is complete; false when more bytes are needed (or on failure).
func _parse_frame() -> bool:
	var avail := _rx.size() - _rx_pos
	var flags: int = _rx[_rx_pos] if avail > 0 else 0
	var header := 9 if flags & FLAG_LONG else 2
	if avail < header:
		return false
	var size := _frame_size(flags)
	if size < 0 or avail < header + size:
		return false
	var start := _rx_pos + header
	var body := _rx.slice(start, start + size)
	_rx_pos = start + size
	if flags & FLAG_COMMAND:
		_on_command(body)
	elif state != State.READY:
		_fail("peer sent a message before READY")
	else:
		_parts.append(body)
		if (flags & FLAG_MORE) == 0:
			_messages.append(_parts.duplicate())
			_parts.clear()
	return state != State.FAILED


## The body size of the frame whose header is complete at the read position; -1 on failure.
func _frame_size(flags: int) -> int:
	var size: int = _rx[_rx_pos + 1]
	if flags & 0xf8:
		_fail("bad frame flags 0x%02x" % flags)
		size = -1
	elif flags & FLAG_LONG:
		if _rx[_rx_pos + 1] >= 0x80:
			_fail("frame size out of range")
			return -1
		size = 0
		for i in range(1, 9):
			size = size * 256 + _rx[_rx_pos + i]
	if size > max_frame_bytes:
		_fail("frame of %d bytes exceeds max_frame_bytes=%d" % [size, max_frame_bytes])
		size = -1
	return size


func _on_command(body: PackedByteArray) -> void:
	if body.is_empty() or body[0] + 1 > body.size():
		_fail("malformed command frame")
		return
	var name := body.slice(1, 1 + body[0]).get_string_from_ascii()
	if name == "ERROR":
		var reason := ""
		if body.size() > 6:
			reason = body.slice(7, 7 + body[6]).get_string_from_utf8()
		_fail("peer refused the connection: " + reason)
	elif state == State.HANDSHAKE:
		if name != "READY":
			_fail("expected READY, got %s" % name)
		elif _parse_properties(body, 1 + body[0]):
			var peer_type := (
				peer_properties.get("socket-type", PackedByteArray()) as PackedByteArray
			)
			var kind := peer_type.get_string_from_ascii()
			if kind != "ROUTER" and kind != "DEALER":
				_fail("peer is a %s socket; a DEALER needs a ROUTER" % kind)
			else:
				state = State.READY
				for frame in _pending:
					append_frame(_tx, frame)
				_pending.clear()
	elif name == "PING" and body.size() >= 7:
		var pong := PackedByteArray([4])
		pong.append_array("PONG".to_ascii_buffer())
		pong.append_array(body.slice(7))
		append_frame(_tx, pong, FLAG_COMMAND)


func _parse_properties(body: PackedByteArray, from: int) -> bool:
	var p := from
	while p < body.size():
		var name_len: int = body[p]
		if p + 1 + name_len + 4 > body.size():
			_fail("malformed READY properties")
			return false
		var name := body.slice(p + 1, p + 1 + name_len).get_string_from_ascii().to_lower()
		p += 1 + name_len
		var value_len: int = (
			body[p] * 16777216 + body[p + 1] * 65536 + body[p + 2] * 256 + body[p + 3]
		)
		p += 4
		if p + value_len > body.size():
			_fail("malformed READY properties")
			return false
		peer_properties[name] = body.slice(p, p + value_len)
		p += value_len
	return true
