extends SceneTree
## Checks the msgpack codec and the ZMTP framing against every [code]msgpack.*[/code],
## [code]message.*[/code] and [code]zmtp.*[/code] vector of
## engine_bridges/conformance/vectors.tsv, plus bounded decoding of bad input.
##
## Run from the repository root:
## [codeblock]
## godot --headless --path engine_bridges/godot --script res://tests/test_codec.gd
## [/codeblock]
## Prints one line per check and "N passed, N failed"; exits non-zero on a failure.
## A vector in the file that no check here covers is itself a failure, and
## tests/test_bridge_godot.py checks that every vector name appears in this file.

const MsgPack := preload("res://addons/npcai/npc_ai_msg_pack.gd")
const Zmtp := preload("res://addons/npcai/npc_ai_zmtp.gd")
const Client := preload("res://addons/npcai/npc_ai_client.gd")
const Pipe := preload("res://tests/pipe_transport.gd")


## The checks; [method run] returns the number of failures.
class Suite:
	extends RefCounted

	var passed: int = 0
	var failed: int = 0
	var vectors: Dictionary = {}
	var covered: Dictionary = {}

	## Runs every check against the vectors file at [param vectors_path].
	func run(vectors_path: String) -> int:
		if not _load_vectors(vectors_path):
			return 1
		_test_msgpack_vectors()
		_test_message_vectors()
		_test_client_frames()
		_test_zmtp_vectors()
		_test_bad_msgpack()
		_test_bad_zmtp()
		_test_encode_errors()
		for name: String in vectors:
			_check("covered " + name, covered.has(name), "no check uses this vector")
		print("%d passed, %d failed" % [passed, failed])
		return failed

	## Deep equality that also compares types (1 and 1.0 differ) and map order.
	static func same(a: Variant, b: Variant) -> bool:
		if typeof(a) == TYPE_OBJECT and typeof(b) == TYPE_OBJECT:
			return a is MsgPack.Uint64 and b is MsgPack.Uint64 and a.bits == b.bits
		if typeof(a) != typeof(b):
			return false
		var equal := true
		if typeof(a) == TYPE_ARRAY:
			equal = a.size() == b.size()
			for i in a.size() if equal else 0:
				equal = equal and same(a[i], b[i])
		elif typeof(a) == TYPE_DICTIONARY:
			equal = a.keys() == b.keys()
			for key: Variant in a if equal else {}:
				equal = equal and same(a[key], b[key])
		else:
			equal = a == b
		return equal

	func _check(name: String, ok: bool, detail: String = "") -> void:
		if ok:
			passed += 1
			print("ok   ", name)
		else:
			failed += 1
			print("FAIL ", name, ": ", detail)

	func _load_vectors(path: String) -> bool:
		var file := FileAccess.open(path, FileAccess.READ)
		if file == null:
			_check("open " + path, false, error_string(FileAccess.get_open_error()))
			return false
		while not file.eof_reached():
			var line := file.get_line()
			if line.is_empty() or line.begins_with("#"):
				continue
			var cols := line.split("\t")
			vectors[cols[0]] = cols[1].hex_decode()
		_check("vectors loaded", vectors.size() >= 60, "%d vectors" % vectors.size())
		return true

	## The bytes of vector [param name], marking it covered.
	func vec(name: String) -> PackedByteArray:
		covered[name] = true
		if not vectors.has(name):
			_check("vector " + name, false, "missing from vectors.tsv")
			return PackedByteArray()
		return vectors[name]

	# --- msgpack -------------------------------------------------------------------------

	func _test_msgpack_vectors() -> void:
		var single := {"msgpack.float32.1.5": true, "msgpack.float32.-0.25": true}
		var values := Expected.msgpack_values()
		for name: String in values:
			var codec := MsgPack.new()
			codec.single_float = single.has(name)
			_roundtrip(codec, name, values[name])
		# The uint64s that GDScript's signed int cannot hold: 2^63 and 2^64-1, by their bits.
		_uint64("msgpack.uint.9223372036854775808", -9223372036854775807 - 1, 9223372036854775808.0)
		_uint64("msgpack.uint.18446744073709551615", -1, 18446744073709551615.0)

	func _uint64(name: String, bits: int, nearest: float) -> void:
		var codec := MsgPack.new()
		var bytes := vec(name)
		var out := codec.encode(MsgPack.Uint64.new(bits))
		_check("encode " + name, out == bytes, out.hex_encode())
		var loose: Variant = codec.decode(bytes)
		_check(
			"decode " + name + " as float", typeof(loose) == TYPE_FLOAT and loose == nearest, str(loose)
		)
		codec.exact_uint64 = true
		var exact: Variant = codec.decode(bytes)
		_check(
			"decode " + name + " exactly",
			exact is MsgPack.Uint64 and exact.bits == bits and codec.error == "",
			str(exact)
		)

	func _roundtrip(codec: MsgPack, name: String, value: Variant) -> void:
		var bytes := vec(name)
		var out := codec.encode(value)
		_check("encode " + name, codec.error == "" and out == bytes, out.hex_encode())
		var back: Variant = codec.decode(bytes)
		_check("decode " + name, codec.error == "" and same(back, value), str(back))

	func _test_message_vectors() -> void:
		var messages := Expected.messages()
		for name: String in messages:
			_roundtrip(MsgPack.new(), name, messages[name])

	## The client builds the request vectors byte for byte (ids 1..12 in this order).
	func _test_client_frames() -> void:
		var client := Client.new()
		client.auto_hello = false
		var pipe := Pipe.new()
		client.connect_transport(pipe)
		client.poll()
		_check(
			"client sends the greeting first",
			pipe.take() == vec("zmtp.greeting.null_client"),
			"other bytes"
		)
		pipe.inbox.append_array(vec("zmtp.greeting.null_client"))
		pipe.inbox.append_array(vec("zmtp.ready.router"))
		client.poll()
		_check("client sends READY", pipe.take() == vec("zmtp.ready.dealer"), "other bytes")
		_check("client is open", client.is_open(), "handshake incomplete")
		var sent: Array[PackedByteArray] = []
		client.hello("godot")
		sent.append(pipe.take())
		client.ping()
		sent.append(pipe.take())
		client.define_npc("brom", "You are Brom.", {"seed": 7})
		sent.append(pipe.take())
		var options := {"max_tokens": 32, "temperature": 0.7, "deadline_ms": 2000}
		options["fallback"] = "..."
		client.say("brom", "Hello!", options)
		sent.append(pipe.take())
		client.decide(
			"grik", "A sword!", ["attack", "flee"], {"deadline_ms": 150, "fallback": "flee"}
		)
		sent.append(pipe.take())
		client.decide(
			"",
			"Night.",
			[],
			{"schema": Expected.messages()["message.request.decide.schema"]["schema"]}
		)
		sent.append(pipe.take())
		client.cancel(4)
		sent.append(pipe.take())
		var m := Expected.messages()
		client.define_npc(
			"brom", "You are Brom.", {"actions": m["message.request.npc.actions"]["actions"]}
		)
		sent.append(pipe.take())
		client.say("brom", "A shield!", {"actions": true})
		sent.append(pipe.take())
		client.chain(m["message.request.chain"]["steps"], {"deadline_ms": 1500})
		sent.append(pipe.take())
		var wait := {"name": "wait", "args": {}}
		client.decide_action("brom", "20 gold.", ["give"], {"deadline_ms": 500, "fallback": wait})
		sent.append(pipe.take())
		client.act_result("brom", "give", "The customer has the shield.")
		sent.append(pipe.take())
		var names := [
			"message.request.hello",
			"message.request.ping",
			"message.request.npc",
			"message.request.say",
			"message.request.decide.choices",
			"message.request.decide.schema",
			"message.request.cancel",
			"message.request.npc.actions",
			"message.request.say.actions",
			"message.request.chain",
			"message.request.decide.actions",
			"message.request.act_result",
		]
		for i in names.size():
			var frame := PackedByteArray()
			Zmtp.append_frame(frame, vec(names[i]))
			_check("client frame " + names[i], sent[i] == frame, sent[i].hex_encode())

	# --- zmtp ----------------------------------------------------------------------------

	func _test_zmtp_vectors() -> void:
		var g := vec("zmtp.greeting.null_client")
		_check("greeting()", Zmtp.greeting() == g, Zmtp.greeting().hex_encode())
		_check("ready_command()", Zmtp.ready_command() == vec("zmtp.ready.dealer"), "other bytes")
		var ping := vec("message.request.ping")
		var short := PackedByteArray()
		Zmtp.append_frame(short, ping)
		_check("append_frame short", short == vec("zmtp.frame.short"), short.hex_encode())
		var long_body := MsgPack.new().encode(
			{"v": 1, "id": 9, "op": "say", "npc": "brom", "text": "x".repeat(300)}
		)
		var long := PackedByteArray()
		Zmtp.append_frame(long, long_body)
		_check("append_frame long", long == vec("zmtp.frame.long"), long.hex_encode().left(40))
		# Across the short/long boundary: 255 bytes is the largest short frame, 256 the smallest long.
		var edge_bodies := {}
		for size in [255, 256]:
			var body := MsgPack.new().encode(
				{"v": 1, "id": 9, "op": "say", "npc": "brom", "text": "x".repeat(size - 31)}
			)
			var framed := PackedByteArray()
			Zmtp.append_frame(framed, body)
			var name := "zmtp.frame.%d" % size
			_check("append_frame " + name, framed == vec(name), framed.hex_encode().left(40))
			edge_bodies[size] = body
		var multi := PackedByteArray()
		Zmtp.append_frame(multi, "A".to_ascii_buffer(), Zmtp.FLAG_MORE)
		Zmtp.append_frame(multi, "BC".to_ascii_buffer())
		_check("append_frame multipart", multi == vec("zmtp.frame.multipart"), multi.hex_encode())
		var empty := PackedByteArray()
		Zmtp.append_frame(empty, PackedByteArray())
		_check("append_frame empty", empty == vec("zmtp.frame.empty"), empty.hex_encode())
		# Receiving: the peer's greeting and READY, then every frame vector, in one feed and
		# byte by byte.
		var stream := PackedByteArray()
		stream.append_array(g)
		stream.append_array(vec("zmtp.ready.router"))
		for name in ["zmtp.frame.short", "zmtp.frame.long", "zmtp.frame.multipart"]:
			stream.append_array(vec(name))
		stream.append_array(vec("zmtp.frame.empty"))
		stream.append_array(vec("zmtp.frame.255"))
		stream.append_array(vec("zmtp.frame.256"))
		var expected := [[ping], [long_body], ["A".to_ascii_buffer(), "BC".to_ascii_buffer()]]
		expected.append([PackedByteArray()])
		expected.append([edge_bodies[255]])
		expected.append([edge_bodies[256]])
		for split in [false, true]:
			var z := Zmtp.new()
			z.start()
			var sent := z.take_output()
			if split:
				for i in stream.size():
					z.feed(stream.slice(i, i + 1))
			else:
				z.feed(stream)
			var label := " (byte by byte)" if split else ""
			_check("handshake" + label, z.is_ready(), z.error)
			sent.append_array(z.take_output())
			var mine := g.duplicate()
			mine.append_array(vec("zmtp.ready.dealer"))
			_check("handshake output" + label, sent == mine, sent.hex_encode())
			var props: Dictionary = z.peer_properties
			_check(
				"peer Socket-Type" + label,
				props.get("socket-type", PackedByteArray()).get_string_from_ascii() == "ROUTER",
				str(props)
			)
			var got: Array = []
			while z.has_message():
				got.append(z.pop_message())
			_check("frames received" + label, same(got, expected), str(got))

	# --- bad input -----------------------------------------------------------------------

	func _decode_fails(name: String, bytes: PackedByteArray, codec: MsgPack = null) -> void:
		var c := codec if codec != null else MsgPack.new()
		var v: Variant = c.decode(bytes)
		_check("rejects " + name, c.error != "" and v == null, "decoded %s" % str(v))

	func _test_bad_msgpack() -> void:
		# Every proper prefix of every message vector is truncated.
		var truncated := 0
		var caught := 0
		for name: String in vectors:
			if not name.begins_with("message."):
				continue
			var bytes: PackedByteArray = vectors[name]
			for n in bytes.size():
				var c := MsgPack.new()
				c.decode(bytes.slice(0, n))
				truncated += 1
				if c.error != "":
					caught += 1
		_check("rejects all truncated messages", caught == truncated, "%d/%d" % [caught, truncated])
		var deep := PackedByteArray()
		for i in 40:
			deep.append(0x91)
		deep.append(0xc0)
		_decode_fails("nesting over max_depth", deep)
		var ok_depth := MsgPack.new()
		ok_depth.max_depth = 64
		ok_depth.decode(deep)
		_check("accepts nesting under a raised max_depth", ok_depth.error == "", ok_depth.error)
		_decode_fails("array32 of 4294967295 items", PackedByteArray([0xdd, 255, 255, 255, 255]))
		_decode_fails("map16 longer than the input", PackedByteArray([0xde, 0xff, 0xff, 1, 2]))
		_decode_fails("str32 longer than the input", PackedByteArray([0xdb, 0, 0, 1, 0, 0x61]))
		_decode_fails("bin32 of 4 GiB", PackedByteArray([0xc6, 255, 255, 255, 255]))
		var small := MsgPack.new()
		small.max_container_len = 2
		_decode_fails("array over max_container_len", PackedByteArray([0x93, 1, 2, 3]), small)
		var short_str := MsgPack.new()
		short_str.max_bytes_len = 2
		_decode_fails(
			"str over max_bytes_len", PackedByteArray([0xa3, 0x61, 0x61, 0x61]), short_str
		)
		_decode_fails("fixext", PackedByteArray([0xd4, 1, 2]))
		_decode_fails("ext8", PackedByteArray([0xc7, 1, 1, 0]))
		_decode_fails("byte 0xc1", PackedByteArray([0xc1]))
		_decode_fails("trailing bytes", PackedByteArray([0xc0, 0xc0]))
		_decode_fails("empty input", PackedByteArray())
		_decode_fails("array as map key", PackedByteArray([0x81, 0x90, 1]))
		# A str must be UTF-8, and a Godot String cannot hold U+0000: refused, never altered.
		for name in [
			"msgpack.refused.str.not_utf8",
			"msgpack.refused.str.overlong",
			"msgpack.refused.str.surrogate",
		]:
			_decode_fails(name, vec(name))
		var nul := MsgPack.new()
		_decode_fails("msgpack.str.nul", vec("msgpack.str.nul"), nul)
		_check("says why it refuses U+0000", nul.error.contains("U+0000"), nul.error)
		var bom := PackedByteArray([0xa4, 0xef, 0xbb, 0xbf, 0x61])
		var kept: Variant = MsgPack.new().decode(bom)
		_check("keeps a leading U+FEFF", kept == String.chr(0xfeff) + "a", str(kept))
		var c := MsgPack.new()
		_check(
			"decodes after an error", c.decode(PackedByteArray([0xc1])) == null and c.error != ""
		)
		_check("decodes after an error (2)", c.decode(PackedByteArray([7])) == 7 and c.error == "")

	func _test_bad_zmtp() -> void:
		var g := vec("zmtp.greeting.null_client")
		var cases := {}
		var bad_sig := g.duplicate()
		bad_sig[0] = 0x01
		cases["bad signature"] = bad_sig
		var v2 := g.duplicate()
		v2[10] = 2
		cases["ZMTP 2"] = v2
		var plain := g.duplicate()
		for i in 4:
			plain[12 + i] = "PLAI".to_ascii_buffer()[i]
		cases["PLAIN mechanism"] = plain
		var pub := g.duplicate()
		pub.append_array(Zmtp.ready_command("PUB"))
		cases["PUB peer"] = pub
		var err := g.duplicate()
		var body := PackedByteArray([5])
		body.append_array("ERROR".to_ascii_buffer())
		body.append(6)
		body.append_array("denied".to_ascii_buffer())
		Zmtp.append_frame(err, body, Zmtp.FLAG_COMMAND)
		cases["ERROR command"] = err
		var early := g.duplicate()
		Zmtp.append_frame(early, "x".to_ascii_buffer())
		cases["message before READY"] = early
		var flags := g.duplicate()
		flags.append_array(vec("zmtp.ready.router"))
		flags.append_array(PackedByteArray([0x10, 0]))
		cases["reserved flag bits"] = flags
		var huge := g.duplicate()
		huge.append_array(vec("zmtp.ready.router"))
		huge.append_array(PackedByteArray([0x02, 0, 0, 0, 1, 0, 0, 0, 0]))
		cases["4 GiB frame"] = huge
		for name: String in cases:
			var z := Zmtp.new()
			z.start()
			z.feed(cases[name])
			_check("zmtp rejects " + name, z.state == Zmtp.State.FAILED and z.error != "", z.error)
		var z := Zmtp.new()
		z.start()
		z.feed(g)
		z.feed(vec("zmtp.ready.router"))
		z.take_output()
		var ping := PackedByteArray([4])
		ping.append_array("PING".to_ascii_buffer())
		ping.append_array(PackedByteArray([0, 10, 7, 8]))
		var frame := PackedByteArray()
		Zmtp.append_frame(frame, ping, Zmtp.FLAG_COMMAND)
		z.feed(frame)
		var pong_body := PackedByteArray([4])
		pong_body.append_array("PONG".to_ascii_buffer())
		pong_body.append_array(PackedByteArray([7, 8]))
		var pong := PackedByteArray()
		Zmtp.append_frame(pong, pong_body, Zmtp.FLAG_COMMAND)
		var out := z.take_output()
		_check("answers PING with PONG", out == pong and not z.has_message(), out.hex_encode())

	func _test_encode_errors() -> void:
		var c := MsgPack.new()
		var out := c.encode({"at": Vector2(1, 2)})
		_check("refuses to encode a Vector2", out.is_empty() and c.error != "", c.error)
		var loop: Array = []
		loop.append(loop)
		out = c.encode(loop)
		_check("refuses a self-containing array", out.is_empty() and c.error != "", c.error)
		out = c.encode(PackedStringArray(["a", "b"]))
		_check(
			"encodes PackedStringArray as array", out.hex_encode() == "92a161a162", out.hex_encode()
		)
		out = c.encode({&"k": &"v"})
		_check("encodes StringName as str", out.hex_encode() == "81a16ba176", out.hex_encode())


