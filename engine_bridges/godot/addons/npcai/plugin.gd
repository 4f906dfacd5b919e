@tool
extends EditorPlugin
## Registers the [code]NpcAi[/code] autoload (npcai.gd) and the [code]npcai/*[/code] project
## settings when the plugin is enabled; removes the autoload when it is disabled.

const AUTOLOAD_NAME := "NpcAi"


func _enable_plugin() -> void:
	var node_script: String = get_script().resource_path.get_base_dir().path_join("npcai.gd")
	add_autoload_singleton(AUTOLOAD_NAME, node_script)
	var settings := {
		"npcai/endpoint": "",
		"npcai/autostart": true,
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
