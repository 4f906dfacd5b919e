extends Node
## Runs every suite of tests/ in one process and quits with the number of failures (0: all
## passed). A main scene for runtimes where [code]--script[/code] is not available, such as
## the web export template that tests/web_runner.py drives. It also compiles every runtime
## script of the addon and plays the example scene with no sidecar (the project it runs in
## registers the NpcAi autoload with npcai/autostart false), where every request must end
## with its fallback at its deadline. With [code]-- --sidecar ENDPOINT[/code] it also runs
## tests/test_sidecar.gd against that sidecar, and drives the NpcAi node with it. With
## [code]--msgpack-suite PATH[/code] (and [code]--msgpack-suite-spoiled PATH[/code]) it runs
## tests/test_msgpack_suite.gd.

const Codec := preload("res://tests/test_codec.gd")
const ClientTests := preload("res://tests/test_client.gd")
const SidecarTests := preload("res://tests/test_sidecar.gd")
const MsgPackSuite := preload("res://tests/test_msgpack_suite.gd")
const Launcher := preload("res://addons/npcai/npc_ai_sidecar_launcher.gd")
const Request := preload("res://addons/npcai/npc_ai_request.gd")
const Ws := preload("res://tests/ws_transport.gd")
const SCRIPTS := [
	"res://addons/npcai/npc_ai_msg_pack.gd",
	"res://addons/npcai/npc_ai_zmtp.gd",
	"res://addons/npcai/npc_ai_transport.gd",
	"res://addons/npcai/npc_ai_tcp_transport.gd",
	"res://addons/npcai/npc_ai_request.gd",
	"res://addons/npcai/npc_ai_client.gd",
	"res://addons/npcai/npc_ai_sidecar_launcher.gd",
	"res://addons/npcai/npc_ai_node.gd",
	"res://example/village.gd",
]

var _passed: int = 0
var _failed: int = 0


func _ready() -> void:
	print("engine: ", Engine.get_version_info().string, ", debug build: ", OS.is_debug_build())
	var failures := Codec.Suite.new().run(Codec.vectors_path())
	failures += await ClientTests.Suite.new().run(get_tree())
	var sidecar := SidecarTests.endpoint_arg()
	if sidecar != "":
		failures += await SidecarTests.Suite.new().run(get_tree(), sidecar)
	var suite := MsgPackSuite.arg("--msgpack-suite")
	if suite != "":
		failures += MsgPackSuite.run(suite)
	var spoiled := MsgPackSuite.arg("--msgpack-suite-spoiled")
	if spoiled != "":
		_check(
			"msgpack-test-suite: a spoiled copy fails",
			MsgPackSuite.run(spoiled, "caught suite ") > 0
		)
	_compile_scripts()
	_test_bundle_search()
	_test_launcher_token()
	await _test_launcher_gives_up()
	await _play_example()
	if sidecar != "":
		await _test_node_with_sidecar(sidecar)
	print("%d passed, %d failed" % [_passed, _failed])
	failures += _failed
	print("ALL SUITES: %d failed" % failures)
	get_tree().quit(mini(failures, 100))


func _check(name: String, ok: bool, detail: Variant = "") -> void:
	if ok:
		_passed += 1
		print("ok   ", name)
	else:
		_failed += 1
		print("FAIL ", name, ": ", detail)


func _compile_scripts() -> void:
	for path: String in SCRIPTS:
		var script := load(path) as Script
		_check("compiles " + path, script != null and script.can_instantiate(), "load failed")
	var autoload := get_node_or_null("/root/NpcAi")
	_check("the NpcAi autoload is up", autoload != null and autoload.client != null)


func _play_example() -> void:
	var scene: Node = load("res://example/village.tscn").instantiate()
	scene.say_deadline_ms = 300
	add_child(scene)
	var log: RichTextLabel = scene.get_node("Log")
	var start := Time.get_ticks_msec()
	while not log.get_parsed_text().contains("Grik") and Time.get_ticks_msec() - start < 5000:
		await get_tree().process_frame
	var took := Time.get_ticks_msec() - start
	var text := log.get_parsed_text()
	_check("example: Brom's fallback line", text.contains("Brom: Hm. Welcome, stranger."), text)
	_check("example: Grik's fallback decision", text.contains("decides to flee (fallback)"), text)
	_check("example: done within the two deadlines (+ frames)", took < 300 + 150 + 400, took)
	scene.queue_free()


func _wait(cond: Callable, timeout_ms: int) -> void:
	var end := Time.get_ticks_msec() + timeout_ms
	while not cond.call() and Time.get_ticks_msec() < end:
		await get_tree().process_frame


