"""npcai: a low-latency sidecar serving tiny-model NPC dialogue and constrained decisions to games."""

__version__ = "0.1.0"

from npcai.client import Client, Handle, RequestFailed  # noqa: E402
from npcai.errors import NpcaiError  # noqa: E402
from npcai.launcher import Sidecar  # noqa: E402
from npcai.sidecar.settings import Settings  # noqa: E402

__all__ = ["Client", "Handle", "NpcaiError", "RequestFailed", "Settings", "Sidecar", "__version__"]
