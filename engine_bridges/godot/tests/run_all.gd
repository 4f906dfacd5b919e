extends Node
## Runs every suite of tests/ in one process and quits with the number of failures (0: all
## passed). A main scene for runtimes where [code]--script[/code] is not available, such as
## the web export template that tests/web_runner.py drives.

const Codec := preload("res://tests/test_codec.gd")


func _ready() -> void:
	var failures := Codec.Suite.new().run(Codec.vectors_path())
	print("ALL SUITES: %d failed" % failures)
	get_tree().quit(mini(failures, 100))
