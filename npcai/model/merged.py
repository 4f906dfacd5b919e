"""A LoRA adapter merged into a copy of its model's weights: what a role's choice decisions run on.

llama.cpp applies an adapter at run time as two extra small products beside each adapted weight. On
a model this small the extra graph nodes, not their arithmetic, are the cost: the shipped adapter (7
projections in each of 30 layers) made SmolLM2's 32-token choice step 94 ms against 59 without it.
Merged (W + scale * B A), the same step costs what the model alone costs (docs/QUALITY.md, "A decision
adapter").

The merged weights are written in half precision. Rounded back to the model's Q8_0, most of the
adapter's change is lost (it is smaller than Q8_0's step): target-token log-probabilities moved by up
to 0.9 nats from the adapter's own, against 0.04 in half precision. Tensors the adapter does not touch
are copied as they are. The file is made once per (model, adapter) pair, in the cache beside pulled
models, and reused by later starts.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TextIO

import numpy as np

from npcai.errors import ModelError
from npcai.model.catalog import write_whole

#: Bumped when the merge changes, so a cached file made by an older one is not reused.
_MERGE_VERSION = 1


def merged_weights(model: Path, adapter: Path, cache: Path, *, out: TextIO | None = None) -> Path:
    """The file holding ``model`` with ``adapter`` merged in, made under ``cache`` once."""
    target = merged_path(model, adapter, cache)
    if target.is_file():
        return target
    if out is not None:
        print(f"merging the adapter {adapter.name} into {model.name}, once…", file=out)
    write_whole(target, lambda partial: merge(model, adapter, partial))
    return target


def merged_path(model: Path, adapter: Path, cache: Path) -> Path:
    """Where the merged file of ``model`` and ``adapter`` is kept (made or not)."""
    return cache / "merged" / f"{model.stem}+{_digest(model, adapter)}.gguf"


def merge(model: Path, adapter: Path, dst: Path) -> None:
    """Write ``model``'s weights with ``adapter``'s deltas added to ``dst``: each adapted weight in half precision."""
    import gguf  # llama.cpp's own GGUF library (gguf-py); loaded only when an adapter is merged
    from gguf import quants

    base = gguf.GGUFReader(model)
    lora = gguf.GGUFReader(adapter)
    deltas = _deltas(lora)
    names = {t.name for t in base.tensors}
    if missing := sorted(set(deltas) - names):
        raise ModelError(f"the adapter {adapter.name} changes {missing[0]}, which {model.name} does not have")
    writer = gguf.GGUFWriter(dst, str(base.fields["general.architecture"].contents()))
    for field in base.fields.values():
        if field.name == "general.architecture" or field.name.startswith("GGUF."):
            continue  # written by the writer itself
        kind = field.types[0]
        writer.add_key_value(field.name, field.contents(), kind,
                             sub_type=field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None)
    tensors = []
    for t in base.tensors:
        data, kind = t.data, t.tensor_type
        if t.name in deltas:
            b, a = deltas[t.name]
            weight = quants.dequantize(t.data, t.tensor_type).astype(np.float32)
            if weight.shape != (b.shape[0], a.shape[1]):
                raise ModelError(f"the adapter {adapter.name} does not fit {model.name}'s {t.name}")
            data = (weight + b @ a).astype(np.float16)
            kind = gguf.GGMLQuantizationType.F16
        tensors.append(data)
        writer.add_tensor_info(t.name, data.shape, data.dtype, data.nbytes, kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for data in tensors:
        writer.write_tensor_data(data)
    writer.close()


def _deltas(lora) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each adapted weight's (B * scale, A), as llama.cpp scales them: alpha / rank, or 1 without an alpha."""
    from gguf import quants

    field = lora.fields.get("adapter.lora.alpha")
    alpha = float(field.contents()) if field is not None else 0.0
    parts: dict[str, dict[str, np.ndarray]] = {}
    for t in lora.tensors:
        name, dot, part = t.name.rpartition(".lora_")
        if not dot or part not in ("a", "b"):
            raise ModelError(f"the adapter holds {t.name}, which is not a LoRA weight")
        parts.setdefault(name, {})[part] = quants.dequantize(t.data, t.tensor_type).astype(np.float32)
    out = {}
    for name, ab in parts.items():
        if set(ab) != {"a", "b"}:
            raise ModelError(f"the adapter has only one of {name}'s two LoRA weights")
        a, b = ab["a"], ab["b"]  # A: (rank, in), B: (out, rank)
        rank = a.shape[0]
        out[name] = (b * (alpha / rank if alpha else 1.0), a)
    return out


def _digest(model: Path, adapter: Path) -> str:
    """Names the pair: the model file by name, size and time of change, the adapter by its content."""
    st = model.stat()
    h = hashlib.sha256(f"{_MERGE_VERSION}:{model.name}:{st.st_size}:{st.st_mtime_ns}:".encode())
    h.update(adapter.read_bytes())
    return h.hexdigest()[:16]
