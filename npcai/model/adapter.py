"""A LoRA adapter for one role's choice decisions (``--lora ROLE=NAME|PATH``).

A choice decision's options are scored in an option scorer's own context (``scoring.py``). A role
with an adapter has a scorer of its own, on the model's weights with the adapter merged in
(``merged.py``: as fast as the model alone, where llama.cpp's run-time adapter cost a choice 1.6x).
So an adapter changes what its role decides among options and nothing else: dialogue, grammar
decisions and the NPC's persona and history (evaluated in the main context, then copied over) stay
the model's own, also for a role that shares the runtime. Measured on the game set (docs/QUALITY.md,
"A decision adapter"), the persona evaluated without the adapter and the decision's own turn with it
scores as well as the whole prompt with it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import llama_cpp as L

from npcai.errors import SettingsError
from npcai.model import catalog
from npcai.model.merged import merged_weights
from npcai.model.native import Model, llama_errors


@dataclass(frozen=True)
class AdapterSpec:
    """What --lora names for a role: the adapter's name (catalog name or file name), its file, and the
    temperature of ``probs`` with it (None: the model's)."""

    role: str
    name: str
    path: Path
    choice_temperature: float | None = None


class LoraAdapter:
    """An adapter for one model, as the model's weights with it merged in (``model``); where the merged file
    cannot be written (a read-only or full cache), as the model itself with the adapter's ``handle`` applied
    at run time, which scores the same and costs a choice more."""

    def __init__(self, model: Model, spec: AdapterSpec, model_name: str):
        with llama_errors() as errors:  # llama.cpp checks the file against the model, with its own reasons
            handle = L.llama_adapter_lora_init(model.handle, str(spec.path).encode())
        if not handle:
            why = _reason(errors) or "not a LoRA GGUF, or an adapter for another model"
            raise SettingsError(f"bad --lora {spec.role}={spec.name}: llama.cpp refused {spec.path} as a LoRA "
                                f"adapter for {model_name}: {why}")
        self.spec = spec
        try:
            merged = merged_weights(model.path, spec.path, catalog.cache_dir(), out=sys.stderr)
        except OSError as exc:
            print(f"note: cannot write {spec.name} merged into {model.path.name} in the cache ({exc.strerror or exc}): "
                  "applying it at run time (choice decisions take longer)", file=sys.stderr, flush=True)
            self.model, self.handle = model, handle
            return
        L.llama_adapter_lora_free(handle)
        self.model, self.handle = Model(merged), None

    @property
    def name(self) -> str:
        return self.spec.name

    def close(self) -> None:
        """Free what this adapter owns: the merged weights, or the run-time adapter (the model is the runtime's)."""
        if self.handle is not None:
            L.llama_adapter_lora_free(self.handle)
            self.handle = None
        else:
            self.model.close()


def _reason(errors: list[str]) -> str:
    """llama.cpp's own reason, without its function name ("llama_adapter_lora_init_...: failed to apply
    lora adapter: model arch and LoRA arch mismatch" -> "model arch and LoRA arch mismatch")."""
    marker = "failed to apply lora adapter: "
    for line in errors:
        if marker in line:
            return line.split(marker, 1)[1]
    return errors[-1].split(": ", 1)[-1] if errors else ""
