"""A LoRA adapter for one role's choice decisions (``--lora ROLE=NAME|PATH``).

llama.cpp applies adapters per context, not per model. A choice decision's options are scored in
the option scorer's own context (``scoring.py``), so an adapter set there changes what a role
decides among options and nothing else: dialogue, grammar decisions and the NPC's persona and
history (evaluated in the main context, then copied over) stay the model's own, also for a role
that shares the runtime. Measured on the game set (docs/QUALITY.md, "A decision adapter"), the
persona evaluated without the adapter and the decision's own turn with it scores as well as the
whole prompt with it.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path

import llama_cpp as L

from npcai.errors import ModelError, SettingsError
from npcai.model.native import Context, Model, llama_errors


@dataclass(frozen=True)
class AdapterSpec:
    """What --lora names for a role: the adapter's name (catalog name or file name), its file, and the
    temperature of ``probs`` with it (None: the model's)."""

    role: str
    name: str
    path: Path
    choice_temperature: float | None = None


class LoraAdapter:
    """An adapter loaded against one model; llama.cpp frees it with the model."""

    def __init__(self, model: Model, spec: AdapterSpec, model_name: str):
        with llama_errors() as errors:
            handle = L.llama_adapter_lora_init(model.handle, str(spec.path).encode())
        if not handle:
            why = _reason(errors) or "not a LoRA GGUF, or an adapter for another model"
            raise SettingsError(f"bad --lora {spec.role}={spec.name}: llama.cpp refused {spec.path} as a LoRA "
                                f"adapter for {model_name}: {why}")
        self.spec = spec
        self._adapters = (L.llama_adapter_lora_p_ctypes * 1)(handle)
        self._scales = (ctypes.c_float * 1)(1.0)

    @property
    def name(self) -> str:
        return self.spec.name

    def apply(self, ctx: Context) -> None:
        """Make this adapter the one ``ctx`` evaluates with."""
        if L.llama_set_adapters_lora(ctx.handle, self._adapters, 1, self._scales) != 0:
            raise ModelError(f"llama.cpp could not apply the adapter {self.name}")


def use(ctx: Context, adapter: LoraAdapter | None) -> None:
    """Evaluate ``ctx`` with ``adapter``, or with none."""
    if adapter is not None:
        adapter.apply(ctx)
    elif L.llama_set_adapters_lora(ctx.handle, None, 0, None) != 0:
        raise ModelError("llama.cpp could not remove an adapter")


def _reason(errors: list[str]) -> str:
    """llama.cpp's own reason, without its function name ("llama_adapter_lora_init_...: failed to apply
    lora adapter: model arch and LoRA arch mismatch" -> "model arch and LoRA arch mismatch")."""
    marker = "failed to apply lora adapter: "
    for line in errors:
        if marker in line:
            return line.split(marker, 1)[1]
    return errors[-1].split(": ", 1)[-1] if errors else ""
