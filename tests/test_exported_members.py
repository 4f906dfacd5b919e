"""The public surface is small and deliberate: what `npcai` exports is what `__all__` says."""

import npcai


def test_all_lists_exactly_the_public_names():
    public = {name for name in dir(npcai) if not name.startswith("_") and not isinstance(getattr(npcai, name),
                                                                                          type(npcai))}
    assert public == set(npcai.__all__) - {"__version__"}


def test_every_exported_name_resolves():
    for name in npcai.__all__:
        assert getattr(npcai, name) is not None