## Where the launcher looks for a shipped sidecar (npcai-sidecar): each folder in order, then
## PATH; only without one, its command. The search runs here, on files in user://; starting
## the found program does not (the web has no OS.create_process).
func _test_bundle_search() -> void:
	var root := ProjectSettings.globalize_path("user://bundle_search")
	var game := root.path_join("game")
	var sub := game.path_join("npcai")
	var on_path := root.path_join("bin")
	for dir: String in [sub, on_path]:
		DirAccess.make_dir_recursive_absolute(dir)
	var exe := Launcher.bundle_executable()
	var dirs := PackedStringArray([game, sub])
	var path_list := root.path_join("nowhere") + ":" + on_path
	var made: Array[String] = []
	_check("bundle: none found", Launcher.find_bundle(dirs, path_list) == "")
	for where: String in [on_path, sub, game]:
		made.append(where.path_join(exe))
		FileAccess.open(made[-1], FileAccess.WRITE).store_string("#!/bin/sh\n")
		var found := Launcher.find_bundle(dirs, path_list)
		_check("bundle: found in %s" % where.get_file(), found == where.path_join(exe), found)
	var launcher: Launcher = Launcher.new()
	launcher.bundle_dirs = PackedStringArray([sub, game])
	_check("bundle: resolve_bundle", launcher.resolve_bundle() == sub.path_join(exe))
	var args := launcher.build_arguments("/tmp/ready.txt", true)
	_check("bundle: serve's flags only", args[0] == "--parent-pid" and not args.has("serve"), args)
	launcher.use_bundle = false
	_check("bundle: use_bundle off", launcher.resolve_bundle() == "")
	var defaults := Launcher.default_bundle_dirs()
	_check(
		"bundle: default folders beside the executable",
		defaults.size() == 2 and defaults[1] == defaults[0].path_join("npcai"),
		defaults
	)
	for path in made:
		DirAccess.remove_absolute(path)
	for dir: String in [sub, game, on_path, root]:
		DirAccess.remove_absolute(dir)


## The token reaches the sidecar in its environment (NPCAI_TOKEN), never in its arguments, which
## any user of the machine can read; the game's own environment is as it was afterwards. (The
## child itself is not started here: the web has no OS.create_process.)
func _test_launcher_token() -> void:
	var launcher: Launcher = Launcher.new()
	launcher.token = "s3cret-from-the-game"
	launcher.serve_args = PackedStringArray(["--model", "x"])
	var args := launcher.build_arguments("/tmp/ready.txt")
	var leaked := " ".join(args).contains("s3cret") or args.has("--token")
	_check("token: not in the arguments", not leaked, args)
	var name := Launcher.TOKEN_VARIABLE
	var had := OS.has_environment(name)
	var before := OS.get_environment(name)
	var seen := []
	var spawn := func() -> int:
		seen.append(OS.get_environment(name))
		return 7
	var pid: int = Launcher.with_environment(name, launcher.token, spawn)
	var inherited := seen == ["s3cret-from-the-game"] and pid == 7
	_check("token: in the environment the child inherits", inherited, seen)
	var restored := OS.has_environment(name) == had and OS.get_environment(name) == before
	_check("token: the game's environment restored", restored)


## A command that cannot start: the launcher fails, retries after its backoff, gives up.
func _test_launcher_gives_up() -> void:
	var launcher: Launcher = Launcher.new()
	launcher.command = "npcai-no-such-command"
	launcher.command_args = PackedStringArray(["-m", "npcai"])
	launcher.serve_args = PackedStringArray(["--model", "x"])
	var args := launcher.build_arguments("/tmp/ready.txt")
	var expected := PackedStringArray(["-m", "npcai", "serve", "--parent-pid"])
	expected.append_array([str(OS.get_process_id()), "--endpoint", "tcp://127.0.0.1:0"])
	expected.append_array(["--ready-file", "/tmp/ready.txt", "--model", "x"])
	_check("launcher arguments", args == expected, args)
	launcher.max_restarts = 1
	launcher.restart_backoff_ms = 20
	launcher.check_interval_ms = 0
	var seen := []
	launcher.failed.connect(func(why: String) -> void: seen.append(["failed", why]))
	launcher.gave_up.connect(func(why: String) -> void: seen.append(["gave_up", why]))
	launcher.start()
	var pump := func() -> void: launcher.poll()
	get_tree().process_frame.connect(pump)
	await _wait(func() -> bool: return launcher.state == Launcher.State.GAVE_UP, 3000)
	get_tree().process_frame.disconnect(pump)
	var kinds := seen.map(func(e: Array) -> String: return e[0])
	_check("launcher: failed, retried, gave up", kinds == ["failed", "failed", "gave_up"], seen)


## The NpcAi autoload over a connection to the real sidecar: hello, heartbeat, a request,
## and sidecar_lost when the connection closes.
func _test_node_with_sidecar(where: String) -> void:
	var node: Node = get_node("/root/NpcAi")
	node.heartbeat_ms = 50
	var events := []
	node.sidecar_ready.connect(func(info: Dictionary) -> void: events.append(["ready", info]))
	node.sidecar_lost.connect(func(why: String) -> void: events.append(["lost", why]))
	var ws := Ws.new()
	ws.open(where)
	node.client.connect_transport(ws)
	await _wait(func() -> bool: return node.is_sidecar_ready(), 10000)
	_check("node: sidecar_ready", events.size() == 1 and events[0][0] == "ready", events)
	_check("node: info", node.info.get("protocol") == 1, node.info)
	var before: Request = node.client.stats()
	await _wait(before.is_finished, 5000)
	await get_tree().create_timer(0.5).timeout
	var after: Request = node.client.stats()
	await _wait(after.is_finished, 5000)
	var pings := [0, 0]
	for i in 2:
		var reply: Dictionary = [before, after][i].reply
		pings[i] = reply.get("ops", {}).get("ping", {}).get("count", 0)
	_check("node: heartbeat pings (every 50 ms)", pings[1] - pings[0] >= 4, pings)
	var pick: Request = node.decide("", "Rain or sun?", ["rain", "sun"], {"max_tokens": 4})
	await _wait(pick.is_finished, 30000)
	_check("node: decide through the autoload", pick.value() in ["rain", "sun"], pick.reply)
	node.client.close("test over")
	await get_tree().process_frame
	_check("node: sidecar_lost", events.size() == 2 and events[1] == ["lost", "test over"], events)
	_check("node: not ready after the loss", not node.is_sidecar_ready())
