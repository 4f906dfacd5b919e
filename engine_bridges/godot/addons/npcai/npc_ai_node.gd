class_name NpcAiNode
extends Node
## The game's entry point to npcai; the plugin registers it as the autoload [code]NpcAi[/code].
##
## It starts the sidecar with [NpcAiSidecarLauncher] (or connects to a running one when
## [member endpoint] is set), says [code]hello[/code], pumps [NpcAiClient] once per frame
## within [member max_messages_per_frame] and [member frame_budget_usec], pings it as a
## heartbeat, restarts or reconnects when it is lost, and stops it when the game quits.
## Requests can be made at once, even before [signal sidecar_ready]: they wait for the
## connection, and their [code]deadline_ms[/code] and [code]fallback[/code] still hold.
## [codeblock]
## var line := NpcAi.say("brom", "Hello!", {"deadline_ms": 2000, "fallback": "Hm."})
## line.token.connect(func(_id: int, text: String) -> void: label.text += text)
## var reply: Dictionary = await line.wait()
## [/codeblock]
## Settings come from the exported properties, overridden by the project settings
## [code]npcai/endpoint[/code], [code]npcai/command[/code], [code]npcai/command_args[/code],
## [code]npcai/serve_args[/code], [code]npcai/token[/code] and [code]npcai/autostart[/code]
## when they exist (the plugin adds them).[br]
## With [member report_frame_times] on, every frame's time is reported to the sidecar
## ([method NpcAiClient.report_frame]) and [member target_frame_ms] is sent as its
## [code]frame_ms[/code] budget on each connection, so it backs off when frames run long.

## The sidecar answered [code]hello[/code]: [param info] holds its models, limits and pid.
signal sidecar_ready(info: Dictionary)
## The connection to the sidecar was lost (a restart or reconnect follows).
signal sidecar_lost(reason: String)
## The sidecar could not be started or reached, and no more attempts will be made until
## [method start] is called again.
signal sidecar_failed(reason: String)
## An NPC chose one of its declared actions ([signal NpcAiClient.action_requested]): do it in
## the game, then tell the NPC what came of it with [method act_result].
signal action_requested(npc: String, name: String, args: Dictionary)

const Client := preload("npc_ai_client.gd")
const Launcher := preload("npc_ai_sidecar_launcher.gd")
## The properties that [code]npcai/<name>[/code] project settings override.
const SETTINGS := [
	"endpoint", "use_bundle", "command", "command_args", "serve_args", "token", "autostart"
]
const Request := preload("npc_ai_request.gd")

## Connect to a sidecar already running here ([code]tcp://127.0.0.1:PORT[/code]) instead of
## starting one; reconnects (every 1 to 10 s) when it is lost.
@export var endpoint: String = ""
## Start (or connect) in [method Node._ready].
@export var autostart: bool = true
## Start the shipped sidecar ([code]npcai-sidecar[/code] from [code]npcai bundle[/code]) when
## one lies beside the exported game, in the project's [code]npcai/[/code] folder (editor) or on
## PATH, before [member command] (see [member NpcAiSidecarLauncher.use_bundle]).
@export var use_bundle: bool = true
## The program that runs the sidecar when no bundle is found
## (see [member NpcAiSidecarLauncher.command]).
@export var command: String = "npcai"
## Arguments before [code]serve[/code].
@export var command_args: PackedStringArray = PackedStringArray()
## Extra [code]npcai serve[/code] arguments (models, limits). Not the token: see [member token].
@export var serve_args: PackedStringArray = PackedStringArray()
## The sidecar's shared secret: given to a sidecar this node starts in its environment
## ([code]NPCAI_TOKEN[/code], never on its command line, which any user of the machine can
## read), and sent in [code]hello[/code].
@export var token: String = ""
## Most replies dispatched per frame.
@export var max_messages_per_frame: int = 64
## Microseconds of reply dispatching per frame before the rest waits for the next frame.
@export var frame_budget_usec: int = 2000
## Interval of heartbeat pings (0: none).
@export var heartbeat_ms: int = 1000
## A ping not answered within this time counts as a lost sidecar.
@export var heartbeat_timeout_ms: int = 5000
## Report each frame's time ([code]delta * 1000.0[/code]) so the sidecar backs off when
## frames run over [member target_frame_ms].
@export var report_frame_times: bool = false
## The game's target frame time in milliseconds, sent as the budget's [code]frame_ms[/code]
## when the sidecar is ready (with [member report_frame_times] on).
@export var target_frame_ms: float = 16.7
## Frames per [code]frame[/code] report ([member NpcAiClient.frame_report_every]).
@export var frame_report_every: int = 6

## The client; use it for every op (the methods below are shortcuts).
var client: Client = Client.new()
## The launcher (idle when [member endpoint] is set).
var launcher: Launcher = Launcher.new()
## The [code]hello[/code] reply once [signal sidecar_ready] fired; empty otherwise.
var info: Dictionary = {}

var _ping: Request = null
var _next_ping_msec: int = 0
var _reconnect_at_msec: int = -1
var _reconnect_delay_ms: int = 1000
var _stopping: bool = false


