class_name NpcAiTcpTransport
extends "npc_ai_transport.gd"
## [NpcAiTransport] over [StreamPeerTCP]: connects without blocking, reads and writes only
## what the socket can take now ([method StreamPeerTCP.get_partial_data] and
## [method StreamPeerTCP.put_partial_data]; never the blocking get_data/put_data).

var _tcp: StreamPeerTCP = StreamPeerTCP.new()
var _nodelay_set: bool = false


## Starts connecting to [param host] (an IP address: a host name would be resolved with a
## blocking lookup) and [param port]. Returns at once; [method poll] tells when it is connected.
func open(host: String, port: int) -> Error:
	error = ""
	_nodelay_set = false
	var err := _tcp.connect_to_host(host, port)
	if err != OK:
		error = "cannot connect to %s:%d (%s)" % [host, port, error_string(err)]
	return err


func poll() -> Status:
	_tcp.poll()
	var status := Status.CLOSED
	match _tcp.get_status():
		StreamPeerTCP.STATUS_CONNECTING:
			status = Status.CONNECTING
		StreamPeerTCP.STATUS_CONNECTED:
			if not _nodelay_set:
				_tcp.set_no_delay(true)
				_nodelay_set = true
			status = Status.CONNECTED
		StreamPeerTCP.STATUS_ERROR:
			if error == "":
				error = "connection failed"
			status = Status.ERROR
		_:
			if error == "":
				error = "connection closed"
	return status


func available() -> int:
	return _tcp.get_available_bytes()


func read(max_bytes: int) -> PackedByteArray:
	var got: Array = _tcp.get_partial_data(max_bytes)
	if got[0] != OK:
		error = "read failed (%s)" % error_string(got[0])
		return PackedByteArray()
	return got[1]


func write(data: PackedByteArray) -> int:
	var got: Array = _tcp.put_partial_data(data)
	if got[0] != OK:
		error = "write failed (%s)" % error_string(got[0])
		return -1
	return got[1]


func close() -> void:
	_tcp.disconnect_from_host()
