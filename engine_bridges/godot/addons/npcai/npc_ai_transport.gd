class_name NpcAiTransport
extends RefCounted
## A non-blocking byte stream that [NpcAiZmtp] speaks ZMTP over.
##
## [NpcAiTcpTransport] is the one games use. Extend this class for anything else that moves
## bytes both ways (a tunnel, an in-memory pipe in a test). Every method must return at once.

## What [method poll] reports.
enum Status { CONNECTING, CONNECTED, CLOSED, ERROR }

## Why the stream closed or failed; empty otherwise.
var error: String = ""


## Advances the stream and reports its status.
func poll() -> Status:
	return Status.CLOSED


## Bytes that [method read] can return now without waiting.
func available() -> int:
	return 0


## Returns up to [param _max_bytes] bytes that have arrived (possibly none).
func read(_max_bytes: int) -> PackedByteArray:
	return PackedByteArray()


## Sends what it can of [param _data] now; returns how many bytes it took, or -1 on failure.
func write(_data: PackedByteArray) -> int:
	return -1


## Closes the stream; [method poll] reports [constant Status.CLOSED] afterwards.
func close() -> void:
	pass
