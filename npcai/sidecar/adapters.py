"""``--lora ROLE=NAME|PATH``: which role's choice decisions are scored through which LoRA adapter.

Checked in two steps so that a mistake costs no model load: ``parse`` reads the specs against the
roles (syntax, known role, a local model, the file, a shipped adapter's own model) before any
model is loaded, and ``attach`` loads each adapter into its role's runtime, where llama.cpp
refuses a file that is not a LoRA GGUF or was made for another model. Each failure is one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from npcai.errors import ModelError, SettingsError
from npcai.model import catalog
from npcai.model.adapter import AdapterSpec
from npcai.sidecar.admission import DEFAULT_ROLES

if TYPE_CHECKING:
    from npcai.model.runtime import Runtime


def parse(specs: list[str], models: dict[str, object]) -> list[AdapterSpec]:
    """The adapters ``specs`` name, for ``models`` (role -> GGUF path or a remote engine)."""
    out: list[AdapterSpec] = []
    for spec in specs:
        role, sep, name = (part.strip() for part in spec.partition("="))
        if not sep or not role.isidentifier() or not name:
            raise SettingsError(f"bad --lora {spec!r}: give ROLE=NAME or ROLE=PATH, e.g. "
                                f"decision={next(iter(catalog.ADAPTERS))}")
        if any(a.role == role for a in out):
            raise SettingsError(f"bad --lora {spec!r}: role {role!r} already has an adapter")
        if role not in models and role not in DEFAULT_ROLES.values():
            roles = sorted(set(models) | set(DEFAULT_ROLES.values()))
            raise SettingsError(f"bad --lora {spec!r}: no model serves role {role!r}; roles: {', '.join(roles)}")
        served = models.get(role, next(iter(models.values())))
        if not isinstance(served, Path):
            raise SettingsError(f"bad --lora {spec!r}: role {role!r} is served by a remote engine; "
                                "adapters apply to local models")
        try:
            label, path, entry = catalog.resolve_adapter(name)
        except ModelError as err:
            raise SettingsError(f"bad --lora {spec!r}: {err.message}") from None
        model = catalog.entry_for(served)
        if entry is not None and (model is None or model.name != entry.base):
            raise SettingsError(f"bad --lora {spec!r}: {entry.name} is an adapter for {entry.base}, and role "
                                f"{role!r} is served by {model.name if model else served.name}")
        out.append(AdapterSpec(role, label, path, entry.choice_temperature if entry else None))
    return out


def attach(adapters: list[AdapterSpec], runtimes: dict[str, "Runtime"]) -> None:
    """Load each adapter into its role's runtime. A default role that no model was named for (the
    decision role beside one model) is served by the first model, and is now listed with its adapter."""
    if not adapters:
        return
    default = next(iter(runtimes.values()))
    for spec in adapters:
        runtimes.setdefault(spec.role, default).add_adapter(spec)
