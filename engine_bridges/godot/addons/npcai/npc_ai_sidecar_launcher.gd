class_name NpcAiSidecarLauncher
extends RefCounted
## Starts [code]npcai serve[/code] beside the game and learns its endpoint, without blocking.
##
## [method start] runs
## [code]COMMAND [ARGS...] serve --parent-pid <game pid> --endpoint tcp://127.0.0.1:0
## --ready-file <user://npcai/ready-<game pid>.txt> [SERVE_ARGS...][/code] with
## [method OS.create_process] (the child's stdout and stderr go to the game's own console;
## [member token], if any, in its environment as [code]NPCAI_TOKEN[/code]),
## then [method poll] (a few times a second) waits for the ready file, which the sidecar
## writes atomically once its models are loaded and its socket is bound. The sidecar exits
## by itself when the game's process is gone ([code]--parent-pid[/code]).[br]
## A start that fails (the process exits early, or no ready file within
## [member start_timeout_ms]) or a sidecar that dies later is restarted after
## [member restart_backoff_ms] (doubling up to 30 s), at most [member max_restarts] times in
## a row (a sidecar up for a minute starts a new series); then [signal gave_up] fires.
## The [code]NpcAi[/code] node drives all of this.[br]
## A shipped sidecar comes first: with [member use_bundle] on, [method start] looks for
## [code]npcai-sidecar[/code] ([code]npcai-sidecar.exe[/code] on Windows, written by
## [code]npcai bundle --out DIR[/code]) in [member bundle_dirs] (by default
## [method default_bundle_dirs]: beside the exported executable and in its [code]npcai/[/code]
## folder, or the project's [code]npcai/[/code] folder in the editor), then on [code]PATH[/code],
## and runs it with serve's flags; only without one does it run [member command].

## The sidecar is ready at [param endpoint].
signal started(endpoint: String)
## A start failed or the running sidecar died; a restart follows if any remain.
signal failed(reason: String)
## No restarts left; [method start] tries again from scratch.
signal gave_up(reason: String)

## What the launcher is doing.
enum State { IDLE, STARTING, RUNNING, WAITING_RESTART, GAVE_UP }

## The environment variable that carries [member token] to the sidecar.
const TOKEN_VARIABLE := "NPCAI_TOKEN"

## Look for a shipped sidecar bundle (see the class description) before [member command].
var use_bundle: bool = true
## Folders that may hold the bundle's executable, searched in order before [code]PATH[/code];
## empty: [method default_bundle_dirs].
var bundle_dirs: PackedStringArray = PackedStringArray()
## Program to run when no bundle is found: [code]npcai[/code] on the PATH, or an absolute path.
var command: String = "npcai"
## Arguments before [code]serve[/code] (e.g. [code]["-m", "npcai"][/code] with python).
var command_args: PackedStringArray = PackedStringArray()
## Arguments after the launcher's own (e.g. [code]["--model", "smollm2-135m"][/code]).
var serve_args: PackedStringArray = PackedStringArray()
## The sidecar's shared secret ([code]""[/code]: none). It reaches the sidecar in its
## environment, never in its arguments, which any user of the machine can read.
var token: String = ""
## How long a start may take (the first start may download the default model).
var start_timeout_ms: int = 300000
## Restarts in a row before giving up.
var max_restarts: int = 3
## Wait before the first restart; doubles each time, up to 30 s.
var restart_backoff_ms: int = 1000
## How often [method poll] looks at the ready file and the process.
var check_interval_ms: int = 100
## Where the sidecar writes its endpoint.
var ready_file: String = "user://npcai/ready-%d.txt" % OS.get_process_id()

## What the launcher is doing.
var state: State = State.IDLE
## The sidecar's process id, or -1.
var pid: int = -1
## The sidecar's endpoint once [signal started] fired.
var endpoint: String = ""
## Why the last start failed.
var last_error: String = ""
## The program the last start ran: a found bundle's path, or [member command].
var program: String = ""

var _failures: int = 0
var _started_msec: int = 0
var _ready_msec: int = 0
var _next_check_msec: int = 0
var _restart_at_msec: int = 0


## The bundle's executable name on this platform.
static func bundle_executable() -> String:
	return "npcai-sidecar.exe" if OS.get_name() == "Windows" else "npcai-sidecar"


## Where a shipped game keeps the bundle: beside the exported executable, then in its
## [code]npcai/[/code] folder; in the editor (where the executable is Godot's), the project's
## [code]npcai/[/code] folder ([code]res://npcai[/code], globalized).
static func default_bundle_dirs() -> PackedStringArray:
	if OS.has_feature("editor"):
		return PackedStringArray([ProjectSettings.globalize_path("res://npcai")])
	var here := OS.get_executable_path().get_base_dir()
	return PackedStringArray([here, here.path_join("npcai")])


## The first [method bundle_executable] in [param dirs] (in order), then in the folders of
## [param path_list] (a [code]PATH[/code] value); [code]""[/code] if there is none.
static func find_bundle(dirs: PackedStringArray, path_list: String) -> String:
	var name := bundle_executable()
	var folders := dirs.duplicate()
	folders.append_array(path_list.split(";" if OS.get_name() == "Windows" else ":", false))
	for folder in folders:
		if folder != "" and FileAccess.file_exists(folder.path_join(name)):
			return folder.path_join(name)
	return ""