func _ready() -> void:
	process_mode = Node.PROCESS_MODE_ALWAYS
	for key: String in SETTINGS:
		if ProjectSettings.has_setting("npcai/" + key):
			set(key, ProjectSettings.get_setting("npcai/" + key))
	client.frame_report_every = frame_report_every
	client.session_ready.connect(_on_session_ready)
	client.session_failed.connect(_on_session_failed)
	client.disconnected.connect(_on_disconnected)
	client.action_requested.connect(action_requested.emit)
	launcher.started.connect(_on_launched)
	launcher.failed.connect(func(reason: String) -> void: push_warning("npcai: " + reason))
	launcher.gave_up.connect(func(reason: String) -> void: sidecar_failed.emit(reason))
	if autostart:
		start()


## Starts the sidecar, or connects to [member endpoint]. Returns at once.
func start() -> void:
	_stopping = false
	client.token = token
	if endpoint != "":
		_reconnect_delay_ms = 1000
		_connect(endpoint)
		return
	launcher.use_bundle = use_bundle
	launcher.command = command
	launcher.command_args = command_args
	launcher.serve_args = serve_args
	launcher.token = token
	launcher.start()


## Ends the connection and stops a sidecar this node started: sends [code]shutdown[/code],
## then kills the process. Called by itself when the game quits.
func stop() -> void:
	_stopping = true
	_reconnect_at_msec = -1
	if launcher.pid > 0:
		if client.is_open():
			client.shutdown()
		launcher.kill()
	client.close("stopped")


## True after [signal sidecar_ready] while the connection is up.
func is_sidecar_ready() -> bool:
	return client.is_open() and not info.is_empty()


## [method NpcAiClient.define_npc].
func define_npc(npc: String, persona: String, options: Dictionary = {}) -> Request:
	return client.define_npc(npc, persona, options)


## [method NpcAiClient.say].
func say(npc: String, text: String, options: Dictionary = {}) -> Request:
	return client.say(npc, text, options)


## [method NpcAiClient.decide].
func decide(npc: String, situation: String, choices: Array, options: Dictionary = {}) -> Request:
	return client.decide(npc, situation, choices, options)


## [method NpcAiClient.decide_action].
func decide_action(
	npc: String, situation: String, actions: Variant = true, options: Dictionary = {}
) -> Request:
	return client.decide_action(npc, situation, actions, options)


## [method NpcAiClient.act_result].
func act_result(npc: String, action: String, result: String) -> Request:
	return client.act_result(npc, action, result)


## [method NpcAiClient.chain].
func chain(steps: Array, options: Dictionary = {}) -> Request:
	return client.chain(steps, options)


## [method NpcAiClient.observe].
func observe(npc: String, text: String) -> Request:
	return client.observe(npc, text)


## [method NpcAiClient.set_budget].
func set_budget(options: Dictionary) -> Request:
	return client.set_budget(options)


## [method NpcAiClient.cancel].
func cancel(id: int) -> bool:
	return client.cancel(id)


func _process(delta: float) -> void:
	launcher.poll()
	if _reconnect_at_msec >= 0 and Time.get_ticks_msec() >= _reconnect_at_msec:
		_reconnect_at_msec = -1
		_connect(endpoint)
	if report_frame_times:
		client.report_frame(delta * 1000.0)
	client.poll(max_messages_per_frame, frame_budget_usec)
	_heartbeat()


func _notification(what: int) -> void:
	if what == NOTIFICATION_WM_CLOSE_REQUEST or what == NOTIFICATION_PREDELETE:
		if not _stopping:
			stop()


func _exit_tree() -> void:
	if not _stopping:
		stop()


func _connect(where: String) -> void:
	if client.connect_to_endpoint(where) != OK:
		_on_disconnected("cannot connect to " + where)


func _heartbeat() -> void:
	if heartbeat_ms <= 0 or not is_sidecar_ready():
		return
	if _ping != null and _ping.is_finished():
		if _ping.timed_out():
			_ping = null
			client.close("no answer to ping within %d ms" % heartbeat_timeout_ms)
			return
		_ping = null
	var now := Time.get_ticks_msec()
	if _ping == null and now >= _next_ping_msec:
		_next_ping_msec = now + heartbeat_ms
		_ping = client.request("ping", {"deadline_ms": heartbeat_timeout_ms})


func _on_launched(where: String) -> void:
	_connect(where)


func _on_session_ready(reply: Dictionary) -> void:
	info = reply
	_reconnect_delay_ms = 1000
	if report_frame_times and target_frame_ms > 0.0:
		client.set_budget({"frame_ms": target_frame_ms})
	sidecar_ready.emit(reply)


func _on_session_failed(code: String, message: String) -> void:
	sidecar_failed.emit("hello failed: %s %s" % [code, message])


func _on_disconnected(reason: String) -> void:
	var was_ready := not info.is_empty()
	info = {}
	_ping = null
	if _stopping:
		return
	if was_ready:
		sidecar_lost.emit(reason)
	if endpoint != "":
		_reconnect_at_msec = Time.get_ticks_msec() + _reconnect_delay_ms
		_reconnect_delay_ms = mini(_reconnect_delay_ms * 2, 10000)
	elif launcher.pid > 0:
		launcher.restart(reason)
