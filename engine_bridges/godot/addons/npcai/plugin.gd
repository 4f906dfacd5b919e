@tool
extends EditorPlugin
## Registers the [code]NpcAi[/code] autoload (npc_ai_node.gd) and the [code]npcai/*[/code] project
## settings when the plugin is enabled; removes the autoload when it is disabled. While it is
## enabled, exporting a Windows or Linux game copies the project's [code]npcai/[/code] folder (the
## sidecar bundle from [code]npcai bundle --out npcai[/code], if there is one) beside the exported
## executable, where [method NpcAiSidecarLauncher.default_bundle_dirs] looks for it.

const AUTOLOAD_NAME := "NpcAi"

var _bundle_export: BundleExport = null


func _enter_tree() -> void:
	_bundle_export = BundleExport.new()
	add_export_plugin(_bundle_export)


func _exit_tree() -> void:
	remove_export_plugin(_bundle_export)
	_bundle_export = null


func _enable_plugin() -> void:
	var node_script: String = get_script().resource_path.get_base_dir().path_join("npc_ai_node.gd")
	add_autoload_singleton(AUTOLOAD_NAME, node_script)
	var settings := {
		"npcai/endpoint": "",
		"npcai/autostart": true,
		"npcai/use_bundle": true,
		"npcai/command": "npcai",
		"npcai/command_args": PackedStringArray(),
		"npcai/serve_args": PackedStringArray(),
		"npcai/token": "",
	}
	for name: String in settings:
		var default: Variant = settings[name]
		if not ProjectSettings.has_setting(name):
			ProjectSettings.set_setting(name, default)
		ProjectSettings.set_initial_value(name, default)
		ProjectSettings.add_property_info({"name": name, "type": typeof(default)})
	ProjectSettings.save()


func _disable_plugin() -> void:
	remove_autoload_singleton(AUTOLOAD_NAME)


## Copies [code]res://npcai/[/code] to [code]<export folder>/npcai/[/code] after a desktop
## Windows or Linux export (a macOS app, the web and mobile cannot run a sidecar beside them).
class BundleExport:
	extends EditorExportPlugin

	var _target: String = ""

	func _get_name() -> String:
		return "npcai sidecar bundle"

	func _export_begin(
		features: PackedStringArray, _is_debug: bool, path: String, _flags: int
	) -> void:
		_target = ""
		if features.has("windows") or features.has("linux"):
			_target = path.get_base_dir().path_join("npcai")

	func _export_end() -> void:
		var source := ProjectSettings.globalize_path("res://npcai")
		if _target == "" or not DirAccess.dir_exists_absolute(source):
			return
		var err := copy_folder(source, _target)
		if err != OK:
			push_error("npcai: could not copy %s to %s (error %d)" % [source, _target, err])

	## Copies a folder tree, but for hidden files ([code].gdignore[/code]); the bundle's
	## executable gets mode 755. A link becomes a copy of its target's bytes, which the
	## bundle's check at start accepts.
	static func copy_folder(from: String, to: String) -> Error:
		var err := DirAccess.make_dir_recursive_absolute(to)
		for sub in DirAccess.get_directories_at(from):
			if err == OK:
				err = copy_folder(from.path_join(sub), to.path_join(sub))
		for file in DirAccess.get_files_at(from):
			if err == OK and not file.begins_with("."):
				var mode := 493 if file.begins_with("npcai-sidecar") else -1
				err = DirAccess.copy_absolute(from.path_join(file), to.path_join(file), mode)
		return err
