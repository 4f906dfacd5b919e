class_name NpcAiMsgPack
extends RefCounted
## MessagePack codec for the npcai protocol (docs/PROTOCOL.md, "msgpack subset").
##
## Type mapping:[br]
## - encode: [code]null[/code] to nil, [bool] to bool, [int] to the smallest int encoding,
##   [float] to float64 (float32 when [member single_float] is set), [String] and
##   [StringName] to str, [PackedByteArray] to bin, [Array] and the other packed arrays to
##   array, [Dictionary] to map (in insertion order), [NpcAiMsgPack.Uint64] to uint64.[br]
## - decode: the reverse; str becomes [String], bin becomes [PackedByteArray]. A str that is
##   not valid UTF-8, or holds U+0000 (which a [String] cannot), is an error.[br]
## GDScript's [int] is a signed 64-bit integer, so a uint64 above 9223372036854775807 cannot
## be an [int]: it decodes to the nearest [float] (lossy), or to an exact
## [NpcAiMsgPack.Uint64] when [member exact_uint64] is set. To send such a number, wrap its
## bit pattern in [NpcAiMsgPack.Uint64]. The sidecar never sends one (ids, counts and pids
## are far below 2^63).[br]
## Errors are values, never crashes: after [method encode], [method encode_into] or
## [method decode], [member error] is empty on success and says what went wrong otherwise.
## Decoding is bounded by [member max_depth], [member max_container_len] and
## [member max_bytes_len], and never allocates more than the input could hold.[br]
## Byte order: msgpack is big-endian, while [method PackedByteArray.encode_double] and its
## siblings are little-endian on every platform (Godot's marshalling writes bytes
## explicitly), so multi-byte numbers go through an 8-byte scratch buffer, reversed.
## No bit shifts are used: Godot's debug builds reject shifting negative integers.

## Default for [member max_depth]; the sidecar's own limit.
const DEFAULT_MAX_DEPTH := 32
## Default for [member max_container_len].
const DEFAULT_MAX_CONTAINER_LEN := 65536
## Default for [member max_bytes_len] (16 MiB).
const DEFAULT_MAX_BYTES_LEN := 16777216
const _TWO_POW_64 := 18446744073709551616.0

## Deepest nesting of arrays and maps accepted (decode) or written (encode).
var max_depth: int = DEFAULT_MAX_DEPTH
## Most entries in one decoded array or map.
var max_container_len: int = DEFAULT_MAX_CONTAINER_LEN
## Longest decoded str or bin, in bytes.
var max_bytes_len: int = DEFAULT_MAX_BYTES_LEN
## Encode floats as float32 instead of float64.
var single_float: bool = false
## Decode a uint64 above 2^63-1 as an exact [NpcAiMsgPack.Uint64] instead of a [float].
var exact_uint64: bool = false
## Empty after a successful call; otherwise what went wrong.
var error: String = ""

var _data: PackedByteArray = PackedByteArray()
var _pos: int = 0
var _end: int = 0
var _scratch: PackedByteArray = PackedByteArray()


## A uint64 held by its 64-bit pattern in a signed [int] (e.g. -1 is 2^64-1).
class Uint64:
	extends RefCounted
	## The 64 bits, as GDScript's signed int holds them.
	var bits: int = 0

	func _init(p_bits: int = 0) -> void:
		bits = p_bits

	## The value as the nearest float.
	func to_float() -> float:
		if bits >= 0:
			return float(bits)
		return float(bits) + 18446744073709551616.0


func _init() -> void:
	_scratch.resize(8)


## Encodes [param value]; returns the bytes, or an empty array and sets [member error].
static func pack(value: Variant, p_single_float: bool = false) -> PackedByteArray:
	var codec := new()
	codec.single_float = p_single_float
	return codec.encode(value)


## Decodes one value filling all of [param data]; returns null and pushes an error on failure.
static func unpack(data: PackedByteArray) -> Variant:
	var codec := new()
	var value: Variant = codec.decode(data)
	if codec.error != "":
		push_error("npcai msgpack: " + codec.error)
	return value


## Encodes [param value] into a new array; empty (and [member error] set) on failure.
func encode(value: Variant) -> PackedByteArray:
	var out := PackedByteArray()
	if not encode_into(value, out):
		return PackedByteArray()
	return out