## The values the vectors encode, built by name (see vectors.tsv's third column).
class Expected:
	extends RefCounted

	static func msgpack_values() -> Dictionary:
		var v := {}
		v["msgpack.nil"] = null
		v["msgpack.true"] = true
		v["msgpack.false"] = false
		v["msgpack.uint.0"] = 0
		v["msgpack.uint.1"] = 1
		v["msgpack.uint.127"] = 127
		v["msgpack.uint.128"] = 128
		v["msgpack.uint.255"] = 255
		v["msgpack.uint.256"] = 256
		v["msgpack.uint.65535"] = 65535
		v["msgpack.uint.65536"] = 65536
		v["msgpack.uint.4294967295"] = 4294967295
		v["msgpack.uint.4294967296"] = 4294967296
		v["msgpack.uint.9223372036854775807"] = 9223372036854775807
		v["msgpack.int.-1"] = -1
		v["msgpack.int.-32"] = -32
		v["msgpack.int.-33"] = -33
		v["msgpack.int.-128"] = -128
		v["msgpack.int.-129"] = -129
		v["msgpack.int.-32768"] = -32768
		v["msgpack.int.-32769"] = -32769
		v["msgpack.int.-2147483648"] = -2147483648
		v["msgpack.int.-2147483649"] = -2147483649
		v["msgpack.int.-9223372036854775808"] = -9223372036854775807 - 1
		v["msgpack.float32.1.5"] = 1.5
		v["msgpack.float32.-0.25"] = -0.25
		v["msgpack.float64.0.1"] = 0.1
		v["msgpack.float64.-1e300"] = -1e300
		v["msgpack.str.empty"] = ""
		v["msgpack.str.hello"] = "hello"
		v["msgpack.str.31"] = "a".repeat(31)
		v["msgpack.str.32"] = "a".repeat(32)
		v["msgpack.str.255"] = "d".repeat(255)
		v["msgpack.str.256"] = "b".repeat(256)
		v["msgpack.str.65536"] = "c".repeat(65536)
		v["msgpack.str.utf8"] = "héllo ✓"
		v["msgpack.bin.empty"] = PackedByteArray()
		v["msgpack.bin.3"] = PackedByteArray([0, 1, 255])
		var b255 := PackedByteArray()
		b255.resize(255)
		b255.fill(0)
		v["msgpack.bin.255"] = b255
		var b256 := PackedByteArray()
		for i in 256:
			b256.append(i)
		v["msgpack.bin.256"] = b256
		var b64k := PackedByteArray()
		b64k.resize(65536)
		b64k.fill(0)
		v["msgpack.bin.65536"] = b64k
		v["msgpack.array.empty"] = []
		v["msgpack.array.mixed"] = [1, "a", null, true]
		v["msgpack.array.16"] = range(16)
		v["msgpack.map.empty"] = {}
		v["msgpack.map.one"] = {"a": 1}
		var m16 := {}
		for i in 16:
			m16["k%02d" % i] = i
		v["msgpack.map.16"] = m16
		v["msgpack.nested"] = {"a": [1, {"b": [null, 2.5]}]}
		return v

	static func messages() -> Dictionary:
		var m := {}
		m["message.request.hello"] = {"v": 1, "id": 1, "op": "hello", "client": "godot"}
		m["message.request.ping"] = {"v": 1, "id": 2, "op": "ping"}
		m["message.request.npc"] = {
			"v": 1, "id": 3, "op": "npc", "npc": "brom", "persona": "You are Brom.", "seed": 7
		}
		m["message.request.say"] = {
			"v": 1,
			"id": 4,
			"op": "say",
			"npc": "brom",
			"text": "Hello!",
			"max_tokens": 32,
			"temperature": 0.7,
			"deadline_ms": 2000,
			"fallback": "...",
		}
		m["message.request.decide.choices"] = {
			"v": 1,
			"id": 5,
			"op": "decide",
			"npc": "grik",
			"situation": "A sword!",
			"choices": ["attack", "flee"],
			"deadline_ms": 150,
			"fallback": "flee",
		}
		var schema := {
			"type": "object", "properties": {"act": {"enum": ["a", "b"]}}, "required": ["act"]
		}
		m["message.request.decide.schema"] = {
			"v": 1, "id": 6, "op": "decide", "situation": "Night.", "schema": schema
		}
		m["message.request.cancel"] = {"v": 1, "id": 7, "op": "cancel", "target": 4}
		var give_args := {"type": "object", "properties": {"item": {"enum": ["sword", "shield"]}}}
		m["message.request.npc.actions"] = {
			"v": 1,
			"id": 8,
			"op": "npc",
			"npc": "brom",
			"persona": "You are Brom.",
			"actions": [{"name": "give", "args": give_args}],
		}
		m["message.request.say.actions"] = {
			"v": 1, "id": 9, "op": "say", "npc": "brom", "text": "A shield!", "actions": true
		}
		var steps := [
			{"op": "decide", "as": "mood", "situation": "Rain.", "choices": ["calm", "angry"]},
			{"op": "say", "as": "line", "npc": "brom", "text": "({mood})"},
		]
		m["message.request.chain"] = {
			"v": 1, "id": 10, "op": "chain", "steps": steps, "deadline_ms": 1500
		}
		m["message.request.decide.actions"] = {
			"v": 1,
			"id": 11,
			"op": "decide",
			"npc": "brom",
			"situation": "20 gold.",
			"actions": ["give"],
			"deadline_ms": 500,
			"fallback": {"name": "wait", "args": {}},
		}
		m["message.request.act_result"] = {
			"v": 1,
			"id": 12,
			"op": "act_result",
			"npc": "brom",
			"name": "give",
			"result": "The customer has the shield.",
		}
		m["message.reply.ok"] = {"v": 1, "id": 2, "event": "ok"}
		m["message.reply.token"] = {"v": 1, "id": 4, "event": "token", "text": " Aye"}
		m["message.reply.sentence"] = {"v": 1, "id": 9, "event": "sentence", "text": " Aye."}
		m["message.reply.step"] = {
			"v": 1,
			"id": 10,
			"event": "step",
			"step": 0,
			"as": "mood",
			"value": "calm",
			"used_fallback": false,
		}
		m["message.reply.done.action"] = {
			"v": 1,
			"id": 9,
			"event": "done",
			"text": "Aye.",
			"value": "Aye.",
			"action": {"name": "give", "args": {"item": "shield"}},
		}
		m["message.reply.done.chain"] = {
			"v": 1,
			"id": 10,
			"event": "done",
			"value": {"mood": "calm", "line": "Aye."},
			"results": {"mood": "calm", "line": "Aye."},
		}
		m["message.reply.done.decide.actions"] = {
			"v": 1,
			"id": 11,
			"event": "done",
			"value": {"name": "give", "args": {"item": "shield"}},
			"probs": {"give": 1.0},
		}
		m["message.reply.step.token"] = {
			"v": 1, "id": 10, "event": "token", "text": " Aye", "step": 1
		}
		var timing := {"queue_ms": 0.5, "prefill_ms": 40.25, "ttft_ms": 41.0, "total_ms": 60.5}
		m["message.reply.done.say"] = {
			"v": 1,
			"id": 4,
			"event": "done",
			"text": "Aye.",
			"value": "Aye.",
			"tokens": 3,
			"finish_reason": "stop",
			"timed_out": false,
			"used_fallback": false,
			"timing": timing,
		}
		m["message.reply.done.choices"] = {
			"v": 1,
			"id": 5,
			"event": "done",
			"value": "flee",
			"text": "flee",
			"probs": {"attack": 0.25, "flee": 0.75},
		}
		m["message.reply.done.timed_out"] = {
			"v": 1,
			"id": 5,
			"event": "done",
			"value": "flee",
			"text": "",
			"tokens": 0,
			"timed_out": true,
			"used_fallback": true,
			"finish_reason": "deadline",
			"timing": {"queue_ms": 0.5, "total_ms": 150.25},
		}
		m["message.reply.error"] = {
			"v": 1,
			"id": null,
			"event": "error",
			"code": "bad_request",
			"message": "frame is not msgpack"
		}
		m["message.reply.cancelled"] = {"v": 1, "id": 4, "event": "cancelled"}
		m["message.reply.local.unavailable"] = {
			"v": 1,
			"id": 4,
			"event": "error",
			"code": "unavailable",
			"message": "the sidecar is gone",
			"local": true,
		}
		m["message.reply.local.fallback"] = {
			"v": 1,
			"id": 5,
			"event": "done",
			"value": "flee",
			"text": "",
			"timed_out": false,
			"used_fallback": true,
			"finish_reason": "unavailable",
			"local": true,
		}
		return m


## The vectors file: --vectors PATH after "--", else ../conformance/vectors.tsv next to
## this project.
static func vectors_path() -> String:
	var args := OS.get_cmdline_user_args()
	var i := args.find("--vectors")
	if i >= 0 and i + 1 < args.size():
		return args[i + 1]
	var project := ProjectSettings.globalize_path("res://")
	return project.path_join("../conformance/vectors.tsv").simplify_path()


func _initialize() -> void:
	var failures := Suite.new().run(vectors_path())
	quit(1 if failures > 0 else 0)
