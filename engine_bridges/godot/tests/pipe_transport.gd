extends "res://addons/npcai/npc_ai_transport.gd"
## An in-memory [NpcAiTransport] for tests: the test plays the sidecar by appending bytes to
## [member inbox] and reading what the client wrote from [member outbox].

## What [method poll] reports; set it to CLOSED or ERROR to simulate a dead sidecar.
var status: Status = Status.CONNECTED
## Bytes the client will read.
var inbox: PackedByteArray = PackedByteArray()
## Bytes the client has written.
var outbox: PackedByteArray = PackedByteArray()
## Most bytes one [method write] takes (-1: all), to simulate a full socket.
var write_limit: int = -1


func poll() -> Status:
	return status


func available() -> int:
	return inbox.size() if status == Status.CONNECTED else 0


func read(max_bytes: int) -> PackedByteArray:
	var n := mini(max_bytes, inbox.size())
	var data := inbox.slice(0, n)
	inbox = inbox.slice(n)
	return data


func write(data: PackedByteArray) -> int:
	if status != Status.CONNECTED:
		error = "pipe closed"
		return -1
	var n := data.size() if write_limit < 0 else mini(write_limit, data.size())
	outbox.append_array(data.slice(0, n))
	return n


func close() -> void:
	if status == Status.CONNECTED:
		status = Status.CLOSED
		error = "closed by the client"


## Returns and clears [member outbox].
func take() -> PackedByteArray:
	var out := outbox
	outbox = PackedByteArray()
	return out