## Appends the encoding of [param value] to [param out]; false (and [member error]) on failure.
## On failure [param out] may hold a partial encoding: discard it.
func encode_into(value: Variant, out: PackedByteArray) -> bool:
	error = ""
	return _write(value, out, 0)


## Decodes exactly one value that fills [param data]; null and [member error] on failure.
func decode(data: PackedByteArray) -> Variant:
	return decode_range(data, 0, data.size())


## Decodes exactly one value from bytes [param begin] to [param end] (exclusive) of [param data].
func decode_range(data: PackedByteArray, begin: int, end: int) -> Variant:
	error = ""
	if begin < 0 or end > data.size() or begin > end:
		error = "bad range %d..%d of %d bytes" % [begin, end, data.size()]
		return null
	_data = data
	_pos = begin
	_end = end
	var value: Variant = _read(0)
	if error == "" and _pos != _end:
		error = "%d bytes left over after the value" % (_end - _pos)
	_data = PackedByteArray()
	if error != "":
		return null
	return value


## The int under [param key] among the leading entries (those that decode) of the map in
## [param data], or null: the id of a reply that does not decode whole, as the sidecar writes
## v and id first. Leaves [member error] empty.
func leading_int(data: PackedByteArray, key: String) -> Variant:
	_data = data
	_pos = 0
	_end = data.size()
	error = ""
	var n := 0
	if _need(1):
		var b: int = _data[_pos]
		_pos += 1
		if b >= 0x80 and b <= 0x8f:
			n = b - 0x80
		elif b == 0xde or b == 0xdf:
			n = _read_uint(2 << (b - 0xde))
	var found: Variant = null
	while n > 0 and error == "" and found == null:
		var k: Variant = _read(1)
		var v: Variant = _read(1)
		if error == "" and typeof(k) == TYPE_STRING and k == key and typeof(v) == TYPE_INT:
			found = v
		n -= 1
	_data = PackedByteArray()
	error = ""
	return found


# --- encoding -----------------------------------------------------------------------------


func _fail(message: String) -> bool:
	if error == "":
		error = message
	return false


func _write(value: Variant, out: PackedByteArray, depth: int) -> bool:
	var ok := true
	match typeof(value):
		TYPE_NIL:
			out.append(0xc0)
		TYPE_BOOL:
			out.append(0xc3 if value else 0xc2)
		TYPE_INT:
			_write_int(value, out)
		TYPE_FLOAT:
			_write_float(value, out)
		TYPE_STRING, TYPE_STRING_NAME:
			_write_str(String(value), out)
		TYPE_PACKED_BYTE_ARRAY:
			_write_bin(value, out)
		TYPE_DICTIONARY:
			ok = _write_map(value, out, depth)
		TYPE_ARRAY, TYPE_PACKED_STRING_ARRAY, TYPE_PACKED_INT32_ARRAY, TYPE_PACKED_INT64_ARRAY:
			ok = _write_array(value, out, depth)
		TYPE_PACKED_FLOAT32_ARRAY, TYPE_PACKED_FLOAT64_ARRAY:
			ok = _write_array(value, out, depth)
		TYPE_OBJECT:
			if value is Uint64:
				out.append(0xcf)
				_put_be(out, value.bits, 8)
			else:
				ok = _fail("cannot encode an Object (only NpcAiMsgPack.Uint64)")
		_:
			ok = _fail("cannot encode a value of type %s" % type_string(typeof(value)))
	return ok


func _write_int(v: int, out: PackedByteArray) -> void:
	if v >= 0:
		if v <= 0x7f:
			out.append(v)
		elif v <= 0xff:
			out.append(0xcc)
			out.append(v)
		elif v <= 0xffff:
			out.append(0xcd)
			_put_be(out, v, 2)
		elif v <= 0xffffffff:
			out.append(0xce)
			_put_be(out, v, 4)
		else:
			out.append(0xcf)
			_put_be(out, v, 8)
	elif v >= -32:
		out.append(v + 256)
	elif v >= -128:
		out.append(0xd0)
		out.append(v + 256)
	elif v >= -32768:
		out.append(0xd1)
		_put_be(out, v, 2)
	elif v >= -2147483648:
		out.append(0xd2)
		_put_be(out, v, 4)
	else:
		out.append(0xd3)
		_put_be(out, v, 8)


