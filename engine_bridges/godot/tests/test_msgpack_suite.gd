extends RefCounted
## The public vectors of the npm package msgpack-test-suite through the GDScript codec. The
## file, converted by tests/msgpack_suite.py, holds one form a line: its name, its bytes, and
## the canonical encoding of its value (or [code]refuse[/code] for ext and timestamp forms).
## Each form must decode to its value, checked by encoding the decoded value again, byte for
## byte (a float form decodes to a float, which this codec writes as float64; a uint64 above
## 2^63-1 decodes exactly, with [member NpcAiMsgPack.exact_uint64]); each ext form must be
## refused. tests/run_all.gd runs it with [code]-- --msgpack-suite PATH[/code], and with
## [code]--msgpack-suite-spoiled PATH[/code] a copy with wrong expectations, whose mismatches
## it must report ([code]caught suite NAME[/code]): so a decoding bug cannot pass unseen.

const MsgPack := preload("res://addons/npcai/npc_ai_msg_pack.gd")


## The value of [param flag] among the user arguments, or [code]""[/code].
static func arg(flag: String) -> String:
	var args := OS.get_cmdline_user_args()
	var i := args.find(flag)
	return args[i + 1] if i >= 0 and i + 1 < args.size() else ""


## Checks every form of the file at [param path]; prints [code]ok suite NAME[/code] or
## [param fail_prefix] [code]NAME: why[/code] per form; returns the number of mismatches.
static func run(path: String, fail_prefix: String = "FAIL suite ") -> int:
	var text := FileAccess.get_file_as_string(path)
	if text == "":
		print("FAIL suite file: cannot read ", path)
		return 1
	var codec := MsgPack.new()
	codec.exact_uint64 = true
	var forms := 0
	var failed := 0
	for line in text.split("\n", false):
		if line.begins_with("#"):
			continue
		var cols := line.split("\t")
		var why := _check_form(codec, cols[1].hex_decode(), cols[2])
		forms += 1
		if why == "":
			print("ok suite ", cols[0])
		else:
			failed += 1
			print(fail_prefix, cols[0], ": ", why)
	print("msgpack-test-suite %s: %d forms, %d mismatched" % [path, forms, failed])
	return failed if forms > 0 else 1


static func _check_form(codec: MsgPack, form: PackedByteArray, want: String) -> String:
	var value: Variant = codec.decode(form)
	var refused := codec.error != ""
	if want == "refuse":
		return "" if refused else "decoded an ext form instead of refusing it"
	if refused:
		return "refused: " + codec.error
	var again := codec.encode(value)
	if codec.error != "":
		return "cannot encode the decoded value: " + codec.error
	if again.hex_encode() != want:
		return "decoded to a value that encodes as %s, expected %s" % [again.hex_encode(), want]
	return ""
