"""Shipping the sidecar with a game: `npcai bundle` builds a self-contained folder (builder.py), checked at
every start against its manifest (manifest.py) by the frozen sidecar's entry point (sidecar.py)."""