## Appends the low [param n] bytes of [param v] (two's complement), most significant first.
func _put_be(out: PackedByteArray, v: int, n: int) -> void:
	_scratch.encode_s64(0, v)
	for i in range(n - 1, -1, -1):
		out.append(_scratch[i])


func _write_float(v: float, out: PackedByteArray) -> void:
	if single_float:
		out.append(0xca)
		_scratch.encode_float(0, v)
		for i in range(3, -1, -1):
			out.append(_scratch[i])
	else:
		out.append(0xcb)
		_scratch.encode_double(0, v)
		for i in range(7, -1, -1):
			out.append(_scratch[i])


func _write_str(s: String, out: PackedByteArray) -> void:
	var bytes := s.to_utf8_buffer()
	var n := bytes.size()
	if n <= 31:
		out.append(0xa0 + n)
	elif n <= 0xff:
		out.append(0xd9)
		out.append(n)
	elif n <= 0xffff:
		out.append(0xda)
		_put_be(out, n, 2)
	else:
		out.append(0xdb)
		_put_be(out, n, 4)
	out.append_array(bytes)


func _write_bin(bytes: PackedByteArray, out: PackedByteArray) -> void:
	var n := bytes.size()
	if n <= 0xff:
		out.append(0xc4)
		out.append(n)
	elif n <= 0xffff:
		out.append(0xc5)
		_put_be(out, n, 2)
	else:
		out.append(0xc6)
		_put_be(out, n, 4)
	out.append_array(bytes)


func _write_header(n: int, fix_base: int, code16: int, out: PackedByteArray) -> void:
	if n <= 15:
		out.append(fix_base + n)
	elif n <= 0xffff:
		out.append(code16)
		_put_be(out, n, 2)
	else:
		out.append(code16 + 1)
		_put_be(out, n, 4)


func _write_array(items: Variant, out: PackedByteArray, depth: int) -> bool:
	if depth >= max_depth:
		return _fail("value nests deeper than max_depth=%d" % max_depth)
	_write_header(items.size(), 0x90, 0xdc, out)
	for item: Variant in items:
		if not _write(item, out, depth + 1):
			return false
	return true


func _write_map(map: Dictionary, out: PackedByteArray, depth: int) -> bool:
	if depth >= max_depth:
		return _fail("value nests deeper than max_depth=%d" % max_depth)
	_write_header(map.size(), 0x80, 0xde, out)
	for key: Variant in map:
		if not _write(key, out, depth + 1) or not _write(map[key], out, depth + 1):
			return false
	return true


# --- decoding -----------------------------------------------------------------------------


func _need(n: int) -> bool:
	if _end - _pos < n:
		_fail("truncated: needs %d more bytes at offset %d" % [n - (_end - _pos), _pos])
		return false
	return true


## Reads an n-byte big-endian field into the scratch buffer, little-endian.
func _take_be(n: int) -> bool:
	if not _need(n):
		return false
	for i in n:
		_scratch[n - 1 - i] = _data[_pos + i]
	_pos += n
	return true


func _read_uint(n: int) -> int:
	if not _take_be(n):
		return 0
	var v := 0
	match n:
		1:
			v = _scratch.decode_u8(0)
		2:
			v = _scratch.decode_u16(0)
		4:
			v = _scratch.decode_u32(0)
	return v


func _read_int(n: int) -> int:
	if not _take_be(n):
		return 0
	var v := 0
	match n:
		1:
			v = _scratch.decode_s8(0)
		2:
			v = _scratch.decode_s16(0)
		4:
			v = _scratch.decode_s32(0)
		8:
			v = _scratch.decode_s64(0)
	return v


func _read_uint64() -> Variant:
	if not _take_be(8):
		return null
	var bits: int = _scratch.decode_s64(0)
	if bits >= 0:
		return bits
	if exact_uint64:
		return Uint64.new(bits)
	return float(bits) + _TWO_POW_64


func _read_float(n: int) -> float:
	if not _take_be(n):
		return 0.0
	if n == 4:
		return _scratch.decode_float(0)
	return _scratch.decode_double(0)