## The bundle [method start] runs (with [member use_bundle]): the first found in
## [member bundle_dirs] (or [method default_bundle_dirs]), then on [code]PATH[/code]; or
## [code]""[/code], and [member command] runs instead.
func resolve_bundle() -> String:
	if not use_bundle:
		return ""
	var dirs := bundle_dirs if not bundle_dirs.is_empty() else default_bundle_dirs()
	return find_bundle(dirs, OS.get_environment("PATH"))


## The full argument list [method start] passes: for a bundle ([param for_bundle]) serve's
## flags only (its executable is [code]npcai serve[/code] itself); for [member command],
## [member command_args] and [code]serve[/code] first.
func build_arguments(ready_path: String, for_bundle: bool = false) -> PackedStringArray:
	var args := PackedStringArray()
	if not for_bundle:
		args = command_args.duplicate()
		args.append("serve")
	args.append_array(["--parent-pid", str(OS.get_process_id())])
	args.append_array(["--endpoint", "tcp://127.0.0.1:0", "--ready-file", ready_path])
	args.append_array(serve_args)
	return args


## Calls [param spawn] (which starts a process) with [param name] set to [param value] in the
## game's environment, then sets it back as it was; returns what [param spawn] returns.
## [method OS.create_process] takes no environment: its child inherits the game's.
static func with_environment(name: String, value: String, spawn: Callable) -> Variant:
	var had := OS.has_environment(name)
	var before := OS.get_environment(name)
	OS.set_environment(name, value)
	var result: Variant = spawn.call()
	if had:
		OS.set_environment(name, before)
	else:
		OS.unset_environment(name)
	return result


## Starts the sidecar (returns at once); [signal started] or [signal failed] follows.
func start() -> Error:
	if state == State.STARTING or state == State.RUNNING:
		return OK
	_failures = 0
	return _launch()


## True while the sidecar process this launcher started is alive.
func is_running() -> bool:
	return pid > 0 and OS.is_process_running(pid)


## Call every frame (the [code]NpcAi[/code] node does); does real work only every
## [member check_interval_ms], and never blocks.
func poll() -> void:
	var now := Time.get_ticks_msec()
	if now < _next_check_msec:
		return
	_next_check_msec = now + check_interval_ms
	match state:
		State.STARTING:
			_poll_starting(now)
		State.RUNNING:
			if _failures > 0 and now - _ready_msec > 60000:
				_failures = 0  # up for a minute: the next failure starts a new series
			if not is_running():
				_on_failure("the sidecar exited (code %d)" % _exit_code())
		State.WAITING_RESTART:
			if now >= _restart_at_msec:
				_launch()


## Ends a sidecar that no longer answers (a hung process) and schedules a restart.
func restart(reason: String) -> void:
	if state != State.RUNNING and state != State.STARTING:
		return
	kill()
	_on_failure(reason)


## Kills the sidecar process now (after the caller sent [code]shutdown[/code], if it could)
## and forgets it. No restart follows.
func kill() -> void:
	if is_running():
		OS.kill(pid)
	pid = -1
	endpoint = ""
	state = State.IDLE
	var path := ProjectSettings.globalize_path(ready_file)
	if FileAccess.file_exists(path):
		DirAccess.remove_absolute(path)


func _launch() -> Error:
	var path := ProjectSettings.globalize_path(ready_file)
	DirAccess.make_dir_recursive_absolute(path.get_base_dir())
	if FileAccess.file_exists(path):
		DirAccess.remove_absolute(path)
	endpoint = ""
	var bundle := resolve_bundle()
	program = bundle if bundle != "" else command
	var args := build_arguments(path, bundle != "")
	var spawn := func() -> int: return OS.create_process(program, args)
	pid = spawn.call() if token == "" else with_environment(TOKEN_VARIABLE, token, spawn)
	if pid <= 0:
		pid = -1
		_on_failure("cannot run %s (no sidecar bundle; is npcai installed, on the PATH?)" % program)
		return ERR_CANT_CREATE
	state = State.STARTING
	_started_msec = Time.get_ticks_msec()
	_next_check_msec = 0
	return OK


func _poll_starting(now: int) -> void:
	var path := ProjectSettings.globalize_path(ready_file)
	if FileAccess.file_exists(path):
		var text := FileAccess.get_file_as_string(path).strip_edges()
		if text.begins_with("tcp://"):
			endpoint = text
			state = State.RUNNING
			_ready_msec = now
			started.emit(endpoint)
			return
	if not is_running():
		_on_failure("the sidecar exited with code %d before it was ready" % _exit_code())
	elif now - _started_msec > start_timeout_ms:
		OS.kill(pid)
		_on_failure("the sidecar was not ready within %d ms" % start_timeout_ms)


func _exit_code() -> int:
	return OS.get_process_exit_code(pid) if pid > 0 else -1


func _on_failure(reason: String) -> void:
	last_error = reason
	pid = -1
	endpoint = ""
	_failures += 1
	failed.emit(reason)
	if _failures > max_restarts:
		state = State.GAVE_UP
		gave_up.emit(reason)
		return
	var backoff := mini(restart_backoff_ms * (1 << mini(_failures - 1, 10)), 30000)
	_restart_at_msec = Time.get_ticks_msec() + backoff
	state = State.WAITING_RESTART
