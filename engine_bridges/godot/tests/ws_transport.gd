extends "res://addons/npcai/npc_ai_transport.gd"
## A test transport: the ZMTP byte stream tunnelled through a WebSocket (binary messages
## hold arbitrary chunks of the stream). Used where StreamPeerTCP does not exist, i.e. the
## web export template that tests/web_runner.py drives, to reach a real sidecar through its
## WebSocket-to-TCP relay.

var _ws: WebSocketPeer = WebSocketPeer.new()
var _buf: PackedByteArray = PackedByteArray()


## Starts connecting to [param url] ([code]ws://127.0.0.1:PORT[/code]).
func open(url: String) -> Error:
	return _ws.connect_to_url(url)


func poll() -> Status:
	_ws.poll()
	var status := Status.CLOSED
	match _ws.get_ready_state():
		WebSocketPeer.STATE_CONNECTING:
			status = Status.CONNECTING
		WebSocketPeer.STATE_OPEN:
			status = Status.CONNECTED
		_:
			if error == "":
				error = "websocket closed (%d)" % _ws.get_close_code()
	return status


func available() -> int:
	while _ws.get_available_packet_count() > 0:
		_buf.append_array(_ws.get_packet())
	return _buf.size()


func read(max_bytes: int) -> PackedByteArray:
	var n := mini(max_bytes, _buf.size())
	var data := _buf.slice(0, n)
	_buf = _buf.slice(n)
	return data


func write(data: PackedByteArray) -> int:
	if _ws.send(data, WebSocketPeer.WRITE_MODE_BINARY) != OK:
		error = "websocket send failed"
		return -1
	return data.size()


func close() -> void:
	_ws.close()