func _read(depth: int) -> Variant:
	if not _need(1):
		return null
	var b: int = _data[_pos]
	_pos += 1
	var value: Variant = null
	if b <= 0x7f:
		value = b
	elif b >= 0xe0:
		value = b - 256
	elif b <= 0x8f:
		value = _read_map(b - 0x80, depth)
	elif b <= 0x9f:
		value = _read_array(b - 0x90, depth)
	elif b <= 0xbf:
		value = _read_str(b - 0xa0)
	else:
		value = _read_tagged(b, depth)
	return value


func _read_tagged(b: int, depth: int) -> Variant:
	var value: Variant = null
	match b:
		0xc0:
			value = null
		0xc2:
			value = false
		0xc3:
			value = true
		0xc4, 0xc5, 0xc6:
			value = _read_bin(_read_uint(1 << (b - 0xc4)))
		0xca:
			value = _read_float(4)
		0xcb:
			value = _read_float(8)
		0xcc, 0xcd, 0xce:
			value = _read_uint(1 << (b - 0xcc))
		0xcf:
			value = _read_uint64()
		0xd0, 0xd1, 0xd2, 0xd3:
			value = _read_int(1 << (b - 0xd0))
		0xd9, 0xda, 0xdb:
			value = _read_str(_read_uint(1 << (b - 0xd9)))
		0xdc, 0xdd:
			value = _read_array(_read_uint(2 << (b - 0xdc)), depth)
		0xde, 0xdf:
			value = _read_map(_read_uint(2 << (b - 0xde)), depth)
		0xc7, 0xc8, 0xc9, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8:
			_fail("ext types are not supported (byte 0x%02x at offset %d)" % [b, _pos - 1])
		_:
			_fail("invalid msgpack byte 0x%02x at offset %d" % [b, _pos - 1])
	return value


func _read_str(n: int) -> String:
	if error != "" or not _check_len(n, max_bytes_len, "str") or not _need(n):
		return ""
	var at := _pos
	var bytes := _data.slice(_pos, _pos + n)
	_pos += n
	# A Godot String cannot hold U+0000, and get_string_from_utf8 replaces bad bytes with
	# U+FFFD (only logging it): refuse both rather than hand on an altered text.
	if bytes.has(0):
		_fail("str at offset %d holds U+0000, which a Godot String cannot hold" % at)
		return ""
	# A leading space keeps get_string_from_utf8 from dropping a leading U+FEFF.
	var spaced := PackedByteArray([0x20])
	spaced.append_array(bytes)
	var s := spaced.get_string_from_utf8().substr(1)
	if s.to_utf8_buffer() != bytes:
		_fail("str at offset %d is not valid UTF-8" % at)
		return ""
	return s


func _read_bin(n: int) -> PackedByteArray:
	if error != "" or not _check_len(n, max_bytes_len, "bin") or not _need(n):
		return PackedByteArray()
	var bytes := _data.slice(_pos, _pos + n)
	_pos += n
	return bytes


func _check_len(n: int, limit: int, what: String) -> bool:
	if n > limit:
		_fail("%s of %d exceeds the limit of %d" % [what, n, limit])
		return false
	return true


func _check_container(n: int, per_item: int, depth: int) -> bool:
	if error != "":
		return false
	if depth >= max_depth:
		return _fail("data nests deeper than max_depth=%d" % max_depth)
	if not _check_len(n, max_container_len, "container length"):
		return false
	# Every item takes at least one byte: refuse lengths the input cannot hold before allocating.
	if n * per_item > _end - _pos:
		return _fail("truncated: container of %d items at offset %d" % [n, _pos])
	return true


func _read_array(n: int, depth: int) -> Array:
	var items: Array = []
	if not _check_container(n, 1, depth):
		return items
	items.resize(n)
	for i in n:
		items[i] = _read(depth + 1)
		if error != "":
			return []
	return items


func _read_map(n: int, depth: int) -> Dictionary:
	var map := {}
	if not _check_container(n, 2, depth):
		return map
	for i in n:
		var key: Variant = _read(depth + 1)
		if error != "":
			return {}
		var kind := typeof(key)
		if kind == TYPE_ARRAY or kind == TYPE_DICTIONARY or kind == TYPE_PACKED_BYTE_ARRAY:
			_fail("map key %d is not a scalar" % i)
			return {}
		map[key] = _read(depth + 1)
		if error != "":
			return {}
	return map
